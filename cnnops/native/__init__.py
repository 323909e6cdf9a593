"""The `native` backend: the C++ (CPU) and CUDA kernels of `kernels/`, built as `cnnops._C`.

Importing this module never fails. When the extension is not built (or was built without
CUDA kernels), the backend still registers and `unavailable_reason` says why and how to fix it.

conv2d on CUDA has two forward kernels, a teaching ladder (kernels/conv2d_cuda.cu): the
environment variable CNNOPS_CONV_ALGO picks one per call: "naive" (a thread per output),
"tiled" (shared-memory tiles), or "auto" (default: tiled where its shared memory fits, else
naive). On the CPU there is one C++ kernel and the variable is ignored.

All native ops compute in NCHW: channels-last input is copied to NCHW first, and
`cnnops.functional` gives the output PyTorch's memory format.
"""
from __future__ import annotations

import os

import torch

from cnnops._backends import Backend, register_backend

try:
    import cnnops._C as _C
except ImportError as error:  # not built, or built against another torch
    _C = None
    # a missing module is the common case; anything else (an ABI mismatch...) is worth showing
    _NOT_BUILT_DETAIL = ("" if isinstance(error, ModuleNotFoundError)
                         else f" (import failed: {error})")
else:
    from cnnops.native import ops as _ops  # noqa: F401  (fakes and autograd of the ops)

NOT_BUILT = "native extension not built: run `pip install --no-build-isolation -e .` in the repo"
NO_CUDA = ("native extension was built without CUDA kernels (torch without CUDA, nvcc not found "
           "or CNNOPS_BUILD_CUDA=0): rebuild with `pip install --no-build-isolation -e .` on a "
           "machine with CUDA torch and nvcc")

CONV_ALGOS = {"auto": 0, "naive": 1, "tiled": 2}


def conv_algo() -> int:
    """The CUDA conv2d forward kernel CNNOPS_CONV_ALGO asks for, as the op's `algo` int."""
    name = os.environ.get("CNNOPS_CONV_ALGO", "auto").strip().lower() or "auto"
    if name not in CONV_ALGOS:
        raise ValueError(f"CNNOPS_CONV_ALGO={name!r} is not a conv2d algorithm; expected one of "
                         f"{tuple(CONV_ALGOS)}")
    return CONV_ALGOS[name]


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
        return torch.ops.cnnops.conv2d(input, weight, bias, stride, padding, dilation, groups,
                                       activation == "relu", conv_algo())

    def max_pool2d(self, input, kernel_size, stride, padding, dilation, ceil_mode):
        return torch.ops.cnnops.max_pool2d(input, kernel_size, stride, padding, dilation,
                                           ceil_mode)

    def avg_pool2d(self, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                   divisor_override):
        return torch.ops.cnnops.avg_pool2d(input, kernel_size, stride, padding, ceil_mode,
                                           count_include_pad, divisor_override)

    def batch_norm(self, input, running_mean, running_var, weight, bias, training, momentum,
                   eps):
        from cnnops.native.batch_norm import batch_norm
        return batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)


register_backend(NativeBackend())
