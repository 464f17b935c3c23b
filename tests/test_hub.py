"""Publishing a network (kdstyles push to the Hugging Face Hub; its --dry-run folder) and reading
published networks back (a MONAI Bundle or a Hub repository as ``pretrained`` or as an offline
teacher's ``checkpoint``). Nothing here reaches a network: uploads go to a stand-in of
huggingface_hub's HfApi, downloads come from a Hugging Face cache the test writes."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import tiny
from kdstyles import Experiment, KDError
from kdstyles.deploy import hub
from kdstyles.deploy.hub import HUB_FILES, push

TOKEN = "hf_notarealtoken0123456789"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    exp = Experiment(None, overrides=tiny(tmp_path_factory.mktemp("hub"), "train.epochs=1"), quiet=True)
    exp.fit()
    exp.evaluate()
    return exp.run_dir


@pytest.fixture(scope="module")
def published(run, tmp_path_factory):
    """The run's s1 pushed with --dry-run and exported as a MONAI Bundle."""
    from kdstyles.deploy.bundle import export_bundle

    folder = tmp_path_factory.mktemp("published")
    push(run, "lab/s1-tiny", "s1", dry_run=folder / "repo", license="mit", datasets=["lab/histology"],
         say=lambda m: None)
    export_bundle(run, "s1", folder / "bundle", say=lambda m: None)
    return folder / "repo", folder / "bundle"


def test_a_dry_run_writes_the_repository_with_a_card_the_hub_reads(run, published, monkeypatch):
    """The folder holds the ONNX and TorchScript models with their sidecars, the safetensors
    weights, config.json and README.md, whose YAML front matter gives the library, licence,
    tags, pipeline, datasets and a model-index of the test metrics as eval.json has them (the
    accuracy with its 95% interval over test images); the ONNX model predicts from there."""
    from safetensors.torch import load_file

    from kdstyles.deploy.predict import load_predictor

    repo, _ = published
    assert sorted(p.name for p in repo.iterdir()) == sorted(HUB_FILES)
    text = (repo / "README.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["library_name"] == "kdstyles" and front["license"] == "mit" and front["datasets"] == ["lab/histology"]
    assert front["pipeline_tag"] == "image-classification" and "knowledge-distillation" in front["tags"]
    evaluation = json.loads((run / "eval.json").read_text())
    metrics = {m["type"]: m for m in front["model-index"][0]["results"][0]["metrics"]}
    assert metrics["accuracy"]["value"] == pytest.approx(evaluation["networks"]["s1"]["accuracy"], abs=1e-6)
    assert "95% interval" in metrics["accuracy"]["name"] and set(metrics) == {"accuracy", "f1"}
    assert "from a teacher (resnet18 at width 0.25, test accuracy" in text and "parameters" in text
    assert "not part of such a comparison" in text  # gap closure needs the students trained alone
    config = json.loads((repo / "config.json").read_text())
    assert config["networks"] == [{"name": "s1", "arch": "resnet10", "widen": 0.125, "stem": "auto"}]
    assert config["weights"] == "model.safetensors" and config["class_names"][0] == "normal"
    weights = load_file(str(repo / "model.safetensors"))
    own = Experiment.from_run(run, quiet=True)
    own.load_weights("best")
    assert all(torch.equal(weights[k], v) for k, v in own.cohort.networks["s1"].state_dict().items())
    predictor = load_predictor(repo)  # a clone of the repository: its ONNX model and sidecar
    assert predictor(np.zeros((2, 3, 16, 16), np.float32)).shape == (2, 4)
    assert load_predictor(repo / "model.torchscript.pt").class_names == config["class_names"]


def test_push_uploads_with_the_token_huggingface_hub_reads_and_never_shows_it(run, tmp_path, monkeypatch, capsys):
    """With the hub reachable and a token: the repository is created (private), the branch
    made, the folder uploaded to it; the token goes to HfApi only: not printed, not in a file, not
    in an error's line."""
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, private=False, exist_ok=False, repo_type=None):
            calls.append(("create_repo", repo_id, private, exist_ok))
            return f"https://huggingface.co/{repo_id}"

        def create_branch(self, repo_id, branch, exist_ok=False):
            calls.append(("create_branch", repo_id, branch))

        def upload_folder(self, repo_id, folder_path, revision=None, commit_message=""):
            files = sorted(p.name for p in Path(folder_path).iterdir())
            texts = [p.read_bytes() for p in Path(folder_path).iterdir()]
            calls.append(("upload_folder", repo_id, revision, files, any(TOKEN.encode() in t for t in texts)))
            return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(hub, "hub_token", lambda: TOKEN)
    out = push(run, "lab/s1-tiny", "s1", private=True, revision="v1", say=print)
    assert out["uploaded"] and out["url"].endswith("/commit/abc")
    assert calls == [("token", TOKEN), ("create_repo", "lab/s1-tiny", True, True), ("create_branch", "lab/s1-tiny", "v1"),
                     ("upload_folder", "lab/s1-tiny", "v1", sorted(HUB_FILES), False)]
    assert TOKEN not in capsys.readouterr().out

    class Refusing(FakeApi):  # a token without write access: refused before anything is exported
        def create_repo(self, *a, **k):
            raise RuntimeError(f"403 Forbidden: token {TOKEN} cannot create repositories in lab")

    monkeypatch.setattr(huggingface_hub, "HfApi", Refusing)
    monkeypatch.setattr(hub, "hub_folder", lambda *a, **k: pytest.fail("exported before the repository was made"))
    with pytest.raises(KDError, match=r"^push: the Hub refused the repository 'lab/s1-tiny' \(403 Forbidden: token "
                                      r"\*\*\* cannot create") as err:
        push(run, "lab/s1-tiny", "s1", say=lambda m: None)
    assert TOKEN not in str(err.value)


@pytest.mark.parametrize("repo, message", [
    ("s1-tiny", "give ORG/NAME"),
    ("lab/s1--tiny", "the Hub refuses it"),
    ("lab/s1 tiny", "the Hub refuses it"),
    ("lab/" + "x" * 97, "at most 96 characters"),
])
def test_a_repository_name_the_hub_would_refuse_is_one_line(run, repo, message):
    with pytest.raises(KDError, match=f"^--repo '{repo}': .*{message}"):
        push(run, repo, dry_run="/nonexistent/never-written")


def test_push_stops_before_exporting_offline_without_a_token_or_without_test_metrics(run, tmp_path, monkeypatch):
    export = run / "export"
    before = sorted(export.rglob("*")) if export.exists() else []
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(KDError, match=r"^push: the Hugging Face Hub cannot be reached here \(offline \(HF_HUB_OFFLINE=1\)\); "
                                      r"'kdstyles push RUN --repo ORG/NAME --dry-run DIR' writes the folder"):
        push(run, "lab/s1-tiny")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("kdstyles.models.pretrained._hub_resolves", lambda endpoint: True)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored token there
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    with pytest.raises(KDError, match=r"^push: no Hugging Face token; run 'hf auth login' or set HF_TOKEN"):
        push(run, "lab/s1-tiny")
    assert (sorted(export.rglob("*")) if export.exists() else []) == before  # nothing exported
    fresh = tmp_path / "unevaluated"
    shutil.copytree(run, fresh)
    (fresh / "eval.json").unlink()
    with pytest.raises(KDError, match=rf"^push: the card needs the test metrics of the best checkpoint and {fresh} has "
                                      rf"none; run 'kdstyles evaluate {fresh}' first$"):
        push(fresh, "lab/s1-tiny", dry_run=tmp_path / "dry")
    assert not (tmp_path / "dry").exists()


def _hub_cache(root: Path, repo: str, source: Path) -> None:
    """A Hugging Face cache holding ``repo`` at main, as 'hf download' leaves it."""
    org, name = repo.split("/")
    base = root / f"models--{org}--{name}"
    commit = "0" * 40
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    shutil.copytree(source, base / "snapshots" / commit)


def test_a_published_network_comes_back_as_a_starting_point_and_as_a_frozen_teacher(run, published, tmp_path,
                                                                                     monkeypatch):
    """A bundle folder as the offline teacher's checkpoint and a Hub repository (from the cache,
    as hf:ORG/NAME) as a student's pretrained weights: both networks start as the published s1;
    a config that builds another network, an ensemble, or a repository neither cached nor
    reachable is one line."""
    import huggingface_hub.constants

    repo, bundle = published
    cache = tmp_path / "hf-cache"
    _hub_cache(cache, "lab/s1-tiny", repo)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    same = ["networks.teacher.mode=offline", "networks.teacher.arch=resnet10", "networks.teacher.widen=0.125",
            f"networks.teacher.checkpoint={bundle}", "networks.students.s1.pretrained=hf:lab/s1-tiny"]
    exp = Experiment(None, overrides=tiny(tmp_path / "again", *same, "train.epochs=1"), quiet=True)
    want = torch.load(bundle / "models" / "model.pt", weights_only=True)
    for name in ("teacher", "s1"):
        got = exp.cohort.networks[name].state_dict()
        assert all(torch.equal(got[k], v) for k, v in want.items()), name
    with pytest.raises(KDError, match=r"^networks.teacher: '.*bundle' holds a resnet10 \(widen 0.125, stem auto\); set "
                                      r"networks.teacher.arch: resnet10, networks.teacher.widen: 0.125 to build it$"):
        Experiment(None, overrides=tiny(tmp_path / "x", "networks.teacher.mode=offline",
                                        f"networks.teacher.checkpoint={bundle}"), quiet=True).cohort
    with pytest.raises(KDError, match=r"^networks.s1: 'hf:lab/s1-tiny' holds a resnet10 \(widen 0.125, stem auto\); "
                                      r"set networks.s1.widen: 0.125 to build it$"):
        Experiment(None, overrides=tiny(tmp_path / "y", "networks.students.s1.pretrained=hf:lab/s1-tiny",
                                        "networks.students.s1.widen=0.25"), quiet=True).find_weights()
    with pytest.raises(KDError, match=r"^networks.s1.pretrained: 'hf:lab/other' is not in the Hugging Face cache and "
                                      r"the hub cannot be reached \(offline \(HF_HUB_OFFLINE=1\)\); where a network is "
                                      r"reachable run 'hf download lab/other --local-dir DIR' and give DIR instead$"):
        Experiment(None, overrides=tiny(tmp_path / "z", "networks.students.s1.pretrained=hf:lab/other"),
                   quiet=True).find_weights()
    from kdstyles.deploy.bundle import export_bundle

    export_bundle(run, "ensemble", tmp_path / "ensemble", say=lambda m: None)
    with pytest.raises(KDError, match="holds an ensemble of 2 networks; publish one network"):
        Experiment(None, overrides=tiny(tmp_path / "w", f"networks.students.s1.pretrained={tmp_path / 'ensemble'}",
                                        "networks.students.s1.widen=0.125"), quiet=True).find_weights()
    exp.fit()  # trained, the run opens without the repository (its checkpoints hold the weights)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    assert Experiment.from_run(exp.run_dir, quiet=True).evaluate()["networks"]["s1"]["accuracy"] >= 0


def test_a_published_classifier_starts_a_network_of_other_classes_with_its_own_head(published):
    """Loading is strict but for the output layer: another class count keeps that layer as built."""
    from kdstyles.models.published import load_published, read_published
    from kdstyles.models.zoo import build_network

    repo, _ = published
    model = build_network("resnet10", 3, 7, 16, widen=0.125)
    head = {k: v.clone() for k, v in model.state_dict().items()}
    left = load_published(model, read_published(str(repo), "networks.s1.pretrained"), "networks.s1.pretrained")
    assert sorted(left) == ["fc.bias", "fc.weight"] and torch.equal(model.state_dict()["fc.weight"], head["fc.weight"])
    with pytest.raises(KDError, match=r"does not fit the network built here \(shape of conv1.weight: .* \(the input's "
                                      r"channels\?\)\)"):
        load_published(build_network("resnet10", 1, 4, 16, widen=0.125),
                       read_published(str(repo), "networks.s1.pretrained"), "networks.s1.pretrained")


def test_names_a_user_types_for_the_hub_are_checked_before_any_work(run, tmp_path):
    """--dataset ids, a --dry-run folder that cannot exist, and an hf: source the Hub could not
    hold are one line each, before anything is exported or read."""
    with pytest.raises(KDError, match=r"^--dataset 'bad name!': the Hub refuses it"):
        push(run, "lab/s1-tiny", datasets=["bad name!"], dry_run=tmp_path / "dry")
    with pytest.raises(KDError, match=r"^--dry-run '.*': the path's part '.*' is 300 bytes"):
        push(run, "lab/s1-tiny", dry_run=tmp_path / ("x" * 300))
    assert not (tmp_path / "dry").exists()
    with pytest.raises(KDError, match=r"^networks.s1.pretrained: 'hf:bad--name/x' names no repository the Hub could hold"):
        Experiment(None, overrides=tiny(tmp_path / "z", "networks.students.s1.pretrained=hf:bad--name/x"),
                   quiet=True).find_weights()
