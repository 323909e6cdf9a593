"""pytest-benchmark suite: one file per op, one group per layer, one entry per backend.

    pytest benchmarks/                                   # a small CPU subset, about a minute
    pytest benchmarks/ --bench-device cuda --benchmark-json=bench.json   # every layer on GPU
    pytest benchmarks/bench_conv2d.py --bench-models resnet18 --bench-layout channels_last

The layers come from the catalogue of the book's eight models (cnnops.tools.catalogue); every backend
available on the device gets an entry (`reference` and CPU `triton`, which run loops or an
interpreter, only on tiny layers: skipped otherwise). Each backend's result is checked against
the torch backend's in float64 before it is timed (the shared harness, cnnops.tools.harness:
inputs, calls, error measure; timing.py is its timing core). On CUDA the timed function ends with a synchronize and
each round starts on a cold L2 (the untimed setup overwrites a buffer twice its size).
"""
import os
import re

import pytest
import torch

if not torch.cuda.is_available():  # Triton's interpreter reads this when triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

import cnnops  # noqa: E402
from cnnops.tools import bench, catalogue, timing  # noqa: E402


def pytest_addoption(parser):
    group = parser.getgroup("cnnops benchmarks")
    group.addoption("--bench-device", default=None, help="cpu or cuda (default: cuda if any)")
    group.addoption("--bench-models", default="all", help="comma list of models, or all")
    group.addoption("--bench-per-op", type=int, default=None,
                    help="layers per op spread by work, 0 = all (default: 2 on cpu, 0 on cuda)")
    group.addoption("--bench-batch", type=int, default=None,
                    help="batch size (default: 128 on cuda, 8 on cpu)")
    group.addoption("--bench-dtype", default="float32", choices=sorted(bench.DTYPES))
    group.addoption("--bench-layout", default="nchw", choices=sorted(bench.LAYOUTS))
    group.addoption("--bench-mode", default="fwd", choices=catalogue.MODES)
    group.addoption("--bench-rounds", type=int, default=None,
                    help="timed rounds per entry (default: 5 on cpu, 50 on cuda)")


def pytest_collect_file(file_path, parent):
    """Collects bench_*.py here whatever the repository's python_files says."""
    patterns = parent.config.getini("python_files")
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)
            and not any(file_path.match(p) for p in patterns)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def _settings(config) -> dict:
    device = torch.device(config.getoption("--bench-device") or bench.default_device())
    cpu = device.type == "cpu"
    models = config.getoption("--bench-models")
    per_op = config.getoption("--bench-per-op")
    return dict(device=device,
                models=list(catalogue.MODELS) if models == "all" else models.split(","),
                per_op=(2 if cpu else 0) if per_op is None else per_op,
                batch=config.getoption("--bench-batch") or (8 if cpu else 128),
                dtype=bench.DTYPES[config.getoption("--bench-dtype")],
                layout=config.getoption("--bench-layout"), mode=config.getoption("--bench-mode"),
                rounds=config.getoption("--bench-rounds") or (5 if cpu else 50))


class BenchCase:
    """One (layer, backend) entry: checks the backend against torch, then times it."""

    def __init__(self, layer, backend, settings):
        self.layer, self.backend, self.s = layer, backend, settings

    def run(self, benchmark):
        s, layer = self.s, self.layer
        if s["device"].type == "cuda" and not torch.cuda.is_available():
            pytest.skip("--bench-device cuda but torch sees no GPU")
        reason = bench.skip_reason(self.backend, layer, s["batch"], s["device"])
        if reason:
            pytest.skip(reason)
        inputs = bench.make_inputs(layer, s["batch"], s["dtype"], s["layout"], s["device"],
                                   s["mode"])
        call = bench.make_call(layer, inputs, self.backend, s["mode"])
        try:
            results = call()
        except (cnnops.BackendUnavailableError, TypeError) as e:
            pytest.skip(f"{type(e).__name__}: {e}")
        # every backend, torch included, against torch in float64 (cnnops.tools.harness)
        reference = bench.float64_reference(layer, inputs, s["mode"])
        error = bench.relative_error(results, reference)
        tol = bench.tolerance(s["dtype"], s["device"])
        assert error <= tol, (f"{self.backend} differs from torch in float64: "
                              f"{error:.2e} > {tol:.0e}")
        flops = layer.flops(s["batch"], s["mode"])
        nbytes = layer.min_bytes(s["batch"], s["mode"], s["dtype"].itemsize)
        benchmark.group = f"{layer.name} | {timing.dtype_name(s['dtype'])} {s['layout']} " \
                          f"{s['mode']} batch {s['batch']}"
        benchmark.extra_info.update(layer=layer.name, op=layer.op, models=list(layer.models),
                                    backend=self.backend, flops=flops, bytes=nbytes)
        if s["device"].type == "cuda":
            flush = torch.empty(2 * timing._l2_bytes() // 4, dtype=torch.int32, device="cuda")

            def timed():
                call()
                torch.cuda.synchronize()  # the host clock stops when the GPU is done

            def setup():
                flush.zero_()  # a cold L2, untimed
                torch.cuda.synchronize()
            benchmark.pedantic(timed, setup=setup, rounds=s["rounds"], warmup_rounds=3)
        else:
            benchmark.pedantic(call, rounds=s["rounds"], warmup_rounds=1)
        median = benchmark.stats.stats.median
        benchmark.extra_info.update(tflops=flops / median / 1e12, gbps=nbytes / median / 1e9)


def pytest_generate_tests(metafunc):
    if "bench_case" not in metafunc.fixturenames:
        return
    s = _settings(metafunc.config)
    op = metafunc.module.OP
    layers = bench.select_layers(s["models"], [op], device=s["device"], batch=s["batch"],
                                 per_op=s["per_op"])
    backends = ["torch"] + [b for b in cnnops.available_backends(s["device"]) if b != "torch"]
    cases = [BenchCase(layer, b, s) for layer in layers for b in backends]
    ids = [re.sub(r"[^\w.>-]+", "_", f"{c.layer.name}-{c.backend}") for c in cases]
    metafunc.parametrize("bench_case", cases, ids=ids)
