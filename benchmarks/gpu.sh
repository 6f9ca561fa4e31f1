#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md: resnet50 at 224 px, bf16, stage 2 (everything trains).
# Run from the repository root on a machine with a CUDA GPU:  bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
$PY benchmarks/bench_train.py --backbone resnet50 --crop 224 --batch 32 --stage 2 --device cuda --amp bf16 --steps 20
$PY benchmarks/bench_train.py --backbone resnet50 --crop 224 --batch 32 --stage 2 --device cuda --amp bf16 --channels_last --steps 20
$PY benchmarks/bench_train.py --backbone resnet50 --crop 224 --batch 128 --stage 2 --device cuda --amp bf16 --channels_last --steps 20
$PY benchmarks/bench_data.py --size 256 --crop 224 --batch 32 --batches 40 --workers 0,4,8,16
