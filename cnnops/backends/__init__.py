"""Importing this package registers every backend.

Each backend module registers itself at import. The import of `native` and `triton` never
fails: when the extension is not built or Triton is missing, they register a backend that
raises `BackendUnavailableError` with the reason and the fix.
"""
from cnnops._backends import BACKEND_NAMES, UnavailableBackend, _registry, register_backend

_MODULES = {"torch": "cnnops.backends.torch_backend",
            "reference": "cnnops.backends.reference_backend",
            "native": "cnnops.native",
            "triton": "cnnops.triton_kernels"}

for _name in BACKEND_NAMES:
    try:
        __import__(_MODULES[_name])
    except ImportError as e:  # the module itself is broken or missing
        register_backend(UnavailableBackend(_name, f"{_MODULES[_name]} could not be imported: {e}"))
    if _name not in _registry:
        register_backend(UnavailableBackend(_name, f"{_MODULES[_name]} registered no backend"))
