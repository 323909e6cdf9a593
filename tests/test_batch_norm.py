"""batch_norm on every backend against torch.nn.functional.batch_norm: output, running
statistics and gradients, training and eval."""
import pytest

from cnnops.tools.check import Case
from differential import check_case, params


def bn(name, shape, affine=True, stats=True, layout="contiguous", dtype="float64", **kw):
    kw = {"training": True, "momentum": 0.1, "eps": 1e-5, **kw}
    return Case("batch_norm", shape, kw, weight_shape=shape[1:2] if affine else None,
                bias=affine, running_stats=stats, layout=layout, dtype=dtype, name=name)


EDGES = [
    bn("2d-train", (5, 7)),
    bn("3d-train", (3, 4, 9)),
    bn("4d-train-channels-last", (2, 3, 5, 7), layout="channels_last"),
    bn("4d-eval", (2, 3, 5, 7), training=False),
    bn("no-affine-no-stats", (4, 3, 2, 2), affine=False, stats=False),
    bn("momentum-1", (3, 2, 4), momentum=1.0),
    bn("float32", (4, 6, 3, 3), dtype="float32"),
]


@pytest.mark.parametrize("backend,device,case", params("batch_norm", EDGES, seed=5))
def test_batch_norm_matches_torch(backend, device, case):
    check_case(backend, device, case)
