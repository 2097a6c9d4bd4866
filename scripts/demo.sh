#!/usr/bin/env bash
# Offline CPU demo of the whole chain on the PUBLIC path — skeleton frames from 2D keypoints, as every OpenPack user
# has them — with the tiny Qwen2-VL that carries the REAL Qwen2-VL-2B-Instruct tokenizer and processor and whose
# vision tower is pre-trained on a separate synthetic corpus (tiny-pretrained: built once, ~7 min, then cached);
# ~12 min on 2 cores after that:
#
#   bash scripts/demo.sh [OUT_DIR=out/demo]
#   env: STEPS=1200 (training steps of 2 clips), N_CLIPS=30 (test clips), SOURCE=pose|rgb (rgb: the synthetic colour
#        frames, a cue real frames lack), POSE_RENDER=person|frame (the first whole-frame skeleton renderer),
#        MODEL=tiny-pretrained|tiny-real|tiny (tiny-real: the same layers with a random vision tower, which never
#        learns the pose task at this budget; tiny: the 512-token BPE, ~10x cheaper), ANSWER_SPAN=shown|clip (how the
#        answer names its span: a sampled frame, or an exact clip frame), TIME_BAR=0|1 (draw each frame's time into
#        it) — the last two are the span rows of ARCHITECTURE.md §3; TRAIN_FLAGS="..." (extra training flags, e.g.
#        "--span_loss_weight 5"); EVAL_FLAGS="..." (extra evaluate.py flags; the suite's short chain: fewer val clips,
#        a shorter timeline)
#   Deterministic: every random source is seeded and the thread count is fixed (2), so two runs on one machine write
#   the same metrics and intervals.
#
# synthetic OpenPack root (keypoints calibrated to real OpenPack) -> data_pipeline.py -> LoRA training
# (openpack_vlm.model.train, no quantisation) -> evaluate.py (base vs fine-tuned vs fine-tuned + grammar) -> prints the
# table. Nothing is downloaded. The numbers check that the pipeline runs and learns; they are NOT OpenPack results
# (results.json says so).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${1:-out/demo}"
# 1200 steps x 2 clips (~9 min on 2 cores; 144 visual tokens per frame)
STEPS="${STEPS:-1200}"
N_CLIPS="${N_CLIPS:-30}"
ANSWER_SPAN="${ANSWER_SPAN:-shown}"
TIME_BAR="${TIME_BAR:-0}"
SOURCE="${SOURCE:-pose}"
POSE_RENDER="${POSE_RENDER:-person}"
MODEL="${MODEL:-tiny-pretrained}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# a fixed thread count: float sums (matmuls, reductions) are split by thread, so another count gives other bits
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2

step() { printf '\n== %s\n' "$*"; }

if [ "$MODEL" = tiny-pretrained ]; then
  step "0/4 the tiny base that already sees: tiny-pretrained (built once into the cache, ~7 min; then instant)"
  python -m openpack_vlm.testing.pretrain --cached
fi

step "1/4 synthetic OpenPack root -> $OUT/root"
if [ "$SOURCE" = rgb ]; then
  python -m openpack_vlm.testing.synthetic --out "$OUT/root"
else
  python -m openpack_vlm.testing.synthetic --out "$OUT/root" --no-rgb   # keypoints + annotations, as published
fi

step "2/4 data pipeline ($SOURCE frames, skeleton renderer $POSE_RENDER) -> $OUT/data"
BAR_FLAG=""
if [ "$TIME_BAR" = 1 ]; then BAR_FLAG="--time_bar"; fi
python data_pipeline.py --root "$OUT/root" --out "$OUT/data" --source "$SOURCE" --pose-render "$POSE_RENDER" \
    --answer-span "$ANSWER_SPAN" $BAR_FLAG

step "3/4 LoRA training of $MODEL, $STEPS steps of 2 clips -> $OUT/run"
# --num-workers 0: no dataloader processes on a 2-core CPU; no gradient checkpointing: the tiny model's activations
# are small, recomputing them would cost ~30 % more time
python -m openpack_vlm.model.train --data "$OUT/data" --out "$OUT/run" --model "$MODEL" --quantization none \
    --max-steps "$STEPS" --grad-accum 1 --no_gradient_checkpointing --num-workers 0 --report-to none ${TRAIN_FLAGS:-}

step "4/4 evaluation on the held-out user U0108 -> $OUT/eval"
python evaluate.py --data "$OUT/data" --out "$OUT/eval" --model "$MODEL" --adapter "$OUT/run/adapter" \
    --quantization none --n-clips "$N_CLIPS" ${EVAL_FLAGS:-}
