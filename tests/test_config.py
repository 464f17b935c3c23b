import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kdstyles import KDError, load_config
from kdstyles.config import ExperimentConfig, apply_overrides, build_config, dump_config, read_yaml


@pytest.mark.parametrize("override, expected", [
    ("optim.lrr=0.1", "config error: unknown key 'optim.lrr' (did you mean 'lr'?); allowed here: lr, momentum, name, weight_decay"),
    ("train.epochs=many", "config error: train.epochs: Input should be a valid integer"),
    ("optim.lr=-1", "config error: optim.lr: Input should be greater than 0 (got -1)"),
    ("routing.preset=distill", "config error: routing.preset: Input should be 'student', 'teacher', 'kd', 'fitnet', "
                               "'dml', 'kdml', 'diverse', 'diverse-full', 'ctsl-mkt', 'dkd', 'dist', 'diverse-dkd', "
                               "'diverse-dist', 'mlkd', 'simkd' or 'diverse-simkd' (got 'distill')"),
    ("networks.students.s1.arch=resnet19", "unknown arch 'resnet19' (did you mean resnet18"),
    ("networks.students.s2.tap=layer4.0.conv9", "networks.s2.tap: no module 'layer4.0.conv9' in ResNet; "
                                                "nearest valid paths: layer4.0.conv2"),
    # a value that fits no branch of a union is one message naming every branch
    ("networks.teacher.pretrained=3", "config error: networks.teacher.pretrained: should be a boolean or a string "
                                      "(got 3)"),
    ("data.num_workers=many", "config error: data.num_workers: should be a whole number or 'auto' (got 'many')"),
    ("data.num_workers=null", "config error: data.num_workers: should be a whole number or 'auto' (got null)"),
    ("data.val_fraction=0.85", "config error: data.val_fraction: source 'synthetic' does not read it (its own keys: "
                               "site); leave it out, or choose the source it belongs to (got 0.85)"),
    ("output.name=../elsewhere", "config error: output.name: a folder name, not a path, goes here (where runs go is "
                                 "output.dir) (got '../elsewhere')"),
    ("name=a/b", "config error: name: a folder name, not a path"),
])
def test_config_errors_one_line_through_cli(cli, override, expected):
    code, out, err = cli("check", "--set", override,
                             "--set", "data.train_samples=40", "--set", "data.val_samples=4",
                             "--set", "data.test_samples=4", "--set", "data.image_size=16")
    assert code == 2
    assert expected in err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "Traceback" not in err + out


def test_cli_error_in_a_real_process_has_no_traceback(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("optim:\n  lr: -0.1\n")
    proc = subprocess.run([sys.executable, "-m", "kdstyles", "train", str(cfg)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: config error: optim.lr: Input should be greater than 0 (got -0.1)"
    assert "Traceback" not in proc.stdout + proc.stderr


def test_unknown_nested_key_in_yaml_names_full_path(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("networks:\n  students:\n    s1:\n      arch: resnet10\n      depth: 3\n")
    with pytest.raises(KDError) as err:
        load_config(cfg)
    assert "unknown key 'networks.students.s1.depth'" in str(err.value)
    assert "allowed here: arch, embedding_tap, pretrained, stem, tap, widen" in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(KDError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2\n")
    with pytest.raises(KDError, match="not valid YAML"):
        load_config(bad)
    # a second data: section would silently replace the first (PyYAML keeps the last key)
    twice = tmp_path / "twice.yaml"
    twice.write_text("data: {image_size: 32}\ntrain:\n  epochs: 1\ndata: {batch_size: 8}\n")
    with pytest.raises(KDError, match=r"twice.yaml' line 4: .*key 'data' appears twice in one section \(lines 1 and 4\)"):
        load_config(twice)
    twice.write_text("train:\n  epochs: 1\n  seed: 2\n  epochs: 3\n")
    with pytest.raises(KDError, match=r"key 'epochs' appears twice in one section \(lines 2 and 4\)"):
        load_config(twice)
    windows = tmp_path / "windows.yaml"  # a Windows path in double quotes: YAML escapes
    windows.write_text('data: {source: folder, root: "C:\\data\\skin"}\n')
    with pytest.raises(KDError, match="line 1: not valid YAML .*unknown escape character 'd'.*; in double quotes a "
                                      "backslash starts an escape: write the path in single quotes or with /"):
        load_config(windows)
    anchors = tmp_path / "anchors.yaml"  # YAML merge keys are not duplicates
    anchors.write_text("networks:\n  students:\n    s1: &small {arch: resnet10, widen: 0.25}\n"
                       "    s2: {<<: *small, widen: 0.5}\n")
    assert load_config(anchors).networks.students["s2"].widen == 0.5


def test_paths_starting_with_a_tilde_are_in_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = load_config(None, ["data.source=folder", "data.root=~/data/skin", "output.dir=~/runs",
                             "networks.teacher.mode=offline", "networks.teacher.checkpoint=~/teacher-run"])
    assert (cfg.data.root, cfg.output.dir, cfg.networks.teacher.checkpoint) == (
        str(tmp_path / "data/skin"), str(tmp_path / "runs"), str(tmp_path / "teacher-run"))
    assert load_config(None, ["data.source=csv", "data.path=~/labels.csv"]).data.path == str(tmp_path / "labels.csv")


def test_overrides_merge_into_defaults():
    cfg = load_config(None, ["networks.students.s1.arch=resnet18", "optim.lr=3e-4", "routing.preset=kdml"])
    assert cfg.networks.students["s1"].arch == "resnet18"
    assert set(cfg.networks.students) == {"s1", "s2"}  # s2 kept
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.routing.label == "kdml"


@pytest.mark.parametrize("pair", ["noequals", "=3", "a..b=1"])
def test_malformed_override(pair):
    with pytest.raises(KDError, match="expected KEY.PATH=VALUE"):
        apply_overrides({}, [pair])


def test_offline_teacher_needs_checkpoint():
    with pytest.raises(KDError, match="networks.teacher: mode 'offline' needs checkpoint"):
        load_config(None, ["networks.teacher.mode=offline"])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["routing.preset=fitnet", "styles.features.normalize=l2"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(cfg))
    assert ExperimentConfig.model_validate(read_yaml(path)) == cfg


def test_shipped_configs_are_valid():
    from pathlib import Path

    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert configs, "configs/ should ship example experiments"
    for path in configs:
        load_config(path)


def test_demo_yaml_is_the_default_experiment():
    from pathlib import Path

    demo = load_config(Path(__file__).parents[1] / "configs" / "demo.yaml")
    # no preset means diverse; image_size/channels null mean the source's own (synthetic: 64 px, RGB)
    assert demo == load_config(None, ["routing.preset=diverse", "data.image_size=64", "data.channels=3"])
    assert ExperimentConfig().routing.label == "diverse"


def test_demo_yaml_lists_every_key():
    from pathlib import Path

    from kdstyles.config.resume import _flatten

    demo = _flatten(read_yaml(Path(__file__).parents[1] / "configs" / "demo.yaml"))
    full = _flatten(ExperimentConfig().model_dump(mode="json"))
    assert [k for k in full if k not in demo and not k.startswith(("styles", "routing"))] == []
    assert [k for k in demo if k not in full and not k.startswith(("styles", "routing"))] == []  # none of another source


def _float_keys(model, prefix=""):
    """Every float field of a pydantic model, by dotted key (through sections and dict values)."""
    import typing

    from pydantic import BaseModel

    from kdstyles.config.messages import _annotation_model

    for name, field in model.model_fields.items():
        ann = field.annotation
        args = typing.get_args(ann)
        if ann is float or float in args:
            yield f"{prefix}{name}"
        sub = _annotation_model(ann)
        if sub is not None and issubclass(sub, BaseModel):
            hop = "s1." if typing.get_origin(ann) is dict and name == "students" else \
                "x." if typing.get_origin(ann) is dict else "0." if typing.get_origin(ann) is list else ""
            yield from _float_keys(sub, f"{prefix}{name}.{hop}")


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_every_float_key_refuses_non_finite_numbers(value):
    """Infinity passed every key that refused NaN, then stopped the run at its first step (or
    crashed CutMix). Every float of the config, every style option and an edge's weight is
    refused when the config is loaded, naming the key."""
    from kdstyles.styles import STYLES

    keys = [k for k in _float_keys(ExperimentConfig) if not k.startswith(("routing.", "tune."))]
    keys += [f"styles.{name}.{opt}" for name, style in STYLES.items() for opt in _float_keys(style.Options)]
    assert {"optim.lr", "loss.teacher_weight", "data.mix.cutmix", "styles.predictions.temperature"} <= set(keys)
    for key in keys:
        with pytest.raises(KDError, match=key.replace(".", r"\.")):
            load_config(None, [f"{key}={value}"])
    edge = "routing.edges=[{src: teacher, dst: s1, style: predictions, weight: %s}]" % value
    with pytest.raises(KDError, match=r"routing\.edges\.0\.weight"):
        load_config(None, [edge])
    from kdstyles.config import build_config

    with pytest.raises(KDError, match=r"tune\.space\.optim\.lr\.low"):
        build_config({"tune": {"space": {"optim.lr": {"low": float(value.replace(".", "")), "high": 1}}}})


def test_a_key_of_another_source_is_refused_not_ignored():
    """The data section is the shared keys plus those of its source (a union discriminated on
    data.source): data.val_fraction means nothing to MedMNIST's fixed splits, data.flag nothing to a
    folder; one line names the key and the source's own keys. A key no source has gets the
    nearest name. A default value of another source's key, or a run folder's own config (an
    earlier release kept every source's keys there, ignored), still validates, without the key."""
    with pytest.raises(KDError, match=r"config error: data.val_fraction: source 'medmnist' does not read it \(its "
                                      r"own keys: flag, root, size\); leave it out"):
        load_config(None, ["data.source=medmnist", "data.flag=pathmnist", "data.val_fraction=0.3"])
    with pytest.raises(KDError, match="data.flag: source 'folder' does not read it"):
        load_config(None, ["data.source=folder", "data.root=x", "data.flag=pathmnist"])
    with pytest.raises(KDError, match="data.none_label: source 'npz' does not read it"):
        load_config(None, ["data.source=npz", "data.path=x.npz", "data.none_label=Normal"])
    with pytest.raises(KDError, match=r"^config error: unknown key 'data.roots' \(did you mean 'root'\?\); allowed here "
                                      r"with source 'folder': augment, .*root, .*volume_cache, window$"):
        load_config(None, ["data.source=folder", "data.roots=x"])
    with pytest.raises(KDError, match=r"data.unlabeled.split: source 'folder' does not read it \(its own keys: root\)"):
        load_config(None, ["data.unlabeled={source: folder, root: x, split: val}"])
    with pytest.raises(KDError, match=r"config error: data: val_fraction 0.6 \+ test_fraction 0.5 leave no training"):
        load_config(None, ["data.source=folder", "data.root=x", "data.val_fraction=0.6", "data.test_fraction=0.5"])
    # a config written for the demo keeps its sample counts when pointed at other data
    demo = Path(__file__).parents[1] / "configs" / "demo.yaml"
    assert load_config(demo, ["data.source=folder", "data.root=x"]).data.train_samples == 2000
    cfg = load_config(None, ["data.source=folder", "data.root=x", "data.val_fraction=0.3", "data.size=28"])
    assert cfg.data.val_fraction == 0.3 and cfg.data.options.val_fraction == 0.3  # its own key, in its model
    assert not hasattr(cfg.data, "size")  # medmnist's, at its default: says nothing, left out
    assert cfg.data.num_classes == 2 and cfg.data.classes is None  # its keys have their defaults
    whole = cfg.model_dump(mode="json")
    whole["data"]["flag"] = "pathmnist"  # kept by an earlier release's config.yaml, where it was ignored
    reopened = build_config(whole, recorded=True)  # that run still opens, the key left out
    assert not hasattr(reopened.data, "flag") and reopened.data.model_dump() == cfg.data.model_dump()
    with pytest.raises(KDError, match="data.flag: source 'folder' does not read it"):
        build_config(whole)  # a config listing every key (as configs/demo.yaml does) is checked too
    written = yaml.safe_load(dump_config(cfg))["data"]  # config.yaml: the source's keys right after it
    assert list(written)[:3] == ["source", "root", "val_fraction"] and written["root"] == "x" and "flag" not in written


def test_a_task_owns_its_settings_and_the_old_keys_still_read():
    """Segmentation's Dice weight and HD95, detection's box weight and box count live in
    tasks.<task>; the keys that held them before (config.yaml of earlier releases) still set
    them; a misspelt setting or task is one line; a resume may change evaluation settings only."""
    from kdstyles.config import check_resumable, config_changes

    seg = ["task=segmentation", *(f"networks.{n}.arch=unet" for n in ("teacher", "students.s1", "students.s2"))]
    cfg = load_config(None, [*seg, "tasks.segmentation.dice_weight=2", "tasks.segmentation.hd95=true"])
    assert (cfg.task_options.dice_weight, cfg.task_options.hd95) == (2.0, True)
    older = load_config(None, [*seg, "loss.dice_weight=2", "eval.hd95=true"])  # the keys of earlier releases
    assert older.task_options == cfg.task_options and "dice_weight" not in older.model_dump()["loss"]
    assert load_config(None, []).tasks == {}  # the default task has no settings; nothing else is kept
    with pytest.raises(KDError, match=r"config error: tasks: segmentation.dice: not a setting of task segmentation; "
                                      r"its settings: dice_weight, hd95"):
        load_config(None, [*seg, "tasks.segmentation.dice=2"])
    with pytest.raises(KDError, match="unknown task 'segmentaton' \\(did you mean segmentation\\?\\)"):
        load_config(None, ["tasks.segmentaton.hd95=true"])
    with pytest.raises(KDError, match="tasks: detection.max_detections: Input should be greater than or equal to 1"):
        load_config(None, ["tasks.detection.max_detections=0"])
    check_resumable(config_changes(cfg, load_config(None, [*seg, "tasks.segmentation.dice_weight=2"])))  # hd95
    with pytest.raises(KDError, match="--set tasks.segmentation.dice_weight: cannot change when resuming"):
        check_resumable(config_changes(cfg, load_config(None, [*seg, "tasks.segmentation.hd95=true"])))
