"""What an adapter's frame head reads, clip by clip: per-frame accuracy against the majority frame class, and the
dominant operation and span from the answer alone, from the head alone, and fused (the predictor's way).

    OMP_NUM_THREADS=2 python scripts/frame_probe.py --data out/demo/data --adapter out/demo/run/adapter \
        [--model tiny-pretrained] [--split test] [--n 30] [--json docs/figures/learning/frame_probe.json]

The numbers of ARCHITECTURE.md §3 "The frame head". Exit 2 when the adapter has no frame head.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

import numpy as np

from openpack_vlm.data.shards import iter_samples, shard_paths
from openpack_vlm.labels import NAME_TO_ID, OPERATION_NAMES
from openpack_vlm.metrics import span_iou
from openpack_vlm.model.frame_head import frame_segment, frame_shares
from openpack_vlm.model.predict import PredictConfig, Predictor
from openpack_vlm.prompt import clip_span


def probe(data: str, adapter: str, model: str, split: str, n: int) -> dict:
    clips = sorted(iter_samples(shard_paths(f"{data}/{split}")), key=lambda c: c[0].clip_id)[:n]
    pred = Predictor.from_pretrained(model, adapter=adapter, grammar=None, config=PredictConfig(free_text=False))
    if not pred.has_frame_head:
        raise ValueError(f"{adapter} has no frame head (trained with --frame_loss_weight 0?)")
    rows = []
    for i in range(0, len(clips), 8):
        part = clips[i:i + 8]
        for (rec, _), res in zip(part, pred.predict_batch([(fr, r.frame_indices, r.clip_id) for r, fr in part])):
            idx, t = rec.frame_indices, rec.truth
            truth_span = (t["temporal_segment"]["start_frame"], t["temporal_segment"]["end_frame"])
            probs = [[d[n] for n in OPERATION_NAMES] for d in res.scores["frames"]]
            answer = [res.scores["dominant_answer"][n] for n in OPERATION_NAMES]
            shares = frame_shares(probs, idx)
            true_k = OPERATION_NAMES.index(t["dominant_operation"])

            def span_of(k: int) -> float:
                a, b, _ = frame_segment(probs, k)
                return span_iou(clip_span(idx[a], idx[b], idx), truth_span)

            seg = res.prediction.temporal_segment
            rows.append({
                "clip_id": rec.clip_id,
                "frames_right": [NAME_TO_ID[OPERATION_NAMES[int(np.argmax(p))]] == o
                                 for p, o in zip(probs, rec.frame_ops)],
                "frame_truth": list(rec.frame_ops),
                "op_answer": OPERATION_NAMES[int(np.argmax(answer))] == t["dominant_operation"],
                "op_frames": OPERATION_NAMES[int(np.argmax(shares))] == t["dominant_operation"],
                "op_fused": res.prediction.dominant_operation == t["dominant_operation"],
                "tiou": span_iou((seg.start_frame, seg.end_frame), truth_span),
                "tiou_given_true_op": span_of(true_k),
            })
    frames = [x for r in rows for x in r["frames_right"]]
    majority = Counter(o for r in rows for o in r["frame_truth"]).most_common(1)[0][1] / len(frames)
    mean = lambda key: float(np.mean([r[key] for r in rows]))  # noqa: E731
    return {"data": data, "adapter": adapter, "model": model, "split": split, "clips": len(rows),
            "frames": len(frames), "frame_accuracy": float(np.mean(frames)), "frame_majority_share": majority,
            "OCA_answer": mean("op_answer"), "OCA_frames": mean("op_frames"), "OCA_fused": mean("op_fused"),
            "mean_tIoU": mean("tiou"), "tIoU@0.5": float(np.mean([r["tiou"] >= 0.5 for r in rows])),
            "mean_tIoU_given_true_op": mean("tiou_given_true_op"), "clips_detail": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--model", default="tiny-pretrained")
    ap.add_argument("--split", default="test")
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    try:
        r = probe(a.data, a.adapter, a.model, a.split, a.n)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{r['clips']} {a.split} clips, {r['frames']} shown frames: frame accuracy {r['frame_accuracy']:.3f} "
          f"(majority frame class {r['frame_majority_share']:.3f})")
    print(f"dominant operation: answer {r['OCA_answer']:.3f}, frame shares {r['OCA_frames']:.3f}, fused "
          f"{r['OCA_fused']:.3f}")
    print(f"span: mean tIoU {r['mean_tIoU']:.3f}, tIoU@0.5 {r['tIoU@0.5']:.3f}; given the true operation "
          f"{r['mean_tIoU_given_true_op']:.3f}")
    if a.json:
        from openpack_vlm.io_utils import write_json

        write_json(a.json, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
