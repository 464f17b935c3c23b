"""What a network takes, decided once: channels, side, 2D or 3D, and the normalisation. The
data code resolves it from the config and the source (``kdstyles.data.sources.resolve_input``
and the fitted mean/std); run.json records it; the cohort, ``check``, ``export`` (its sample
and the sidecar's ``input``), the measurements and ``predict`` (from run.json or the
sidecar) read it from there instead of deriving sizes again. Like timm's
``resolve_data_config``: one resolution, every reader asks it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .dims import Dims, dims
from ..errors import KDError


@dataclass(frozen=True)
class Inputs:
    channels: int
    side: int  # the side of the square image / cubic volume a network takes (the patch, when trained on patches)
    spatial_dims: int = 2
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    @property
    def space(self) -> Dims:
        return dims(self.spatial_dims)

    def sample(self, batch: int, random: bool = False, generator=None):
        """A batch of this input: zeros, or uniform values in [0, 1)."""
        return self.space.sample(batch, self.channels, self.side, random=random, generator=generator)

    def record(self) -> dict[str, Any]:
        """The keys run.json keeps (as it always has)."""
        return {"image_size": self.side, "channels": self.channels, "spatial_dims": self.spatial_dims,
                "normalize": {"mean": list(self.mean), "std": list(self.std)}}

    @classmethod
    def from_record(cls, info: dict[str, Any], where: Any = "run.json", spatial_dims: int = 2) -> "Inputs":
        """Read back from run.json (``spatial_dims``: the config's, for a folder written before
        run.json recorded it)."""
        try:
            norm = info.normalize
            return cls(int(info.channels), int(info.image_size), int(info.spatial_dims or spatial_dims),
                       tuple(map(float, norm["mean"])), tuple(map(float, norm["std"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise KDError(f"'{where}' is damaged (the input: channels, image_size, normalize.mean/std; "
                          f"{exc!r}); restore it, or train again in a new folder") from None

    def sidecar(self) -> dict[str, Any]:
        """The ``input`` an exported model's sidecar declares (what ``predict`` reads)."""
        return {"name": "image", "layout": self.space.layout, "dtype": "float32", "range": [0.0, 1.0],
                "channels": self.channels, **{axis: self.side for axis in self.space.axes}}
