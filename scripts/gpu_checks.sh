#!/usr/bin/env bash
# The GPU checks of one device lease, in one command (~8 min on an H100, no network there):
#
#     COMMIT=$(git rev-parse --short HEAD) OUT=/tmp/gpu bash scripts/gpu_checks.sh     # on a CUDA machine
#     DRY=1 OUT=/tmp/gpu bash scripts/gpu_checks.sh                                   # here: the same steps on CPU
#
# 1. gpu_smoke.py: 4-bit QLoRA steps of the tiny Qwen2-VL through train.py, fp16 and bf16, with and without vision
#    LoRA (loss finite, only the adapter's weights change — LoRA and the frame head —, the adapter generates).
# 2. bench_predict.py --model 2b: the predictor's model time on Qwen2-VL-2B's architecture (random weights, the real
#    tokenizer and processor) in 4-bit, on the served path of an adapter with a frame head (3 calls per clip):
#    reference rows path vs trie, one clip and batched, answers compared.
# 3. gpu_vram_check.py: 4-bit QLoRA steps of the 2B architecture (checkpointing on/off, answer-only vs full logits,
#    vision LoRA, a T4-sized memory cap), measured peak beside the VRAM estimate.
#
# The machine has torch but not this repo's pins: they travel as .gpucarry/site.tar.xz (built by
# scripts/gpu_carry.sh; the run names it in carry) and are unpacked onto PYTHONPATH. Each step has its own time
# limit and a failed step does not stop the next; every step's report and log land in $OUT (at most 8 files come back from the machine).
set -u
OUT=${OUT:?set OUT to the folder for the reports}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${DRY:-}" ] && [ -f .gpucarry/site.tar.xz ]; then
  mkdir -p /tmp/gpusite && tar -C /tmp/gpusite -xJf .gpucarry/site.tar.xz && export PYTHONPATH="/tmp/gpusite:$PYTHONPATH"
fi
{
  echo "commit: ${COMMIT:-unknown}  date: $(date -u +%FT%TZ)  dry: ${DRY:-0}"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import sys, torch, transformers, peft, bitsandbytes; print(sys.version.split()[0], 'torch', torch.__version__,
'transformers', transformers.__version__, 'peft', peft.__version__, 'bitsandbytes', bitsandbytes.__version__)"
} 2>&1 | tee "$OUT/env.txt"

step() {  # step NAME SECONDS COMMAND...: run, keep the log, record the exit status
  local name=$1 secs=$2; shift 2
  local t0=$SECONDS
  timeout "$secs" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: rc=$rc in $((SECONDS - t0)) s (limit $secs s)" | tee -a "$OUT/env.txt"
  grep -v -E "Warning|warnings.warn|it/s\]|s/it\]|^\s*$" "$OUT/$name.log" | tail -n 25
}

if [ -n "${DRY:-}" ]; then
  step gpu_smoke 300 python3 scripts/gpu_smoke.py --device cpu --steps 2 --json "$OUT/gpu_smoke.json"
  step bench_predict 300 python3 scripts/bench_predict.py --frame-head --clips 2 --batches 2 \
    --commit "${COMMIT:-unknown}" --out "$OUT/bench_predict.json"
else
  step gpu_smoke 130 python3 scripts/gpu_smoke.py --steps 4 --json "$OUT/gpu_smoke.json"
  step bench_predict 170 python3 scripts/bench_predict.py --model 2b --device cuda --quantization 4bit --frame-head \
    --clips 8 --batches 4,8 --commit "${COMMIT:-unknown}" --out "$OUT/bench_predict.json"
  step gpu_vram_check 250 python3 scripts/gpu_vram_check.py --steps 3 --json "$OUT/gpu_vram_check.json"
fi
