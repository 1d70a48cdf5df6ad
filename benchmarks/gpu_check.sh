#!/usr/bin/env bash
# One prepared GPU session: environment, CUDA tests, both benchmarks on CUDA; every output under $OUT.
#
# Usage, from anywhere, with the repository's .venv ready (it is built with `make .venv/.installed`
# when missing or broken, which needs a local pip cache on a machine without internet):
#
#     OUT=/path/to/results bash benchmarks/gpu_check.sh      # OUT defaults to <repository>/gpu_out
#
# Environment: OUT (output folder), PYTHON (default .venv/bin/python), GPU_CHECK_BUDGET (seconds for
# the whole run, default 470: each step's timeout is cut to what is left, and a step with less than
# 20 s left is skipped, so the script ends within the budget plus a few seconds).
#
# Steps, most valuable first: nvidia-smi and versions; the CUDA tests (`pytest -k cuda tests/`);
# bench_sac_conv.py on CUDA in fp32 and in bf16 autocast; bench_model_step.py at ResNet-101,
# 512x1024, batch 2, bf16, eager; the ops and Triton tests with Triton on the GPU
# (TRITON_INTERPRET unset); ResNet-50 at 256x256, batch 2, bf16, eager and compiled; ResNet-101
# at 512x1024 eager and compiled (fcn and sac_multiple: compiling takes minutes).
# Each step writes OUT/NN-name.log (model steps also OUT/NN-name.json) and, as soon as it ends,
# one line "name<TAB>exit code<TAB>seconds" to OUT/summary.tsv (124: timed out; "skipped": no time
# left), so that a run killed midway keeps everything done so far. No `set -e`: a failing step
# never stops the next. Exit code: 0 when every step passed, else 1.
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd) || exit 1
OUT=${OUT:-$ROOT/gpu_out} # a relative $OUT is taken from where the script was started
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 1
cd "$ROOT" || exit 1
PY=${PYTHON:-.venv/bin/python}
BUDGET=${GPU_CHECK_BUDGET:-470}
SUMMARY="$OUT/summary.tsv"
# The copy on the GPU machine may sit elsewhere than the checkout the venv was installed from.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET # Triton kernels run on the GPU here; the interpreter is for CPU-only machines
failed=0

# step NAME LIMIT_SECONDS COMMAND...: run COMMAND under `timeout`, log to OUT/NAME.log, record its exit code.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - SECONDS))
    if ((left < 20)); then
        printf '%s\tskipped\t0\n' "$name" >>"$SUMMARY"
        echo "== $name: skipped, ${left} s of the ${BUDGET} s budget left"
        failed=1
        return
    fi
    ((limit > left)) && limit=$left
    local command="$*"
    echo "== $name (timeout ${limit} s): ${command:0:200}"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >>"$SUMMARY"
    tail -n 25 "$OUT/$name.log"
    echo "== $name: exit code $rc after $((SECONDS - start)) s"
    ((rc == 0)) || failed=1
}

printf 'step\texit code\tseconds\n' >"$SUMMARY"
if ! "$PY" -c 'import torch, sacseg' 2>/dev/null; then
    step 00-venv 300 make .venv/.installed
    PY=.venv/bin/python
fi
ENV_PY='
import torch, torchvision
print("torch", torch.__version__, "CUDA", torch.version.cuda, "torchvision", torchvision.__version__)
try:
    import triton
    print("triton", triton.__version__)
except ImportError as error:
    print("triton missing:", error)
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(), torch.cuda.get_device_capability(), "bf16:", torch.cuda.is_bf16_supported())
'
step 01-env 60 bash -c 'nvidia-smi; git rev-parse HEAD 2>/dev/null || echo "(no git metadata)"; "$0" -c "$1"' "$PY" "$ENV_PY"
if ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo "== torch sees no CUDA device: nothing else to run (see $OUT/01-env.log)"
    printf 'cuda\tunavailable\t0\n' >>"$SUMMARY"
    exit 1
fi

step 02-tests-cuda 120 "$PY" -m pytest -q -rfEs --maxfail=10 -p no:cacheprovider -k cuda tests/
step 03-bench-sac-fp32 90 "$PY" benchmarks/bench_sac_conv.py --device cuda --repeats 5
step 04-bench-sac-bf16 90 "$PY" benchmarks/bench_sac_conv.py --device cuda --dtype bf16 --repeats 5

STEP_ARGS=(--device cuda --dtype bf16 --batch 2 --rounds 5 --warmup 2)
step 05-step-r101-512x1024-bf16-eager 120 "$PY" benchmarks/bench_model_step.py "${STEP_ARGS[@]}" \
    --depth 101 --size 512 1024 --modes eager --json "$OUT/05-step-r101-512x1024-bf16-eager.json"

# The ops tests and any Triton test file elsewhere (pytest drops the duplicates).
mapfile -t triton_tests < <(grep -rlis --include='test_*.py' triton tests | sort)
step 06-tests-ops-triton 120 "$PY" -m pytest -q -rfEs --maxfail=10 -p no:cacheprovider tests/ops "${triton_tests[@]}"

step 07-step-r50-256-bf16-both 150 "$PY" benchmarks/bench_model_step.py "${STEP_ARGS[@]}" \
    --depth 50 --size 256 256 --json "$OUT/07-step-r50-256-bf16-both.json"
step 08-step-r101-512x1024-bf16-both 300 "$PY" benchmarks/bench_model_step.py "${STEP_ARGS[@]}" \
    --depth 101 --size 512 1024 --models fcn sac_multiple --json "$OUT/08-step-r101-512x1024-bf16-both.json"

echo "== summary ($SECONDS s in all; outputs in $OUT)"
column -t -s $'\t' "$SUMMARY" 2>/dev/null || cat "$SUMMARY"
exit "$failed"
