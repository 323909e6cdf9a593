"""The CUDA kernels of kernels/*.cu, run on the CPU under an emulation of CUDA's execution model.

No GPU is needed: each .cu file is rewritten for g++ (a launch `k<<<grid, block, shared,
stream>>>(args)` becomes `emu::Launch(grid, block, shared, stream)(k, args)`, dynamic shared
memory becomes a static buffer) and compiled with tests/native_cuda_emu/cuda_emu.h, where the
threads of a block are real threads (barriers for __syncthreads, per-warp exchange for
__shfl_down_sync). tests/native_cuda_emu/harness.cpp then compares every launcher, every dtype
and both conv2d algorithms with the C++ kernels (tested against PyTorch elsewhere).

This checks the kernels' index math, synchronisation and dtype handling; it does not check
what only a GPU shows (timing, memory coalescing, the real shuffle hardware, nvcc's code).
"""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ROOT / "kernels"
EMU = ROOT / "tests" / "native_cuda_emu"
CUDA_SOURCES = ("cuda/conv2d.cu", "cuda/max_pool2d.cu", "cuda/avg_pool2d.cu")
CPU_SOURCES = ("cpu/conv2d.cpp", "cpu/max_pool2d.cpp", "cpu/avg_pool2d.cpp")


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
    source = re.sub(r"([\w:]+<T>)<<<(.*?)>>>\(", r"::emu::Launch(\2)(\1, ", source, flags=re.S)
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
    binary = tmp_path / "harness"
    command = [compiler, "-std=c++20", "-O1", "-fopenmp", "-Wno-attributes",
               "-DCNNOPS_WITH_CUDA=1", f"-I{include}", f"-I{EMU}", f"-I{KERNELS / 'include'}",
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
