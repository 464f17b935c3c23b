"""Segmentation overlays: the image, its ground truth and every network's mask side by side."""

from __future__ import annotations

from pathlib import Path

import torch


def write_overlays(folder: Path, images: torch.Tensor, labels: torch.Tensor, probs: dict[str, torch.Tensor],
                   mean: list[float], std: list[float]) -> list[Path]:
    """One PNG per test image: the image, its ground truth, and every network's prediction
    (teacher, students, ensemble) side by side, each captioned with its Dice on that image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from ..fileio import atomic_write
    from ..metrics import per_image_scores

    folder.mkdir(parents=True, exist_ok=True)
    k = next(iter(probs.values())).shape[1]
    cmap = ListedColormap([(0, 0, 0, 0), (0.1, 0.9, 0.2, 0.55), (0.95, 0.2, 0.2, 0.55), (0.2, 0.4, 1, 0.55),
                           (1, 0.8, 0.1, 0.55), (0.8, 0.2, 0.9, 0.55)][:max(k, 2)])
    written = []
    for i in range(len(images)):
        img = images[i] * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
        img = img.clamp(0, 1).permute(1, 2, 0).numpy()
        panels = [("image", None), ("ground truth", labels[i])]
        panels += [(name, p[i].argmax(0)) for name, p in probs.items()]
        fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.5))
        for ax, (title, mask) in zip(axes, panels):
            ax.imshow(img.squeeze(), cmap="gray" if img.shape[-1] == 1 else None)
            if mask is not None:
                ax.imshow(mask.numpy(), cmap=cmap, vmin=0, vmax=max(k, 2) - 1, interpolation="nearest")
            if title not in ("image", "ground truth"):
                dice, _ = per_image_scores(mask[None], labels[i][None], k)
                title = f"{title}\nDice {float(dice[0]):.3f}"
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        path = folder / f"test-{i:03d}.png"
        atomic_write(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=80, bbox_inches="tight"))
        plt.close(fig)
        written.append(path)
    return written
