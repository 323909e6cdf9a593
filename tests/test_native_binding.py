"""The native binding's contract (kernels/binding, cnnops/backends/native.py).

- the op names are the ones every backend uses (issue 11), and the old ones are gone;
- the ops take their output size from the caller: torch.compile with dynamic shapes passes
  symbolic sizes (SymInt[2] output_size) through the fakes, for every op in one graph;
- the C++ refuses only what would put its raw pointers out of bounds, worded as an internal
  error (user errors are cnnops/_validate.py's ValueError / TypeError);
- the kernels' tree computes no output size and includes no torch header.
"""
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import cnnops

from backend_support import native_only

pytestmark = native_only

KERNELS = Path(__file__).resolve().parent.parent / "kernels"
OPS = ("conv2d", "conv2d_grad_input", "conv2d_grad_weight", "conv2d_grad_bias", "max_pool2d",
       "max_pool2d_grad_input", "avg_pool2d", "avg_pool2d_grad_input", "batch_norm",
       "batch_norm_grad")


def test_op_names():
    for name in OPS:
        assert hasattr(torch.ops.cnnops, name), name
    for old in ("batch_norm_forward", "batch_norm_backward", "conv2d_backward_input"):
        with pytest.raises((AttributeError, RuntimeError)):
            getattr(torch.ops.cnnops, old).default


class Net(torch.nn.Module):
    """Every native forward op in one graph: conv+relu, batch norm, max pool (ceil_mode), conv,
    avg pool."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(2, 4, 3, padding=1).double()
        self.conv2 = torch.nn.Conv2d(4, 6, 3, stride=2, groups=2).double()
        self.bn = torch.nn.BatchNorm2d(4).double()

    def forward(self, x, impl):
        if impl == "torch":
            x = F.relu(F.conv2d(x, self.conv1.weight, self.conv1.bias, padding=1))
            x = F.batch_norm(x, self.bn.running_mean.clone(), self.bn.running_var.clone(),
                             self.bn.weight, self.bn.bias, True)
            x = F.max_pool2d(x, 3, 2, 1, ceil_mode=True)
            x = F.conv2d(x, self.conv2.weight, self.conv2.bias, stride=2, groups=2)
            return F.avg_pool2d(x, 2, ceil_mode=True, count_include_pad=False)
        x = cnnops.conv2d(x, self.conv1.weight, self.conv1.bias, padding=1, activation="relu",
                          backend="native")
        x = cnnops.batch_norm(x, self.bn.running_mean.clone(), self.bn.running_var.clone(),
                              self.bn.weight, self.bn.bias, True, backend="native")
        x = cnnops.max_pool2d(x, 3, 2, 1, ceil_mode=True, backend="native")
        x = cnnops.conv2d(x, self.conv2.weight, self.conv2.bias, stride=2, groups=2,
                          backend="native")
        return cnnops.avg_pool2d(x, 2, ceil_mode=True, count_include_pad=False,
                                 backend="native")


def test_torch_compile_dynamic_shapes():
    """fullgraph, dynamic=True: the output sizes are SymInts computed by cnnops.shapes and
    passed to the ops; two input sizes run through one compiled graph."""
    torch._dynamo.reset()
    net = Net()
    compiled = torch.compile(lambda x: net(x, "native"), fullgraph=True, dynamic=True,
                             backend="aot_eager")
    for shape in ((2, 2, 17, 15), (3, 2, 20, 23)):
        x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        x_ref = x.detach().clone().requires_grad_()
        got, want = compiled(x), net(x_ref, "torch")
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
        grad = torch.randn_like(want)
        torch.testing.assert_close(torch.autograd.grad(got, x, grad)[0],
                                   torch.autograd.grad(want, x_ref, grad)[0],
                                   rtol=1e-10, atol=1e-10)


def test_output_size_is_checked_against_the_buffers():
    """A caller's output size that would read past the padded input is an internal error."""
    x, w = torch.randn(1, 2, 6, 6), torch.randn(3, 2, 3, 3)
    torch.ops.cnnops.conv2d(x, w, None, [1, 1], [0, 0], [1, 1], 1, [4, 4])  # the right size
    with pytest.raises(RuntimeError, match="internal error.*does not fit"):
        torch.ops.cnnops.conv2d(x, w, None, [1, 1], [0, 0], [1, 1], 1, [5, 4])
    with pytest.raises(RuntimeError, match="internal error.*does not fit"):
        torch.ops.cnnops.avg_pool2d(x, [2, 2], [2, 2], [0, 0], True, None, [3, 4])
    with pytest.raises(RuntimeError, match="internal error.*groups"):
        torch.ops.cnnops.conv2d(x, w, None, [1, 1], [0, 0], [1, 1], 2, [4, 4])


def test_user_errors_come_from_validation():
    """Through cnnops, a bad argument is the validation layer's ValueError, never a C++
    error."""
    x = torch.randn(1, 2, 6, 6)
    with pytest.raises(ValueError):
        cnnops.conv2d(x, torch.randn(3, 2, 7, 7), backend="native")
    with pytest.raises(ValueError):
        cnnops.max_pool2d(x, 2, padding=2, backend="native")


def test_torch_accepts_native_accepts():
    """Inputs the C++ used to refuse that torch accepts."""
    # ceil_mode with a window wider than the input: (6, 3) plane, kernel (2, 4) -> (3, 1)
    x = torch.randn(1, 1, 6, 3, dtype=torch.float64)
    got = cnnops.max_pool2d(x, (2, 4), ceil_mode=True, backend="native")
    torch.testing.assert_close(got, F.max_pool2d(x, (2, 4), ceil_mode=True))
    assert got.shape == (1, 1, 3, 1)


def _sources(*folders):
    for folder in folders:
        for path in sorted((KERNELS / folder).rglob("*")):
            if path.suffix in (".h", ".cuh", ".cpp", ".cu"):
                yield path, path.read_text()


def test_kernels_compute_no_output_size():
    """C++ and CUDA receive output sizes from the caller (cnnops/shapes.py, the one rule)."""
    for path, text in _sources("include", "cpu", "cuda", "binding"):
        code = re.sub(r"//.*", "", text)
        assert not re.search(r"\boutput_size\s*\(", code), f"{path}: an output_size function"
        # the kernels need no ceil_mode: it only changes the output size, which they are given
        assert "ceil_mode" not in code, f"{path}: uses ceil_mode"


def test_no_torch_header_under_kernels():
    for path, text in _sources("include", "cpu", "cuda"):
        includes = re.findall(r'#include\s*[<"]([^>"]+)[>"]', text)
        bad = [i for i in includes if i.split("/")[0] in ("torch", "ATen", "c10", "Python.h")]
        assert not bad, f"{path} includes {bad}"
