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

    from ..fileio import atomic_write

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

    from ..metrics import per_image_scores

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


def write_box_overlays(folder: Path, images: torch.Tensor, labels: torch.Tensor, dets: dict[str, torch.Tensor],
                       mean: list[float], std: list[float], min_score: float = 0.3) -> list[Path]:
    """One PNG per test image: ground-truth boxes (green), then each network's boxes scoring at
    least ``min_score`` (red, with the score), captioned with its AP@0.5 on that image."""
    from matplotlib.patches import Rectangle

    from ..boxes import detection_metrics, unpad

    k = int(max([float(labels[..., 4].max()), *(float(d[..., 5].max()) for d in dets.values())] + [0])) + 1

    def box_panel(boxes, truth, colour):
        def draw(ax):
            shown = boxes if truth is None else boxes[boxes[:, 4] >= min_score]
            for b in shown:
                ax.add_patch(Rectangle((b[0] - 0.5, b[1] - 0.5), b[2] - b[0], b[3] - b[1], fill=False,
                                       edgecolor=colour, linewidth=1.2))
                if truth is not None:
                    ax.text(b[0], b[1] - 1, f"{b[4]:.2f}", color=colour, fontsize=6)
            if truth is not None:
                return f"AP50 {detection_metrics([boxes], [truth], k)['ap50']:.3f}" if len(truth) else "(no object)"
        return draw

    def panels(i):
        gt = unpad(labels[i].numpy())
        return [("ground truth", box_panel(gt, None, "lime")),
                *((name, box_panel(unpad(d[i].numpy()), gt, "red")) for name, d in dets.items())]

    return _write_rows(folder, images, mean, std, panels)
