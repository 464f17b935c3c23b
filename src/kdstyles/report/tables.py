"""The paper's tables: presets x metrics, mean ± std over seeds, best per column, and the
paired comparison of the target preset against each baseline, as data and as Markdown."""

from __future__ import annotations

import math
from typing import Any

from ..common.metrics import label as metric_label
from ..common.metrics import lower_is_better
from .analysis import Study, ablation_rows, findings, gap_closure, paired_rows, teacher_margin
from .results import aggregate, metric_set, networks_in, presets_in, primary, teacher_preset
from .trust import about, deploy_table, group_rows, group_table, group_title


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
    teacher = teacher_preset(rows)
    lines = ([("teacher (reference)", agg[(teacher, "teacher")])] if teacher else [])
    lines += [(p + (" (independent students)" if p == "student" else ""), agg[(p, network)])
              for p in presets if (p, network) in agg]
    for label, metrics in lines:
        body.append([label, *(_cell(metrics[m]) for m in metrics_)])
    best = [[False] * len(metrics_) for _ in lines]
    candidates = lines[1 if teacher else 0:]
    for j, m in enumerate(metrics_):
        finite = [metrics[m][0] for _, metrics in candidates if not math.isnan(metrics[m][0])]
        if not finite:
            continue
        target = (min if lower_is_better(m) else max)(finite)
        for i, (label, metrics) in enumerate(lines):
            best[i][j] = label != "teacher (reference)" and metrics[m][0] == target
    return header, body, best


def markdown(rows: list[dict[str, Any]], study: Study | None = None,
             externals: dict[str, Study] | None = None) -> str:
    """The tables of every network, then the paired analysis (``study``: with per-image values
    and the comparison's manifest, from :func:`load_study`), then, with ``externals`` (a study
    per external set), the before-you-deploy table and each set's tables and analysis."""
    parts = _network_tables(rows, "test split")
    study = study or Study(rows, primary(rows))
    parts += paired_markdown(study)
    if externals is not None:
        header, body = deploy_table(study, externals)
        if any(any(c != "–" for c in line[3:]) for line in body):
            parts += ["### Before you deploy\n", _md_table(header, body), ""]
        groups = group_rows(study)
        if groups:
            parts += [f"### {group_title(groups)}\n", _md_table(*group_table(groups)), ""]
        for name, ext in externals.items():
            parts += [f"## External set '{name}'" + (f" ({about(ext)})" if about(ext) else "") + "\n"]
            parts += _network_tables(ext.rows, f"external set '{name}'") + paired_markdown(ext)
    return "\n".join(parts)


def _md_table(header: list[str], body: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *("| " + " | ".join(line) + " |" for line in body)])


def _network_tables(rows: list[dict[str, Any]], where: str) -> list[str]:
    parts = []
    n_seeds = len({r["seed"] for r in rows})
    for net in networks_in(rows):
        header, body, best = table_data(rows, net)
        parts.append(f"### {net} ({where}, mean ± std over {n_seeds} seed{'s' * (n_seeds > 1)}; best in bold)\n")
        parts.append(_md_table(header, [[line[0], *(f"**{c}**" if f else c for c, f in zip(line[1:], flags,
                                                                                        strict=True))]
                                        for line, flags in zip(body, best, strict=True)]))
        parts.append("")
    return parts


def _interval_note(study: Study) -> str:
    return (f"{metric_label(study.metric)}, {study.target} minus the other, in points; [95% bootstrap interval over "
            "test images and seeds]; std and wins over seeds")


def analysis_tables(study: Study) -> list[tuple[str, list[str], list[list[str]]]]:
    """The paired analysis as (title, header, rows): the teacher's margin, the target against
    each baseline and (after --ablate) each edge's contribution."""
    tables = []
    margin = teacher_margin(study)
    if margin:
        tables.append((f"Teacher minus the students trained alone ({metric_label(study.metric)}, paired by seed and "
                       "test image)", ["student", "teacher minus student [95% CI]", "verdict", "std", "seeds"],
                       [[m["network"], m["text"], m["verdict"], f"{100 * m['std']:.1f} pt", str(m["n"])]
                        for m in margin]))
    closure = gap_closure(study)
    if closure:
        tables.append((f"Gap closure: the share of the teacher's lead over the students trained alone that each "
                       f"preset recovers ({metric_label(study.metric)}, (distilled - alone) / (teacher - alone); "
                       "[95% bootstrap interval over test images and seeds])",
                       ["preset", "network", "gap closed [95% CI]", "distilled minus alone", "teacher minus alone",
                        "seeds"],
                       [[g["preset"], g["network"], g["text"], f"{100 * g['gain']:+.1f} pt",
                         f"{100 * g['lead']:+.1f} pt", str(g["n"])] for g in closure]))
    diffs = paired_rows(study)
    if diffs:
        tables.append((f"{study.target} against each baseline ({_interval_note(study)})",
                       ["baseline", "network", "difference [95% CI]", "verdict", "std", "seeds won", "McNemar p"],
                       [[d["baseline"], d["network"], d["text"], d["verdict"], f"{100 * d['std']:.1f} pt",
                         f"{d['wins']}/{d['n']}", _p(d)] for d in diffs]))
    ablation = ablation_rows(study)
    if ablation:
        tables.append((f"Ablation: what each edge contributes ({study.target} minus the variant without it)",
                       ["removed", "network", "contribution [95% CI]", "verdict", "seeds won"],
                       [["; ".join(a["removed"]), a["network"], a["text"], a["verdict"], f"{a['wins']}/{a['n']}"]
                        for a in ablation]))
    return tables


def paired_markdown(study: Study) -> list[str]:
    """Plain findings, then :func:`analysis_tables`, as Markdown lines."""
    parts = []
    lines = findings(study)
    if lines:
        parts += ["### What the comparison shows\n", *(f"- {line}" for line in lines), ""]
    for title, header, body in analysis_tables(study):
        parts += [f"### {title}\n", _md_table(header, body), ""]
    return parts


def _p(d: dict[str, Any]) -> str:
    return f"{d['p']:.3g} ({d['only_a']}/{d['only_b']})" if "p" in d else "–"


def worded(q: dict[str, Any]) -> dict[str, Any]:
    """A quantized export's record (its sidecar's ``quantization``) in the words the console,
    the report and the model card show: each model's metric, size and latencies, the change with
    its interval, the agreement."""
    from ..common.metrics import label

    metric = q["metric"]
    lo, hi = q["interval_points"]
    each = {k: {"metric": f"{q[k]['metrics'].get(metric, float('nan')):.4f}", "mb": f"{q[k]['mb']:.2f}",
                "b1": f"{q[k]['latency_b1_ms']:.2f}", "b32": f"{q[k]['latency_b32_ms']:.1f}"}
            for k in ("float32", "quantized")}
    return {"metric": label(metric), **each, "change": f"{q['change_points']:+.2f} pt [{lo:+.2f}, {hi:+.2f}]",
            "agreement": f"{q['agreement']:.4f}" if isinstance(q.get("agreement"), float) else "n/a",
            **{f"{k} ->": f"{each['float32'][k]} -> {each['quantized'][k]}" for k in ("metric", "mb", "b1", "b32")}}
