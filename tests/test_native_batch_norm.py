"""The native batch_norm (kernels/{cpu,cuda}/batch_norm.*, kernels/binding/batch_norm.cpp, the
backend method in cnnops/backends/native.py) against torch.nn.functional.batch_norm.

Output, running statistics after the call and gradients, training and eval, (N, C), (N, C, L)
and (N, C, H, W) input, with and without weight / bias / running stats, momentum 0 and 1,
channels-last and non-contiguous input, in float64 and float32 on the CPU; gradcheck of the
backward; opcheck of both ops; empty batches; the binding's internal checks; the
cnnops.batch_norm / cnnops.nn path; CUDA tests for every dtype (skipped without a GPU).
"""
import pytest
import torch
import torch.nn.functional as F

import cnnops
from differential import first_mismatches

from backend_support import NATIVE, native_only, needs_cuda

pytestmark = native_only


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """The backend method (functional op + copy of the new running stats), F.batch_norm's
    argument order."""
    return NATIVE.batch_norm(input, running_mean, running_var, weight, bias, training, momentum,
                             eps)

# (dtype, atol, rtol) against F.batch_norm in the same dtype
TOLERANCES = [(torch.float64, 1e-10, 1e-10), (torch.float32, 2e-5, 2e-5)]
CUDA_TOLERANCES = TOLERANCES + [(torch.float16, 2e-2, 2e-2), (torch.bfloat16, 1e-1, 5e-2)]
SHAPES = {"NC": (7, 5), "NCL": (3, 4, 11), "NCHW": (2, 3, 7, 5), "C1_N2": (2, 1, 3, 3),
          "NC11": (5, 4, 1, 1), "NC1": (6, 3, 1)}
# above kParallelWork (cpu_common.h) values: the multithreaded loops
LARGE_SHAPES = {"NC": (300, 130), "NCHW": (8, 17, 19, 13), "NCHW_cl": (8, 17, 19, 13)}


def _randn(shape, dtype, device="cpu", seed=0, scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale + shift).to(device, dtype)


def _params(channels, dtype, device="cpu", seed=1, param_dtype=None):
    """weight, bias, running_mean, running_var (positive)."""
    dtype = param_dtype or dtype
    w, b, rm = (_randn((channels,), dtype, device, seed + i) for i in range(3))
    rv = _randn((channels,), dtype, device, seed + 3).abs() + 0.5
    return w, b, rm, rv


def _assert_close(got, want, atol, rtol, what):
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    got, want = got.double(), want.double()
    assert torch.allclose(got, want, atol=atol, rtol=rtol), (
        f"{what} differs from torch: {first_mismatches(got, want, atol, rtol)}")


def _compare(run, x, weight, bias, running_mean, running_var, training, momentum, atol, rtol,
             eps=1e-5):
    """`run` (a batch_norm function) against F.batch_norm: output, its strides, running stats
    after the call, and the gradients of input, weight and bias for one random grad."""
    # detach() keeps the strides of a view (clone() would make a non-dense one contiguous)
    leaves = [t.detach().requires_grad_() if t is not None else None for t in (x, weight, bias)]
    ref_leaves = [t.detach().requires_grad_() if t is not None else None
                  for t in (x, weight, bias)]
    assert leaves[0].stride() == x.stride()
    stats = [t.clone() if t is not None else None for t in (running_mean, running_var)]
    ref_stats = [t.clone() if t is not None else None for t in (running_mean, running_var)]
    got = run(leaves[0], *stats, leaves[1], leaves[2], training, momentum, eps)
    want = F.batch_norm(ref_leaves[0], *ref_stats, ref_leaves[1], ref_leaves[2], training,
                        momentum, eps)
    _assert_close(got, want, atol, rtol, "output")
    assert got.stride() == want.stride(), f"output strides {got.stride()} != {want.stride()}"
    for name, g, w in zip(("running_mean", "running_var"), stats, ref_stats):
        if w is not None:
            _assert_close(g, w, atol, rtol, name)
    grad = _randn(want.shape, want.dtype, want.device, seed=7)
    inputs = [t for t in leaves if t is not None]
    ref_inputs = [t for t in ref_leaves if t is not None]
    for name, g, w in zip(("grad_input", "grad_weight", "grad_bias"),
                          torch.autograd.grad(got, inputs, grad),
                          torch.autograd.grad(want, ref_inputs, grad)):
        _assert_close(g, w, atol * 10, rtol * 10, name)  # sums of M products


@pytest.mark.parametrize("dtype,atol,rtol", TOLERANCES, ids=["float64", "float32"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_matches_torch(shape, training, dtype, atol, rtol):
    x = _randn(shape, dtype, scale=2.0, shift=0.5)
    _compare(batch_norm, x, *_params(shape[1], dtype), training, 0.1, atol, rtol)


# (weight, bias, running stats) present
AFFINE = {"none": (False, False, True), "weight_only": (True, False, True),
          "bias_only": (False, True, True), "no_running_stats": (True, True, False),
          "bare_no_stats": (False, False, False)}


@pytest.mark.parametrize("case,training", [
    (case, training) for case in AFFINE for training in (True, False)
    if training or AFFINE[case][2]])  # eval needs running stats (see test_errors)
def test_optional_arguments(case, training):
    has_w, has_b, has_stats = AFFINE[case]
    w, b, rm, rv = _params(4, torch.float64)
    _compare(batch_norm, _randn((3, 4, 6), torch.float64), w if has_w else None,
             b if has_b else None, rm if has_stats else None, rv if has_stats else None,
             training, 0.1, 1e-10, 1e-10)


@pytest.mark.parametrize("name", LARGE_SHAPES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_multithreaded(name, training):
    x = _randn(LARGE_SHAPES[name], torch.float64, scale=3.0, shift=-1.0)
    if name.endswith("_cl"):
        x = x.contiguous(memory_format=torch.channels_last)
    _compare(batch_norm, x, *_params(x.shape[1], torch.float64), training, 0.1, 1e-10, 1e-10)


# planar (N, C, L) rows of each length class of kernels/cpu/batch_norm.cpp: shorter than a
# vector, whole vectors and pairs of them with and without a tail, many rows per group of about
# kChunk (1024) values (a channel's rows in one call), exactly kChunk and longer rows (one call
# per row); all above kParallelWork values, so two threads split the work
ROW_SHAPES = {"L3": (2000, 6, 3), "L16": (700, 5, 4, 4), "L37": (300, 7, 37),
              "L64_lenet_bn": (256, 16, 8, 8), "L1024": (17, 3, 32, 32), "L1025": (17, 3, 1025),
              "L1640": (5, 4, 40, 41)}


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("dtype,atol,rtol", TOLERANCES, ids=["float64", "float32"])
@pytest.mark.parametrize("name", ROW_SHAPES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_planar_row_lengths(name, training, dtype, atol, rtol, threads):
    x = _randn(ROW_SHAPES[name], dtype, scale=3.0, shift=-1.0)
    _compare(batch_norm, x, *_params(x.shape[1], dtype), training, 0.1, atol, rtol)


@pytest.mark.parametrize("name", ["L3", "L37", "L64_lenet_bn", "L1640"])
def test_planar_same_bits_for_any_thread_count(name):
    """Planar sums are per channel in one fixed order: forward and backward give the same bits
    with 1 and 2 threads."""
    x = _randn(ROW_SHAPES[name], torch.float32, scale=3.0, shift=-1.0)
    w, b, rm, rv = _params(x.shape[1], torch.float32)
    dy = _randn(x.shape, torch.float32, seed=7)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out, mean, invstd, new_rm, new_rv = torch.ops.cnnops.batch_norm(
                x, w, b, rm, rv, True, 0.1, 1e-5)
            grads = torch.ops.cnnops.batch_norm_grad(dy, x, w, mean, invstd, True,
                                                     [True, True, True])
            results.append((out, mean, invstd, new_rm, new_rv, *grads))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("momentum", [0.0, 1.0, 0.37])
def test_momentum(momentum):
    _compare(batch_norm, _randn((4, 3, 5), torch.float64), *_params(3, torch.float64), True,
             momentum, 1e-10, 1e-10)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype,atol,rtol", TOLERANCES, ids=["float64", "float32"])
def test_channels_last(training, dtype, atol, rtol):
    x = _randn((2, 5, 4, 3), dtype).contiguous(memory_format=torch.channels_last)
    _compare(batch_norm, x, *_params(5, dtype), training, 0.1, atol, rtol)


VIEWS = {"strided": lambda t: t[:, :, ::2],  # (2, 3, 4, 5) -> step 2 along H
         "permuted": lambda t: t.permute(0, 1, 3, 2),
         "channel_slice": lambda t: t[:, 1:],
         "ncl_transposed": lambda t: t.flatten(2).transpose(1, 2).contiguous().transpose(1, 2)}


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_non_contiguous(view, training):
    x = VIEWS[view](_randn((2, 4, 8, 5), torch.float64))
    assert not x.is_contiguous()
    _compare(batch_norm, x, *_params(x.shape[1], torch.float64), training, 0.1, 1e-10, 1e-10)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("scale,shift", [(0.01, 1000.0), (1.0, 1e4), (1e-3, 1.0)])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_float32_off_centre(scale, shift, training, channels_last):
    """float32 data far from zero relative to its spread: the output is as close to the
    float64 result as torch's float32 one (within 2x), and the running variance keeps its
    digits (shifted sums; E[x^2] - E[x]^2 in float32 would lose them all)."""
    x = _randn((4, 3, 64, 33), torch.float32, scale=scale, shift=shift)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w, b, _, _ = _params(3, torch.float32)
    stats = {name: (torch.full((3,), shift), torch.full((3,), scale ** 2))
             for name in ("ours", "torch")}
    exact_stats = [t.double() for t in stats["ours"]]
    exact = F.batch_norm(x.double(), *exact_stats, w.double(), b.double(), training, 0.1, 1e-5)
    ours = batch_norm(x, *stats["ours"], w, b, training, 0.1, 1e-5)
    theirs = F.batch_norm(x, *stats["torch"], w, b, training, 0.1, 1e-5)
    our_err = (ours.double() - exact).abs().max().item()
    torch_err = (theirs.double() - exact).abs().max().item()
    assert our_err <= 2 * torch_err + 1e-6, f"error {our_err:.3g} vs torch's {torch_err:.3g}"
    _assert_close(stats["ours"][1].double(), exact_stats[1], 0, 1e-6, "running_var")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(0, 3, 4), (0, 3), (0, 3, 2, 2)], ids=["NCL", "NC", "NCHW"])
def test_empty_batch(shape, training):
    """A data loader's last, empty batch: torch returns an empty output, leaves the running
    stats as they were, and the backward gives an empty grad_input and zero weight / bias
    grads."""
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    w, b, rm, rv = _params(3, torch.float64)
    w.requires_grad_(), b.requires_grad_()
    x_ref, w_ref, b_ref = (t.detach().clone().requires_grad_() for t in (x, w, b))
    rm_ref, rv_ref = rm.clone(), rv.clone()
    rm_before, rv_before = rm.clone(), rv.clone()
    y = batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5)
    y_ref = F.batch_norm(x_ref, rm_ref, rv_ref, w_ref, b_ref, training, 0.1, 1e-5)
    assert y.shape == y_ref.shape == x.shape and y.dtype == y_ref.dtype
    assert torch.equal(rm, rm_before) and torch.equal(rv, rv_before)
    assert torch.equal(rm, rm_ref) and torch.equal(rv, rv_ref)
    grads = torch.autograd.grad(y.sum(), (x, w, b))
    grads_ref = torch.autograd.grad(y_ref.sum(), (x_ref, w_ref, b_ref))
    for name, got, want in zip(("input", "weight", "bias"), grads, grads_ref):
        assert got.shape == want.shape and torch.equal(got, want), name


def test_empty_batch_opcheck():
    x = torch.randn(0, 3, 4, dtype=torch.float64, requires_grad=True)
    w, b, rm, rv = _params(3, torch.float64)
    torch.library.opcheck(torch.ops.cnnops.batch_norm.default, (x, w, b, rm, rv, True, 0.1, 1e-5))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradcheck(training):
    x = _randn((3, 2, 5), torch.float64, scale=1.5).requires_grad_()
    w, b, rm, rv = _params(2, torch.float64)
    w.requires_grad_(), b.requires_grad_()
    # fresh running stats every call: gradcheck calls the function many times
    assert torch.autograd.gradcheck(
        lambda x, w, b: batch_norm(x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-5),
        (x, w, b))


def test_gradcheck_4d_no_affine():
    x = _randn((2, 3, 3, 2), torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: batch_norm(x, None, None, None, None, True, 0.1,
                                                         1e-5), (x,))


# training, running stats given, weight and bias given, input layout
OPCHECK_CASES = {
    "train_stats": (True, True, True, "ncl"),
    "train_no_stats": (True, False, True, "ncl"),
    "eval_affine": (False, True, True, "ncl"),
    "eval_bare": (False, True, False, "ncl"),
    "train_channels_last": (True, True, True, "channels_last"),
    "eval_nc": (False, True, True, "nc"),
}
OPCHECK_INPUTS = {"ncl": lambda: _randn((3, 4, 5), torch.float64),
                  "nc": lambda: _randn((6, 4), torch.float64),
                  "channels_last": lambda: _randn((2, 4, 3, 5), torch.float64).contiguous(
                      memory_format=torch.channels_last)}


@pytest.mark.parametrize("case", OPCHECK_CASES)
def test_opcheck_forward(case):
    training, has_stats, affine, layout = OPCHECK_CASES[case]
    x = OPCHECK_INPUTS[layout]().requires_grad_()
    w, b, rm, rv = _params(4, torch.float64)
    if affine:
        w.requires_grad_(), b.requires_grad_()
    torch.library.opcheck(torch.ops.cnnops.batch_norm.default,
                          (x, w if affine else None, b if affine else None,
                           rm if has_stats else None, rv if has_stats else None, training, 0.1,
                           1e-5))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("mask", [(True, True, True), (True, False, False),
                                  (False, True, True)])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_opcheck_backward(training, mask, channels_last):
    x = _randn((2, 3, 4, 3), torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w, _, rm, rv = _params(3, torch.float64)
    _, mean, invstd, _, _ = torch.ops.cnnops.batch_norm(x, w, None, rm, rv, training,
                                                                0.1, 1e-5)
    grad = _randn(x.shape, torch.float64, seed=5)
    torch.library.opcheck(torch.ops.cnnops.batch_norm_grad.default,
                          (grad, x, w, mean, invstd, training, list(mask)))


def test_binding_keeps_only_internal_checks():
    """User errors are the validation layer's (cnnops/_validate.py). Called directly, the op
    refuses only what would make its raw pointers read out of bounds or with the wrong type,
    as an internal error; values torch accepts (a single value per channel, eps = 0) it
    computes."""
    x = torch.randn(4, 3, 5)
    w, b, rm, rv = _params(3, torch.float32)
    bn = torch.ops.cnnops.batch_norm
    with pytest.raises(RuntimeError, match="internal error.*running_mean"):
        bn(x, w, b, rm.double(), rv, True, 0.1, 1e-5)
    with pytest.raises(RuntimeError, match="internal error.*given together, and in eval"):
        bn(x, w, b, None, None, False, 0.1, 1e-5)
    with pytest.raises(RuntimeError, match=r"internal error.*weight must be a \(3\)"):
        bn(x, torch.ones(4), b, rm, rv, True, 0.1, 1e-5)
    with pytest.raises(RuntimeError, match=r"internal error.*\(N, C, \*\)"):
        bn(torch.randn(5), None, None, None, None, True, 0.1, 1e-5)
    y = bn(torch.randn(1, 3), w, b, rm, rv, True, 0.1, 1e-5)[0]  # torch's validation refuses
    assert y.shape == (1, 3)


def test_functional_dispatch():
    x = _randn((3, 4, 6, 5), torch.float64).contiguous(memory_format=torch.channels_last)
    run = lambda *args: cnnops.batch_norm(*args, backend="native")  # noqa: E731
    _compare(run, x, *_params(4, torch.float64), True, 0.1, 1e-10, 1e-10)


def test_layers_train_and_eval():
    """cnnops.nn.BatchNorm2d / BatchNorm1d on native against torch.nn: a few training steps
    (running stats, num_batches_tracked, momentum=None), then eval."""
    for ours, theirs, shape in ((cnnops.nn.BatchNorm2d, torch.nn.BatchNorm2d, (4, 3, 5, 5)),
                                (cnnops.nn.BatchNorm1d, torch.nn.BatchNorm1d, (6, 3))):
        for momentum in (0.1, None):
            got = ours(3, momentum=momentum, backend="native").double()
            want = theirs(3, momentum=momentum).double()
            for step in range(3):
                x = _randn(shape, torch.float64, seed=step, scale=2.0, shift=step)
                _assert_close(got(x), want(x), 1e-10, 1e-10, f"training step {step}")
            for (name, a), (_, b) in zip(got.state_dict().items(), want.state_dict().items()):
                assert torch.allclose(a.double(), b.double(), atol=1e-12), name
            got.eval(), want.eval()
            x = _randn(shape, torch.float64, seed=9)
            _assert_close(got(x), want(x), 1e-10, 1e-10, "eval")


# ---- CUDA (skipped without a GPU) -------------------------------------------------------------

@needs_cuda
@pytest.mark.parametrize("dtype,atol,rtol", CUDA_TOLERANCES,
                         ids=["float64", "float32", "float16", "bfloat16"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_cuda_matches_torch(shape, training, dtype, atol, rtol):
    x = _randn(shape, dtype, "cuda", scale=2.0, shift=0.5)
    _compare(batch_norm, x, *_params(shape[1], dtype, "cuda"), training, 0.1, atol, rtol)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_input_float_params(dtype):
    x = _randn((4, 6, 9, 7), dtype, "cuda").contiguous(memory_format=torch.channels_last)
    _compare(batch_norm, x, *_params(6, dtype, "cuda", param_dtype=torch.float32), True, 0.1,
             2e-2 if dtype == torch.float16 else 1e-1, 5e-2)


@needs_cuda
def test_cuda_large_reduction():
    """More values per channel than a block has threads many times over, many channels."""
    x = _randn((16, 70, 33, 31), torch.float32, "cuda", shift=3.0)
    _compare(batch_norm, x, *_params(70, torch.float32, "cuda"), True, 0.1, 1e-4, 1e-4)


@needs_cuda
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_cuda_gradcheck_and_opcheck(training):
    x = _randn((3, 2, 5), torch.float64, "cuda").requires_grad_()
    w, b, rm, rv = _params(2, torch.float64, "cuda")
    w.requires_grad_(), b.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, w, b: batch_norm(x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-5),
        (x, w, b))
    torch.library.opcheck(torch.ops.cnnops.batch_norm.default,
                          (x, w, b, rm, rv, training, 0.1, 1e-5))
