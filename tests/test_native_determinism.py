"""Bitwise determinism of the native backward ops on the CPU (issue 12): the same inputs give
the same bits, run after run, with 2 threads.

Each backward is run three times on shapes large enough to take the multithreaded paths
(above kParallelWork in kernels/include/cpu_common.h) and compared with torch.equal: a kernel
that reduces in thread-arrival order (atomics, a racy shared sum, a schedule(dynamic) split
of a reduction) fails here sooner or later. The values are also checked against torch, so a
kernel that is deterministic but wrong does not pass.
"""
import pytest
import torch
import torch.nn.functional as F

import cnnops

from backend_support import native_only

pytestmark = native_only

RUNS = 3


@pytest.fixture(autouse=True)
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _randn(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def _grads(run, inputs, grad):
    """The gradients of run(*inputs) for `grad`, from fresh leaves."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    return torch.autograd.grad(run(*leaves), leaves, grad)


def _assert_deterministic(run, inputs, grad, names, reference, rtol=1e-4, atol=1e-4):
    first = _grads(run, inputs, grad)
    for _ in range(RUNS - 1):
        again = _grads(run, inputs, grad)
        for name, a, b in zip(names, first, again):
            assert torch.equal(a, b), (
                f"grad_{name} differs between two identical runs: max |diff| "
                f"{(a - b).abs().max().item():.3g} at {(a != b).nonzero()[:3].tolist()}")
    for name, got, want in zip(names, first, _grads(reference, inputs, grad)):
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=f"grad_{name}")


@pytest.mark.parametrize("case", ["3x3_pad1", "stride2", "groups", "1x1"])
def test_conv2d_grads(case):
    """grad_input, grad_weight and grad_bias (the kernels of kernels/cpu/conv2d*.cpp)."""
    x_shape, w_shape, kwargs = {
        "3x3_pad1": ((4, 16, 24, 24), (32, 16, 3, 3), dict(padding=1)),
        "stride2": ((4, 8, 25, 23), (16, 8, 3, 3), dict(stride=2, padding=1)),
        "groups": ((3, 12, 20, 20), (24, 4, 3, 3), dict(groups=3, padding=1)),
        "1x1": ((4, 32, 16, 16), (32, 32, 1, 1), {}),
    }[case]
    x, w, b = _randn(*x_shape), _randn(*w_shape, seed=1), _randn(w_shape[0], seed=2)
    out_shape = F.conv2d(x, w, b, **kwargs).shape
    _assert_deterministic(lambda *t: cnnops.conv2d(*t, **kwargs, backend="native"),
                          (x, w, b), _randn(*out_shape, seed=3), ("input", "weight", "bias"),
                          lambda *t: F.conv2d(*t, **kwargs))


@pytest.mark.parametrize("kwargs", [dict(kernel_size=3, stride=2, padding=1),
                                    dict(kernel_size=3, stride=1, padding=1),  # overlapping
                                    dict(kernel_size=2, stride=2, ceil_mode=True)],
                         ids=["k3s2p1", "k3s1p1", "k2s2_ceil"])
def test_max_pool2d_grad_input(kwargs):
    x = _randn(4, 16, 33, 31)
    out_shape = F.max_pool2d(x, **kwargs).shape
    _assert_deterministic(lambda t: cnnops.max_pool2d(t, **kwargs, backend="native"), (x,),
                          _randn(*out_shape, seed=3), ("input",),
                          lambda t: F.max_pool2d(t, **kwargs), rtol=0, atol=0)


@pytest.mark.parametrize("kwargs", [dict(kernel_size=3, stride=2, padding=1),
                                    dict(kernel_size=2, stride=2),
                                    dict(kernel_size=3, stride=1, padding=1, ceil_mode=True,
                                         count_include_pad=False)],
                         ids=["k3s2p1", "k2s2", "k3s1p1_ceil_nocip"])
def test_avg_pool2d_grad_input(kwargs):
    x = _randn(4, 16, 33, 31)
    out_shape = F.avg_pool2d(x, **kwargs).shape
    _assert_deterministic(lambda t: cnnops.avg_pool2d(t, **kwargs, backend="native"), (x,),
                          _randn(*out_shape, seed=3), ("input",),
                          lambda t: F.avg_pool2d(t, **kwargs), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "nc"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_grads(layout, training):
    """grad_input, grad_weight, grad_bias: per-channel reductions over N * H * W values."""
    shape = (300, 130) if layout == "nc" else (8, 17, 19, 13)
    x = _randn(*shape, dtype=torch.float32)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    channels = shape[1]
    w, b = _randn(channels, seed=1), _randn(channels, seed=2)
    rm, rv = _randn(channels, seed=4), _randn(channels, seed=5).abs() + 0.5

    def run(x, w, b):
        return cnnops.batch_norm(x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-5,
                                 backend="native")

    def reference(x, w, b):
        return F.batch_norm(x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-5)

    _assert_deterministic(run, (x, w, b), _randn(*shape, seed=3), ("input", "weight", "bias"),
                          reference)
