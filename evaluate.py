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

import sys

from openpack_vlm.cli import build_parser, parse
from openpack_vlm.evaluation.evaluate import EvalConfig, evaluate, format_table
from openpack_vlm.io_utils import one_line


def main(argv=None) -> int:
    parser = build_parser(EvalConfig, prog="evaluate.py", description=__doc__.split("\n")[0])
    cfg, _ = parse(parser, argv)
    try:
        results = evaluate(cfg)
    except Exception as e:  # the CLI prints one line, never a traceback
        print(f"error: {one_line(e, with_type=True)}", file=sys.stderr)
        return 1
    print(format_table(results))
    mem = results["provenance"]["memory"]
    print(f"batch_clips={cfg.batch_clips}  peak memory: {mem['kind']} {mem['bytes'] / 1e9:.3f} GB")
    print(f"wrote {cfg.out}/results.json, predictions.jsonl, confusion.json, confusion.png, failure_modes.json, "
          "run.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
