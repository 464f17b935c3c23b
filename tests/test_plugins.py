"""Plugins (kdstyles.plugins): a task, a data source and a network registered from a file outside
the package, named by a config, trained, and read again by later commands in new processes."""

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from kdstyles import KDError, load_config

PLUGIN = textwrap.dedent('''
    """A task, a source and a network of one's own."""
    from pathlib import Path

    import torch.nn as nn
    import torch.nn.functional as F
    from pydantic import Field

    from kdstyles.data import unlabeled
    from kdstyles.data.files import Record
    from kdstyles.data.sources import from_files
    from kdstyles.plugins import Arch, Source, SourceOptions, TaskOptions, register_arch, register_source, register_task
    from kdstyles.tasks import Classification


    class SmoothedOptions(TaskOptions):
        smoothing: float = Field(0.1, ge=0, lt=1, description="how much of each label is spread over the classes")


    class Smoothed(Classification):
        """Single-label classification on smoothed labels."""

        name = "smoothed"
        Options = SmoothedOptions

        def supervised(self, logits, y, class_weights):
            return F.cross_entropy(logits.float(), y, weight=class_weights, label_smoothing=self.options.smoothing)


    class PrefixOptions(SourceOptions):
        root: str | None = Field(None, description="the folder of PNG files named <class>_<anything>.png")
        separator: str = Field("_", min_length=1, description="what ends the class in a file name")
        val_fraction: float = Field(0.2, gt=0, lt=1, description="images drawn for validation")
        test_fraction: float = Field(0.2, gt=0, lt=1, description="images drawn for testing")


    class PrefixUnlabeled(SourceOptions):
        root: str | None = Field(None, description="a folder of PNG files, without labels")


    class Prefix(Source):
        """Images whose class is the start of their file name, all in one folder (data.root)."""

        name = "prefix"
        Options = PrefixOptions
        requires = "root"
        tasks = ("classification", "smoothed")
        Unlabeled = PrefixUnlabeled
        unlabeled_requires = "root"  # images without labels: the PNGs in data.unlabeled.root

        def load(self, cfg, seed, task, saved_splits, quiet):
            root = Path(cfg.root)
            records = [Record(p, p.name.split(cfg.separator)[0], None) for p in sorted(root.glob("*.png"))]
            return from_files(cfg, seed, task, saved_splits, quiet, records, root, f"data.root '{root}'")

        def describe(self, cfg, task):
            return f"images named by class in {cfg.root}"

        def unlabeled(self, cfg, task, seed, channels, size, patch, quiet):
            root = Path(cfg.unlabeled.root)
            return unlabeled.from_files(sorted(root.glob("*.png")), cfg, channels, size, patch,
                                        f"data.unlabeled.root '{root}'", str(root), quiet)


    def tiny_cnn(in_channels, num_classes, widen, small, pretrained, dims=2):
        width = max(4, int(16 * widen))
        return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                             nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))


    register_task(Smoothed)
    register_source(Prefix())
    register_arch("tinycnn", Arch(tiny_cnn, widens=True, spatial_dims=(2,)))
''')


def kdstyles(*args, cwd):
    proc = subprocess.run([sys.executable, "-m", "kdstyles", *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=cwd, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture
def plugin_and_images(tmp_path):
    (tmp_path / "myplugins.py").write_text(PLUGIN)
    folder = tmp_path / "prefixed"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(48):  # two classes a plain CNN tells apart: bright and dark images
        cls = "tumour" if k % 2 else "normal"
        pixels = rng.integers(120, 255, (20, 20, 3)) if k % 2 else rng.integers(0, 135, (20, 20, 3))
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{cls}_{k:04d}.png")
    pool = tmp_path / "pool"  # images without labels, listed by the plugin's source
    pool.mkdir()
    for k in range(12):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3)).astype(np.uint8)).save(pool / f"{k:04d}.png")
    return tmp_path


def test_a_task_a_source_and_a_network_from_a_file_outside_the_package(plugin_and_images, kept_registries,
                                                                      monkeypatch):
    """Trained here (the config imports the file), then read by new processes from another folder."""
    from kdstyles import Experiment
    from kdstyles.deploy.export import export_run

    work = plugin_and_images
    monkeypatch.chdir(work)
    (work / "mine.yaml").write_text(textwrap.dedent(f"""\
        plugins: [myplugins.py]
        task: smoothed
        tasks: {{smoothed: {{smoothing: 0.2}}}}
        data: {{source: prefix, root: {work / 'prefixed'}, image_size: 16, val_fraction: 0.25, test_fraction: 0.25,
               batch_size: 8, augment: {{hflip: true, vflip: false}}, unlabeled: {{source: prefix, root: {work / 'pool'}}},
               unlabeled_batch_size: 4}}
        networks:
          teacher: {{arch: tinycnn, widen: 1}}
          students: {{s1: {{arch: tinycnn, widen: 0.5}}, s2: {{arch: tinycnn, widen: 0.5}}}}
        routing: {{preset: diverse}}
        train: {{epochs: 3}}
        output: {{dir: {work / 'runs'}, name: mine}}
        """))
    exp = Experiment(work / "mine.yaml", quiet=True)
    exp.fit()
    run = exp.run_dir
    assert run == work / "runs" / "mine" and type(exp.cohort.task).__name__ == "Smoothed"
    assert exp.cohort.task.options.smoothing == 0.2  # its own setting, from the config's tasks.smoothed
    assert len(exp.data.unlabeled) == 12 and exp.data.unlabeled_about == f"12 images from {work / 'pool'}"
    recorded = (run / "config.yaml").read_text()
    assert str(work / "myplugins.py") in recorded  # by its absolute path: later commands import it from anywhere
    # a new process, another folder: config.yaml imports the plugin; the table has classification's
    # metrics, which smoothed reports
    table = kdstyles("evaluate", run, cwd=work.parent)
    assert "bal. accuracy" in table and "AUROC" in table
    result = json.loads((run / "eval.json").read_text())
    assert result["task"] == "smoothed"
    assert set(result["networks"]) == {"teacher", "s1", "s2", "ensemble"}
    assert result["networks"]["teacher"]["accuracy"] > 0.5  # bright against dark: better than chance
    export_run(run, "s1", "onnx")  # the sidecar lists the plugin: predict imports it
    kdstyles("predict", run / "export" / "s1.onnx", work / "prefixed", "--out", work / "predicted", cwd=work.parent)
    rows = (work / "predicted" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + 48 and rows[0].startswith("path,")
    # the network the plugin built, at the width each asked: conv, BN, conv, BN, linear
    size = {w: (3 * w * 9 + w) + 2 * w + (w * 2 * w * 9 + 2 * w) + 2 * 2 * w + (2 * w * 2 + 2) for w in (8, 16)}
    assert {n: m["parameters"] for n, m in result["networks"].items() if n != "ensemble"} == {
        "teacher": size[16], "s1": size[8], "s2": size[8]}


def test_a_plugin_source_owns_its_keys(plugin_and_images, kept_registries):
    """The plugin's source brings its keys to the data section (and to data.unlabeled and its
    external sets), validated by its Options model: its defaults, its bounds, and the keys of
    other sources refused."""
    work = plugin_and_images
    base = [f"plugins=[{work / 'myplugins.py'}]", "data.source=prefix", f"data.root={work / 'prefixed'}"]
    cfg = load_config(None, [*base, "data.external=[{name: b, source: prefix, root: elsewhere, separator: '-'}]"])
    assert cfg.data.separator == "_" and cfg.data.options.val_fraction == 0.2  # its defaults
    external = cfg.data.external_data(cfg.data.external[0])
    assert (external.root, external.separator, external.image_size) == ("elsewhere", "-", cfg.data.image_size)
    for change, message in (
            ("data.separator=", "config error: data.separator: String should have at least 1 character"),
            ("data.flag=pathmnist", "config error: data.flag: source 'prefix' does not read it (its own keys: root, "
                                    "separator, test_fraction, val_fraction)"),
            ("data.seperator=-", "config error: unknown key 'data.seperator' (did you mean 'separator'?)"),
            ("data.unlabeled={source: prefix, root: x, split: val}",
             "config error: data.unlabeled.split: source 'prefix' does not read it (its own keys: root)"),
            ("data.external=[{name: b, source: prefix, root: x, image_size: 8}]",
             "config error: unknown key 'data.external.0.image_size'")):
        with pytest.raises(KDError, match=re.escape(message)):
            load_config(None, [*base, change])


def test_plugin_errors_are_one_line_naming_the_entry(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.py").write_text("raise RuntimeError('half written')\n")
    (tmp_path / "exits.py").write_text("raise SystemExit(3)\n")
    (tmp_path / "restyle.py").write_text("from kdstyles.plugins import register_style\n"
                                         "from kdstyles.styles.features import Features\n"
                                         "register_style(type('Mine', (Features,), {'name': 'predictions'})())\n")
    (tmp_path / "clash.py").write_text("from kdstyles.plugins import Arch, register_arch\n"
                                       "register_arch('resnet18', Arch(lambda *a, **k: None))\n")
    (tmp_path / "keyless.py").write_text("from kdstyles.plugins import Source, register_source\n"
                                         "register_source(type('Mine', (Source,), {'name': 'mine', 'requires': 'root'})())\n")
    (tmp_path / "untyped.py").write_text("from kdstyles.plugins import Source, register_source\n"
                                         "register_source(type('Mine', (Source,), {'name': 'mine', 'Options': dict})())\n")
    for entry, message in (("missing.py", "plugins[0] 'missing.py': no such file"),
                           ("broken.py", "plugins[0] 'broken.py' failed to import: RuntimeError: half written"),
                           ("clash.py", "plugins[0] 'clash.py': register_arch: 'resnet18' is a built-in arch"),
                           ("exits.py", "plugins[0] 'exits.py' exited while it was imported (exit status 3)"),
                           ("restyle.py", "register_style: 'predictions' is a built-in style"),
                           ("keyless.py", "register_source: Mine.requires names 'root', which is not a key of its "
                                          "Options (none)"),
                           ("untyped.py", "register_source: Mine.Options must be a SourceOptions subclass"),
                           ("x" * 300 + ".py", "plugins[0]: the path's part 'xxxx"),
                           ("no_such_module_here", "failed to import: ModuleNotFoundError")):
        with pytest.raises(KDError, match=re.escape(message)):
            load_config(None, [f"plugins=[{entry}]"])
    for given in ('"a\\0b.py"', "notalist.py"):  # a NUL in a path (YAML's escape), or not a list
        with pytest.raises(KDError, match=r"plugins(\[0\]: a path cannot hold a NUL|: a list of \.py files)"):
            load_config(None, [f"plugins={given}" if given.endswith("py") else f"plugins=[{given}]"])
    with pytest.raises(KDError, match="config error: task: unknown task 'smothed'"):
        load_config(None, ["task=smothed"])  # nothing registered it
