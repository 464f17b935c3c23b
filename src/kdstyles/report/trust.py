"""Before you deploy: what a comparison says of each network beyond its test score, from its
files. How honest its probabilities are (ECE before and after the temperature fitted on the
validation split), which cases it should hand to a person (AURC; conformal prediction sets:
their coverage and size), and how it holds on images from elsewhere (each external set of
``data.external``: the headline metric there, its change from the test split with a 95%
bootstrap interval, and the prediction sets' coverage there, fitted on the training site's
validation split)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..common.metrics import label as metric_label
from ..styles.routing import T
from .analysis import Study, chosen, load_study
from .results import external_sets, load_rows, mean_std, networks_in, presets_in, teacher_preset
from .significance import unpaired_interval


def external_studies(folder: str | Path) -> dict[str, Study]:
    """A study per external set of the comparison (or run), by name."""
    return {name: load_study(folder, load_rows(Path(folder), name), name) for name in external_sets(Path(folder))}


def _mean(rows: list[dict[str, Any]], preset: str, network: str, key: str) -> float | None:
    mean, _, n = mean_std([r.get(key) for r in rows if (r["preset"], r["network"]) == (preset, network)])
    return mean if n else None


def _f(v: float | None, fmt: str = "{:.3f}") -> str:
    return "–" if v is None else fmt.format(v)


def change(study: Study, external: Study, preset: str, network: str) -> tuple[float, float, float] | None:
    """The network's metric on the external set minus on the test split (mean over seeds), with
    an unpaired 95% bootstrap interval over both sets' images and the seeds; None without the
    per-image values of every seed."""
    test, ext = [], []
    for seed in study.seeds:
        a = external.values.get((preset, seed, network))
        b = study.values.get((preset, seed, network))
        if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
            ext.append(a)
            test.append(b)
    if not test or len(test) != len(study.seeds):
        return None
    return unpaired_interval(ext, test)


def _interval(c: tuple[float, float, float] | None) -> str:
    if c is None:
        return "–"
    d, lo, hi = c
    return f"{100 * d:+.1f} pt" + ("" if np.isnan(lo) else f" [{100 * lo:+.1f}, {100 * hi:+.1f}]")


def coverage_target(study: Study) -> float | None:
    """The prediction sets' target coverage, as the first calibrated run's evaluation says it."""
    for evaluation in study.evaluations.values():
        target = ((evaluation.calibration or {}).get("conformal") or {}).get("target")
        if target:
            return float(target)
    return None


def deploy_table(study: Study, externals: dict[str, Study]) -> tuple[list[str], list[list[str]]]:
    """One row per preset and network (the teacher once): the test metric, ECE -> calibrated ECE,
    AURC, the prediction sets' coverage and size, and per external set the metric there, its
    change from the test split [95% CI] and the sets' coverage there."""
    rows, metric = study.rows, study.metric
    target = coverage_target(study)
    header = ["preset", "network", f"test {metric_label(metric)}", "ECE -> calibrated", "AURC",
              "set coverage / size" + (f" (target {target:.0%})" if target else "")]
    for name in externals:
        header += [f"{name}: {metric_label(metric)} (change [95% CI])", f"{name}: set coverage"]
    body = []
    teacher = teacher_preset(rows)
    pairs = ([(teacher, T)] if teacher else []) + [(p, n) for p in presets_in(rows) for n in networks_in(rows)
                                                   if _mean(rows, p, n, metric) is not None]
    for preset, net in pairs:
        ece, cal = _mean(rows, preset, net, "ece"), _mean(rows, preset, net, "ece_calibrated")
        coverage, size = _mean(rows, preset, net, "coverage"), _mean(rows, preset, net, "set_size")
        line = [preset if net != T else f"{preset} (teacher)", net, _f(_mean(rows, preset, net, metric)),
                f"{_f(ece)} -> {_f(cal)}" if cal is not None else _f(ece), _f(_mean(rows, preset, net, "aurc")),
                f"{_f(coverage)} / {_f(size, '{:.2f}')}" if coverage is not None else "–"]
        for ext in externals.values():
            value = _mean(ext.rows, preset, net, metric)
            line += [f"{_f(value)} ({_interval(change(study, ext, preset, net))})" if value is not None else "–",
                     _f(_mean(ext.rows, preset, net, "coverage"))]
        body.append(line)
    return header, body


def deploy_line(study: Study, externals: dict[str, Study]) -> str | None:
    """The comparison's choice (on validation) in one line: its calibrated ECE, prediction sets and
    its metric on each external set (the demo prints it)."""
    choice = chosen(study)
    if not choice:
        return None
    preset, net, rows, metric = choice["preset"], choice["network"], study.rows, study.metric
    parts = []
    ece, cal = _mean(rows, preset, net, "ece"), _mean(rows, preset, net, "ece_calibrated")
    if cal is not None:
        parts.append(f"test ECE {ece:.3f}, {cal:.3f} at the temperature fitted on validation")
    coverage, size = _mean(rows, preset, net, "coverage"), _mean(rows, preset, net, "set_size")
    if coverage is not None:
        parts.append(f"prediction sets hold the true class for {coverage:.1%} of test images "
                     f"({size:.2f} classes on average)")
    for name, ext in externals.items():
        value = _mean(ext.rows, preset, net, metric)
        if value is not None:
            ext_cov = _mean(ext.rows, preset, net, "coverage")
            parts.append(f"{metric_label(metric)} {value:.3f} on '{name}' ({_interval(change(study, ext, preset, net))}"
                         " from the test split" + (f"; sets cover {ext_cov:.1%} there" if ext_cov is not None else "")
                         + ")")
    return f"Before you deploy {preset} {net}: " + "; ".join(parts) + "." if parts else None


def about(study: Study) -> str:
    """What an external set is, as its first run's evaluation says (e.g. "1000 images from
    synthetic site 2")."""
    return next((e.about for e in study.evaluations.values() if getattr(e, "about", None)), "")


DEPLOY_NOTE = ("Calibration: ECE on the test split, then at the temperature fitted on the validation split. AURC: "
               "the area under the risk-coverage curve (lower: its errors are among its least confident answers). "
               "Prediction sets: split-conformal (APS) fitted on the validation split, their share of test images "
               "holding the true class and their mean size. External sets: the metric there and its change from the "
               "test split, with a 95% bootstrap interval over both sets' images and the seeds; the sets' coverage "
               "there shows whether the guarantee travels. Means over seeds.")


def group_rows(study: Study) -> list[dict[str, Any]]:
    """Per data.groups column, preset and network (the teacher once per column): the metric in each
    group (mean over seeds; groups under the minimum count flagged), the worst group, the gap
    between the best and worst of the others with a 95% bootstrap interval, and for students and
    ensembles the change from their teacher's gap, paired on the same test images
    (:func:`~kdstyles.report.significance.group_gap_intervals`). Needs per-image values (metrics
    that are means over images)."""
    from .analysis import _teacher_value
    from .significance import group_gap_intervals

    found = {key: e.groups for key, e in study.evaluations.items() if e.groups}
    if not found:
        return []
    metric, out = study.metric, []
    first = next(iter(found.values()))
    columns = list(first.get("columns", {}))
    for column in columns:
        teacher = teacher_preset(study.rows)
        pairs = ([(teacher, T)] if teacher else []) + [(p, n) for p in presets_in(study.rows)
                                                       for n in networks_in(study.rows)]
        for preset, net in pairs:
            values, groups, per_group, names, counts, small = [], [], {}, None, None, []
            teacher_too = []
            for seed in study.seeds:
                g = found.get((preset, seed), {}).get("columns", {}).get(column)
                v = study.values.get((preset, seed, net))
                if g is None or not isinstance(v, np.ndarray) or len(v) != len(g["of_image"]):
                    continue
                names, counts, small = g["values"], g["counts"], g["small"]
                index = {name: i for i, name in enumerate(names)}
                groups.append(np.array([index[x] for x in g["of_image"]]))
                _, t = _teacher_value(study, preset, seed)
                values.append((v,) + ((t,) if net != T and isinstance(t, np.ndarray) and len(t) == len(v) else ()))
                teacher_too.append(len(values[-1]) == 2)
                for name in names:
                    per_group.setdefault(name, []).append(g["networks"].get(net, {}).get(name, {}).get(metric))
            if not values:
                continue
            eligible = np.array([c >= (first.get("min_count") or 0) for c in counts])
            mean = {name: mean_std(vals)[0] for name, vals in per_group.items()}
            ranked = [n for n in names if eligible[names.index(n)] and mean[n] == mean[n]]
            row = {"column": column, "preset": preset, "network": net, "metric": metric,
                   "groups": [(n, mean[n], counts[i], n in small) for i, n in enumerate(names)],
                   "worst": min(ranked, key=lambda n: mean[n]) if ranked else None, "gap": None, "change": None,
                   "min_count": first.get("min_count")}
            if eligible.sum() >= 2:
                if all(teacher_too):
                    gap, _, change = group_gap_intervals(values, groups, eligible)
                    row["change"] = change
                else:
                    gap = group_gap_intervals([v[:1] for v in values], groups, eligible)[0]
                row["gap"] = gap
            out.append(row)
    return out


def group_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """:func:`group_rows` as a table."""
    header = ["column", "preset", "network", "per group (n; * under the minimum)", "worst group",
              "gap between groups [95% CI]", "change from the teacher's gap [95% CI]"]
    body = []
    for r in rows:
        groups = " · ".join(f"{n} {_f(m)} ({c}{'*' if few else ''})" for n, m, c, few in r["groups"])
        change = r["change"]
        word = ""
        if change is not None and not np.isnan(change[1]):
            word = " narrowed" if change[2] < 0 else " widened" if change[1] > 0 else " no clear change"
        body.append([r["column"], r["preset"], r["network"], groups, r["worst"] or "–", _interval(r["gap"]),
                     _interval(change) + word if change is not None else "–"])
    return header, body


def group_title(rows: list[dict[str, Any]]) -> str:
    """The subgroup table's title."""
    r = rows[0]
    return (f"Subgroups (data.groups): test {metric_label(r['metric'])} per group, mean over seeds; the gap is the best "
            f"group minus the worst among those of at least {r['min_count']} images, with a 95% bootstrap interval "
            "over test images and seeds; its change from the teacher's is paired on the same images")
