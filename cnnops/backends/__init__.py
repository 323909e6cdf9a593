"""The backends: one module (or folder) each, never importing one another.

    reference.py   the book's loops (`cnnops.reference`), autograd through the loops
    torch.py       PyTorch's own ops, the baseline
    native.py      the C++/CUDA extension `cnnops._C` (kernels/): fakes and autograd of its ops
    triton/        the Triton kernels and their custom ops

Each module defines `BACKEND`, an instance of a `Backend` subclass; `cnnops._dispatch` imports
them and keeps the registry. A backend states what it can run (`dtypes`, `unavailable_reason`,
`refuses`) so the dispatcher can skip it under "auto" and explain why when it is named; its op
methods then receive arguments already validated by `cnnops._validate` and never raise for
user input.
"""
from __future__ import annotations

import torch


class BackendUnavailableError(RuntimeError):
    """A backend cannot run this call here (not built, no device, dtype unsupported...)."""


OPS = ("conv2d", "max_pool2d", "avg_pool2d", "batch_norm")


class Backend:
    """One implementation of the ops. Subclasses override the op methods.

    The op methods receive validated, normalised arguments: 4-D input for conv and
    pooling (N, C, H, W) in any memory format, int pairs for sizes, symmetric int
    padding for conv. They return tensors; the dispatcher restores 3-D shapes and
    the memory format PyTorch would give.
    """

    name: str = ""
    # dtypes this backend takes, by device type.
    dtypes: dict[str, tuple[torch.dtype, ...]] = {}

    def unavailable_reason(self, device: torch.device) -> str | None:
        """None when the backend can run tensors on `device`, else why not and how to fix it."""
        return None

    def refuses(self, op: str, tensors: dict[str, torch.Tensor | None], output_numel: int
                ) -> str | None:
        """None when this backend takes this particular call, else why not (a limit of the
        backend, e.g. int32 offsets), checked by the dispatcher before the call."""
        return None

    def emulated(self, device: torch.device) -> bool:
        """True when this backend only emulates its kernels on `device` (e.g. Triton's
        interpreter on the CPU): correct but far too slow to be timed or chosen for speed."""
        return False

    def supports_dtype(self, device: torch.device, dtype: torch.dtype) -> bool:
        return dtype in self.dtypes.get(device.type, ())

    def implements(self, op: str) -> bool:
        """Whether this backend has its own `op` (the base class's methods only raise)."""
        return getattr(type(self), op) is not getattr(Backend, op)

    # ops: each returns what the matching torch.nn.functional call returns
    def conv2d(self, input, weight, bias, stride, padding, dilation, groups, activation):
        raise BackendUnavailableError(f"backend {self.name!r} has no conv2d")

    def max_pool2d(self, input, kernel_size, stride, padding, dilation, ceil_mode,
                   need_indices=True):
        """Returns (output, indices); indices are int64 flat h * W + w per plane. With
        need_indices=False (the caller discards them) a backend may return None indices."""
        raise BackendUnavailableError(f"backend {self.name!r} has no max_pool2d")

    def avg_pool2d(self, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                   divisor_override):
        raise BackendUnavailableError(f"backend {self.name!r} has no avg_pool2d")

    def batch_norm(self, input, running_mean, running_var, weight, bias, training, momentum,
                   eps):
        """input is (N, C, *); running stats are updated in place when training."""
        raise BackendUnavailableError(f"backend {self.name!r} has no batch_norm")


class UnavailableBackend(Backend):
    """Stands in for a backend whose module could not be loaded; says why on every use."""

    def __init__(self, name: str, reason: str):
        self.name = name
        self.reason = reason

    def unavailable_reason(self, device):
        return self.reason
