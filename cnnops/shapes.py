"""Output-shape formulas of convolution and pooling (d2l 7.3, "Padding and Stride").

    out = floor((n + 2p - d(k - 1) - 1) / s) + 1

with PyTorch's ceil_mode for pooling: round up instead, but drop a last window that would
start in the right padding.
"""
from cnnops._validate import conv2d_geometry, pool2d_geometry


def conv2d_output_shape(input_hw, kernel_size, stride=1, padding=0, dilation=1) -> tuple[int, int]:
    """(H_out, W_out) of `F.conv2d` on an (H, W) input; padding may be "same" or "valid"."""
    return conv2d_geometry(input_hw, kernel_size, stride, padding, dilation)[-1]


def pool2d_output_shape(input_hw, kernel_size, stride=None, padding=0, dilation=1,
                        ceil_mode=False) -> tuple[int, int]:
    """(H_out, W_out) of `F.max_pool2d` / `F.avg_pool2d` on an (H, W) input."""
    return pool2d_geometry(input_hw, kernel_size, stride, padding, dilation, ceil_mode)[-1]
