#!/usr/bin/env bash
# Every check of the CUDA op and of GPU training that needs a GPU (issues 2, 4 and 13), for a machine with a CUDA
# GPU, nvcc and PyTorch but no network (the lent device machine: one H200, PyTorch 2.11, Python 3.12), in parts
# that each fit one 10-minute device call. Run the parts in this order, most valuable first; minutes are estimates
# for an H200, not yet measured (summary.txt in the archive records each step's seconds: correct them here).
#
#   tests     build lrrobust._C in place against the machine's torch (TORCH_CUDA_ARCH_LIST: the GPU's own arch;
#             ~2-4 min, skipped when the library in place was built here from the same sources), build_info, the
#             first-use self-check in every dtype, then pytest on CUDA: tests/test_ops_cuda.py but its slow tests,
#             test_op_self_check.py, test_op_layouts.py (channels-last, slices), test_fold.py, test_ops.py (~2-3
#             min). ~5-7 min in all. The build now takes ~4 min on 2 cores for two architectures (the gather has two
#             chunk shapes); with 16 cores and the GPU's own arch only, well under that.
#   sanitize  csrc/cuda/sanitize_cases.py (7 small cases: tiled, untiled, stride 2, dilation 2, a full window, two
#             images per gather chunk; forward and backward in float32 and bfloat16) under compute-sanitizer
#             memcheck, racecheck, initcheck and synccheck, PyTorch's caching allocator off (~1 min per tool, most of
#             it starting torch under the sanitizer). ~4 min after a build.
#   scale     the slow tests of test_ops_cuda.py: tensors over 2^31 elements in bfloat16 (~32 GiB of GPU memory)
#             and a bitwise-deterministic backward at batch 32, LR-Net-26 stage 1 (~1 min). ~2 min after a build.
#   bench     `lrrobust bench op` at the LR-Net-26 stages in bfloat16 (the 2x-of-cuDNN-conv3x3 target) and float32,
#             at large K (K = 15 at the four stages; K = 31 and the full window K = 55 at 200 x 28^2, fused and
#             conv3x3 only: the reference would unfold K^2 copies) and at stride 2 (the four stages); then `lrrobust
#             bench train --all-variants` (gains of --amp and --channels-last). ~30 s per bench op, ~2 min for
#             bench train: ~6 min after a build.
#   all       every part in turn (over 10 minutes: for a machine without a time limit).
#
# Nothing hangs: every step runs under `timeout` with its own cap, cut to what is left of the part's budget
# (BUDGET_S, default 570 s from the start, so a part ends before a 600-s device call does; 7200 s for `all`); a step
# with under 30 s left is skipped, and so is every step after a failed build or build_info. Each step runs even
# when one before it failed; the exit status says whether any failed or was skipped. Logs, JSON and markdown go
# into one archive, $OUT/gpu_check.tgz (default OUT: ./gpu_out), refreshed after every step, so what ran before a
# time limit comes back (the device tool returns at most 8 files); summary.txt in it has each step's outcome and
# seconds, and the bench tables are printed too. Record the figures in BENCHMARKS.md, GPU section, with the card,
# driver and date (machine.txt in the archive) and the command.
# GPU_CHECK_DRY_RUN=1 prints each step and its cap without running anything (no GPU needed).
#
# torchattacks (needed by bench train) is not on the device image: before the call, here,
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl torchattacks==3.5.1
# and name .whl in the call's carry.
#
# Usage: bash csrc/cuda/gpu_check.sh [tests|sanitize|scale|bench|all]   (default: tests). A warm machine keeps the
# build, so the parts after the first skip it.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
MODES="tests sanitize scale bench all"
MODE=${1:-tests}
[[ " $MODES " == *" $MODE "* ]] || { echo "usage: $0 [${MODES// /|}]" >&2; exit 2; }
OUT=${OUT:-$PWD/gpu_out}
PY=${PYTHON:-python3}
DRY=${GPU_CHECK_DRY_RUN:-0}
START=$SECONDS
if [[ $MODE == all ]]; then BUDGET_S=${BUDGET_S:-7200}; else BUDGET_S=${BUDGET_S:-570}; fi
LOGS=$(mktemp -d)
trap 'rm -rf "$LOGS"' EXIT
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
failed=()
ready=1  # 0 once the build or build_info failed or was skipped: no CUDA kernel to check

archive() { tar -czf "$OUT/gpu_check.tgz" -C "$LOGS" .; }

step() {  # step NAME CAP_SECONDS COMMAND...: run under timeout, log to NAME.log in the archive, note the outcome
  local name=$1 cap=$2 left rc began
  shift 2
  left=$((BUDGET_S - (SECONDS - START) - 10))
  ((cap > left)) && cap=$left
  if ((!ready)); then
    echo "== $name: skipped (no lrrobust._C with a CUDA kernel: see build and build_info)" | tee -a "$LOGS/summary.txt"
    failed+=("$name")
    return 1
  fi
  if ((cap < 30)); then
    echo "== $name: skipped ($((left + 10)) s left of the part's budget of $BUDGET_S s)" | tee -a "$LOGS/summary.txt"
    failed+=("$name")
    archive
    return 1
  fi
  echo "== $name (at most $cap s): $*"
  if [[ $DRY == 1 ]]; then
    echo "$name: dry run, not run" >>"$LOGS/summary.txt"
    return 0
  fi
  began=$SECONDS
  timeout --kill-after=15 "$cap" "$@" 2>&1 | tee "$LOGS/$name.log"
  rc=$?
  if ((rc == 0)); then
    echo "$name: passed in $((SECONDS - began)) s" >>"$LOGS/summary.txt"
  else
    ((rc == 124 || rc == 137)) && rc="$rc, timed out at $cap s"
    echo "$name: FAILED (exit $rc) after $((SECONDS - began)) s" | tee -a "$LOGS/summary.txt"
    failed+=("$name")
  fi
  archive
  [[ $rc == 0 ]]
}

if compgen -G ".whl/*.whl" >/dev/null && [[ $DRY != 1 ]]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

{ echo "gpu_check.sh $MODE, budget $BUDGET_S s, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  timeout 30 nvcc --version | tail -1
  timeout 60 "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  date -u; } 2>&1 | tee "$LOGS/machine.txt"
archive

if [[ $DRY != 1 ]]; then
  arch=$(timeout 60 "$PY" -c "import torch as t; print('%d.%d' % t.cuda.get_device_capability())")
  if [[ -z $arch ]]; then
    echo "no CUDA GPU is visible to torch on this machine: nothing to check (gpu_check.sh needs one)" |
      tee -a "$LOGS/summary.txt"
    archive
    exit 2
  fi
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch}
fi
export MAX_JOBS=${MAX_JOBS:-16}

# The extension is rebuilt only when the sources, torch or the arch differ from the last build made here.
STAMP=build/gpu_check.stamp
sources=$( { find csrc -type f \( -name '*.cu' -o -name '*.cuh' -o -name '*.cpp' -o -name '*.h' \) | LC_ALL=C sort |
  xargs sha256sum; sha256sum setup.py
  echo "${TORCH_CUDA_ARCH_LIST:-} $(timeout 60 "$PY" -c 'import torch; print(torch.__version__)' 2>&1)"; } | sha256sum)
if compgen -G "lrrobust/_C*.so" >/dev/null && [[ -f $STAMP && $(cat "$STAMP") == "$sources" ]]; then
  echo "== build: skipped, lrrobust._C was built here from these sources" | tee -a "$LOGS/summary.txt"
else
  rm -f "$STAMP"
  if step build 420 "$PY" setup.py build_ext --inplace; then
    [[ $DRY == 1 ]] || { mkdir -p build && echo "$sources" >"$STAMP"; }
  else
    ready=0
  fi
fi
step build_info 60 "$PY" -c "import lrrobust.ops as o; print(o.build_info()); assert o.kernel_available('cuda')" \
  || ready=0  # without the CUDA kernel every later step would only time or test the reference

part() { [[ $MODE == all || $MODE == "$1" ]]; }

if part tests; then
  # The first-use self-check (lrrobust/ops/self_check.py) in every dtype: each one's worst difference and its cost.
  step self_check 120 "$PY" -c "import lrrobust.ops.self_check as s
rs = [s.run_self_check('cuda', d) for d in s.TOLERANCES]
print(*(r.describe() for r in rs), sep='\n')
assert all(r.passed for r in rs)"
  step pytest_cuda 300 "$PY" -m pytest -q -p no:cacheprovider --durations=10 -m "not slow" tests/test_ops_cuda.py \
    tests/test_op_self_check.py tests/test_op_layouts.py tests/test_fold.py tests/test_ops.py
fi

if part sanitize; then
  # Without PyTorch's caching allocator, so a read past a tensor's end leaves its allocation and is seen.
  for tool in memcheck racecheck initcheck synccheck; do
    step "sanitize_$tool" 150 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$tool" \
      --error-exitcode 1 --target-processes all --print-limit 50 "$PY" csrc/cuda/sanitize_cases.py
  done
fi

if part scale; then
  step pytest_scale 240 "$PY" -m pytest -q -p no:cacheprovider --durations=10 -m slow tests/test_ops_cuda.py
fi

if part bench; then
  bench_op() {  # bench_op NAME CAP OPTIONS...: bench op on CUDA, batch 8, its JSON and markdown in the archive
    local name=$1 cap=$2
    shift 2
    step "$name" "$cap" "$PY" -m lrrobust.cli bench op --device cuda --batch 8 "$@" \
      --json "$LOGS/$name.json" --markdown "$LOGS/$name.md"
  }
  bench_op bench_op_bf16 150 --dtype bfloat16
  bench_op bench_op_fp32 150 --dtype float32
  bench_op bench_op_k15 120 --dtype bfloat16 --kernel-size 15 --impl lr_fused,conv3x3
  bench_op bench_op_k31_28px 90 --dtype bfloat16 --shape 200x28 --kernel-size 31 --impl lr_fused,conv3x3
  bench_op bench_op_k55_28px 90 --dtype bfloat16 --shape 200x28 --kernel-size 55 --impl lr_fused,conv3x3
  bench_op bench_op_stride2 120 --dtype bfloat16 --stride 2
  step bench_train 240 "$PY" -m lrrobust.cli bench train --device cuda --batch-size 128 --iters 5 --warmup 2 \
    --all-variants --json "$LOGS/bench_train.json"
fi

archive
echo "part $MODE: $((SECONDS - START)) s of a budget of $BUDGET_S s" | tee -a "$LOGS/summary.txt"
archive
if ((${#failed[@]})); then
  echo "FAILED or skipped: ${failed[*]} (logs in $OUT/gpu_check.tgz)"
  exit 1
fi
echo "all GPU checks of part $MODE passed (logs in $OUT/gpu_check.tgz)"
