"""Evaluate base vs fine-tuned Qwen2-VL on the held-out test split (U0108) → results.json.

    python evaluate.py --data D --out E --adapter R/adapter [--model Qwen/Qwen2-VL-2B-Instruct] [--quantization 4bit]
                       [--all | --n-clips 30] [--val-clips 30] [--grammar G.json] [--fuse-weight W]
    python evaluate.py --data out/demo/data --out out/demo/eval --model tiny --adapter out/demo/run/adapter \
                       --quantization none          # the CPU demo

Writes E/results.json ({"base_model": {"OCA", "tIoU@0.5", "AA@1"}, "finetuned_model": {...}, + variants, baselines,
intervals, n_clips, provenance}), E/predictions.jsonl, E/confusion.json, E/confusion.png, E/failure_modes.json, and
prints the table. See openpack_vlm/evaluation.py.
"""
from __future__ import annotations

import argparse
import sys

from openpack_vlm.evaluation import EvalConfig, evaluate, format_table


def build_parser() -> argparse.ArgumentParser:
    d = EvalConfig(data="", out="", adapter="")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="data_pipeline.py output dir D")
    p.add_argument("--out", required=True, help="output dir E")
    p.add_argument("--adapter", required=True, help="LoRA adapter dir (R/adapter) or training run dir R")
    p.add_argument("--model", default=d.model_id, help='base model: hub id, local dir, or "tiny"')
    p.add_argument("--quantization", default=d.quantization, choices=["4bit", "none"])
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda")
    p.add_argument("--split", default=d.split, help="split to evaluate (default: test = U0108)")
    p.add_argument("--n-clips", type=int, default=d.n_clips, help="first N clips sorted by clip_id")
    p.add_argument("--all", action="store_true", help="every clip of the split")
    p.add_argument("--val-clips", type=int, default=d.val_clips, help="val clips used to tune the grammar weight")
    p.add_argument("--grammar", default=None, help="grammar JSON (default: the run's grammar.json, else D/grammar.json)")
    p.add_argument("--fuse-weight", type=float, default=None, help="grammar weight in [0,1] (default: tuned on val)")
    p.add_argument("--fuse-mode", default=d.fuse_mode, choices=["linear", "loglinear"])
    p.add_argument("--no-free-text", action="store_true", help="skip the free-generation raw answers (faster)")
    p.add_argument("--n-boot", type=int, default=d.n_boot, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=d.seed)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cfg = EvalConfig(data=args.data, out=args.out, adapter=args.adapter, model_id=args.model,
                     quantization=args.quantization, device=args.device, split=args.split, n_clips=args.n_clips,
                     all_clips=args.all, val_clips=args.val_clips, grammar=args.grammar, fuse_weight=args.fuse_weight,
                     fuse_mode=args.fuse_mode, free_text=not args.no_free_text, n_boot=args.n_boot, seed=args.seed)
    try:
        results = evaluate(cfg)
    except Exception as e:  # the CLI prints one line, never a traceback
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"error: {type(e).__name__}: {msg}", file=sys.stderr)
        return 1
    print(format_table(results))
    print(f"wrote {args.out}/results.json, predictions.jsonl, confusion.json, confusion.png, failure_modes.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
