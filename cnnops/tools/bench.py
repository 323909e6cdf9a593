"""Time cnnops' kernels against PyTorch's on this machine: a table, JSON and a PNG chart.

Every distinct conv, pool and batch-norm layer of the book's eight models (see
cnnops.tools.catalogue) is run by each backend at a training batch size; each result is checked
against the torch backend's output before it is timed, and reported as a time, a rate, a speed-up
over the torch backend timed in the same run (cuDNN on GPU, oneDNN on CPU; above 1 is faster),
and a fraction of this device's roofline, whose two ceilings (copy bandwidth, arithmetic
rate) are probed at the start and the end of the run (the better of the two is kept). The
default on CPU is 6 layers per op spread by work (under a minute); on GPU it is every layer.

  python -m cnnops bench                                   # CPU subset, or all layers on GPU
  python -m cnnops bench --device cuda --dtypes float32,bfloat16 --mode fwd,fwdbwd
  python -m cnnops bench --models resnet18 --ops conv2d --layouts channels_last --per-op 0
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

import cnnops
from cnnops import _fastest
from cnnops.tools import catalogue, harness, require, timing
from cnnops.tools.catalogue import Layer

# Backends that are loops or an interpreter on this device run only on layers under these
# flops (Triton's interpreter runs each program instance in Python: slower still than loops).
SLOW_BACKENDS = {"cpu": {"reference": 1e6, "triton": 2e4}, "cuda": {"reference": 1e6}}
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16}
# bench's layout names -> the harness's
LAYOUTS = {"nchw": "contiguous", "channels_last": "channels_last"}


def _csv(choices):
    def parse(text):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if items == ["all"] and choices:
            return list(choices)
        bad = [t for t in items if choices and t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{bad or text!r}: choose from {list(choices)}")
        return items
    return parse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None,
                        help="cpu or cuda (default: cuda when available, else cpu)")
    parser.add_argument("--models", type=_csv(catalogue.MODELS), default=list(catalogue.MODELS),
                        help="comma list of models whose layers to time, or all (default)")
    parser.add_argument("--ops", type=_csv(catalogue.OPS), default=list(catalogue.OPS),
                        help="comma list of ops (default: all four)")
    parser.add_argument("--backends", type=_csv(cnnops._dispatch.BACKEND_NAMES + ("fastest",)),
                        default=None,
                        help="comma list; torch is always timed, as the baseline (default: "
                             "every available backend; reference only when named; fastest: "
                             "the backend backend='fastest' picks per layer, shown in the "
                             "'chose' column)")
    parser.add_argument("--dtypes", type=_csv(DTYPES), default=["float32"],
                        help="comma list of float32, float64, float16, bfloat16")
    parser.add_argument("--layouts", type=_csv(LAYOUTS), default=["nchw"],
                        help="comma list of nchw, channels_last")
    parser.add_argument("--mode", type=_csv(catalogue.MODES), default=["fwd"],
                        help="fwd, fwdbwd (forward plus backward), or both")
    parser.add_argument("--batch", type=int, default=None,
                        help="batch size (default: 128 on cuda, 8 on cpu)")
    parser.add_argument("--per-op", type=int, default=None,
                        help="layers per op, spread from least to most work; 0 = every layer "
                             "(default: 6 on cpu, 0 on cuda)")
    parser.add_argument("--max-gflop", type=float, default=None,
                        help="skip layers whose forward at this batch exceeds this many GFLOP "
                             "(default: 2 on cpu, none on cuda)")
    parser.add_argument("--layer", action="append", default=[],
                        help="only layers whose name contains this text (repeatable)")
    parser.add_argument("--budget", type=float, default=0.1,
                        help="seconds of timed repeats per measurement (default 0.1)")
    parser.add_argument("--probe-budget", type=float, default=0.3,
                        help="seconds per probe of the device's ceilings and limits, run at "
                             "the start and the end (default 0.3)")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="time replays of a captured CUDA graph (no Python overhead)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch and the native kernels (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench-out",
                        help="folder for bench.json, bench.md, bench.png (default bench-out)")
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG chart")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def select_layers(models, ops, *, device="cpu", batch=8, per_op=None, max_gflop=None,
                  name_filters=()) -> list[Layer]:
    """The catalogue's layers to time: by op, filtered, then `per_op` spread by work."""
    cpu = torch.device(device).type == "cpu"
    per_op = (6 if cpu else 0) if per_op is None else per_op
    max_gflop = (2.0 if cpu else None) if max_gflop is None else max_gflop
    layers = catalogue.catalogue(tuple(models), tuple(ops))
    layers = [la for la in layers if all(f in la.name for f in name_filters)]
    if max_gflop:
        layers = [la for la in layers if la.flops(batch) <= max_gflop * 1e9]
    chosen = []
    for op in ops:
        chosen += catalogue.spread([la for la in layers if la.op == op], per_op, batch)
    return chosen


def call_options(layer: Layer) -> dict:
    """The keyword arguments of the layer's cnnops call (batch norm: training mode, batch
    statistics and running stats updated, the costly case of the two)."""
    o = layer.opts
    if layer.op == "conv2d":
        return {k: o[k] for k in ("stride", "padding", "dilation", "groups")}
    if layer.op == "max_pool2d":
        return {k: o[k] for k in ("kernel_size", "stride", "padding", "dilation", "ceil_mode")}
    if layer.op == "avg_pool2d":
        return {k: o[k] for k in ("kernel_size", "stride", "padding", "ceil_mode",
                                  "count_include_pad", "divisor_override")}
    return {"training": True, "momentum": 0.1, "eps": o["eps"]}


def make_inputs(layer: Layer, batch: int, dtype, layout: str, device, mode: str,
                seed: int = 0) -> dict:
    """Seeded layer-like random tensors for one call of `layer` (cnnops.tools.harness); with
    mode fwdbwd the differentiated leaves have requires_grad set, plus a `grad_output`."""
    o, c = layer.opts, layer.in_shape[0]
    shape = (batch, *layer.in_shape)
    if layer.op == "conv2d":
        kw = dict(weight_shape=(o["out_channels"], c // o["groups"], *o["kernel_size"]),
                  bias=o["bias"])
    elif layer.op == "batch_norm":
        kw = dict(weight_shape=(c,) if o["affine"] else None, bias=o["affine"],
                  running_stats=True)
    else:
        kw = {}
    inputs = harness.make_inputs(layer.op, shape, dtype=dtype, layout=LAYOUTS[layout],
                                 device=device, seed=seed, scaled=True,
                                 requires_grad=mode == "fwdbwd", **kw)
    if layer.op == "batch_norm":  # fresh running stats, as a new layer has them
        inputs["running_mean"].zero_()
        inputs["running_var"].fill_(1.0)
    if mode == "fwdbwd":
        inputs["grad_output"] = harness.random_tensor(
            (batch, *layer.out_shape), dtype=dtype, layout=LAYOUTS[layout], device=device,
            seed=seed + 1)
    return inputs


def forward(layer: Layer, inputs: dict, backend: str):
    """One call of the layer's cnnops op with `backend`; its output."""
    return harness.call(layer.op, inputs, call_options(layer), backend)[0]


def make_call(layer: Layer, inputs: dict, backend: str, mode: str):
    """A function of no arguments doing one fwd (or fwd plus bwd) call; returns the output
    (and the gradients of every differentiated input)."""
    if mode == "fwd":
        return lambda: (forward(layer, inputs, backend),)
    leaves = [t for k, t in inputs.items() if k in harness.DIFFERENTIABLE and t is not None]

    def fwdbwd():
        out = forward(layer, inputs, backend)
        return (out, *torch.autograd.grad(out, leaves, inputs["grad_output"]))
    return fwdbwd


def float64_reference(layer: Layer, inputs: dict, mode: str):
    """The torch backend's results on the same values in float64: what every backend, torch
    in the benchmarked dtype included, is checked against (cnnops.tools.harness)."""
    leaves = harness.fresh_leaves(inputs, dtype=torch.float64)
    for k in inputs:
        if k not in harness.DIFFERENTIABLE:
            leaves[k].requires_grad_(False)
    if mode != "fwdbwd":
        for k in harness.DIFFERENTIABLE:
            if k in leaves:
                leaves[k].requires_grad_(False)
    with torch.no_grad() if mode == "fwd" else torch.enable_grad():
        return [r.detach() for r in make_call(layer, leaves, "torch", mode)()]


def relative_error(results, references) -> float:
    """max over tensors of max |a - b| / max |b|, in float64 (cnnops.tools.harness)."""
    return harness.worst_error(results, references)


def tolerance(dtype, device) -> float:
    return harness.tolerance(dtype, device)


def default_backends(device) -> list[str]:
    slow = SLOW_BACKENDS[torch.device(device).type]
    return [b for b in cnnops.available_backends(device) if b not in slow]


def skip_reason(backend: str, layer: Layer, batch: int, device) -> str | None:
    """Why `backend` is not timed on this layer here, or None."""
    device = torch.device(device)
    if backend == "fastest":
        return None if cnnops.available_backends(device) else f"no backend on {device.type}"
    if backend not in cnnops.available_backends(device):
        reason = cnnops.get_backend(backend).unavailable_reason(device)
        return reason or f"backend {backend!r} not available on {device.type}"
    limit = SLOW_BACKENDS[device.type].get(backend)
    if limit is not None and layer.flops(batch) > limit:
        return (f"{backend} runs loops or an interpreter on {device.type}: only layers under "
                f"{limit:.0e} flops (try a batch of 1 and the lenet model)")
    return None


def measure(layer, batch, dtype, layout, mode, device, backends, args) -> list[dict]:
    """Every backend on one (layer, dtype, layout, mode): torch first, as the baseline."""
    inputs = make_inputs(layer, batch, dtype, layout, device, mode, args.seed)
    flops, nbytes = layer.flops(batch, mode), layer.min_bytes(batch, mode, dtype.itemsize)
    common = dict(layer=layer.name, op=layer.op, models=list(layer.models), batch=batch,
                  dtype=timing.dtype_name(dtype), layout=layout, mode=mode, flops=flops,
                  bytes=nbytes)
    rows, torch_s = [], None
    try:
        reference = float64_reference(layer, inputs, mode)
    except Exception as e:  # e.g. a float64 op torch lacks on this device
        reference, reference_error = None, f"{type(e).__name__}: {e}"
    for backend in ["torch"] + [b for b in backends if b != "torch"]:
        row = dict(common, backend=backend, status="ok")
        rows.append(row)
        reason = skip_reason(backend, layer, batch, device)
        if reason:
            row.update(status="skipped", reason=reason)
            continue
        call = make_call(layer, inputs, backend, mode)
        tuned_before = len(_fastest._details)
        try:
            results = call()
        except (cnnops.BackendUnavailableError, TypeError) as e:
            row.update(status="skipped", reason=f"{type(e).__name__}: {e}")
            continue
        except Exception as e:  # a kernel that fails is reported, and the run goes on
            row.update(status="error", reason=f"{type(e).__name__}: {e}")
            continue
        if reference is None:
            row.update(status="error", reason=f"torch in float64 failed ({reference_error}): "
                                              f"nothing to check this result against, so it "
                                              f"is not timed")
            continue
        if backend == "fastest":  # what it chose for this layer's keys (timed on the first call)
            new = list(_fastest._details.values())[tuned_before:]
            row["chose"] = "+".join(sorted({d["backend"] for d in new})) or "(cached)"
        row["rel_error"] = relative_error(results, reference)
        if not row["rel_error"] <= tolerance(dtype, device):
            row.update(status="wrong", reason=f"max|out - torch float64| / max|torch float64| "
                       f"= {row['rel_error']:.2e} > {tolerance(dtype, device):.0e}")
            continue
        try:
            t = timing.time_call(call, device, budget_s=args.budget, cuda_graph=args.cuda_graph)
        except Exception as e:  # e.g. a call that cannot be captured in a CUDA graph
            row.update(status="error", reason=f"while timing: {type(e).__name__}: {e}")
            continue
        torch_s = t.median_s if backend == "torch" else torch_s
        row.update(time_s=t.median_s, min_s=t.min_s, iqr_s=t.iqr_s, repeats=t.repeats,
                   tflops=flops / t.median_s / 1e12, gbps=nbytes / t.median_s / 1e9,
                   speedup=(torch_s / t.median_s) if torch_s else None)
    return rows


def add_roofline(rows, ceilings) -> None:
    """Each timed row's least possible time on this device, and the fraction reached."""
    for row in rows:
        row["roofline_floor_s"] = timing.roofline_floor_s(row["flops"], row["bytes"], ceilings,
                                                          row["dtype"])
        if row.get("time_s"):
            row["roofline"] = row["roofline_floor_s"] / row["time_s"]


def add_cpu_limits(rows, limits) -> None:
    """Each timed row's rate as a fraction of the CPU's FMA peak (flops) and of its copy
    bandwidth (bytes): how far each kernel is from what the hardware can do at all."""
    for row in rows:
        if not row.get("time_s"):
            continue
        # the probe is float32; float64 FMAs fill the same vector units with half the lanes
        lanes = {"float32": 1.0, "float64": 0.5}.get(row["dtype"])
        if limits.get("fma_peak_flops") and lanes:
            row["fma_peak_fraction"] = (row["flops"] / row["time_s"]
                                        / (lanes * limits["fma_peak_flops"]))
        if limits.get("copy_bandwidth"):
            row["copy_fraction"] = row["bytes"] / row["time_s"] / limits["copy_bandwidth"]


def run(args: argparse.Namespace) -> int:
    from cnnops.tools import report as bench_report

    if not args.no_chart:  # checked first: the chart is drawn after minutes of timing
        require("the PNG chart (or pass --no-chart)", "matplotlib")
    device = torch.device(args.device or default_device())
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench: --device cuda but torch sees no GPU here", file=sys.stderr)
        return 2
    batch = args.batch or (128 if device.type == "cuda" else 8)
    if args.threads:
        torch.set_num_threads(args.threads)  # OpenMP's count too: the native kernels share it
    dtypes = [DTYPES[d] for d in args.dtypes]
    backends = args.backends or default_backends(device)
    layers = select_layers(args.models, args.ops, device=device, batch=batch,
                           per_op=args.per_op, max_gflop=args.max_gflop,
                           name_filters=args.layer)
    started = time.perf_counter()
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if device.type == "cpu" and load > cores:
        threads = torch.get_num_threads()
        advice = ("; OpenMP threads wait for each other: try --threads 1" if threads > 1
                  else "")
        print(f"bench: warning: this machine is busy (load {load:.1f} on {cores} cores): CPU "
              f"timings with {threads} threads will be noisy{advice}", file=sys.stderr)
    print(f"bench: {len(layers)} layers x {len(dtypes)} dtypes x {len(args.layouts)} layouts x "
          f"{len(args.mode)} modes on {device} (batch {batch}), backends "
          f"{['torch'] + [b for b in backends if b != 'torch']}; measuring ceilings ...",
          flush=True)
    probe = args.probe_budget
    before = timing.measure_ceilings(device, dtypes, budget_s=probe)
    cpu = device.type == "cpu"
    limits_before = timing.cpu_limits(torch.get_num_threads(), probe) if cpu else None
    rows = []
    for i, layer in enumerate(layers):
        print(f"bench: [{i + 1}/{len(layers)}] {layer.name}", file=sys.stderr, flush=True)
        for dtype in dtypes:
            for layout in args.layouts:
                for mode in args.mode:
                    rows += measure(layer, batch, dtype, layout, mode, device, backends, args)
    # probed again at the end, the better of the two kept: a busy moment lowers one probe
    ceilings = timing.best_ceilings(before, timing.measure_ceilings(device, dtypes,
                                                                    budget_s=probe))
    add_roofline(rows, ceilings)
    if cpu:
        ceilings["cpu_limits"] = timing.best_cpu_limits(
            limits_before, timing.cpu_limits(torch.get_num_threads(), probe))
        add_cpu_limits(rows, ceilings["cpu_limits"])
    report = bench_report.Report(bench_report.environment(device), ceilings, rows,
                                 dict(vars(args), device=str(device), batch=batch,
                                      backends=backends, run=None),
                                 time.perf_counter() - started)
    print(report.table())
    paths = report.write(args.out, chart=not args.no_chart)
    print(f"bench: {len(rows)} results in {report.wall_s:.0f} s; wrote {', '.join(paths)}")
    failed = [r for r in rows if r["status"] in ("error", "wrong")]
    for r in failed:
        print(f"bench: {r['status'].upper()}: {r['backend']} on {r['layer']}: {r['reason']}",
              file=sys.stderr)
    return 1 if failed else 0
