"""PyTorch's ModuleInfo samples of nn.Conv2d, MaxPool2d, AvgPool2d, BatchNorm1d and BatchNorm2d
run against cnnops.nn on every backend.

Each cnnops layer is built with torch's constructor arguments and loads the torch layer's
state dict; in training and eval mode, float32 and float64, outputs, gradients of the input
and parameters, and the state after the forward (running stats, num_batches_tracked) must
match. Every module error input torch refuses, cnnops refuses (ValueError / TypeError from
cnnops/_validate.py, or torch.nn's own constructor check). Native runs in child processes;
reference and the Triton interpreter a spread subset. The harness: torch_samples.py.
"""
import pytest

pytest.importorskip("expecttest", reason="torch.testing._internal needs expecttest "
                                         "(pip install expecttest)")

import torch_samples as ts  # noqa: E402


@pytest.fixture(scope="session")
def child_results(tmp_path_factory):
    return ts.ChildResults(ts.child_results_root(tmp_path_factory), "native")


@pytest.mark.parametrize("backend,kind,name,dtype,indices", ts.params(("module", "module_error")))
def test_moduleinfo(request, child_results, backend, kind, name, dtype, indices):
    ts.check(request, child_results, backend, kind, name, dtype, indices)
