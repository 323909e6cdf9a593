"""conv2d on every backend against torch.nn.functional.conv2d, forward and backward."""
import pytest

from cnnops.tools.check import Case
from differential import check_case, params

EDGES = [
    Case("conv2d", (1, 1, 7, 11), dict(padding=1), weight_shape=(3, 1, 3, 3), bias=True,
         name="c_in1-batch1-prime"),
    Case("conv2d", (2, 3, 13, 9), dict(stride=(4, 3)), weight_shape=(5, 3, 2, 2), name="stride>kernel"),
    Case("conv2d", (3, 7, 7), dict(padding=2, dilation=2), weight_shape=(2, 3, 3, 3), bias=True,
         name="unbatched-dilated"),
    Case("conv2d", (2, 6, 9, 8), dict(groups=6, padding=1), weight_shape=(6, 1, 3, 3), bias=True,
         name="depthwise"),
    Case("conv2d", (2, 4, 8, 7), dict(groups=2, padding="same", dilation=(1, 2)),
         weight_shape=(6, 2, 4, 2), name="same-even-kernel"),
    Case("conv2d", (2, 3, 6, 6), dict(padding="valid"), weight_shape=(4, 3, 6, 6), bias=True,
         name="kernel=input"),
    Case("conv2d", (2, 5, 9, 9), dict(stride=2, padding=1, activation="relu"),
         weight_shape=(7, 5, 3, 3), bias=True, layout="channels_last", name="relu-channels-last"),
    Case("conv2d", (2, 3, 10, 10), dict(padding=(0, 2)), weight_shape=(4, 3, 1, 5), bias=True,
         layout="strided", name="strided-view"),
    Case("conv2d", (2, 3, 8, 8), dict(padding=1), weight_shape=(4, 3, 3, 3), bias=True,
         dtype="float32", name="float32"),
]


@pytest.mark.parametrize("backend,device,case", params("conv2d", EDGES, seed=2))
def test_conv2d_matches_torch(backend, device, case):
    check_case(backend, device, case)
