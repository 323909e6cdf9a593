"""Output sizes of convolution and pooling (d2l 7.3, "Padding and Stride"): the one formula.

    out = floor((n + p_before + p_after - d(k - 1) - 1) / s) + 1

with PyTorch's ceil_mode for pooling: round up instead, but drop a last window that would
start in the right padding. `output_size` is the only place this is written: validation, the
fake kernels and every Python backend call it; the C++ and CUDA kernels receive the sizes from
their caller. It is plain integer arithmetic, so it also works on torch.SymInt sizes.
"""
from __future__ import annotations


def output_size(size, kernel, stride, padding, dilation=1, ceil_mode=False, extra_padding=0):
    """One spatial output size: `size` input elements, `padding` on both sides (plus
    `extra_padding` after), a window of `kernel` taps `dilation` apart, moved by `stride`.

    A result < 1 means the window does not fit (callers decide; validation raises).
    """
    span = size + 2 * padding + extra_padding - dilation * (kernel - 1) - 1
    # floor division as PyTorch's div_rtn; with ceil_mode a last window may overhang the input
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    # ceil_mode: the last window must start inside the input or its left padding
    if ceil_mode and (out - 1) * stride >= size + padding:
        out = out - 1
    return out


def conv2d_output_hw(input_hw, kernel_size, stride, padding, dilation) -> tuple:
    """(H_out, W_out) for normalised (int pair) arguments; see `conv2d_output_shape`."""
    return tuple(output_size(*a) for a in zip(input_hw, kernel_size, stride, padding, dilation))


def pool2d_output_hw(input_hw, kernel_size, stride, padding, dilation, ceil_mode) -> tuple:
    """(H_out, W_out) for normalised (int pair) arguments; see `pool2d_output_shape`."""
    return tuple(output_size(*a, ceil_mode)
                 for a in zip(input_hw, kernel_size, stride, padding, dilation))


def conv2d_output_shape(input_hw, kernel_size, stride=1, padding=0, dilation=1) -> tuple[int, int]:
    """(H_out, W_out) of `F.conv2d` on an (H, W) input; padding may be "same" or "valid".

    Raises ValueError when the window does not fit the padded input or an argument is out of
    range (the validation layer's checks and messages)."""
    from cnnops._validate import conv2d_geometry
    return conv2d_geometry(input_hw, kernel_size, stride, padding, dilation)[-1]


def pool2d_output_shape(input_hw, kernel_size, stride=None, padding=0, dilation=1,
                        ceil_mode=False) -> tuple[int, int]:
    """(H_out, W_out) of `F.max_pool2d` / `F.avg_pool2d` on an (H, W) input."""
    from cnnops._validate import pool2d_geometry
    return pool2d_geometry(input_hw, kernel_size, stride, padding, dilation, ceil_mode)[-1]
