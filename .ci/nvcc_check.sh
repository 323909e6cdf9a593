#!/usr/bin/env bash
# Compile-checks every CUDA source of kernels/ for sm_90 (H100) with the flags torch's
# BuildExtension gives nvcc, so CUDA code that would not build is caught on machines without
# a GPU. Exits non-zero on the first file that fails.
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
for cu in kernels/cuda/*.cu; do
  echo "nvcc_check: $cu"
  if ! "$NVCC" -arch=sm_90 -std=c++17 -O3 --use_fast_math -Xcompiler -Wall \
      -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ \
      -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ \
      --expt-relaxed-constexpr -Werror all-warnings -DCNNOPS_WITH_CUDA=1 -I kernels/include \
      -c "$cu" -o "$out/$(basename "$cu").o"; then
    status=1
  fi
done
exit $status
