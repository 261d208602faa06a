"""RPL's Gaussian blur against a direct numpy convolution with reflect padding."""
import numpy as np
import pytest
import torch

from oodseg.errors import OodsegError
from oodseg.scores.postprocess import check_smooth, gaussian_blur

from numpy_references import numpy_gaussian_blur


@pytest.mark.parametrize("size,sigma,shape", [(7, 1.0, (2, 9, 13)), (5, 2.5, (1, 6, 4)), (3, 0.5, (1, 2, 5))])
def test_gaussian_blur_equals_a_direct_numpy_convolution(rng, size, sigma, shape):
    maps = rng.normal(size=shape).astype(np.float32) * 3
    got = gaussian_blur(torch.from_numpy(maps), size, sigma).numpy()
    assert got.shape == maps.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, numpy_gaussian_blur(maps, size, sigma), atol=2e-6)


def test_gaussian_blur_keeps_a_constant_map_and_refuses_bad_input():
    constant = torch.full((1, 8, 8), 2.5)
    assert torch.allclose(gaussian_blur(constant), constant)
    with pytest.raises(OodsegError, match="larger than 3 px"):
        gaussian_blur(torch.zeros(1, 3, 20))
    with pytest.raises(OodsegError, match="odd integer"):
        gaussian_blur(torch.zeros(1, 8, 8), kernel_size=6)
    with pytest.raises(OodsegError, match="sigma"):
        check_smooth({"kernel_size": 7, "sigma": 0})
    with pytest.raises(OodsegError, match="expected"):
        check_smooth({"size": 7})
