"""Reports from existing results: tables (Markdown), plots and a self-contained HTML page.
Reads files only; nothing here trains or measures."""

from .html import render
from .results import load_rows, paired
from .tables import markdown, table_data

__all__ = ["load_rows", "markdown", "paired", "render", "table_data"]
