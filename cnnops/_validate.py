"""Argument checks shared by every backend: the one place user input is validated.

Each `*_args` function takes the arguments of a public op exactly as the user gave them and
returns them normalised (int pairs, 4-D input, symmetric padding), or raises ValueError /
TypeError / RuntimeError with a message naming the argument and its value.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from cnnops.shapes import output_size


def pair(name: str, value, *, minimum: int | None = None) -> tuple[int, int]:
    """int or a sequence of one or two ints -> (int, int), as torch.nn.modules.utils._pair."""
    if isinstance(value, (list, tuple, torch.Size)) and len(value) in (1, 2):
        items = tuple(value) * (3 - len(value))
    else:
        items = (value, value)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in items[:2]) or (
            isinstance(value, (list, tuple)) and len(value) not in (1, 2)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    h, w = items[:2]
    if minimum is not None and (h < minimum or w < minimum):
        kind = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return h, w


def check_float_tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")


def check_like(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """`t` must share `ref`'s dtype and device."""
    check_float_tensor(name, t)
    if t.device != ref.device:
        raise RuntimeError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; "
                           "move them to one device")
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has dtype {ref.dtype}")


def check_spatial_input(name: str, input) -> torch.Tensor:
    """3-D (C, H, W) or 4-D (N, C, H, W) with non-zero C, H, W; returns the 4-D view."""
    check_float_tensor(name, input)
    if input.dim() not in (3, 4):
        raise ValueError(f"{name} must be 3-D (C, H, W) or 4-D (N, C, H, W), "
                         f"got shape {tuple(input.shape)}")
    if any(s == 0 for s in input.shape[-3:]):
        raise ValueError(f"{name} must have non-zero channel and spatial sizes, "
                         f"got shape {tuple(input.shape)}")
    return input if input.dim() == 4 else input.unsqueeze(0)


def same_padding(kernel_size, dilation) -> tuple[tuple[int, int], tuple[int, int]]:
    """padding="same": (symmetric padding, extra bottom/right padding), as PyTorch splits it."""
    total = [d * (k - 1) for k, d in zip(kernel_size, dilation)]
    return (total[0] // 2, total[1] // 2), (total[0] % 2, total[1] % 2)


def conv2d_geometry(input_hw, kernel_size, stride, padding, dilation):
    """Normalises conv sizes; returns (kernel, stride, padding, extra, dilation, output_hw)."""
    h, w = pair("input_hw", tuple(input_hw), minimum=1)
    kernel_size = pair("kernel_size", kernel_size, minimum=1)
    stride = pair("stride", stride, minimum=1)
    dilation = pair("dilation", dilation, minimum=1)
    extra = (0, 0)
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            if stride != (1, 1):
                raise ValueError(f"padding='same' is not supported for strided convolutions, "
                                 f"got stride={stride}")
            padding, extra = same_padding(kernel_size, dilation)
        else:
            raise ValueError(f"padding must be 'same', 'valid', an int or a pair, got {padding!r}")
    else:
        padding = pair("padding", padding, minimum=0)
    out = tuple(output_size(n, k, s, p, d, extra_padding=e)
                for n, k, s, p, e, d in zip((h, w), kernel_size, stride, padding, extra, dilation))
    if min(out) < 1:
        raise ValueError(f"kernel_size={kernel_size} with dilation={dilation} is larger than the "
                         f"padded input {(h + 2 * padding[0] + extra[0], w + 2 * padding[1] + extra[1])}"
                         f" (input {(h, w)}, padding={padding})")
    return kernel_size, stride, padding, extra, dilation, out


def pool2d_geometry(input_hw, kernel_size, stride, padding, dilation, ceil_mode):
    """Normalises pooling sizes; returns (kernel, stride, padding, dilation, output_hw)."""
    h, w = pair("input_hw", tuple(input_hw), minimum=1)
    kernel_size = pair("kernel_size", kernel_size, minimum=1)
    stride = kernel_size if stride is None or (isinstance(stride, (list, tuple)) and
                                               len(stride) == 0) else pair("stride", stride, minimum=1)
    padding = pair("padding", padding, minimum=0)
    dilation = pair("dilation", dilation, minimum=1)
    if padding[0] > kernel_size[0] // 2 or padding[1] > kernel_size[1] // 2:
        raise ValueError(f"padding={padding} must be at most half of kernel_size={kernel_size}")
    out = tuple(output_size(n, k, s, p, d, bool(ceil_mode))
                for n, k, s, p, d in zip((h, w), kernel_size, stride, padding, dilation))
    if min(out) < 1:
        raise ValueError(f"kernel_size={kernel_size} with dilation={dilation} is larger than the "
                         f"padded input {(h + 2 * padding[0], w + 2 * padding[1])} "
                         f"(input {(h, w)}, padding={padding}): output size would be {out}")
    for axis, n in enumerate((h, w)):
        row = _empty_window(n, kernel_size[axis], stride[axis], padding[axis], dilation[axis],
                            out[axis])
        if row is not None:
            # PyTorch returns -inf and an index outside the plane there, and its backward
            # writes out of bounds: refuse instead.
            raise ValueError(f"pooling window {row} along {'HW'[axis]} covers no input element "
                             f"(input {(h, w)}, kernel_size={kernel_size}, stride={stride}, "
                             f"padding={padding}, dilation={dilation})")
    return kernel_size, stride, padding, dilation, out


def _empty_window(n, kernel, stride, pad, dilation, out):
    """The first output position whose dilated window holds only padding, or None.

    Only dilated windows can skip the input: an undilated one always overlaps it."""
    if dilation == 1:
        return None
    for t in range(out):
        start = t * stride - pad
        if not any(0 <= start + j * dilation < n for j in range(kernel)):
            return t
    return None


class Conv2dCall(NamedTuple):
    input: torch.Tensor       # 4-D, already padded by `extra` on the bottom/right if needed
    weight: torch.Tensor
    bias: torch.Tensor | None
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    activation: str | None
    unbatched: bool


def conv2d_args(input, weight, bias, stride, padding, dilation, groups, activation) -> Conv2dCall:
    x = check_spatial_input("input", input)
    check_like("weight", weight, "input", input)
    if weight.dim() != 4:
        raise ValueError(f"weight must be 4-D (C_out, C_in / groups, kH, kW), "
                         f"got shape {tuple(weight.shape)}")
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    c_in, c_out = x.shape[1], weight.shape[0]
    if c_out == 0 or c_out % groups:
        raise ValueError(f"weight has {c_out} output channels, which must be a positive "
                         f"multiple of groups={groups}")
    if c_in % groups or weight.shape[1] * groups != c_in:
        raise ValueError(f"input has {c_in} channels but weight of shape {tuple(weight.shape)} "
                         f"with groups={groups} expects {weight.shape[1] * groups}")
    if bias is not None:
        check_like("bias", bias, "input", input)
        if tuple(bias.shape) != (c_out,):
            raise ValueError(f"bias must have shape ({c_out},), got {tuple(bias.shape)}")
    if activation not in (None, "relu"):
        raise ValueError(f"activation must be None or 'relu', got {activation!r}")
    _, stride, padding, extra, dilation, _ = conv2d_geometry(
        x.shape[-2:], weight.shape[-2:], stride, padding, dilation)
    if extra != (0, 0):
        x = torch.nn.functional.pad(x, (0, extra[1], 0, extra[0]))
    return Conv2dCall(x, weight, bias, stride, padding, dilation, groups, activation,
                      input.dim() == 3)


class Pool2dCall(NamedTuple):
    input: torch.Tensor       # 4-D
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    ceil_mode: bool
    unbatched: bool


def pool2d_args(input, kernel_size, stride, padding, dilation, ceil_mode) -> Pool2dCall:
    x = check_spatial_input("input", input)
    kernel_size, stride, padding, dilation, _ = pool2d_geometry(
        x.shape[-2:], kernel_size, stride, padding, dilation, ceil_mode)
    return Pool2dCall(x, kernel_size, stride, padding, dilation, bool(ceil_mode),
                      input.dim() == 3)


def divisor_override_arg(divisor_override):
    if divisor_override is None:
        return None
    if (not isinstance(divisor_override, int) or isinstance(divisor_override, bool)
            or divisor_override == 0):
        raise ValueError(f"divisor_override must be None or a non-zero int, "
                         f"got {divisor_override!r}")
    return divisor_override


_REDUCED = (torch.float16, torch.bfloat16)


def batch_norm_layer_input(layer: str, input, dims: tuple[int, ...]) -> None:
    """The input rank a BatchNorm layer takes (torch.nn's `_check_input_dim`, raised here)."""
    check_float_tensor("input", input)
    if input.dim() not in dims:
        expected = " or ".join(f"{d}-D" for d in dims)
        raise ValueError(f"{layer} expects {expected} input, got {input.dim()}-D input of "
                         f"shape {tuple(input.shape)}")


def batch_norm_args(input, running_mean, running_var, weight, bias, training, momentum, eps):
    """Checks `F.batch_norm`'s arguments as torch does on the CPU; returns (momentum, eps)."""
    check_float_tensor("input", input)
    if input.dim() < 2:
        raise ValueError(f"input must be (N, C, *) with at least 2 dims, got shape "
                         f"{tuple(input.shape)}")
    c = input.shape[1]
    given = [(name, t) for name, t in (("running_mean", running_mean),
                                       ("running_var", running_var),
                                       ("weight", weight), ("bias", bias)) if t is not None]
    for name, t in given:
        check_float_tensor(name, t)
        if t.device != input.device:
            raise RuntimeError(f"{name} is on {t.device} but input is on {input.device}")
        if tuple(t.shape) != (c,):
            raise ValueError(f"{name} must have shape ({c},) for input with {c} channels, "
                             f"got {tuple(t.shape)}")
    # torch's dtype rule (ATen's batch_norm_cpu mixed-type check): the per-channel tensors
    # share one dtype, the input's, or float32 for a float16 / bfloat16 input (mixed
    # precision, the output keeps the input's dtype). Anything else is a TypeError here, so
    # every backend refuses alike instead of computing in the wider dtype.
    if given:
        first_name, first = given[0]
        for name, t in given[1:]:
            if t.dtype != first.dtype:
                raise TypeError(f"{name} has dtype {t.dtype} but {first_name} has dtype "
                                f"{first.dtype}; weight, bias and the running stats must "
                                f"share one dtype")
        allowed = (input.dtype, torch.float32) if input.dtype in _REDUCED else (input.dtype,)
        if first.dtype not in allowed:
            names = ", ".join(name for name, _ in given)
            raise TypeError(f"{names} have dtype {first.dtype} but input has dtype "
                            f"{input.dtype}; expected {' or '.join(map(str, allowed))}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together, got "
                         f"running_mean={'None' if running_mean is None else 'tensor'}, "
                         f"running_var={'None' if running_var is None else 'tensor'}")
    if not training and running_mean is None:
        raise ValueError("running_mean and running_var must be given when training=False")
    # torch's _verify_batch_size: one value per channel has no variance. An empty batch is
    # fine (torch returns an empty output and leaves the running stats alone).
    values_per_channel = input.shape[0] * math.prod(input.shape[2:])
    if training and values_per_channel == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input "
                         f"of shape {tuple(input.shape)}")
    if not isinstance(momentum, (int, float)) or isinstance(momentum, bool):
        raise TypeError(f"momentum must be a float, got {momentum!r}")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool):
        raise TypeError(f"eps must be a float, got {eps!r}")
    # torch: eps > 0 in training (eps = 0 divides a constant channel by zero), >= 0 in eval
    if training and not eps > 0:
        raise ValueError(f"batch_norm eps must be positive during training, got eps={eps!r}")
    if not eps >= 0:
        raise ValueError(f"batch_norm eps must be non-negative, got eps={eps!r}")
    return float(momentum), float(eps)


def choice(argument: str, value, allowed: tuple, what: str):
    """`value` if it is one of `allowed`, else ValueError naming the argument and the choices
    (backend names, the CNNOPS_CONV_ALGO variable, ...)."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{argument}={value!r} is not {what}; expected one of {tuple(allowed)}")
    return value
