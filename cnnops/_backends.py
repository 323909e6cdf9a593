"""The backend registry: which implementation runs a call.

Every public op validates its arguments once (``cnnops._validate``), then asks
``resolve`` for a ``Backend`` and calls the backend's method of the same name with
normalised arguments. A backend module registers one ``Backend`` instance at import.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

BACKEND_NAMES = ("reference", "torch", "native", "triton")

# The order "auto" tries, per device type; `reference` is never chosen automatically.
AUTO_ORDER = {"cuda": ("triton", "native", "torch"), "cpu": ("native", "torch")}


class BackendUnavailableError(RuntimeError):
    """A backend cannot run this call here (not built, no device, dtype unsupported...)."""


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

    def supports_dtype(self, device: torch.device, dtype: torch.dtype) -> bool:
        return dtype in self.dtypes.get(device.type, ())

    def implements(self, op: str) -> bool:
        """Whether this backend has its own `op` (the base class's methods only raise)."""
        return getattr(type(self), op) is not getattr(Backend, op)

    # ops: each returns what the matching torch.nn.functional call returns
    def conv2d(self, input, weight, bias, stride, padding, dilation, groups, activation):
        raise BackendUnavailableError(f"backend {self.name!r} has no conv2d")

    def max_pool2d(self, input, kernel_size, stride, padding, dilation, ceil_mode):
        """Returns (output, indices); indices are int64 flat h * W + w per plane."""
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


_registry: dict[str, Backend] = {}
# The default backend for calls with backend=None: process-wide, like torch.backends flags
# (a plain global, so torch.compile reads it and guards on it).
_default = "auto"


def register_backend(backend: Backend) -> None:
    if backend.name not in BACKEND_NAMES:
        raise ValueError(f"unknown backend name {backend.name!r}; expected one of {BACKEND_NAMES}")
    _registry[backend.name] = backend


def _load() -> dict[str, Backend]:
    if len(_registry) < len(BACKEND_NAMES):
        from cnnops import backends  # noqa: F401  (registers every backend it can load)
    return _registry


def check_backend_name(name) -> str:
    if name is None:
        return _default
    if not isinstance(name, str) or (name != "auto" and name not in BACKEND_NAMES):
        raise ValueError(f"backend={name!r} is not a backend; expected one of "
                         f"{('auto',) + BACKEND_NAMES}")
    return name


def get_backend(name: str) -> Backend:
    return _load()[check_backend_name(name)]


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Sets the default backend for the calls inside the `with` block."""
    global _default
    previous, _default = _default, check_backend_name(name)
    try:
        yield
    finally:
        _default = previous


def available_backends(device="cpu") -> list[str]:
    """The backends that can run a tensor on `device` on this machine."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return []
    return [n for n, b in _load().items() if b.unavailable_reason(device) is None
            and b.dtypes.get(device.type)]


def _dtype_error(device, dtype, name):
    takers = [n for n, b in _load().items()
              if b.unavailable_reason(device) is None and b.supports_dtype(device, dtype)]
    return TypeError(f"backend {name!r} does not support dtype {dtype} on {device.type}; "
                     f"backends that take it here: {takers}")


def resolve(name, device: torch.device, dtype: torch.dtype, op: str) -> Backend:
    """The backend that runs `op` with tensors of `dtype` on `device`."""
    name = check_backend_name(name)
    registry = _load()
    if name == "auto":
        for candidate in AUTO_ORDER.get(device.type, ("torch",)):
            b = registry[candidate]
            if (b.unavailable_reason(device) is None and b.implements(op)
                    and b.supports_dtype(device, dtype)):
                return b
        return registry["torch"]
    backend = registry[name]
    reason = backend.unavailable_reason(device)
    if reason is not None:
        raise BackendUnavailableError(f"backend {name!r} cannot run on {device}: {reason}")
    if not backend.implements(op):
        others = [n for n, b in registry.items() if b.implements(op)
                  and b.unavailable_reason(device) is None]
        raise BackendUnavailableError(f"backend {name!r} has no {op}; backends with {op} "
                                      f"here: {others}")
    if not backend.supports_dtype(device, dtype):
        raise _dtype_error(device, dtype, name)
    return backend
