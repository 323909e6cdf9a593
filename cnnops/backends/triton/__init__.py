"""The `triton` backend: Triton kernels for conv2d, max/avg pooling and batch norm.

Importing this package never imports Triton and never fails: it registers `TritonBackend`,
whose `unavailable_reason` says what is missing. The kernels, one module per op (`conv2d.py`,
`max_pool2d.py`, `avg_pool2d.py`, `batch_norm.py`), and their custom ops (namespace
`cnnops_triton`) are imported on the first call. That first import fixes whether the kernels are compiled for the GPU or run by
Triton's interpreter: set TRITON_INTERPRET=1 before the first triton call to run on CPU
tensors (tiny shapes only). See README.md in this folder.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys

import torch

from cnnops.backends import Backend, BackendUnavailableError

MIN_TRITON = (3, 6)
INSTALL_HINT = "pip install triton>=3.6"
CPU_HINT = ("Triton runs on CUDA; for CPU tensors set TRITON_INTERPRET=1 "
            "(interpreter, tiny shapes only)")
_KERNEL_MODULES = ("conv2d", "max_pool2d", "avg_pool2d", "batch_norm")


_UNKNOWN = object()
_missing = _UNKNOWN  # _triton_missing's answer, once known (a global torch.compile can read)


def _triton_missing() -> str | None:
    global _missing
    if _missing is _UNKNOWN:
        _missing = _find_triton_problem()
    return _missing


def _find_triton_problem() -> str | None:
    """Why Triton cannot be used at all, without importing it; None when it can."""
    try:
        found = importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # a stub or a None entry in sys.modules
        found = False
    if not found:
        return f"Triton is not installed: {INSTALL_HINT}"
    try:
        version = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:  # e.g. a source checkout: trust it
        return None
    major_minor = tuple(int(v) for v in version.split(".")[:2] if v.isdigit())
    if major_minor < MIN_TRITON:
        return f"Triton {version} is too old: {INSTALL_HINT}"
    return None


def _interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _kernels_interpreted() -> bool | None:
    """How the kernels were built, if they are loaded already (None: not yet)."""
    launch = sys.modules.get("cnnops.backends.triton._launch")
    return None if launch is None else launch.INTERPRETED


_ops_loaded = False


def ops():
    """The kernel modules (imported on first use): `ops().conv2d.conv2d` etc."""
    global _ops_loaded
    if _ops_loaded:  # no import machinery on the hot path (torch.compile cannot trace it)
        return sys.modules[__name__]
    try:
        for name in _KERNEL_MODULES:
            importlib.import_module(f"{__name__}.{name}")
    except Exception as e:  # a broken Triton install, or a torch without triton_op
        raise BackendUnavailableError(
            f"the Triton kernels could not be loaded ({type(e).__name__}: {e}); "
            f"{INSTALL_HINT} and torch>=2.11") from e
    _ops_loaded = True
    return sys.modules[__name__]


INT32_LIMIT = 2**31


class TritonBackend(Backend):
    name = "triton"

    @property
    def dtypes(self):
        floats = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
        # the interpreter's bf16 tl.dot is wrong and fp16 is untested there: CPU takes fp32/fp64
        cpu = (torch.float32, torch.float64) if _interpret_requested() else ()
        return {"cuda": floats, "cpu": cpu}

    def unavailable_reason(self, device) -> str | None:
        device = torch.device(device)
        missing = _triton_missing()
        if missing is not None:
            return missing
        if device.type == "cuda":
            if not torch.cuda.is_available():
                return "CUDA is not available here (no GPU or no driver); Triton needs one"
            return None
        if device.type == "cpu":
            if not _interpret_requested():
                return CPU_HINT
            if _kernels_interpreted() is False:
                return ("the Triton kernels were loaded for the GPU before TRITON_INTERPRET=1 "
                        "was set; set it before the first triton call of the process")
            return None
        return f"Triton runs on CUDA tensors, not on {device.type}"

    def emulated(self, device) -> bool:
        """CPU tensors run only in Triton's interpreter: never timed by "fastest"."""
        return torch.device(device).type == "cpu"

    def refuses(self, op, tensors, output_numel):
        """The kernels address memory with int32 offsets: tensors of 2**31 elements or more
        would overflow them (auto then moves on to native or torch)."""
        sizes = {name: t.numel() for name, t in tensors.items() if t is not None}
        sizes["output"] = output_numel
        for name, size in sizes.items():
            if size >= INT32_LIMIT:
                return (f"the Triton kernels take tensors of fewer than 2**31 elements, but "
                        f"{name} has {size}; use backend='native' (int64 indexing) or 'torch'")
        return None

    def conv2d(self, input, weight, bias, stride, padding, dilation, groups, activation):
        return ops().conv2d.conv2d(input, weight, bias, list(stride), list(padding),
                                   list(dilation), groups, activation == "relu")

    def max_pool2d(self, input, kernel_size, stride, padding, dilation, ceil_mode,
                   need_indices=True):
        return ops().max_pool2d.max_pool2d(input, list(kernel_size), list(stride),
                                           list(padding), list(dilation), bool(ceil_mode))

    def avg_pool2d(self, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                   divisor_override):
        return ops().avg_pool2d.avg_pool2d(input, list(kernel_size), list(stride),
                                           list(padding), bool(ceil_mode),
                                           bool(count_include_pad), divisor_override)

    def batch_norm(self, input, running_mean, running_var, weight, bias, training, momentum,
                   eps):
        """The op is functional: it returns the new running estimates (training with running
        statistics), copied here into the caller's buffers, as every backend does."""
        output, _, _, new_mean, new_var = ops().batch_norm.batch_norm(
            input, weight, bias, running_mean, running_var, bool(training), float(momentum),
            float(eps))
        if training and running_mean is not None:
            with torch.no_grad():
                running_mean.copy_(new_mean)
                running_var.copy_(new_var)
        return output


BACKEND = TritonBackend()
