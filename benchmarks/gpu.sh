#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md, in one script: run from the repository root on a machine with a CUDA GPU.
#   bash benchmarks/gpu.sh [OUT_DIR]      (PY=python3 to use another interpreter than .venv/bin/python)
# 1. the batch-level crop/flip/normalise on the GPU equals the CPU's, bit for bit (tests/test_cache.py); the text
#    encoder gives torch's packing's values; a whole training step never synchronises with the GPU (tests/test_models.py)
# 2. the training step against the backbone alone: resnet50, 224 px, bf16, stage 1 and stage 2; stage 1 profiled;
#    eager and compiled (--compile), batch 32 and 128; the op count of a step (device independent)
# 3. bench_data: JPEG paths and the prepared cache at 0, 8 and 16 workers, batches made on the GPU
# 4. 200-step stage-1 and stage-2 runs of synthetic FashionIQ (500x650 JPEG photos) from the cache, and stage 1
#    from the JPEGs: images/s and the loader's wait per step (benchmarks/run_speed.py)
# Each step goes on when another fails; every log lands in OUT_DIR (default gpu_out/).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
step() { echo "== $*"; "$@" 2>&1 | grep -v "it/s\]\|img/s\]" | tee -a "$OUT/gpu.log"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.log"
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.log"
step $PY -m pytest -q -p no:cacheprovider tests/test_cache.py tests/test_models.py -k "gpu or bit_for_bit or sorts_as"
for stage in 1 2; do
  step $PY benchmarks/bench_train.py --backbone resnet50 --crop 224 --batch 32 --stage $stage --device cuda \
    --amp bf16 --channels_last --steps 20 $([ $stage = 1 ] && echo --profile 25)
done
step $PY benchmarks/bench_train.py --backbone resnet50 --crop 224 --batch 128 --stage 2 --device cuda --amp bf16 \
  --channels_last --steps 10
# the compiled step (--compile: forward + loss + backward, CUDA graphs), stage 1 and 2 at batch 32 and 128
for stage in 1 2; do
  for batch in 32 128; do
    step $PY benchmarks/bench_train.py --backbone resnet50 --crop 224 --batch $batch --stage $stage --device cuda \
      --amp bf16 --channels_last --steps 20 --warmup 5 --compile
  done
done
step $PY benchmarks/bench_train.py --backbone resnet50 --crop 224 --batch 128 --stage 1 --device cuda --amp bf16 \
  --channels_last --steps 10
step $PY benchmarks/bench_train.py --stage 1 --count_ops
step $PY benchmarks/bench_data.py --device cuda --workers 0,8,16 --batches 100 --triplets 1500
DATA=$(mktemp -d)
step $PY -m data.synthetic --out "$DATA" --dataset fashioniq --photo 500x650 --n_images 200 --n_triplets 2200
step $PY -m data.prepare --dataset fashioniq --data_root "$DATA" --workers 16
step $PY vocab.py --dataset fashioniq --data_root "$DATA" --vocab_dir "$DATA/vocab"
RUN="--dataset fashioniq --data_root $DATA --vocab_dir $DATA/vocab --output_dir $DATA/runs --backbone resnet50
  --backbone_weights none --crop_size 224 --batch_size 32 --num_workers 16 --device cuda --amp bf16 --channels_last
  --max_steps 200 --no-validate --log_every 10"
step $PY train.py $RUN --exp_name cache --two_stage --num_epochs 1 --finetune_epochs 1 --img_finetune --txt_finetune
step $PY benchmarks/run_speed.py "$DATA/runs/cache/stage1/train_log.jsonl"
step $PY benchmarks/run_speed.py "$DATA/runs/cache/stage2/train_log.jsonl"
step $PY train.py $RUN --exp_name jpeg --num_epochs 1 --image_cache none
step $PY benchmarks/run_speed.py "$DATA/runs/jpeg/stage1/train_log.jsonl"
grep "^RESULT\|^== " "$OUT/gpu.log" || true
