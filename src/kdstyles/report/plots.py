"""Plots for the report, each returned as a base64 PNG (None when there is nothing to draw)."""

from __future__ import annotations

import base64
import io
import math
import statistics
from collections import defaultdict

from ..store.runfolder import Evaluation, RunFolder
from ..styles.routing import T
from .results import aggregate

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


def details_of(dirs) -> dict[str, list[Evaluation]]:
    """preset -> the eval.json of each seed."""
    out: dict[str, list[Evaluation]] = defaultdict(list)
    for (preset, _seed), run in dirs.items():
        evaluation = RunFolder(run).evaluation()
        if evaluation is not None:
            out[preset].append(evaluation)
    return out


def _focus(evals: list[Evaluation]) -> str:
    nets = evals[0].details
    return "ensemble" if "ensemble" in nets else next(n for n in nets if n != "teacher")


def plot_confusions(details) -> str | None:
    import numpy as np

    items = [(p, evs) for p, evs in details.items() if evs and "confusion" in next(iter(evs[0].details.values()))]
    if not items:
        return None
    fig, axes = _figure(3.2, 3.0, len(items))
    for ax, (preset, evs) in zip(axes, items):
        net = _focus(evs)
        cm = np.sum([np.array(e.details[net]["confusion"]) for e in evs], axis=0).astype(float)
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        names = evs[0].class_names or [str(i) for i in range(len(cm))]
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

    items = [(p, evs) for p, evs in details.items() if evs and "f1" in next(iter(evs[0].details.values()))]
    if not items:
        return None
    names = items[0][1][0].class_names
    fig, axes = _figure(max(4.0, 0.6 * len(names) * len(items) / 2), 3.0, 1)
    ax = axes[0]
    width = 0.8 / len(items)
    for k, (preset, evs) in enumerate(items):
        net = _focus(evs)
        f1 = np.mean([e.details[net]["f1"] for e in evs], axis=0)
        ax.bar(np.arange(len(f1)) + k * width, f1, width, label=f"{preset} ({net})")
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=30, fontsize=7, ha="right")
    ax.set_ylabel("per-class F1 (mean over seeds)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    return _png(fig)


def plot_reliability(details) -> str | None:
    """A reliability diagram for every network of every preset and their ensemble (the seeds'
    bins pooled), the teacher once: accuracy against confidence, beside the diagonal."""
    items, teacher_shown = [], False
    for p, evs in details.items():
        if not evs or "reliability" not in next(iter(evs[0].details.values())):
            continue
        for net in evs[0].details:
            if net == T and teacher_shown:
                continue
            teacher_shown = teacher_shown or net == T
            items.append((p, net, evs))
    if not items:
        return None
    fig, axes = _figure(3.0, 3.0, len(items))
    fig.subplots_adjust(hspace=0.45)  # room for each diagram's title under the row above
    for ax, (preset, net, evs) in zip(axes, items):
        bins = len(evs[0].details[net]["reliability"])
        count, conf, acc = [0] * bins, [0.0] * bins, [0.0] * bins
        for e in evs:
            for b, cell in enumerate(e.details[net]["reliability"]):
                if cell["count"]:
                    count[b] += cell["count"]
                    conf[b] += cell["confidence"] * cell["count"]
                    acc[b] += cell["accuracy"] * cell["count"]
        xs = [(b + 0.5) / bins for b in range(bins)]
        ys = [acc[b] / count[b] if count[b] else 0 for b in range(bins)]
        ax.bar(xs, ys, width=1 / bins, edgecolor="k", alpha=0.7, label="accuracy")
        ax.plot([0, 1], [0, 1], "r--", lw=1)
        ece = statistics.fmean(e.networks[net]["ece"] for e in evs)
        ax.set_title(f"{net if net == T else preset + ': ' + net}, ECE {ece:.3f}", fontsize=9)
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
