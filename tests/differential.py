"""Shared body of the per-op differential tests: Cases against torch on every backend."""
import pytest
import torch

from cnnops.tools.check import Case, compare, fuzz_cases
from conftest import backends_under_test, devices

# Random cases per backend and op: the Python loops and the Triton interpreter are slow.
FUZZ_COUNT = {"reference": 20, "native": 60, "triton": 10}


def params(op: str, edges: list[Case], seed: int) -> list:
    """pytest params (backend, device, case): the edge cases, then seeded random ones."""
    out = []
    for device in devices():
        for backend in backends_under_test(device, op):
            fuzz = fuzz_cases(op, FUZZ_COUNT.get(backend, 20), seed)
            for i, case in enumerate(edges + fuzz):
                name = case.name or f"fuzz{i - len(edges)}"
                out.append(pytest.param(backend, device, case, id=f"{backend}-{device}-{name}"))
    return out


def check_case(backend: str, device: str, case: Case) -> None:
    if device == "cpu" and case.dtype in ("float16", "bfloat16"):
        pytest.skip("half types are CUDA-only")
    result = compare(case, backend, device)
    assert result.ok, (f"{backend} on {device} differs from torch: forward rel err "
                       f"{result.forward:.3g}, backward {result.backward:.3g} (tolerance "
                       f"{result.tolerance:g}) {result.error}\n  replay: compare({case!r}, "
                       f"{backend!r}, {device!r})")


def first_mismatches(got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float, k=5):
    """Text listing the first k positions where got and want differ beyond tolerance."""
    bad = ~torch.isclose(got, want, atol=atol, rtol=rtol, equal_nan=True)
    where = bad.nonzero()[:k].tolist()
    return "; ".join(f"{tuple(i)}: got {got[tuple(i)].item():.6g}, want {want[tuple(i)].item():.6g}"
                     for i in where)


def assert_close(got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float, what: str):
    """Same shape and values (NaN where torch has NaN); a failure lists the first mismatches."""
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert torch.allclose(got, want, atol=atol, rtol=rtol, equal_nan=True), (
        f"{what} differs from torch: {first_mismatches(got, want, atol, rtol)}")
