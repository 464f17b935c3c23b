"""Learning styles, registered by name. Adding a style = one file + one line here."""

from .base import NetOutput, Style, StyleOptions
from .features import Features
from .predictions import Predictions

STYLES: dict[str, Style] = {}


def register(style: Style) -> Style:
    STYLES[style.name] = style
    return style


register(Predictions())
register(Features())

__all__ = ["STYLES", "NetOutput", "Style", "StyleOptions", "register"]
