"""batch_norm of the `native` backend: fakes, autograd and the `F.batch_norm`-style wrapper of
the ops `cnnops::batch_norm_forward` and `cnnops::batch_norm_backward`.

The schemas and the CPU/CUDA kernels are registered in C++ (`kernels/batch_norm_ops.cpp`,
loaded by `import cnnops._C`); the formulas are in `kernels/batch_norm.h`.

Running statistics: `batch_norm_forward` is a functional op. In training it returns the new
running mean and variance instead of writing them, and `batch_norm` below copies them into the
caller's buffers (`copy_`, two (C,) copies). A functional op is what
`torch.library.register_autograd` accepts, and `torch.library.opcheck` then has no mutation to
account for.

Layout: on the CPU the kernels read a dense channels-last 4-D input in place and return a
channels-last output and grad_input; every other input (any strides; every CUDA input) is
copied to NCHW-contiguous first, and the output is NCHW. `batch_norm` then gives the output the
memory format `F.batch_norm` gives (a copy only for channels-last input on CUDA or a
non-dense view).

Dtypes: per-channel vectors (weight, bias, running stats) may be of the input's dtype or, for
float16/bfloat16 input, float32, as `F.batch_norm` allows. The ops return the saved statistics,
the new running stats and grad_weight / grad_bias in the accumulation dtype (float32, or
float64 for float64 input); the autograd formula casts the gradients to the parameters' dtypes.
There is no double backward: `batch_norm_backward` has no autograd formula.
"""
from __future__ import annotations

import torch
from torch._prims_common import suggest_memory_format

from cnnops import _C  # noqa: F401  (registers the op schemas and kernels)

ops = torch.ops.cnnops


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels accumulate in and return per-channel results in."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _empty_like_output(input: torch.Tensor) -> torch.Tensor:
    """An empty tensor in the layout the ops give for `input` (keeps_channels_last in
    kernels/batch_norm_ops.cpp)."""
    channels_last = (input.device.type == "cpu" and input.dim() == 4
                     and not input.is_contiguous()
                     and input.is_contiguous(memory_format=torch.channels_last))
    return torch.empty_like(input, memory_format=torch.channels_last if channels_last
                            else torch.contiguous_format)


# ---- fakes ----------------------------------------------------------------------------------

@torch.library.register_fake("cnnops::batch_norm_forward")
def _batch_norm_forward_fake(input, weight, bias, running_mean, running_var, training, momentum,
                             eps):
    """output (the input's shape, NCHW or channels-last), save_mean and save_invstd (C,), and
    the new running mean and var, (C,) when training with running stats, else (0,)."""
    channels = input.shape[1]
    acc = _acc_dtype(input.dtype)
    new_stats = (channels,) if training and running_mean is not None else (0,)
    return (_empty_like_output(input), input.new_empty((channels,), dtype=acc),
            input.new_empty((channels,), dtype=acc), input.new_empty(new_stats, dtype=acc),
            input.new_empty(new_stats, dtype=acc))


@torch.library.register_fake("cnnops::batch_norm_backward")
def _batch_norm_backward_fake(grad_output, input, weight, save_mean, save_invstd, training,
                              output_mask):
    """grad_input (laid out as the forward's output), grad_weight and grad_bias ((C,), in the
    accumulation dtype); each (0,) when its output_mask entry is False."""
    channels = input.shape[1]
    acc = _acc_dtype(input.dtype)
    return (_empty_like_output(input) if output_mask[0] else input.new_empty((0,)),
            input.new_empty((channels,) if output_mask[1] else (0,), dtype=acc),
            input.new_empty((channels,) if output_mask[2] else (0,), dtype=acc))


# ---- autograd -------------------------------------------------------------------------------

def _setup_context(ctx, inputs, output):
    input, weight, bias, _running_mean, _running_var, training, _momentum, _eps = inputs
    _, save_mean, save_invstd, new_running_mean, new_running_var = output
    ctx.mark_non_differentiable(save_mean, save_invstd, new_running_mean, new_running_var)
    ctx.save_for_backward(input, weight, save_mean, save_invstd)
    ctx.training = training
    ctx.weight_dtype = None if weight is None else weight.dtype
    ctx.bias_dtype = None if bias is None else bias.dtype


def _backward(ctx, grad_output, _save_mean, _save_invstd, _new_mean, _new_var):
    """Gradients from `batch_norm_backward`, with mean and invstd the statistics the forward
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
    grad_input, grad_weight, grad_bias = ops.batch_norm_backward(
        grad_output, input, weight, save_mean, save_invstd, ctx.training, mask)
    return (grad_input if mask[0] else None,
            grad_weight.to(ctx.weight_dtype) if mask[1] else None,
            grad_bias.to(ctx.bias_dtype) if mask[2] else None,
            None, None, None, None, None)


torch.library.register_autograd("cnnops::batch_norm_forward", _backward,
                                setup_context=_setup_context)


# ---- the backend method ---------------------------------------------------------------------

def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """`torch.nn.functional.batch_norm` on the native kernels: input (N, C, *), any strides.

    training normalises with the batch's mean and biased variance and, when running_mean /
    running_var are given, updates them in place (momentum-weighted, unbiased variance);
    eval normalises with running_mean / running_var. Differentiable in input, weight and bias.
    """
    output, _, _, new_running_mean, new_running_var = ops.batch_norm_forward(
        input, weight, bias, running_mean, running_var, bool(training), float(momentum),
        float(eps))
    if training and running_mean is not None:
        with torch.no_grad():
            running_mean.copy_(new_running_mean)
            running_var.copy_(new_running_var)
    if input.dim() == 4:
        output = output.contiguous(memory_format=suggest_memory_format(input))
    return output
