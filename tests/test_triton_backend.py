"""The `triton` backend's registration: name, dtypes, reasons, lazy and failure-free import."""
import os
import subprocess
import sys

import pytest
import torch

import cnnops
from cnnops.backends import triton as triton_kernels
from cnnops._dispatch import get_backend


def run_python(code: str, **env) -> str:
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    environment.update(env)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=environment, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_backend_is_registered_with_its_dtypes():
    backend = get_backend("triton")
    assert isinstance(backend, triton_kernels.TritonBackend) and backend.name == "triton"
    assert backend.dtypes["cuda"] == (torch.float32, torch.float64, torch.float16,
                                      torch.bfloat16)


def test_cpu_needs_the_interpreter(monkeypatch):
    backend = get_backend("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if triton_kernels._triton_missing() is None:
        assert backend.unavailable_reason(torch.device("cpu")) == triton_kernels.CPU_HINT
    assert backend.dtypes["cpu"] == ()
    assert "triton" not in cnnops.available_backends("cpu")
    with pytest.raises(cnnops.BackendUnavailableError, match="TRITON_INTERPRET=1"):
        cnnops.conv2d(torch.randn(1, 1, 3, 3), torch.randn(1, 1, 2, 2), backend="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backend.dtypes["cpu"] == (torch.float32, torch.float64)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_is_unavailable():
    reason = get_backend("triton").unavailable_reason(torch.device("cuda"))
    assert reason is not None and ("CUDA" in reason or "triton" in reason.lower())


def test_import_loads_no_triton_and_runs_nothing():
    out = run_python("import sys, cnnops, cnnops.backends.triton; "
                     "print('triton' in sys.modules, "
                     "any(m.startswith('cnnops.backends.triton.') for m in sys.modules))")
    assert out == "False False"


def test_import_without_triton_registers_a_reason():
    out = run_python("import sys; sys.modules['triton'] = None\n"
                     "import cnnops, torch\n"
                     "print(cnnops.get_backend('triton').unavailable_reason(torch.device('cuda')))",
                     TRITON_INTERPRET="1")
    assert "pip install triton>=3.6" in out


def test_tensors_past_int32_offsets_are_refused_not_miscomputed():
    """The limit is declared to the dispatcher (`refuses`): named, triton raises
    BackendUnavailableError; under auto the call moves on to the next backend."""
    from cnnops._dispatch import resolve
    from cnnops.backends.triton import TritonBackend
    huge = torch.empty(2**31 + 5, 1, 1, 1, device="meta")  # no memory behind it
    assert "2**31" in TritonBackend().refuses("max_pool2d", {"input": huge}, huge.numel())
    small = torch.empty(1, 1, 2**15, 2**15, device="meta")
    assert "output" in TritonBackend().refuses("conv2d", {"input": small, "weight": None}, 2**32)
    assert TritonBackend().refuses("conv2d", {"input": small}, 2**30) is None
    if "triton" in cnnops.available_backends("cpu"):
        cpu_huge = torch.empty(1, 1, 2**15, 2**15 // 8)
        with pytest.raises(cnnops.BackendUnavailableError, match="output"):
            resolve("triton", "conv2d", {"input": cpu_huge}, 2**31)
        assert resolve("auto", "conv2d", {"input": cpu_huge}, 2**31).name != "triton"
