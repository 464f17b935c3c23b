"""Segmentation folders as in Kvasir-SEG / CVC-ClinicDB: ``root/images/`` and
``root/masks/`` (or the names of :data:`IMAGE_DIRS`, :data:`MASK_DIRS`), matched by file
stem (or stem plus one of :data:`MASK_SUFFIXES`), directly in ``root`` or in each of its
split folders; optional ``root/{train,val,test}.txt`` list the stems of each split
(missing splits are made as for classification).

Masks: palette PNGs give their palette indices; other modes are read as grayscale, except
colour masks (channels that differ), whose brightest channel counts with 2 classes (a red
outline is foreground) and which are refused with more. With ``data.num_classes: 2`` a mask
is binary: values above 127 (0/255 masks, JPEG noise included) or exactly 1 are
foreground. With more classes, values must be 0..K-1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import KDError
from ..store.imageio import DECODE_ERRORS, IMAGE_SUFFIXES, _failure, is_image, visible_dirs
from .files import Record, split_folders, split_of


# What data sets call the two folders (Kvasir-SEG: images/ masks/; CVC-ClinicDB: Original/
# "Ground Truth"/), any case; and what they add to an image's name for its mask (ISIC:
# _segmentation, BUSI: _mask, GlaS: _anno).
IMAGE_DIRS = ("images", "image", "imgs", "original")
MASK_DIRS = ("masks", "mask", "ground truth", "groundtruth", "gt")
MASK_SUFFIXES = ("_mask", "_segmentation", "_seg", "_gt", "_anno", "_label")


def pair_dirs(root: Path, masks: bool = True) -> tuple[Path, Path]:
    """``root``'s image folder and mask folder, by the names above; a missing one is an error
    (``masks=False``: the image folder only is needed, the mask folder may be missing)."""
    if not root.is_dir():
        raise KDError(f"data.root: folder '{root}' does not exist")
    children = {d.name.lower(): d for d in visible_dirs(root)}
    found = [next((children[n] for n in names if n in children), None) for names in (IMAGE_DIRS, MASK_DIRS)]
    for d, names, what in zip(found, (IMAGE_DIRS, MASK_DIRS), ("images", "masks")):
        if d is None and (masks or what == "images"):
            raise KDError(f"data.root: '{root}' has no {what} folder ({', '.join(n + '/' for n in names)}, any case); "
                          "a segmentation or detection folder holds images/ and masks/")
    return found[0], found[1] if found[1] is not None else root / "masks"


def list_pairs(root: Path) -> tuple[list[Record], dict[str, Path]]:
    """Records (image path, label placeholder, split) and each image's mask path: the mask of
    the same name, or of the name with one of :data:`MASK_SUFFIXES`; images/ and masks/ in
    ``root``, or in each of its split folders (``train/images``, ``Testing/masks``, ...)."""
    records, mask_of = [], {}
    for base, split in split_folders(root):
        images_dir, masks_dir = pair_dirs(base)
        masks = {p.stem: p for p in masks_dir.iterdir() if is_image(p)}
        images = sorted(p for p in images_dir.iterdir() if is_image(p))
        if not images:
            raise KDError(f"data.root: '{images_dir}' holds no images ({', '.join(IMAGE_SUFFIXES)})")
        for img in images:
            mask = next((masks[n] for n in (img.stem, *(img.stem + s for s in MASK_SUFFIXES)) if n in masks), None)
            if mask is None:
                raise KDError(f"image '{img}' has no mask in '{masks_dir}' (matched by file name without extension, "
                              f"or with {', '.join(MASK_SUFFIXES)} added: {img.stem}_mask.png)")
            mask_of[str(img)] = mask
            records.append(Record(img, "", split))
    listed = _listed_splits(root)
    for r in records:
        r.split = r.split or listed.get(r.path.stem)
    return records, mask_of


def _listed_splits(root: Path) -> dict[str, str]:
    """The splits that ``root/train.txt``, ``val.txt``, ``test.txt`` (or ``validation.txt``
    and the other split names) give image names."""
    splits: dict[str, str] = {}
    for listing in sorted(root.glob("*.txt")):
        split = split_of(listing.stem)
        if split is not None and listing.is_file():
            for stem in listing.read_text(encoding="utf-8", errors="surrogateescape").split():
                splits[Path(stem).stem] = split
    return splits


def mask_values(m: Image.Image, path: Path, num_classes: int) -> np.ndarray:
    """A mask's values: palette indices, gray levels, or for a colour mask (its channels
    differ) with two classes any colour as foreground (a red outline on black is not dark
    gray); a colour mask of several classes is an error, since colours are not indices."""
    if m.mode == "P":
        return np.array(m)
    if m.mode not in ("RGB", "RGBA", "CMYK", "YCbCr"):
        return np.array(m.convert("L"))
    rgb = np.array(m.convert("RGB"))
    if (rgb == rgb[..., :1]).all():
        return rgb[..., 0]
    if num_classes == 2:
        return rgb.max(-1)
    colours = len(np.unique(rgb.reshape(-1, 3), axis=0))
    raise KDError(f"mask '{path}' is a colour image ({colours} colours); with data.num_classes {num_classes} a mask "
                  f"holds class indices 0..{num_classes - 1} (grayscale or palette PNG): map each colour to its index")


def read_mask(path: Path, num_classes: int, size: int, image_size_wh: tuple[int, int] | None) -> np.ndarray:
    """A mask as uint8 class indices at ``size`` (nearest); errors name the file."""
    try:
        with Image.open(path) as m:
            m.load()
            if image_size_wh is not None and m.size != image_size_wh:
                turned = m.size == image_size_wh[::-1]  # e.g. a photo whose EXIF tag says "rotate 90"
                raise KDError(f"mask '{path}' is {m.size[0]}x{m.size[1]} but its image is "
                              f"{image_size_wh[0]}x{image_size_wh[1]}" + (
                                  "; the sizes are transposed: an EXIF orientation tag (which viewers apply and "
                                  "kdstyles does not) may turn one of them; save the image with the rotation "
                                  "applied" if turned else ""))
            values = mask_values(m, path, num_classes)
    except DECODE_ERRORS as exc:
        raise KDError(f"mask {str(_failure(path, exc)).removeprefix('image file ')}") from None
    if num_classes == 2:
        values = ((values > 127) | (values == 1)).astype(np.uint8)
    elif values.max() >= num_classes:
        raise KDError(f"mask '{path}' has value {int(values.max())}, outside 0..{num_classes - 1} (data.num_classes)")
    if values.shape != (size, size):
        values = np.array(Image.fromarray(values.astype(np.uint8)).resize((size, size), Image.Resampling.NEAREST))
    return values.astype(np.uint8)
