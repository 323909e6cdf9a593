"""PyTorch's OpInfo samples of F.conv2d, max_pool2d, avg_pool2d and batch_norm on every backend.

Every sample input (float32 and float64, with gradients) that torch accepts, cnnops accepts
and matches: outputs, indices, gradients, running stats, output memory format. Every error
input torch refuses, cnnops refuses with ValueError / TypeError raised in cnnops/_validate.py.
torch and native run all cases (native in child processes: a crash fails one case, not the
run); reference and the Triton interpreter a spread subset. The harness: torch_samples.py.
"""
import pytest

pytest.importorskip("expecttest", reason="torch.testing._internal needs expecttest "
                                         "(pip install expecttest)")

import torch_samples as ts  # noqa: E402


@pytest.fixture(scope="session")
def child_results(tmp_path_factory):
    return ts.ChildResults(ts.child_results_root(tmp_path_factory), "native")


@pytest.mark.parametrize("backend,kind,name,dtype,indices", ts.params(("sample", "error")))
def test_opinfo(request, child_results, backend, kind, name, dtype, indices):
    ts.check(request, child_results, backend, kind, name, dtype, indices)
