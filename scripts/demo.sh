#!/usr/bin/env bash
# Offline CPU demo of the whole chain on synthetic data and the tiny random Qwen2-VL (a few minutes on 2 cores):
#
#   bash scripts/demo.sh [OUT_DIR=out/demo]        # env: STEPS=300 (training steps), N_CLIPS=30 (test clips)
#
# synthetic OpenPack root -> data_pipeline.py -> LoRA training (openpack_vlm.model.train, tiny model, no quantisation)
# -> evaluate.py (base vs fine-tuned vs fine-tuned + grammar) -> prints the table. Nothing is downloaded.
# The numbers check that the pipeline runs and learns; they are NOT OpenPack results (results.json says so).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${1:-out/demo}"
# 300 steps (~4 min on 2 cores): the tiny model learns the synthetic classes (held-out OCA ~0.7 measured);
# at 60 steps it still answers the majority class for every clip
STEPS="${STEPS:-300}"
N_CLIPS="${N_CLIPS:-30}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"

step() { printf '\n== %s\n' "$*"; }

step "1/4 synthetic OpenPack root -> $OUT/root"
python -m openpack_vlm.data.synthetic --out "$OUT/root"

step "2/4 data pipeline -> $OUT/data"
python data_pipeline.py --root "$OUT/root" --out "$OUT/data"

step "3/4 LoRA training of the tiny model, $STEPS steps -> $OUT/run"
# --num-workers 0: the tiny model's batches are cheap to build; no dataloader processes on a 2-core CPU
python -m openpack_vlm.model.train --data "$OUT/data" --out "$OUT/run" --model tiny --quantization none \
    --max-steps "$STEPS" --num-workers 0 --report-to none

step "4/4 evaluation on the held-out user U0108 -> $OUT/eval"
python evaluate.py --data "$OUT/data" --out "$OUT/eval" --model tiny --adapter "$OUT/run/adapter" \
    --quantization none --n-clips "$N_CLIPS"
