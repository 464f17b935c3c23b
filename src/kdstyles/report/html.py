"""The self-contained report.html: tables, plots, the compression table and segmentation
overlays, from files only (nothing is trained or measured here)."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from ..store.fileio import write_text
from .tables import worded
from ..store.runfolder import ComparisonFolder, RunFolder
from .plots import (details_of, plot_accuracy_vs_parameters, plot_confusions, plot_curves, plot_per_class,
                    plot_reliability)
from .analysis import Study, findings, load_study
from .results import load_rows, networks_in, presets_in, primary, run_dirs
from .tables import analysis_tables, table_data
from .trust import (DEPLOY_NOTE, about, deploy_line, deploy_table, external_studies, group_rows, group_table,
                    group_title)


CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}.best{font-weight:bold;background:#e8f5e9}
img{max-width:100%;display:block;margin:0.5em 0 1.5em}h2{border-bottom:1px solid #ddd;padding-bottom:4px}
.note{color:#555;font-size:0.9em}"""


def _html_table(header, body, best=None, cls="") -> str:
    out = [f'<table class="{cls}"><tr>' + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for i, line in enumerate(body):
        cells = []
        for j, c in enumerate(line):
            mark = ' class="best"' if best and j > 0 and best[i][j - 1] else ""
            cells.append(f"<td{mark}>{html.escape(str(c))}</td>")
        out.append('<tr class="row">' + "".join(cells) + "</tr>")
    return "\n".join(out) + "</table>"


def _img(b64: str | None, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">' if b64 else ""


def quantized_table(found: list[tuple[str, int, dict[str, Any]]]) -> tuple[list[str], list[list[str]]]:
    """Each quantized export of the comparison's runs against its float model (``export
    --quantize`` measured both on the test split)."""
    header = ["run", "network", "type", "metric: float32 -> quantized", "change [95% CI]", "MB", "latency b=1 (ms)",
              "latency b=32 (ms)", "kept"]
    body = []
    for preset, seed, side in found:
        q = side["quantization"]
        w = worded(q)
        body.append([f"{preset} seed {seed}", side.get("network", "?"), q["type"], f"{w['metric']} {w['metric ->']}",
                     w["change"], w["mb ->"], w["b1 ->"], w["b32 ->"], "yes" if q["accepted"] else "rejected"])
    return header, body


def render(folder: str | Path, study: Study | None = None, externals: dict[str, Study] | None = None) -> Path:
    """Write FOLDER/report.html (self-contained) and return its path; ``study``: the folder's
    :func:`load_study` when the caller has it (its paired intervals are not drawn again), and
    ``externals`` likewise (:func:`~kdstyles.report.trust.external_studies`)."""
    folder = Path(folder)
    rows = study.rows if study is not None else load_rows(folder)
    dirs = run_dirs(folder, rows)
    details = details_of(dirs)
    metric = primary(rows)
    seeds = sorted({r["seed"] for r in rows})
    sections = [f"<h1>kdstyles report: {html.escape(folder.name)}</h1>",
                f'<p class="note">{len(presets_in(rows))} preset(s) × {len(seeds)} seed(s), test split, '
                f'{html.escape(str(rows[0].get("checkpoint", "best")))} checkpoint per network. '
                "Cells: mean ± sample standard deviation over seeds; best per column highlighted.</p>"]
    for net in networks_in(rows):
        header, body, best = table_data(rows, net)
        sections.append(f"<h2>{html.escape(net)}</h2>" + _html_table(header, body, best, cls="results"))
    study = study if study is not None else load_study(folder, rows)
    lines = findings(study)
    if lines:
        sections.insert(2, "<h2>What the comparison shows</h2><ul>" +
                        "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>")
    for title, header, body in analysis_tables(study):
        sections.append(f"<h2>{html.escape(title)}</h2>" + _html_table(header, body, cls="paired"))
    externals = external_studies(folder) if externals is None else externals
    header, body = deploy_table(study, externals)
    if any(any(c != "–" for c in line[3:]) for line in body):
        line = deploy_line(study, externals)
        sections.append("<h2>Before you deploy</h2>" + (f"<p>{html.escape(line)}</p>" if line else "")
                        + _html_table(header, body, cls="deploy") + f'<p class="note">{html.escape(DEPLOY_NOTE)}</p>')
    groups = group_rows(study)
    if groups:
        sections.append(f"<h2>{html.escape(group_title(groups))}</h2>" + _html_table(*group_table(groups),
                                                                                      cls="groups"))
    for name, ext in externals.items():
        what = about(ext)
        sections.append(f"<h2>External set '{html.escape(name)}'{' (' + html.escape(what) + ')' if what else ''}</h2>")
        for net in networks_in(ext.rows):
            header, body, best = table_data(ext.rows, net)
            sections.append(f"<h3>{html.escape(net)}</h3>" + _html_table(header, body, best, cls="results"))
        lines = findings(ext)
        if lines:
            sections.append("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>")
        for title, header, body in analysis_tables(ext):
            sections.append(f"<h3>{html.escape(title)}</h3>" + _html_table(header, body, cls="paired"))
    comp = ComparisonFolder(folder).compression() or []
    if comp:
        sections.append("<h2>Compression (CPU)</h2>")
        sections.append(_html_table(
            ["network", "parameters", "MFLOPs / image", "latency b=1 (ms)", "latency b=32 (ms)", "size vs teacher"],
            [[c["network"], f"{c['parameters']:,}", f"{c['mflops']:.1f}", f"{c['latency_b1_ms']:.2f}",
              f"{c['latency_b32_ms']:.1f}", f"{c['relative_size']:.1%}" if c["relative_size"] else "–"]
             for c in comp], cls="compression"))
    quantized = [(preset, seed, side) for (preset, seed), path in sorted(dirs.items())
                 for side in RunFolder(path).quantized_exports()]
    if quantized:
        sections.append("<h2>Quantized exports (CPU, onnxruntime, test split)</h2>")
        sections.append(_html_table(*quantized_table(quantized), cls="quantized"))
    plots = [(f"Test {metric} vs parameters", plot_accuracy_vs_parameters(rows, metric)),
             ("Training curves (validation, mean over seeds)", plot_curves(rows, dirs, metric)),
             ("Confusion matrices (rows: true class; summed over seeds)", plot_confusions(details)),
             ("Per-class F1", plot_per_class(details)),
             ("Reliability diagrams", plot_reliability(details))]
    for title, b64 in plots:
        if b64:
            sections.append(f"<h2>{html.escape(title)}</h2>{_img(b64, title)}")
    shown: set[str] = set()  # one overlay per preset: its first seed's first test image
    for (preset, _seed), run in sorted(dirs.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        folder_ = RunFolder(run)
        evaluation = folder_.evaluation()
        overlays = evaluation.overlays if evaluation is not None else None
        if not overlays or not (run / overlays[0]).is_file() or preset in shown:
            continue
        if not shown:
            sections.append("<h2>Segmentation overlays (first test image, first seed)</h2>")
        shown.add(preset)
        b64 = base64.b64encode((run / overlays[0]).read_bytes()).decode()
        sections.append(f"<h3>{html.escape(preset)}</h3>{_img(b64, preset + ' overlay')}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>kdstyles report: {html.escape(folder.name)}"
            f"</title><style>{CSS}</style></head><body>{''.join(sections)}</body></html>\n")
    out = ComparisonFolder(folder).report_path
    write_text(out, page)
    return out
