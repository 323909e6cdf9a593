"""backend="fastest": each call key on the backend measured fastest for it.

PyTorch's answer to "which cuDNN algorithm is fastest for this layer" is
`torch.backends.cudnn.benchmark`: time them once per shape, keep the winner. This module does
the same across cnnops' backends:

    key = (op, device, dtype, shapes and memory formats of the tensors, the other arguments,
           whether gradients are needed)
    first call with a new key:
        torch's result (forward, and the gradients when they are needed) is the reference
        for every backend that can run the call, except `reference` (the book's loops):
            run it once (warm-up: Triton compiles and autotunes here) and compare with torch;
            a backend that raises or differs is rejected
        time the survivors, interleaved round by round, forward (+ backward when gradients are
        needed); keep the one with the smallest median (ties: the order of "auto")
    later calls: a dict lookup

Timing runs work on copies (running statistics are cloned, inputs detached), so the user's
tensors see exactly one call, and no random number is drawn (the RNG state is untouched: a
seeded training run gives the same result with "fastest" as with the backend it picks).

The choices can be saved to and loaded from a JSON file, keyed by the machine and the versions
of torch, Triton and cnnops (entries of another machine or version are kept in the file but
not used). When the environment variable CNNOPS_FASTEST_CACHE names a file, it is loaded on the
first "fastest" call and every new choice is written to it (write, then rename).

Under torch.compile a key already in the cache is a dict lookup (no graph break); a key not in
it cannot be timed while tracing and resolves as "auto" does (run `python -m cnnops tune` or
one eager step first).
"""
from __future__ import annotations

import ast
import json
import os
import platform
import statistics
import tempfile
import time

import torch

from cnnops import _dispatch
from cnnops.backends import Backend

CACHE_ENV = "CNNOPS_FASTEST_CACHE"
CACHE_FORMAT = 1

# key -> name of the chosen backend; key -> what was measured (times in ms, rejections, why)
_choices: dict[tuple, str] = {}
_details: dict[tuple, dict] = {}
_env_loaded: str | None = None  # the CNNOPS_FASTEST_CACHE file loaded so far
tunings = 0  # how many keys were timed in this process (a test reads it)

# Relative tolerance of the correctness check, by dtype (scaled by the reference's magnitude).
_TOLERANCE = {torch.float64: 1e-7, torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 5e-2}
# Time spent per backend on the timed repeats of one key (beyond the warm-up run), roughly.
_TIME_BUDGET_S = 0.15
_MIN_REPEATS, _MAX_REPEATS = 3, 15


def _layout(t: torch.Tensor) -> str:
    if t.is_contiguous():
        return "contiguous"
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    return "strided"


def call_key(op: str, args: tuple, tensors: dict) -> tuple:
    """What the choice depends on: op, device, dtype, every tensor's shape and memory format,
    every other argument, and whether autograd will need gradients."""
    input = tensors["input"]
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in tensors.values())
    shapes = tuple((name, None) if t is None else (name, tuple(t.shape), _layout(t))
                   for name, t in tensors.items())
    options = tuple(a for a in args if not isinstance(a, torch.Tensor))
    return (op, str(input.device), str(input.dtype), shapes, options, needs_grad)


def choose(op: str, args: tuple, tensors: dict, output_numel: int) -> tuple[Backend, str]:
    """(backend, why) for this call: the cached winner of its key, timed now if new."""
    key = call_key(op, args, tensors)
    if torch.compiler.is_compiling():
        name = _choices.get(key)
        if name is None:
            backend, why = _dispatch._resolve("auto", op, tensors, output_numel)
            return backend, "fastest: key not tuned before torch.compile, so " + why
        return _dispatch._load()[name], _details[key]["why"]
    _load_env_cache()
    name = _choices.get(key)
    if name is not None:
        backend = _dispatch._load()[name]
        if _dispatch._usable(backend, op, tensors["input"].device, tensors["input"].dtype,
                             tensors, output_numel) is None:
            return backend, _details[key]["why"]
    _tune(key, op, args, tensors, output_numel)
    return _dispatch._load()[_choices[key]], _details[key]["why"]


# ---- measuring ------------------------------------------------------------------------------

def _fresh(args: tuple, needs_grad: bool) -> tuple:
    """The call's arguments for a trial run: tensors detached (leaves requiring grad where the
    originals do, when gradients are measured); running statistics cloned."""
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            t = a.detach()
            if not needs_grad or not a.requires_grad:
                t = t.clone()  # batch norm's running stats are written: never the user's
            out.append(t.requires_grad_(needs_grad and a.requires_grad))
        else:
            out.append(a)
    return tuple(out)


def _grad_pattern(y: torch.Tensor) -> torch.Tensor:
    """A fixed, non-constant output gradient (no RNG): -1, -2/3, ..., 1 repeating."""
    pattern = torch.arange(y.numel(), device=y.device, dtype=torch.float32) % 7 - 3
    return (pattern / 3).to(y.dtype).reshape(y.shape)


def _step(backend: Backend, op: str, args: tuple, needs_grad: bool) -> tuple:
    """One call (forward, and backward when gradients are needed); returns every result:
    outputs, then gradients, then the tensors the call wrote (running statistics)."""
    out = getattr(backend, op)(*args)
    outs = out if isinstance(out, tuple) else (out,)
    grads = ()
    if needs_grad:
        leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        grads = torch.autograd.grad(outs[0], leaves, _grad_pattern(outs[0]), allow_unused=True)
    written = tuple(a for a in args if isinstance(a, torch.Tensor) and not a.requires_grad)
    return tuple(outs) + tuple(grads) + written


def _mismatch(result: tuple, reference: tuple, dtype: torch.dtype, device) -> str | None:
    """None when `result` matches torch's `reference`, else the first difference."""
    tol = _TOLERANCE.get(dtype, 1e-3)
    if dtype == torch.float32 and device.type == "cuda":
        tol = 1e-2  # TF32 on either side
    for i, (a, b) in enumerate(zip(result, reference)):
        if a is None or b is None:
            other = b if a is None else a
            # pooling indices nobody asked for: a backend may skip them (values-only forward)
            if other is not None and other.is_floating_point():
                return f"result {i}: one backend gives None"
            continue
        if a.shape != b.shape:
            return f"result {i}: shape {tuple(a.shape)} instead of {tuple(b.shape)}"
        if not a.is_floating_point():
            continue  # pooling indices: the values and gradients they select are compared
        scale = max(1.0, float(b.detach().double().abs().nan_to_num(0, 0, 0).max())
                    if b.numel() else 1.0)
        try:
            torch.testing.assert_close(a.detach(), b.detach(), rtol=tol, atol=tol * scale,
                                       equal_nan=True, check_stride=False, check_dtype=False)
        except AssertionError as e:
            return f"result {i}: " + " ".join(str(e).split())[:200]
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _tune(key: tuple, op: str, args: tuple, tensors: dict, output_numel: int) -> None:
    global tunings
    tunings += 1
    needs_grad = key[-1]
    input = tensors["input"]
    device, dtype = input.device, input.dtype
    found = _dispatch.candidates(op, tensors, output_numel)
    unavailable = {n: r for n, r in found.items() if isinstance(r, str)}
    rejected = {}
    usable = {n: b for n, b in found.items() if not isinstance(b, str)}
    reference = _step(_dispatch._load()["torch"], op, _fresh(args, needs_grad), needs_grad)
    trials, first = {}, {}
    for name, backend in usable.items():
        trial_args = _fresh(args, needs_grad)
        try:
            _sync(device)
            start = time.perf_counter()
            result = _step(backend, op, trial_args, needs_grad)  # warm-up: compiles, autotunes
            _sync(device)
        except Exception as e:  # noqa: BLE001 - a backend that fails is not chosen, not fatal
            rejected[name] = f"raised {type(e).__name__}: {str(e)[:160]}"
            continue
        problem = _mismatch(result, reference, dtype, device)
        if problem is not None:
            rejected[name] = f"differs from torch: {problem}"
            continue
        trials[name], first[name] = _fresh(args, needs_grad), time.perf_counter() - start
    # repeats sized so the slowest backend spends about _TIME_BUDGET_S, interleaved
    repeats = int(min(_MAX_REPEATS, max(_MIN_REPEATS, _TIME_BUDGET_S / max(first.values()))))
    samples = {name: [] for name in trials}
    for _ in range(repeats):
        for name, trial_args in trials.items():
            _sync(device)
            start = time.perf_counter()
            _step(usable[name], op, trial_args, needs_grad)
            _sync(device)
            samples[name].append(time.perf_counter() - start)
    times_ms = {name: 1e3 * statistics.median(s) for name, s in samples.items()}
    order = _dispatch.AUTO_ORDER.get(device.type, ()) + _dispatch.BACKEND_NAMES
    winner = min(times_ms, key=lambda n: (times_ms[n], order.index(n)))
    _record(key, winner, times_ms, rejected, unavailable)
    if os.environ.get(CACHE_ENV):
        save(os.environ[CACHE_ENV])


def _record(key, winner, times_ms, rejected, unavailable) -> None:
    timed = ", ".join(f"{n} {t:.3g} ms" for n, t in sorted(times_ms.items(), key=lambda i: i[1]))
    why = f"fastest: {timed}"
    if rejected:
        why += "; rejected: " + "; ".join(f"{n} {r}" for n, r in rejected.items())
    if unavailable:
        why += "; cannot run here: " + ", ".join(unavailable)
    _choices[key] = winner
    _details[key] = {"backend": winner, "times_ms": times_ms, "rejected": rejected,
                     "unavailable": unavailable, "why": why}


# ---- the cache on disk ----------------------------------------------------------------------

def context() -> str:
    """What a saved choice is valid for: this machine and these versions."""
    from importlib import metadata

    import cnnops
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpus = ",".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
                    ) if torch.cuda.is_available() else "no gpu"
    try:
        triton_version = metadata.version("triton")
    except metadata.PackageNotFoundError:
        triton_version = "none"
    return (f"{platform.node()} | {cpu} | {gpus} | torch {torch.__version__} | "
            f"triton {triton_version} | cnnops {cnnops.__version__}")


def _read(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return {"format": CACHE_FORMAT, "contexts": {}}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        raise ValueError(f"{path} is not a cnnops fastest cache (format {CACHE_FORMAT})")
    return data


def save(path: str) -> None:
    """Writes this process's choices into `path` (other machines' entries are kept)."""
    data = _read(path)
    entries = data["contexts"].setdefault(context(), {})
    for key, detail in _details.items():
        entries[repr(key)] = detail
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=directory, delete=False, suffix=".tmp") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(f.name, path)


def load(path: str) -> int:
    """Adds the choices `path` holds for this machine and these versions; returns how many."""
    entries = _read(path)["contexts"].get(context(), {})
    for text, detail in entries.items():
        key = ast.literal_eval(text)
        _choices[key] = detail["backend"]
        _details[key] = detail
    return len(entries)


def clear() -> None:
    """Forgets every choice of this process (the file, if any, is left as it is)."""
    global _env_loaded
    _choices.clear()
    _details.clear()
    _env_loaded = None


def _load_env_cache() -> None:
    global _env_loaded
    path = os.environ.get(CACHE_ENV)
    if path and path != _env_loaded:
        _env_loaded = path
        load(path)


def choices() -> list[dict]:
    """Every choice made or loaded so far: key fields, backend, times, rejections."""
    rows = []
    for key, detail in _details.items():
        op, device, dtype, shapes, options, needs_grad = key
        rows.append({"op": op, "device": device, "dtype": dtype, "shapes": shapes,
                     "options": options, "needs_grad": needs_grad, **detail})
    return rows
