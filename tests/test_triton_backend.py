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


# ---- exact arithmetic on the GPU: the PTX of an ahead-of-time sm_90 compile ----------------

# Every kernel of the modules that divide or take square roots of data, with the constexprs
# to compile it with; a new kernel without an entry here fails the test.
_PTX_SCRIPT = r'''
import json, sys
import triton, triton.language as tl
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction
from cnnops.backends.triton import avg_pool2d, batch_norm

CONSTEXPRS = {
    "avg_pool2d_fwd_kernel": dict(HAS_OVERRIDE=False, COUNT_PAD=False, CHANNELS_LAST=False,
                                  BLOCK=256),
    "avg_pool2d_grad_input_kernel": dict(HAS_OVERRIDE=False, COUNT_PAD=False,
                                         CHANNELS_LAST=False, BLOCK=256),
    "batch_norm_stats_kernel": dict(BLOCK_R=256, BLOCK_C=1),
    "batch_norm_finalize_kernel": dict(TRAINING=True, UPDATE_RUNNING=True, BLOCK_C=128),
    "batch_norm_finalize_kernel eval": dict(TRAINING=False, UPDATE_RUNNING=False, BLOCK_C=128),
    "batch_norm_apply_kernel": dict(HAS_WEIGHT=True, HAS_BIAS=True, BLOCK_R=256, BLOCK_C=1),
    "batch_norm_grad_reduce_kernel": dict(BLOCK_R=256, BLOCK_C=1),
    "batch_norm_grad_sums_kernel": dict(BLOCK_C=128),
    "batch_norm_grad_input_kernel": dict(TRAINING=True, HAS_WEIGHT=True, BLOCK_R=256,
                                         BLOCK_C=1),
}
kernels = {}
for module in (avg_pool2d, batch_norm):
    for name, obj in vars(module).items():
        if isinstance(obj, (JITFunction, Autotuner)) and name.endswith("_kernel"):
            kernels[name] = obj.fn if isinstance(obj, Autotuner) else obj
missing = sorted(set(kernels) - {k.split()[0] for k in CONSTEXPRS})
result = {"missing": missing, "ptx": {}}
for dtype, acc in (("fp32", tl.float32), ("fp64", tl.float64)):
    for entry, constexprs in CONSTEXPRS.items():
        if dtype == "fp64" and "finalize" not in entry and "avg_pool2d_fwd" not in entry:
            continue  # fp64 `/` and sqrt are exact anyway: check div_rn/sqrt_rn's fp64 branch
        fn = kernels[entry.split()[0]]
        constexprs = dict(constexprs, ACC_TYPE=acc)
        sig = {}
        for arg in fn.arg_names:
            if arg in constexprs:
                sig[arg] = "constexpr"
            elif arg.endswith("_ptr"):
                sig[arg] = "*" + dtype
            elif arg in ("eps", "momentum"):
                sig[arg] = "fp32"
            else:
                sig[arg] = "i32"
        src = ASTSource(fn, sig, constexprs={(fn.arg_names.index(k),): v
                                             for k, v in constexprs.items()})
        compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32))
        result["ptx"][f"{entry} {dtype}"] = compiled.asm["ptx"]
json.dump(result, sys.stdout)
'''


def test_gpu_kernels_divide_and_take_roots_exactly():
    """Compiled for sm_90 ahead of time (no GPU needed), batch norm and average pooling use
    IEEE round-to-nearest division and square root (div.rn, sqrt.rn), never the approximate
    div.full.f32 / sqrt.approx / rcp.approx that Triton's `/` and tl.sqrt give in float32."""
    pytest.importorskip("triton")
    import json
    import re
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _PTX_SCRIPT], capture_output=True, text=True,
                          env=environment, timeout=300)
    if done.returncode != 0 and "ptxas" in done.stderr and "not found" in done.stderr.lower():
        pytest.skip(f"no ptxas for an sm_90 compile: {done.stderr[-300:]}")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert not result["missing"], f"kernels without constexprs in the test: {result['missing']}"
    approximate = re.compile(r"\b(div\.full\.f32|div\.approx|sqrt\.approx|rcp\.approx)")
    for name, ptx in result["ptx"].items():
        found = sorted(set(approximate.findall(ptx)))
        assert not found, f"{name}: approximate instructions {found}"
    # the exact instructions are really there (the test would pass vacuously otherwise)
    assert "div.rn.f32" in result["ptx"]["avg_pool2d_fwd_kernel fp32"]
    assert "sqrt.rn.f32" in result["ptx"]["batch_norm_finalize_kernel fp32"]
    assert "sqrt.rn.f64" in result["ptx"]["batch_norm_finalize_kernel eval fp64"]


# ---- the triton_op registration (the GPU's branch of kernel_op) under the interpreter -------

_PROBE = "cnnops_triton_probe"
_probe_ops = {}


def _probe(stem):
    """The op `stem` registered again under the namespace cnnops_triton_probe through
    kernel_op's triton_op branch (forced: under the interpreter kernel_op takes custom_op)."""
    if stem not in _probe_ops:
        import importlib
        module = importlib.import_module(f"cnnops.backends.triton.{stem}")
        _probe_ops[stem] = (module, module.register(_PROBE, use_triton_op=True))
    return _probe_ops[stem]


def _probe_cases():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, generator=g).to(_triton_device())
    w = torch.randn(3, dtype=torch.float64, generator=g).to(x.device)
    rm = torch.zeros(3, dtype=torch.float64, device=x.device)
    rv = torch.ones(3, dtype=torch.float64, device=x.device)
    return {"max_pool2d": (x, [3, 2], [2, 1], [1, 1], [1, 2], True),
            "avg_pool2d": (x, [3, 3], [2, 2], [1, 1], True, False, 4),
            "batch_norm": (x, w, None, rm, rv, True, 0.1, 1e-5)}


def _triton_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def _skip_without_triton_here():
    pytest.importorskip("triton")
    reason = get_backend("triton").unavailable_reason(torch.device(_triton_device()))
    if reason is not None:
        pytest.skip(reason)


INTERPRETER_AOT_REASON = (
    "under TRITON_INTERPRET=1, torch.library.wrap_triton returns Triton's InterpretedFunction "
    "unwrapped (torch/_library/triton.py: interpreted kernels lack the JIT metadata of the "
    "triton_kernel_wrapper_mutation HOP), so AOTDispatcher's decomposition of a triton_op "
    "cannot record the kernel launches: launched on FakeTensors the interpreter fails with "
    "'Attempted to set the storage of a tensor on device \"meta\" to a storage on different "
    "device \"cpu\"', skipped (as `launch` does on fake tensors) the traced graph holds only the "
    "allocations and opcheck reports 'Outputs of the operator are different in eager-mode "
    "PyTorch vs AOTDispatcher tracing'")


@pytest.mark.parametrize("stem", ["max_pool2d", "avg_pool2d", "batch_norm"])
def test_triton_op_branch_runs_and_passes_opcheck(stem):
    """kernel_op's triton_op branch (what the GPU registers) under the interpreter: the op
    exists, computes what the custom_op computes, differentiates, and passes opcheck's schema,
    autograd-registration and fake-tensor tests (AOT dispatch: see the next test)."""
    _skip_without_triton_here()
    module, (forward, _grad) = _probe(stem)
    args = _probe_cases()[stem]
    got, want = forward(*args), getattr(module, stem)(*args)
    for a, b in zip(got if isinstance(got, tuple) else (got,),
                    want if isinstance(want, tuple) else (want,)):
        assert torch.equal(a, b)
    leaf = args[0].detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: forward(t, *args[1:])[0], (leaf,), fast_mode=True)
    # triton_op (unlike custom_op) decomposes into its kernels under FunctionalTensorMode
    from torch._subclasses.functional_tensor import FunctionalTensorMode
    assert FunctionalTensorMode in forward._torch_dispatch_fns
    tests = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(forward, (leaf, *args[1:]), test_utils=tests)


@pytest.mark.parametrize("stem", ["max_pool2d", "batch_norm"])
def test_triton_op_branch_aot_dispatch(stem):
    """opcheck's AOT-dispatch test through the triton_op branch: on the GPU it must pass (the
    kernels become graph nodes); under the interpreter torch cannot trace them (reason in
    INTERPRETER_AOT_REASON): there it must fail the way that reason says, so a torch that
    lifts the limit makes this test fail and be updated."""
    _skip_without_triton_here()
    from torch.testing._internal.optests.generate_tests import OpCheckError
    _, (forward, _grad) = _probe(stem)
    args = _probe_cases()[stem]
    leaf = args[0].detach().requires_grad_()
    check = lambda: torch.library.opcheck(forward, (leaf, *args[1:]),  # noqa: E731
                                          test_utils=("test_aot_dispatch_dynamic",))
    from cnnops.backends.triton import _launch
    if not _launch.INTERPRETED:
        check()
        return
    with pytest.raises(OpCheckError, match="different in eager-mode PyTorch vs AOTDispatcher"):
        check()
