#!/usr/bin/env bash
# The one-command GPU proof: build for sm_90, the whole test suite on CUDA, compute-sanitizer
# over the native CUDA tests, the benchmarks; results in benchmarks/results/<gpu>-<date>.*
#
#   bash benchmarks/gpu_proof.sh                      # every step, one after the other
#   bash benchmarks/gpu_proof.sh build test           # step 1 of 2 (under 10 min each) ...
#   bash benchmarks/gpu_proof.sh sanitize bench       # ... step 2, on the same machine
#   bash benchmarks/gpu_proof.sh --cpu                # dry run without a GPU: checks the
#                                                     # existing build (CPU_BUILD=1 rebuilds),
#                                                     # a small test and bench subset, prints
#                                                     # the sanitizer command
# Any step alone works too; a step other than build builds first when cnnops is not built.
# Needs no network: torch, Triton, nvcc, compute-sanitizer and pytest-benchmark preinstalled.
# Environment: PYTHON (default python3, or .venv/bin/python when present), RESULTS (folder,
# default benchmarks/results; --cpu: a temporary folder), OUT (if set, results and the log are
# copied there too), BENCH_ARGS (extra arguments for every `python -m cnnops bench`).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

cpu=0
steps=()
for arg in "$@"; do
  case "$arg" in
    --cpu) cpu=1 ;;
    build|test|sanitize|bench) steps+=("$arg") ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "gpu_proof: unknown argument $arg (steps: build test sanitize bench; --cpu)" >&2
       exit 2 ;;
  esac
done
[ ${#steps[@]} -eq 0 ] && steps=(build test sanitize bench)

if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  [ -x .venv/bin/python ] && PYTHON=$ROOT/.venv/bin/python
fi
export PYTHONUNBUFFERED=1
if [ $cpu = 1 ]; then
  DEVICE=cpu
  export TRITON_INTERPRET=1 CNNOPS_BUILD_CUDA=0
  RESULTS=${RESULTS:-$(mktemp -d /tmp/cnnops-proof.XXXX)}
else
  DEVICE=cuda
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
  export MAX_JOBS=${MAX_JOBS:-$(nproc)}
  RESULTS=${RESULTS:-$ROOT/benchmarks/results}
  if ! "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_proof: torch sees no GPU; use --cpu for the dry run" >&2
    exit 2
  fi
fi
mkdir -p "$RESULTS"

# <gpu>-<date>, e.g. NVIDIA-H100-80GB-HBM3-2026-11-23
NAME=$("$PYTHON" - "$DEVICE" <<'EOF'
import datetime, platform, re, sys, torch
name = torch.cuda.get_device_name() if sys.argv[1] == "cuda" else "cpu-" + platform.node()
print(re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-") + "-" + datetime.date.today().isoformat())
EOF
)
STEPS_FILE=${PROOF_STEPS_FILE:-/tmp/cnnops-proof-$NAME.steps}  # kept from step 1 to step 2
LOG=$RESULTS/$NAME.log
failures=0

record() {  # record STEP STATUS SECONDS DETAIL: one line of the proof's summary
  printf -- '- %s: %s in %s s%s\n' "$1" "$2" "$3" "${4:+ ($4)}" | tee -a "$STEPS_FILE"
  case "$2" in FAILED*) failures=$((failures + 1)) ;; esac
}

run_step() {  # run_step NAME COMMAND...: runs, logs, records status and time
  local name=$1 began=$SECONDS status label=ok; shift
  echo "=== $name: $*" | tee -a "$LOG"
  "$@" 2>&1 | tee -a "$LOG"
  status=${PIPESTATUS[0]}
  [ "$status" = 0 ] || label="FAILED (exit $status)"
  [ $cpu = 1 ] && [ "$name" = sanitize ] && label="dry run, not run"
  record "$name" "$label" $((SECONDS - began)) "$(tail -n 1 "$LOG" | cut -c1-160)"
}

versions() {
  echo "=== versions" | tee -a "$LOG"
  {
    git rev-parse HEAD 2>/dev/null && git status --porcelain --untracked-files=no | head -20
    "$PYTHON" - <<'EOF'
import importlib.metadata as md, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
for p in ("triton", "pytest", "pytest-benchmark"):
    try: print(p, md.version(p))
    except md.PackageNotFoundError: print(p, "not installed")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"sm_{p.major}{p.minor}", p.multi_processor_count, "SMs",
          round(p.total_memory / 2**30, 1), "GiB")
EOF
    command -v nvidia-smi >/dev/null && nvidia-smi --format=csv \
      --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw
    command -v nvcc >/dev/null && nvcc --version | tail -n 2
    command -v compute-sanitizer >/dev/null && compute-sanitizer --version | tail -n 1
  } 2>&1 | tee -a "$LOG" | tee "$RESULTS/$NAME.versions.txt"
}

native_ready() {  # is cnnops importable here with its native backend on $DEVICE?
  "$PYTHON" - "$DEVICE" <<'EOF'
import sys, cnnops, cnnops.models
backends = cnnops.available_backends(sys.argv[1])
print("backends on", sys.argv[1], backends)
sys.exit("native" not in backends)
EOF
}

build() {
  # The editable install builds cnnops._C (C++, plus CUDA for sm_90) and maps cnnops.models to
  # models/; no build isolation, no dependencies, no index: nothing is downloaded.
  local cmd=("$PYTHON" -m pip install --no-build-isolation --no-deps --no-index -e .)
  if [ $cpu = 1 ] && [ "${CPU_BUILD:-0}" != 1 ]; then
    # the dry run leaves a shared development install alone unless CPU_BUILD=1
    echo "dry run: would run ${cmd[*]}; checking the existing build instead"
  else
    "${cmd[@]}" || return 1
  fi
  native_ready
}

tests() {
  if [ $cpu = 1 ]; then  # the dry run keeps to the benchmark tests: the full suite is CI's job
    "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_bench.py
  else
    "$PYTHON" -m pytest -q -p no:cacheprovider -rs tests/
  fi
}

sanitize() {
  # memcheck over the native backend's CUDA tests; without PyTorch's caching allocator every
  # tensor is its own allocation, so an out-of-bounds access is seen, not hidden in a pool.
  local files cmd=(compute-sanitizer --tool memcheck --error-exitcode 1 --print-limit 20
                   "$PYTHON" -m pytest -q -p no:cacheprovider -x)
  files=$(ls tests/test_native_*.py 2>/dev/null | tr '\n' ' ')
  if [ -n "$files" ]; then
    # shellcheck disable=SC2206  # one word per file
    cmd+=($files -k "cuda and not opcheck")
  else
    cmd+=(tests/ -k "cuda and native")
  fi
  if [ $cpu = 1 ]; then
    echo "dry run: would run PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 420 ${cmd[*]}"
    command -v compute-sanitizer || echo "compute-sanitizer is not on this machine's PATH"
    return 0
  fi
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 420 "${cmd[@]}"
}

bench_run() {  # bench_run RUN ARGS...: one `python -m cnnops bench` into bench-tmp/RUN/
  # shellcheck disable=SC2086  # BENCH_ARGS is split into words on purpose
  "$PYTHON" -m cnnops bench --device "$DEVICE" --out "$RESULTS/bench-tmp/$1" "${@:2}" \
    ${BENCH_ARGS:-}
}

bench() {  # the bench CLI (table, JSON, chart), then the pytest-benchmark suite
  local status=0 suite=(--bench-device "$DEVICE" --benchmark-columns=median,iqr,rounds
                        --benchmark-json "$RESULTS/$NAME.pytest.json")
  rm -rf "$RESULTS/bench-tmp"
  if [ $cpu = 1 ]; then
    bench_run all --models lenet --per-op 1 --batch 2 --budget 0.02 || status=1
    suite+=(--bench-models lenet --bench-per-op 1 --bench-batch 2)
  else
    # every layer of the eight models, float32 forward; then 6 layers per op spread by work,
    # float32 and bfloat16, forward and forward + backward
    bench_run all --per-op 0 --dtypes float32 --mode fwd --budget 0.05 || status=1
    bench_run subset --per-op 6 --dtypes float32,bfloat16 --mode fwd,fwdbwd --budget 0.05 \
      || status=1
    suite+=(--bench-per-op 4 --bench-rounds 30)
  fi
  "$PYTHON" -m pytest -q -p no:cacheprovider benchmarks/ "${suite[@]}" || status=1
  return $status
}

report() {  # <name>.json / .md / .png: the bench results, with the proof's steps on top
  local tmp=$RESULTS/bench-tmp
  ls "$tmp"/*/bench.json >/dev/null 2>&1 || { echo "gpu_proof: no bench results"; return 1; }
  "$PYTHON" - "$tmp" "$RESULTS/$NAME" "$STEPS_FILE" "$RESULTS/$NAME.versions.txt" <<'EOF'
import json, os, shutil, sys
tmp, base, steps_file, versions_file = sys.argv[1:]
read = lambda p: open(p).read() if os.path.exists(p) else ""
runs = [r for r in ("all", "subset") if os.path.exists(os.path.join(tmp, r, "bench.json"))]
data = {"proof_steps": read(steps_file).splitlines(), "versions": read(versions_file),
        "runs": {r: json.load(open(os.path.join(tmp, r, "bench.json"))) for r in runs}}
json.dump(data, open(base + ".json", "w"), indent=1)
md = ["# cnnops GPU proof: " + os.path.basename(base), "", "## Steps", "", read(steps_file),
      "## Versions", "", "```", read(versions_file).strip(), "```", ""]
for r in runs:
    md += [read(os.path.join(tmp, r, "bench.md")).replace("# cnnops bench", f"## bench ({r})", 1)]
    png = os.path.join(tmp, r, "bench.png")
    if os.path.exists(png):
        shutil.copy(png, base + (".png" if r == runs[0] else f"-{r}.png"))
open(base + ".md", "w").write("\n".join(md))
print("wrote", base + ".json", base + ".md", base + ".png")
EOF
  rm -rf "$tmp"
}

began=$SECONDS
case " ${steps[*]} " in
  *" build "*) : >"$STEPS_FILE" ;;   # a new proof starts with its build
  *) : >>"$STEPS_FILE" ;;
esac
versions
if [[ " ${steps[*]} " != *" build "* ]] && ! native_ready >/dev/null 2>&1; then
  echo "gpu_proof: cnnops or its native backend is not built here: building first" | tee -a "$LOG"
  steps=(build "${steps[@]}")
fi
for step in "${steps[@]}"; do
  case $step in
    build) run_step build build ;;
    test) run_step test tests ;;
    sanitize) run_step sanitize sanitize ;;
    bench) run_step bench bench; report 2>&1 | tee -a "$LOG" ;;
  esac
done
echo "gpu_proof: steps ${steps[*]} finished in $((SECONDS - began)) s, $failures failed" \
  | tee -a "$LOG"
cat "$STEPS_FILE"
ls -l "$RESULTS/$NAME"* 2>/dev/null
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then  # the device tool brings back what is in $OUT
  cp "$RESULTS/$NAME".{json,md,png,log} "$RESULTS/$NAME-subset.png" \
    "$RESULTS/$NAME.pytest.json" "$OUT"/ 2>/dev/null
fi
[ $failures = 0 ]
