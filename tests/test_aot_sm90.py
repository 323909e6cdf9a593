"""benchmarks/aot_sm90.py, the sm_90 ahead-of-time compile and the GPU proof's plan: the parts
that decide what is compiled and what is reported, without compiling the project's kernels
(CI runs the tool itself; that takes minutes). Each runs in a subprocess without
TRITON_INTERPRET: the tool binds kernels the way Triton's GPU launcher does."""
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code: str, tmp_path) -> str:
    """Runs `code` from a file (@triton.jit needs its source) in the repository root."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, str(script)], capture_output=True,
                         text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_sass_loop_stats_finds_the_innermost_mma_loop(tmp_path):
    out = run_python('''
        import sys; sys.path.insert(0, "benchmarks"); sys.path.insert(0, ".")
        import aot_sm90
        sass = """
                /*0000*/                   MOV R1, c[0x0][0x28] ;
        .L_x_0:
                /*0010*/                   IMAD R2, R3, R4, R5 ;
        .L_x_1:
                /*0020*/                   LDS R6, [R7] ;
                /*0030*/                   IADD3 R8, R8, 0x1, RZ ;
                /*0040*/                   HGMMA.64x128x16.F32.BF16 gdesc[UR4], RZ, !UPT ;
                /*0050*/                   HGMMA.64x128x16.F32.BF16 gdesc[UR8], R24 ;
                /*0060*/               @P0 BRA `(.L_x_1) ;
                /*0070*/                   FADD R9, R9, R10 ;
                /*0080*/               @P1 BRA `(.L_x_0) ;
                /*0090*/                   EXIT ;
        """
        print(aot_sm90.sass_loop_stats(sass))
    ''', tmp_path)
    # the inner loop: LDS, IADD3, 2 HGMMA, BRA = 5 instructions, 1 integer op
    assert "'loop_instructions': 5" in out and "'mmas': 2" in out, out
    assert "'instructions_per_mma': 2.5" in out and "'integer_share': 0.2" in out, out


def test_configs_pruning_heuristics_and_autotune_key_follow_triton(tmp_path):
    out = run_python('''
        import sys; sys.path.insert(0, "benchmarks"); sys.path.insert(0, ".")
        import torch, triton, triton.language as tl
        import aot_sm90

        def prune(configs, named_args, **kw):
            return [c for c in configs if c.kwargs["BLOCK"] <= named_args["n"]]

        @triton.autotune([triton.Config({"BLOCK": b}, num_warps=4) for b in (16, 32, 64)],
                         key=["n"], prune_configs_by={"early_config_prune": prune})
        @triton.heuristics({"EVEN": lambda a: a["n"] % a["BLOCK"] == 0})
        @triton.jit
        def k(x, n, EVEN: tl.constexpr, BLOCK: tl.constexpr):
            i = tl.arange(0, BLOCK)
            tl.store(x + i, tl.load(x + i, mask=i < n), mask=i < n)

        x = torch.empty(48, device="meta", dtype=torch.bfloat16)
        every = aot_sm90.configs_of(k, (x, 48), {}, pruned=False)
        kept = aot_sm90.configs_of(k, (x, 48), {}, pruned=True)
        print("every", [(kw["BLOCK"], kw["EVEN"]) for _, kw in every])
        print("kept", [(kw["BLOCK"], kw["EVEN"]) for _, kw in kept])
        print("key", aot_sm90.autotune_key(k, (x, 48), {}))
        key1, _, sig, _, _ = aot_sm90.bind(aot_sm90.jit_function(k), (x, 1),
                                            {"BLOCK": 16, "EVEN": False, "num_warps": 4})
        key48, _, sig48, _, _ = aot_sm90.bind(aot_sm90.jit_function(k), (x, 48),
                                               {"BLOCK": 16, "EVEN": True, "num_warps": 4})
        print("sig", sig["x"], sig["n"], sig48["n"], key1 != key48)
    ''', tmp_path)
    assert "every [(16, True), (32, False), (64, False)]" in out, out
    assert "kept [(16, True), (32, False)]" in out, out
    assert "key ('k', (48, 'torch.bfloat16'))" in out, out
    # Triton's launcher makes an int equal to 1 a constant: a compile of its own
    assert "sig *bf16 constexpr i32 True" in out, out


def test_gpu_proof_script_parses_and_names_its_steps():
    subprocess.run(["bash", "-n", os.path.join(ROOT, "benchmarks", "gpu_proof.sh")], check=True)
    text = open(os.path.join(ROOT, "benchmarks", "gpu_proof.sh")).read()
    for step in ("step build", "step preflight", "step tests", "step sanitize", "step bench"):
        assert step in text
    assert "--plan" in text and "timeout" in text
