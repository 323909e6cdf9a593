"""What `check`, `bench` and the pytest-benchmark suite share: inputs for an op call, the call
on a backend, the error against torch in float64, and the timing of a call.

- `make_inputs`: seeded random tensors for one call (never zeros: they hide bugs and run
  faster than data), in any dtype, layout (contiguous, channels-last, a strided view), device.
- `call`: one call of a cnnops op on a named backend; returns every output to compare (the
  output, max_pool2d's indices, batch_norm's updated running stats).
- `float64_reference`: the same call by the torch backend on the same values in float64: the
  truth every backend and dtype is held to (torch in the input's own dtype is a contestant,
  not the referee).
- `rel_error` / `worst_error`: max |got - want| / max |want| in float64; NaNs must sit in
  the same places, integer outputs (indices) must be equal.
- `time_call`: the timing core (cnnops.tools.timing).
"""
from __future__ import annotations

import torch

import cnnops
from cnnops.tools.timing import Timing, time_call  # noqa: F401 (the harness's timing core)

OPS = ("conv2d", "max_pool2d", "avg_pool2d", "batch_norm")
DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
          "bfloat16": torch.bfloat16}
LAYOUTS = ("contiguous", "channels_last", "strided")
# Max relative error (max |a - b| / max |b|) against torch in float64, by dtype; float32 on
# CUDA allows for TF32 (cuDNN's default for convolutions).
TOLERANCE = {"float64": 1e-9, "float32": 5e-4, "float16": 1e-2, "bfloat16": 5e-2}
CUDA_FLOAT32_TOLERANCE = 5e-3
# The leaves a backward differentiates; running stats are state, not parameters.
DIFFERENTIABLE = ("input", "weight", "bias")


def tolerance(dtype, device) -> float:
    name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    if name == "float32" and torch.device(device).type == "cuda":
        return CUDA_FLOAT32_TOLERANCE
    return TOLERANCE[name]


def apply_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """`t` as channels-last (4-D only), as a non-contiguous view (every other column of a
    wider tensor), or as it is."""
    if layout == "channels_last" and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
        wide[..., ::2] = t
        return wide[..., ::2]
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return t


def random_tensor(shape, *, dtype=torch.float64, layout: str = "contiguous", device="cpu",
                  seed: int = 0) -> torch.Tensor:
    """One seeded standard-normal tensor (e.g. the gradient of an output), drawn as
    make_inputs draws: in float64 on the CPU, then cast and laid out."""
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(tuple(shape), generator=gen, dtype=torch.float64)
    return apply_layout(t.to(device=device, dtype=dtype), layout)


def make_inputs(op: str, input_shape, *, weight_shape=None, bias: bool = False,
                running_stats: bool = False, dtype=torch.float64, layout: str = "contiguous",
                device="cpu", seed: int = 0, nan: bool = False, scaled: bool = False,
                requires_grad: bool = False) -> dict[str, torch.Tensor]:
    """Seeded random tensors for one call of `op`.

    conv2d: `weight_shape` and `bias`; batch_norm: `weight_shape` (C,) for an affine weight,
    `bias`, `running_stats` (running_var drawn positive). Values are drawn in float64 from a
    CPU generator seeded with `seed`, then cast: the same seed gives the same values in every
    dtype and on every device. `scaled` draws layer-like values (conv weights ~ 1/sqrt(fan_in),
    batch-norm weights near 1) instead of standard normals. `nan` plants NaNs in the input.
    `requires_grad` marks input, weight and bias as leaves of a backward."""
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    gen = torch.Generator().manual_seed(seed)

    def draw(shape, scale=1.0, offset=0.0, positive=False):
        t = (torch.rand(shape, generator=gen, dtype=torch.float64) + 0.5 if positive else
             torch.randn(shape, generator=gen, dtype=torch.float64) * scale + offset)
        return t.to(device=device, dtype=dtype)

    x = draw(tuple(input_shape))
    if nan:
        where = torch.randint(x.numel(), (max(1, x.numel() // 20),), generator=gen)
        x.view(-1)[where.to(x.device)] = float("nan")
    tensors = {"input": apply_layout(x, layout)}
    if op == "conv2d":
        fan_in = 1
        for s in weight_shape[1:]:
            fan_in *= s
        tensors["weight"] = apply_layout(draw(tuple(weight_shape),
                                              fan_in ** -0.5 if scaled else 1.0), layout)
        if bias:
            tensors["bias"] = draw(tuple(weight_shape[:1]), 0.1 if scaled else 1.0)
    elif op == "batch_norm":
        c = input_shape[1]
        if weight_shape:
            tensors["weight"] = draw((c,), 0.2, 1.0) if scaled else draw((c,))
        if bias:
            tensors["bias"] = draw((c,), 0.2 if scaled else 1.0)
        if running_stats:
            tensors["running_mean"] = draw((c,))
            tensors["running_var"] = draw((c,), positive=True)
    elif op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    if requires_grad:
        for k in DIFFERENTIABLE:
            if k in tensors:
                tensors[k].requires_grad_()
    return tensors


def call(op: str, tensors: dict, options: dict, backend: str | None) -> list:
    """One call of cnnops' `op` on `backend` with `options` (the op's keyword arguments);
    every output to compare: [out], [out, indices] (max_pool2d), or [out, running_mean,
    running_var] (batch_norm; the running stats are updated in place, as in training)."""
    x = tensors["input"]
    if op == "conv2d":
        return [cnnops.conv2d(x, tensors["weight"], tensors.get("bias"), **options,
                              backend=backend)]
    if op == "max_pool2d":
        out, idx = cnnops.max_pool2d(x, **options, return_indices=True, backend=backend)
        return [out, idx]
    if op == "avg_pool2d":
        return [cnnops.avg_pool2d(x, **options, backend=backend)]
    if op == "batch_norm":
        out = cnnops.batch_norm(x, tensors.get("running_mean"), tensors.get("running_var"),
                                tensors.get("weight"), tensors.get("bias"), **options,
                                backend=backend)
        return [out, tensors.get("running_mean"), tensors.get("running_var")]
    raise ValueError(f"op must be one of {OPS}, got {op!r}")


def fresh_leaves(tensors: dict, layout: str | None = None, dtype=None) -> dict:
    """Copies of `tensors` (cast to `dtype` if given) that a call may mutate and a backward
    may differentiate: input, weight and bias become new leaves with requires_grad; a strided
    input stays strided (clone() keeps strides only of non-overlapping dense views)."""
    out = {}
    for k, v in tensors.items():
        if v is None:
            continue
        v = v.detach()
        # always a copy: the call updates running stats in place
        v = v.to(dtype, copy=True) if dtype is not None else v.clone()
        if k == "input" and layout is not None:
            v = apply_layout(v.clone(), layout)
        out[k] = v.requires_grad_(k in DIFFERENTIABLE)
    return out


def float64_reference(op: str, tensors: dict, options: dict, layout: str | None = None):
    """(outputs, leaves) of the torch backend on the same values in float64."""
    leaves = fresh_leaves(tensors, layout, torch.float64)
    return call(op, leaves, options, "torch"), leaves


def rel_error(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    """max |a - b| / max |b| in float64 (0 for two empty tensors); inf when the shapes, the
    NaN positions or (integer tensors) any value differ, or one of them is missing."""
    if a is None or b is None:
        return 0.0 if a is b else float("inf")
    if a.shape != b.shape:
        return float("inf")
    if not a.is_floating_point() or not b.is_floating_point():
        return 0.0 if torch.equal(a.cpu(), b.cpu()) else float("inf")
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if not torch.equal(a.isnan(), b.isnan()):
        return float("inf")
    a, b = a.nan_to_num(0.0), b.nan_to_num(0.0)
    if a.numel() == 0:
        return 0.0
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def worst_error(results, references) -> float:
    """The largest rel_error over pairs of outputs."""
    return max((rel_error(a, b) for a, b in zip(results, references)), default=0.0)
