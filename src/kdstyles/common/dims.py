"""What differs between images (2D) and volumes (3D), in one place: the words, the sample
tensors, the tensor layout and memory format, the names of the spatial axes, the axes
augmentation turns about, the layers and resampling of maps, the files inputs come in and the
input a file source defaults to. Everything else asks :func:`dims` (as MONAI asks
``Conv[Conv.CONV, spatial_dims]``) instead of testing ``spatial_dims`` itself; what exists for
one kind only (a task's embedded generator, an arch that builds in 3D) is looked up by the
number of dimensions (``task.synthetic[n]``, ``n in arch.spatial_dims``)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import KDError

DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", *DICOM_SUFFIXES)
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd")  # volume files (read by kdstyles.data.volumes, with MONAI)


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
    def kind(self) -> str:
        """What a model of this kind takes, in words: 2D images or volumes."""
        return "volumes" if self.volumes else "2D images"

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
    def resized_on_read(self) -> bool:
        """Whether inputs are resized to the network's input as they are read (images; volumes are
        resampled by their preparation and may stay whole, slid over by windows)."""
        return not self.volumes

    @property
    def mask_unit(self) -> str | None:
        """What a mask's classes are measured in from the input's voxel size: millilitres for
        volumes (their files carry a spacing in mm), nothing for images."""
        return "ml" if self.volumes else None

    @property
    def mask_suffix(self) -> str:
        """The file a predicted mask is written as: PNG for images, NIfTI for volumes."""
        return ".nii.gz" if self.volumes else ".png"

    @property
    def adaptive_avg_pool(self):
        """Adaptive average pooling of this many dimensions (torch's function)."""
        import torch.nn.functional as F

        return F.adaptive_avg_pool3d if self.volumes else F.adaptive_avg_pool2d

    @property
    def interpolation(self) -> str:
        """The linear interpolation mode that resizes a map: bilinear or trilinear."""
        return "trilinear" if self.volumes else "bilinear"

    @property
    def suffixes(self) -> tuple[str, ...]:
        """The files inputs come in: image files (PNG, JPEG, TIFF, DICOM, ...) or NIfTI/NRRD volumes."""
        return VOLUME_SUFFIXES if self.volumes else IMAGE_SUFFIXES

    def takes(self, path: Path) -> bool:
        """Whether a file is an input of this kind, by name; hidden files (macOS's ``._`` shadows
        of copied files, which are not images) excluded."""
        name = path.name.lower()
        if self.volumes:
            return name.endswith(VOLUME_SUFFIXES) and not path.name.startswith("._")
        return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")

    @property
    def file_side(self) -> int:
        """The network input's side a file source defaults to: 224 px images, 64-voxel volumes."""
        return 64 if self.volumes else 224

    @property
    def file_channels(self) -> int:
        """The channels a file source defaults to: RGB images, one-channel volumes (a channel per
        modality where they are named)."""
        return 1 if self.volumes else 3

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


def of_axes(record: dict) -> Dims:
    """The kind an input record names axes for (an exported model's sidecar ``input``: height and
    width, with depth for volumes)."""
    return dims(sum(axis in record for axis in ("depth", "height", "width")))


@lru_cache(maxsize=None)
def dims(n: int) -> Dims:
    """The 2D or 3D helper for ``n`` spatial dimensions (``data.spatial_dims``)."""
    if n not in (2, 3):
        raise KDError(f"spatial_dims: {n} is not 2 (images) or 3 (volumes)")
    return Dims(n)
