#!/usr/bin/env bash
# The GPU proof: one command from a bare GPU machine, under 8 minutes of wall time, build
# included. docs/GPU.md says when to run it and what to commit.
#
#   bash benchmarks/gpu_proof.sh OUTDIR     # on the GPU machine (OUTDIR: e.g. $OUT there)
#   bash benchmarks/gpu_proof.sh --plan     # on a CPU (CI): what the proof will compile and
#                                           # run, estimated; fails past the 8-minute budget
#
# Steps, each under `timeout`, each writing its result into OUTDIR as soon as it ends (a run
# stopped at its limit still leaves every finished step behind):
#   env        GPU, driver, CUDA, torch, Triton, commit            -> OUTDIR/env.txt
#   build      cnnops._C for sm_90 (MAX_JOBS = cores; pip -e, else build_ext --inplace with
#              PYTHONPATH when pip refuses this Python)             -> OUTDIR/build.log
#   preflight  30 s: GPU visible, torch sees it, a Triton vector add, the extension imports
#   tests      the GPU tests only (Triton files, CUDA/GPU-named tests), xdist, --maxfail
#                                                                   -> OUTDIR/tests.log, .xml
#   sanitize   compute-sanitizer memcheck over the native CUDA tests, only when a probe shows
#              it works on this machine (it does not under gVisor)  -> OUTDIR/sanitize.log
#   bench      `python -m cnnops bench` runs sized to fit (BENCH_RUNS below), CUDA-graph timing,
#              figures against the ceilings measured in the run     -> OUTDIR/bench-<run>/
# OUTDIR/summary.md holds the versions and one line per step (status, seconds), updated after
# every step. Environment: PYTHON (default python3), PROOF_BUDGET_S (default 450),
# MAX_JOBS, TEST_WORKERS (default 8), SKIP_STEPS (e.g. "sanitize bench").
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PROOF_BUDGET_S=${PROOF_BUDGET_S:-450}

# The benchmark plan: one `python -m cnnops bench` per line (arguments after the run's name).
# `--plan` estimates exactly these. Left out on purpose (too slow for the window, listed in
# the summary): native CUDA conv2d on the VGG/AlexNet layers (its backward runs one block per
# weight element: seconds per call on the 100-470 GFLOP layers), float32 IEEE and float64.
BENCH_RUNS=(
  "resnet18-lenet-bf16 --models resnet18,lenet --per-op 2 --dtypes bfloat16 --layouts channels_last --mode fwd,fwdbwd --budget 0.02 --cuda-graph --no-chart"
  "resnet18-tf32-nchw --models resnet18 --per-op 1 --dtypes float32 --layouts nchw --mode fwd,fwdbwd --budget 0.02 --cuda-graph --no-chart"
  "vgg-alexnet-triton --models vgg11,alexnet --per-op 1 --ops conv2d --dtypes bfloat16 --layouts channels_last --mode fwd,fwdbwd --backends triton --budget 0.02 --cuda-graph --no-chart"
  "vgg-alexnet-native --models vgg11,alexnet --per-op 3 --max-gflop 12 --dtypes float32 --layouts nchw --mode fwd,fwdbwd --backends native --budget 0.02 --cuda-graph --no-chart"
)
SKIPPED_CASES="native CUDA conv2d on VGG/AlexNet layers over 12 GFLOP (one block per weight element in its backward); all but 1-2 layers per op of each model (3 for native) (every new layer shape costs one Triton compile per surviving autotune config: see --plan); float32 with TF32 off and float64 (checking modes: the tests cover them)"
# The GPU tests: whole Triton test files, plus every test whose name says cuda or gpu.
TEST_SELECT=(-k "cuda or gpu or test_triton_")

if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  [ -x .venv/bin/python ] && PYTHON=$ROOT/.venv/bin/python
fi
export PYTHONUNBUFFERED=1
# Autotune among the 2 best-ranked configs a prune keeps (cnnops/backends/triton/_launch.py:
# autotune_top_k): every new layer shape compiles each candidate, and the window is 15 minutes.
export CNNOPS_TRITON_TOPK=${CNNOPS_TRITON_TOPK:-2}

if [ "${1:-}" = "--plan" ]; then
  # CPU dry run: record every Triton launch of the bench plan (meta tensors), bind it for
  # sm_90, count compiles and autotune keys, price them with the AOT compile times
  # (benchmarks/aot_sm90.py's JSON) and the kernels with an H200 roofline.
  shift
  unset TRITON_INTERPRET
  args=()
  for run in "${BENCH_RUNS[@]}"; do args+=(--bench "$run"); done
  exec "$PYTHON" benchmarks/aot_sm90.py --plan --budget-s "$PROOF_BUDGET_S" \
    --test-workers "${TEST_WORKERS:-8}" "${args[@]}" "$@"
fi

OUTDIR=${1:?usage: gpu_proof.sh OUTDIR | --plan}
# A Triton cache compiled ahead of time on a CPU with the GPU image's exact Triton version
# (docs/GPU.md: "Carrying compiled kernels"; unverified until a GPU run shows cache hits)
# takes the compiles out of the window. Copied: the carried folder may be read-only.
if [ -d "${CARRIED_TRITON_CACHE:-$ROOT/.triton-cache-sm90}" ] && [ -z "${TRITON_CACHE_DIR:-}" ]; then
  export TRITON_CACHE_DIR=/tmp/cnnops-triton-cache
  mkdir -p "$TRITON_CACHE_DIR"
  cp -r "${CARRIED_TRITON_CACHE:-$ROOT/.triton-cache-sm90}"/. "$TRITON_CACHE_DIR"/
  echo "gpu_proof: Triton cache from ${CARRIED_TRITON_CACHE:-.triton-cache-sm90}: $(ls "$TRITON_CACHE_DIR" | wc -l) entries"
fi
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
SUMMARY=$OUTDIR/summary.md
began=$SECONDS
failures=0
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export CNNOPS_BUILD_CUDA=1

left() { echo $((PROOF_BUDGET_S - (SECONDS - began))); }

record() {  # record STEP STATUS SECONDS [DETAIL]
  printf -- '- %s: %s in %s s%s\n' "$1" "$2" "$3" "${4:+ ($4)}" | tee -a "$SUMMARY"
  case "$2" in FAILED*|TIMEOUT*) failures=$((failures + 1)) ;; esac
}

step() {  # step NAME MAX_SECONDS FUNCTION: runs FUNCTION under timeout, logs to OUTDIR/NAME.log
  local name=$1 max=$2 fn=$3 t0=$SECONDS status limit
  if [[ " ${SKIP_STEPS:-} " == *" $name "* ]]; then record "$name" "skipped (SKIP_STEPS)" 0; return; fi
  limit=$(left)
  [ "$limit" -gt "$max" ] && limit=$max
  if [ "$limit" -lt 10 ]; then record "$name" "skipped: the ${PROOF_BUDGET_S}-s budget is spent" 0; return; fi
  echo "=== $name (up to $limit s)"
  STEP_LIMIT=$limit "$fn" >"$OUTDIR/$name.log" 2>&1
  status=$?
  tail -n 15 "$OUTDIR/$name.log"
  case $status in
    0) record "$name" ok $((SECONDS - t0)) "$(tail -n 1 "$OUTDIR/$name.log" | cut -c1-150)" ;;
    124|137) record "$name" "TIMEOUT after $limit s" $((SECONDS - t0)) ;;
    *) record "$name" "FAILED (exit $status)" $((SECONDS - t0)) "$(tail -n 1 "$OUTDIR/$name.log" | cut -c1-150)" ;;
  esac
  return $status
}

env_info() {
  echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (+ local changes)')"
  command -v nvidia-smi >/dev/null && nvidia-smi --format=csv,noheader \
    --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem
  command -v nvcc >/dev/null && nvcc --version | tail -n 2 | head -n 1
  timeout 60 "$PYTHON" - <<'EOF'
import importlib.metadata as md, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
for p in ("triton", "pytest", "pytest-xdist"):
    try: print(p, md.version(p))
    except md.PackageNotFoundError: print(p, "not installed")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"sm_{p.major}{p.minor}", p.multi_processor_count, "SMs",
          round(p.total_memory / 2**30, 1), "GiB", "L2", getattr(p, "L2_cache_size", "?"))
EOF
  echo "runtime kernel $(uname -r)"  # 4.4.0: gVisor (no compute-sanitizer, no ncu)
}

build() {
  local inc
  inc=$("$PYTHON" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
  if [ ! -f "$inc/Python.h" ]; then
    echo "build: no Python.h in $inc: the extension cannot be built with this Python"; return 3
  fi
  echo "build: MAX_JOBS=$MAX_JOBS TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
  local t0=$SECONDS st
  timeout "$STEP_LIMIT" "$PYTHON" -m pip install --no-build-isolation --no-deps --no-index -e . \
    >/tmp/cnnops-pip.log 2>&1
  st=$?
  cat /tmp/cnnops-pip.log
  if [ $st = 0 ] && verify_build; then return 0; fi
  [ $st = 124 ] && return 124  # out of time: a second build would not fit either
  if grep -qi "externally-managed\|externally managed\|Permission denied\|Read-only" /tmp/cnnops-pip.log; then
    echo "build: pip refused this Python: build_ext --inplace with PYTHONPATH instead"
  else
    echo "build: pip install failed: trying build_ext --inplace"
  fi
  timeout $((STEP_LIMIT - (SECONDS - t0))) "$PYTHON" setup.py build_ext --inplace || return 1
  # models/ installs as cnnops.models; in place, a link stands in for that mapping
  [ -e cnnops/models ] || ln -s ../models cnnops/models
  echo "$ROOT" >"$OUTDIR/.pythonpath"
  PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} verify_build
}

verify_build() {
  "$PYTHON" - <<'EOF'
import cnnops, cnnops._C, cnnops.models
b = cnnops.available_backends("cuda")
print("build: backends on cuda:", b)
assert "native" in b, cnnops.get_backend("native").unavailable_reason("cuda")
EOF
}

use_build() {  # after a build_ext --inplace fallback, every later step needs the tree on the path
  [ -f "$OUTDIR/.pythonpath" ] && export PYTHONPATH=$(cat "$OUTDIR/.pythonpath")${PYTHONPATH:+:$PYTHONPATH}
  return 0
}

preflight() {
  nvidia-smi -L || return 1
  timeout "$STEP_LIMIT" "$PYTHON" - <<'EOF'
import time, torch
t0 = time.time()
assert torch.cuda.is_available(), "torch sees no GPU"
print("torch sees", torch.cuda.get_device_name(), torch.cuda.get_device_capability())
import triton, triton.language as tl

@triton.jit
def add(x, y, z, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(z + i, tl.load(x + i, mask=i < n) + tl.load(y + i, mask=i < n), mask=i < n)

x = torch.randn(10000, device="cuda"); y = torch.randn_like(x); z = torch.empty_like(x)
add[(triton.cdiv(x.numel(), 1024),)](x, y, z, x.numel(), BLOCK=1024)
torch.testing.assert_close(z, x + y)
print("triton vector add ok", triton.__version__)
import cnnops, cnnops._C
b = cnnops.available_backends("cuda")
print("cnnops backends on cuda:", b)
assert "native" in b and "triton" in b, b
print(f"preflight ok in {time.time() - t0:.1f} s")
EOF
}

tests() {
  "$PYTHON" -c "import xdist" 2>/dev/null && par=(-n "${TEST_WORKERS:-8}") || par=()
  timeout "$STEP_LIMIT" "$PYTHON" -m pytest -q -p no:cacheprovider "${par[@]}" --maxfail=25 \
    -rfEs --junitxml="$OUTDIR/tests.xml" tests/ "${TEST_SELECT[@]}"
}

sanitize() {
  command -v compute-sanitizer >/dev/null || { echo "sanitize: no compute-sanitizer here"; return 0; }
  # probe: a planted-free allocation and kernel; gVisor answers "Device not supported"
  if ! timeout 40 compute-sanitizer --tool memcheck --error-exitcode 9 "$PYTHON" -c \
      "import torch; x = torch.ones(8, device='cuda'); print('probe', (x + 1).sum().item())"; then
    echo "sanitize: compute-sanitizer does not work on this machine (probe failed): not run"
    return 0
  fi
  local files
  files=$(ls tests/test_native_*.py 2>/dev/null | grep -v emulated)
  # one file at a time, bounded, so a slow file leaves the others' results
  local status=0 f
  local st
  for f in $files; do
    echo "--- memcheck $f"
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout $((STEP_LIMIT / 4)) compute-sanitizer \
      --tool memcheck --error-exitcode 1 --print-limit 20 "$PYTHON" -m pytest -q -x \
      -p no:cacheprovider "$f" -k "cuda and not opcheck and not gradcheck"
    st=$?
    # 5: the file has no CUDA test; 124: its share of the step's time ran out (said, not failed)
    case $st in 0|5) ;; 124) echo "--- memcheck $f: cut at $((STEP_LIMIT / 4)) s" ;; *) status=1 ;; esac
  done
  return $status
}

bench() {
  local status=0 run name end=$((SECONDS + STEP_LIMIT))
  for run in "${BENCH_RUNS[@]}"; do
    name=${run%% *}
    if [ $((end - SECONDS)) -lt 15 ]; then echo "--- bench $name: no time left, not run"; status=1; continue; fi
    echo "--- bench $name"
    # shellcheck disable=SC2086  # the run's arguments are words
    timeout $((end - SECONDS)) "$PYTHON" -m cnnops bench --device cuda \
      --out "$OUTDIR/bench-$name" ${run#* } || status=1
    [ -f "$OUTDIR/bench-$name/bench.md" ] && echo "- bench $name: $OUTDIR/bench-$name/bench.md" >>"$SUMMARY"
  done
  return $status
}

{
  echo "# cnnops GPU proof $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo '```'
  env_info 2>&1 | tee "$OUTDIR/env.txt"
  echo '```'
  echo
  echo "Left out of the benchmark on purpose: $SKIPPED_CASES."
  echo
  echo "## Steps (budget $PROOF_BUDGET_S s)"
} >"$SUMMARY"
cat "$SUMMARY"

step build 240 build || { echo "gpu_proof: no build, nothing else can run"; exit 1; }
use_build
step preflight 30 preflight || { echo "gpu_proof: preflight failed: see $OUTDIR/preflight.log"; exit 1; }
step tests 170 tests
step sanitize 90 sanitize
step bench 200 bench
record total "$([ $failures = 0 ] && echo ok || echo "FAILED ($failures steps)")" $((SECONDS - began))
[ -L cnnops/models ] && rm -f cnnops/models
[ $failures = 0 ]
