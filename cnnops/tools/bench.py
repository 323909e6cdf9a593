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
from cnnops.tools import catalogue, timing
from cnnops.tools.catalogue import Layer

# Backends that are loops or an interpreter on this device run only on layers under these
# flops (Triton's interpreter runs each program instance in Python: slower still than loops).
SLOW_BACKENDS = {"cpu": {"reference": 1e6, "triton": 2e4}, "cuda": {"reference": 1e6}}
# ||out - ref|| / ||ref|| against the torch backend, by dtype (CUDA float32 may use TF32).
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 5e-3,
             torch.bfloat16: 3e-2}
CUDA_FLOAT32_TOLERANCE = 5e-3
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16}
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


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
    parser.add_argument("--backends", type=_csv(cnnops._dispatch.BACKEND_NAMES), default=None,
                        help="comma list; torch is always timed, as the baseline (default: "
                             "every available backend; reference only when named)")
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


def make_inputs(layer: Layer, batch: int, dtype, layout: str, device, mode: str,
                seed: int = 0) -> dict:
    """Seeded random tensors for one call of `layer` (never zeros: they can hide bugs and run
    faster than data). Leaves that the backward differentiates have requires_grad set."""
    gen = torch.Generator().manual_seed(seed)
    fmt = LAYOUTS[layout]
    grad = mode == "fwdbwd"

    def rand(*shape, scale=1.0, offset=0.0, memory_format=torch.contiguous_format):
        t = (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale + offset)
        t = t.to(device=device, dtype=dtype)
        if len(shape) == 4:
            t = t.contiguous(memory_format=memory_format)
        return t.requires_grad_(grad)

    o = layer.opts
    c = layer.in_shape[0]
    inputs = {"input": rand(batch, *layer.in_shape, memory_format=fmt)}
    if layer.op == "conv2d":
        fan_in = c // o["groups"] * o["kernel_size"][0] * o["kernel_size"][1]
        inputs["weight"] = rand(o["out_channels"], c // o["groups"], *o["kernel_size"],
                                scale=fan_in ** -0.5, memory_format=fmt)
        inputs["bias"] = rand(o["out_channels"], scale=0.1) if o["bias"] else None
    elif layer.op == "batch_norm":
        inputs["running_mean"] = torch.zeros(c, device=device, dtype=dtype)
        inputs["running_var"] = torch.ones(c, device=device, dtype=dtype)
        inputs["weight"] = rand(c, scale=0.2, offset=1.0) if o["affine"] else None
        inputs["bias"] = rand(c, scale=0.2) if o["affine"] else None
    if grad:
        out_fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        inputs["grad_output"] = rand(batch, *layer.out_shape, memory_format=out_fmt
                                     ).requires_grad_(False)
    return inputs


def forward(layer: Layer, inputs: dict, backend: str):
    """One call of the layer's cnnops op with `backend`."""
    o, x = layer.opts, inputs["input"]
    if layer.op == "conv2d":
        return cnnops.conv2d(x, inputs["weight"], inputs["bias"], o["stride"], o["padding"],
                             o["dilation"], o["groups"], backend=backend)
    if layer.op == "max_pool2d":
        return cnnops.max_pool2d(x, o["kernel_size"], o["stride"], o["padding"], o["dilation"],
                                 o["ceil_mode"], backend=backend)
    if layer.op == "avg_pool2d":
        return cnnops.avg_pool2d(x, o["kernel_size"], o["stride"], o["padding"], o["ceil_mode"],
                                 o["count_include_pad"], o["divisor_override"], backend=backend)
    # training mode: batch statistics, running stats updated, the costly case of the two
    return cnnops.batch_norm(x, inputs["running_mean"], inputs["running_var"], inputs["weight"],
                             inputs["bias"], True, 0.1, o["eps"], backend=backend)


def make_call(layer: Layer, inputs: dict, backend: str, mode: str):
    """A function of no arguments doing one fwd (or fwd plus bwd) call; returns the output
    (and the gradients of every differentiated input)."""
    if mode == "fwd":
        return lambda: (forward(layer, inputs, backend),)
    leaves = [t for k, t in inputs.items() if t is not None and t.requires_grad]

    def fwdbwd():
        out = forward(layer, inputs, backend)
        return (out, *torch.autograd.grad(out, leaves, inputs["grad_output"]))
    return fwdbwd


def relative_error(results, references) -> float:
    """max over tensors of ||a - b|| / ||b||, in float64."""
    worst = 0.0
    for a, b in zip(results, references):
        a, b = a.detach().double(), b.detach().double()
        if a.shape != b.shape:
            return float("inf")
        worst = max(worst, float((a - b).norm() / b.norm().clamp_min(1e-30)))
    return worst


def tolerance(dtype, device) -> float:
    if dtype == torch.float32 and torch.device(device).type == "cuda":
        return CUDA_FLOAT32_TOLERANCE
    return TOLERANCE[dtype]


def default_backends(device) -> list[str]:
    slow = SLOW_BACKENDS[torch.device(device).type]
    return [b for b in cnnops.available_backends(device) if b not in slow]


def skip_reason(backend: str, layer: Layer, batch: int, device) -> str | None:
    """Why `backend` is not timed on this layer here, or None."""
    device = torch.device(device)
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
    rows, reference, torch_s = [], None, None
    for backend in ["torch"] + [b for b in backends if b != "torch"]:
        row = dict(common, backend=backend, status="ok")
        rows.append(row)
        reason = skip_reason(backend, layer, batch, device)
        if reason:
            row.update(status="skipped", reason=reason)
            continue
        call = make_call(layer, inputs, backend, mode)
        try:
            results = call()
        except (cnnops.BackendUnavailableError, TypeError) as e:
            row.update(status="skipped", reason=f"{type(e).__name__}: {e}")
            continue
        except Exception as e:  # a kernel that fails is reported, and the run goes on
            row.update(status="error", reason=f"{type(e).__name__}: {e}")
            continue
        if backend == "torch":
            reference = [r.detach().clone() for r in results]
        elif reference is None:
            row.update(status="error", reason="the torch baseline failed: nothing to check "
                                              "this result against, so it is not timed")
            continue
        else:
            row["rel_error"] = relative_error(results, reference)
            if not row["rel_error"] <= tolerance(dtype, device):
                row.update(status="wrong", reason=f"||out - torch|| / ||torch|| = "
                           f"{row['rel_error']:.2e} > {tolerance(dtype, device):.0e}")
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


def run(args: argparse.Namespace) -> int:
    from cnnops.tools import report as bench_report

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
    before = timing.measure_ceilings(device, dtypes)
    rows = []
    for i, layer in enumerate(layers):
        print(f"bench: [{i + 1}/{len(layers)}] {layer.name}", file=sys.stderr, flush=True)
        for dtype in dtypes:
            for layout in args.layouts:
                for mode in args.mode:
                    rows += measure(layer, batch, dtype, layout, mode, device, backends, args)
    # probed again at the end, the better of the two kept: a busy moment lowers one probe
    ceilings = timing.best_ceilings(before, timing.measure_ceilings(device, dtypes))
    add_roofline(rows, ceilings)
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
