"""Learning styles, registered by name. Adding a style = one file + one line here."""

from .attention import Attention
from .base import KNOWLEDGE, Context, Knowledge, NetOutput, Style, StyleOptions, knowledge
from .dist import DIST
from .dkd import DKD
from .features import Features
from .predictions import Predictions
from .relations import Relations
from .self_distill import SelfDistillation

STYLES: dict[str, Style] = {}


def register(style: Style) -> Style:
    STYLES[style.name] = style
    return style


for _style in (Predictions(), Features(), Attention(), Relations(), SelfDistillation(), DKD(), DIST()):
    register(_style)

__all__ = ["KNOWLEDGE", "Context", "Knowledge", "STYLES", "NetOutput", "Style", "StyleOptions", "knowledge", "register"]
