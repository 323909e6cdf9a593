"""The CUDA kernels of kernels/*.cu, run on the CPU under an emulation of CUDA's execution model.

No GPU is needed: each .cu file is rewritten for g++ (a launch `k<<<grid, block, shared,
stream>>>(args)` becomes `emu::Launch(grid, block, shared, stream)(k, args)`, dynamic shared
memory becomes a static buffer) and compiled with tests/native_cuda_emu/cuda_emu.h, where the
threads of a block are real threads (barriers for __syncthreads, per-warp exchange for
__shfl_down_sync). tests/native_cuda_emu/harness.cpp then compares every launcher (batch
norm's included), every dtype and both conv2d algorithms with the C++ kernels (tested against
PyTorch elsewhere).

The cases are listed here and written into a generated header (emu_cases.h) with their output
sizes from cnnops.shapes, as the binding gets them from the native backend: the kernels
compute no output size themselves.

This checks the kernels' index math, synchronisation and dtype handling; it does not check
what only a GPU shows (timing, memory coalescing, the real shuffle hardware, nvcc's code).
"""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cnnops.shapes import conv2d_output_hw, pool2d_output_hw

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ROOT / "kernels"
EMU = ROOT / "tests" / "native_cuda_emu"
CUDA_SOURCES = ("cuda/conv2d.cu", "cuda/max_pool2d.cu", "cuda/avg_pool2d.cu",
                "cuda/batch_norm.cu")
# every C++ kernel file (conv2d.cpp calls helpers in other files of kernels/cpu)
CPU_SOURCES = tuple(sorted(str(p.relative_to(KERNELS)) for p in (KERNELS / "cpu").glob("*.cpp")))


# name: (N, C_in, H, W, C_out, KH, KW, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups),
# bias, relu
CONV_CASES = {
    "conv basic relu": ((2, 3, 7, 9, 5, 3, 3, 1, 1, 1, 1, 1, 1, 1), True, True),
    "conv groups stride dilation": ((1, 4, 9, 8, 6, 3, 2, 2, 1, 1, 0, 1, 2, 2), True, False),
    "conv depthwise stride>kernel": ((2, 3, 6, 17, 3, 2, 2, 3, 3, 0, 0, 1, 1, 3), False, False),
    "conv two tiles, channel tail": ((1, 2, 20, 19, 9, 3, 3, 1, 1, 1, 1, 1, 1, 1), True, False),
    "conv kernel = input": ((1, 1, 5, 5, 1, 5, 5, 1, 1, 2, 2, 1, 1, 1), True, False),
    "conv patch too big for tiled": ((1, 1, 120, 118, 1, 3, 3, 1, 1, 0, 0, 50, 50, 1), False,
                                     False),
}
# name: (planes, H, W, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w);
# each runs with and without ceil_mode (the cases marked ceil-only have windows wider than
# the input, which only ceil_mode allows)
MAX_POOL_CASES = {  # and whether to plant NaN / -inf
    "max k3 s2 p1": ((6, 9, 8, 3, 3, 2, 2, 1, 1, 1, 1), True),
    "max rect": ((4, 10, 7, 3, 2, 2, 3, 1, 1, 1, 1), False),
    "max dilated": ((2, 13, 12, 3, 3, 1, 1, 1, 1, 2, 3), False),
    "max stride>kernel": ((3, 11, 13, 2, 2, 3, 3, 0, 0, 1, 1), False),
    "max window wider (ceil only)": ((3, 6, 3, 2, 4, 2, 4, 0, 0, 1, 1), False),
}
AVG_POOL_CASES = {
    "avg k3 s2 p1": (6, 10, 9, 3, 3, 2, 2, 1, 1, 1, 1),
    "avg rect": (4, 9, 11, 3, 2, 2, 3, 1, 1, 1, 1),
    "avg k5 s3 p2": (2, 12, 8, 5, 5, 3, 3, 2, 2, 1, 1),
    "avg window wider (ceil only)": (3, 4, 3, 3, 6, 2, 6, 1, 1, 1, 1),
}


def _c(value) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def cases_header() -> str:
    """emu_cases.h: X-macro lists of the cases above with their output sizes."""
    conv, max_pool, avg_pool = [], [], []
    for name, (g, bias, relu) in CONV_CASES.items():
        n, cin, h, w, cout, kh, kw, sh, sw, ph, pw, dh, dw, groups = g
        out = conv2d_output_hw((h, w), (kh, kw), (sh, sw), (ph, pw), (dh, dw))
        conv.append((f'"{name}"', bias, relu, *g, *out))
    for ceil_mode in (False, True):
        suffix = " ceil" if ceil_mode else ""
        for cases, rows in ((MAX_POOL_CASES, max_pool), (AVG_POOL_CASES, avg_pool)):
            for name, case in cases.items():
                if "ceil only" in name and not ceil_mode:
                    continue
                g, extra = (case[0], (case[1],)) if cases is MAX_POOL_CASES else (case, ())
                planes, h, w, kh, kw, sh, sw, ph, pw, dh, dw = g
                out = pool2d_output_hw((h, w), (kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil_mode)
                assert min(out) >= 1, name
                rows.append((f'"{name}{suffix}"', *extra, *g, *out))
    lines = []
    for macro, rows in (("CONV", conv), ("MAX_POOL", max_pool), ("AVG_POOL", avg_pool)):
        lines.append(f"#define CNNOPS_EMU_{macro}_CASES(X) \\")
        lines += [f"  X({', '.join(_c(v) for v in row)}) \\" for row in rows]
        lines.append("")
    return "#pragma once\n" + "\n".join(lines) + "\n"


def _cuda_include() -> Path | None:
    """A directory with cuda_runtime.h (the headers only: nothing CUDA runs)."""
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        homes.append(str(Path(nvcc).resolve().parent.parent))
    for home in filter(None, homes):
        if (Path(home) / "include" / "cuda_runtime.h").exists():
            return Path(home) / "include"
    return None


def for_emulation(source: str) -> str:
    """A .cu file's text rewritten so g++ compiles it against cuda_emu.h."""
    source = re.sub(r"([\w:]+<\w+>)<<<(.*?)>>>\(", r"::emu::Launch(\2)(\1, ", source, flags=re.S)
    source = re.sub(r"extern __shared__[^;]*?(\w+)\[\];",
                    r"unsigned char* \1 = ::emu::dynamic_shared;", source)
    source = source.replace("cudaGetLastError()", "::emu::last_error()")
    return '#include "cuda_emu.h"\n' + source


def test_for_emulation_rewrites_every_launch():
    for name in CUDA_SOURCES:
        rewritten = for_emulation((KERNELS / name).read_text())
        assert "<<<" not in rewritten and ">>>" not in rewritten, name
        assert "extern __shared__" not in rewritten, name


def test_cuda_kernels_match_cpp_kernels(tmp_path):
    compiler = shutil.which("g++")
    include = _cuda_include()
    if compiler is None or include is None:
        pytest.skip(f"needs g++ and the CUDA headers (g++: {compiler}, cuda_runtime.h: {include})")
    generated = []
    for name in CUDA_SOURCES:
        path = tmp_path / Path(name).name.replace(".cu", "_emu.cpp")
        path.write_text(for_emulation((KERNELS / name).read_text()))
        generated.append(str(path))
    (tmp_path / "emu_cases.h").write_text(cases_header())
    binary = tmp_path / "harness"
    command = [compiler, "-std=c++20", "-O1", "-fopenmp", "-Wno-attributes",
               "-DCNNOPS_WITH_CUDA=1", f"-I{include}", f"-I{EMU}", f"-I{KERNELS / 'include'}",
               f"-I{tmp_path}",
               str(EMU / "harness.cpp"), *(str(KERNELS / s) for s in CPU_SOURCES), *generated,
               "-o", str(binary), "-lpthread"]
    build = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if build.returncode != 0 and "barrier" in build.stderr and "No such file" in build.stderr:
        pytest.skip("the emulation needs a C++20 standard library (<barrier>)")
    assert build.returncode == 0, f"emulation build failed:\n{build.stderr[-4000:]}"
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, f"CUDA kernels (emulated) differ from the C++ kernels:\n" \
                                f"{run.stdout[-6000:]}{run.stderr[-2000:]}"
    assert " 0 failures" in run.stdout
