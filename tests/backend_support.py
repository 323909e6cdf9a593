"""Skip marks and devices shared by the per-backend test files (native_*, triton_*)."""
import pytest
import torch

import cnnops

ON_GPU = torch.cuda.is_available()

NATIVE = cnnops.get_backend("native")
NATIVE_REASON = NATIVE.unavailable_reason(torch.device("cpu"))
# `pytestmark = native_only` skips a whole module when the extension is not built.
native_only = pytest.mark.skipif(NATIVE_REASON is not None,
                                 reason=f"native backend: {NATIVE_REASON}")
NATIVE_CUDA_REASON = NATIVE.unavailable_reason(torch.device("cuda")) if ON_GPU else "no CUDA device"
needs_cuda = pytest.mark.skipif(NATIVE_CUDA_REASON is not None,
                                reason=f"CUDA: {NATIVE_CUDA_REASON}")

# Triton runs CUDA tensors on a GPU, CPU tensors in its interpreter (tests/conftest.py sets
# TRITON_INTERPRET=1 before anything imports triton when there is no GPU).
TRITON_DEVICE = "cuda" if ON_GPU else "cpu"


def skip_module_without_triton():
    """Skips the calling test module when the triton backend cannot run here."""
    pytest.importorskip("triton")
    reason = cnnops.get_backend("triton").unavailable_reason(torch.device(TRITON_DEVICE))
    if reason is not None:
        pytest.skip(reason, allow_module_level=True)
