"""Triton batch_norm, training and eval, forward, backward and running statistics, vs torch.

References are torch.nn.functional on CPU float64 copies (exact, no TF32, whatever the device
of the triton call). Without CUDA these run in Triton's interpreter on tiny CPU tensors.
"""

import pytest
import torch
import torch.nn.functional as F

import cnnops
from differential import assert_close as assert_close_to
from backend_support import ON_GPU, TRITON_DEVICE as DEVICE, skip_module_without_triton

skip_module_without_triton()

from cnnops.backends.triton import batch_norm as tbn  # noqa: E402

TOL = {torch.float32: (1e-5, 1e-4), torch.float64: (1e-12, 1e-10),
       torch.float16: (1e-2, 1e-2), torch.bfloat16: (5e-2, 5e-2)}

SHAPES = {"2d": (5, 3), "3d": (2, 4, 7), "4d": (2, 3, 5, 6), "4d_prime": (3, 5, 7, 1),
          "c1": (3, 1, 2, 2)}


def assert_close(actual, expected, dtype, what):
    assert_close_to(actual.double().cpu(), expected.double().cpu(), *TOL[dtype], what)


def randn(shape, seed, dtype=torch.float64):
    t = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return t.to(DEVICE, dtype)


def record_launches(monkeypatch, module):
    """Names of the kernels `module` launches from now on; fails on an empty grid."""
    names, real = [], module.launch

    def spy(kernel, grid, *args, **meta):
        sizes = grid(dict(meta, BLOCK_R=16, BLOCK_C=4, BLOCK=128)) if callable(grid) else grid
        assert all(size > 0 for size in sizes), f"empty grid {sizes}"
        names.append(getattr(kernel, "fn", kernel).__name__)
        return real(kernel, grid, *args, **meta)

    monkeypatch.setattr(module, "launch", spy)
    return names


def check(x, training, affine=True, running=True, momentum=0.1, eps=1e-5):
    dtype, c = x.dtype, x.shape[1]
    weight = randn(c, 1, dtype) if affine else None
    bias = randn(c, 2, dtype) if affine else None
    rm = randn(c, 3, dtype) if running else None
    rv = (randn(c, 4, dtype).abs() + 0.5) if running else None
    ref_stats = [t.detach().cpu().double().clone() if t is not None else None for t in (rm, rv)]
    leaves = [t.detach().requires_grad_() if t is not None else None for t in (x, weight, bias)]
    refs = [t.detach().cpu().double().requires_grad_() if t is not None else None
            for t in (x, weight, bias)]
    out = cnnops.batch_norm(leaves[0], rm, rv, *leaves[1:], training, momentum, eps,
                            backend="triton")
    ref = F.batch_norm(refs[0], *ref_stats, *refs[1:], training, momentum, eps)
    assert out.dtype == dtype and out.shape == x.shape and out.device == x.device
    assert_close(out, ref, dtype, "output")
    if running:
        assert_close(rm, ref_stats[0], dtype, "running_mean")
        assert_close(rv, ref_stats[1], dtype, "running_var")
    grad = randn(x.shape, 5, dtype)  # on the triton call's device
    out.backward(grad)
    ref.backward(grad.cpu().double())
    for name, t, r in zip(("grad input", "grad weight", "grad bias"), leaves, refs):
        if t is not None:
            assert t.grad.device == t.device
            assert_close(t.grad, r.grad, dtype, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", SHAPES)
def test_batch_norm_matches_torch(shape, training, dtype):
    check(randn(SHAPES[shape], 0, dtype) * 3 + 1, training)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_channels_last_and_views(training):
    x = randn((2, 3, 5, 6), 0) * 2 - 1
    check(x.contiguous(memory_format=torch.channels_last), training)
    check(x.transpose(2, 3), training)  # a non-contiguous view


@pytest.mark.parametrize("affine,running", [(False, True), (True, False), (False, False)])
def test_batch_norm_optional_arguments(affine, running):
    check(randn((2, 4, 7), 0), True, affine=affine, running=running, momentum=0.3, eps=1e-3)


def test_batch_norm_eval_without_affine():
    check(randn((4, 3), 0), False, affine=False)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 4), (0, 2, 3, 3)])
def test_batch_norm_empty_batch(shape, training, monkeypatch):
    """N = 0 as torch: an empty output, running statistics unchanged, an empty grad input and
    zero grad weight / bias. No kernel is launched on an empty grid (an invalid launch on the
    GPU): training launches nothing, eval only the per-channel finalize."""
    launches = record_launches(monkeypatch, tbn)
    x = randn(shape, 0).requires_grad_()
    w, b = randn(shape[1], 1).requires_grad_(), randn(shape[1], 2).requires_grad_()
    rm, rv = randn(shape[1], 3), randn(shape[1], 4).abs() + 0.5
    before = rm.clone(), rv.clone()
    out = cnnops.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5, backend="triton")
    assert out.shape == x.shape
    assert torch.equal(rm, before[0]) and torch.equal(rv, before[1])
    out.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(w.grad.cpu(), torch.zeros(shape[1], dtype=w.dtype))
    assert torch.equal(b.grad.cpu(), torch.zeros(shape[1], dtype=b.dtype))
    assert launches == ([] if training else ["batch_norm_finalize_kernel"])


def test_batch_norm_op_is_functional():
    """The op mutates nothing: it returns the new running statistics (the backend copies
    them); with training and running stats they are the momentum update, else (0,)."""
    x = randn((3, 2, 4), 0)
    rm, rv = torch.zeros(2, dtype=x.dtype, device=x.device), torch.ones(2, dtype=x.dtype,
                                                                        device=x.device)
    _, mean, invstd, new_mean, new_var = tbn.batch_norm(x, None, None, rm, rv, True, 0.5, 1e-5)
    assert torch.equal(rm, torch.zeros_like(rm)) and torch.equal(rv, torch.ones_like(rv))
    flat = x.transpose(0, 1).reshape(2, -1).cpu()
    assert_close(mean, flat.mean(1), x.dtype, "save_mean")
    assert_close(invstd, 1 / torch.sqrt(flat.var(1, unbiased=False) + 1e-5), x.dtype,
                 "save_invstd")
    assert_close(new_mean, 0.5 * flat.mean(1), x.dtype, "new running_mean")
    assert_close(new_var, 0.5 + 0.5 * flat.var(1, unbiased=True), x.dtype, "new running_var")
    for training, stats in ((False, (rm, rv)), (True, (None, None))):
        outputs = tbn.batch_norm(x, None, None, *stats, training, 0.5, 1e-5)
        assert outputs[3].shape == (0,) and outputs[4].shape == (0,)


def test_batch_norm_running_update_happens_once():
    x = randn((3, 2, 4), 0)
    rm, rv = torch.zeros(2, dtype=x.dtype, device=x.device), torch.ones(2, dtype=x.dtype,
                                                                        device=x.device)
    cnnops.batch_norm(x, rm, rv, training=True, momentum=0.5, backend="triton")
    flat = x.transpose(0, 1).reshape(2, -1).cpu()
    assert_close(rm, 0.5 * flat.mean(1), x.dtype, "running_mean")
    assert_close(rv, 0.5 + 0.5 * flat.var(1, unbiased=True), x.dtype, "running_var")


def test_batch_norm_one_pass_statistics_are_stable():
    # mean 1e4, std 1: E[x^2] - E[x]^2 in float32 would lose the variance entirely
    x = (randn((4, 3, 9, 9), 0) + 1e4).float()
    _, mean, invstd, _, _ = tbn.batch_norm(x, None, None, None, None, True, 0.1, 1e-5)
    x64 = x.double().transpose(0, 1).reshape(3, -1).cpu()
    want_invstd = 1 / torch.sqrt(x64.var(1, unbiased=False) + 1e-5)
    torch.testing.assert_close(mean.double().cpu(), x64.mean(1), atol=0, rtol=1e-6)
    torch.testing.assert_close(invstd.double().cpu(), want_invstd, atol=0, rtol=1e-4)


def test_batch_norm_gradcheck():
    x, w, b = (randn(s, i).requires_grad_() for i, s in enumerate([(3, 2, 4), (2,), (2,)]))
    assert torch.autograd.gradcheck(
        lambda x, w, b: cnnops.batch_norm(x, None, None, w, b, True, backend="triton"),
        (x, w, b), fast_mode=True)
    rm, rv = randn(2, 3), randn(2, 4).abs() + 0.5
    assert torch.autograd.gradcheck(
        lambda x, w, b: cnnops.batch_norm(x, rm, rv, w, b, False, backend="triton"),
        (x, w, b), fast_mode=True)


def test_batch_norm_opcheck():
    x, w, b = (randn(s, i).requires_grad_() for i, s in enumerate([(2, 3, 4), (3,), (3,)]))
    rm, rv = randn(3, 3), randn(3, 4).abs() + 0.5
    torch.library.opcheck(tbn.batch_norm, (x, w, b, rm, rv, True, 0.1, 1e-5))
    torch.library.opcheck(tbn.batch_norm, (x, w, None, rm, rv, False, 0.1, 1e-5))
    torch.library.opcheck(tbn.batch_norm, (x, None, None, None, None, True, 0.1, 1e-5))
    _, mean, invstd, _, _ = tbn.batch_norm(x.detach(), None, None, None, None, True, 0.1, 1e-5)
    grad = randn((2, 3, 4), 5)
    torch.library.opcheck(tbn.batch_norm_grad, (grad, x.detach(), w.detach(), mean, invstd,
                                                True, [True, True, True]))
    torch.library.opcheck(tbn.batch_norm_grad, (grad, x.detach(), None, mean, invstd,
                                                False, [True, False, False]))
    assert torch.ops.cnnops_triton.batch_norm_grad is not None  # the op name


def test_autotune_key_buckets_shapes_and_prunes_configs():
    """A new shape in the same bucket reuses the tuned config; each key times at most
    BN_MAX_CANDIDATES configs, chosen for the layout (the GPU list, not the interpreter's)."""
    key = tbn.tune_key
    assert key(4096, 64, False) == key(3000, 40, False) != key(4096, 64, True)
    assert key(4096, 64, False) != key(8193, 64, False)
    assert all(k % 16 == 0 and k > 16 for k in (key(1, 1, False), key(2**31, 2**20, True)))
    full = tbn.BN_TALL_CONFIGS + tbn.BN_WIDE_CONFIGS
    for rows, channels, inner in [(1 << 20, 64, False), (1 << 20, 64, True), (16, 3, True),
                                  (2, 1, False), (1 << 12, 1 << 12, True)]:
        kept = tbn._prune(full, {"TUNE_KEY": key(rows, channels, inner)})
        assert 1 <= len(kept) <= tbn.BN_MAX_CANDIDATES
        assert all(c.kwargs["BLOCK_C"] <= max(1, channels) or len(kept) == 1 for c in kept)
        if inner and channels >= 32:
            assert all(c in tbn.BN_WIDE_CONFIGS for c in kept)
        if not inner and rows >= 512:
            assert all(c in tbn.BN_TALL_CONFIGS for c in kept)


def test_running_update_is_not_in_an_autotuned_kernel():
    """Autotuning runs a kernel once per config: the kernel writing the new running stats
    must not be autotuned (it runs exactly once)."""
    from triton.runtime.autotuner import Autotuner
    assert not isinstance(tbn.batch_norm_finalize_kernel, Autotuner)
    assert isinstance(tbn.batch_norm_stats_kernel, Autotuner)


@pytest.mark.skipif(not ON_GPU, reason="float16/bfloat16 run on the GPU only")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_batch_norm_half_precision_gpu(dtype):
    for shape in SHAPES.values():
        check(randn(shape, 0, dtype), True)
        check(randn(shape, 0, dtype), False)
