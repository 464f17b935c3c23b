"""kdstyles.common.dims: what differs between images and volumes, in one place."""

import pytest
import torch

from kdstyles.common.dims import dims
from kdstyles.errors import KDError


def test_images_and_volumes():
    two, three = dims(2), dims(3)
    assert (two.unit, two.item, two.short, two.layout, two.axes) == ("images", "image", "img", "NCHW",
                                                                        ["height", "width"])
    assert (three.unit, three.short, three.layout, three.axes) == ("volumes", "vol", "NCDHW",
                                                                    ["depth", "height", "width"])
    assert two.sample(2, 3, 8).shape == (2, 3, 8, 8) and three.sample(1, 1, 4).shape == (1, 1, 4, 4, 4)
    assert three.sample(1, 1, 4).abs().sum() == 0 and three.sample(1, 1, 4, random=True).abs().sum() > 0
    assert two.channels_last == torch.channels_last and three.channels_last == torch.channels_last_3d
    # MONAI's RandAffine: one angle and two shear terms in 2D, three and six in 3D
    assert (two.rotation_angles, two.shear_terms, three.rotation_angles, three.shear_terms) == (1, 2, 3, 6)
    assert dims(3) is three  # one helper per dimension count


def test_other_dimension_counts_are_one_line():
    with pytest.raises(KDError, match="spatial_dims: 4 is not 2"):
        dims(4)
