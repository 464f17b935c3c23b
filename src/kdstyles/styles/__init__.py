"""Learning styles, registered by name. Adding a style = one file + one line here."""

from .attention import Attention
from .base import KNOWLEDGE, Knowledge, NetOutput, Style, StyleOptions, knowledge
from .features import Features
from .predictions import Predictions
from .relations import Relations
from .self_distill import SelfDistillation

STYLES: dict[str, Style] = {}


def register(style: Style) -> Style:
    STYLES[style.name] = style
    return style


for _style in (Predictions(), Features(), Attention(), Relations(), SelfDistillation()):
    register(_style)

__all__ = ["KNOWLEDGE", "Knowledge", "STYLES", "NetOutput", "Style", "StyleOptions", "knowledge", "register"]
