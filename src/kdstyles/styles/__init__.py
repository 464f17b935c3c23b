"""Learning styles, registered by name. A built-in style = one file here (found by
:func:`~kdstyles.common.registry.discover`); a style of your own = one plugin file calling
:func:`register` (``register_style`` in kdstyles.plugins)."""

from ..common.registry import discover
from .base import KNOWLEDGE, Context, Knowledge, NetOutput, Style, StyleOptions, knowledge

# every module but the routing (which reads this registry) and the shared parts
STYLES: dict[str, Style] = {s.name: s() for s in discover(__name__, Style, skip=("base", "outputs", "routing"))}
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
