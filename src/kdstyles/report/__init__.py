"""Reports from existing results: tables (Markdown), plots and a self-contained HTML page.
Reads files only; nothing here trains or measures."""

from .analysis import findings, load_study
from .html import render
from .results import load_rows
from .tables import markdown, table_data

__all__ = ["findings", "load_rows", "load_study", "markdown", "render", "table_data"]
