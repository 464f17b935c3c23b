"""What differs between images (2D) and volumes (3D), in one place: the words, the sample
tensors, the tensor layout and memory format, the names of the spatial axes, and the axes
augmentation turns about. Everything else asks :func:`dims` (as MONAI asks
``Conv[Conv.CONV, spatial_dims]``) instead of testing ``spatial_dims`` itself."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ..errors import KDError


@dataclass(frozen=True)
class Dims:
    n: int  # spatial dimensions: 2 (images) or 3 (volumes)

    @property
    def volumes(self) -> bool:
        return self.n == 3

    @property
    def item(self) -> str:
        """One input in words: image or volume."""
        return "volume" if self.volumes else "image"

    @property
    def unit(self) -> str:
        """Inputs in words: images or volumes."""
        return self.item + "s"

    @property
    def short(self) -> str:
        """The unit of a rate (img/s, vol/s)."""
        return "vol" if self.volumes else "img"

    @property
    def axes(self) -> list[str]:
        """The spatial axes' names, as exported models declare them."""
        return ["depth", "height", "width"] if self.volumes else ["height", "width"]

    @property
    def layout(self) -> str:
        return "NCDHW" if self.volumes else "NCHW"

    def shape(self, batch: int, channels: int, size: int) -> tuple[int, ...]:
        """A batch of square images or cubic volumes of side ``size``."""
        return (batch, channels, *(size,) * self.n)

    def sample(self, batch: int, channels: int, size: int, random: bool = False, generator=None):
        """A batch of zeros (or uniform random values) of :meth:`shape` (shapes, probes, latency)."""
        import torch

        shape = self.shape(batch, channels, size)
        return torch.rand(*shape, generator=generator) if random else torch.zeros(shape)

    @property
    def channels_last(self):
        """The channels-last memory format of this many dimensions."""
        import torch

        return torch.channels_last_3d if self.volumes else torch.channels_last

    @property
    def conv(self) -> type:
        """The convolution layer of this many dimensions (MONAI's factory)."""
        from monai.networks.layers.factories import Conv

        return Conv[Conv.CONV, self.n]

    @property
    def batch_norm(self) -> type:
        """The batch normalisation layer of this many dimensions (MONAI's factory)."""
        from monai.networks.layers.factories import Norm

        return Norm[Norm.BATCH, self.n]

    @property
    def quarter_turn_axes(self) -> tuple[int, int]:
        """The (channel-less) axes a quarter turn rotates: the image plane, or a volume's slices."""
        return (1, 2) if self.volumes else (0, 1)

    @property
    def rotation_angles(self) -> int:
        """Angles a random rotation draws: one in 2D, one about each axis in 3D."""
        return 3 if self.volumes else 1

    @property
    def shear_terms(self) -> int:
        """Off-diagonal terms of a random shear."""
        return self.n * self.n - self.n


@lru_cache(maxsize=None)
def dims(n: int) -> Dims:
    """The 2D or 3D helper for ``n`` spatial dimensions (``data.spatial_dims``)."""
    if n not in (2, 3):
        raise KDError(f"spatial_dims: {n} is not 2 (images) or 3 (volumes)")
    return Dims(n)
