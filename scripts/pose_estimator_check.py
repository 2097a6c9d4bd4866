"""The serving pose estimator's keypoints beside OpenPack's HRNet keypoints: what the skeleton renderer and the model
get from each.

    python scripts/pose_estimator_check.py [--json docs/figures/pose_estimator_check.json]

Estimated: MediaPipe Pose (data/pose_estimate.py, as /predict runs it) on a 5-s video of the real face-masked OpenPack
Kinect frames (tests/data/openpack-rgb-masked: U0209/S0500, a worker standing behind the table), whole frame and
shrunk to half size (the crop search). Real: OpenPack's HRNet keypoints of U0102/S0100 (tests/data/openpack-keypoints,
100 frames, a worker at work). Different recordings: the box, the scores, bone-length ratios, the still worker's
jitter and the renderer's token share are comparable; speeds are not. Printed as a markdown table.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def bones(k: np.ndarray) -> dict[str, float]:
    """Median bone-length ratios over frames where the joints are confident (scale-free: camera distance cancels)."""
    def length(a, b):
        return np.linalg.norm(k[:, a, :2] - k[:, b, :2], axis=-1)

    ok = (k[:, [5, 6, 7, 9, 11, 12], 2] >= 0.3).all(1)
    sw = length(5, 6)[ok]
    return {"upper_arm / shoulder width": float(np.median(length(5, 7)[ok] / sw)),
            "forearm / upper arm": float(np.median(length(7, 9)[ok] / length(5, 7)[ok])),
            "torso / shoulder width": float(np.median(np.linalg.norm(
                (k[ok][:, 5, :2] + k[ok][:, 6, :2]) / 2 - (k[ok][:, 11, :2] + k[ok][:, 12, :2]) / 2, axis=-1) / sw))}


def summary(ts: np.ndarray, k: np.ndarray) -> dict:
    from openpack_vlm.data.skeleton import MIN_SCORE, render_pose_clip, token_coverage
    from openpack_vlm.testing.worker import pose_stats

    st = pose_stats(ts, k)
    upper = k[:, :13, 2]
    return {"box_w_px": st["box_w_px"], "box_h_px": st["box_h_px"],
            "upper-body score p10": float(np.percentile(upper, 10)),
            "upper-body score p50": float(np.median(upper)),
            f"upper-body share below min_score {MIN_SCORE}": float((upper < MIN_SCORE).mean()),
            **bones(k), "torso jitter px/frame": st["torso_jitter_px"],
            "token share (person renderer)": token_coverage(render_pose_clip(k[:75], np.arange(0, 75, 9)))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO / "tests"))
    from media import write_video
    from test_pose import loop, real_frames, shrink

    from openpack_vlm.data.openpack import keypoints_from_json
    from openpack_vlm.data.pose_estimate import estimate_video

    ts, real = keypoints_from_json(REPO / "tests" / "data" / "openpack-keypoints" / "U0102-S0100-mmpose-100frames.json")
    cols = {"OpenPack HRNet (U0102)": summary(ts, real)}
    with tempfile.TemporaryDirectory() as tmp:
        f = real_frames()
        for name, frames in (("MediaPipe, whole frame (U0209)", loop(f, 75)),
                             ("MediaPipe, worker at half size", loop([shrink(x) for x in f], 75))):
            tr = estimate_video(write_video(Path(tmp) / "v.mp4", frames, fps=15), max_seconds=5.0)
            seen = tr.seen
            cols[name] = summary(tr.ts_ms[seen], tr.kpts[seen])
    keys = list(next(iter(cols.values())))
    print("| statistic | " + " | ".join(cols) + " |")
    print("| --- |" + " ---: |" * len(cols))
    for k in keys:
        print(f"| {k} | " + " | ".join(f"{c[k]:.3g}" for c in cols.values()) + " |")
    if args.json:
        from openpack_vlm.evaluation.report import git_provenance
        from openpack_vlm.io_utils import write_json

        write_json(Path(args.json), {"columns": cols} | git_provenance())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
