"""Checks before training: every problem a data set can have that would crash a run
mid-epoch or silently poison it, found in one streaming pass.

Errors (unreadable or truncated image, label outside the class list, empty class,
identical images across splits unless ``data.on_duplicates: warn``) stop the run before
training with one line naming the file. Warnings (class imbalance, duplicates when
allowed) are printed and saved in the run folder as ``data_report.json``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..common.dims import dims as space
from ..errors import KDError
from ..store.imageio import array_digest, file_digest, read_image


@dataclass
class Problem:
    level: str  # "error" or "warning"
    message: str


class DataErrors(KDError):
    """The first of a data set's errors as the message; every problem found with it, for
    ``kdstyles data inspect`` to list when reading stopped before the checks were done."""

    def __init__(self, message: str, problems: list["Problem"]):
        super().__init__(message)
        self.problems = problems


@dataclass
class DataReport:
    class_names: list[str]
    counts: dict[str, list[int]] = field(default_factory=dict)  # split -> count per class
    sources: dict[str, int] = field(default_factory=dict)  # "WxH mode" (files) or "HxWxC" (arrays) -> count
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "warning"]

    def raise_errors(self) -> None:
        errs = self.errors
        if errs:
            more = f" (+{len(errs) - 1} more problems: run 'kdstyles data inspect')" if len(errs) > 1 else ""
            raise DataErrors(f"{errs[0].message}{more}", list(self.problems))

    def describe_sources(self, most: int = 8) -> str:
        """The source sizes and modes in one line: each with its count when there are at most
        ``most``, else the count, the range of each dimension, the modes and the commonest sizes
        (a folder of 10 000 photographs has as many sizes)."""
        if len(self.sources) <= most:
            return ", ".join(f"{k} ({v})" for k, v in sorted(self.sources.items()))
        modes: Counter = Counter()
        sizes: Counter = Counter()
        for key, n in self.sources.items():
            size, _, mode = key.partition(" ")
            modes[mode] += n
            sizes[size] += n
        dims = [[int(d) for d in size.split("x")] for size in sizes]
        ranges = "x".join(f"{min(col)}" if min(col) == max(col) else f"{min(col)}-{max(col)}"
                          for col in zip(*dims)) if len({len(d) for d in dims}) == 1 else "mixed dimensions"
        common = ", ".join(f"{k} ({v})" for k, v in sizes.most_common(3) if v > 1)
        kinds = f"; modes {', '.join(f'{m} ({v})' for m, v in modes.most_common())}" if "" not in modes else ""
        return f"{sum(sizes.values())} in {len(sizes)} sizes, {ranges}{kinds}" + (
            f"; most common {common}" if common else "")

    def to_dict(self) -> dict:
        return {"class_names": self.class_names, "counts": self.counts, "sources": self.sources,
                "problems": [asdict(p) for p in self.problems]}


def decode_files(paths: list[Path], channels: int, size: int, keep: bool, report: DataReport,
                 advance: Callable[[int], None] | None = None, threads: int = 4
                 ) -> tuple[np.ndarray | None, list[str | None]]:
    """Decode every file once (streaming): problems into ``report``; returns the decoded
    uint8 array when ``keep`` (else None) and each file's content digest (None if unreadable)."""
    images = np.zeros((len(paths), size, size, channels), np.uint8) if keep else None
    digests: list[str | None] = [None] * len(paths)
    sizes: Counter = Counter()

    def work(i: int):
        try:
            digest = file_digest(paths[i])
            arr, info = read_image(paths[i], channels, size)
            return i, arr, info, digest, None
        except KDError as exc:
            return i, None, None, None, str(exc)
        except OSError as exc:
            return i, None, None, None, f"image file '{paths[i]}' cannot be read ({exc.strerror})"

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for i, arr, info, digest, err in pool.map(work, range(len(paths)), chunksize=16):
            if err is not None:
                report.problems.append(Problem("error", err))
            else:
                digests[i] = digest
                sizes[f"{info[0]}x{info[1]} {info[2]}"] += 1
                if images is not None:
                    images[i] = arr
            if advance is not None:
                advance(1)
    for k, v in sizes.items():
        report.sources[k] = report.sources.get(k, 0) + v
    return images, digests


def check_multi_hot(split: str, labels: np.ndarray, num_classes: int, names: list[str], report: DataReport) -> None:
    """Multi-hot (N, K) rows of 0/1; counts per class (the images showing each class) into the report."""
    if labels.ndim != 2:
        report.problems.append(Problem("error", f"{split}: labels of shape {labels.shape} are not one row of "
                                                f"{num_classes} yes/no values per image"))
        return
    bad = np.flatnonzero((labels.shape[1] != num_classes) | ~np.isin(labels, (0, 1)).all(1))
    if len(bad):
        report.problems.append(Problem("error", f"{names[int(bad[0])]}: labels {labels[int(bad[0])].tolist()} are "
                                                f"not {num_classes} yes/no values ({len(bad)} such in {split})"))
    report.counts[split] = labels.sum(0).astype(int).tolist()


def check_class_labels(split: str, labels: np.ndarray, num_classes: int, names: list[str], report: DataReport
                       ) -> None:
    """Class indices inside 0..K-1; counts per class into the report."""
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        i = int(bad[0])
        report.problems.append(Problem("error", f"{names[i]}: label {int(labels[i])} is outside the class list "
                                                f"0..{num_classes - 1} ({len(bad)} such labels in {split})"))
        labels = labels[(labels >= 0) & (labels < num_classes)]
    report.counts[split] = np.bincount(labels, minlength=num_classes).tolist()


def check_boxes(split: str, boxes: list[np.ndarray], num_classes: int,
                size: Sequence[int] | list[Sequence[int]], names: list[str], report: DataReport,
                origins: list[list[str]] | None = None) -> None:
    """Every box finite, with x2 > x1, y2 > y1 (z2 > z1), a known class, and overlapping its
    image (``size``: width, height[, depth] of every image, or a list of one per image); the
    first bad box is an error naming the image and the box (and where it was written:
    ``origins``, per image a string per box, e.g. a CSV line). A box that crosses the image's
    border (annotation tools and 1-based coordinates overshoot by a pixel) is clipped to it in
    place, with one warning for all such boxes."""
    per_image = len(size) > 0 and isinstance(size[0], (tuple, list))
    bad, clipped = 0, []  # clipped: (image, boxes clipped in it, the largest overshoot, dimensions)
    for i, b in enumerate(boxes):
        if len(b) == 0:
            continue
        extent = np.asarray(size[i] if per_image else size, dtype=np.float64)
        d = len(extent)
        lo, hi, c = b[:, :d], b[:, d:2 * d], b[:, -1]
        finite = np.isfinite(b).all(1)
        empty = (hi <= lo).any(1)
        outside = (hi <= 0).any(1) | (lo >= extent).any(1)
        unknown = (c < 0) | (c >= num_classes)
        wrong = empty | outside | unknown | ~finite
        if wrong.any():
            if not bad:
                j = int(np.flatnonzero(wrong)[0])
                axes = "xyz"[:d]
                why = ("not a number" if not finite[j] else
                       "class outside 0..%d" % (num_classes - 1) if unknown[j] else
                       " or ".join(f"{a}2 <= {a}1" for a in axes) if empty[j] else
                       f"outside the {'x'.join(str(int(v)) for v in extent)} {'image' if d == 2 else 'volume'}")
                edges = ", ".join(f"{v:g}" for v in b[j, :2 * d])
                written = f"; {origins[i][j]}" if origins is not None and j < len(origins[i]) else ""
                first = (i, f"box ({edges}) class {c[j]:g}: {why}{written}")
            bad += int(wrong.sum())
            continue
        over = np.maximum(-lo, 0).max(1) + np.maximum(hi - extent, 0).max(1)
        if over.any():
            clipped.append((i, int((over > 0).sum()), float(over.max()), d))
            np.clip(lo, 0, extent, out=lo)
            np.clip(hi, 0, extent, out=hi)  # lo and hi are views of b
    if bad:
        i, text = first
        report.problems.append(Problem("error", f"{names[i]}: {text} ({bad} such boxes in {split})"))
    if clipped:
        first_image, _, _, d = clipped[0]
        report.problems.append(Problem(
            "warning", f"{sum(c[1] for c in clipped)} box(es) in {len(clipped)} {'image' if d == 2 else 'volume'}(s) "
                       f"crossed the border by up to {max(c[2] for c in clipped):.3g} "
                       f"{'pixel' if d == 2 else 'voxel'}(s) and were clipped to it (first: {names[first_image]})"))


def check_class_names(report: DataReport) -> None:
    """A warning for class names that differ only in case or spaces ('Effusion', 'effusion'):
    most likely one class spelled two ways, trained as two."""
    seen: dict[str, str] = {}
    for name in report.class_names:
        key = " ".join(name.lower().split())
        if key in seen:
            report.problems.append(Problem(
                "warning", f"classes '{seen[key]}' and '{name}' differ only in case or spaces and are trained as two "
                           "classes; if they are one, spell it one way in the labels"))
        seen.setdefault(key, name)


FEW_TO_MEASURE = 5  # images of a class in val or test below which its metrics are noise


def check_balance(report: DataReport, ratio: float, remedy: str, unit: str = "images") -> None:
    """Every class present in training (an error otherwise); a warning when a class has fewer
    than :data:`FEW_TO_MEASURE` images in val or test (its metrics are noise), and when the
    largest class outnumbers the smallest by more than ``ratio``, suggesting ``remedy`` (the
    task's)."""
    counts = report.counts.get("train")
    if not counts:
        return
    for k, n in enumerate(counts):
        if n == 0:
            report.problems.append(Problem("error", f"class '{report.class_names[k]}' has no training {unit}"))
    for split in ("val", "test"):
        held = report.counts.get(split)
        if held and 0 < min(held) < FEW_TO_MEASURE:
            k = int(np.argmin(held))
            report.problems.append(Problem(
                "warning", f"the {split} split is small: {sum(held)} {unit}, {held[k]} of class "
                           f"'{report.class_names[k]}'; each weighs {100 / sum(held):.2g}% in its metrics "
                           f"(more {unit}, or a larger data.{split}_fraction where kdstyles makes the split)"))
    present = [n for n in counts if n > 0]
    if present and max(present) / min(present) > ratio:
        big, small = int(np.argmax(counts)), min((n, k) for k, n in enumerate(counts) if n > 0)[1]
        report.problems.append(Problem(
            "warning", f"class imbalance: '{report.class_names[big]}' has {max(present)} training {unit}, "
                       f"'{report.class_names[small]}' {min(present)} (ratio > {ratio:g}); consider {remedy}"))


def check_duplicates(digests: dict[str, list[str | None]], names: dict[str, list[str]], on_duplicates: str,
                     report: DataReport) -> None:
    """Identical content in two different splits (leakage between training and evaluation)."""
    seen: dict[str, tuple[str, str]] = {}
    found = []
    for split, ds in digests.items():
        for d, name in zip(ds, names[split], strict=True):
            if d is None:
                continue
            if d in seen and seen[d][0] != split:
                found.append((seen[d][1], name))
            seen.setdefault(d, (split, name))
    if found:
        a, b = found[0]
        more = f" (+{len(found) - 1} more pairs)" if len(found) > 1 else ""
        hint = "; remove them or set data.on_duplicates: warn" if on_duplicates == "error" else ""
        report.problems.append(Problem("error" if on_duplicates == "error" else "warning",
                                       f"duplicate images across splits (leakage): {b} is identical to {a}"
                                       f"{more}{hint}"))


def memory_bytes() -> int | None:
    """Memory this machine has (physical; None where it cannot be asked)."""
    import os

    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(key: str, items: int, side: int, dims: int, channels: int, copies: int = 2) -> None:
    """Generated or decoded items are kept in memory (uint8, ``copies`` of them while they are
    prepared): a count that cannot fit is one line naming ``key``, before anything is made."""
    need = items * side ** dims * channels * copies
    have = memory_bytes()
    if have is not None and need > have // 2:
        raise KDError(f"{key}: {items:,} {space(dims).unit} of {side} px a side would take about "
                      f"{need / 2**30:,.1f} GiB in memory, and this machine has {have / 2**30:,.1f} GiB; use fewer "
                      f"(at most about {max(1, have // 2 // (side ** dims * channels * copies)):,})")


def digest_arrays(images: np.ndarray | list[np.ndarray]) -> list[str | None]:
    return [array_digest(img) for img in images]
