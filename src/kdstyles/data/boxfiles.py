"""Boxes from files, for detection: a CSV ``path,x1,y1,x2,y2,label[,split]`` (one row per
box; a row with empty box columns lists an image without objects; for volumes
``path,x1,y1,z1,x2,y2,z2,label[,split]`` in world millimetres), a COCO-format JSON,
and Kvasir-SEG folders (``root/images/`` with ``root/masks/``, a box around each connected
region of a mask, or Kvasir-SEG's ``kavsir_bboxes.json`` beside them).

Each reader returns the image records and a :class:`Listing`: each image's boxes in the
pixels of its own file (``x1, y1, x2, y2, class index``; checked against the file's size
later, with the data), the class names, and where each box was written (a CSV line, a COCO
annotation), so that a box found bad later is named there too. A box must have x2 > x1,
y2 > y1 (z2 > z1) as written, in every reader and every dimension. Errors name the file and
the line, annotation or image.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import KDError
from ..store.fileio import read_csv
from .files import Record, split_value

BOX_COLUMNS = {2: ("x1", "y1", "x2", "y2"), 3: ("x1", "y1", "z1", "x2", "y2", "z2")}  # by spatial dimensions
COUNT = {4: "four", 6: "six"}


@dataclass
class Listing:
    """Boxes read from a file: by image path, (m, 2d + 1) corners and class index in the image's
    own pixels (world mm for volumes); the class names; and per image, per box, where it was
    written (``CSV file 'b.csv' line 4``), for messages about it."""

    boxes: dict[str, np.ndarray]
    names: list[str]
    origins: dict[str, list[str]]


def _ordered(box: list[float], where: str, dims: int) -> None:
    """x2 > x1, y2 > y1 (z2 > z1) as written: a box's corners are never swapped silently."""
    axes = "xyz"[:dims]
    flat = [f"{a}2 <= {a}1" for j, a in enumerate(axes) if box[dims + j] <= box[j]]
    if flat:
        raise KDError(f"{where}: box ({', '.join(f'{v:g}' for v in box)}) has {' and '.join(flat)}; the corners are "
                      f"{', '.join(a + '1' for a in axes)} then {', '.join(a + '2' for a in axes)}, each second one "
                      "larger")


def _class_index(names: list[str], given: list[str] | None, where: str) -> dict[str, int]:
    """Class names in order: ``data.classes`` if given (every label must be in it), else sorted."""
    if given:
        unknown = sorted(set(names) - set(given))
        if unknown:
            raise KDError(f"{where}: label '{unknown[0]}' is not in data.classes ({', '.join(given)})")
        return {n: k for k, n in enumerate(given)}
    return {n: k for k, n in enumerate(sorted(set(names)))}


def _empty() -> np.ndarray:
    return np.zeros((0, 5), np.float32)


def read_box_csv(path: Path, classes: list[str] | None, dims: int = 2) -> tuple[list[Record], Listing]:
    """``path,x1,y1,x2,y2,label[,split]`` (``dims=3``: ``path,x1,y1,z1,x2,y2,z2,label[,split]``);
    paths relative to the CSV's folder."""
    columns = BOX_COLUMNS[dims]
    if not path.is_file():
        raise KDError(f"data.path: CSV file '{path}' does not exist")
    rows = read_csv(path, f"give columns path,{','.join(columns)},label[,split]",
                    required=("path", *columns, "label"))
    order: dict[str, Record] = {}
    found: dict[str, list[tuple[list[float], str]]] = {}
    origins: dict[str, list[str]] = {}
    for line, row in enumerate(rows, start=2):
        where = f"CSV file '{path}' line {line}"
        if not row["path"]:
            raise KDError(f"{where}: empty path")
        split = split_value(row.get("split", ""), where)
        image = str(path.parent / row["path"])
        if image not in order:
            order[image] = Record(Path(image), "", split)
            found[image], origins[image] = [], []
        elif order[image].split != split:
            raise KDError(f"{where}: '{row['path']}' is in split '{split}' here and '{order[image].split}' above")
        values = [row[c].strip() for c in columns]
        if not any(values) and not row["label"]:
            continue  # an image without objects
        try:
            box = [float(v) for v in values]
        except ValueError:
            n = COUNT[len(columns)]
            raise KDError(f"{where}: box ({', '.join(values)}) needs {n} numbers {','.join(columns)} (or all {n} "
                          "empty, with an empty label, for an image without objects)") from None
        if not all(math.isfinite(v) for v in box) or not row["label"]:
            raise KDError(f"{where}: box ({', '.join(values)}) label '{row['label']}': needs finite numbers and a label")
        _ordered(box, where, dims)
        found[image].append((box, row["label"]))
        origins[image].append(where)
    if not order:
        raise KDError(f"CSV file '{path}' has no rows")
    index = _class_index([lbl for boxes in found.values() for _, lbl in boxes], classes, f"CSV file '{path}'")
    width = len(columns) + 1
    boxes = {p: np.array([[*b, index[lbl]] for b, lbl in found[p]], np.float32).reshape(-1, width) for p in order}
    return list(order.values()), Listing(boxes, list(index), origins)


def read_coco(path: Path, images_root: Path | None, classes: list[str] | None) -> tuple[list[Record], Listing]:
    """A COCO-format JSON (``images``, ``annotations`` with ``bbox: [x, y, w, h]``,
    ``categories``); file names relative to ``images_root`` (default: the JSON's folder)."""
    if not path.is_file():
        raise KDError(f"data.path: COCO file '{path}' does not exist")
    try:
        coco = json.loads(path.read_text(encoding="utf-8"))
        images, annotations, categories = coco["images"], coco.get("annotations", []), coco["categories"]
        ids = [im["id"] for im in images]
        by_id = {im["id"]: im["file_name"] for im in images}
        cat_ids = [c["id"] for c in categories]
        cat_names = {c["id"]: str(c["name"]) for c in categories}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KDError(f"COCO file '{path}': not a COCO detection JSON ({type(exc).__name__}: {exc}); it needs "
                      "images [{id, file_name}], annotations [{image_id, bbox, category_id}] and "
                      "categories [{id, name}]") from None
    for kind, listed in (("image", ids), ("category", cat_ids)):
        same = next(((i, k) for i, k in Counter(listed).items() if k > 1), None)
        if same is not None:
            raise KDError(f"COCO file '{path}': {same[1]} {kind} entries have id {same[0]!r}; ids must be unique "
                          f"(annotations point to {kind}s by id)")
    twice = [name for name, k in Counter(by_id.values()).items() if k > 1]
    if twice:
        ids = [i for i, name in by_id.items() if name == twice[0]]
        raise KDError(f"COCO file '{path}': file_name '{twice[0]}' is listed as {len(ids)} images (ids "
                      f"{', '.join(map(str, ids))}); give each file one image entry, its boxes all pointing to it")
    root = images_root or path.parent
    index = _class_index(list(cat_names.values()), classes, f"COCO file '{path}'")
    found: dict[object, list[list[float]]] = {i: [] for i in by_id}
    origins: dict[object, list[str]] = {i: [] for i in by_id}
    if not isinstance(annotations, list):
        raise KDError(f"COCO file '{path}': annotations is a {type(annotations).__name__}, not a list")
    for n, a in enumerate(annotations):
        if not isinstance(a, dict):
            raise KDError(f"COCO file '{path}' annotation {n}: {a!r} is not an object {{image_id, bbox, category_id}}")
        where = f"COCO file '{path}' annotation {n} (id {a.get('id', '?')})"
        if a.get("image_id") not in by_id:
            raise KDError(f"{where}: image_id {a.get('image_id')!r} is not among the images")
        if a.get("category_id") not in cat_names:
            raise KDError(f"{where}: category_id {a.get('category_id')!r} is not among the categories")
        try:
            x, y, w, h = (float(v) for v in a["bbox"])
        except (KeyError, TypeError, ValueError):
            raise KDError(f"{where}: bbox {a.get('bbox')!r} is not [x, y, width, height]") from None
        if not (w > 0 and h > 0):
            raise KDError(f"{where}: bbox [{x:g}, {y:g}, {w:g}, {h:g}] has {'width' if not w > 0 else 'height'} "
                          f"{w if not w > 0 else h:g}; a COCO bbox is [x, y, width, height], both sizes above 0")
        found[a["image_id"]].append([x, y, x + w, y + h, index[cat_names[a["category_id"]]]])
        origins[a["image_id"]].append(where)
    records = [Record(root / by_id[i], "", None) for i in by_id]
    boxes = {str(root / by_id[i]): np.array(found[i], np.float32).reshape(-1, 5) for i in by_id}
    if not records:
        raise KDError(f"COCO file '{path}' lists no images")
    return records, Listing(boxes, list(index), {str(root / by_id[i]): origins[i] for i in by_id})


KVASIR_BOXES = "kavsir_bboxes.json"  # Kvasir-SEG's own name for its box file


def read_kvasir(root: Path, classes: list[str] | None) -> tuple[list[Record], Listing]:
    """``root/images/`` and ``root/masks/`` (a box around each 8-connected region of a mask's
    foreground, values above 127), or ``root/kavsir_bboxes.json`` instead of the masks."""
    from .segfolder import list_pairs

    listing = root / KVASIR_BOXES
    if listing.is_file():
        try:
            data = json.loads(listing.read_text(encoding="utf-8"))
            found = {stem: [[float(b["xmin"]), float(b["ymin"]), float(b["xmax"]), float(b["ymax"]), str(b["label"])]
                            for b in entry.get("bbox", [])] for stem, entry in data.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise KDError(f"'{listing}': not Kvasir-SEG's box file ({type(exc).__name__}: {exc}); it maps each "
                          "image name to {bbox: [{label, xmin, ymin, xmax, ymax}]}") from None
        written = {stem: [f"'{listing}' entry '{stem}' box {n}" for n in range(len(bs))] for stem, bs in found.items()}
        for stem, found_boxes in found.items():
            for b, where in zip(found_boxes, written[stem]):
                _ordered(b[:4], where, 2)
        from ..store.imageio import is_image
        from .segfolder import pair_dirs

        images, _ = pair_dirs(root, masks=False)
        files = {p.stem: p for p in sorted(images.iterdir()) if is_image(p)}
        missing = sorted(set(found) - set(files))
        if missing:
            raise KDError(f"'{listing}': image '{missing[0]}' has boxes but no file in '{images}'")
        index = _class_index([b[4] for bs in found.values() for b in bs], classes, f"'{listing}'")
        records = [Record(p, "", None) for p in files.values()]
        boxes = {str(p): np.array([[*b[:4], index[b[4]]] for b in found.get(stem, [])], np.float32).reshape(-1, 5)
                 for stem, p in files.items()}
        return records, Listing(boxes, list(index), {str(p): written.get(stem, []) for stem, p in files.items()})
    records, mask_of = list_pairs(root)
    from scipy import ndimage

    boxes, origins = {}, {}
    for r in records:
        regions, _ = ndimage.label(_binary_mask(mask_of[str(r.path)]), structure=np.ones((3, 3)))
        found_boxes = [[s[1].start, s[0].start, s[1].stop, s[0].stop, 0] for s in ndimage.find_objects(regions)]
        boxes[str(r.path)] = np.array(found_boxes, np.float32).reshape(-1, 5)
        origins[str(r.path)] = [f"region {n + 1} of mask '{mask_of[str(r.path)]}'" for n in range(len(found_boxes))]
    return records, Listing(boxes, list(classes or ["polyp"]), origins)


def _binary_mask(path: Path) -> np.ndarray:
    """A mask file's foreground (values above 127, or exactly 1), at its own size."""
    from PIL import Image

    from ..store.imageio import DECODE_ERRORS, _failure
    from .segfolder import mask_values

    try:
        with Image.open(path) as m:
            values = mask_values(m, path, 2)
    except DECODE_ERRORS as exc:
        raise KDError(f"mask {str(_failure(path, exc)).removeprefix('image file ')}") from None
    return (values > 127) | (values == 1)
