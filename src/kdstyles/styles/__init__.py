"""Learning styles, registered by name. Adding a style = one file + one line here."""

from .attention import Attention
from .base import KNOWLEDGE, Context, Knowledge, NetOutput, Style, StyleOptions, knowledge
from .dist import DIST
from .dkd import DKD
from .features import Features
from .mlkd import MLKD
from .predictions import Predictions
from .relations import Relations
from .self_distill import SelfDistillation
from .simkd import SimKD

STYLES: dict[str, Style] = {}


def register(style: Style) -> Style:
    STYLES[style.name] = style
    return style


for _style in (Predictions(), Features(), Attention(), Relations(), SelfDistillation(), DKD(), DIST(), SimKD(), MLKD()):
    register(_style)

def learner_parts(model) -> dict[str, int] | None:
    """The parameters of a network a style reshaped (simkd: its own, the projector, the teacher's
    head), or None."""
    return next((p for style in STYLES.values() if (p := style.parts(model)) is not None), None)


__all__ = ["learner_parts", "KNOWLEDGE", "Context", "Knowledge", "STYLES", "NetOutput", "Style", "StyleOptions", "knowledge", "register"]
