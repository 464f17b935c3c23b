"""Learning styles, registered by name. A built-in style = one file + one line here; a style
of your own = one plugin file calling :func:`register` (``register_style`` in kdstyles.plugins)."""

from .attention import Attention
from .base import KNOWLEDGE, Context, Knowledge, NetOutput, Style, StyleOptions, knowledge
from .cka import CKA
from .dist import DIST
from .dkd import DKD
from .embedding import Embedding
from .features import Features
from .mlkd import MLKD
from .predictions import Predictions
from .relations import Relations
from .self_distill import SelfDistillation
from .simkd import SimKD

STYLES: dict[str, Style] = {s.name: s for s in (Predictions(), Features(), Attention(), Relations(),
                                                  SelfDistillation(), DKD(), DIST(), SimKD(), MLKD(), Embedding(),
                                                  CKA())}
BUILT_IN = frozenset(STYLES)


def register(style: Style) -> Style:
    """Make ``style`` a style a routing can name (``register_style`` in kdstyles.plugins). The
    built-in names are kept; a plugin registering a name again replaces its own."""
    from ..errors import KDError, check_new_name

    if not isinstance(style, Style):
        raise KDError(f"register_style: give a Style instance, not {type(style).__name__}")
    check_new_name("style", style.name, BUILT_IN)
    STYLES[style.name] = style
    return style


def learner_parts(model) -> dict[str, int] | None:
    """The parameters of a network a style reshaped (simkd: its own, the projector, the teacher's
    head), or None."""
    return next((p for style in STYLES.values() if (p := style.parts(model)) is not None), None)


__all__ = ["learner_parts", "KNOWLEDGE", "Context", "Knowledge", "STYLES", "NetOutput", "Style", "StyleOptions", "knowledge", "register"]
