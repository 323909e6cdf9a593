"""max_pool2d on every backend against torch.nn.functional.max_pool2d (values, indices, grads)."""
import pytest

from cnnops.tools.check import Case
from differential import check_case, params

EDGES = [
    Case("max_pool2d", (1, 1, 7, 11), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
         name="ceil-mode-prime"),
    Case("max_pool2d", (2, 3, 10, 9), dict(kernel_size=2, stride=3), name="stride>kernel"),
    Case("max_pool2d", (3, 9, 8), dict(kernel_size=(3, 2), dilation=(2, 3), padding=(1, 1)),
         name="unbatched-dilated"),
    Case("max_pool2d", (2, 4, 9, 9), dict(kernel_size=3, stride=2), nan=True, name="nan"),
    Case("max_pool2d", (2, 5, 8, 8), dict(kernel_size=2), layout="channels_last",
         name="channels-last"),
    Case("max_pool2d", (2, 3, 8, 12), dict(kernel_size=3, stride=1, padding=1), layout="strided",
         name="strided-view"),
    Case("max_pool2d", (2, 3, 5, 5), dict(kernel_size=5), dtype="float32", name="global"),
    Case("max_pool2d", (2, 2, 6, 6), dict(kernel_size=2, stride=2, ceil_mode=True, padding=1),
         name="ceil-mode-last-window-dropped"),
]


@pytest.mark.parametrize("backend,device,case", params("max_pool2d", EDGES, seed=3))
def test_max_pool2d_matches_torch(backend, device, case):
    check_case(backend, device, case)
