"""The public ops: validate once, pick a backend, call it, give PyTorch's output layout."""
from __future__ import annotations

import torch

from torch._prims_common import suggest_memory_format

from cnnops import _validate
from cnnops._dispatch import dispatch
from cnnops.shapes import conv2d_output_hw, pool2d_output_hw


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    """The layout PyTorch's kernels give their output for input `t` (by stride order)."""
    return suggest_memory_format(t) if t.dim() == 4 else torch.contiguous_format


def _conv_memory_format(input: torch.Tensor, weight: torch.Tensor) -> torch.memory_format:
    # PyTorch (cuDNN, oneDNN and the slow path alike): channels-last if input or weight is.
    if torch.channels_last in (_memory_format(input), _memory_format(weight)):
        return torch.channels_last
    return torch.contiguous_format


def _finish(out: torch.Tensor, memory_format, unbatched: bool) -> torch.Tensor:
    out = out.contiguous(memory_format=memory_format)
    return out.squeeze(0) if unbatched else out


def _pool_numel(call) -> int:
    n, c, h, w = call.input.shape
    out_h, out_w = pool2d_output_hw((h, w), call.kernel_size, call.stride, call.padding,
                                    call.dilation, call.ceil_mode)
    return n * c * out_h * out_w


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           backend=None, activation=None):
    """`torch.nn.functional.conv2d`, plus `activation=None | "relu"` fused after the bias."""
    call = _validate.conv2d_args(input, weight, bias, stride, padding, dilation, groups,
                                 activation)
    x = call.input
    out_hw = conv2d_output_hw(x.shape[-2:], call.weight.shape[-2:], call.stride, call.padding,
                              call.dilation)
    out = dispatch("conv2d", backend,
                   (x, call.weight, call.bias, call.stride, call.padding, call.dilation,
                    call.groups, call.activation),
                   {"input": x, "weight": call.weight, "bias": call.bias},
                   x.shape[0] * call.weight.shape[0] * out_hw[0] * out_hw[1])
    return _finish(out, _conv_memory_format(input, weight), call.unbatched)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False, *, backend=None):
    """`torch.nn.functional.max_pool2d`; indices are flat h * W + w per plane, int64."""
    call = _validate.pool2d_args(input, kernel_size, stride, padding, dilation, ceil_mode)
    out, indices = dispatch("max_pool2d", backend,
                            (call.input, call.kernel_size, call.stride, call.padding,
                             call.dilation, call.ceil_mode, bool(return_indices)),
                            {"input": call.input}, _pool_numel(call))
    fmt = _memory_format(input)
    out = _finish(out, fmt, call.unbatched)
    return (out, _finish(indices, fmt, call.unbatched)) if return_indices else out


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None, *, backend=None):
    """`torch.nn.functional.avg_pool2d`."""
    call = _validate.pool2d_args(input, kernel_size, stride, padding, 1, ceil_mode)
    divisor_override = _validate.divisor_override_arg(divisor_override)
    out = dispatch("avg_pool2d", backend,
                   (call.input, call.kernel_size, call.stride, call.padding, call.ceil_mode,
                    bool(count_include_pad), divisor_override),
                   {"input": call.input}, _pool_numel(call))
    return _finish(out, _memory_format(input), call.unbatched)


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, backend=None):
    """`torch.nn.functional.batch_norm` on (N, C), (N, C, L) or (N, C, H, W) input."""
    momentum, eps = _validate.batch_norm_args(input, running_mean, running_var, weight, bias,
                                              training, momentum, eps)
    out = dispatch("batch_norm", backend,
                   (input, running_mean, running_var, weight, bias, bool(training), momentum,
                    eps),
                   {"input": input, "running_mean": running_mean, "running_var": running_var,
                    "weight": weight, "bias": bias}, input.numel())
    return out.contiguous(memory_format=_memory_format(input))
