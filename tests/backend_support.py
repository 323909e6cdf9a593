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


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


CPU_FLAGS = _cpu_flags()
_ISA_FLAGS = {"avx512": {"avx512f", "avx512vl", "avx512bw", "avx512dq"}, "avx2": {"avx2", "fma"},
              "baseline": set()}


def cpu_isas(*names):
    """The CNNOPS_CPU_ISA variants `names` (default: all three) as pytest params, those the
    CPU lacks skipped."""
    return [pytest.param(name, marks=pytest.mark.skipif(not _ISA_FLAGS[name] <= CPU_FLAGS,
                                                        reason=f"CPU has no {name}"))
            for name in names or ("avx512", "avx2", "baseline")]


def skip_module_without_triton():
    """Skips the calling test module when the triton backend cannot run here."""
    pytest.importorskip("triton")
    reason = cnnops.get_backend("triton").unavailable_reason(torch.device(TRITON_DEVICE))
    if reason is not None:
        pytest.skip(reason, allow_module_level=True)
