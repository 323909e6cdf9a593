"""avg_pool2d on every backend against torch.nn.functional.avg_pool2d, forward and backward."""
import pytest

from cnnops.tools.check import Case
from differential import check_case, params


def avg(name, shape, layout="contiguous", dtype="float64", **kw):
    return Case("avg_pool2d", shape, kw, layout=layout, dtype=dtype, name=name)


EDGES = [
    avg("ceil-include-pad", (1, 1, 7, 11), kernel_size=3, stride=2, padding=1, ceil_mode=True),
    avg("ceil-exclude-pad", (2, 3, 7, 11), kernel_size=3, stride=2, padding=1, ceil_mode=True,
        count_include_pad=False),
    avg("divisor-override", (2, 3, 9, 9), kernel_size=3, padding=1, divisor_override=5),
    avg("stride>kernel", (2, 3, 11, 10), kernel_size=2, stride=3),
    avg("unbatched", (3, 9, 8), kernel_size=(3, 2), padding=(1, 1)),
    avg("channels-last", (2, 5, 8, 8), layout="channels_last", kernel_size=2),
    avg("strided-view", (2, 3, 8, 12), layout="strided", kernel_size=3, stride=1, padding=1),
    avg("global-float32", (2, 3, 5, 5), dtype="float32", kernel_size=5),
    avg("ceil-window-over-pad", (2, 2, 6, 6), kernel_size=3, stride=2, padding=1, ceil_mode=True,
        count_include_pad=True),
]


@pytest.mark.parametrize("backend,device,case", params("avg_pool2d", EDGES, seed=4))
def test_avg_pool2d_matches_torch(backend, device, case):
    check_case(backend, device, case)
