#!/usr/bin/env bash
# One prepared GPU session: versions, the CUDA self-check, the CUDA tests, the operator and model
# benchmarks, a short bf16 training run and the op under CUDA's sync debug mode; all under $OUT.
#
# Usage, from anywhere, with the machine's own Python (no venv, no install, no network: the project
# runs from this checkout through PYTHONPATH):
#
#     OUT=/path/to/results PYTHON=python3 bash benchmarks/gpu_check.sh   # OUT defaults to <repo>/gpu_out
#
# Environment: OUT (output folder), PYTHON (default python3), GPU_CHECK_BUDGET (seconds for the
# whole run, default 470: each step's timeout is cut to what is left, and a step with less than
# 20 s left is skipped, so the script ends within about 8 minutes).
#
# Steps, most valuable first: versions and `sacseg --version --verbose`; the self-check verdict and
# sac_conv2d's forward and backward under torch.cuda.set_sync_debug_mode("error"); the CUDA tests
# (`pytest -k cuda`); bench_sac_conv.py in fp32 and in bf16 autocast (against cuDNN and
# torchvision's deform_conv2d); bench_model_step.py at ResNet-101, 512x1024, batch 2, bf16, eager;
# 100 training iterations with precision bf16, channels_last and compile on generated data; the
# model step again, eager and compiled (compiling takes minutes).
# Each step writes OUT/NN-name.log (model steps also OUT/NN-name.json) and, as soon as it ends, one
# line "name<TAB>exit code<TAB>seconds" to OUT/summary.tsv (124: timed out; "skipped": no time left;
# "no CUDA": the step needs a GPU and torch sees none), so a run killed midway keeps what it did.
# No `set -e`: a failing step never stops the next. Exit code: 0 when no step failed (steps skipped
# for want of CUDA are not failures: on a CPU machine the script runs the rest and ends with 0).
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd) || exit 1
OUT=${OUT:-$ROOT/gpu_out} # a relative $OUT is taken from where the script was started
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 1
cd "$ROOT" || exit 1
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-470}
SUMMARY="$OUT/summary.tsv"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
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

# gpu_step: a step that needs CUDA; without it, recorded as "no CUDA" and not run.
gpu_step() {
    if ((HAVE_CUDA)); then
        step "$@"
    else
        printf '%s\tno CUDA\t0\n' "$1" >>"$SUMMARY"
        echo "== $1: no CUDA, skipped"
    fi
}

printf 'step\texit code\tseconds\n' >"$SUMMARY"
ENV_PY='
import platform, numpy, torch, torchvision
print("python", platform.python_version(), "numpy", numpy.__version__)
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
step 01-env 90 bash -c '(nvidia-smi || echo "no nvidia-smi"); git rev-parse HEAD 2>/dev/null || echo "(no git metadata)";
    "$0" -c "$1" && "$0" -m sacseg --version --verbose' "$PY" "$ENV_PY"
HAVE_CUDA=0
"$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null && HAVE_CUDA=1
((HAVE_CUDA)) || echo "== torch sees no CUDA device: the GPU steps are skipped"

gpu_step 02-selfcheck-and-sync 90 "$PY" -m pytest -q -rfEs -p no:cacheprovider tests/ops/test_triton_kernels.py \
    -k "no_host_sync or cuda_selfcheck"
gpu_step 03-tests-cuda 120 "$PY" -m pytest -q -rfEs --maxfail=10 -p no:cacheprovider -k cuda tests/
gpu_step 04-bench-sac-fp32 75 "$PY" benchmarks/bench_sac_conv.py --device cuda --repeats 5
gpu_step 05-bench-sac-bf16 75 "$PY" benchmarks/bench_sac_conv.py --device cuda --dtype bf16 --repeats 5

STEP_ARGS=(--device cuda --dtype bf16 --batch 2 --rounds 5 --warmup 2 --depth 101 --size 512 1024)
gpu_step 06-step-r101-512x1024-bf16-eager 90 "$PY" benchmarks/bench_model_step.py "${STEP_ARGS[@]}" \
    --modes eager --json "$OUT/06-step-r101-512x1024-bf16-eager.json"
gpu_step 07-train-bf16-channels-last-compile 150 "$PY" -m sacseg train --config configs/scale_scenes_sac_multiple_r18.yaml \
    --out "$OUT/07-train-run" --set device=cuda iterations=100 val_every=100 checkpoint_every=100 log_every=10 \
    precision=bf16 channels_last=true compile=true scale_scenes_train_images=64 scale_scenes_val_images=8 \
    scale_scenes_size=256 crop_size=256 batch_size=8 workers=4 threads=0
gpu_step 08-step-r101-512x1024-bf16-compiled 240 "$PY" benchmarks/bench_model_step.py "${STEP_ARGS[@]}" \
    --modes eager compiled --json "$OUT/08-step-r101-512x1024-bf16-compiled.json"

echo "== summary ($SECONDS s in all; outputs in $OUT)"
column -t -s $'\t' "$SUMMARY" 2>/dev/null || cat "$SUMMARY"
exit "$failed"
