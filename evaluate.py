"""Evaluate base vs fine-tuned Qwen2-VL on the held-out test split (U0108) → results.json.

    python evaluate.py --data D --out E --adapter R/adapter [--model Qwen/Qwen2-VL-2B-Instruct] [--quantization 4bit]
                       [--all | --n-clips 30] [--val-clips 30] [--grammar G.json] [--fuse-weight W] [--batch-clips 4]
    python evaluate.py --data out/demo/data --out out/demo/eval --model tiny --adapter out/demo/run/adapter \
                       --quantization none          # the CPU demo

Writes E/results.json ({"base_model": {"OCA", "tIoU@0.5", "AA@1"}, "finetuned_model": {...}, + variants, baselines,
intervals, n_clips, provenance}), E/predictions.jsonl, E/confusion.json, E/confusion.png, E/failure_modes.json, and
prints the table, and records the tuned grammar weight in the run contract (E/run.json and the adapter's
R/run.json). Every flag is a field of openpack_vlm.evaluation.evaluate.EvalConfig (``--help``).
"""
from __future__ import annotations

from openpack_vlm.evaluation.evaluate import main  # the CLI lives in the package (also `openpack-evaluate`)

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
