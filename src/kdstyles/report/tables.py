"""The paper's tables: presets x metrics, mean ± std over seeds, best per column, and the
paired comparison of the target preset against each baseline, as data and as Markdown."""

from __future__ import annotations

import math
from typing import Any

from ..metrics import label as metric_label
from ..metrics import lower_is_better
from .results import TARGET, aggregate, metric_set, networks_in, paired, presets_in, primary

def _cell(ms: tuple[float, float, int]) -> str:
    mean, std, n = ms
    if n == 0:
        return "–"
    return f"{mean:.3f} ± {std:.3f}" if n > 1 else f"{mean:.3f}"


def table_data(rows: list[dict[str, Any]], network: str) -> tuple[list[str], list[list[str]], list[list[bool]]]:
    """Rows: the teacher (reference) then every preset; cells mean ± std; best per column flagged."""
    agg = aggregate(rows)
    presets = presets_in(rows)
    metrics_ = metric_set(rows)
    header = ["preset", *(metric_label(m) for m in metrics_)]
    body: list[list[str]] = []
    teacher_preset = next((p for p in presets if (p, "teacher") in agg), None)
    lines = ([("teacher (reference)", agg[(teacher_preset, "teacher")])] if teacher_preset else [])
    lines += [(p + (" (independent students)" if p == "student" else ""), agg[(p, network)])
              for p in presets if (p, network) in agg]
    for label, metrics in lines:
        body.append([label, *(_cell(metrics[m]) for m in metrics_)])
    best = [[False] * len(metrics_) for _ in lines]
    candidates = lines[1 if teacher_preset else 0:]
    for j, m in enumerate(metrics_):
        finite = [metrics[m][0] for _, metrics in candidates if not math.isnan(metrics[m][0])]
        if not finite:
            continue
        target = (min if lower_is_better(m) else max)(finite)
        for i, (label, metrics) in enumerate(lines):
            best[i][j] = label != "teacher (reference)" and metrics[m][0] == target
    return header, body, best


def markdown(rows: list[dict[str, Any]]) -> str:
    parts = []
    n_seeds = len({r["seed"] for r in rows})
    for net in networks_in(rows):
        header, body, best = table_data(rows, net)
        parts.append(f"### {net} (test split, mean ± std over {n_seeds} seed{'s' * (n_seeds > 1)}; best in bold)\n")
        parts.append("| " + " | ".join(header) + " |")
        parts.append("|" + "---|" * len(header))
        for line, flags in zip(body, best, strict=True):
            cells = [line[0], *(f"**{c}**" if f else c for c, f in zip(line[1:], flags, strict=True))]
            parts.append("| " + " | ".join(cells) + " |")
        parts.append("")
    diffs = paired(rows)
    if diffs:
        parts.append(f"### {TARGET} minus each baseline ({primary(rows)}, paired by seed)\n")
        parts.append("| baseline | network | mean difference | std | seeds won |")
        parts.append("|---|---|---|---|---|")
        for d in diffs:
            parts.append(f"| {d['baseline']} | {d['network']} | {d['mean']:+.4f} | {d['std']:.4f} | "
                         f"{d['wins']}/{d['n']} |")
        parts.append("")
    return "\n".join(parts)
