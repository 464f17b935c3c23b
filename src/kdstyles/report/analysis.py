"""What a comparison answers, from its files: the target routing against each baseline with
paired intervals, the teacher's margin over the students trained alone (and a plain warning
when it is too small for distillation to help), and what each edge contributes in an
ablation (``compare --ablate``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import KDError
from ..common.metrics import label as metric_label
from ..common.metrics import METRICS, lower_is_better, paired_metric
from ..styles.routing import ENSEMBLE, T
from ..store.runfolder import ComparisonFolder, Manifest, RunFolder
from ..tasks import TASKS
from .results import TARGET, mean_std, networks_in, presets_in, primary, run_dirs
from .significance import Drawn, interval_text, mcnemar, paired_interval, paired_ratio_interval, verdict

INDEPENDENT = "student"  # the preset whose students learn from labels alone
CLEAR_MARGIN = 0.01  # a teacher leading the independent students by less than 1 point has little to pass on


@dataclass
class Study:
    rows: list[dict[str, Any]]
    metric: str  # the metric the paired analysis uses: per image (eval.json) or drawn again (outputs.npz)
    # (preset, seed, network): per-image values, or the task's outputs to draw test images from
    values: dict[tuple[str, int, str], Any] = field(default_factory=dict)
    target: str = TARGET
    manifest: Manifest = field(default_factory=Manifest)
    compared: dict[tuple, dict[str, Any] | None] = field(default_factory=dict)  # _compare's answers (drawing is slow)
    closure: list[dict[str, Any]] | None = None  # gap_closure's answer, drawn once for findings, tables and report
    folder: Path | None = None  # the comparison (or run) folder the rows come from
    choice: dict[str, Any] | None = None  # winner's answer, drawn once
    split: str = "test"  # or an external set's name: the images the rows and values are of
    evaluations: dict[tuple[str, int], Any] = field(default_factory=dict)  # (preset, seed): its run's record

    @property
    def seeds(self) -> list[int]:
        return sorted({r["seed"] for r in self.rows})

    def value(self, preset: str, seed: int, network: str) -> float | None:
        return next((r.get(self.metric) for r in self.rows if (r["preset"], r["seed"], r["network"]) ==
                     (preset, seed, network) and isinstance(r.get(self.metric), (int, float))), None)


def load_study(folder: str | Path, rows: list[dict[str, Any]], split: str = "test") -> Study:
    """The rows with comparison.json (when there is one) and each run's per-image values (of the
    test split, or of an external set: ``split``, the rows' too)."""
    folder = Path(folder)
    manifest = ComparisonFolder(folder).manifest()
    measured = {k for r in rows for k, v in r.items() if isinstance(v, (int, float))}  # not empty columns
    metric = paired_metric(measured) or primary(rows)
    presets = presets_in(rows)
    target = manifest.target
    if target not in presets:
        target = TARGET if TARGET in presets else next((p for p in presets if p != INDEPENDENT), presets[0])
    values, evaluations = {}, {}
    for (preset, seed), run in run_dirs(folder, rows).items():
        rf = RunFolder(run)
        try:
            evaluation = rf.evaluation(split)
            per_image = evaluation.per_image if evaluation is not None else {}
        except KDError:
            evaluation, per_image = None, {}
        if evaluation is not None:
            evaluations[(preset, seed)] = evaluation
        for network, metrics in per_image.items():
            if isinstance(metrics, dict) and isinstance(metrics.get(metric), list):
                values[(preset, seed, network)] = np.asarray(metrics[metric], dtype=np.float64)
        if METRICS.get(metric) and METRICS[metric].drawn:
            for network, drawable in _drawable(rf, METRICS[metric].task, split).items():
                values[(preset, seed, network)] = drawable
    return Study(rows, metric, values, target, manifest, folder=folder, split=split, evaluations=evaluations)


def _drawable(rf: RunFolder, task: str | None, split: str = "test") -> dict[str, Any]:
    """Each network's test outputs in the form its task draws test images again from
    (``Task.drawable``), read from outputs.npz; none for a run evaluated before kdstyles kept
    them, or a damaged file (that run then pairs by seed only)."""
    if not rf.outputs_file(split).is_file():
        return {}
    try:
        arrays = rf.read_outputs(split)
        classes = len(rf.read_eval(split).class_names)
    except KDError:
        return {}
    outputs = {key[4:]: v for key, v in arrays.items() if key.startswith("out.")}
    if "labels" not in arrays or not classes or task not in TASKS:
        return {}
    try:
        return TASKS[task].drawable(outputs, arrays["labels"], classes)
    except (ValueError, IndexError):  # arrays of the wrong shapes: a damaged file
        return {}


def paired_difference(ia: Any, ib: Any, metric: str) -> np.ndarray | Drawn | None:
    """One seed's paired difference of two networks on the same test images: per-image values
    subtracted, or the metric of both drawn on the same images (detection, multi-label); None
    if they were not scored on the same images."""
    if isinstance(ia, np.ndarray) and isinstance(ib, np.ndarray):
        return ia - ib if len(ia) == len(ib) else None
    if ia is None or ib is None or isinstance(ia, np.ndarray) or not ia.same_images(ib):
        return None
    value = float(ia.metrics()[metric][0] - ib.metrics()[metric][0])
    return Drawn(ia.images, value, lambda counts: ia.metrics(counts)[metric] - ib.metrics(counts)[metric])


def _compare(study: Study, a: tuple[str, str], b: tuple[str, str]) -> dict[str, Any] | None:
    """(preset, network) ``a`` minus ``b``, paired by seed (and by image where both runs kept
    per-image values, or outputs to draw from, on the same test split)."""
    if (a, b) not in study.compared:
        study.compared[(a, b)] = _difference(study, a, b)
    return study.compared[(a, b)]


def _difference(study: Study, a: tuple[str, str], b: tuple[str, str]) -> dict[str, Any] | None:
    seed_diffs, image_diffs, correct = [], [], []
    for seed in study.seeds:
        va, vb = study.value(a[0], seed, a[1]), study.value(b[0], seed, b[1])
        if va is None or vb is None:
            continue
        seed_diffs.append(va - vb)
        ia, ib = study.values.get((a[0], seed, a[1])), study.values.get((b[0], seed, b[1]))
        diff = paired_difference(ia, ib, study.metric)
        if diff is not None:
            image_diffs.append(diff)
            correct.append((ia, ib))
    if not seed_diffs:
        return None
    mean, std, n = mean_std(seed_diffs)
    sign = -1 if lower_is_better(study.metric) else 1
    out = {"mean": mean, "std": std, "n": n, "wins": sum(sign * d > 0 for d in seed_diffs),
           "lo": float("nan"), "hi": float("nan")}
    if len(image_diffs) == n:  # every seed paired image by image
        _, out["lo"], out["hi"] = paired_interval(image_diffs)
        if study.metric == "accuracy":
            out["only_a"], out["only_b"], out["p"] = mcnemar([c[0] for c in correct], [c[1] for c in correct])
    out["verdict"] = verdict(out["lo"], out["hi"])
    out["text"] = interval_text(mean, out["lo"], out["hi"])
    return out


def _networks(study: Study) -> list[str]:
    return networks_in(study.rows)  # the students, then the ensemble


def paired_rows(study: Study) -> list[dict[str, Any]]:
    """The target against every other preset (ablation variants have their own table), per
    student and the ensemble."""
    variants = set((study.manifest.ablation or {}).get("removed", {}))
    out = []
    for base in presets_in(study.rows):
        if base == study.target or base in variants:
            continue
        for net in _networks(study):
            d = _compare(study, (study.target, net), (base, net))
            if d:
                out.append({"baseline": base, "network": net, **d})
    return out


def teacher_margin(study: Study) -> list[dict[str, Any]]:
    """The teacher against each student of the independent-students preset, per seed paired
    on the same test images (the teacher of the target's runs, or of any run that has one)."""
    presets = presets_in(study.rows)
    if INDEPENDENT not in presets:
        return []
    with_teacher = [p for p in [study.target, *presets] if any(r["preset"] == p and r["network"] == T
                                                                 for r in study.rows)]
    if not with_teacher:
        return []
    source = with_teacher[0]
    out = []
    for net in _networks(study):
        if net == ENSEMBLE:
            continue
        d = _compare(study, (source, T), (INDEPENDENT, net))
        if d:
            out.append({"network": net, "teacher_of": source, **d})
    return out


def _teacher_value(study: Study, preset: str, seed: int) -> tuple[float | None, Any]:
    """The teacher's test value and per-image values (or outputs) for a seed: that of the preset's
    own run, else of the target's, else of any run of the seed that has a teacher."""
    for p in (preset, study.target, *presets_in(study.rows)):
        v = study.value(p, seed, T)
        if v is not None:
            return v, study.values.get((p, seed, T))
    return None, None


def gap_closure(study: Study) -> list[dict[str, Any]]:
    """Per preset and network, the share of the teacher's lead over the students trained alone
    that distillation recovers: (distilled - alone) / (teacher - alone), the means over seeds,
    with a bootstrap interval drawing each seed's test images once for all three networks (the
    paired differences' machinery). 1 (100%): the student reaches its teacher; 0: no better than
    alone; below 0: worse. None where the teacher does not lead."""
    if study.closure is None:
        study.closure = _gap_closure(study) if INDEPENDENT in presets_in(study.rows) else []
    return study.closure


def _gap_closure(study: Study) -> list[dict[str, Any]]:
    out = []
    for preset in presets_in(study.rows):
        if preset == INDEPENDENT:
            continue
        for net in _networks(study):
            gains, leads, nums, dens = [], [], [], []
            for seed in study.seeds:
                a, b = study.value(preset, seed, net), study.value(INDEPENDENT, seed, net)
                t, it = _teacher_value(study, preset, seed)
                if a is None or b is None or t is None:
                    continue
                gains.append(a - b)
                leads.append(t - b)
                ib = study.values.get((INDEPENDENT, seed, net))
                num = paired_difference(study.values.get((preset, seed, net)), ib, study.metric)
                den = paired_difference(it, ib, study.metric)
                if num is not None and den is not None:
                    nums.append(num)
                    dens.append(den)
            if not gains:
                continue
            gain, lead = float(np.mean(gains)), float(np.mean(leads))
            leads_the_way = lead < 0 if lower_is_better(study.metric) else lead > 0
            share, lo, hi = (gain / lead, float("nan"), float("nan")) if leads_the_way else (float("nan"),) * 3
            if leads_the_way and len(nums) == len(gains):  # every seed paired image by image (paired metrics
                share, lo, hi = paired_ratio_interval(nums, dens)  # are higher-is-better: metrics.paired_metric)
            out.append({"preset": preset, "network": net, "share": share, "lo": lo, "hi": hi, "gain": gain,
                        "lead": lead, "n": len(gains), "text": share_text(share, lo, hi)})
    return out


CHOICE_DRAWS = 1000  # bootstrap draws of the validation images behind a winner's confidence


def winner(study: Study) -> dict[str, Any] | None:
    """The comparison's choice, made on the validation split only (each run's eval-val.json):
    the recipe and network (a student or the ensemble; the students trained alone and recipes
    marked ``baseline`` excepted)
    with the best mean validation value over the seeds, how sure that choice is (the share of
    bootstrap draws of the validation images, and of the seeds, in which it stays first; or
    the seeds it wins where no per-image values were kept), the runner-up, and the winner's
    test value and gap closure, reported once. None without validation results."""
    from .significance import _bootstrap

    if study.folder is None:
        return None
    metric = study.metric
    sign = -1 if lower_is_better(metric) else 1
    scores: dict[tuple[str, str], dict[int, Any]] = {}
    references = {INDEPENDENT, *study.manifest.baselines}  # baselines are never the choice
    for (preset, seed), run in run_dirs(study.folder, study.rows).items():
        if preset in references:
            continue
        rf = RunFolder(run)
        try:
            ev = rf.evaluation("val")
        except KDError:
            ev = None
        if not ev:
            continue
        for net in _networks(study):
            m = ev.networks.get(net, {}).get(metric)
            if isinstance(m, (int, float)):
                per = (ev.per_image.get(net) or {}).get(metric)
                scores.setdefault((preset, net), {})[seed] = (float(m), np.asarray(per, dtype=np.float64)
                                                              if isinstance(per, list) else None)
    seeds = study.seeds
    full = {k: v for k, v in scores.items() if all(s in v for s in seeds)}
    if not full:
        return None
    keys = list(full)
    means = {k: float(np.mean([full[k][s][0] for s in seeds])) for k in keys}
    ranked = sorted(keys, key=lambda k: sign * means[k], reverse=True)
    best = ranked[0]
    out: dict[str, Any] = {"preset": best[0], "network": best[1], "metric": metric, "val": means[best],
                           "seeds": len(seeds), "candidates": len(keys)}
    if len(ranked) > 1:
        out["runner_up"] = {"preset": ranked[1][0], "network": ranked[1][1], "val": means[ranked[1]]}
    per_image = all(full[k][s][1] is not None and len(full[k][s][1]) == len(full[best][s][1])
                    for k in keys for s in seeds)
    if len(keys) > 1 and per_image:
        _, drawn = _bootstrap([tuple(full[k][s][1] for k in keys) for s in seeds], CHOICE_DRAWS, 0)
        firsts = np.argmax(sign * drawn, axis=0)
        out["sure"] = float(np.mean(firsts == keys.index(best)))
        out["sure_how"] = f"first in {100 * out['sure']:.0f}% of {CHOICE_DRAWS:,} draws of the validation images" + \
            (" and seeds" if len(seeds) > 1 else "")
    elif len(keys) > 1:
        wins = sum(all(sign * full[best][s][0] >= sign * full[k][s][0] for k in keys) for s in seeds)
        out["sure_how"] = f"first in {wins} of {len(seeds)} seed(s) (no per-image values to draw)"
    test = [study.value(best[0], s, best[1]) for s in seeds]
    if all(v is not None for v in test):
        out["test"] = float(np.mean(test))
    closed = next((g for g in gap_closure(study) if (g["preset"], g["network"]) == best), None)
    if closed is not None and not np.isnan(closed["share"]):
        out["closure"] = closed["text"]
    return out


def chosen(study: Study) -> dict[str, Any] | None:
    """:func:`winner`, computed once per study (findings, the report and the CLI ask it)."""
    if study.choice is None:
        study.choice = winner(study) or {}
    return study.choice or None


def winner_text(choice: dict[str, Any]) -> str:
    """The choice in one sentence, its test numbers once."""
    label = metric_label(choice["metric"])
    runner = choice.get("runner_up")
    text = (f"Chosen on the validation split: {choice['preset']} {choice['network']} (validation {label} "
            f"{choice['val']:.4f}" + (f"; {choice['sure_how']}" if "sure_how" in choice else "") +
            (f"; runner-up {runner['preset']} {runner['network']} {runner['val']:.4f}" if runner else "") + ").")
    if "test" in choice:
        text += f" Its test {label}, reported once: {choice['test']:.4f}" + \
            (f", {choice['closure']} of the teacher's lead recovered" if "closure" in choice else "") + "."
    return text


def share_text(share: float, lo: float, hi: float) -> str:
    """``45% [20, 70]``, or ``n/a`` where the teacher has no lead to close."""
    if np.isnan(share):
        return "n/a (no teacher lead)"
    return f"{100 * share:.0f}%" + ("" if np.isnan(lo) else f" [{100 * lo:.0f}, {100 * hi:.0f}]")


def margin_is_clear(margin: list[dict[str, Any]]) -> bool:
    return all(m["mean"] >= CLEAR_MARGIN and not m["lo"] <= 0 for m in margin)


def ablation_rows(study: Study) -> list[dict[str, Any]]:
    """What each ablation variant removed, and the full routing minus that variant per network:
    positive = the removed edge(s) helped."""
    ablation = study.manifest.ablation or {}
    full, removed = ablation.get("full"), ablation.get("removed", {})
    presets = presets_in(study.rows)
    if full not in presets:
        return []
    out = []
    for variant, edges in removed.items():
        if variant == full or variant not in presets:
            continue
        for net in _networks(study):
            d = _compare(study, (full, net), (variant, net))
            if d:
                out.append({"variant": variant, "removed": edges, "network": net, **d})
    return out


def findings(study: Study) -> list[str]:
    """The comparison's answer in plain sentences (the summary after compare, the report's top)."""
    lines = []
    label = metric_label(study.metric)
    margin = teacher_margin(study)
    if margin:
        parts = ", ".join(f"{m['network']} {m['text']}" for m in margin)
        if margin_is_clear(margin):
            lines.append(f"The teacher leads the students trained alone ({label}, teacher minus student): {parts}.")
        else:
            lines.append(f"Warning: the teacher is not clearly better than the students trained alone ({label}, "
                         f"teacher minus student: {parts}), so distillation has little to pass on. Train the teacher "
                         "longer (compare --teacher shared --teacher-set train.epochs=N), start it from ImageNet "
                         "weights (networks.teacher.pretrained=imagenet) or use a larger teacher.")
    elif INDEPENDENT not in presets_in(study.rows) and len(presets_in(study.rows)) > 1:
        lines.append(f"Add the '{INDEPENDENT}' preset to see whether the teacher is better than students trained "
                     "alone.")
    closure = [g for g in gap_closure(study) if not np.isnan(g["share"])]
    if closure:
        by_preset: dict[str, list[str]] = {}
        for g in closure:
            by_preset.setdefault(g["preset"], []).append(f"{g['network']} {g['text']}")
        parts = "; ".join(f"{p} {', '.join(v)}" for p, v in by_preset.items())
        where = "the test split" if study.split == "test" else f"external set '{study.split}'"
        lines.append(f"Share of the teacher's lead recovered on {where} ({label}, (distilled - alone) / "
                     f"(teacher - alone), 100% = as good as the teacher): {parts}.")
    choice = chosen(study) if study.split == "test" else None  # chosen on validation, its test value once
    if choice is not None and choice["candidates"] > 1:
        lines.append(winner_text(choice))
    vs_alone = [d for d in paired_rows(study) if d["baseline"] == INDEPENDENT]
    if vs_alone:
        parts = ", ".join(f"{d['network']} {d['text']} ({d['verdict']})" for d in vs_alone)
        lines.append(f"{study.target} against students trained alone ({label}): {parts}.")
    ablation = ablation_rows(study)
    if ablation:
        key = ENSEMBLE if any(a["network"] == ENSEMBLE for a in ablation) else ablation[0]["network"]
        effect = {"better": "helps", "worse": "hurts", "not distinguishable": "makes no measurable difference"}
        for a in (a for a in ablation if a["network"] == key):
            lines.append(f"{'; '.join(a['removed'])}: {a['text']} for the {key} ({study.target} with it minus "
                         f"without it), {effect.get(a['verdict'], 'cannot be judged')}.")
    worse = worse_calibrated(study.rows)
    if worse:
        parts = ", ".join(f"{w['network']} of {w['preset']} {w['ece']:.3f}" for w in worse)
        lines.append(f"Calibration: markedly worse than the teacher's (test ECE {worse[0]['teacher']:.3f}, mean over "
                     f"seeds): {parts}. 'kdstyles evaluate RUN --calibrated' fits a temperature per network on the "
                     "validation split, and 'kdstyles export RUN --calibrated' deploys it.")
    return lines


WORSE_ECE = (2.0, 0.02)  # markedly worse calibrated: ECE above twice the teacher's and 2 points more


def worse_calibrated(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The students and ensembles whose test ECE (mean over seeds) is above ``WORSE_ECE[0]``
    times the teacher's and ``WORSE_ECE[1]`` more (the teacher's: its mean over every run)."""
    def ece(r: dict[str, Any]) -> float | None:
        v = r.get("ece")
        return float(v) if isinstance(v, (int, float)) and v == v else None

    teacher = [e for r in rows if r["network"] == T and (e := ece(r)) is not None]
    if not teacher:
        return []
    t = float(np.mean(teacher))
    by: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        if r["network"] != T and (e := ece(r)) is not None:
            by.setdefault((r["preset"], r["network"]), []).append(e)
    return [{"preset": p, "network": n, "ece": float(np.mean(v)), "teacher": t} for (p, n), v in by.items()
            if np.mean(v) > WORSE_ECE[0] * t and np.mean(v) > t + WORSE_ECE[1]]
