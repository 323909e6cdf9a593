"""PyTorch's own sample generators run against cnnops: the harness of test_opinfo.py and
test_moduleinfo.py (issue 12).

Cases come from `op_db` (OpInfo sample and error inputs of `nn.functional.conv2d`,
`max_pool2d`, `avg_pool2d`, `batch_norm`) and `module_db` (ModuleInfo inputs and error inputs
of `nn.Conv2d`, `MaxPool2d`, `AvgPool2d`, `BatchNorm1d`, `BatchNorm2d`). Nobody on the project
chose them, which is the point. Each case is addressed by (kind, name, dtype, index); the
generators are seeded, so the same address gives the same case in every process.

`run_case` runs one case on one backend and returns (status, message):
    passed   torch accepts the case; cnnops accepts it and matches outputs, indices, gradients,
             running stats and the output's memory format
    refused  torch refuses the case; cnnops refuses it with ValueError / TypeError raised in
             cnnops/_validate.py (the one validation layer)
    skipped  the contract excludes the case (the reason is the message)
    failed   anything else (the message says what differs)

Native cases run in child processes (`run_in_children`), so a crash in the C++ kernels fails
that case only: `python tests/torch_samples.py KIND NAME DTYPE BACKEND I,J,...` prints one
`RESULT {json}` line per case, and a `START i` line before it so the parent knows which case
a dying child was running.
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import traceback

import torch
import torch.nn.functional as F

import cnnops
import cnnops.nn as cnn

OPS = {"conv2d": "nn.functional.conv2d", "max_pool2d": "nn.functional.max_pool2d",
       "avg_pool2d": "nn.functional.avg_pool2d", "batch_norm": "nn.functional.batch_norm"}
MODULES = ("Conv2d", "MaxPool2d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
KINDS = ("sample", "error", "module", "module_error")

# Where cnnops' user-facing errors must come from.
VALIDATION_FILE = os.path.join("cnnops", "_validate.py")


# ----------------------------------------------------------------------------------------
# the cases
# ----------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _op_info(op: str):
    from torch.testing._internal.common_methods_invocations import op_db
    return next(o for o in op_db if o.name == OPS[op] and o.variant_test_name == "")


@functools.lru_cache(maxsize=None)
def _module_info(name: str):
    from torch.testing._internal.common_modules import module_db
    return next(m for m in module_db if m.module_cls is getattr(torch.nn, name))


@functools.lru_cache(maxsize=None)
def cases(kind: str, name: str, dtype: str) -> tuple:
    """The seeded list of cases: OpInfo SampleInput / ErrorInput, or (training, ModuleInput) /
    ModuleErrorInput. Error inputs are generated once (dtype "any")."""
    torch.manual_seed(0)
    if kind == "sample":
        return tuple(_op_info(name).sample_inputs("cpu", DTYPES[dtype], requires_grad=True))
    if kind == "error":
        info = _op_info(name)
        return tuple(info.error_inputs("cpu")) if info.error_inputs_func else ()
    info = _module_info(name)
    if kind == "module":
        return tuple((training, m) for training in (True, False)
                     for m in info.module_inputs_func(info, device="cpu", dtype=DTYPES[dtype],
                                                      requires_grad=True, training=training))
    if info.module_error_inputs_func is None:
        return ()
    return tuple(info.module_error_inputs_func(info, device="cpu", dtype=torch.float64,
                                               requires_grad=True, training=True))


def _short(x) -> str:
    if isinstance(x, torch.Tensor):
        layout = "" if x.is_contiguous() else (
            ",cl" if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
            else ",strided")
        return f"T{tuple(x.shape)}{layout}"
    if isinstance(x, (list, tuple)):
        return "(" + ",".join(_short(v) for v in x) + ")"
    if isinstance(x, dict):
        return " ".join(f"{k}={_short(v)}" for k, v in x.items())
    return repr(x)


def describe(kind: str, name: str, dtype: str, index: int) -> str:
    """Shapes and arguments of a case (no values): stable across processes and runs."""
    case = cases(kind, name, dtype)[index]
    if kind == "sample":
        return f"{_short(case.input)} {_short(case.args)} {_short(case.kwargs)}"
    if kind == "error":
        s = case.sample_input
        return f"{_short(s.input)} {_short(s.args)} {_short(s.kwargs)}"
    if kind == "module":
        training, m = case
        return (f"{'train' if training else 'eval'} {_short(m.constructor_input.args)} "
                f"{_short(m.constructor_input.kwargs)} on {_short(m.forward_input.args)}")
    m = case.module_error_input
    return (f"{_short(m.constructor_input.args)} {_short(m.constructor_input.kwargs)} on "
            f"{_short(m.forward_input.args)}")


def subset(n: int, at_most: int) -> list[int]:
    """`at_most` indices spread evenly over range(n) (first and last included)."""
    if n <= at_most:
        return list(range(n))
    return sorted({round(i * (n - 1) / (at_most - 1)) for i in range(at_most)})


# ----------------------------------------------------------------------------------------
# running one case
# ----------------------------------------------------------------------------------------

def _excluded(kind: str, name: str, case) -> str | None:
    """Why the contract excludes a case, or None."""
    if kind == "sample" and name == "batch_norm" and case.input.dim() < 2:
        return ("1-D batch_norm input: the contract takes (N, C), (N, C, L) and (N, C, H, W) "
                "(torch's sample is an empty (0,) tensor)")
    return None


def _clone(x):
    """A fresh leaf copy (same values, strides and requires_grad) of every tensor in x."""
    if isinstance(x, torch.Tensor):
        y = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)
        with torch.no_grad():
            y.copy_(x)
        return y.requires_grad_(x.requires_grad)
    if isinstance(x, (list, tuple)):
        return type(x)(_clone(v) for v in x)
    if isinstance(x, dict):
        return {k: _clone(v) for k, v in x.items()}
    return x


def _leaves(x) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x] if x.requires_grad else []
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _leaves(v)]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _leaves(v)]
    return []


def _tensors(x) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _tensors(v)]
    return []


def _tolerance(dtype, name):
    if dtype == torch.float64:
        return dict(rtol=1e-7, atol=1e-7)
    # conv2d sums C_in * kH * kW products in another order than oneDNN
    return dict(rtol=1e-4, atol=1e-5) if name in ("conv2d", "Conv2d") else dict(rtol=1e-5, atol=1e-5)


def _layout(t: torch.Tensor) -> str:
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return "channels_last"
    return "contiguous" if t.is_contiguous() else f"strides {t.stride()}"


def _compare(what: str, got, want, tol) -> None:
    """Raises AssertionError naming `what` when got and want differ."""
    if want is None or got is None:
        if (want is None) != (got is None):
            raise AssertionError(f"{what}: got {_short(got)}, torch gives {_short(want)}")
        return
    if got.shape != want.shape or got.dtype != want.dtype:
        raise AssertionError(f"{what}: got {got.dtype}{tuple(got.shape)}, torch gives "
                             f"{want.dtype}{tuple(want.shape)}")
    if got.dtype == torch.int64:
        if not torch.equal(got, want):
            raise AssertionError(f"{what}: indices differ: {got.flatten()[:8].tolist()} vs "
                                 f"torch {want.flatten()[:8].tolist()}")
        return
    try:
        torch.testing.assert_close(got.detach(), want.detach(), equal_nan=True, **tol)
    except AssertionError as e:
        raise AssertionError(f"{what}: {e}") from None


def _backward_and_compare(name, got_out, want_out, got_leaves, want_leaves, tol) -> None:
    """Same random grad_output into both graphs; the gradients of every leaf must match."""
    got_out, want_out = _tensors(got_out), _tensors(want_out)
    pairs = [(g, w) for g, w in zip(got_out, want_out)
             if w.is_floating_point() and w.requires_grad]
    if not pairs or not want_leaves:
        return
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(w.shape, generator=gen, dtype=w.dtype) for _, w in pairs]
    want_g = torch.autograd.grad([w for _, w in pairs], want_leaves, grads, allow_unused=True)
    if not all(g.requires_grad for g, _ in pairs):
        raise AssertionError("output does not require grad where torch's does")
    got_g = torch.autograd.grad([g for g, _ in pairs], got_leaves, grads, allow_unused=True)
    for i, (g, w) in enumerate(zip(got_g, want_g)):
        if w is None and g is not None and not g.any():
            continue  # torch leaves an unused input's grad None, a zero grad is the same
        if g is None and w is not None and not w.any():
            continue
        _compare(f"grad of input {i} of {len(want_leaves)}", g, w, tol)


def _check_refusal(e: BaseException) -> str | None:
    """None when `e` is a refusal from the validation layer, else what is wrong with it."""
    if not isinstance(e, (ValueError, TypeError)):
        return f"raised {type(e).__name__} (not ValueError / TypeError): {e}"
    frames = traceback.extract_tb(e.__traceback__)
    if not frames or not frames[-1].filename.endswith(VALIDATION_FILE):
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
        return f"{type(e).__name__} raised at {where}, not in {VALIDATION_FILE}: {e}"
    return None


def _call_op(name: str, backend: str | None, sample):
    fn = getattr(cnnops, name) if backend is not None else getattr(F, name)
    kwargs = dict(sample.kwargs)
    if backend is not None:
        kwargs["backend"] = backend
    return fn(sample.input, *sample.args, **kwargs)


class _Sample:
    """A fresh copy of a SampleInput's tensors (each side of a comparison gets its own)."""

    def __init__(self, s):
        self.input, self.args, self.kwargs = _clone(s.input), _clone(s.args), _clone(s.kwargs)

    def leaves(self):
        return _leaves([self.input, self.args, self.kwargs])

    def buffers(self):  # batch_norm's running stats (the tensors that do not need grad)
        return [t for t in _tensors(list(self.args)) if not t.requires_grad]


def _run_sample(name, dtype, case, backend):
    want_s, got_s = _Sample(case), _Sample(case)
    try:
        want = _call_op(name, None, want_s)
    except Exception as e:  # torch refuses: cnnops must refuse alike
        try:
            _call_op(name, backend, got_s)
        except Exception as e2:
            problem = _check_refusal(e2)
            return ("failed", problem) if problem else ("refused", f"{type(e2).__name__}: {e2}")
        return "failed", f"torch refuses ({type(e).__name__}: {e}) but cnnops accepts"
    try:
        got = _call_op(name, backend, got_s)
    except Exception as e:
        return "failed", f"torch accepts but cnnops raises {type(e).__name__}: {e}"
    tol = _tolerance(DTYPES[dtype], name)
    try:
        for i, (g, w) in enumerate(zip(_tensors(got), _tensors(want))):
            _compare(f"output {i}", g, w, tol)
            if g.numel() > 1 and _layout(g) != _layout(w):
                raise AssertionError(f"output {i} is {_layout(g)}, torch's is {_layout(w)}")
        if len(_tensors(got)) != len(_tensors(want)):
            raise AssertionError(f"{len(_tensors(got))} outputs, torch gives {len(_tensors(want))}")
        for i, (g, w) in enumerate(zip(got_s.buffers(), want_s.buffers())):
            _compare(f"running stat {i}", g, w, tol)
        _backward_and_compare(name, got, want, got_s.leaves(), want_s.leaves(), tol)
    except AssertionError as e:
        return "failed", str(e)
    return "passed", ""


def _run_error(name, case, backend):
    s = _Sample(case.sample_input)
    try:
        _call_op(name, backend, s)
    except Exception as e:
        problem = _check_refusal(e)
        return ("failed", problem) if problem else ("refused", f"{type(e).__name__}: {e}")
    return "failed", f"torch refuses ({case.error_type.__name__}: {case.error_regex}) but cnnops accepts"


def _build(name, m, backend):
    """(torch module, cnnops module with torch's state dict) from one ModuleInput."""
    args, kwargs = m.constructor_input.args, m.constructor_input.kwargs
    torch.manual_seed(0)
    want = getattr(torch.nn, name)(*args, **kwargs)
    got = getattr(cnn, name)(*args, **kwargs, backend=backend)
    got.load_state_dict(want.state_dict())
    return want, got


def _run_module(name, dtype, case, backend):
    training, m = case
    dt = DTYPES[dtype]
    want_m, got_m = _build(name, m, backend)
    want_m.to(dt).train(training)
    got_m.to(dt).train(training)
    want_in, got_in = _clone(m.forward_input.args), _clone(m.forward_input.args)
    want_kw, got_kw = _clone(m.forward_input.kwargs), _clone(m.forward_input.kwargs)
    want = want_m(*want_in, **want_kw)
    try:
        got = got_m(*got_in, **got_kw)
    except Exception as e:
        return "failed", f"torch.nn.{name} accepts but cnnops.nn.{name} raises {type(e).__name__}: {e}"
    tol = _tolerance(dt, name)
    try:
        for i, (g, w) in enumerate(zip(_tensors(got), _tensors(want))):
            _compare(f"output {i}", g, w, tol)
        for (key, g), (_, w) in zip(got_m.state_dict().items(), want_m.state_dict().items()):
            _compare(f"state {key} after forward", g, w, tol)
        _backward_and_compare(name, got, want, _leaves(got_in) + list(got_m.parameters()),
                              _leaves(want_in) + list(want_m.parameters()), tol)
    except AssertionError as e:
        return "failed", str(e)
    return "passed", ""


def _run_module_error(name, case, backend):
    from torch.testing._internal.common_modules import ModuleErrorEnum
    m = case.module_error_input
    try:
        module = getattr(cnn, name)(*m.constructor_input.args, **m.constructor_input.kwargs,
                                    backend=backend)
    except Exception as e:
        if case.error_on != ModuleErrorEnum.CONSTRUCTION_ERROR:
            return "failed", f"constructor raises {type(e).__name__}: {e}"
        return "refused", f"constructor (torch.nn's own): {type(e).__name__}: {e}"
    try:
        module(*_clone(m.forward_input.args), **_clone(m.forward_input.kwargs))
    except Exception as e:
        problem = _check_refusal(e)
        return ("failed", problem) if problem else ("refused", f"{type(e).__name__}: {e}")
    return "failed", f"torch refuses ({case.error_type.__name__}: {case.error_regex}) but cnnops accepts"


def run_case(kind: str, name: str, dtype: str, index: int, backend: str) -> tuple[str, str]:
    case = cases(kind, name, dtype)[index]
    reason = _excluded(kind, name, case)
    if reason:
        return "skipped", reason
    if kind == "sample":
        return _run_sample(name, dtype, case, backend)
    if kind == "error":
        return _run_error(name, case, backend)
    if kind == "module":
        return _run_module(name, dtype, case, backend)
    return _run_module_error(name, case, backend)


# ----------------------------------------------------------------------------------------
# child processes (the native backend)
# ----------------------------------------------------------------------------------------

def run_in_children(kind, name, dtype, backend, indices, timeout=600) -> dict[int, tuple]:
    """run_case for each index in child processes: {index: (status, message)}.

    A child that dies (a crash in a kernel) or hangs fails the case it was running; the rest
    run in a fresh child."""
    results: dict[int, tuple] = {}
    todo = list(indices)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))] +
        ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    while todo:
        cmd = [sys.executable, os.path.abspath(__file__), kind, name, dtype, backend,
               ",".join(map(str, todo))]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
            out, err, rc = p.stdout, p.stderr, p.returncode
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            err, rc = f"timed out after {timeout} s", "timeout"
        running = None
        for line in out.splitlines():
            if line.startswith("START "):
                running = int(line.split()[1])
            elif line.startswith("RESULT "):
                r = json.loads(line[len("RESULT "):])
                results[r["index"]] = (r["status"], r["message"])
                running = None
        if running is None and len(results) < len(indices):
            # died before its first case (import error...): fail the next case with why
            running = next(i for i in todo if i not in results)
        if running is not None:
            results[running] = ("failed", f"child process died (exit {rc}) running this case: "
                                          f"{err.strip()[-800:]}")
        todo = [i for i in todo if i not in results]
    return results


def _child(kind, name, dtype, backend, indices):
    for i in indices:
        print(f"START {i}", flush=True)
        try:
            status, message = run_case(kind, name, dtype, i, backend)
        except Exception as e:  # the harness itself: report it as this case's failure
            status, message = "failed", f"harness error {type(e).__name__}: {e}"
        print("RESULT " + json.dumps({"index": i, "status": status, "message": message}),
              flush=True)


if __name__ == "__main__":
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    _kind, _name, _dtype, _backend, _indices = sys.argv[1:6]
    _child(_kind, _name, _dtype, _backend, [int(i) for i in _indices.split(",") if i])
