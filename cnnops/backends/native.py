"""The `native` backend: the C++ (CPU) and CUDA kernels of `kernels/`, built as `cnnops._C`.

Importing this module never fails. When the extension is not built (or was built without
CUDA kernels), the backend still registers and `unavailable_reason` says why and how to fix it.

conv2d on CUDA has two forward kernels, a teaching ladder (kernels/cuda/conv2d.cu): the
environment variable CNNOPS_CONV_ALGO picks one per call: "naive" (a thread per output),
"tiled" (shared-memory tiles), or "auto" (default: tiled where its shared memory fits, else
naive). On the CPU there is one C++ kernel and the variable is ignored.

The file has four parts: the backend class (what the dispatcher calls, with validated,
normalised arguments), the fakes of the ops `torch.ops.cnnops.*` (shapes only, for
torch.compile and opcheck), their autograd (backward from the native backward ops, and a
backward of each backward op for double backward), and the registration.

The C++ binding (kernels/binding) computes no output size: the forward ops take
`output_size`, which this backend computes with `cnnops.shapes` (the one size rule); the
backward ops read it off grad_output. The binding checks only invariants that keep its raw
pointers in bounds; user errors are raised before, by cnnops/_validate.py.

conv2d computes in NCHW: channels-last input is copied to NCHW first, and
`cnnops.functional` gives the output PyTorch's memory format. On the CPU, batch_norm,
max_pool2d and avg_pool2d (forward and grad_input) read a dense channels-last input in place
and return channels-last (pooling on CUDA copies to NCHW).
"""
from __future__ import annotations

import os

import torch
from torch._prims_common import suggest_memory_format

from cnnops import _validate
from cnnops.backends import Backend
from cnnops.shapes import conv2d_output_hw, pool2d_output_hw

try:
    import cnnops._C as _C
except ImportError as error:  # not built, or built against another torch
    _C = None
    # a missing module is the common case; anything else (an ABI mismatch...) is worth showing
    _NOT_BUILT_DETAIL = ("" if isinstance(error, ModuleNotFoundError)
                         else f" (import failed: {error})")

NOT_BUILT = "native extension not built: run `pip install --no-build-isolation -e .` in the repo"
NO_CUDA = ("native extension was built without CUDA kernels (torch without CUDA, nvcc not found "
           "or CNNOPS_BUILD_CUDA=0): rebuild with `pip install --no-build-isolation -e .` on a "
           "machine with CUDA torch and nvcc")

CONV_ALGOS = {"auto": 0, "naive": 1, "tiled": 2}

# The ops of cnnops._C (looked up at call time, so this line works without the extension).
ops = torch.ops.cnnops


def conv_algo() -> int:
    """The CUDA conv2d forward kernel CNNOPS_CONV_ALGO asks for, as the op's `algo` int."""
    name = os.environ.get("CNNOPS_CONV_ALGO", "auto").strip().lower() or "auto"
    return CONV_ALGOS[_validate.choice("CNNOPS_CONV_ALGO", name, tuple(CONV_ALGOS),
                                       "a conv2d algorithm")]


class NativeBackend(Backend):
    name = "native"
    dtypes = {"cpu": (torch.float32, torch.float64),
              "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16)}

    def unavailable_reason(self, device):
        device = torch.device(device)
        if _C is None:
            return NOT_BUILT + _NOT_BUILT_DETAIL
        if device.type == "cuda" and not _C.with_cuda:
            return NO_CUDA
        if device.type not in ("cpu", "cuda"):
            return f"native has kernels for cpu and cuda only, not {device.type}"
        return None

    def conv2d(self, input, weight, bias, stride, padding, dilation, groups, activation):
        out_hw = conv2d_output_hw(input.shape[-2:], weight.shape[-2:], stride, padding, dilation)
        return ops.conv2d(input, weight, bias, stride, padding, dilation, groups, out_hw,
                          activation == "relu", conv_algo())

    def max_pool2d(self, input, kernel_size, stride, padding, dilation, ceil_mode,
                   need_indices=True):
        """(output, indices). With `need_indices=False` and no gradient to compute (under
        torch.no_grad() or for an input that does not require grad) the indices are None and
        the values-only op runs (`max_pool2d_values`: no index computed or written)."""
        out_hw = pool2d_output_hw(input.shape[-2:], kernel_size, stride, padding, dilation,
                                  ceil_mode)
        if not need_indices and not (torch.is_grad_enabled() and input.requires_grad):
            return ops.max_pool2d_values(input, kernel_size, stride, padding, dilation,
                                         out_hw), None
        return ops.max_pool2d(input, kernel_size, stride, padding, dilation, out_hw)

    def avg_pool2d(self, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                   divisor_override):
        out_hw = pool2d_output_hw(input.shape[-2:], kernel_size, stride, padding, (1, 1),
                                  ceil_mode)
        return ops.avg_pool2d(input, kernel_size, stride, padding, count_include_pad,
                              divisor_override, out_hw)

    def batch_norm(self, input, running_mean, running_var, weight, bias, training, momentum,
                   eps):
        """The functional op, then the one running-stats rule: in training with running stats
        the op returns the new mean / var (momentum-weighted, unbiased variance; unchanged for
        an empty batch) and they are copied into the caller's buffers here."""
        output, _, _, new_running_mean, new_running_var = ops.batch_norm(
            input, weight, bias, running_mean, running_var, bool(training), float(momentum),
            float(eps))
        if training and running_mean is not None:
            with torch.no_grad():
                running_mean.copy_(new_running_mean)
                running_var.copy_(new_running_var)
        if input.dim() == 4:
            output = output.contiguous(memory_format=suggest_memory_format(input))
        return output


BACKEND = NativeBackend()

# ==== fakes and autograd of the native ops `torch.ops.cnnops.*` ==============================
# The schemas and the CPU/CUDA kernels are registered in C++ (kernels/binding/ops.cpp), loaded
# by `import cnnops._C`; what torch.compile and autograd need is added here by `_register`: a
# fake for every op (shapes only, no data), a backward for the forward ops built from the
# native backward ops, and a backward for each backward op (exact double backward).
# The forward fakes take the output size from their `output_size` argument, as the kernels do:
# the backend computed it with cnnops.shapes (SymInts under torch.compile).

# ---- fakes ----------------------------------------------------------------------------------

def _conv2d_fake(input, weight, bias, stride, padding, dilation, groups, output_size,
                 relu=False, algo=0):
    return input.new_empty((input.shape[0], weight.shape[0], *output_size))


def _conv2d_grad_input_fake(grad_output, input, weight, stride, padding, dilation, groups):
    return input.new_empty(input.shape)


def _conv2d_grad_weight_fake(grad_output, input, weight, stride, padding, dilation, groups):
    return weight.new_empty(weight.shape)


def _conv2d_grad_bias_fake(grad_output):
    return grad_output.new_empty((grad_output.shape[1],))


def _pool_empty(input, shape, dtype=None):
    """An empty pooling result of `shape`: channels-last when the ops read `input` in place as
    dense channels-last (a CPU input that is channels-last and not NCHW-contiguous:
    reads_channels_last in kernels/binding/ops.cpp), else NCHW."""
    channels_last = (input.device.type == "cpu" and not input.is_contiguous()
                     and input.is_contiguous(memory_format=torch.channels_last))
    out = input.new_empty(shape, dtype=dtype)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def _max_pool2d_fake(input, kernel_size, stride, padding, dilation, output_size):
    shape = (*input.shape[:2], *output_size)
    return _pool_empty(input, shape), _pool_empty(input, shape, torch.int64)


def _max_pool2d_values_fake(input, kernel_size, stride, padding, dilation, output_size):
    return _pool_empty(input, (*input.shape[:2], *output_size))


def _max_pool2d_grad_input_fake(grad_output, input, indices, kernel_size, stride, padding,
                                dilation):
    return _pool_empty(input, input.shape)


def _avg_pool2d_fake(input, kernel_size, stride, padding, count_include_pad, divisor_override,
                     output_size):
    return _pool_empty(input, (*input.shape[:2], *output_size))


def _avg_pool2d_grad_input_fake(grad_output, input, kernel_size, stride, padding,
                                count_include_pad, divisor_override):
    return _pool_empty(input, input.shape)


# ---- autograd -------------------------------------------------------------------------------

def _conv2d_setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups, _output_size, relu, _algo = inputs
    ctx.save_for_backward(input, weight, output if relu else None)
    ctx.conv_args = (stride, padding, dilation, groups)
    ctx.has_bias = bias is not None


def _conv2d_backward(ctx, grad):
    """Gradients of conv2d(+ReLU) from the native backward kernels.

    The fused ReLU is undone first: the gradient passes where the output is positive (an
    elementwise torch op). Then grad_input is the transposed convolution of grad
    (`conv2d_grad_input`), grad_weight the correlation of input with grad
    (`conv2d_grad_weight`), grad_bias the sum of grad over N, H, W
    (`conv2d_grad_bias`); each is computed only when needed.
    """
    input, weight, relu_output = ctx.saved_tensors
    if relu_output is not None:
        grad = torch.where(relu_output > 0, grad, torch.zeros_like(grad))
    grad_input = grad_weight = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_input = ops.conv2d_grad_input(grad, input, weight, *ctx.conv_args)
    if ctx.needs_input_grad[1]:
        grad_weight = ops.conv2d_grad_weight(grad, input, weight, *ctx.conv_args)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_bias = ops.conv2d_grad_bias(grad)
    return grad_input, grad_weight, grad_bias, None, None, None, None, None, None, None


def _max_pool2d_setup_context(ctx, inputs, output):
    input = inputs[0]
    ctx.save_for_backward(input, output[1])
    ctx.pool_args = inputs[1:5]  # kernel_size, stride, padding, dilation (not output_size)
    ctx.mark_non_differentiable(output[1])


def _max_pool2d_backward(ctx, grad, _grad_indices):
    """grad_input: each output's gradient added to the input element its index names
    (`max_pool2d_grad_input`); the indices get no gradient."""
    input, indices = ctx.saved_tensors
    return (ops.max_pool2d_grad_input(grad, input, indices, *ctx.pool_args),
            None, None, None, None, None)


def _max_pool2d_values_setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.pool_args = inputs[1:5]  # kernel_size, stride, padding, dilation (not output_size)


def _max_pool2d_values_backward(ctx, grad):
    """The values-only op keeps no indices (it runs where no gradient is expected); if one
    is asked for anyway, max_pool2d recomputes them and the gradient is max_pool2d's."""
    (input,) = ctx.saved_tensors
    _, indices = ops.max_pool2d(input, *ctx.pool_args, grad.shape[-2:])
    return (ops.max_pool2d_grad_input(grad, input, indices, *ctx.pool_args),
            None, None, None, None, None)


def _avg_pool2d_setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    # kernel_size, stride, padding, count_include_pad, divisor_override (not output_size)
    ctx.pool_args = inputs[1:6]


def _avg_pool2d_backward(ctx, grad):
    """grad_input: each output's gradient divided by its divisor and spread over its window
    (`avg_pool2d_grad_input`)."""
    (input,) = ctx.saved_tensors
    return (ops.avg_pool2d_grad_input(grad, input, *ctx.pool_args),
            None, None, None, None, None, None)


# ---- double backward: every backward op is linear in its gradient argument ------------------

def _save_all_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*(t for t in inputs if isinstance(t, torch.Tensor)))
    ctx.args = tuple(a for a in inputs if not isinstance(a, torch.Tensor))


def _conv2d_grad_input_backward(ctx, gg):
    """grad_input = B(grad, weight) is the adjoint of conv2d in its input, so for an upstream
    gg: d/dgrad = conv2d(gg, weight) and d/dweight = conv2d_grad_weight(grad, gg)."""
    grad, input, weight = ctx.saved_tensors
    d_grad = d_weight = None
    if ctx.needs_input_grad[0]:
        d_grad = ops.conv2d(gg, weight, None, *ctx.args, grad.shape[-2:])
    if ctx.needs_input_grad[2]:
        d_weight = ops.conv2d_grad_weight(grad, gg, weight, *ctx.args)
    return d_grad, None, d_weight, None, None, None, None


def _conv2d_grad_weight_backward(ctx, gg):
    """grad_weight = B(grad, input) is the adjoint of conv2d in its weight, so for an upstream
    gg: d/dgrad = conv2d(input, gg) and d/dinput = conv2d_grad_input(grad, input, gg)."""
    grad, input, weight = ctx.saved_tensors
    d_grad = d_input = None
    if ctx.needs_input_grad[0]:
        d_grad = ops.conv2d(input, gg, None, *ctx.args, grad.shape[-2:])
    if ctx.needs_input_grad[1]:
        d_input = ops.conv2d_grad_input(grad, input, gg, *ctx.args)
    return d_grad, d_input, None, None, None, None, None


def _conv2d_grad_bias_backward(ctx, gg):
    """grad_bias sums grad over N, H, W: its gradient broadcasts gg back (a torch op)."""
    (grad,) = ctx.saved_tensors
    return gg.view(1, -1, 1, 1).expand_as(grad)


def _max_pool2d_grad_input_backward(ctx, gg):
    """grad_input adds grad at the indices: its gradient reads gg at the indices (torch gather)."""
    grad, input, indices = ctx.saved_tensors
    d_grad = gg.flatten(2).gather(2, indices.flatten(2)).view_as(grad)
    return d_grad, None, None, None, None, None, None


def _avg_pool2d_grad_input_backward(ctx, gg):
    """grad_input is the adjoint of avg_pool2d: its gradient is avg_pool2d of gg (at the
    forward's output size, grad's)."""
    grad, _input = ctx.saved_tensors
    return (ops.avg_pool2d(gg, *ctx.args, grad.shape[-2:]), None, None, None, None, None, None)


# ---- batch norm: fakes and autograd --------------------------------------------------------

def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels accumulate in and return per-channel results in."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _empty_like_output(input: torch.Tensor) -> torch.Tensor:
    """An empty tensor in the layout the ops give for `input` (keeps_channels_last in
    kernels/binding/batch_norm.cpp)."""
    channels_last = (input.device.type == "cpu" and input.dim() == 4
                     and not input.is_contiguous()
                     and input.is_contiguous(memory_format=torch.channels_last))
    return torch.empty_like(input, memory_format=torch.channels_last if channels_last
                            else torch.contiguous_format)


def _batch_norm_fake(input, weight, bias, running_mean, running_var, training, momentum, eps):
    """output (the input's shape, NCHW or channels-last), save_mean and save_invstd (C,), and
    the new running mean and var, (C,) when training with running stats, else (0,)."""
    channels = input.shape[1]
    acc = _acc_dtype(input.dtype)
    new_stats = (channels,) if training and running_mean is not None else (0,)
    return (_empty_like_output(input), input.new_empty((channels,), dtype=acc),
            input.new_empty((channels,), dtype=acc), input.new_empty(new_stats, dtype=acc),
            input.new_empty(new_stats, dtype=acc))


def _batch_norm_grad_fake(grad_output, input, weight, save_mean, save_invstd, training,
                          output_mask):
    """grad_input (laid out as the forward's output), grad_weight and grad_bias ((C,), in the
    accumulation dtype); each (0,) when its output_mask entry is False."""
    channels = input.shape[1]
    acc = _acc_dtype(input.dtype)
    return (_empty_like_output(input) if output_mask[0] else input.new_empty((0,)),
            input.new_empty((channels,) if output_mask[1] else (0,), dtype=acc),
            input.new_empty((channels,) if output_mask[2] else (0,), dtype=acc))


def _batch_norm_setup_context(ctx, inputs, output):
    input, weight, bias, _running_mean, _running_var, training, _momentum, _eps = inputs
    _, save_mean, save_invstd, new_running_mean, new_running_var = output
    ctx.mark_non_differentiable(save_mean, save_invstd, new_running_mean, new_running_var)
    ctx.save_for_backward(input, weight, save_mean, save_invstd)
    ctx.training = training
    ctx.weight_dtype = None if weight is None else weight.dtype
    ctx.bias_dtype = None if bias is None else bias.dtype


def _batch_norm_backward(ctx, grad_output, _save_mean, _save_invstd, _new_mean, _new_var):
    """Gradients from `batch_norm_grad`, with mean and invstd the statistics the forward
    used and M the values per channel:

        grad_bias = sum(dy),  grad_weight = sum(dy * (x - mean)) * invstd
        training: dx = (dy - sum(dy) / M - (x - mean) * invstd^2 * sum(dy * (x - mean)) / M)
                       * invstd * weight      (the batch statistics depend on x)
        eval:     dx = dy * invstd * weight   (the running statistics are constants)

    Only the gradients autograd asks for are computed; the running statistics get none.
    """
    input, weight, save_mean, save_invstd = ctx.saved_tensors
    mask = [ctx.needs_input_grad[0],
            ctx.weight_dtype is not None and ctx.needs_input_grad[1],
            ctx.bias_dtype is not None and ctx.needs_input_grad[2]]
    grad_input, grad_weight, grad_bias = ops.batch_norm_grad(
        grad_output, input, weight, save_mean, save_invstd, ctx.training, mask)
    return (grad_input if mask[0] else None,
            grad_weight.to(ctx.weight_dtype) if mask[1] else None,
            grad_bias.to(ctx.bias_dtype) if mask[2] else None,
            None, None, None, None, None)


# ---- registration ---------------------------------------------------------------------------

def _register() -> None:
    """Fakes (for torch.compile and opcheck) and autograd of every op of `cnnops._C`."""
    torch.library.register_fake("cnnops::conv2d")(_conv2d_fake)
    torch.library.register_fake("cnnops::conv2d_grad_input")(_conv2d_grad_input_fake)
    torch.library.register_fake("cnnops::conv2d_grad_weight")(_conv2d_grad_weight_fake)
    torch.library.register_fake("cnnops::conv2d_grad_bias")(_conv2d_grad_bias_fake)
    torch.library.register_fake("cnnops::max_pool2d")(_max_pool2d_fake)
    torch.library.register_fake("cnnops::max_pool2d_values")(_max_pool2d_values_fake)
    torch.library.register_fake("cnnops::max_pool2d_grad_input")(_max_pool2d_grad_input_fake)
    torch.library.register_fake("cnnops::avg_pool2d")(_avg_pool2d_fake)
    torch.library.register_fake("cnnops::avg_pool2d_grad_input")(_avg_pool2d_grad_input_fake)
    torch.library.register_fake("cnnops::batch_norm")(_batch_norm_fake)
    torch.library.register_fake("cnnops::batch_norm_grad")(_batch_norm_grad_fake)
    torch.library.register_autograd("cnnops::conv2d", _conv2d_backward,
                                    setup_context=_conv2d_setup_context)
    torch.library.register_autograd("cnnops::max_pool2d", _max_pool2d_backward,
                                    setup_context=_max_pool2d_setup_context)
    torch.library.register_autograd("cnnops::max_pool2d_values", _max_pool2d_values_backward,
                                    setup_context=_max_pool2d_values_setup_context)
    torch.library.register_autograd("cnnops::avg_pool2d", _avg_pool2d_backward,
                                    setup_context=_avg_pool2d_setup_context)
    for name, backward in (("conv2d_grad_input", _conv2d_grad_input_backward),
                         ("conv2d_grad_weight", _conv2d_grad_weight_backward),
                         ("conv2d_grad_bias", _conv2d_grad_bias_backward),
                         ("max_pool2d_grad_input", _max_pool2d_grad_input_backward),
                         ("avg_pool2d_grad_input", _avg_pool2d_grad_input_backward)):
        torch.library.register_autograd(f"cnnops::{name}", backward,
                                        setup_context=_save_all_setup_context)
    torch.library.register_autograd("cnnops::batch_norm", _batch_norm_backward,
                                    setup_context=_batch_norm_setup_context)


if _C is not None:
    _register()
