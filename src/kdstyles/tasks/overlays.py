"""Overlays: the image, its ground truth and every network's mask (segmentation) or boxes
(detection) side by side."""

from __future__ import annotations

from pathlib import Path

import torch


def _write_figures(folder: Path, count: int, mean: list[float], std: list[float], rows) -> list[Path]:
    """One PNG per item (image or volume): ``rows(i)`` gives item i's rows, each a (C, H, W)
    image and its ``(title, draw)`` panels, every panel the de-normalised image with something
    drawn on it; ``draw(ax)`` draws (or is None) and returns the caption's second line (or None)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..store.fileio import atomic_write

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(count):
        grid = rows(i)
        width = max(len(panels) for _, panels in grid)
        fig, axes = plt.subplots(len(grid), width, figsize=(2.2 * width, 2.5 * len(grid)), squeeze=False)
        for (image, panels), line in zip(grid, axes):
            img = image * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
            img = img.clamp(0, 1).permute(1, 2, 0).numpy()
            if img.shape[-1] != 3:  # grey; of a multi-channel volume (MRI sequences), the first channel
                img = img[..., :1]
            for ax, (title, draw) in zip(line, panels):
                ax.imshow(img.squeeze(), cmap="gray" if img.shape[-1] == 1 else None)
                caption = draw(ax) if draw is not None else None
                ax.set_title(f"{title}\n{caption}" if caption else title, fontsize=8)
            for ax in line:
                ax.axis("off")
        path = folder / f"test-{i:03d}.png"
        atomic_write(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=80, bbox_inches="tight"))
        plt.close(fig)
        written.append(path)
    return written


def _write_rows(folder: Path, images: torch.Tensor, mean: list[float], std: list[float], panels) -> list[Path]:
    """One PNG per image: a row of panels (``panels(i)``, see :func:`_write_figures`)."""
    return _write_figures(folder, len(images), mean, std, lambda i: [(images[i], panels(i))])


def _mask_panels(k: int):
    """``panel(mask, truth)``: a panel drawing a class mask over its image, captioned with its
    Dice against ``truth`` (none for the ground truth itself)."""
    from matplotlib.colors import ListedColormap

    from ..common.metrics import per_image_scores

    cmap = ListedColormap([(0, 0, 0, 0), (0.1, 0.9, 0.2, 0.55), (0.95, 0.2, 0.2, 0.55), (0.2, 0.4, 1, 0.55),
                           (1, 0.8, 0.1, 0.55), (0.8, 0.2, 0.9, 0.55)][:max(k, 2)])

    def mask_panel(mask, truth):
        def draw(ax):
            ax.imshow(mask.numpy(), cmap=cmap, vmin=0, vmax=max(k, 2) - 1, interpolation="nearest")
            if truth is not None:
                dice, _ = per_image_scores(mask[None], truth[None], k)
                return f"Dice {float(dice[0]):.3f}"
        return draw

    return mask_panel


def write_overlays(folder: Path, images: torch.Tensor, labels: torch.Tensor, probs: dict[str, torch.Tensor],
                   mean: list[float], std: list[float]) -> list[Path]:
    """One PNG per test image: the image, its ground truth, and every network's prediction
    (teacher, students, ensemble) side by side, each captioned with its Dice on that image."""
    mask_panel = _mask_panels(next(iter(probs.values())).shape[1])
    return _write_rows(folder, images, mean, std, lambda i: [
        ("image", None), ("ground truth", mask_panel(labels[i], None)),
        *((name, mask_panel(p[i].argmax(0), labels[i])) for name, p in probs.items())])


def write_volume_overlays(folder: Path, volumes, labels, probs: dict[str, list], mean: list[float],
                          std: list[float]) -> list[Path]:
    """One PNG per test volume, one row per axis: the slice through the centre of the ground
    truth's foreground (the middle slice when there is none), its ground truth and every
    network's prediction, captioned with their Dice on that slice. Volumes may differ in shape."""
    mask_panel = _mask_panels(next(iter(probs.values()))[0].shape[0])

    def rows(i):
        truth = labels[i]
        where = truth.nonzero().float().mean(0).round().long().tolist() if truth.any() else \
            [s // 2 for s in truth.shape]
        out = []
        for axis, name in enumerate(("axis 0", "axis 1", "axis 2")):
            cut = lambda t, lead=0: t.select(axis + lead, where[axis])  # noqa: E731
            gt = cut(truth)
            out.append((cut(volumes[i], 1), [
                (f"image ({name} {where[axis]})", None), ("ground truth", mask_panel(gt, None)),
                *((n, mask_panel(cut(p[i].argmax(0)), gt)) for n, p in probs.items())]))
        return out

    return _write_figures(folder, len(volumes), mean, std, rows)


def _box_panels(labels, dets: dict, min_score: float):
    """``panel(boxes, truth, colour, axes, keep)``: a panel drawing the boxes that ``keep`` (a
    row mask, or None for all) picks, along coordinates ``axes`` (horizontal, vertical; 0 is x),
    detections (``truth`` given) scoring at least ``min_score`` with their score (none does:
    the best one, dashed), captioned with their AP@0.5 against ``truth`` over the whole image
    or volume."""
    from matplotlib.patches import Rectangle

    from ..common.boxes import detection_metrics

    k = int(max([float(labels[..., -1].max()), *(float(d[..., -1].max()) for d in dets.values())] + [0])) + 1

    def box_panel(boxes, truth, colour, axes=(0, 1), keep=None):
        d = (boxes.shape[1] - (1 if truth is None else 2)) // 2
        h, v = axes

        def draw(ax):
            shown = boxes if keep is None else boxes[keep(boxes)]
            style = "solid"
            if truth is not None:
                confident = shown[shown[:, -2] >= min_score]
                shown, style = (confident, style) if len(confident) or not len(shown) else \
                    (shown[shown[:, -2].argmax()][None], "dashed")
            for b in shown:
                ax.add_patch(Rectangle((b[h] - 0.5, b[v] - 0.5), b[h + d] - b[h], b[v + d] - b[v], fill=False,
                                       edgecolor=colour, linewidth=1.2, linestyle=style))
                if truth is not None:
                    ax.text(b[h], b[v] - 1, f"{b[-2]:.2f}", color=colour, fontsize=6)
            if truth is not None:
                return f"AP50 {detection_metrics([boxes], [truth], k)['ap50']:.3f}" if len(truth) else "(no object)"
        return draw

    return box_panel


def write_box_overlays(folder: Path, images: torch.Tensor, labels: torch.Tensor, dets: dict[str, torch.Tensor],
                       mean: list[float], std: list[float], min_score: float = 0.3) -> list[Path]:
    """One PNG per test image: ground-truth boxes (green), then each network's boxes scoring at
    least ``min_score`` (red, with the score; none does: its best, dashed), captioned with its
    AP@0.5 on that image."""
    from ..common.boxes import unpad

    box_panel = _box_panels(labels, dets, min_score)

    def panels(i):
        gt = unpad(labels[i].numpy())
        return [("ground truth", box_panel(gt, None, "lime")),
                *((name, box_panel(unpad(d[i].numpy()), gt, "red")) for name, d in dets.items())]

    return _write_rows(folder, images, mean, std, panels)


def write_volume_box_overlays(folder: Path, volumes, labels: torch.Tensor, dets: dict[str, torch.Tensor],
                              mean: list[float], std: list[float], min_score: float = 0.3) -> list[Path]:
    """One PNG per test volume, one row per axis: the slice through the centre of the largest
    ground-truth box (the middle slice when there is none) with the boxes that cross it, drawn
    as in :func:`write_box_overlays`; captions give each network's AP@0.5 on the whole volume.
    Volumes may differ in shape."""
    from ..common.boxes import unpad

    box_panel = _box_panels(labels, dets, min_score)

    def rows(i):
        gt = unpad(labels[i].numpy())
        found = {name: unpad(d[i].numpy()) for name, d in dets.items()}
        shape = volumes[i].shape[1:]
        if len(gt):
            big = gt[(gt[:, 3:6] - gt[:, :3]).prod(1).argmax()]
            where = [min(int((big[2 - a] + big[5 - a]) / 2), shape[a] - 1) for a in range(3)]  # z, y, x
        else:
            where = [s // 2 for s in shape]
        out = []
        for axis, name in enumerate(("axis 0", "axis 1", "axis 2")):
            c = 2 - axis  # the box coordinate along this array axis (x runs along the last)
            keep = lambda b, c=c, s=where[axis]: (b[:, c] < s + 0.5) & (b[:, c + 3] > s + 0.5)  # noqa: E731
            shown = tuple(2 - a for a in range(3) if a != axis)[::-1]  # (horizontal, vertical) coordinates
            out.append((volumes[i].select(axis + 1, where[axis]), [
                (f"ground truth ({name} {where[axis]})", box_panel(gt, None, "lime", shown, keep)),
                *((n, box_panel(b, gt, "red", shown, keep)) for n, b in found.items())]))
        return out

    return _write_figures(folder, len(volumes), mean, std, rows)
