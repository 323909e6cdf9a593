import os

import pytest
import torch

# The Triton backend runs CPU tensors only in Triton's interpreter, which reads this variable
# when triton is first imported: set it before anything imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import cnnops  # noqa: E402


def devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def backends_under_test(device="cpu", op=None):
    """Every backend to compare with torch on `device` (that has `op`): whatever is here."""
    return [b for b in cnnops.available_backends(device) if b != "torch"
            and (op is None or cnnops.get_backend(b).implements(op))]



@pytest.fixture
def isa(request, monkeypatch):
    """`parametrize("isa", cpu_isas(), indirect=True)`: CNNOPS_CPU_ISA set for the test."""
    monkeypatch.setenv("CNNOPS_CPU_ISA", request.param)
    return request.param


@pytest.fixture
def threads(request):
    """`parametrize("threads", [1, 2], indirect=True)`: torch's thread count for the test."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def pytest_terminal_summary(terminalreporter):
    """The counts of PyTorch's OpInfo/ModuleInfo samples run, passed and refused per backend."""
    from torch_samples import terminal_summary
    terminal_summary(terminalreporter)
