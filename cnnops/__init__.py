"""cnnops: convolution, pooling and batch norm for CNNs, from the book's loops to GPU kernels.

One interface, four backends (`reference`, `torch`, `native`, `triton`), chosen per call by name,
by "auto" (a fixed order) or by "fastest" (timed per call key); see API.md.
"""
from cnnops._dispatch import (BackendUnavailableError, available_backends, get_backend,
                              use_backend)
from cnnops.convert import convert
from cnnops.explain import explain
from cnnops.functional import avg_pool2d, batch_norm, conv2d, max_pool2d
from cnnops.shapes import conv2d_output_shape, pool2d_output_shape

__version__ = "0.1.0"

_SUBMODULES = ("nn", "reference", "models")


def __getattr__(name):
    # `cnnops.models.lenet()` etc. without importing the models at `import cnnops`
    if name in _SUBMODULES:
        import importlib
        return importlib.import_module(f"cnnops.{name}")
    raise AttributeError(f"module 'cnnops' has no attribute {name!r}")

__all__ = [
    "BackendUnavailableError", "available_backends", "get_backend", "use_backend",
    "conv2d", "max_pool2d", "avg_pool2d", "batch_norm",
    "conv2d_output_shape", "pool2d_output_shape", "convert", "explain", "__version__",
]

# Register the backends now, not lazily inside the first call: torch.compile traces calls
# and must find the registry already filled.
from cnnops._dispatch import _load as _load_backends  # noqa: E402

_load_backends()
