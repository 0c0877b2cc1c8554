#!/usr/bin/env bash
# The GPU check of issue 20, for a lent device after ../shared/gpu/on-device.sh (onnxruntime-gpu installed), run from
# the project root. Every step's output goes to $OUT/check.log (the device tool's folder; ./gpu-check elsewhere), the
# results to $OUT/{evaluate,bench,detector,attacks}.json (five files: the tool brings back at most eight); a failing
# step is recorded and the next one still runs. Written to take about 5 minutes on one H200; not yet run on one.
#
#   bash benchmarks/gpu_check.sh MNIST_DIR [cuda|cpu]
#
# MNIST_DIR holds MNIST's IDX files (t10k-*.gz; copy ../shared/data/mnist into an ignored folder of the tree, e.g.
# .gpu/mnist). `cpu` runs every step on the CPU with ort-cpu, smaller, to try the script without a GPU; RUN=DIR
# takes a run folder trained before instead of training one.
# Carry torchattacks (and pytest, nvidia-ml-py) as wheels for the comparison, the GPU tests and NVML memory:
# EXTRA_WHEELS="torchattacks==3.5.1 pytest pluggy iniconfig nvidia-ml-py" bash ../shared/gpu/prepare.sh
set -uo pipefail
data=${1:?usage: bash benchmarks/gpu_check.sh MNIST_DIR [cuda|cpu]}
device=${2:-cuda}
out=${OUT:-gpu-check}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
if [ "$device" = cpu ]; then
  ort=ort-cpu samples=100 epochs=1 limit=32 apgd=20 timed=(-r ort-cpu -r ort-cpu:fp16 -r torch --batch-size 1)
  every=(--limit 100) steps=3 adaptive=(--adaptive-steps 10 --adaptive-targets 1 --adaptive-restarts 1)
else
  ort=ort-cuda samples=1500 epochs=3 limit=500 apgd=100 every=() steps=20 adaptive=()
  timed=(-r ort-cpu -r ort-cuda -r ort-cuda:fp16 -r torch --batch-size 1 --batch-size 500)
fi
status=0

step() {  # step NAME SECONDS COMMAND...: run it with a time limit into the one log, keep going
  local name=$1 limit=$2
  shift 2
  if [ -n "${GPU_CHECK_DRY:-}" ]; then  # list the commands only (tests/test_gpu_check.py checks their options)
    printf '%s\0' "$name" "$@" && printf '\n'
    return
  fi
  echo "== $name: $*" >> "$out/check.log"
  local start=$SECONDS
  timeout "$limit" "$@" >> "$out/check.log" 2>&1
  local rc=$?
  echo "-- $name: exit $rc after $((SECONDS - start)) s" | tee -a "$out/check.log"
  [ "$rc" = 0 ] || status=1
}

rd=("$py" -m robustdeploy)

step environment 60 "$py" -c "
import platform, torch, onnxruntime as ort
print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda,
      'available', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')
print('onnxruntime', ort.__version__, ort.get_available_providers())
for name in ('torchattacks', 'pytest', 'pynvml'):
    try:
        __import__(name); print(name, 'present')
    except ImportError:
        print(name, 'missing')
"
[ "$device" = cpu ] || step nvidia-smi 30 nvidia-smi
if [ -n "${RUN:-}" ]; then  # a run folder trained before (RUN=DIR) instead of training one
  cp -r "$RUN" "$work/run"
else
  step train 300 "${rd[@]}" train --dataset mnist --data-root "$data" --epochs "$epochs" --device "$device" \
    --out "$work/run"
fi
step export 300 "${rd[@]}" export "$work/run" --data-root "$data" --precision fp32 --precision fp16 --out "$work/bundle"
step evaluate 300 "${rd[@]}" evaluate "$work/bundle" --data-root "$data" -r torch -r "$ort" -r "$ort:fp16" --device "$device" \
  --eps 0.1 --eps 0.3 --batch-size 500 "${every[@]}" --out "$work/evaluate.json"
step rescore 120 "${rd[@]}" rescore "$work/evaluate.json" --device "$device"
step bench 300 "${rd[@]}" bench "$work/bundle" "${timed[@]}" --device "$device" --out "$work/bench.json"
step defend-eval 300 "${rd[@]}" defend-eval "$work/bundle" --data-root "$data" --baseline "$work/run" -r torch -r "$ort" \
  --device "$device" --limit "$limit" --steps "$steps" --out "$work/defense.json"
step export-detector 300 "${rd[@]}" export "$work/run" --data-root "$data" --detector squeeze --out "$work/detector"
step detector 300 "${rd[@]}" evaluate "$work/detector" --data-root "$data" --detector -r torch -r ort-cpu --device "$device" \
  --limit "$limit" --eps 0.1 --steps "$steps" "${adaptive[@]}" --out "$work/detector.json"
step detector-rescore-on-cpu 120 "${rd[@]}" rescore "$work/detector.json" --device cpu
step attacks 600 "$py" benchmarks/attacks.py --data-root "$data" --device "$device" --run "$work/run" \
  --samples "$samples" --apgd-steps "$apgd" --max-ratio "$([ "$device" = cpu ] && echo 1.0 || echo 0.667)" \
  --out "$work/attacks.json"
if [ -n "${GPU_CHECK_DRY:-}" ] || "$py" -c "import pytest" 2>/dev/null; then
  step gpu-tests 600 "$py" -m pytest -q -x tests/test_gpu.py tests/test_runtimes.py tests/test_attacks.py
else
    echo "== gpu-tests: skipped, pytest is not installed (carry it as a wheel)" | tee -a "$out/check.log"
fi
[ -n "${GPU_CHECK_DRY:-}" ] && exit 0
cp "$work"/evaluate.json "$work"/bench.json "$work"/detector.json "$work"/attacks.json "$out"/ 2>/dev/null
echo "gpu check finished with status $status; logs in $out" | tee -a "$out/check.log"
exit $status
