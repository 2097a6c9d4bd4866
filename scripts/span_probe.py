"""What the fine-tuned model believes about the span: its start / end distributions over EVERY clip frame, and what
expected-IoU (minimum Bayes risk) decoding over them would score (ARCHITECTURE.md §3, "The span, measured").

    OMP_NUM_THREADS=2 python scripts/span_probe.py --data out/demo/data --adapter out/demo/run/adapter \
        [--model tiny-pretrained] [--clips 30] [--starts 4] [--json out.json]

Per test clip: the truth, the predictor's answer, the top start frames and the top end frames after start 0, the
probability mass on the clip's sampled frames, and the span that maximises the expected IoU under the model's joint
(start, end) distribution (the ``--starts`` most likely starts x every end, scored in one trie call). Summary:
tIoU@0.5 and mean tIoU of the predictor's span, the MBR span and the whole clip.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openpack_vlm.evaluation.selection import iter_clips, select_clips  # noqa: E402
from openpack_vlm.io_utils import write_json  # noqa: E402
from openpack_vlm.model.answers import end_candidates, start_candidates  # noqa: E402
from openpack_vlm.model.predict import PredictConfig, Predictor  # noqa: E402
from openpack_vlm.prompt import clip_span  # noqa: E402
from openpack_vlm.schema import CLIP_FRAMES  # noqa: E402


def iou_matrix(s1, e1, s2, e2) -> np.ndarray:
    inter = np.clip(np.minimum(e1[:, None], e2[None]) - np.maximum(s1[:, None], s2[None]) + 1, 0, None)
    return inter / ((e1 - s1 + 1)[:, None] + (e2 - s2 + 1)[None] - inter)


def _softmax(lp) -> np.ndarray:
    w = np.exp(np.asarray(lp) - np.max(lp))
    return w / w.sum()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--model", default="tiny-pretrained")
    ap.add_argument("--split", default="test")
    ap.add_argument("--clips", type=int, default=30)
    ap.add_argument("--starts", type=int, default=4, help="most likely start frames the MBR decoder expands")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    p = Predictor.from_pretrained(a.model, adapter=a.adapter, device="cpu", config=PredictConfig(free_text=False))
    p._room = a.starts * 3 * CLIP_FRAMES + 64  # room for the joint tree: starts x every end, ~3 tokens each
    shown_fmt = p.config.span == "shown"
    rows, out = select_clips(Path(a.data), a.split, a.clips), []
    for rec, frames in iter_clips(Path(a.data), a.split, rows):
        seg = rec.truth["temporal_segment"]
        truth = (seg["start_frame"], seg["end_frame"])
        idx = rec.frame_indices
        r = p.predict_batch([(frames, idx, rec.clip_id)])[0]
        dom = r.prediction.dominant_operation
        st = p._prefill_batch([(*p._checked(frames, idx), rec.clip_id)])
        ps = _softmax(p._score_sets(st, [start_candidates(dom)])[0])
        pe0 = _softmax(p._score_sets(st, [end_candidates(dom, 0)])[0])
        top = [int(s) for s in np.argsort(-ps)[: a.starts]]
        pairs = [(s, e) for s in top for e in range(s, CLIP_FRAMES)]
        w = _softmax(p._score_sets(st, [[c for s in top for c in end_candidates(dom, s)]])[0])
        spans = np.array([clip_span(s, e, idx) if shown_fmt else (s, e) for s, e in pairs])
        gain = iou_matrix(spans[:, 0], spans[:, 1], spans[:, 0], spans[:, 1]) @ w
        mbr = tuple(int(x) for x in spans[int(np.argmax(gain))])
        pred = (r.prediction.temporal_segment.start_frame, r.prediction.temporal_segment.end_frame)
        t = (np.array([truth[0]]), np.array([truth[1]]))
        score = {k: float(iou_matrix(np.array([v[0]]), np.array([v[1]]), *t)[0, 0])
                 for k, v in (("predictor", pred), ("mbr", mbr), ("whole_clip", (0, CLIP_FRAMES - 1)))}
        row = {"clip_id": rec.clip_id, "truth": truth, "sampled": idx, "dominant": dom, "predictor": pred, "mbr": mbr,
               "top_starts": [(int(i), round(float(ps[i]), 3)) for i in np.argsort(-ps)[:4]],
               "top_ends_after_0": [(int(i), round(float(pe0[i]), 3)) for i in np.argsort(-pe0)[:5]],
               "end_mass_on_sampled": round(float(sum(pe0[i] for i in idx)), 3), "iou": score}
        out.append(row)
        print(f"{rec.clip_id} truth {truth} predictor {pred} mbr {mbr} | starts {row['top_starts']} "
              f"ends|0 {row['top_ends_after_0']} on sampled {row['end_mass_on_sampled']}")
    summary = {k: {"tIoU@0.5": float(np.mean([o["iou"][k] >= 0.5 for o in out])),
                   "mean_tIoU": float(np.mean([o["iou"][k] for o in out]))} for k in ("predictor", "mbr", "whole_clip")}
    print(f"span format {p.config.span}, time bar {p.config.time_bar}, {len(out)} clips: "
          + "; ".join(f"{k} tIoU@0.5 {v['tIoU@0.5']:.3f} mean {v['mean_tIoU']:.3f}" for k, v in summary.items()))
    if a.json:
        write_json(Path(a.json), {"clips": out, "summary": summary})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
