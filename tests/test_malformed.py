"""Malformed inputs through the CLI, table-driven: configs, images, npz, CSV, masks,
checkpoints, sidecars and run folders. Each must end with exit status 2, exactly one line
on stderr naming the file or key, no traceback, and nothing written (no run folder made,
an existing one unchanged)."""

import os
import shutil
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny
from kdstyles.cli import main

TINY_NETS = ["networks.teacher.widen=0.25", "networks.students.s1.widen=0.125", "networks.students.s2.widen=0.125"]


def sets(*pairs: str) -> list[str]:
    return [a for p in pairs for a in ("--set", p)]


def png(path: Path, size=(12, 12), value=0, mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)
    return path


def bomb(path: Path, width=30000, height=30000) -> Path:
    """A small PNG whose header claims width x height pixels (an image bomb)."""
    data = bytearray((png(path.with_suffix(".tmp.png"))).read_bytes())
    path.with_suffix(".tmp.png").unlink()
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def folder(root: Path, classes=("a", "b"), per_class=4) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        for i in range(per_class):
            png(root / c / f"{i}.png", value=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return root


def train_on(tmp: Path, *data: str) -> list[str]:
    return ["train", "--no-evaluate", "-q", *sets("data.image_size=16", "data.batch_size=4", *TINY_NETS,
                                                   f"output.dir={tmp / 'out'}", "output.name=run", *data)]


def npz(path: Path, **change) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 12), ("val", 4), ("test", 4)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2)[:, None].astype(np.uint8)
    for k, v in change.items():
        if v is None:
            arrays.pop(k)
        else:
            arrays[k] = v
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def medmnist_args(tmp: Path) -> list[str]:
    return train_on(tmp, "data.source=medmnist", "data.flag=breastmnist", f"data.root={tmp / 'npz'}")


class Boom:
    """Pickled, this runs code on load: it must never be unpickled."""

    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def seg_folder(root: Path, n=4) -> Path:
    for i in range(n):
        png(root / "images" / f"c{i}.png", value=(120, 40, 40))
        m = np.zeros((12, 12), np.uint8)
        m[3:7, 3:7] = 255
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(m).save(root / "masks" / f"c{i}.png")
    return root


def seg_args(tmp: Path, *extra: str) -> list[str]:
    return train_on(tmp, "task=segmentation", "data.source=folder", f"data.root={tmp / 'seg'}",
                    "networks.teacher.arch=unet", "networks.students.s1.arch=unet", "networks.students.s2.arch=unet",
                    "networks.teacher.widen=0.25", "networks.students.s1.widen=0.25",
                    "networks.students.s2.widen=0.25", *extra)


def yaml_file(tmp: Path, text: str | bytes, name="bad.yaml") -> Path:
    p = tmp / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def csv_file(tmp: Path, text: str | bytes) -> Path:
    folder(tmp / "imgs")
    p = tmp / "imgs" / "labels.csv"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def folder_train(tmp: Path, mutate) -> list[str]:
    mutate(folder(tmp / "f"))
    return train_on(tmp, "data.source=folder", f"data.root={tmp / 'f'}")


def csv_train(tmp: Path, text: str | bytes, *extra: str) -> list[str]:
    return train_on(tmp, "data.source=csv", f"data.path={csv_file(tmp, text)}", *extra)


def big_csv(tmp: Path) -> tuple[Path, int]:
    folder(tmp / "imgs")
    bad = 73_411
    rows = ["path,label,split"]
    for i in range(100_000):
        rows.append(f"a/{i % 4}.png,{'ab'[i % 2]},{'tset' if i == bad else 'train'}")
    p = tmp / "imgs" / "big.csv"
    p.write_text("\n".join(rows) + "\n")
    return p, bad + 2


def det_args(tmp: Path, source: str, text: str, *extra: str) -> list[str]:
    """A detection run on 12 px frames with boxes from a CSV or COCO file whose text is given."""
    for i in range(4):
        png(tmp / "det" / f"f{i}.png", value=(120, 40, 40))
    listing = tmp / "det" / ("boxes.csv" if source == "csv" else "coco.json")
    listing.write_text(text)
    return train_on(tmp, "task=detection", f"data.source={source}", f"data.path={listing}",
                    "networks.teacher.arch=unet", "networks.students.s1.arch=unet", "networks.students.s2.arch=unet",
                    "networks.teacher.widen=0.25", "networks.students.s1.widen=0.25",
                    "networks.students.s2.widen=0.25", *extra)


BOX_ROWS = "path,x1,y1,x2,y2,label\nf0.png,1,1,5,5,polyp\nf1.png,,,,,\nf2.png,2,2,6,6,polyp\n"
COCO_TEXT = ('{"images": [{"id": 1, "file_name": "f0.png"}, {"id": 2, "file_name": "f1.png"}], '
             '"annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]}], '
             '"categories": [{"id": 1, "name": "polyp"}]}')


def corrupt(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def edit_sidecar(run: Path, **keys) -> Path:
    """The exported s1 model's sidecar with ``keys`` changed (``input__channels``: a nested key)."""
    import json

    path = run / "export" / "s1.json"
    side = json.loads(path.read_text())
    for key, value in keys.items():
        *parents, last = key.split("__")
        node = side
        for k in parents:
            node = node[k]
        node[last] = value
    path.write_text(json.dumps(side))
    return run / "export" / "s1.onnx"


def edit_yaml(path: Path, **keys) -> Path:
    """A run's config.yaml changed by hand (``data__image_size=24`` sets data.image_size)."""
    import yaml

    raw = yaml.safe_load(path.read_text())
    for key, value in keys.items():
        node, *parts = [raw, *key.split("__")]
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    path.write_text(yaml.safe_dump(raw))
    return path


def predict_with(t: Path, model: Path, *inputs: str) -> list[str]:
    return ["predict", str(model), *(inputs or [str(png(t / "x.png"))]), "--out", str(t / "p")]


def det3d_args(tmp: Path, rows: str) -> list[str]:
    """3D detection from a box CSV in world mm (its volumes need not exist: the CSV is read first)."""
    listing = tmp / "vols" / "boxes.csv"
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text("path,x1,y1,z1,x2,y2,z2,label\n" + rows)
    return train_on(tmp, "task=detection", "data.spatial_dims=3", "data.source=csv", f"data.path={listing}",
                    "data.image_size=16", "networks.teacher.arch=unet", "networks.students.s1.arch=unet",
                    "networks.students.s2.arch=unet", "networks.teacher.widen=0.25", "networks.students.s1.widen=0.25",
                    "networks.students.s2.widen=0.25")


def volume_folder(root: Path, nan_at: tuple[int, int, int] | None = None) -> Path:
    """Class folders of small NIfTI volumes; ``nan_at``: a voxel of b/1.nii.gz that is NaN."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(4):
            vol = rng.normal(100, 20, (10, 10, 10)).astype(np.float32)
            if nan_at is not None and (c, i) == ("b", 1):
                vol[nan_at] = np.nan
            nib.save(nib.Nifti1Image(vol, np.eye(4)), root / c / f"{i}.nii.gz")
    return root


def float_image(path: Path, nan: bool) -> Path:
    arr = np.linspace(0, 1, 144, dtype=np.float32).reshape(12, 12)
    if nan:
        arr[3, 4] = np.nan
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode="F").save(path)
    return path


# Each case: (id, setup(tmp, run) -> (argv, what the line must name)). ``run`` is a copy of a
# trained, evaluated and exported run folder, private to the case.
CASES = [
    # ---------------------------------------------------------------- configs
    ("config-unknown-key", lambda t, r: (["check", str(yaml_file(t, "optim:\n  lrr: 1\n"))], "optim.lrr")),
    ("config-bad-type", lambda t, r: (["check", str(yaml_file(t, "train:\n  epochs: many\n"))], "train.epochs")),
    ("config-yaml-syntax", lambda t, r: (["check", str(yaml_file(t, "data: [1, 2\n"))], "bad.yaml' line")),
    ("config-top-level-list", lambda t, r: (["check", str(yaml_file(t, "- a\n- b\n"))], "bad.yaml")),
    ("config-missing", lambda t, r: (["check", str(t / "nope.yaml")], "nope.yaml")),
    ("config-is-folder", lambda t, r: (["check", str(t)], "is a folder")),
    ("config-not-utf8", lambda t, r: (["check", str(yaml_file(t, b"\xff\xfe\x00\x81data"))], "not UTF-8")),
    ("set-without-equals", lambda t, r: (["check", "--set", "noequals"], "noequals")),
    ("set-list-index", lambda t, r: (["check", str(yaml_file(t, "routing:\n  edges:\n    - {src: teacher, dst: s1, "
                                                               "style: predictions}\n")),
                                      "--set", "routing.edges.3.weight=1"], "'3' is not an index")),
    ("edge-unknown-style", lambda t, r: (["check", str(yaml_file(t, "routing:\n  edges:\n    - {src: teacher, "
                                                                   "dst: s1, style: vibes}\n"))], "routing.edges.0")),
    ("edge-unknown-network", lambda t, r: (["check", str(yaml_file(t, "routing:\n  edges:\n    - {src: sx, dst: s1,"
                                                                     " style: predictions}\n"))], "src 'sx'")),
    ("edge-unknown-option", lambda t, r: (["check", str(yaml_file(t, "routing:\n  edges:\n    - {src: teacher, "
                                                                    "dst: s1, style: predictions, options: "
                                                                    "{temprature: 2}}\n"))], "temprature")),
    ("selection-metric-task", lambda t, r: (["check", "--set", "train.selection_metric=dice"],
                                            "train.selection_metric")),
    ("offline-without-checkpoint", lambda t, r: (["check", "--set", "networks.teacher.mode=offline"],
                                                 "networks.teacher")),
    ("offline-checkpoint-missing", lambda t, r: (train_on(t, "networks.teacher.mode=offline",
                                                          f"networks.teacher.checkpoint={t / 'gone.pt'}"), "gone.pt")),
    ("offline-checkpoint-garbage", lambda t, r: (train_on(t, "networks.teacher.mode=offline",
                                                          f"networks.teacher.checkpoint="
                                                          f"{corrupt(t / 'junk.pt', os.urandom(300))}"), "junk.pt")),
    ("offline-checkpoint-wrong-arch", lambda t, r: (train_on(t, "networks.teacher.mode=offline",
                                                             "networks.teacher.arch=resnet34",
                                                             f"networks.teacher.checkpoint={r}"),
                                                    "best-teacher.pt")),
    ("classes-one-name", lambda t, r: (["check", "--set", "data.source=csv", "--set", "data.path=x.csv", "--set",
                                        "data.classes=[only]"], "data.classes: needs at least two class names")),
    ("key-of-another-source", lambda t, r: (["check", "--set", "data.classes=[a,b]"],
                                            "data.classes: source 'synthetic' does not read it")),
    ("student-named-teacher", lambda t, r: (["check", "--set", "networks.students.teacher.arch=resnet10"],
                                            "networks.students")),
    ("cache-with-augmentation", lambda t, r: (["check", "--set", "networks.teacher.cache=true", "--set",
                                               "networks.teacher.mode=offline", "--set",
                                               "networks.teacher.checkpoint=x"], "networks.teacher.cache")),
    ("batch-size-one", lambda t, r: (["check", "--set", "data.batch_size=1"], "data.batch_size")),
    ("device-unknown", lambda t, r: (["check", "--set", "train.device=tpu"], "train.device")),
    ("arch-unknown", lambda t, r: (["check", "--set", "networks.students.s1.arch=resnet19"], "resnet19")),
    ("tap-unknown", lambda t, r: (train_on(t, "networks.students.s2.tap=layer9.conv", "data.train_samples=40",
                                           "data.val_samples=8", "data.test_samples=8"), "networks.s2.tap")),
    ("features-taps-unknown", lambda t, r: (["check", "--set", "routing.preset=fitnet", "--set",
                                             "styles.features.taps=[layer9]"], "edge teacher -> s1 features")),
    ("features-taps-not-pairs", lambda t, r: (["check", "--set", "routing.preset=fitnet", "--set",
                                               "styles.features.taps=[[layer3, layer2, layer1]]"],
                                              "styles.features.taps: each item is a module path or a [source")),
    ("dkd-for-multilabel", lambda t, r: (["check", "--set", "task=multilabel", "--set", "routing.preset=dkd",
                                          "--set", "data.image_size=32"], "edge teacher -> s1 dkd (w=0.2): style")),
    ("dkd-negative-beta", lambda t, r: (["check", "--set", "styles.dkd.beta=-1"], "styles.dkd.beta")),
    # ---------------------------------------------------------------- image folders and CSV
    ("folder-missing", lambda t, r: (train_on(t, "data.source=folder", f"data.root={t / 'nowhere'}"), "nowhere")),
    ("folder-one-class", lambda t, r: (train_on(t, "data.source=folder", f"data.root={folder(t / 'one', ('x',))}"),
                                       "one class only")),
    ("folder-empty-class", lambda t, r: (train_on(t, "data.source=folder",
                                                  f"data.root={(folder(t / 'f'), (t / 'f' / 'c').mkdir())[0]}"),
                                         str(t / "f" / "c"))),
    ("image-truncated", lambda t, r: (folder_train(t, lambda f: corrupt(f / "a" / "0.png",
                                                                        (f / "a" / "1.png").read_bytes()[:30])),
                                      "0.png")),
    ("image-not-an-image", lambda t, r: (folder_train(t, lambda f: corrupt(f / "b" / "2.png", "hello")), "2.png")),
    ("image-bomb", lambda t, r: (folder_train(t, lambda f: bomb(f / "a" / "3.png")), "3.png' is too large")),
    ("csv-missing-columns", lambda t, r: (csv_train(t, "file,y\n"), "labels.csv")),
    ("csv-one-class", lambda t, r: (csv_train(t, "path,label\n" + "".join(f"a/{i}.png,a\n" for i in range(4))),
                                    "one class only")),
    ("csv-100k-rows-one-bad", lambda t, r: (lambda p: (train_on(t, "data.source=csv", f"data.path={p[0]}"),
                                                       f"line {p[1]}"))(big_csv(t))),
    ("csv-not-utf8", lambda t, r: (csv_train(t, b"path,label\na/0.png,caf\xe9\n"), "not UTF-8")),
    ("csv-nul-byte", lambda t, r: (csv_train(t, "path,label\na/0.png,a\x00b\nb/0.png,b\n"), "labels.csv")),
    ("csv-missing-image", lambda t, r: (csv_train(t, "path,label\na/0.png,a\na/1.png,a\nb/0.png,b\nb/1.png,b\n"
                                                     "b/9.png,b\n"), "9.png")),
    ("csv-header-only", lambda t, r: (csv_train(t, "path,label\n"), "has no rows")),
    ("csv-label-not-in-classes", lambda t, r: (csv_train(t, "path,label\na/0.png,a\nb/0.png,b\nb/1.png,c\n",
                                                         "data.classes=[a, b]"), "label 'c'")),
    # ---------------------------------------------------------------- MedMNIST npz
    ("npz-pickled-objects", lambda t, r: (medmnist_args(t) if npz(t / "npz" / "breastmnist.npz",
                                                                  train_labels=np.array([Boom()] * 12, dtype=object))
                                          else None, "pickled")),
    ("npz-missing-key", lambda t, r: (medmnist_args(t) if npz(t / "npz" / "breastmnist.npz", val_labels=None)
                                      else None, "val_labels")),
    ("npz-not-a-zip", lambda t, r: (medmnist_args(t) if corrupt((t / "npz").mkdir() or t / "npz" / "breastmnist.npz",
                                                                b"PK\x03\x04 nope") else None, "breastmnist.npz")),
    ("npz-float-images", lambda t, r: (medmnist_args(t) if npz(t / "npz" / "breastmnist.npz",
                                                               test_images=np.zeros((4, 28, 28), np.float32))
                                       else None, "test_images")),
    ("npz-multi-label", lambda t, r: (medmnist_args(t) if npz(t / "npz" / "breastmnist.npz",
                                                              val_labels=np.zeros((4, 3), np.uint8)) else None,
                                      "multi-label")),
    ("npz-count-mismatch", lambda t, r: (medmnist_args(t) if npz(t / "npz" / "breastmnist.npz",
                                                                 train_labels=np.zeros((5, 1), np.uint8))
                                         else None, "breastmnist.npz")),
    ("npz-label-out-of-range", lambda t, r: (medmnist_args(t) if npz(t / "npz" / "breastmnist.npz",
                                                                     train_labels=np.full((12, 1), 7, np.uint8))
                                             else None, "label 7")),
    # ---------------------------------------------------------------- segmentation masks
    ("seg-image-not-an-image", lambda t, r: (seg_args(t) if corrupt(seg_folder(t / "seg") / "images" / "c1.png",
                                                                    "text") else None, "c1.png")),
    ("seg-mask-wrong-size", lambda t, r: (seg_args(t) if png(seg_folder(t / "seg") / "masks" / "c2.png", (8, 8), 0, "L")
                                          else None, "masks/c2.png")),
    ("seg-mask-value-out-of-range", lambda t, r: (seg_args(t, "data.num_classes=3")
                                                  if png(seg_folder(t / "seg") / "masks" / "c0.png", (12, 12), 9, "L")
                                                  else None, "masks/c0.png")),
    ("seg-image-without-mask", lambda t, r: (seg_args(t) if png(seg_folder(t / "seg") / "images" / "lonely.png")
                                             else None, "lonely.png")),
    ("seg-mask-bomb", lambda t, r: (seg_args(t) if bomb(seg_folder(t / "seg") / "masks" / "c3.png") else None,
                                    "c3.png")),
    # ---------------------------------------------------------------- run folders and checkpoints
    ("evaluate-not-a-run", lambda t, r: (["evaluate", str((t / "empty").mkdir() or t / "empty")], "not a run folder")),
    ("evaluate-run-json-damaged", lambda t, r: (["evaluate", str(r)] if corrupt(r / "run.json", "{oops")
                                                else None, "run.json")),
    ("evaluate-run-json-empty-object", lambda t, r: (["evaluate", str(r)] if corrupt(r / "run.json", "{}")
                                                     else None, "run.json")),
    ("evaluate-best-missing", lambda t, r: (["evaluate", str(r)] if (r / "checkpoints" / "best-s1.pt").unlink()
                                            is None else None, "best-s1.pt")),
    ("evaluate-best-wrong-shapes", lambda t, r: (["evaluate", str(r)] if shutil.copy(
        r / "checkpoints" / "best-teacher.pt", r / "checkpoints" / "best-s2.pt") else None, "best-s2.pt")),
    ("evaluate-checkpoint-unknown", lambda t, r: (["evaluate", str(r), "--checkpoint", "newest"], "newest")),
    ("resume-last-truncated", lambda t, r: (["train", "--resume", str(r)] if corrupt(
        r / "checkpoints" / "last.pt", (r / "checkpoints" / "last.pt").read_bytes()[:5000]) else None, "last.pt")),
    ("resume-last-empty", lambda t, r: (["train", "--resume", str(r)] if corrupt(r / "checkpoints" / "last.pt", b"")
                                        else None, "last.pt' is empty")),
    ("resume-last-pickled-code", lambda t, r: (["train", "--resume", str(r)] if torch.save(
        {"cohort": Boom()}, r / "checkpoints" / "last.pt") is None else None, "refused unread")),
    ("resume-last-not-a-last", lambda t, r: (["train", "--resume", str(r)] if shutil.copy(
        r / "checkpoints" / "best-s1.pt", r / "checkpoints" / "last.pt") else None, "last.pt")),
    ("resume-fixed-key", lambda t, r: (["train", "--resume", str(r), "--set", "routing.preset=kd"],
                                       "routing.preset")),
    ("resume-config-damaged", lambda t, r: (["train", "--resume", str(r)] if corrupt(r / "config.yaml", "data: [")
                                            else None, "config.yaml")),
    ("resume-config-and-run", lambda t, r: (["train", "x.yaml", "--resume", str(r)], "either a CONFIG or --resume")),
    ("train-over-existing-run", lambda t, r: (train_on(t, f"output.dir={r.parent}", f"output.name={r.name}"),
                                              "already holds a run")),
    ("train-output-dir-a-file", lambda t, r: (train_on(t, f"output.dir={r / 'config.yaml'}"),
                                              "config.yaml' is a file, not a folder; choose another output.dir")),
    ("report-eval-damaged", lambda t, r: (["report", str(r)] if corrupt(r / "eval.json", "[1,") else None,
                                          "eval.json")),
    ("report-results-damaged", lambda t, r: (["report", str(r)] if corrupt(r / "results.csv", "a,b\n1,2\n")
                                             else None, "results.csv")),
    ("report-nothing-there", lambda t, r: (["report", str((t / "e").mkdir() or t / "e")], "neither results.csv")),
    ("export-network-unknown", lambda t, r: (["export", str(r), "--network", "s9"], "s9")),
    ("export-format-unknown", lambda t, r: (["export", str(r), "--format", "tflite"], "tflite")),
    # ---------------------------------------------------------------- exported models and predict inputs
    ("predict-sidecar-damaged", lambda t, r: (["predict", str(r / "export" / "s1.onnx"), str(png(t / "x.png")),
                                               "--out", str(t / "p")]
                                              if corrupt(r / "export" / "s1.json", "{\"class_names\": [") else None,
                                              "s1.json")),
    ("predict-sidecar-incomplete", lambda t, r: (["predict", str(r / "export" / "s1.onnx"), str(png(t / "x.png")),
                                                  "--out", str(t / "p")]
                                                 if corrupt(r / "export" / "s1.json", '{"input": {}}') else None,
                                                 "s1.json")),
    ("predict-sidecar-missing", lambda t, r: (["predict", str(r / "export" / "s1.onnx"), str(png(t / "x.png")),
                                               "--out", str(t / "p")]
                                              if (r / "export" / "s1.json").unlink() is None else None, "s1.json")),
    ("predict-model-garbage", lambda t, r: (["predict", str(r / "export" / "s1.onnx"), str(png(t / "x.png")),
                                             "--out", str(t / "p")]
                                            if corrupt(r / "export" / "s1.onnx", os.urandom(500)) else None,
                                            "s1.onnx")),
    ("predict-input-not-an-image", lambda t, r: (["predict", str(r / "export" / "s1.onnx"),
                                                  str(corrupt(t / "y.png", "nope")), "--out", str(t / "p")], "y.png")),
    ("predict-input-bomb", lambda t, r: (["predict", str(r / "export" / "s1.onnx"), str(bomb(t / "z.png")),
                                          "--out", str(t / "p")], "z.png")),
    ("predict-input-csv-not-utf8", lambda t, r: (["predict", str(r / "export" / "s1.onnx"),
                                                  str(corrupt(t / "in.csv", b"path\n\xff\xfe.png\n")), "--out",
                                                  str(t / "p")], "in.csv")),
    ("predict-volume-to-image-model", lambda t, r: (["predict", str(r / "export" / "s1.onnx"),
                                                     str(corrupt(t / "ct.nii.gz", b"x")), "--out", str(t / "p")],
                                                    "this model takes 2D images")),
    ("predict-input-missing", lambda t, r: (["predict", str(r / "export" / "s1.onnx"), str(t / "gone.png"),
                                             "--out", str(t / "p")], "gone.png")),
    # ---------------------------------------------------------------- detection
    ("det-classifier-network", lambda t, r: (["check", "--set", "task=detection"], "does not fit task detection")),
    ("det-patches-2d", lambda t, r: (det_args(t, "csv", BOX_ROWS, "data.patch_size=8"),
                                     "data.patch_size: patches are for 3D segmentation and detection")),
    ("det-zoom-augment", lambda t, r: (det_args(t, "csv", BOX_ROWS, "data.augment.zoom=1.5"),
                                       "data.augment.zoom")),
    ("det-box-not-numbers", lambda t, r: (det_args(t, "csv", BOX_ROWS.replace("1,1,5,5", "1,1,five,5")),
                                          "boxes.csv' line 2")),
    ("det-box-outside-image", lambda t, r: (det_args(t, "csv", BOX_ROWS.replace("2,2,6,6", "13,2,16,6")),
                                            "outside the 12x12 image")),
    ("det-box-empty", lambda t, r: (det_args(t, "csv", BOX_ROWS.replace("2,2,6,6", "6,2,6,6")),
                                    "line 4: box (6, 2, 6, 6) has x2 <= x1")),
    ("det-box-image-missing", lambda t, r: (det_args(t, "csv", BOX_ROWS + "gone.png,1,1,3,3,polyp\n"), "gone.png")),
    ("det-coco-unknown-image", lambda t, r: (det_args(t, "coco", COCO_TEXT.replace('"image_id": 1', '"image_id": 9')),
                                             "image_id 9 is not among the images")),
    ("unet-size-not-halving", lambda t, r: (["check", "--set", "task=segmentation", "--set", "data.image_size=36",
                                              "--set", "networks.teacher.arch=unet", "--set",
                                              "networks.students.s1.arch=unet", "--set",
                                              "networks.students.s2.arch=unet"], "data.image_size: 36")),
    ("det-coco-not-json", lambda t, r: (det_args(t, "coco", COCO_TEXT[:-3]), "not a COCO detection JSON")),
    ("det-coco-image-id-twice", lambda t, r: (det_args(t, "coco", COCO_TEXT.replace('"id": 2', '"id": 1')),
                                              "2 image entries have id 1; ids must be unique")),
    ("det-coco-box-zero-width", lambda t, r: (det_args(t, "coco", COCO_TEXT.replace("[1, 1, 4, 4]", "[1, 1, 0, 4]")),
                                              "annotation 0 (id 7): bbox [1, 1, 0, 4] has width 0")),
    ("det-coco-box-outside-names-annotation", lambda t, r: (det_args(t, "coco", COCO_TEXT.replace(
        "[1, 1, 4, 4]", "[13, 1, 4, 4]")), "outside the 12x12 image; COCO file")),
    ("det-box-outside-names-line", lambda t, r: (det_args(t, "csv", BOX_ROWS.replace("2,2,6,6", "13,2,16,6")),
                                                 "boxes.csv' line 4")),
    ("det-box-x-reversed", lambda t, r: (det_args(t, "csv", BOX_ROWS.replace("2,2,6,6", "6,2,2,6")),
                                         "boxes.csv' line 4: box (6, 2, 2, 6) has x2 <= x1")),
    ("det-3d-box-z-reversed", lambda t, r: (det3d_args(t, "v0.nii.gz,1,1,6,4,4,2,lesion\n"),
                                            "boxes.csv' line 2: box (1, 1, 6, 4, 4, 2) has z2 <= z1")),
    # ---------------------------------------------------------------- values that are not numbers
    ("volume-nan-voxels", lambda t, r: (train_on(t, "data.source=folder", "data.spatial_dims=3",
                                                 f"data.root={volume_folder(t / 'vol', (2, 3, 4))}",
                                                 "data.volume_cache=false"),
                                        "1.nii.gz' holds 1 voxel(s) that are not numbers")),
    ("image-float-nan", lambda t, r: (folder_train(t, lambda f: float_image(f / "a" / "5.tif", nan=True)),
                                      "5.tif' holds 1 pixel value(s) that are not numbers")),
    # ---------------------------------------------------------------- sidecars that do not fit their model
    ("predict-sidecar-task-unknown", lambda t, r: (predict_with(t, edit_sidecar(r, task="segmentaton")),
                                                   "task 'segmentaton' is not known")),
    ("predict-sidecar-channels-wrong", lambda t, r: (predict_with(t, edit_sidecar(r, input__channels=1)),
                                                     "s1.json' does not fit model")),
    ("predict-sidecar-size-wrong", lambda t, r: (predict_with(t, edit_sidecar(r, input__height=24)),
                                                 "the model takes inputs of size 16")),
    ("predict-sidecar-classes-short", lambda t, r: (predict_with(t, edit_sidecar(r, class_names=["normal"])),
                                                    "the sidecar lists 1 class names")),
    ("predict-sidecar-classes-not-names", lambda t, r: (predict_with(t, edit_sidecar(r, class_names=[1, 2, 3, 4])),
                                                        "s1.json' is damaged")),
    ("predict-folder-without-images", lambda t, r: (predict_with(t, r / "export" / "s1.onnx", str(
        corrupt((t / "notes").mkdir() or t / "notes" / "read.txt", "x").parent)), "notes' (it holds 1 .txt file(s))")),
    ("predict-empty-folder", lambda t, r: (predict_with(t, r / "export" / "s1.onnx", str(
        (t / "nothing").mkdir() or t / "nothing")), "nothing' (empty)")),
    # ---------------------------------------------------------------- options, whoever parses them
    ("compare-out-is-a-file", lambda t, r: (["compare", "--out", str(corrupt(t / "cmp.txt", "x")), "--presets",
                                             "student", "--seeds", "1"], "cmp.txt' is a file, not a folder")),
    ("tune-out-is-a-file", lambda t, r: (["tune", str(yaml_file(t, "tune:\n  space:\n    optim.lr: {low: 1.0e-4, "
                                                                 "high: 1.0e-2, log: true}\n", "t.yaml")),
                                          "--out", str(corrupt(t / "tune.txt", "x"))], "tune.txt' is a file")),
    ("compare-jobs-zero", lambda t, r: (["compare", "--jobs", "0"], "'--jobs'")),
    ("tune-trials-zero", lambda t, r: (["tune", "--trials", "0"], "'--trials'")),
    # ---------------------------------------------------------------- issue 39: nothing wrong in silence
    ("set-infinite-lr", lambda t, r: (["check", "--set", "optim.lr=.inf"], "optim.lr: Input should be a finite")),
    ("set-infinite-style-temperature", lambda t, r: (["check", "--set", "styles.predictions.temperature=.inf"],
                                                     "styles.predictions.temperature")),
    ("set-infinite-cutmix", lambda t, r: (["check", "--set", "data.mix.cutmix=.inf"], "data.mix.cutmix")),
    ("edge-infinite-weight", lambda t, r: (["check", str(yaml_file(t, "routing:\n  edges:\n    - {src: teacher, "
                                                                      "dst: s1, style: predictions, weight: .inf}\n"))],
                                           "routing.edges.0.weight")),
    ("unlabeled-samples-beyond-memory", lambda t, r: (train_on(t, "routing.preset=kd", "data.unlabeled.source=synthetic",
                                                               "data.unlabeled.samples=1000000000000"),
                                                      "data.unlabeled.samples: 1,000,000,000,000 images")),
    ("features-taps-twice", lambda t, r: (["check", "--set", "routing.preset=fitnet", "--set",
                                           "styles.features.taps=[layer3, layer3]"], "layer3 is listed twice")),
    ("config-path-name-too-long", lambda t, r: (["check", str(t / ("x" * 300 + ".yaml"))], "holds at most 255")),
    ("output-dir-name-too-long", lambda t, r: (train_on(t, f"output.dir={t / ('d' * 300)}"),
                                               "output.dir: the path's part")),
    ("predict-out-name-too-long", lambda t, r: (["predict", str(r / "export" / "s1.onnx"), str(png(t / "x.png")),
                                                 "--out", str(t / ("p" * 300))], "--out")),
    ("name-with-line-break", lambda t, r: (["check", str(yaml_file(t, 'name: "a\\nb"\n'))], "printable characters")),
    ("image-name-with-line-break", lambda t, r: (folder_train(t, lambda f: corrupt(f / "b" / "x\nrm.png", "nope")),
                                                 "x\\nrm.png")),
    ("yaml-nested-5000-deep", lambda t, r: (["check", str(yaml_file(t, "a:\n" + "".join(
        " " * i + "b:\n" for i in range(1, 5001))))], "nested too deeply")),
    ("yaml-alias-bomb", lambda t, r: (["check", str(yaml_file(t, "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcde", "bcdef")) + "name: *f\n"))], "name")),
    ("resume-run-json-missing", lambda t, r: (["train", "--resume", str(r)] if (r / "run.json").unlink() is None
                                              else None, "run.json is missing")),
    ("resume-config-yaml-edited-task", lambda t, r: (["train", "--resume", str(r), "--set", "train.epochs=2"] if
                                                     edit_yaml(r / "config.yaml", task="multilabel") else None,
                                                     "config.yaml' was edited: task")),
    ("resume-config-yaml-edited-size", lambda t, r: (["evaluate", str(r)] if edit_yaml(
        r / "config.yaml", data__image_size=24) else None, "config.yaml' was edited: data.image_size")),
    ("resume-qat-without-epochs", lambda t, r: (["train", "--resume", str(r), "--set", "train.qat=true"],
                                                "no epoch would learn the rounding")),
    ("qat-teacher-alone", lambda t, r: (["check", "--set", "routing.preset=teacher", "--set", "train.qat=true"],
                                        "train.qat: this run trains the teacher alone")),
    ("predict-rejected-int8", lambda t, r: (predict_with(t, edit_sidecar(r, quantization={
        "accepted": False, "type": "int8", "change_points": -12.5, "metric": "accuracy", "max_drop_points": 1.0})),
        "lost 12.50 points of accuracy")),
    ("export-calibration-without-quantize", lambda t, r: (["export", str(r), "--calibration", "64"],
                                                          "--calibration applies to a quantized export")),
    ("report-results-cut-short", lambda t, r: (["report", str(r)] if corrupt(
        r / "results.csv", f"preset,seed,network,checkpoint,split,accuracy,run_dir\nkd,0,s1,best,test,0.5,{r}/kd-se\n")
        else None, "results.csv' is damaged: line 2 is cut short")),
    ("option-unknown", lambda t, r: (["train", "--epochs", "3"], "No such option: --epochs")),
    ("command-unknown", lambda t, r: (["trian"], "No such command 'trian'")),
    ("argument-missing", lambda t, r: (["evaluate"], "Missing argument")),
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny trained, evaluated run with s1 exported to ONNX."""
    from kdstyles import Experiment
    from kdstyles.deploy.export import export_run

    base = tmp_path_factory.mktemp("trained")
    exp = Experiment(None, overrides=tiny(base, "train.epochs=1"), quiet=True)
    exp.fit()
    exp.evaluate()
    export_run(exp.run_dir, "s1", "onnx")
    return exp.run_dir


def tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_there_are_at_least_forty_cases():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_malformed_input_is_one_line(case, tmp_path, trained_run, monkeypatch, capsys):
    monkeypatch.setenv("KDSTYLES_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "trained" / "run"
    shutil.copytree(trained_run, run)
    argv, named = case[1](tmp_path, run)
    capsys.readouterr()
    before = tree(tmp_path)
    monkeypatch.setattr(sys, "argv", ["kdstyles", *argv])
    with pytest.raises(SystemExit) as done:
        main()
    out, err = capsys.readouterr()
    assert done.value.code == 2, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert named in lines[0], lines[0]
    assert "Traceback" not in out + err
    assert tree(tmp_path) == before, "something was written"
    assert not (tmp_path / "out" / "run").exists()
    assert not (tmp_path / "PWNED").exists()


def test_a_rejected_quantized_model_predicts_only_when_allowed_and_says_what_it_lost(tmp_path, trained_run,
                                                                                     monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    model = edit_sidecar(run, quantization={"accepted": False, "type": "int8", "change_points": -12.5,
                                            "metric": "accuracy", "max_drop_points": 1.0})
    monkeypatch.setattr(sys, "argv", ["kdstyles", "predict", str(model), str(png(tmp_path / "x.png")), "--out",
                                      str(tmp_path / "p"), "--allow-rejected"])
    with pytest.raises(SystemExit) as done:
        main()
    out, err = capsys.readouterr()
    assert done.value.code == 0, err
    assert "lost 12.50 points of accuracy" in err and "used anyway" in err
    assert (tmp_path / "p" / "predictions.csv").is_file()
