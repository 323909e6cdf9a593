#!/usr/bin/env bash
# Compile-checks every CUDA source of kernels/ for sm_90 (H100/H200) with the flags torch's
# BuildExtension gives nvcc, so CUDA code that would not build is caught on machines without
# a GPU, and prints ptxas' report per kernel (-Xptxas -v): registers, spill stores/loads,
# stack frame, shared memory. Fails on a compile error (every file is tried first).
# The report is informative; NVCC_CHECK_NO_SPILLS=1 also fails on spills.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
if [ ! -x "$NVCC" ]; then
  echo "nvcc_check: nvcc not found (set NVCC=...)" >&2
  exit 1
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
status=0
spills=0
for cu in kernels/cuda/*.cu; do
  echo "nvcc_check: $cu"
  log="$out/$(basename "$cu").log"
  # no --use_fast_math: setup.py builds without it (division and NaN must match PyTorch)
  if ! "$NVCC" -arch=sm_90 -std=c++17 -O3 -Xcompiler -Wall -Xptxas -v \
      -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ \
      -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ \
      --expt-relaxed-constexpr -Werror all-warnings -DCNNOPS_WITH_CUDA=1 -I kernels/include \
      -c "$cu" -o "$out/$(basename "$cu").o" >"$log" 2>&1; then
    grep -v "^ptxas info" "$log" >&2 || true
    status=1
    continue
  fi
  # ptxas prints, per kernel: "Compiling entry function '_Z...' for 'sm_90'", then
  # "Function properties for _Z...: N bytes stack frame, N bytes spill stores, N bytes spill
  # loads", then "Used N registers, ... N bytes smem ...". One line per kernel here.
  awk -v file="$(basename "$cu")" '
    /Compiling entry function/ { match($0, /'"'"'[^'"'"']+'"'"'/); name = substr($0, RSTART + 1, RLENGTH - 2) }
    /bytes stack frame/ { n = split($0, a, /[ :,]+/); for (i = 1; i + 3 <= n; i++) {
        if (a[i+1] == "bytes" && a[i+2] == "stack") stack = a[i]
        if (a[i+1] == "bytes" && a[i+2] == "spill" && a[i+3] == "stores") st = a[i]
        if (a[i+1] == "bytes" && a[i+2] == "spill" && a[i+3] == "loads") ld = a[i] } }
    /Used [0-9]+ registers/ { match($0, /Used [0-9]+ registers/); regs = substr($0, RSTART + 5, RLENGTH - 15)
        smem = "0"; if (match($0, /[0-9]+ bytes smem/)) smem = substr($0, RSTART, RLENGTH - 11)
        cmd = "c++filt \"" name "\" 2>/dev/null"; pretty = name; cmd | getline pretty; close(cmd)
        gsub(/\(anonymous namespace\)::/, "", pretty); sub(/^void /, "", pretty); sub(/\(.*/, "", pretty)
        printf "  %-16s %-60s regs %3s  spill st/ld %4s/%-4s B  stack %4s B  smem %6s B\n", file, substr(pretty, 1, 60), regs, st + 0, ld + 0, stack + 0, smem
        if (st + ld > 0) print "SPILL" > "/dev/stderr"
        stack = st = ld = 0 }
  ' "$log" 2>"$out/spills"
  spills=$((spills + $(grep -c SPILL "$out/spills" || true)))
done
echo "nvcc_check: $spills kernel(s) with register spills"
if [ "${NVCC_CHECK_NO_SPILLS:-0}" = 1 ] && [ "$spills" -gt 0 ]; then
  status=1
fi
exit $status
