"""How much of each skeleton frame the model can read: the first (whole-frame) renderer vs the person-centred one,
on REAL OpenPack keypoints (tests/data/openpack-keypoints, U0102/S0100, 100 frames at 15 Hz).

    python scripts/pose_coverage.py [--keypoints FILE] [--png docs/figures/pose_render_real.png] [--json OUT]

Prints, per renderer: the share of a frame's 144 visual tokens (28x28 px cells of the 336x336 frame: 14 px patches
merged 2x2) in which the skeleton lights a pixel (``skeleton.token_coverage``), the share of non-black pixels, and the
wrists' path length on screen over the 100 frames (both wrists, each frame in its own window: what the model
sees move); then new / old ratios against the targets (coverage >= 0.5, wrist path >= 3x). Also for each 5-s window
(75 keypoint frames) of the sample, since training clips are 5 s. The PNG shows 4 frames, old above new.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REAL = REPO / "tests" / "data" / "openpack-keypoints" / "U0102-S0100-mmpose-100frames.json"


def wrist_path(kpts: np.ndarray, render) -> float:
    """Summed frame-to-frame displacement of both wrists ON SCREEN (output px, each frame in its own window: a
    window that follows the worker removes the body's own travel, so this is what the model sees move)."""
    from openpack_vlm.data.letterbox import KINECT_H, KINECT_W, SIZE, Letterbox
    from openpack_vlm.data.skeleton import clip_window

    w = kpts[:, [9, 10], :2]
    if render.mode == "frame":
        box = Letterbox.for_shape(KINECT_W, KINECT_H, SIZE)
        return float(np.linalg.norm(np.diff(w, axis=0) * box.scale, axis=-1).sum())
    centre, ww, wh = clip_window(kpts, None, render)
    screen = (w - centre[:, None, :]) * np.array([SIZE / ww, SIZE / wh])
    return float(np.linalg.norm(np.diff(screen, axis=0), axis=-1).sum())


def measure(kpts: np.ndarray) -> dict:
    from openpack_vlm.data.skeleton import PoseRender, render_pose_clip, token_coverage

    out = {}
    for name, render in (("frame", PoseRender(mode="frame")), ("person", PoseRender())):
        frames = render_pose_clip(kpts, None, render)
        out[name] = {"token_coverage": token_coverage(frames), "lit_pixels": float((frames.max(-1) > 8).mean()),
                     "wrist_path_px": wrist_path(kpts, render),
                     "token_coverage_5s": [token_coverage(render_pose_clip(kpts[s:s + 75], None, render))
                                           for s in range(0, max(1, len(kpts) - 74), 12)],
                     "frames": frames}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keypoints", default=str(REAL), help="mmpose JSON (v0.2 or v1.0 layout)")
    ap.add_argument("--png", default=None, help="before/after picture of 4 frames")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from openpack_vlm.data.openpack import keypoints_from_json
    from openpack_vlm.data.skeleton import PoseRender

    _, kpts = keypoints_from_json(args.keypoints)
    m = measure(kpts.astype(np.float64))
    old, new = m["frame"], m["person"]
    print(f"{Path(args.keypoints).name}: {len(kpts)} keypoint frames")
    print(f"{'renderer':<8}{'tokens lit':>12}{'pixels lit':>12}{'wrist path px':>15}  tokens lit per 5-s window")
    for name, r in m.items():
        print(f"{name:<8}{r['token_coverage']:>12.3f}{r['lit_pixels']:>12.3f}{r['wrist_path_px']:>15.0f}  "
              + " ".join(f"{v:.3f}" for v in r["token_coverage_5s"]))
    cov_ok = new["token_coverage"] >= 0.5
    ratio = new["wrist_path_px"] / old["wrist_path_px"]
    print(f"person: tokens lit {new['token_coverage']:.3f} (target >= 0.5: {'met' if cov_ok else 'MISSED'}, "
          f"x{new['token_coverage'] / old['token_coverage']:.1f} the whole-frame renderer); wrist path x{ratio:.2f} "
          f"(target >= 3: {'met' if ratio >= 3 else 'MISSED'})")
    if args.png:
        from PIL import Image

        from openpack_vlm.io_utils import atomic_path

        pick = np.linspace(0, len(kpts) - 1, 4).round().astype(int)
        rows = [np.concatenate(list(m[k]["frames"][pick]), 1) for k in ("frame", "person")]
        grid = np.concatenate([np.concatenate([r, np.full((6, r.shape[1], 3), 255, np.uint8)]) for r in rows])
        with atomic_path(args.png) as tmp:
            Image.fromarray(grid).save(tmp, format="PNG")
        print(f"wrote {args.png} (frames {pick.tolist()}: whole-frame renderer above, person-centred below)")
    if args.json:
        from openpack_vlm.evaluation.report import git_provenance
        from openpack_vlm.io_utils import write_json

        write_json(args.json, {"keypoints": str(args.keypoints), "render": PoseRender().to_json(),
                               **{k: {kk: vv for kk, vv in v.items() if kk != "frames"} for k, v in m.items()},
                               "wrist_path_ratio": ratio} | git_provenance())
    return 0 if cov_ok and ratio >= 3 else 1


if __name__ == "__main__":
    sys.exit(main())
