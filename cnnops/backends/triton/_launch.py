"""What the kernel modules share: the interpreter switch, kernel launches, dtype helpers.

Importing this module imports Triton. `@triton.jit` decides when it decorates a kernel
(that is, when a kernel module is imported) whether the kernel is compiled for the GPU or
run by the interpreter; Triton 3.6-3.9 read TRITON_INTERPRET through
`triton.knobs.runtime.interpret` at that moment. So the choice is fixed by the environment at
the first Triton call of the process (the backend imports the kernel modules lazily).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch._prims_common import suggest_memory_format
from torch.library import wrap_triton

try:  # Triton >= 3.4 keeps its environment switches in `knobs`
    INTERPRETED = bool(triton.knobs.runtime.interpret)
except AttributeError:  # pragma: no cover - older Triton reads the variable directly
    INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _is_traced(arg) -> bool:
    """A fake, functional or symbolic argument: the op runs for shapes only (fake impl)."""
    if isinstance(arg, torch.SymInt | torch.SymFloat):
        return True
    if isinstance(arg, torch.Tensor):
        from torch._subclasses.fake_tensor import is_fake
        from torch._subclasses.functional_tensor import FunctionalTensor
        return is_fake(arg) or isinstance(arg, FunctionalTensor)
    return False


def launch(kernel, grid, *args, **meta) -> None:
    """kernel[grid](*args, **meta), traceable by torch.compile / make_fx.

    Compiled kernels go through `torch.library.wrap_triton` (a no-op in eager mode, a graph
    node under tracing). Interpreted kernels cannot be traced, so under fake or functional
    tracing (the fake impl of a `triton_op`, opcheck) nothing is launched: only the output
    shapes, already allocated by the caller, matter there.
    """
    if INTERPRETED:
        if any(_is_traced(a) for a in args):
            return
        kernel[grid](*args, **meta)
    else:
        wrap_triton(kernel)[grid](*args, **meta)


def kernel_op(name: str, *, mutates_args, use_triton_op: bool | None = None):
    """Registers `fn` as the custom op `name` (namespace cnnops_triton).

    On the GPU: `torch.library.triton_op`, so torch.compile sees the kernels inside (their
    launches go through `launch` -> wrap_triton) and the function itself is the fake impl.
    Under the interpreter the kernels cannot be traced: an opaque `torch.library.custom_op`
    with the same function as fake impl (`launch` skips the kernels on fake tensors).
    `use_triton_op` forces one branch (tests run the triton_op branch under the interpreter;
    see README.md, "Registration", for what that can and cannot show).
    """
    triton_op = (not INTERPRETED) if use_triton_op is None else use_triton_op

    def register(fn):
        if triton_op:
            return torch.library.triton_op(name, fn, mutates_args=mutates_args)
        op = torch.library.custom_op(name, fn, mutates_args=mutates_args)
        op.register_fake(fn)
        return op
    return register


def accumulator_type(dtype: torch.dtype):
    """fp32 accumulation for every dtype except float64."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def dot_precision(dtype: torch.dtype) -> str:
    """`input_precision` of tl.dot for float32 operands: TF32 as cuDNN would use it."""
    if dtype == torch.float32 and torch.backends.cudnn.allow_tf32 and not INTERPRETED:
        return "tf32"
    return "ieee"


def configs(full: list[triton.Config], interpreted: triton.Config) -> list[triton.Config]:
    """The autotune list: `full` on the GPU, one small config in the interpreter (tests)."""
    return [interpreted] if INTERPRETED else full


def autotune_top_k(kept: list[triton.Config]) -> list[triton.Config]:
    """The first CNNOPS_TRITON_TOPK of the configs a prune kept (all when unset or 0).

    Every new autotune key compiles and times each surviving config: fine for a long run, too
    slow for a 15-minute GPU window. The config lists are ordered best-first for Hopper, so the
    GPU proof sets CNNOPS_TRITON_TOPK=2 and tunes among the two most likely winners."""
    top_k = int(os.environ.get("CNNOPS_TRITON_TOPK", "0") or 0)
    return kept[:top_k] if top_k > 0 else kept


cdiv = triton.cdiv


# Exact arithmetic. On NVIDIA GPUs Triton lowers a float32 `/` to `div.full.f32` (about 2 ulp)
# and `tl.sqrt` to `sqrt.approx.f32`; PyTorch's kernels round correctly. `tl.div_rn` and
# `tl.sqrt_rn` are IEEE round-to-nearest (`div.rn.f32`, `sqrt.rn.f32`) but accept float32
# only; float64 `/` and `tl.sqrt` are already `div.rn.f64` / `sqrt.rn.f64`. Kernels that divide
# or take square roots of data (batch norm, average pooling) use these two.
@triton.jit
def div_rn(a, b, ACC_TYPE: tl.constexpr):
    """a / b rounded to nearest in ACC_TYPE (float32 or float64)."""
    if ACC_TYPE == tl.float64:
        q = a / b
    else:
        q = tl.div_rn(a, b)
    return q


@triton.jit
def sqrt_rn(a, ACC_TYPE: tl.constexpr):
    """sqrt(a) rounded to nearest in ACC_TYPE (float32 or float64)."""
    if ACC_TYPE == tl.float64:
        r = tl.sqrt(a)
    else:
        r = tl.sqrt_rn(a)
    return r


@triton.jit
def decode_nchw(idx, C, P, Q, CHANNELS_LAST: tl.constexpr):
    """Flat index in memory order of an (N, C, P, Q) tensor -> (n, c, p, q): channels
    fastest when CHANNELS_LAST, so neighbouring lanes touch neighbouring addresses."""
    if CHANNELS_LAST:
        c = idx % C
        q = (idx // C) % Q
        p = (idx // (C * Q)) % P
        n = idx // (C * Q * P)
    else:
        q = idx % Q
        p = (idx // Q) % P
        c = (idx // (Q * P)) % C
        n = idx // (Q * P * C)
    return n, c, p, q


def empty_like_format(x: torch.Tensor, shape, dtype=None) -> torch.Tensor:
    """A new (N, C, H, W) tensor in x's memory format (channels-last stays channels-last)."""
    return torch.empty(shape, dtype=x.dtype if dtype is None else dtype, device=x.device,
                       memory_format=suggest_memory_format(x))


def is_channels_last(t: torch.Tensor) -> bool:
    return suggest_memory_format(t) == torch.channels_last
