"""A run's network as a Hugging Face Hub model repository (``kdstyles push``).

The repository holds what kdstyles export writes, and what the Hub shows::

    README.md                  the model card, with the metadata the Hub reads (library, licence,
                               tags, pipeline, datasets, a model-index of the test metrics)
    model.onnx, model.json     the ONNX model and its sidecar (kdstyles predict model.onnx IMAGES)
    model.torchscript.pt/.json the TorchScript model and its sidecar
    model.safetensors          the network's own weights (kdstyles' names)
    config.json                the network (arch, widen, stem), its input and classes: what
                               ``pretrained: hf:ORG/NAME`` or an offline teacher's checkpoint read back

``--dry-run DIR`` writes exactly that folder and uploads nothing. The token is read the way
huggingface_hub reads it (``HF_TOKEN``, or ``hf auth login``'s file); kdstyles never prints or
writes it.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from ..errors import KDError
from ..store.fileio import check_folder_text, write_folder, write_json, write_text
from ..store.runfolder import ComparisonFolder, RunFolder

HUB_FILES = ("README.md", "config.json", "model.onnx", "model.json", "model.torchscript.pt", "model.torchscript.json",
             "model.safetensors")


def check_repo(repo: str, what: str = "--repo", namespace: bool = True) -> str:
    """An ORG/NAME (``namespace``; else NAME too) the Hub accepts, or one line saying what it refuses."""
    from ..models.published import hub_refuses

    if namespace and (repo.count("/") != 1 or not all(repo.split("/"))):
        raise KDError(f"{what} '{repo}': give ORG/NAME (your user or organisation name, then the model's name)")
    if hub_refuses(repo):
        raise KDError(f"{what} '{repo}': the Hub refuses it; names use letters, digits, '-', '_' and '.', do not "
                      "start or end with '-' or '.', hold no '--' or '..', and are at most 96 characters")
    return repo


def hub_token() -> str:
    """The token huggingface_hub would use, after checking the Hub can be reached at all; one
    line otherwise (offline, no network, no token). Never printed."""
    from huggingface_hub import constants, get_token

    from ..models.pretrained import hub_unreachable

    why = hub_unreachable(constants.ENDPOINT)
    if why:
        raise KDError(f"push: the Hugging Face Hub cannot be reached here ({why}); 'kdstyles push RUN --repo "
                      "ORG/NAME --dry-run DIR' writes the folder, to upload from a machine with a network "
                      "(hf upload ORG/NAME DIR)")
    token = get_token()
    if not token:
        raise KDError("push: no Hugging Face token; run 'hf auth login' or set HF_TOKEN (a token with write access)")
    return token


def _intervals(evaluation: Any, network: str, task: str) -> dict[str, tuple[float, float, float]]:
    """Each headline metric's value with a 95% bootstrap interval over the test images (metrics
    that are means over images; the others keep their value and no interval)."""
    from ..common.metrics import METRICS, task_metrics
    from ..report.significance import paired_interval

    values = evaluation.networks.get(network, {})
    per_image = (evaluation.per_image or {}).get(network, {})
    out = {}
    for k in task_metrics(task, values, headline=True):
        if not isinstance(values.get(k), (int, float)):
            continue
        if METRICS[k].per_image and per_image.get(k):
            _, lo, hi = paired_interval([np.asarray(per_image[k], dtype=float)])
            out[k] = (float(values[k]), lo, hi)
        else:
            out[k] = (float(values[k]), float("nan"), float("nan"))
    return out


def _gap_closure(run_dir: Path, network: str) -> dict[str, Any] | None:
    """The share of the teacher's lead this network recovers, where the run belongs to a
    comparison that trained the students alone too (its folder's results; the run's recipe is
    the comparison's name for it, e.g. kd-unlabelled, not the preset it expands to)."""
    folder = run_dir.parent
    if not ComparisonFolder(folder).results_path.is_file():
        return None
    from ..report.analysis import gap_closure, load_study
    from ..report.results import load_rows

    try:
        rows = load_rows(folder)
        study = load_study(folder, rows)
    except KDError:
        return None
    here = run_dir.resolve()
    recipe = next((r["preset"] for r in rows if Path(r["run_dir"]).resolve() == here), None)
    found = next((g for g in gap_closure(study) if (g["preset"], g["network"]) == (recipe, network)), None)
    return {**found, "comparison": str(folder), "metric": study.metric} if found else None


def _front_matter(repo: str, side: dict[str, Any], intervals: dict, license: str | None, datasets: list[str],
                  source: str) -> str:
    from ..common.metrics import label

    from ..tasks import TASKS

    pipeline = TASKS[side["task"]].hub_pipeline
    meta = {
        "library_name": "kdstyles",
        "license": (license or "other").lower(),
        "pipeline_tag": pipeline,
        "tags": ["kdstyles", "knowledge-distillation", "medical-imaging", side["task"], "onnx", "torchscript"],
        **({"datasets": datasets} if datasets else {}),
        "model-index": [{"name": repo.split("/")[1], "results": [{
            "task": {"type": pipeline, "name": pipeline.replace("-", " ").capitalize()},
            "dataset": {"name": source[:200], "type": datasets[0] if datasets else side["task"], "split": "test"},
            "metrics": [{"type": k, "value": round(v, 6),
                         "name": f"test {label(k)}" + (f" (95% interval {lo:.4f} to {hi:.4f})" if lo == lo else "")}
                        for k, (v, lo, hi) in intervals.items()]}]}],
    }
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n"


def _hub_section(repo: str, side: dict[str, Any], intervals: dict, closure: dict | None, teacher: str,
                 parameters: int, latency: float) -> str:
    from ..common.metrics import label

    rows = "\n".join(f"| {label(k)} | {v:.4f} | " + (f"{lo:.4f} to {hi:.4f}" if lo == lo else "(not a mean over "
                                                     "images: no interval)") + " |"
                     for k, (v, lo, hi) in intervals.items())
    if closure:
        gap = (f"It recovers **{closure['text']}** of its teacher's lead over the same network trained alone "
               f"(test {label(closure['metric'])}, {closure['n']} seed(s), 95% interval over test images and seeds; "
               f"comparison `{Path(closure['comparison']).name}`).")
    else:
        gap = ("How much of the teacher's lead it recovers was not measured: that needs the same network trained "
               "alone ('kdstyles compare' with the `student` recipe), and this run is not part of such a comparison.")
    return f"""# {repo}

A compact network distilled with kdstyles from a teacher ({teacher}):
{parameters:,} parameters, {latency:.2f} ms per image on a CPU.

| test metric | value | 95% interval |
|---|---|---|
{rows}

{gap}

Use it with `kdstyles predict model.onnx IMAGES...` (onnxruntime, no torch needed), or as the next
experiment's starting point or teacher: `networks.<name>.pretrained: hf:{repo}`, or
`networks.teacher.checkpoint: hf:{repo}` with `mode: offline` (the config's arch, widen and stem must
match config.json's).

"""


def hub_folder(run_dir: str | Path, repo: str, folder: Path, network: str | None = None, checkpoint: str = "best",
               calibrated: bool = False, license: str | None = None, datasets: list[str] | None = None,
               say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write the repository's files into ``folder`` (replaced whole); returns the ONNX sidecar
    (``files``: what was written). A run whose checkpoint was not evaluated is refused: the card
    needs its test metrics."""
    from ..data.sources import SOURCES
    from ..models.zoo import count_parameters
    from ..styles.routing import T
    from .export import export_run, open_run, plain_state_dict, publication_record
    from .measure import cpu_latency_ms

    run_dir = Path(run_dir)
    if not RunFolder(run_dir).info_path.is_file():
        raise KDError(f"run folder '{run_dir}' does not exist or holds no run.json (give a folder kdstyles trained)")
    evaluation = RunFolder(run_dir).evaluation()
    if evaluation is None or evaluation.checkpoint != checkpoint or evaluation.split != "test":
        raise KDError(f"push: the card needs the test metrics of the {checkpoint} checkpoint and {run_dir} has none; "
                      f"run 'kdstyles evaluate {run_dir}" + ("" if checkpoint == "best" else f" --checkpoint "
                                                                f"{checkpoint}") + "' first")
    license = license or None
    say = say or (lambda m: print(m, file=sys.stderr))

    def fill(root: Path) -> dict[str, Any]:
        side = export_run(run_dir, network, "onnx", root / "model.onnx", checkpoint, say=say, calibrated=calibrated)
        export_run(run_dir, side["network"], "torchscript", root / "model.torchscript.pt", checkpoint, say=say,
                   calibrated=calibrated)
        card = (root / "model.md").read_text(encoding="utf-8")
        for f in ("model.md", "model.torchscript.md"):
            (root / f).unlink()
        exp, model, info, name = open_run(run_dir, side["network"], checkpoint)
        from safetensors.torch import save_file

        save_file(plain_state_dict(exp, name), str(root / "model.safetensors"))
        write_json(root / "config.json", {"library_name": "kdstyles",
                                          **publication_record(side, "model.safetensors")})
        teacher_spec = exp.cfg.networks.teacher
        teacher = f"{teacher_spec.arch}" + (f" at width {teacher_spec.widen:g}" if teacher_spec.widen != 1 else "")
        t_metrics = evaluation.networks.get(T)
        if t_metrics:
            from ..common.metrics import label

            first = next(iter(_intervals(evaluation, T, side["task"])), None)
            if first:
                teacher += f", test {label(first)} {t_metrics[first]:.4f}"
        intervals = _intervals(evaluation, name, side["task"])
        source = SOURCES[exp.cfg.data.source].describe(exp.cfg.data, exp.cohort.task)
        one = exp.inputs(info).sample(1)
        text = (_front_matter(repo, side, intervals, license, datasets or [], source)
                + _hub_section(repo, side, intervals, _gap_closure(run_dir, name), teacher,
                               sum(count_parameters(m) for m in model.networks), cpu_latency_ms(model, one))
                + card.split("\n", 1)[1].lstrip("\n"))  # the card less its title (the repository names it)
        write_text(root / "README.md", text)
        return {**side, "files": sorted(p.name for p in root.iterdir())}

    return write_folder(folder, fill, lambda f: (f / "config.json").is_file() and (f / "model.onnx").is_file(),
                        "--dry-run")


def push(run_dir: str | Path, repo: str, network: str | None = None, private: bool = False,
         revision: str | None = None, dry_run: str | Path | None = None, checkpoint: str = "best",
         calibrated: bool = False, license: str | None = None, datasets: list[str] | None = None,
         say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Upload a run's network to ``repo`` on the Hub (created where missing; ``private``; onto the
    branch ``revision``, created where missing), or with ``dry_run`` write the folder it would
    upload there and stop. Without a network or a token: one line, before anything is exported."""
    check_repo(repo)
    for dataset in datasets or []:
        check_repo(dataset, "--dataset", namespace=False)
    if dry_run is not None:
        check_folder_text(dry_run, "--dry-run")
    token = None if dry_run is not None else hub_token()
    if dry_run is not None:
        return {**hub_folder(run_dir, repo, Path(dry_run), network, checkpoint, calibrated, license, datasets, say),
                "folder": str(dry_run), "uploaded": False}
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:  # the repository and branch first: a token without write access stops here, before any export
        url = api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo, branch=revision, exist_ok=True)
    except Exception as exc:  # noqa: BLE001 (huggingface_hub raises its own HTTP and validation errors)
        raise KDError(f"push: the Hub refused the repository '{repo}'{_why(exc, token)}") from None
    staging = Path(tempfile.mkdtemp(prefix="kdstyles-push-"))
    try:
        side = hub_folder(run_dir, repo, staging / "repo", network, checkpoint, calibrated, license, datasets, say)
        try:
            commit = api.upload_folder(repo_id=repo, folder_path=str(staging / "repo"), revision=revision,
                                       commit_message=f"kdstyles push: {side['network']} of {Path(run_dir).name}")
        except Exception as exc:  # noqa: BLE001
            raise KDError(f"push: the Hub refused the upload to '{repo}'{_why(exc, token)}") from None
        return {**side, "uploaded": True, "url": str(getattr(commit, "commit_url", "") or url)}
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _why(exc: BaseException, token: str) -> str:
    """An error of the Hub's in a few words, the token masked wherever it appears."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0].replace(token, "***")[:160]
    return f" ({text})"
