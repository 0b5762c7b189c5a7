#!/usr/bin/env bash
# The GPU part of the test suite, then a few GPU measurements: on one GPU, in under 10 minutes.
#
#     bash tests/gpu_check.sh [OUT_DIR]      (default gpu_check/; PYTHON=... chooses the interpreter)
#
# 1. the tests marked `cuda` (tests/test_cuda.py), at most 6 minutes;
# 2. `minipss perf` in the three modes (bf16, minipss and the transformers reference), at most 1 minute
#    each: on the real Gemma 3 270M when weights/gemma-3-270m holds it, else on a small random model.
# What each step printed is kept in OUT_DIR. The exit code is 0 only when every step succeeded: the tests,
# the small model's creation (when needed) and each `minipss perf` run; the steps that failed are named last.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${1:-gpu_check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch, transformers; print('torch', torch.__version__, 'CUDA', torch.version.cuda,
'GPU', torch.cuda.is_available(), 'transformers', transformers.__version__)"; } 2>&1 | tee "$OUT/machine.txt"

timeout 360 $PY -m pytest -q -m cuda -p no:cacheprovider -p no:warnings --durations=10 \
    --junitxml="$OUT/cuda_tests.xml" tests/test_cuda.py 2>&1 | tee "$OUT/cuda_tests.txt"
tests=${PIPESTATUS[0]}
failed=()
[ "$tests" -eq 0 ] || failed+=("cuda tests")
# without a GPU every test above skips and passes: that is a failure here
$PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" || failed+=("no CUDA GPU visible to torch")

MODEL=weights/gemma-3-270m
if [ ! -f "$MODEL/model.safetensors" ]; then
    MODEL="$OUT/small-model"
    $PY -c "import sys; from pathlib import Path; sys.path.insert(0, 'tests'); from tiny import make_tiny_model
make_tiny_model(Path('$MODEL'), layers=8, d_ff=2048, hidden_size=512, num_attention_heads=8,
                num_key_value_heads=4, head_dim=64)" || failed+=("small model")
fi
echo "perf on $MODEL" | tee "$OUT/perf.txt"
for mode in logits cloze generate; do
    echo "--- $mode" | tee -a "$OUT/perf.txt"
    timeout 60 $PY -m minipss perf --model "$MODEL" --mode "$mode" --device cuda --dtype bfloat16 --concepts 2 \
        2>&1 | tee -a "$OUT/perf.txt"
    [ "${PIPESTATUS[0]}" -eq 0 ] || failed+=("perf $mode")
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "gpu_check: FAILED: ${failed[*]}" | tee -a "$OUT/perf.txt"
    exit 1
fi
echo "gpu_check: every step passed"
