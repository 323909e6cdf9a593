"""Dispatch: which backend runs a call.

Every public op validates its arguments once (``cnnops._validate``), then calls ``dispatch``,
which picks a ``Backend`` and calls the backend's method of the same name with the normalised
arguments. The registry is filled at ``import cnnops`` from the ``BACKEND`` of each module of
``cnnops.backends``; a module that cannot be imported is replaced by an ``UnavailableBackend``
that says why.

Backend names: one of BACKEND_NAMES runs exactly that backend (or raises
BackendUnavailableError / TypeError saying why it cannot); "auto" takes the first usable backend
of AUTO_ORDER; "fastest" times the usable backends once per call key and keeps the winner
(``cnnops._fastest``).
"""
from __future__ import annotations

import contextlib
import importlib
from typing import Iterator

import torch

from cnnops import _validate
from cnnops.backends import Backend, BackendUnavailableError, UnavailableBackend

BACKEND_NAMES = ("reference", "torch", "native", "triton")
# Names that choose a backend per call rather than naming one.
CHOOSERS = ("auto", "fastest")

# The order "auto" tries, per device type; `reference` is never chosen automatically.
AUTO_ORDER = {"cuda": ("triton", "native", "torch"), "cpu": ("native", "torch")}


_registry: dict[str, Backend] = {}
# The default backend for calls with backend=None: process-wide, like torch.backends flags
# (a plain global, so torch.compile reads it and guards on it).
_default = "auto"


_MODULES = {"reference": "cnnops.backends.reference", "torch": "cnnops.backends.torch",
            "native": "cnnops.backends.native", "triton": "cnnops.backends.triton"}


def _load() -> dict[str, Backend]:
    """The registry, filled on first use (at `import cnnops`, so torch.compile finds it full)."""
    if len(_registry) < len(BACKEND_NAMES):
        for name in BACKEND_NAMES:
            try:
                backend = importlib.import_module(_MODULES[name]).BACKEND
            except (ImportError, AttributeError) as e:  # the module is broken or missing
                backend = UnavailableBackend(name, f"{_MODULES[name]} could not be loaded: {e}")
            _registry[name] = backend
    return _registry


def check_backend_name(name) -> str:
    if name is None:
        return _default
    return _validate.choice("backend", name, CHOOSERS + BACKEND_NAMES, "a backend")


def get_backend(name: str) -> Backend:
    """The backend object registered under `name` (not "auto" / "fastest": they choose per call)."""
    return _load()[_validate.choice("backend", check_backend_name(name), BACKEND_NAMES,
                                    "one backend (auto and fastest choose per call)")]


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


def _usable(backend: Backend, op: str, device, dtype, tensors, output_numel) -> str | None:
    """None when `backend` can run this call, else why not."""
    reason = backend.unavailable_reason(device)
    if reason is None and not backend.implements(op):
        reason = f"it has no {op}"
    if reason is None and not backend.supports_dtype(device, dtype):
        reason = f"it does not support dtype {dtype} on {device.type}"
    if reason is None:
        reason = backend.refuses(op, tensors, output_numel)
    return reason


def resolve(name, op: str, tensors: dict, output_numel: int) -> Backend:
    """The backend that runs `op` on `tensors` (name -> tensor or None; "input" first), for a
    backend name or "auto" ("fastest" needs the call itself: see `dispatch`).

    "auto" takes the first usable backend of AUTO_ORDER for the input's device (torch when
    none is); a named backend that cannot run the call raises BackendUnavailableError, or
    TypeError when only the dtype is the problem.
    """
    return _resolve(check_backend_name(name), op, tensors, output_numel)[0]


def _resolve(name: str, op: str, tensors: dict, output_numel: int) -> tuple[Backend, str]:
    """(backend, why it was chosen) for a backend name or "auto"."""
    registry = _load()
    input = tensors["input"]
    device, dtype = input.device, input.dtype
    if name == "auto":
        order = AUTO_ORDER.get(device.type, ("torch",))
        skipped = []
        for candidate in order:
            reason = _usable(registry[candidate], op, device, dtype, tensors, output_numel)
            if reason is None:
                why = f"auto: first usable of {order}"
                return registry[candidate], why + (f" ({'; '.join(skipped)})" if skipped else "")
            skipped.append(f"{candidate} skipped: {reason}")
        return registry["torch"], f"auto: none of {order} usable ({'; '.join(skipped)})"
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
    reason = backend.refuses(op, tensors, output_numel)
    if reason is not None:
        raise BackendUnavailableError(f"backend {name!r} cannot run this {op}: {reason}")
    return backend, "named"


def candidates(op: str, tensors: dict, output_numel: int) -> dict[str, Backend | str]:
    """Every backend but `reference`, mapped to itself if it can run this call at speed, else
    to why not ("fastest" times the former; emulated kernels, e.g. Triton's interpreter, are
    never timed)."""
    device = tensors["input"].device
    found = {}
    for name, backend in _load().items():
        if name == "reference":
            continue
        reason = _usable(backend, op, device, tensors["input"].dtype, tensors, output_numel)
        if reason is None and backend.emulated(device):
            reason = f"its kernels are only emulated on {device.type}"
        found[name] = backend if reason is None else reason
    return found


# `cnnops.explain` sets this to a list; every dispatched call then appends what ran and why.
_recorder: list | None = None


def dispatch(op: str, name, args: tuple, tensors: dict, output_numel: int):
    """Runs `op` with validated, normalised `args` on the backend `name` chooses."""
    name = check_backend_name(name)
    device = tensors["input"].device
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError(f"no backend can run on {device} here: CUDA is not "
                                      "available (no GPU or no driver, or a CPU build of torch)")
    if name == "fastest":
        from cnnops import _fastest
        backend, why = _fastest.choose(op, args, tensors, output_numel)
    else:
        backend, why = _resolve(name, op, tensors, output_numel)
    if _recorder is not None:
        _recorder.append({"op": op, "requested": name, "backend": backend.name, "why": why})
    return getattr(backend, op)(*args)
