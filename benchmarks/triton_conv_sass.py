"""Static evidence for the Triton convolution on Hopper, without a GPU.

Compiles each conv kernel ahead of time for sm_90 (`triton.compile` on an `ASTSource`,
`GPUTarget("cuda", 90, 32)`, ptxas from Triton's wheel), disassembles the cubin with the
`cuobjdump` shipped in the wheel, finds the steady-state main loop (the backward branch whose
body holds the most tensor-core MMAs) and counts, inside it:

- MMA instructions (HGMMA = wgmma, HMMA = mma.sync, DMMA = float64 mma.sync),
- every other instruction (NOPs left out), and how many of them are integer work,
- an integer-division sequence (I2F.U32.RP / MUFU.RCP / IMAD.HI: what `//` and `%` by a
  runtime value compile to),
- async copies (LDGSTS = cp.async) and plain global loads (LDG),

plus registers, spills and shared memory of the whole kernel. The count per MMA is the
issue-bound figure of issue 15 (target: <= 30 non-MMA instructions per MMA in the bf16
channels-last forward, grad_input and grad_weight loops).

    TRITON_INTERPRET=0 .venv/bin/python benchmarks/triton_conv_sass.py [--dump DIR] [--all]

Prints a markdown table. `--all` also compiles every autotune config of each kernel
(registers / spills / shared memory per config). Runs on the CPU in a minute or two.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, not the interpreter

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                         "cuobjdump")

MMA = re.compile(r"^(HGMMA|HMMA|DMMA|IMMA)")
INTEGER = re.compile(r"^(IADD|IMAD|IMUL|LEA|ISETP|LOP|SHF|SHL|SHR|IABS|SEL|IMNMX|VIMNMX|"
                     r"I2F|F2I|PRMT|BMSK|FLO|POPC|BREV|UIADD|UIMAD|ULEA|UISETP|ULOP|USHF|"
                     r"USEL|UIMNMX|UPRMT|UMOV|MOV|S2R|S2UR|CS2R|R2UR|PLOP|UPLOP|P2R|R2P)")
DIVISION = re.compile(r"^(I2F\.U32\.RP|I2F\.RP|MUFU\.RCP|IMAD\.HI)")
INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Za-z0-9_.]*)([^;]*);")


def _kernel_fn(kernel):
    """The JITFunction under an Autotuner / Heuristics wrapper."""
    while not isinstance(kernel, triton.runtime.jit.JITFunction):
        kernel = kernel.fn
    return kernel


def compile_kernel(kernel, pointers: dict, constexprs: dict, div16=(), num_warps=4,
                   num_stages=3):
    """triton.compile for sm_90. `pointers`: arg name -> element type ("bf16", "fp32", ...);
    other non-constexpr args are i32; `div16`: i32 args known divisible by 16 (Triton's own
    specialisation of arguments that are, e.g. channels-last strides of 64-channel tensors)."""
    fn = _kernel_fn(kernel)
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = "*" + pointers[name]
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "i32"
            if name in div16:
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs,
                                    attrs=attrs)
    return triton.compile(src, target=TARGET,
                          options={"num_warps": num_warps, "num_stages": num_stages})


def _cuobjdump(compiled, flag: str) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        return subprocess.run([CUOBJDUMP, flag, f.name], capture_output=True, text=True,
                              check=True).stdout


def sass(compiled) -> list[tuple[int, str, str]]:
    """(address, opcode, operands) of every instruction."""
    text = _cuobjdump(compiled, "-sass")
    return [(int(m.group(1), 16), m.group(3), m.group(4)) for m in INSTR.finditer(text)]


def resources(compiled) -> tuple[int, int]:
    """(registers, bytes of local memory per thread = spills) from the cubin (CompiledKernel's
    n_regs / n_spills are filled only when a GPU driver loads the binary)."""
    text = _cuobjdump(compiled, "-res-usage")
    regs = re.search(r"REG:(\d+)", text)
    local = re.search(r"LOCAL:(\d+)", text)
    return int(regs.group(1)) if regs else -1, int(local.group(1)) if local else -1


def main_loop(instrs):
    """The instructions of the loop (backward branch) holding the most MMAs; None if none."""
    best = None
    for idx, (addr, op, args) in enumerate(instrs):
        if not op.startswith("BRA"):
            continue
        m = re.search(r"0x([0-9a-f]+)", args)
        if m is None or int(m.group(1), 16) > addr:
            continue
        start = int(m.group(1), 16)
        body = [i for i in instrs if start <= i[0] <= addr]
        mmas = sum(1 for i in body if MMA.match(i[1]))
        # the innermost loop with the most MMAs: more MMAs wins, then fewer instructions
        key = (mmas, -len(body))
        if mmas and (best is None or key > best[0]):
            best = (key, body)
    return None if best is None else best[1]


def loop_stats(compiled) -> dict:
    instrs = sass(compiled)
    body = main_loop(instrs)
    md = compiled.metadata
    regs, spills = resources(compiled)
    stats = {"regs": regs, "spills": spills, "smem": md.shared,
             "wgmma": any(op.startswith("HGMMA") for _, op, _ in instrs),
             "mma_kinds": sorted({op.split(".")[0] for _, op, _ in instrs if MMA.match(op)})}
    if body is None:
        stats.update(loop=0, mma=0, other=0, per_mma=None, int_share=None, div=False,
                     ldgsts=0, ldg=0)
        return stats
    ops = [op for _, op, _ in body if not op.startswith("NOP")]
    mma = sum(1 for op in ops if MMA.match(op))
    other = len(ops) - mma
    ints = sum(1 for op in ops if INTEGER.match(op) and not MMA.match(op))
    stats.update(loop=len(ops), mma=mma, other=other, per_mma=other / mma,
                 int_share=ints / max(other, 1), div=any(DIVISION.match(op) for op in ops),
                 ldgsts=sum(op.startswith("LDGSTS") for op in ops),
                 ldg=sum(op.startswith("LDG.") or op == "LDG" for op in ops),
                 mma_op=next(op for op in ops if MMA.match(op)))
    return stats


# Dense tensor-core multiply-adds per clock per SM on H100/H200 SXM (989 TFLOPS bf16, 495 TF32,
# 67 fp64 at 1.83 GHz on 132 SMs)
MACS_PER_CLOCK = {2: 2048, 4: 1024, 8: 139}


def issue_ratio(st, block_m, block_n, block_k, warps, elem) -> float | None:
    """Issue slots the loop takes on one SM sub-partition per step, over the clocks the tensor
    cores need for the step's block_m x block_n x block_k multiply-adds: above 1 the loop is
    issue-bound (tensor cores idle), below 1 it is not (one block per SM assumed; more
    blocks per SM scale both sides alike)."""
    if not st["mma"]:
        return None
    slots = st["loop"] * warps / 4  # every warp issues the whole loop; 4 sub-partitions
    return slots / (block_m * block_n * block_k / MACS_PER_CLOCK[elem])


def _fmt(name, cfg, st, seconds, ratio=None):
    per = "-" if st["per_mma"] is None else f"{st['per_mma']:.1f}"
    share = "-" if st["int_share"] is None else f"{100 * st['int_share']:.0f}%"
    ratio = "-" if ratio is None else f"{ratio:.2f}"
    return (f"| {name} | {cfg} | {st['regs']} | {st['spills']} | {st['smem'] // 1024} KB | "
            f"{st.get('mma_op', '-')} | {st['loop']} | {st['mma']} | {per} | {share} | "
            f"{ratio} | {'yes' if st['div'] else 'no'} | {st['ldgsts']}/{st['ldg']} | "
            f"{seconds:.1f} s |")


HEADER = ("| kernel | config (M x N x K, warps, stages) | regs | spills | smem | MMA | loop instrs "
          "| MMAs | non-MMA / MMA | integer share | issue / tensor clocks | int division "
          "| LDGSTS/LDG | compile |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def cases():
    """(name, kernel, pointer types, constexprs, i32 args divisible by 16, configs).

    The layers: a ResNet-18 3x3 / 1 layer with 64 channels at 56x56, batch 128 (forward and
    grad weight; the ints equal to 1 are constants, as Triton's launcher specialises them);
    grad input of a 3x3 / 2 layer (128 -> 128 channels): one stride phase, a 2x2 sub-filter;
    the ResNet stem 7x7 / 2 with 3 channels (padded to 4: the row-run path); float64 and
    float32-with-TF32 forwards of the 3x3 layer.
    """
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from cnnops.backends.triton import conv2d as tconv
    fwd, wgrad = tconv.conv2d_fwd_kernel, tconv.conv2d_grad_weight_kernel
    f32 = dict(ACC_TYPE=tl.float32, PRECISION="ieee")
    unit = dict(stride_h=1, stride_w=1, pad_h=1, pad_w=1, dil_h=1, dil_w=1)
    ptr = dict(x_ptr="bf16", w_ptr="bf16", b_ptr="bf16", y_ptr="bf16")
    fwd_cfg, wgrad_cfg = fwd.configs, wgrad.configs
    d16_fwd = ["NPQ", "C_OUT_G", "C_IN_G", "C_RUN", "sx_n", "sx_h", "sx_w", "sy_n", "sy_p",
               "sy_q"]
    return [
        ("fwd bf16 CL 3x3/1 64ch", fwd, ptr,
         dict(HAS_BIAS=False, RELU=False, ROW_RUN=0, EVEN_K=True, SPLIT=1, sy_c=1,
              **unit, **f32), d16_fwd, fwd_cfg),
        ("fwd bf16 CL 3x3/1 512ch split-K", fwd, ptr,
         dict(HAS_BIAS=False, RELU=False, ROW_RUN=0, EVEN_K=True, sy_c=1, **unit, **f32),
         d16_fwd, fwd_cfg),
        ("fwd bf16 stem 7x7/2 C_in 3->4 row run", fwd, ptr,
         dict(HAS_BIAS=False, RELU=False, ROW_RUN=4, EVEN_K=False, SPLIT=1, S_LOOP=1,
              sy_c=1, stride_h=2, stride_w=2, pad_h=3, pad_w=3, dil_h=1, dil_w=1, **f32),
         ["NPQ", "C_OUT_G", "sx_n", "sx_h", "sy_n", "sy_p", "sy_q"], fwd_cfg),
        ("dgrad bf16 CL 3x3/2 phase (fwd kernel)", fwd, ptr,
         dict(HAS_BIAS=False, RELU=False, ROW_RUN=0, EVEN_K=True, SPLIT=1, sy_c=1,
              stride_h=1, stride_w=1, pad_h=1, pad_w=1, dil_h=1, dil_w=1, **f32),
         d16_fwd, fwd_cfg),
        ("wgrad bf16 CL 3x3/1 64ch", wgrad,
         dict(dy_ptr="bf16", x_ptr="bf16", dw_ptr="fp32"), dict(EVEN_MN=True, **unit, **f32, _Q=56),
         ["C_OUT_G", "C_IN_G", "NPQ", "N", "sx_n", "sx_h", "sx_w"], wgrad_cfg),
        ("fwd fp32 TF32 CL 3x3/1 64ch", fwd, {k: "fp32" for k in ptr},
         dict(HAS_BIAS=False, RELU=False, ROW_RUN=0, EVEN_K=True, SPLIT=1, sy_c=1,
              ACC_TYPE=tl.float32, PRECISION="tf32", **unit), d16_fwd, fwd_cfg),
        ("fwd fp64 CL 3x3/1 64ch", fwd, {k: "fp64" for k in ptr},
         dict(HAS_BIAS=False, RELU=False, ROW_RUN=0, EVEN_K=True, SPLIT=1, sy_c=1,
              ACC_TYPE=tl.float64, PRECISION="ieee", **unit), d16_fwd,
         [c for c in fwd_cfg if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 64 * 64]),
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--all", action="store_true", help="every autotune config, not the first")
    ap.add_argument("--only", default="", help="substring of the case names to compile")
    args = ap.parse_args()
    print(f"Triton {triton.__version__}, target sm_90, ptxas from the wheel\n")
    print(HEADER)
    from cnnops.backends.triton import conv2d as tconv
    for name, kernel, pointers, constexprs, div16, cfgs in cases():
        if args.only and args.only not in name:
            continue
        constexprs = dict(constexprs)
        q_out = constexprs.pop("_Q", None)
        elem = {"bf16": 2, "fp16": 2, "fp32": 4, "fp64": 8}[next(iter(pointers.values()))]
        # the configs the autotuner's pruner keeps for this dtype (shared memory <= 227 KB)
        cfgs = [c for c in cfgs if tconv._smem_bytes(c, "BLOCK_M", "BLOCK_N", "BLOCK_K", elem)
                <= tconv.SMEM_LIMIT]
        for cfg in (cfgs if args.all else cfgs[:1]):
            blocks = {k: v for k, v in cfg.kwargs.items()}
            if q_out is not None:  # the heuristic of conv2d_grad_weight_kernel
                blocks["BLOCK_Q"] = min(triton.next_power_of_2(q_out), blocks["BLOCK_K"])
            t0 = time.perf_counter()
            try:
                c = compile_kernel(kernel, pointers, {**constexprs, **blocks}, div16,
                                   cfg.num_warps, cfg.num_stages)
            except Exception as e:  # report and go on: one table for every kernel
                print(f"| {name} | {blocks} | compile error: {type(e).__name__}: "
                      f"{str(e).splitlines()[0][:80]} |")
                continue
            label = "x".join(str(cfg.kwargs[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")) \
                + f", {cfg.num_warps}w, {cfg.num_stages}s"
            st = loop_stats(c)
            ratio = issue_ratio(st, cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"],
                                cfg.kwargs["BLOCK_K"], cfg.num_warps, elem)
            print(_fmt(name, label, st, time.perf_counter() - t0, ratio), flush=True)


if __name__ == "__main__":
    main()
