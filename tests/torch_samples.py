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
that case only: `python tests/torch_samples.py KIND BACKEND` reads a JSON list of
(name, dtype, index) keys on stdin and prints one `RESULT {json}` line per case, with a
`START key` line before it so the parent knows which case a dying child was running.

`python tests/torch_samples.py --summary [BACKENDS]` prints the counts table without pytest.
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


# Backends run on a subset of the sample / module cases (per op or module and dtype): the
# reference loops and the Triton interpreter are slow. Error cases run in full everywhere.
SUBSET_CAPS = {"reference": 8, "triton": 6}


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

def all_keys(kind: str) -> list[tuple[str, str, int]]:
    """Every (name, dtype, index) of a kind."""
    names = OPS if kind in ("sample", "error") else MODULES
    dtypes = tuple(DTYPES) if kind in ("sample", "module") else ("any",)
    return [(n, d, i) for n in names for d in dtypes for i in range(len(cases(kind, n, d)))]


def run_in_children(kind, backend, keys, timeout=900) -> dict[tuple, tuple]:
    """run_case for each (name, dtype, index) key in child processes: {key: (status, message)}.

    A child that dies (a crash in a kernel) or hangs fails the case it was running; the rest
    run in a fresh child."""
    results: dict[tuple, tuple] = {}
    todo = [tuple(k) for k in keys]
    while todo:
        cmd = [sys.executable, os.path.abspath(__file__), kind, backend]
        payload = json.dumps(todo)
        try:
            p = subprocess.run(cmd, input=payload, capture_output=True, text=True,
                               timeout=timeout)
            out, err, rc = p.stdout, p.stderr, p.returncode
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            err, rc = f"timed out after {timeout} s", "timeout"
        running = None
        for line in out.splitlines():
            if line.startswith("START "):
                running = tuple(json.loads(line[len("START "):]))
            elif line.startswith("RESULT "):
                r = json.loads(line[len("RESULT "):])
                results[tuple(r["key"])] = (r["status"], r["message"])
                running = None
        if running is None and any(k not in results for k in todo):
            # died before its first case (an import error...): fail the next case with why
            running = next(k for k in todo if k not in results)
        if running is not None:
            results[running] = ("failed", f"child process died (exit {rc}) running this case: "
                                          f"{err.strip()[-1500:]}")
        todo = [k for k in todo if k not in results]
    return results


class ChildResults:
    """The results of one backend's cases, computed once per test run in child processes and
    shared between pytest-xdist workers through files in `root` (the first worker to ask for a
    kind computes it under a lock, the others read its file)."""

    def __init__(self, root, backend: str):
        self.root, self.backend, self._memo = root, backend, {}

    def get(self, kind: str, name: str, dtype: str, index: int) -> tuple[str, str]:
        if kind not in self._memo:
            import fcntl
            path = os.path.join(self.root, f"{self.backend}-{kind}.json")
            with open(path + ".lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not os.path.exists(path):
                    results = run_in_children(kind, self.backend, all_keys(kind))
                    with open(path + ".tmp", "w") as f:
                        json.dump([[list(k), v] for k, v in results.items()], f)
                    os.replace(path + ".tmp", path)  # readers see all of it or nothing
                with open(path) as f:
                    self._memo[kind] = {tuple(k): tuple(v) for k, v in json.load(f)}
        return self._memo[kind][(name, dtype, index)]


def _child(kind, backend, keys):
    for key in keys:
        print("START " + json.dumps(key), flush=True)
        try:
            status, message = run_case(kind, *key, backend)
        except Exception as e:  # the harness itself: report it as this case's failure
            status, message = "failed", f"harness error {type(e).__name__}: {e}"
        print("RESULT " + json.dumps({"key": key, "status": status, "message": message}),
              flush=True)


# ----------------------------------------------------------------------------------------
# the pytest side (test_opinfo.py, test_moduleinfo.py)
# ----------------------------------------------------------------------------------------

# Known backend bugs, as strict xfails (the mark fails once the owner's fix lands: then remove
# the entry). Key: (backend, kind, name, dtype, describe(...)); value: the reason.
XFAIL: dict[tuple[str, str, str, str, str], str] = {
}


def backends_here() -> dict[str, str | None]:
    """Every backend -> None when it can run CPU tensors here, else why not."""
    return {name: cnnops.get_backend(name).unavailable_reason(torch.device("cpu"))
            for name in ("torch", "native", "reference", "triton")}


# Ops with many samples (max_pool2d: 1,440 per dtype) run them in chunks of this many per
# test item: pytest's cost per item would otherwise exceed the cases' own. A failing case
# is still named, with its index and description, in the chunk's failure message.
CHUNK = 48


def params(kinds) -> list:
    """pytest.param(backend, kind, name, dtype, indices) for the cases each backend runs."""
    import pytest
    out = []
    xfail_prefixes = {k[:4] for k in XFAIL}
    for backend, reason in backends_here().items():
        skip = [pytest.mark.skip(reason=f"{backend} backend: {reason}")] if reason else []
        for kind in kinds:
            names = OPS if kind in ("sample", "error") else MODULES
            dtypes = tuple(DTYPES) if kind in ("sample", "module") else ("any",)
            for name in names:
                for dtype in dtypes:
                    n = len(cases(kind, name, dtype))
                    indices = (subset(n, SUBSET_CAPS[backend]) if backend in SUBSET_CAPS
                               and kind in ("sample", "module") else list(range(n)))
                    plain = []
                    for index in indices:
                        why = (XFAIL.get((backend, kind, name, dtype,
                                          describe(kind, name, dtype, index)))
                               if (backend, kind, name, dtype) in xfail_prefixes else None)
                        if why is None:
                            plain.append(index)
                            continue
                        out.append(pytest.param(
                            backend, kind, name, dtype, (index,),
                            marks=skip + [pytest.mark.xfail(strict=True, reason=why)],
                            id=f"{backend}-{kind}-{name}-{dtype}-{index}"))
                    size = CHUNK if len(plain) > 2 * CHUNK else 1
                    for at in range(0, len(plain), size):
                        chunk = tuple(plain[at:at + size])
                        label = (f"{chunk[0]}" if len(chunk) == 1 else
                                 f"{chunk[0]}..{chunk[-1]}")
                        out.append(pytest.param(backend, kind, name, dtype, chunk, marks=skip,
                                                id=f"{backend}-{kind}-{name}-{dtype}-{label}"))
    return out


def child_results_root(tmp_path_factory) -> str:
    """This test run's folder shared by the xdist workers (each has its own basetemp in it)."""
    root = tmp_path_factory.getbasetemp()
    return str(root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root)


def check(request, child_results, backend, kind, name, dtype, indices) -> None:
    """The test body: run (or look up) the cases, record their outcomes, assert on them."""
    import pytest
    # a sample torch refuses is fine when cnnops refuses it alike ("refused")
    expected = ("refused",) if kind in ("error", "module_error") else ("passed", "refused")
    problems, skipped = [], []
    for index in indices:
        if backend == "native":
            status, message = child_results.get(kind, name, dtype, index)
        else:
            status, message = run_case(kind, name, dtype, index, backend)
        record(request, backend, kind, name, status)
        if status == "skipped":
            skipped.append(message)
        elif status not in expected:
            problems.append(f"[{index}] {describe(kind, name, dtype, index)}: {message}")
    assert not problems, (f"{len(problems)} of {len(indices)} cases differ from torch:\n" +
                          "\n".join(problems))
    if skipped and len(skipped) == len(indices):
        pytest.skip(skipped[0])


# ----------------------------------------------------------------------------------------
# counts (the closing note's table)
# ----------------------------------------------------------------------------------------

def record(request, backend, kind, name, status) -> None:
    """Puts a case's outcome in the test report, for `terminal_summary`."""
    request.node.user_properties.append(("torch_samples", (backend, kind, name, status)))


def terminal_summary(terminalreporter) -> None:
    """Counts per kind, op / module and backend (run, passed, refused, skipped, failed) from the
    reports' user_properties; works under xdist (the controller gets the workers' reports).
    Hook it from conftest.py: `def pytest_terminal_summary(terminalreporter): ...`."""
    import collections
    counts = collections.defaultdict(collections.Counter)
    for reports in terminalreporter.stats.values():
        for r in reports:
            if getattr(r, "when", None) != "call":
                continue
            for key, value in getattr(r, "user_properties", ()):
                if key == "torch_samples":
                    backend, kind, name, status = value
                    counts[(kind, name, backend)][status] += 1
    if counts:
        _print_table(counts, terminalreporter.write_line)


def _print_table(counts, write) -> None:
    statuses = ("passed", "refused", "skipped", "failed")
    write("PyTorch OpInfo / ModuleInfo samples on cnnops (run = all but skipped):")
    write(f"{'kind':13} {'op / module':12} {'backend':10} {'run':>5} " +
          " ".join(f"{s:>7}" for s in statuses))
    for (kind, name, backend), c in sorted(counts.items()):
        run = sum(c.values()) - c["skipped"]
        write(f"{kind:13} {name:12} {backend:10} {run:>5} " +
              " ".join(f"{c[s]:>7}" for s in statuses))


def main_summary(backends, caps) -> int:
    """`python tests/torch_samples.py --summary`: the counts without pytest (native in
    children, the others in this process, reference and triton on the tests' subsets)."""
    import collections
    counts = collections.defaultdict(collections.Counter)
    failed = 0
    for backend in backends:
        for kind in KINDS:
            keys = all_keys(kind)
            if backend in caps and kind in ("sample", "module"):
                keys = [k for k in keys if k[2] in subset(len(cases(kind, k[0], k[1])),
                                                          caps[backend])]
            if backend == "native":
                results = run_in_children(kind, backend, keys)
            else:
                results = {k: run_case(kind, *k, backend) for k in keys}
            for (name, dtype, index), (status, message) in results.items():
                counts[(kind, name, backend)][status] += 1
                if status == "failed":
                    failed += 1
                    print(f"FAILED {backend} {kind} {name} {dtype} {index} "
                          f"{describe(kind, name, dtype, index)}: {message[:300]}")
    _print_table(counts, print)
    return 1 if failed else 0


if __name__ == "__main__":
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    if sys.argv[1] == "--summary":
        sys.exit(main_summary(sys.argv[2].split(",") if len(sys.argv) > 2 else
                              ["torch", "native", "reference", "triton"], SUBSET_CAPS))
    # tiny tensors: one thread, no spinning OpenMP workers fighting the pytest workers
    torch.set_num_threads(1)
    _child(sys.argv[1], sys.argv[2], [tuple(k) for k in json.loads(sys.stdin.read())])
