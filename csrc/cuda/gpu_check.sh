#!/usr/bin/env bash
# Every check of the CUDA op and of GPU training that needs a GPU, in one go (issues 2 and 4), for a machine
# with a CUDA GPU, nvcc and PyTorch but no network (the lent device machine: PyTorch 2.11, Python 3.12).
#
#   1. builds lrrobust._C in place against that machine's torch (TORCH_CUDA_ARCH_LIST: the GPU's own arch);
#   2. runs tests/test_ops_cuda.py and the model/fold tests on CUDA;
#   3. runs small CUDA cases under compute-sanitizer: memcheck (out-of-bounds, misaligned) and racecheck
#      (shared-memory races between the haloed tile loads and their readers);
#   4. `lrrobust bench op --device cuda` in bfloat16 (the 2x-of-cuDNN-conv3x3 target) and float32;
#   5. `lrrobust bench train --device cuda --all-variants` (gains of --amp and --channels-last).
# Logs, JSON and markdown go into one archive, $OUT/gpu_check.tgz (default OUT: ./gpu_out), refreshed after
# every step, so what ran before a time limit comes back (the device tool returns at most 8 files), and the
# bench tables are printed too. Each step runs even when one before it failed; the exit status says whether
# any failed. Record the figures in BENCHMARKS.md with the card, date and command.
#
# torchattacks (needed by step 5) is not on the device image: before the call, here,
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl torchattacks==3.5.1
# and name .whl in the call's carry.
#
# Usage: bash csrc/cuda/gpu_check.sh [all|tests|bench]   (tests: steps 1-3; bench: steps 1, 4, 5). Each part
# fits one 10-minute device call; a warm machine keeps the build, so "tests" then "bench" builds once.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu_out}
MODE=${1:-all}
[[ $MODE == all || $MODE == tests || $MODE == bench ]] || { echo "usage: $0 [all|tests|bench]" >&2; exit 2; }
LOGS=$(mktemp -d)
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
failed=()

step() {  # step NAME COMMAND...: run, log to NAME.log in the archive, remember a failure
  local name=$1
  shift
  echo "== $name: $*"
  if ! "$@" 2>&1 | tee "$LOGS/$name.log"; then
    failed+=("$name")
  fi
  tar -czf "$OUT/gpu_check.tgz" -C "$LOGS" .
}

if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nvcc --version | tail -1
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; date -u; } | tee "$LOGS/machine.txt"

arch=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch} MAX_JOBS=${MAX_JOBS:-16}
step build $PY setup.py build_ext --inplace
step build_info $PY -c "import lrrobust.ops as o; print(o.build_info()); assert o.kernel_available('cuda')"
# The first-use self-check (lrrobust/ops/self_check.py) in every dtype: each one's worst difference and its cost.
step self_check $PY -c "import lrrobust.ops.self_check as s; rs=[s.run_self_check('cuda', d) for d in s.TOLERANCES]; [print(r.describe()) for r in rs]; assert all(r.passed for r in rs)"
sanitize() {  # sanitize TOOL PYTEST_K: small cases of test_ops_cuda.py under compute-sanitizer
  # without PyTorch's caching allocator, so a read past a tensor's end leaves its allocation and is seen
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$1" --error-exitcode 1 --target-processes all \
    $PY -m pytest -q -p no:cacheprovider tests/test_ops_cuda.py -k "$2"
}

if [[ $MODE != bench ]]; then
  step pytest_cuda $PY -m pytest -q -p no:cacheprovider tests/test_ops_cuda.py tests/test_op_self_check.py tests/test_fold.py tests/test_ops.py
  step sanitizer_memcheck sanitize memcheck "not stage_shapes and not gradcheck"
  step sanitizer_racecheck sanitize racecheck "forward_and_gradients_match_reference"  # every kernel and tile path
fi

if [[ $MODE != tests ]]; then
  step bench_op_bf16 $PY -m lrrobust.cli bench op --device cuda --dtype bfloat16 --batch 8 \
    --json "$LOGS/bench_op_bf16.json" --markdown "$LOGS/bench_op_bf16.md"
  step bench_op_fp32 $PY -m lrrobust.cli bench op --device cuda --dtype float32 --batch 8 \
    --json "$LOGS/bench_op_fp32.json" --markdown "$LOGS/bench_op_fp32.md"
  step bench_train $PY -m lrrobust.cli bench train --device cuda --batch-size 128 --iters 5 --warmup 2 \
    --all-variants --json "$LOGS/bench_train.json"
fi

if ((${#failed[@]})); then
  echo "FAILED: ${failed[*]} (logs in $OUT/gpu_check.tgz)"
  exit 1
fi
echo "all GPU checks of this part passed (logs in $OUT/gpu_check.tgz)"
