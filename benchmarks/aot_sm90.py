"""Ahead-of-time sm_90 (H100/H200) compile of every Triton kernel the triton backend launches.

No GPU is needed. The kernels are found by running, not by a list: in this process (WITHOUT
TRITON_INTERPRET) every `launch(kernel, grid, *args, **meta)` of the kernel modules is recorded
instead of run, while the ops are called on meta tensors (no memory, no arithmetic) for the
layers of the book's models (cnnops.tools.catalogue), in every dtype mode (bf16, fp16, fp32
with TF32, fp32 IEEE, fp64) and layout (NCHW, channels-last), forward and backward. Each
recorded launch is then bound the way Triton's own launcher binds it on an sm_90 device (its
binder decides which ints are constants, which pointers are 16-byte aligned, ...), for every
autotune config of the kernel, and each distinct (kernel, specialisation, config) is compiled
with `triton.compile(..., target=GPUTarget("cuda", 90, 32))` (ptxas from Triton's wheel).

Fails (exit 1) on a compile error, shared memory over 227 KB per block, or register spills
(local memory) in a bf16/fp16/TF32 compile; fp32-IEEE and fp64 spills are reported only
(those modes are for checking, not speed). A kernel module that cannot be imported or an op that
cannot be recorded (work in progress) fails too, with its error, unless --allow-unrecorded.

Per kernel it prints configs, registers, spills, shared memory and compile time, whether
tensor-core instructions appear (HGMMA/HMMA/DMMA in the SASS, wgmma/mma in the PTX) where the
kernel has a `tl.dot`, and for the innermost loop holding the MMAs: instructions per MMA and
the integer share of the loop's instructions (the address arithmetic of an implicit GEMM).
The JSON it writes (--json) is read by `benchmarks/gpu_proof.sh --plan`.

  .venv/bin/python benchmarks/aot_sm90.py                      # CI: everything, table + JSON
  .venv/bin/python benchmarks/aot_sm90.py --kernels conv2d_fwd --modes bf16 --sass-dir /tmp/s
  .venv/bin/python benchmarks/aot_sm90.py --record-only        # list the launches, no compile
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import contextlib
import glob
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("aot_sm90: unset TRITON_INTERPRET: the kernels must be loaded for the GPU")

# Triton's on-disk cache, kept between runs: a rerun recompiles only the kernels whose source
# (or Triton) changed, so CI pays the cold compile once per change. Compile times measured
# cold are kept in the JSON across runs (see merge_cold_times).
os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(
    os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "cnnops", "triton-sm90"))
CACHE_HIT_S = 0.25  # a compile this fast came from the cache

import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SHARED_LIMIT = 227 * 1024  # bytes of shared memory one block may use on sm_90
# dtype modes: (name, torch dtype, cudnn.allow_tf32). Spills fail the run in the fast modes.
MODES = {"bf16": (torch.bfloat16, True), "fp16": (torch.float16, True),
         "tf32": (torch.float32, True), "fp32": (torch.float32, False),
         "fp64": (torch.float64, True)}
FAST_MODES = ("bf16", "fp16", "tf32")
LAYOUTS = ("nchw", "channels_last")
# SASS opcodes: tensor-core MMAs, and the integer ALU ops of the address arithmetic.
MMA_OPS = ("HGMMA", "HMMA", "DMMA", "IMMA", "QGMMA", "IGMMA", "BGMMA")
INT_OPS = ("IMAD", "IADD", "IADD3", "IADD32I", "LOP3", "LOP", "SHF", "SHL", "SHR", "LEA",
           "ISETP", "IMNMX", "IABS", "SEL", "ISCADD", "PRMT", "BMSK", "SGXT", "POPC", "FLO",
           "IMUL", "VIMNMX", "I2F", "F2I", "BREV", "ICMP", "IMNMX3")


# ----------------------------------------------------------------------------- recording

class Launch:
    """One recorded `launch(kernel, grid, *args, **meta)` and where it came from."""

    def __init__(self, kernel, grid, args, meta, context):
        self.kernel, self.grid, self.args, self.meta, self.context = kernel, grid, args, meta, context


def kernel_name(kernel) -> str:
    return jit_function(kernel).__name__


def jit_function(kernel):
    """The JITFunction under Autotuner / Heuristics wrappers."""
    from triton.runtime.jit import JITFunction
    fn = kernel
    while not isinstance(fn, JITFunction):
        fn = fn.fn
    return fn


def load_kernel_modules():
    """Imports every module of the triton backend's package for the GPU (found on disk, not
    from a list): (modules that launch kernels, [import errors])."""
    import importlib
    import pkgutil
    import cnnops.backends.triton as tb
    errors = []
    try:
        tb.ops()  # what the backend itself loads on first use
    except Exception as e:  # someone's work in progress: reported, the CI step decides
        errors.append(f"cnnops.backends.triton.ops(): {type(e).__name__}: {e}")
    for info in pkgutil.iter_modules(tb.__path__):
        if info.name.startswith("_"):
            continue
        try:
            importlib.import_module(f"{tb.__name__}.{info.name}")
        except Exception as e:
            errors.append(f"{tb.__name__}.{info.name}: {type(e).__name__}: {e}")
    from cnnops.backends.triton import _launch
    if _launch.INTERPRETED:
        sys.exit("aot_sm90: the Triton kernels were loaded in the interpreter")
    mods = [m for name, m in sorted(sys.modules.items())
            if name.startswith("cnnops.backends.triton.") and m is not None
            and getattr(m, "launch", None) is _launch.launch]
    return mods, errors


@contextlib.contextmanager
def recording(modules, log: list, context: dict):
    """Every kernel launch of `modules` appended to `log` (with a copy of `context`) instead
    of run; the triton backend accepts meta/CPU tensors meanwhile."""
    import cnnops
    backend = cnnops.get_backend("triton")
    cls = type(backend)
    floats = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
    saved = {m: m.launch for m in modules}
    saved_cls = {k: cls.__dict__.get(k) for k in ("unavailable_reason", "dtypes")}

    def record(kernel, grid, *args, **meta):
        log.append(Launch(kernel, grid, args, meta, dict(context)))

    try:
        for m in modules:
            m.launch = record
        cls.unavailable_reason = lambda self, device: None
        cls.dtypes = property(lambda self: {"cuda": floats, "cpu": floats, "meta": floats})
        yield
    finally:
        for m, f in saved.items():
            m.launch = f
        for k, v in saved_cls.items():
            if v is None:
                delattr(cls, k)
            else:
                setattr(cls, k, v)


def bench_layers(batch: int, per_op: int, models=None):
    from cnnops.tools import bench, catalogue
    return bench.select_layers(models or catalogue.MODELS, catalogue.OPS, device="cuda",
                               batch=batch, per_op=per_op, max_gflop=None)


def meta_inputs(layer, batch, dtype, layout, mode, device="meta"):
    """bench.make_inputs' tensors (shapes, layouts, requires_grad) without their data."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    grad = mode == "fwdbwd"

    def empty(*shape, memory_format=torch.contiguous_format):
        t = torch.empty(*shape, dtype=dtype, device=device)
        if len(shape) == 4:
            t = t.contiguous(memory_format=memory_format)
        return t.requires_grad_(grad)

    o, c = layer.opts, layer.in_shape[0]
    inputs = {"input": empty(batch, *layer.in_shape, memory_format=fmt)}
    if layer.op == "conv2d":
        inputs["weight"] = empty(o["out_channels"], c // o["groups"], *o["kernel_size"],
                                 memory_format=fmt)
        inputs["bias"] = empty(o["out_channels"]) if o["bias"] else None
    elif layer.op == "batch_norm":
        inputs["running_mean"] = torch.zeros(c, device=device, dtype=dtype)
        inputs["running_var"] = torch.ones(c, device=device, dtype=dtype)
        inputs["weight"] = empty(c) if o["affine"] else None
        inputs["bias"] = empty(c) if o["affine"] else None
    if grad:
        out_fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        inputs["grad_output"] = empty(batch, *layer.out_shape,
                                      memory_format=out_fmt).requires_grad_(False)
    return inputs


def record_layers(modules, layers, batch, modes, layouts, fwd_modes=("fwd", "fwdbwd")):
    """Launches of the triton backend over `layers`; (launches, failures)."""
    from cnnops.tools import bench
    log, failures = [], []
    for layer in layers:
        for mode_name in modes:
            dtype, tf32 = MODES[mode_name]
            for layout in layouts:
                for fm in fwd_modes:
                    ctx = dict(layer=layer.name, op=layer.op, mode=mode_name, layout=layout,
                               pass_=fm, batch=batch)
                    old = torch.backends.cudnn.allow_tf32
                    torch.backends.cudnn.allow_tf32 = tf32
                    try:
                        with recording(modules, log, ctx):
                            inputs = meta_inputs(layer, batch, dtype, layout, fm)
                            bench.make_call(layer, inputs, "triton", fm)()
                    except Exception as e:
                        failures.append(dict(ctx, error=f"{type(e).__name__}: {e}",
                                             trace=traceback.format_exc(limit=4)))
                    finally:
                        torch.backends.cudnn.allow_tf32 = old
    return log, failures


# ----------------------------------------------------------------------------- binding

_TARGET = None


def target():
    global _TARGET
    if _TARGET is None:
        from triton.backends.compiler import GPUTarget
        _TARGET = GPUTarget("cuda", 90, 32)
    return _TARGET


_BINDERS = {}


def bind(fn, args, kwargs):
    """Triton's own launcher binding for sm_90: (cache key, options, signature, constexprs,
    attrs), exactly what `fn[grid](*args, **kwargs)` would compile on an H100/H200."""
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature
    if fn not in _BINDERS:
        backend = make_backend(target())
        _BINDERS[fn] = (backend, create_function_from_signature(fn.signature, fn.params, backend))
    backend, binder = _BINDERS[fn]
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization,
                                                           options)
    key = repr((fn.__module__, fn.__name__, [tuple(s) for s in specialization],
                sorted(options.__dict__.items(), key=lambda kv: kv[0])))
    return key, options, signature, constexprs, attrs


def wrappers(kernel):
    """The Autotuner / Heuristics wrappers around the JITFunction, outermost first."""
    from triton.runtime.jit import JITFunction
    chain, k = [], kernel
    while not isinstance(k, JITFunction):
        chain.append(k)
        k = k.fn
    return chain


def tuner_of(kernel):
    from triton.runtime.autotuner import Autotuner
    return next((w for w in wrappers(kernel) if isinstance(w, Autotuner)), None)


def autotune_key(kernel, args, meta):
    """The key Triton's Autotuner caches its choice under (its `run`, Triton 3.6-3.9); None
    for a kernel that is not autotuned."""
    tuner = tuner_of(kernel)
    if tuner is None:
        return None
    names = tuner.arg_names
    all_args = {**dict(zip(names, args)), **meta}
    _args = {k: v for k, v in all_args.items() if k in names}
    key = [_args[k] for k in tuner.keys if k in _args]
    key += [str(a.dtype) for a in _args.values() if hasattr(a, "dtype")]
    return (kernel_name(kernel), tuple(key))


def configs_of(kernel, args, meta, pruned: bool):
    """[(config label, kwargs)]: an Autotuner's configs (all, or those its pruning keeps for
    these arguments), or the meta given for a kernel without one; the constexprs of any
    `triton.heuristics` wrapper computed as its launcher would (after the config's values)."""
    from triton.runtime.autotuner import Heuristics
    chain = wrappers(kernel)
    tuner = tuner_of(kernel)
    if tuner is None:
        configs = [("meta", {})]
    else:
        cs = tuner.configs
        if pruned and len(cs) > 1:
            tuner.nargs = dict(zip(tuner.arg_names, args))
            try:
                cs = tuner.prune_configs(meta)
            finally:
                tuner.nargs = None
        configs = [(config_label(c), c.all_kwargs()) for c in cs]
    out = []
    for label, cfg in configs:
        kw = {**meta, **cfg}
        for w in chain:
            if isinstance(w, Heuristics):
                nargs = {**dict(zip(w.arg_names, args)), **kw}
                kw.update({n: h(nargs) for n, h in w.values.items()})
        out.append((label, kw))
    return out


def select_scope(units: dict, scope: str) -> dict:
    """`full`: every unit. `ci`: a covering subset that keeps CI to a few minutes (a conv
    config takes 5-30 s of ptxas on this machine): every config of every kernel in bf16 NCHW
    (the spill, shared-memory and tensor-core checks), the largest and smallest config in
    TF32 NCHW, and the smallest config in every other (dtype mode, layout) (for kernels
    without tl.dot, channels-last in bf16 only): it compiles. One
    variant per (kernel, mode, layout, config) when heuristics or flags (EVEN_K, HAS_BIAS,
    ...) give several. `full` compiles everything recorded."""
    if scope == "full":
        return units

    def size(u):
        n = 1
        for k, v in u["constexprs"].items():
            if isinstance(v, int) and not isinstance(v, bool) and \
                    u["fn"].arg_names[k[0]].startswith("BLOCK"):
                n *= v
        return (n, u["options"].get("num_warps", 0), u["options"].get("num_stages", 0))

    by_kernel = collections.defaultdict(dict)
    for key, u in units.items():
        by_kernel[u["kernel"]].setdefault((u["mode"], u["layout"], u["config"]), (key, u))
    kept = {}
    for kernel, items in by_kernel.items():
        sizes = {k: size(u) for k, (_, u) in items.items()}
        big, small = max(sizes.values()), min(sizes.values())
        for (mode, layout, _), (key, u) in items.items():
            sz = sizes[(mode, layout, _)]
            if layout == "nchw" and (mode == "bf16" or (mode == "tf32" and sz == big)):
                kept[key] = u
            elif sz == small and (u["has_dot"] or layout == "nchw" or mode == "bf16"):
                kept[key] = u  # kernels without tl.dot: channels-last in bf16 only
    return kept


def config_label(c) -> str:
    kw = ",".join(f"{k}={v}" for k, v in c.kwargs.items())
    return f"{kw},w{c.num_warps},s{c.num_stages}"


def uses_dot(fn, seen=None) -> bool:
    """Whether the kernel, or a @triton.jit helper it calls, has a tl.dot (where tensor-core
    instructions are expected)."""
    from triton.runtime.jit import JITFunction
    seen = seen if seen is not None else set()
    if fn in seen:
        return False
    seen.add(fn)
    if "tl.dot(" in fn.src or "tl.dot_scaled(" in fn.src:
        return True
    return any(isinstance(g, JITFunction) and re.search(rf"\b{re.escape(name)}\(", fn.src)
               and uses_dot(g, seen) for name, g in fn.fn.__globals__.items())


def compile_units(launches, pruned=False, every_specialisation=True):
    """Distinct compiles: {key: unit}; a unit keeps the first launch that needs it.

    Every distinct Triton specialisation (ints equal to 1 or divisible by 16 become constants
    or alignment hints: a new compile each) when `every_specialisation`; otherwise one per
    (kernel, dtype mode, layout, config, constexpr values), the one that specialises least
    (the most general code, as a large layer gets it)."""
    units, generality = {}, {}
    kept_labels = collections.defaultdict(set)  # configs the kernel's own pruning keeps
    for la in launches:
        fn = jit_function(la.kernel)
        kept_labels[(fn.__name__, la.context["mode"], la.context["layout"])].update(
            label for label, _ in configs_of(la.kernel, la.args, la.meta, pruned=True))
        for label, kwargs in configs_of(la.kernel, la.args, la.meta, pruned):
            kwargs = {k: v for k, v in kwargs.items() if v is not None or k != "maxnreg"}
            key, options, signature, constexprs, attrs = bind(fn, la.args, kwargs)
            unit = dict(kernel=fn.__name__, fn=fn, config=label, mode=la.context["mode"],
                        layout=la.context["layout"], layer=la.context["layer"],
                        options=options.__dict__, signature=signature,
                        constexprs=constexprs, attrs=attrs, cache_key=key,
                        has_dot=uses_dot(fn))
            if not every_specialisation:
                meta_consts = tuple(sorted((k, str(v)) for k, v in kwargs.items()
                                           if k in fn.arg_names))
                key = (fn.__name__, la.context["mode"], la.context["layout"], label, meta_consts)
                special = sum(v == "constexpr" for v in signature.values()) \
                    - sum(1 for _ in attrs.values() if _)
                if key in units and special >= generality[key]:
                    continue
                generality[key] = special
            if key not in units or not every_specialisation:
                units[key] = unit
    for u in units.values():
        # a config the kernel's early_config_prune drops for every recorded launch (e.g. over
        # the shared memory of float32 tiles) never runs: compiled and reported, not failed
        u["pruned_out"] = u["config"] not in kept_labels[(u["kernel"], u["mode"], u["layout"])]
    return units


# ----------------------------------------------------------------------------- compiling

def tool(name):
    import triton
    here = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    return here if os.path.exists(here) else name


def resource_usage(cubin_path):
    """{"registers", "stack", "shared", "local"} from cuobjdump --dump-resource-usage."""
    out = subprocess.run([tool("cuobjdump"), "--dump-resource-usage", cubin_path],
                         capture_output=True, text=True, check=True).stdout
    found = {k.lower(): int(v) for k, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", out)}
    return dict(registers=found.get("reg"), stack=found.get("stack"),
                static_shared=found.get("shared"), local=found.get("local"))


def sass_loop_stats(sass: str):
    """The innermost loop (a backward branch) holding the most MMA instructions: its
    instructions, MMAs, instructions per MMA and integer share. None without MMA loops."""
    lines = []
    labels = {}
    for line in sass.splitlines():
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m:
            addr = int(m.group(1), 16)
            text = re.sub(r"^@!?U?P\w+\s+", "", m.group(2).strip())
            lines.append((addr, text))
        m = re.match(r"\s*\.(L_x_\d+):", line)
        if m:
            labels[m.group(1)] = len(lines)
    best = None
    for i, (addr, text) in enumerate(lines):
        op = text.split()[0] if text else ""
        if not op.startswith("BRA"):
            continue
        tgt = re.search(r"(\.L_x_\d+|0x[0-9a-f]+)", text)
        if not tgt:
            continue
        t = tgt.group(1)
        start = labels.get(t.lstrip(".")) if t.startswith(".") else next(
            (j for j, (a, _) in enumerate(lines) if a == int(t, 16)), None)
        if start is None or start > i:
            continue  # a forward branch
        body = [x.split()[0].split(".")[0] for _, x in lines[start:i + 1] if x]
        mmas = sum(op in MMA_OPS for op in body)
        if mmas == 0:
            continue
        ints = sum(op in INT_OPS for op in body)
        stats = dict(loop_instructions=len(body), mmas=mmas,
                     instructions_per_mma=round(len(body) / mmas, 1),
                     integer_share=round(ints / len(body), 3))
        if best is None or (len(body), mmas) < (best["loop_instructions"], best["mmas"]):
            best = stats  # innermost: the shortest loop that still holds MMAs
    return best


def compile_unit(unit, sass_dir=None):
    """Compiles one unit for sm_90; a result row (error text instead of figures on failure)."""
    import triton
    from triton.compiler import ASTSource
    row = {k: unit.get(k) for k in ("kernel", "config", "mode", "layout", "layer", "has_dot",
                                    "cache_key", "pruned_out")}
    row["num_warps"], row["num_stages"] = unit["options"].get("num_warps"), unit["options"].get("num_stages")
    began = time.perf_counter()
    try:
        src = ASTSource(unit["fn"], unit["signature"], unit["constexprs"], unit["attrs"])
        ck = triton.compile(src, target=target(), options=unit["options"])
    except Exception as e:
        row.update(error=f"{type(e).__name__}: {str(e)[-2000:]}",
                   compile_s=round(time.perf_counter() - began, 2))
        return row
    row["compile_s"] = round(time.perf_counter() - began, 2)
    row["shared"] = ck.metadata.shared
    ptx = ck.asm.get("ptx", "")
    row["ptx_wgmma"] = "wgmma.mma_async" in ptx
    row["ptx_mma"] = bool(re.search(r"\bmma\.sync", ptx))
    row["approx_div_sqrt"] = sorted(set(re.findall(r"\b(div\.full\.f32|div\.approx\.f32|"
                                                   r"sqrt\.approx\.f32|rsqrt\.approx\.f32)", ptx)))
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "k.cubin")
        with open(cubin, "wb") as f:
            f.write(ck.asm["cubin"])
        try:
            row.update(resource_usage(cubin))
            sass = subprocess.run([tool("cuobjdump"), "--dump-sass", cubin], capture_output=True,
                                  text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError) as e:
            row["tool_error"] = f"cuobjdump: {e}"
            sass = ""
    ops = collections.Counter(m.split(".")[0] for m in
                              re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9.]*)", sass))
    row["sass_mma"] = {op: ops[op] for op in MMA_OPS if ops.get(op)}
    row["spill_ops"] = ops.get("STL", 0) + ops.get("LDL", 0)
    row["loop"] = sass_loop_stats(sass)
    if sass_dir:
        os.makedirs(sass_dir, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.=,-]+", "_", f"{row['kernel']}-{row['mode']}-{row['layout']}-{row['config']}")
        with open(os.path.join(sass_dir, name + ".sass"), "w") as f:
            f.write(sass)
    return row


def problems(row) -> list[str]:
    """Why this compile fails the CI step (empty: it passes)."""
    out = []
    if "error" in row:
        return [f"compile error: {row['error'].splitlines()[-1] if row['error'] else ''}"]
    if row.get("pruned_out"):
        return []  # never launched: the kernel's pruning removes it for every recorded shape
    if (row.get("shared") or 0) > SHARED_LIMIT:
        out.append(f"shared memory {row['shared']} B > {SHARED_LIMIT} B per block")
    if row["mode"] in FAST_MODES and (row.get("local") or 0) > 0:
        out.append(f"{row.get('local')} B of register spills (local memory) in {row['mode']}")
    if row["has_dot"] and row["mode"] in FAST_MODES and not row.get("sass_mma"):
        out.append(f"no tensor-core instruction in {row['mode']} although the kernel has tl.dot")
    return out


_UNITS = []  # forked workers read the units from here


def _work(i, sass_dir):
    return compile_unit(_UNITS[i], sass_dir)


def compile_all(units, jobs, sass_dir=None, progress=True, stream_path=None):
    global _UNITS
    _UNITS = list(units.values())
    rows = [None] * len(_UNITS)
    began = time.perf_counter()
    if jobs <= 1:
        done = ((i, _work(i, sass_dir)) for i in range(len(_UNITS)))
        it = done
    else:
        pool = cf.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork"))
        futures = {pool.submit(_work, i, sass_dir): i for i in range(len(_UNITS))}
        it = ((futures[f], f.result()) for f in cf.as_completed(futures))
    if stream_path:
        os.makedirs(os.path.dirname(os.path.abspath(stream_path)), exist_ok=True)
    stream = open(stream_path, "w") if stream_path else None
    for n, (i, row) in enumerate(it, 1):
        rows[i] = row
        if stream:  # one line per compile as it ends: a run stopped early keeps what it did
            stream.write(json.dumps(row, default=str) + "\n")
            stream.flush()
        if progress and (n % 20 == 0 or n == len(_UNITS)):
            print(f"aot_sm90: {n}/{len(_UNITS)} compiled, {time.perf_counter() - began:.0f} s",
                  file=sys.stderr, flush=True)
    if jobs > 1:
        pool.shutdown()
    if stream:
        stream.close()
    return rows


# ----------------------------------------------------------------------------- report

def cold(row) -> float:
    """The compile time without cache where known, else what this run measured."""
    return row.get("cold_s") if row.get("cold_s") is not None else row["compile_s"]


def summarise(rows):
    """Per (kernel, mode): configs, register range, worst spill, max shared, compile time,
    tensor cores, loop figures."""
    groups = collections.defaultdict(list)
    for r in rows:
        groups[(r["kernel"], r["mode"])].append(r)
    table = []
    for (kernel, mode), rs in sorted(groups.items()):
        ok = [r for r in rs if "error" not in r]
        loops = [r["loop"] for r in ok if r.get("loop")]
        mma = collections.Counter()
        for r in ok:
            mma.update(r.get("sass_mma") or {})
        table.append(dict(
            kernel=kernel, mode=mode, compiles=len(rs), errors=len(rs) - len(ok),
            configs=len({r["config"] for r in rs}),
            registers=[min((r["registers"] or 0) for r in ok), max((r["registers"] or 0) for r in ok)] if ok else None,
            spill_bytes=max(((r.get("local") or 0) for r in ok), default=None),
            spilling_configs=sorted({r["config"] for r in ok if (r.get("local") or 0) > 0}),
            shared_max=max((r.get("shared") or 0 for r in ok), default=None),
            compile_s_total=round(sum(cold(r) for r in rs), 1),
            compile_s_mean=round(sum(cold(r) for r in rs) / len(rs), 2),
            compile_s_max=max(cold(r) for r in rs),
            has_dot=rs[0]["has_dot"],
            tensor_cores=dict(mma) or None,
            ptx_wgmma=any(r.get("ptx_wgmma") for r in ok),
            ptx_mma=any(r.get("ptx_mma") for r in ok),
            approx=sorted({a for r in ok for a in r.get("approx_div_sqrt", [])}),
            instructions_per_mma=[min(x["instructions_per_mma"] for x in loops),
                                  max(x["instructions_per_mma"] for x in loops)] if loops else None,
            integer_share=[min(x["integer_share"] for x in loops),
                           max(x["integer_share"] for x in loops)] if loops else None))
    return table


def print_table(table):
    def rng(v, fmt="{}"):
        if v is None:
            return "-"
        return fmt.format(v[0]) if v[0] == v[1] else f"{fmt.format(v[0])}-{fmt.format(v[1])}"
    head = (f"{'kernel':32} {'mode':5} {'cfg':>3} {'comp':>4} {'regs':>7} {'spill B':>7} "
            f"{'smem KB':>7} {'comp s':>6} {'max s':>5} {'tensor cores':22} {'instr/MMA':>10} "
            f"{'int %':>9}  approx")
    print(head)
    print("-" * len(head))
    for t in table:
        tc = ",".join(f"{k}x{v}" for k, v in (t["tensor_cores"] or {}).items()) or \
            ("NONE (tl.dot)" if t["has_dot"] else "-")
        ints = None if t["integer_share"] is None else [round(100 * x) for x in t["integer_share"]]
        print(f"{t['kernel'][:32]:32} {t['mode']:5} {t['configs']:>3} {t['compiles']:>4} "
              f"{rng(t['registers']):>7} {t['spill_bytes'] if t['spill_bytes'] is not None else '-':>7} "
              f"{(t['shared_max'] or 0) / 1024:>7.1f} {t['compile_s_total']:>6.1f} "
              f"{t['compile_s_max']:>5.1f} {tc[:22]:22} {rng(t['instructions_per_mma']):>10} "
              f"{rng(ints):>9}  {','.join(t['approx'])}")


# ----------------------------------------------------------------------------- the proof's plan

# H200 ceilings for the plan's roofline (KINDS.md: 4.3 TB/s copy, ~790 TFLOP/s bf16 measured).
H200_BANDWIDTH = 4.3e12
H200_FLOPS = {"bf16": 790e12, "fp16": 790e12, "tf32": 395e12, "fp32": 60e12, "fp64": 60e12}
# Fraction of that roofline assumed per backend (a guess until a proof measures it: see the
# JSON of the first GPU run) and per op; native conv2d is a direct convolution whose
# backward runs one block per weight element, hence its own rate.
EFFICIENCY = {"torch": 0.5, "triton": 0.25, "native": 0.2}
NATIVE_CONV_FLOPS = {"fwd": 5e12, "fwdbwd": 1e12}
PER_MEASUREMENT_S = 0.06   # Python, the torch reference call, events, the check (per row)
AUTOTUNE_PER_CONFIG_S = 0.13  # Triton's do_bench: 25 ms warm-up + 100 ms of repeats
PROCESS_START_S = 12.0     # python, torch, CUDA context, cuDNN handles, the ceiling probes
STEP_FIXED_S = {"env": 5.0, "build": 150.0, "preflight": 15.0}
# The GPU tests (a model: no GPU run has timed them yet): each Triton test compiles about
# this many specialisations (tiny shapes: pruning leaves one config), shared by the xdist
# workers through Triton's disk cache; the every-config tests compile every config in fp32.
COMPILES_PER_TRITON_TEST = 2.0
TEST_RUN_S = 0.15
SANITIZE_MAX_S = 90.0
UNMEASURED_SMALL_KERNEL_S = 1.5  # an elementwise/reduction kernel without tl.dot (ptxas is quick)
# Compile seconds on the GPU machine per compile second measured by the AOT run here. The AOT
# times were measured on 2 cores shared by eight sessions (load 7-13: 10-35 s per bf16 conv
# config); the H200 machine has 16 idle cores. 0.25 is an assumption until the first proof's
# logs measure it (docs/GPU.md: calibrate it from tests.log / the bench runs' wall time).
DEFAULT_COMPILE_FACTOR = float(os.environ.get("PLAN_COMPILE_FACTOR", "0.25"))


def mode_of(dtype: torch.dtype, tf32=True) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}.get(
        dtype, "tf32" if tf32 else "fp32")


class CompileTimes:
    """Cold compile seconds per (kernel, mode, config) from the AOT JSON, with fallbacks."""

    def __init__(self, path, factor):
        self.factor, self.source = factor, path
        rows = []
        if path and os.path.exists(path):
            with open(path) as f:
                rows = json.load(f).get("compiles", [])
        elif path and os.path.exists(path + ".rows.jsonl"):  # a run stopped before its end
            with open(path + ".rows.jsonl") as f:
                rows = [json.loads(line) for line in f if line.strip()]
            for r in rows:
                r.setdefault("cold_s", r["compile_s"] if r["compile_s"] >= CACHE_HIT_S else None)
        self.source = path if rows else None
        self.exact = collections.defaultdict(list)
        self.by_mode = collections.defaultdict(list)
        self.by_kernel = collections.defaultdict(list)
        self.all = []
        for r in rows:
            t = r.get("cold_s")
            if t is None:
                continue
            self.exact[(r["kernel"], r["mode"], r["config"])].append(t)
            self.by_mode[(r["kernel"], r["mode"])].append(t)
            self.by_kernel[r["kernel"]].append(t)
            self.all.append(t)
        self.missing = collections.Counter()
        self.dot_kernels = {r["kernel"] for r in rows if r.get("has_dot")}

    def get(self, kernel, mode, config, has_dot=True) -> float:
        for table, key in ((self.exact, (kernel, mode, config)), (self.by_mode, (kernel, mode)),
                           (self.by_kernel, kernel)):
            if table.get(key):
                return self.factor * sum(table[key]) / len(table[key])
        self.missing[kernel] += 1
        # never measured: a GEMM kernel like the measured GEMM kernels, else a small kernel
        dots = [t for (k, m), ts in self.by_mode.items() if m == mode and k in self.dot_kernels
                for t in ts]
        if has_dot and dots:
            return self.factor * sum(dots) / len(dots)
        return self.factor * UNMEASURED_SMALL_KERNEL_S


def plan_bench_run(spec: str, modules, times, compiled: set):
    """Estimate of one `python -m cnnops bench` run of the proof: a dict."""
    from cnnops.tools import bench
    name, *words = spec.split()
    parser = argparse.ArgumentParser()
    bench.configure(parser)
    a = parser.parse_args(words)
    batch = a.batch or 128
    backends = a.backends or ["triton", "native"]
    layers = bench.select_layers(a.models, a.ops, device="cuda", batch=batch, per_op=a.per_op,
                                 max_gflop=a.max_gflop, name_filters=a.layer)
    est = dict(run=name, layers=len(layers), measurements=0, compiles=0, compile_s=0.0,
               autotune_keys=0, autotune_s=0.0, kernel_s=0.0, overhead_s=PROCESS_START_S,
               slowest=[], unrecorded=[])
    keys = set()
    for layer in layers:
        for dname in a.dtypes:
            dtype = bench.DTYPES[dname]
            mode = mode_of(dtype)
            for layout in a.layouts:
                for fm in a.mode:
                    flops = layer.flops(batch, fm)
                    nbytes = layer.min_bytes(batch, fm, dtype.itemsize)
                    floor = max(flops / H200_FLOPS[mode], nbytes / H200_BANDWIDTH)
                    for backend in ["torch"] + [b for b in backends if b != "torch"]:
                        call_s = floor / EFFICIENCY.get(backend, 0.25)
                        if backend == "native" and layer.op == "conv2d":
                            call_s = max(call_s, flops / NATIVE_CONV_FLOPS[fm])
                        # check + first call + graph warm-up/capture + 5 probes, then the
                        # budget's repeats (at least 10) and a quarter budget of warm-up
                        runs_s = 21 * call_s + max(1.25 * a.budget, 10 * call_s)
                        est["measurements"] += 1
                        est["kernel_s"] += runs_s
                        est["overhead_s"] += PER_MEASUREMENT_S
                        est["slowest"].append((round(runs_s, 2), backend, layer.name, dname, layout, fm))
                        if backend != "triton":
                            continue
                        log, failures = [], []
                        ctx = dict(layer=layer.name, op=layer.op, mode=mode, layout=layout,
                                   pass_=fm, batch=batch)
                        old = torch.backends.cudnn.allow_tf32
                        torch.backends.cudnn.allow_tf32 = mode != "fp32"
                        try:
                            with recording(modules, log, ctx):
                                bench.make_call(layer, meta_inputs(layer, batch, dtype, layout, fm),
                                                "triton", fm)()
                        except Exception as e:
                            est["unrecorded"].append(f"{layer.name} {dname} {layout} {fm}: "
                                                     f"{type(e).__name__}: {e}")
                        finally:
                            torch.backends.cudnn.allow_tf32 = old
                        for la in log:
                            k = autotune_key(la.kernel, la.args, la.meta)
                            configs = configs_of(la.kernel, la.args, la.meta, pruned=True)
                            if k not in keys:
                                keys.add(k)
                                if len(configs) > 1:
                                    est["autotune_keys"] += 1
                                    est["autotune_s"] += len(configs) * AUTOTUNE_PER_CONFIG_S
                            units = compile_units([la], pruned=True)
                            for key, u in units.items():
                                if key not in compiled:  # Triton's disk cache: once per machine
                                    compiled.add(key)
                                    est["compiles"] += 1
                                    est["compile_s"] += times.get(u["kernel"], u["mode"],
                                                                  u["config"], u["has_dot"])
    est["slowest"] = sorted(est["slowest"], reverse=True)[:5]
    est["total_s"] = round(est["compile_s"] + est["autotune_s"] + est["kernel_s"]
                           + est["overhead_s"], 1)
    for k in ("compile_s", "autotune_s", "kernel_s", "overhead_s"):
        est[k] = round(est[k], 1)
    return est


def plan_tests(times, workers: int):
    """Estimate of the proof's test step from the tests collected here (ids are the same on
    the GPU; the GPU-only tests are collected and skipped here)."""
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
           os.path.join(ROOT, "tests"), "-k", "cuda or gpu or test_triton_"]
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    ids = [line for line in out.stdout.splitlines() if "::" in line]
    if not ids:
        return dict(error="no test collected: " + (out.stdout + out.stderr)[-600:], total_s=0.0)
    triton_ids = [i for i in ids if "test_triton_" in i]
    every = [i for i in triton_ids if "every_autotune_config" in i]
    modules_ = [m for name, m in sys.modules.items() if name.startswith("cnnops.backends.triton.")]
    # the every-config tests: each config of the named kernel, fp32 IEEE, forward + backward
    chain_s = 0.0
    for test_id in every:
        kname = test_id.split("[", 1)[-1].rstrip("]")
        kernel = next((getattr(m, kname) for m in modules_ if hasattr(m, kname)), None)
        n = len(getattr(kernel, "configs", [])) or 10
        chain_s += n * times.get(kname, "fp32", None) * 2  # fwd and the backward kernels
    compiles = COMPILES_PER_TRITON_TEST * (len(triton_ids) - len(every))
    compile_s = compiles * times.get("conv2d_fwd_kernel", "fp32", None) / 2  # half conv, half cheap
    wall = PROCESS_START_S + max(chain_s, (compile_s + chain_s) / workers) \
        + len(ids) * TEST_RUN_S / workers
    return dict(tests=len(ids), triton_tests=len(triton_ids), every_config_tests=len(every),
                compiles_model=round(compiles), compile_s=round(compile_s, 1),
                every_config_chain_s=round(chain_s, 1), workers=workers, total_s=round(wall, 1))


def run_plan(args) -> int:
    modules, load_errors = load_kernel_modules()
    for e in load_errors:
        print(f"plan: UNLOADED {e}")
    times = CompileTimes(args.json, args.compile_factor)
    print(f"plan: compile times from {args.json} ({len(times.all)} cold compiles measured), "
          f"x{args.compile_factor}; H200 roofline {H200_BANDWIDTH / 1e12} TB/s, "
          f"{H200_FLOPS['bf16'] / 1e12:.0f} TFLOP/s bf16")
    steps = dict(STEP_FIXED_S)
    tests = plan_tests(times, args.test_workers)
    steps["tests"] = tests["total_s"]
    steps["sanitize"] = SANITIZE_MAX_S
    compiled: set = set()
    runs = [plan_bench_run(spec, modules, times, compiled) for spec in args.bench]
    steps["bench"] = round(sum(r["total_s"] for r in runs), 1)
    total = sum(steps.values())
    print(f"plan: tests: {tests}")
    for r in runs:
        print(f"plan: bench {r['run']}: {r['layers']} layers, {r['measurements']} measurements, "
              f"{r['compiles']} new Triton compiles ({r['compile_s']} s), {r['autotune_keys']} "
              f"autotune keys ({r['autotune_s']} s), kernels and timing {r['kernel_s']} s, "
              f"overhead {r['overhead_s']} s: {r['total_s']} s")
        for s_ in r["slowest"][:3]:
            print(f"plan:     slowest: {s_}")
        for u in r["unrecorded"][:5]:
            print(f"plan:     UNRECORDED {u}")
    if times.missing:
        print(f"plan: no measured compile time for {dict(times.missing)}: the mean was used")
    print("plan: steps (s): " + ", ".join(f"{k} {v:.0f}" for k, v in steps.items())
          + f"; total {total:.0f} s of {args.budget_s:.0f} s")
    unrecorded = sum(len(r["unrecorded"]) for r in runs)
    if args.plan_json:
        with open(args.plan_json, "w") as f:
            json.dump(dict(steps=steps, total_s=total, budget_s=args.budget_s, tests=tests,
                           bench=runs), f, indent=1, default=str)
    if total > args.budget_s:
        print(f"plan: FAIL: the proof would take about {total:.0f} s, over {args.budget_s:.0f} s")
        return 1
    if unrecorded or tests.get("error"):
        print("plan: FAIL: parts of the plan could not be estimated (see above)")
        return 1
    print("plan: ok")
    return 0


def unit_id(row) -> str:
    return "|".join(str(row.get(k)) for k in ("kernel", "mode", "layout", "config", "cache_key"))


def merge_cold_times(rows, previous_json):
    """`cold_s`: the compile time without Triton's cache, measured now or in an earlier run
    (a cache hit measures nothing); None when never measured cold."""
    before = {}
    if previous_json and os.path.exists(previous_json):
        try:
            with open(previous_json) as f:
                before = {unit_id(r): r.get("cold_s") for r in json.load(f).get("compiles", [])}
        except (OSError, ValueError):
            before = {}
    for r in rows:
        r["cached"] = r["compile_s"] < CACHE_HIT_S
        r["cold_s"] = before.get(unit_id(r)) if r["cached"] else r["compile_s"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", default=",".join(MODES), help="comma list of " + ",".join(MODES))
    p.add_argument("--layouts", default=",".join(LAYOUTS))
    p.add_argument("--kernels", default="", help="only kernels whose name contains one of "
                                                  "these (comma list)")
    p.add_argument("--batch", type=int, default=2, help="batch of the recorded calls")
    p.add_argument("--per-op", type=int, default=3,
                   help="catalogue layers per op, spread by work (default 3: the first-layer "
                        "convs with C_in 1/3, a middle one, the largest)")
    p.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--json", default=os.path.join(ROOT, "build", "aot_sm90.json"),
                   help="the table for gpu_proof.sh --plan (default build/aot_sm90.json, not "
                        "committed: it is measured on the machine that runs it)")
    p.add_argument("--sass-dir", default=None, help="write each compile's SASS here")
    p.add_argument("--every-specialisation", action="store_true",
                   help="compile each distinct specialisation the recorded layers trigger (ints "
                        "equal to 1 or divisible by 16), not one per kernel/mode/layout/config")
    p.add_argument("--scope", choices=("full", "ci"), default="full",
                   help="full: every kernel x config x dtype mode x layout; ci: the covering "
                        "subset CI compiles (see select_scope)")
    p.add_argument("--plan", action="store_true",
                   help="estimate the GPU proof (benchmarks/gpu_proof.sh --plan calls this)")
    p.add_argument("--bench", action="append", default=[],
                   help="--plan: one bench run of the proof, 'NAME ARGS...' (repeatable)")
    p.add_argument("--budget-s", type=float, default=480.0, help="--plan: the proof's limit")
    p.add_argument("--test-workers", type=int, default=8, help="--plan: xdist workers")
    p.add_argument("--compile-factor", type=float, default=DEFAULT_COMPILE_FACTOR,
                   help="--plan: GPU host compile time / measured compile time")
    p.add_argument("--plan-json", default=None, help="--plan: write the estimate here")
    p.add_argument("--record-only", action="store_true", help="list the launches; no compile")
    p.add_argument("--allow-unrecorded", action="store_true",
                   help="an op that cannot be recorded is reported, not a failure")
    args = p.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    layouts = [x for x in args.layouts.split(",") if x]
    began = time.perf_counter()

    if args.plan:
        return run_plan(args)
    import triton
    print(f"aot_sm90: triton {triton.__version__}, torch {torch.__version__}, target sm_90 "
          f"(ptxas/cuobjdump from {os.path.dirname(tool('ptxas'))})", flush=True)
    modules, load_errors = load_kernel_modules()
    for e in load_errors:
        print(f"aot_sm90: UNLOADED {e}")
    if not modules:
        print("aot_sm90: FAILED: no kernel module could be loaded")
        return 1
    layers = bench_layers(args.batch, args.per_op)
    launches, failures = record_layers(modules, layers, args.batch, modes, layouts)
    failures = [dict(op="import", layer="-", mode="-", layout="-", pass_="-", error=e)
                for e in load_errors] + failures
    for f in failures:
        print(f"aot_sm90: UNRECORDED {f['op']} {f['layer']} {f['mode']} {f['layout']} "
              f"{f['pass_']}: {f['error']}")
    if args.kernels:
        wanted = args.kernels.split(",")
        launches = [la for la in launches if any(w in kernel_name(la.kernel) for w in wanted)]
    units = select_scope(compile_units(launches, every_specialisation=args.every_specialisation),
                         args.scope)
    by_kernel = collections.Counter(u["kernel"] for u in units.values())
    print(f"aot_sm90: {len(launches)} launches recorded over {len(layers)} layers; "
          f"{len(units)} distinct compiles: " + ", ".join(f"{k} {v}" for k, v in
                                                       sorted(by_kernel.items())), flush=True)
    if args.record_only:
        for u in units.values():
            print(f"  {u['kernel']:34} {u['mode']:5} {u['layout']:13} {u['config']:40} {u['layer']}")
        return 1 if failures and not args.allow_unrecorded else 0
    rows = compile_all(units, args.jobs, args.sass_dir,
                       stream_path=(args.json + ".rows.jsonl") if args.json else None)
    merge_cold_times(rows, args.json)
    table = summarise(rows)
    print_table(table)
    bad = [(r, why) for r in rows for why in problems(r)]
    reported = collections.defaultdict(list)
    for r, why in bad:
        reported[(r["kernel"], r["mode"], why.split(":")[0] if why.startswith("compile") else why)].append(r)
    for (kernel, mode, why), rs in sorted(reported.items()):
        cfgs = sorted({f"{r['config']} [{r['layout']}]" for r in rs})
        print(f"aot_sm90: FAIL {kernel} {mode}: {why}: {len(rs)} compiles, e.g. {cfgs[:3]}")
        if why.startswith("compile"):
            print("    " + rs[0]["error"][-800:].replace("\n", "\n    "))
    for r in rows:
        if r.get("pruned_out") and "error" not in r and (r.get("shared") or 0) > SHARED_LIMIT:
            print(f"aot_sm90: note: {r['kernel']} {r['mode']} {r['config']}: shared memory "
                  f"{r['shared']} B over the limit, pruned at run time (never launched)")
    slow_spills = sorted({(r["kernel"], r["mode"]) for r in rows
                          if "error" not in r and r["mode"] not in FAST_MODES and (r.get("local") or 0)})
    for kernel, mode in slow_spills:
        print(f"aot_sm90: note: {kernel} spills in {mode} (a checking mode: not a failure)")
    wall = time.perf_counter() - began
    doc = dict(triton=triton.__version__, torch=torch.__version__, target="cuda sm_90 warp 32",
               modes=modes, layouts=layouts, batch=args.batch, per_op=args.per_op,
               wall_s=round(wall, 1), jobs=args.jobs, table=table, compiles=rows,
               unrecorded=failures, failures=[dict(kernel=r["kernel"], mode=r["mode"],
                                                    config=r["config"], layout=r["layout"],
                                                    why=why) for r, why in bad])
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1, default=str)
        print(f"aot_sm90: wrote {args.json}")
    print(f"aot_sm90: {len(rows)} compiles in {wall:.0f} s wall ({args.jobs} jobs), "
          f"{sum(r['compile_s'] for r in rows):.0f} s of compile, {sum(r['cached'] for r in rows)} "
          f"from the cache ({os.environ['TRITON_CACHE_DIR']}); {len(bad)} problems, "
          f"{len(failures)} unrecorded")
    if bad or (failures and not args.allow_unrecorded):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
