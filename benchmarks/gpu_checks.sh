#!/usr/bin/env bash
# The device checks of issue 7, as one script (about 6-8 minutes on one H100):
#   1. training-step throughput: plain transformers step vs our LightningModule, Stage II and Stage I;
#   2. Janus-Pro-7B Stage II per-rank memory: rank 0 of a fake 8-rank FSDP2 job on this one GPU.
# Usage: bash benchmarks/gpu_checks.sh [extra train_step.py flags]; results also go to $OUT if set.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
out="${OUT:-/tmp}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch, transformers, lightning; print('torch', torch.__version__, '| transformers', transformers.__version__, '| lightning', lightning.__version__)"
timeout 330 python benchmarks/train_step.py "$@" 2>&1 | grep -v -i warn | tee "$out/train_step.txt"
timeout 200 python benchmarks/memory.py --measure --rows 4 2>&1 | grep -v -i warn | tee "$out/memory.txt"
