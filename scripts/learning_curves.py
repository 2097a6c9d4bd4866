"""Learning curves of training recipes at a fixed CPU budget: the ablation table and PNG of ARCHITECTURE.md §3.

    python scripts/learning_curves.py --data D --out docs/figures/learning [--eval-every 100] [--n-val 28] \\
        --run "NAME: TRAIN FLAGS" [--run ...]
    # e.g. --run "random tower: --model tiny-real --max-steps 600" --run "pretrained: --model tiny-pretrained ..."
    python scripts/learning_curves.py --regenerate docs/figures/learning     # the committed table's runs, again

Each run is ``openpack_vlm.model.train`` itself (the flags are its own; ``--data``/``--report-to`` are set here,
``--out`` is a scratch folder removed afterwards), with a callback that every ``--eval-every`` steps answers the first ``--n-val`` validation clips through
the product's ``Predictor`` (the 5 closed-set calls serving makes) and records OCA, AA@1, tIoU@0.5 and mean tIoU,
beside the training loss. Writes ``OUT/curves.json`` (every point, each run's flags, wall time, the
majority-class line) and ``OUT/curves.png`` (loss, val OCA, val AA@1, val mean tIoU per step), and prints the
markdown table. Threads: ``OMP_NUM_THREADS`` (2 = the CI machine).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def val_scores(model, processor, clips, batch: int = 8) -> dict:
    """OCA / AA@1 / tIoU@0.5 / mean tIoU of ``model`` (the training model, in eval mode) on ``clips``."""
    from openpack_vlm.evaluation.selection import truth_ids
    from openpack_vlm.metrics import evaluate_predictions
    from openpack_vlm.model.predict import Predictor

    pred = Predictor(model, processor)
    recs = []
    for i in range(0, len(clips), batch):
        part = clips[i:i + batch]
        for (rec, _), res in zip(part, pred.predict_batch([(fr, r.frame_indices, r.clip_id) for r, fr in part])):
            t, p = truth_ids(rec), res.prediction
            recs.append({"true_op": t["op"], "pred_op": p.dominant_operation, "true_span": t["span"],
                         "pred_span": (p.temporal_segment.start_frame, p.temporal_segment.end_frame),
                         "true_next": t["next"], "pred_next": p.anticipated_next_operation})
    m = evaluate_predictions(recs, n_boot=1)
    top = Counter(r["pred_op"] for r in recs).most_common(1)[0]
    return {"OCA": m["OCA"], "AA@1": m["AA@1"], "tIoU@0.5": m["tIoU@0.5"], "mean_tIoU": m["mean_tIoU"],
            "top_answer_share": top[1] / len(recs)}


def run_one(name: str, flags: str, data: Path, out: Path, val, every: int) -> dict:
    """One training run of train.py (its adapter and checkpoints under ``out``, a scratch folder) with the curve."""
    import torch
    from transformers import TrainerCallback

    from openpack_vlm.model import train as T

    cfg = T.parse_args(shlex.split(flags) + ["--data", str(data), "--out", str(out / _slug(name)),
                                              "--report-to", "none", "--save-steps", "100000"])
    points: list[dict] = []
    t0 = time.time()
    evals = [0.0]

    class Curve(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, processing_class=None, **kw):
            if state.global_step % every and state.global_step != args.max_steps:
                return
            e0 = time.time()
            model.eval()
            with torch.no_grad():
                s = val_scores(model, self.processor, val)
            model.train()
            evals[0] += time.time() - e0
            losses = [h["loss"] for h in state.log_history if "loss" in h][-max(1, every // args.logging_steps):]
            s.update(step=state.global_step, train_loss=sum(losses) / max(len(losses), 1),
                     train_s=round(time.time() - t0 - evals[0], 1))
            points.append(s)
            print(f"  {name} step {s['step']}: loss {s['train_loss']:.3f}  val OCA {s['OCA']:.3f}  AA@1 "
                  f"{s['AA@1']:.3f}  tIoU@0.5 {s['tIoU@0.5']:.3f}  ({s['train_s']:.0f} s training)", flush=True)

    from openpack_vlm.model.loading import load_processor

    Curve.processor = load_processor(cfg.model_id)
    T.train(cfg, callbacks=[Curve()])
    return {"name": name, "flags": flags, "points": points, "train_s": points[-1]["train_s"] if points else None,
            "final": points[-1] if points else None}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def majority(data: Path, val) -> dict:
    """The train split's majority answer scored on the same validation clips (the line a learner must clear)."""
    from openpack_vlm.evaluation.selection import train_majority, truth_ids

    op, nxt, _ = train_majority(data)
    truths = [truth_ids(r) for r, _ in val]
    return {"OCA": sum(t["op"] == op for t in truths) / len(truths),
            "AA@1": sum(t["next"] == nxt for t in truths) / len(truths)}


def plot(path: Path, runs: list[dict], maj: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from openpack_vlm.io_utils import save_figure

    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    for r in runs:
        xs = [p["step"] for p in r["points"]]
        for ax, key in zip(axes, ("train_loss", "OCA", "AA@1", "mean_tIoU")):
            ax.plot(xs, [p[key] for p in r["points"]], marker="o", ms=3, label=r["name"])
    for ax, key, title in zip(axes, ("train_loss", "OCA", "AA@1", "mean_tIoU"),
                              ("training loss (nats / answer token)", "val OCA", "val AA@1", "val mean tIoU")):
        ax.set_title(title)
        ax.set_xlabel("step")
        if key in maj:
            ax.axhline(maj[key], color="grey", ls="--", lw=1, label="majority class")
        if key != "train_loss":
            ax.set_ylim(0, 1)
    axes[0].set_yscale("log")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def table(runs: list[dict], maj: dict) -> str:
    lines = ["| run | train flags | steps | training s | val OCA | val AA@1 | val tIoU@0.5 | val mean tIoU | "
             "final loss |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        f = r["final"]
        lines.append(f"| {r['name']} | `{r['flags']}` | {f['step']} | {f['train_s']:.0f} | {f['OCA']:.3f} | "
                     f"{f['AA@1']:.3f} | {f['tIoU@0.5']:.3f} | {f['mean_tIoU']:.3f} | {f['train_loss']:.3f} |")
    lines.append(f"| majority class | — | — | — | {maj['OCA']:.3f} | {maj['AA@1']:.3f} | | | |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="data_pipeline.py output (train + val splits)")
    ap.add_argument("--out", help="folder for curves.json / curves.png")
    ap.add_argument("--run", action="append", default=[], help='"NAME: TRAIN FLAGS" (repeatable)')
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--n-val", type=int, default=28, help="first N validation clips (sorted by clip id)")
    ap.add_argument("--regenerate", metavar="OUT", help="rerun the runs recorded in OUT/curves.json, same data")
    a = ap.parse_args(argv)
    if a.regenerate:
        rec = json.loads((Path(a.regenerate) / "curves.json").read_text())
        a.data, a.out = a.data or rec["data"], a.regenerate
        a.run = [f"{r['name']}: {r['flags']}" for r in rec["runs"]]
        a.eval_every, a.n_val = rec["eval_every"], rec["n_val"]
    if not a.data or not a.out or not a.run:
        ap.error("give --data, --out and at least one --run (or --regenerate OUT)")
    if any(":" not in r for r in a.run):
        ap.error('each --run is "NAME: TRAIN FLAGS"')
    from openpack_vlm.evaluation.selection import load_clips, select_clips
    from openpack_vlm.io_utils import write_json

    data, out = Path(a.data), Path(a.out)
    val = load_clips(data, "val", select_clips(data, "val", a.n_val))
    maj = majority(data, val)
    runs = []
    import tempfile

    for spec in a.run:
        name, flags = (s.strip() for s in spec.split(":", 1))
        print(f"== {name}: {flags}", flush=True)
        with tempfile.TemporaryDirectory(prefix="curves_") as scratch:  # adapters are ~40 MB: not kept
            runs.append(run_one(name, flags, data, Path(scratch), val, a.eval_every))
        write_json(out / "curves.json", {"data": str(data), "eval_every": a.eval_every, "n_val": len(val),
                                         "threads": os.environ.get("OMP_NUM_THREADS"), "majority": maj,
                                         "runs": runs})
    plot(out / "curves.png", runs, maj)
    print(table(runs, maj))
    return 0


if __name__ == "__main__":
    sys.exit(main())
