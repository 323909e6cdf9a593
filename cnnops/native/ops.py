"""Fake (meta) kernels and autograd of the native ops `torch.ops.cnnops.*`.

The schemas and the CPU/CUDA kernels are registered in C++ (`kernels/ops.cpp`, loaded by
`import cnnops._C`); this module, imported only after that, adds what `torch.compile` and
autograd need: a fake for every op (shapes only, no data), a backward for the three forward
ops built from the native backward ops, and a backward for each backward op (so double
backward, e.g. a gradient penalty, is exact too). Every op returns NCHW-contiguous tensors.
"""
from __future__ import annotations

import torch

from cnnops import _C  # noqa: F401  (registers the op schemas and kernels)

ops = torch.ops.cnnops


def _out_size(size, kernel, stride, pad, dilation, ceil_mode=False):
    """One spatial output size, as index_math.h's output_size (SymInt-friendly)."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out = out - 1
    return out


def _pool_out_shape(input, kernel_size, stride, padding, dilation, ceil_mode):
    n, c, h, w = input.shape
    return (n, c, _out_size(h, kernel_size[0], stride[0], padding[0], dilation[0], ceil_mode),
            _out_size(w, kernel_size[1], stride[1], padding[1], dilation[1], ceil_mode))


# ---- fakes ----------------------------------------------------------------------------------

@torch.library.register_fake("cnnops::conv2d")
def _conv2d_fake(input, weight, bias, stride, padding, dilation, groups, relu=False, algo=0):
    n, _, h, w = input.shape
    kh, kw = weight.shape[2:]
    return input.new_empty((n, weight.shape[0],
                            _out_size(h, kh, stride[0], padding[0], dilation[0]),
                            _out_size(w, kw, stride[1], padding[1], dilation[1])))


@torch.library.register_fake("cnnops::conv2d_backward_input")
def _conv2d_backward_input_fake(grad_output, input, weight, stride, padding, dilation, groups):
    return input.new_empty(input.shape)


@torch.library.register_fake("cnnops::conv2d_backward_weight")
def _conv2d_backward_weight_fake(grad_output, input, weight, stride, padding, dilation, groups):
    return weight.new_empty(weight.shape)


@torch.library.register_fake("cnnops::conv2d_backward_bias")
def _conv2d_backward_bias_fake(grad_output):
    return grad_output.new_empty((grad_output.shape[1],))


@torch.library.register_fake("cnnops::max_pool2d")
def _max_pool2d_fake(input, kernel_size, stride, padding, dilation, ceil_mode):
    shape = _pool_out_shape(input, kernel_size, stride, padding, dilation, ceil_mode)
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int64)


@torch.library.register_fake("cnnops::max_pool2d_backward")
def _max_pool2d_backward_fake(grad_output, input, indices, kernel_size, stride, padding,
                              dilation, ceil_mode):
    return input.new_empty(input.shape)


@torch.library.register_fake("cnnops::avg_pool2d")
def _avg_pool2d_fake(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override):
    return input.new_empty(_pool_out_shape(input, kernel_size, stride, padding, (1, 1),
                                           ceil_mode))


@torch.library.register_fake("cnnops::avg_pool2d_backward")
def _avg_pool2d_backward_fake(grad_output, input, kernel_size, stride, padding, ceil_mode,
                              count_include_pad, divisor_override):
    return input.new_empty(input.shape)


# ---- autograd -------------------------------------------------------------------------------

def _conv2d_setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups, relu, _algo = inputs
    ctx.save_for_backward(input, weight, output if relu else None)
    ctx.conv_args = (stride, padding, dilation, groups)
    ctx.has_bias = bias is not None


def _conv2d_backward(ctx, grad):
    """Gradients of conv2d(+ReLU) from the native backward kernels.

    The fused ReLU is undone first: the gradient passes where the output is positive (an
    elementwise torch op). Then grad_input is the transposed convolution of grad
    (`conv2d_backward_input`), grad_weight the correlation of input with grad
    (`conv2d_backward_weight`), grad_bias the sum of grad over N, H, W
    (`conv2d_backward_bias`); each is computed only when needed.
    """
    input, weight, relu_output = ctx.saved_tensors
    if relu_output is not None:
        grad = torch.where(relu_output > 0, grad, torch.zeros_like(grad))
    grad_input = grad_weight = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_input = ops.conv2d_backward_input(grad, input, weight, *ctx.conv_args)
    if ctx.needs_input_grad[1]:
        grad_weight = ops.conv2d_backward_weight(grad, input, weight, *ctx.conv_args)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_bias = ops.conv2d_backward_bias(grad)
    return grad_input, grad_weight, grad_bias, None, None, None, None, None, None


def _max_pool2d_setup_context(ctx, inputs, output):
    input = inputs[0]
    ctx.save_for_backward(input, output[1])
    ctx.pool_args = inputs[1:]
    ctx.mark_non_differentiable(output[1])


def _max_pool2d_backward(ctx, grad, _grad_indices):
    """grad_input: each output's gradient added to the input element its index names
    (`max_pool2d_backward`); the indices get no gradient."""
    input, indices = ctx.saved_tensors
    return (ops.max_pool2d_backward(grad, input, indices, *ctx.pool_args),
            None, None, None, None, None)


def _avg_pool2d_setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.pool_args = inputs[1:]


def _avg_pool2d_backward(ctx, grad):
    """grad_input: each output's gradient divided by its divisor and spread over its window
    (`avg_pool2d_backward`)."""
    (input,) = ctx.saved_tensors
    return (ops.avg_pool2d_backward(grad, input, *ctx.pool_args),
            None, None, None, None, None, None)


torch.library.register_autograd("cnnops::conv2d", _conv2d_backward,
                                setup_context=_conv2d_setup_context)
torch.library.register_autograd("cnnops::max_pool2d", _max_pool2d_backward,
                                setup_context=_max_pool2d_setup_context)
torch.library.register_autograd("cnnops::avg_pool2d", _avg_pool2d_backward,
                                setup_context=_avg_pool2d_setup_context)


# ---- double backward: every backward op is linear in its gradient argument ------------------

def _save_all_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*(t for t in inputs if isinstance(t, torch.Tensor)))
    ctx.args = tuple(a for a in inputs if not isinstance(a, torch.Tensor))


def _conv2d_backward_input_backward(ctx, gg):
    """grad_input = B(grad, weight) is the adjoint of conv2d in its input, so for an upstream
    gg: d/dgrad = conv2d(gg, weight) and d/dweight = conv2d_backward_weight(grad, gg)."""
    grad, input, weight = ctx.saved_tensors
    d_grad = d_weight = None
    if ctx.needs_input_grad[0]:
        d_grad = ops.conv2d(gg, weight, None, *ctx.args)
    if ctx.needs_input_grad[2]:
        d_weight = ops.conv2d_backward_weight(grad, gg, weight, *ctx.args)
    return d_grad, None, d_weight, None, None, None, None


def _conv2d_backward_weight_backward(ctx, gg):
    """grad_weight = B(grad, input) is the adjoint of conv2d in its weight, so for an upstream
    gg: d/dgrad = conv2d(input, gg) and d/dinput = conv2d_backward_input(grad, input, gg)."""
    grad, input, weight = ctx.saved_tensors
    d_grad = d_input = None
    if ctx.needs_input_grad[0]:
        d_grad = ops.conv2d(input, gg, None, *ctx.args)
    if ctx.needs_input_grad[1]:
        d_input = ops.conv2d_backward_input(grad, input, gg, *ctx.args)
    return d_grad, d_input, None, None, None, None, None


def _conv2d_backward_bias_backward(ctx, gg):
    """grad_bias sums grad over N, H, W: its gradient broadcasts gg back (a torch op)."""
    (grad,) = ctx.saved_tensors
    return gg.view(1, -1, 1, 1).expand_as(grad)


def _max_pool2d_backward_backward(ctx, gg):
    """grad_input adds grad at the indices: its gradient reads gg at the indices (torch gather)."""
    grad, input, indices = ctx.saved_tensors
    d_grad = gg.flatten(2).gather(2, indices.flatten(2)).view_as(grad)
    return d_grad, None, None, None, None, None, None, None


def _avg_pool2d_backward_backward(ctx, gg):
    """grad_input is the adjoint of avg_pool2d: its gradient is avg_pool2d of gg."""
    return (ops.avg_pool2d(gg, *ctx.args), None, None, None, None, None, None, None)


for _name, _backward in (("conv2d_backward_input", _conv2d_backward_input_backward),
                         ("conv2d_backward_weight", _conv2d_backward_weight_backward),
                         ("conv2d_backward_bias", _conv2d_backward_bias_backward),
                         ("max_pool2d_backward", _max_pool2d_backward_backward),
                         ("avg_pool2d_backward", _avg_pool2d_backward_backward)):
    torch.library.register_autograd(f"cnnops::{_name}", _backward,
                                    setup_context=_save_all_setup_context)
