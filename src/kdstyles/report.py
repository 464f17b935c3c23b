"""Tables, plots and a self-contained HTML report from results.csv and the runs' files.

Works on a comparison folder (``kdstyles compare``) or a single run folder; renders from
existing results only (``kdstyles report DIR``), nothing is trained.
"""

from __future__ import annotations

import base64
import html
import io
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from .errors import KDError
from .metrics import label as metric_label
from .metrics import lower_is_better, task_metrics, task_of
from .routing import DEFAULT_PRESET
from .fileio import read_csv, read_json, write_json, write_text
from .runfolder import RunFolder

TARGET = DEFAULT_PRESET  # the paired comparison puts the paper's preset against each baseline


def metric_set(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """The task's table metrics that the rows carry (the task follows from which metrics are there)."""
    present = {k for r in rows for k, v in r.items() if isinstance(v, (int, float))}
    return tuple(task_metrics(task_of(present), present))


def primary(rows: list[dict[str, Any]]) -> str:
    return metric_set(rows)[0]


# ----------------------------------------------------------------------------- data


def _num(v: str) -> Any:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


def load_rows(folder: Path) -> list[dict[str, Any]]:
    """results.csv of a comparison, or one run's eval.json as rows."""
    folder = Path(folder)
    results = folder / "results.csv"
    if results.is_file():
        rows = read_csv(results, "run the same 'kdstyles compare' command again to rebuild it",
                        required=("preset", "seed", "network", "run_dir"))
        return [{k: _num(v) for k, v in row.items()} for row in rows]
    run = RunFolder(folder)
    if run.eval_path.is_file():
        data = run.read_eval()
        try:
            return [{"preset": data.get("preset", "run"), "seed": data.get("seed", 0), "network": n,
                     "checkpoint": data["checkpoint"], "split": data["split"], "run_dir": str(folder), **m}
                    for n, m in data["networks"].items()]
        except (KeyError, AttributeError, TypeError) as exc:
            raise KDError(f"'{run.eval_path}' is damaged (no {exc}); write it again with "
                          f"'kdstyles evaluate {folder}'") from None
    raise KDError(f"'{folder}' has neither results.csv (a comparison) nor eval.json (an evaluated run); "
                  "run kdstyles compare or kdstyles evaluate first")


def run_dirs(folder: Path, rows: list[dict[str, Any]]) -> dict[tuple[str, int], Path]:
    """(preset, seed) -> run folder, resolved inside the report's folder when moved."""
    out = {}
    for r in rows:
        path = Path(str(r["run_dir"]))
        local = folder / path.name
        out[(r["preset"], r["seed"])] = local if local.is_dir() else (folder if path == folder else path)
    return out


def mean_std(values: list[float]) -> tuple[float, float, int]:
    vals = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    if not vals:
        return math.nan, math.nan, 0
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals)


def aggregate(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, tuple[float, float, int]]]:
    """(preset, network) -> metric -> (mean, sample std, n) over seeds."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["preset"], r["network"])].append(r)
    metrics = metric_set(rows)
    return {key: {m: mean_std([r.get(m) for r in rs]) for m in (*metrics, "parameters")} for key, rs in groups.items()}


def presets_in(rows) -> list[str]:
    return list(dict.fromkeys(r["preset"] for r in rows))


def networks_in(rows) -> list[str]:
    order = list(dict.fromkeys(r["network"] for r in rows))
    return [n for n in order if n != "teacher"]


def paired(rows: list[dict[str, Any]], target: str = TARGET, metric: str | None = None) -> list[dict[str, Any]]:
    """``target`` against each other preset: per-seed differences of ``metric`` per network."""
    metric = metric or primary(rows)
    by = {(r["preset"], r["network"], r["seed"]): r.get(metric) for r in rows}
    out = []
    for base in presets_in(rows):
        if base == target:
            continue
        for net in networks_in(rows):
            diffs = [by[(target, net, s)] - by[(base, net, s)] for (p, n, s) in by
                     if p == target and n == net and (base, net, s) in by
                     and isinstance(by[(base, net, s)], (int, float))]
            if diffs:
                mean, std, n = mean_std(diffs)
                wins = sum(d < 0 if lower_is_better(metric) else d > 0 for d in diffs)
                out.append({"baseline": base, "network": net, "mean": mean, "std": std, "wins": wins, "n": n})
    return out


# ----------------------------------------------------------------------------- tables


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


# ----------------------------------------------------------------------------- plots


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _figure(w: float, h: float, n: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(n, 4)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(w * cols, h * ((n + cols - 1) // cols)),
                             squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat[:n])


def plot_curves(rows, dirs, metric: str) -> str | None:
    series: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (preset, _seed), run in dirs.items():
        folder = RunFolder(run)
        if not folder.metrics_path.is_file():
            continue
        for r in folder.read_metrics():
            if r.get(f"val_{metric}"):
                series[(r["network"], preset)][int(r["epoch"])].append(float(r[f"val_{metric}"]))
    if not series:
        return None
    nets = list(dict.fromkeys(n for n, _ in series))
    fig, axes = _figure(3.6, 2.8, len(nets))
    for ax, net in zip(axes, nets):
        for (n, preset), by_epoch in series.items():
            if n == net:
                xs = sorted(by_epoch)
                ax.plot(xs, [statistics.fmean(by_epoch[x]) for x in xs], marker=".", label=preset)
        ax.set_title(net)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"val {metric}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return _png(fig)


def _details(dirs) -> dict[str, list[dict]]:
    """preset -> the eval.json of each seed."""
    out: dict[str, list[dict]] = defaultdict(list)
    for (preset, _seed), run in dirs.items():
        folder = RunFolder(run)
        if folder.eval_path.is_file():
            out[preset].append(folder.read_eval())
    return out


def _focus(evals: list[dict]) -> str:
    nets = evals[0]["details"]
    return "ensemble" if "ensemble" in nets else next(n for n in nets if n != "teacher")


def plot_confusions(details) -> str | None:
    import numpy as np

    items = [(p, evs) for p, evs in details.items() if evs and "confusion" in next(iter(evs[0]["details"].values()))]
    if not items:
        return None
    fig, axes = _figure(3.2, 3.0, len(items))
    for ax, (preset, evs) in zip(axes, items):
        net = _focus(evs)
        cm = np.sum([np.array(e["details"][net]["confusion"]) for e in evs], axis=0).astype(float)
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        names = evs[0].get("class_names") or [str(i) for i in range(len(cm))]
        ax.set_xticks(range(len(names)), names, rotation=60, fontsize=6, ha="right")
        ax.set_yticks(range(len(names)), names, fontsize=6)
        for i in range(len(cm)):
            for j in range(len(cm)):
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black")
        ax.set_title(f"{preset}: {net}", fontsize=9)
        ax.set_xlabel("predicted", fontsize=7)
        ax.set_ylabel("true", fontsize=7)
    return _png(fig)


def plot_per_class(details) -> str | None:
    import numpy as np

    items = [(p, evs) for p, evs in details.items() if evs and "f1" in next(iter(evs[0]["details"].values()))]
    if not items:
        return None
    names = items[0][1][0].get("class_names") or []
    fig, axes = _figure(max(4.0, 0.6 * len(names) * len(items) / 2), 3.0, 1)
    ax = axes[0]
    width = 0.8 / len(items)
    for k, (preset, evs) in enumerate(items):
        net = _focus(evs)
        f1 = np.mean([e["details"][net]["f1"] for e in evs], axis=0)
        ax.bar(np.arange(len(f1)) + k * width, f1, width, label=f"{preset} ({net})")
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=30, fontsize=7, ha="right")
    ax.set_ylabel("per-class F1 (mean over seeds)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    return _png(fig)


def plot_reliability(details) -> str | None:
    items = [(p, evs) for p, evs in details.items()
             if evs and "reliability" in next(iter(evs[0]["details"].values()))]
    if not items:
        return None
    fig, axes = _figure(3.0, 3.0, len(items))
    for ax, (preset, evs) in zip(axes, items):
        net = _focus(evs)
        bins = len(evs[0]["details"][net]["reliability"])
        count, conf, acc = [0] * bins, [0.0] * bins, [0.0] * bins
        for e in evs:
            for b, cell in enumerate(e["details"][net]["reliability"]):
                if cell["count"]:
                    count[b] += cell["count"]
                    conf[b] += cell["confidence"] * cell["count"]
                    acc[b] += cell["accuracy"] * cell["count"]
        xs = [(b + 0.5) / bins for b in range(bins)]
        ys = [acc[b] / count[b] if count[b] else 0 for b in range(bins)]
        ax.bar(xs, ys, width=1 / bins, edgecolor="k", alpha=0.7, label="accuracy")
        ax.plot([0, 1], [0, 1], "r--", lw=1)
        ece = statistics.fmean(e["networks"][net]["ece"] for e in evs)
        ax.set_title(f"{preset}: {net}, ECE {ece:.3f}", fontsize=9)
        ax.set_xlabel("confidence", fontsize=7)
        ax.set_ylabel("accuracy", fontsize=7)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    return _png(fig)


def plot_accuracy_vs_parameters(rows, metric: str = "accuracy") -> str | None:
    agg = aggregate(rows)
    if not agg:
        return None
    fig, axes = _figure(6.0, 4.0, 1)
    ax = axes[0]
    markers = {"teacher": "*", "ensemble": "D"}
    for (preset, net), m in sorted(agg.items()):
        mean, std, n = m[metric]
        params = m["parameters"][0]
        if n == 0 or math.isnan(params):
            continue
        ax.errorbar(params, mean, yerr=std, fmt=markers.get(net, "o"), capsize=3, label=f"{preset}: {net}")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel(f"test {metric} (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return _png(fig)


# ----------------------------------------------------------------------------- compression


def compression(folder: Path, dirs) -> list[dict[str, Any]]:
    """Parameters, FLOPs and CPU latency (batch 1 and 32) of every network, measured once
    (on the run with the most networks) and cached in compression.json."""
    cache = folder / "compression.json"
    if cache.is_file():
        try:
            return read_json(cache, "", kind=list)
        except KDError:
            pass  # a damaged cache is measured again
    import torch

    from .api import Experiment
    from .export import cpu_latency_ms, flops_per_image
    from .models.zoo import count_parameters

    runs = [RunFolder(r) for r in dirs.values() if RunFolder(r).trained()]
    if not runs:
        return []
    run = max(runs, key=lambda r: len(r.info().get("parameters", {}))).path
    exp = Experiment.from_run(run, quiet=True)
    info = exp.run_info()
    nets = exp.cohort.networks
    size, ch = info.get("image_size"), info.get("channels")
    if size is None:
        return []
    teacher_params = count_parameters(nets["teacher"]) if "teacher" in nets else None
    rows = []
    for name, net in nets.items():
        net.eval()
        one, many = torch.rand(1, ch, size, size), torch.rand(32, ch, size, size)
        p = count_parameters(net)
        rows.append({"network": name, "parameters": p, "mflops": flops_per_image(net, one) / 1e6,
                     "latency_b1_ms": cpu_latency_ms(net, one), "latency_b32_ms": cpu_latency_ms(net, many, 5),
                     "relative_size": p / teacher_params if teacher_params else None})
    write_json(cache, rows)
    return rows


# ----------------------------------------------------------------------------- html


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


def render(folder: str | Path) -> Path:
    """Write FOLDER/report.html (self-contained) and return its path."""
    folder = Path(folder)
    rows = load_rows(folder)
    dirs = run_dirs(folder, rows)
    details = _details(dirs)
    metric = primary(rows)
    seeds = sorted({r["seed"] for r in rows})
    sections = [f"<h1>kdstyles report: {html.escape(folder.name)}</h1>",
                f'<p class="note">{len(presets_in(rows))} preset(s) × {len(seeds)} seed(s), test split, '
                f'{html.escape(str(rows[0].get("checkpoint", "best")))} checkpoint per network. '
                "Cells: mean ± sample standard deviation over seeds; best per column highlighted.</p>"]
    for net in networks_in(rows):
        header, body, best = table_data(rows, net)
        sections.append(f"<h2>{html.escape(net)}</h2>" + _html_table(header, body, best, cls="results"))
    diffs = paired(rows)
    if diffs:
        sections.append(f"<h2>{TARGET} against each baseline (paired by seed, {metric})</h2>")
        sections.append(_html_table(["baseline", "network", "mean difference", "std", "seeds won"],
                                    [[d["baseline"], d["network"], f"{d['mean']:+.4f}", f"{d['std']:.4f}",
                                      f"{d['wins']}/{d['n']}"] for d in diffs], cls="paired"))
    comp = compression(folder, dirs)
    if comp:
        sections.append("<h2>Compression (CPU)</h2>")
        sections.append(_html_table(
            ["network", "parameters", "MFLOPs / image", "latency b=1 (ms)", "latency b=32 (ms)", "size vs teacher"],
            [[c["network"], f"{c['parameters']:,}", f"{c['mflops']:.1f}", f"{c['latency_b1_ms']:.2f}",
              f"{c['latency_b32_ms']:.1f}", f"{c['relative_size']:.1%}" if c["relative_size"] else "–"]
             for c in comp], cls="compression"))
    plots = [(f"Test {metric} vs parameters", plot_accuracy_vs_parameters(rows, metric)),
             ("Training curves (validation, mean over seeds)", plot_curves(rows, dirs, metric)),
             ("Confusion matrices (rows: true class; summed over seeds)", plot_confusions(details)),
             ("Per-class F1", plot_per_class(details)),
             ("Reliability diagrams", plot_reliability(details))]
    for title, b64 in plots:
        if b64:
            sections.append(f"<h2>{html.escape(title)}</h2>{_img(b64, title)}")
    shown = False
    for (preset, _seed), run in sorted(dirs.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        folder_ = RunFolder(run)
        overlays = folder_.read_eval().get("overlays") if folder_.eval_path.is_file() else None
        if not overlays or (run / overlays[0]).is_file() is False or f"<h3>{preset}</h3>" in "".join(sections):
            continue
        if not shown:
            sections.append("<h2>Segmentation overlays (first test image, first seed)</h2>")
            shown = True
        b64 = base64.b64encode((run / overlays[0]).read_bytes()).decode()
        sections.append(f"<h3>{html.escape(preset)}</h3>{_img(b64, preset + ' overlay')}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>kdstyles report: {html.escape(folder.name)}"
            f"</title><style>{CSS}</style></head><body>{''.join(sections)}</body></html>\n")
    out = folder / "report.html"
    write_text(out, page)
    return out
