"""Compare frame-sampling strategies on validation clips: how close do the K frames come to the true boundaries?

    python scripts/compare_sampling.py --root R --out docs/sampling_comparison.json [--plot P.png]
                                       [--users U0107] [--source auto] [--k 8] [--seed 0]

Clips are the data pipeline's (clips.make_clips with the pipeline's defaults) for --users (default: the val user),
frames from frames.open_source(--source). Strategies, all with K frames:
  uniform     evenly spaced incl. first and last frame (sampling.sample_uniform) - the baseline
  motion      the training sampler: frame-difference motion, inverse CDF + one-second floor, first and last frame
              always included (sampling.sample_clip)
  motion_free the same without the first/last-frame anchors (SamplingConfig(anchor_ends=False))
  motion_kpt  the same sampler driven by keypoint speed (pose keypoints at the clip's 25-fps ticks), if available
  random      K distinct frames drawn at random (seeded) - a sanity floor
Metrics per strategy (frames at 25 fps; boundary = between the last frame of one label and the first of the next):
  boundary_dist   distance from each true boundary to the nearest sampled frame (0.5 = a sampled frame touches it)
  best_tiou       best tIoU with the true dominant segment when start and end must be sampled frames
  mid_tiou        tIoU of the segment an ideal reader of the sampled frames' labels would give: the dominant
                  label's sampled run, its ends moved halfway to the neighbouring sampled frames (clip ends kept)
Writes the numbers (JSON at --out) and a plot (PNG at --plot, default: --out with .png).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from openpack_vlm.data import openpack
from openpack_vlm.data.clips import ClipConfig, make_clips
from openpack_vlm.data.errors import FrameError
from openpack_vlm.data.sources import PoseFrameSource, open_source
from openpack_vlm.labels import NAME_TO_ID
from openpack_vlm.data.pipeline import DEFAULT_SPLITS, parse_splits
from openpack_vlm.io_utils import save_figure, write_atomic
from openpack_vlm.data.sampling import (
    SamplingConfig,
    motion_from_keypoints,
    sample_clip,
    sample_from_motion,
    sample_uniform,
)
from openpack_vlm.schema import CLIP_FRAMES, FPS


def boundary_distances(idx: list[int], boundaries: list[int]) -> list[float]:
    """For boundary b (label changes between frame b-1 and b): min over sampled i of |i - (b - 0.5)|."""
    arr = np.asarray(idx, dtype=np.float64)
    return [float(np.min(np.abs(arr - (b - 0.5)))) for b in boundaries]


def tiou(a: tuple[float, float], b: tuple[float, float]) -> float:
    """tIoU of two inclusive frame spans."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]) + 1)
    union = (a[1] - a[0] + 1) + (b[1] - b[0] + 1) - inter
    return inter / union if union > 0 else 0.0


def best_tiou(idx: list[int], seg: tuple[int, int]) -> float:
    return max(tiou((s, e), seg) for i, s in enumerate(idx) for e in idx[i:])


def mid_tiou(idx: list[int], labels: list[int], dominant: int, seg: tuple[int, int], n: int = CLIP_FRAMES) -> float:
    """tIoU of the dominant label's longest sampled run, extended halfway to the neighbouring samples."""
    lab = [labels[i] for i in idx]
    best, run = None, None
    for j, v in enumerate(lab):
        if v == dominant:
            run = (run[0], j) if run is not None else (j, j)
            if best is None or run[1] - run[0] > best[1] - best[0]:
                best = run
        else:
            run = None
    if best is None:
        return 0.0
    j0, j1 = best
    start = 0.0 if j0 == 0 else (idx[j0 - 1] + idx[j0]) / 2
    end = n - 1.0 if j1 == len(idx) - 1 else (idx[j1] + idx[j1 + 1]) / 2
    return tiou((start, end), seg)


def summarise(d: dict) -> dict:
    bd = np.asarray(d["boundary_dist"], dtype=np.float64)
    bt = np.asarray(d["best_tiou"], dtype=np.float64)
    mt = np.asarray(d["mid_tiou"], dtype=np.float64)

    def ci(x):  # mean with a normal-approximation 95 % interval
        return [float(x.mean()), float(1.96 * x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else None]

    return {
        "clips": int(len(bt)),
        "boundaries": int(len(bd)),
        "boundary_dist_frames_mean_ci95": ci(bd) if len(bd) else None,
        "boundary_dist_frames_median": float(np.median(bd)) if len(bd) else None,
        "boundary_dist_frames_p90": float(np.percentile(bd, 90)) if len(bd) else None,
        "boundary_within_2_frames": float(np.mean(bd <= 2.0)) if len(bd) else None,
        "best_tiou_mean_ci95": ci(bt),
        "best_tiou_ge_0.5": float(np.mean(bt >= 0.5)),
        "mid_tiou_mean_ci95": ci(mt),
        "mid_tiou_ge_0.5": float(np.mean(mt >= 0.5)),
    }


def plot(per: dict[str, dict], summary: dict[str, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, d in per.items():
        bd = np.sort(np.asarray(d["boundary_dist"]))
        if len(bd):
            a1.step(bd, np.arange(1, len(bd) + 1) / len(bd), where="post", label=name)
    a1.set_xlabel("boundary -> nearest sampled frame (frames at 25 fps)")
    a1.set_ylabel("share of boundaries")
    a1.set_xlim(0, 20)
    a1.grid(alpha=0.3)
    a1.legend()
    names = list(per)
    x = np.arange(len(names))
    for off, key, lab in ((-0.2, "best_tiou_mean_ci95", "best tIoU (ends on samples)"),
                          (0.2, "mid_tiou_mean_ci95", "tIoU of ideal reader")):
        m = [summary[n][key][0] for n in names]
        e = [summary[n][key][1] or 0 for n in names]
        a2.bar(x + off, m, 0.4, yerr=e, capsize=3, label=lab)
    a2.set_xticks(x, names)
    a2.set_ylim(0, 1)
    a2.set_ylabel("mean tIoU with the true segment")
    a2.legend(loc="lower right")
    a2.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=None, help="OpenPack root (default: $OPENPACK_ROOT)")
    ap.add_argument("--out", required=True, help="JSON output path")
    ap.add_argument("--plot", default=None, help="PNG output path (default: --out with .png)")
    ap.add_argument("--users", nargs="+", default=parse_splits(DEFAULT_SPLITS)["val"])
    ap.add_argument("--source", default="auto", choices=["auto", "rgb", "pose"])
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    png = Path(args.plot) if args.plot else out.with_suffix(".png")
    cfg = SamplingConfig(k=args.k)
    cfg_free = SamplingConfig(k=args.k, anchor_ends=False)
    rng = np.random.default_rng(args.seed)
    per: dict[str, dict] = {}
    sources = set()
    try:
        root = openpack.resolve_root(args.root)
        for user in args.users:
            for session in openpack.list_sessions(root, user):
                timeline = openpack.load_timeline(root, user, session)
                specs = make_clips(timeline, user, session, ClipConfig(seed=args.seed))
                src = open_source(root, user, session, args.source)
                sources.add(src.name)
                kpt_src = None
                streams = openpack.available_streams(root, user, session)
                if streams["kpt_json"] is not None or streams["kpt_csv"] is not None:
                    kpt_src = src if isinstance(src, PoseFrameSource) else PoseFrameSource(
                        *openpack.load_keypoints(root, user, session))
                for spec in tqdm(specs, desc=f"{user}/{session}", unit="clip", leave=False):
                    try:
                        frames = src.clip(spec.t0_ms)
                    except FrameError as e:
                        print(f"warning: skipped {spec.clip_id}: {e}", file=sys.stderr)
                        continue
                    strategies = {
                        "uniform": sample_uniform(CLIP_FRAMES, args.k),
                        "motion": sample_clip(frames, cfg),
                        "motion_free": sample_clip(frames, cfg_free),
                        "random": sorted(rng.choice(CLIP_FRAMES, size=args.k, replace=False).tolist()),
                    }
                    if kpt_src is not None:
                        k = kpt_src.kpts[kpt_src.source_indices(spec.t0_ms)]
                        strategies["motion_kpt"] = sample_from_motion(motion_from_keypoints(k), cfg)
                    seg = (spec.truth.temporal_segment.start_frame, spec.truth.temporal_segment.end_frame)
                    dom = NAME_TO_ID[spec.truth.dominant_operation]
                    for name, idx in strategies.items():
                        d = per.setdefault(name, {"boundary_dist": [], "best_tiou": [], "mid_tiou": []})
                        d["boundary_dist"].extend(boundary_distances(idx, spec.boundaries))
                        d["best_tiou"].append(best_tiou(idx, seg))
                        d["mid_tiou"].append(mid_tiou(idx, spec.labels, dom, seg))
    except (openpack.OpenPackError, FrameError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not per:
        print(f"error: no clips for users {args.users} under {root}", file=sys.stderr)
        return 2
    order = [n for n in ("uniform", "motion", "motion_free", "motion_kpt", "random") if n in per]
    per = {n: per[n] for n in order}
    summary = {n: summarise(d) for n, d in per.items()}
    u, m = summary["uniform"], summary["motion"]
    verdict = (
        f"motion vs uniform: boundary->nearest frame {m['boundary_dist_frames_mean_ci95'][0]:.2f} vs "
        f"{u['boundary_dist_frames_mean_ci95'][0]:.2f} frames (mean), best reachable tIoU "
        f"{m['best_tiou_mean_ci95'][0]:.3f} vs {u['best_tiou_mean_ci95'][0]:.3f}, ideal-reader tIoU "
        f"{m['mid_tiou_mean_ci95'][0]:.3f} vs {u['mid_tiou_mean_ci95'][0]:.3f}"
    )
    result = {"root": str(root), "users": args.users, "sources": sorted(sources), "k": args.k,
              "synthetic_root": (root / "synthetic_config.json").is_file(), "fps": FPS,
              "strategies": summary, "verdict": verdict}
    write_atomic(out, json.dumps(result, indent=1) + "\n")
    title = (f"K={args.k} of 125 frames, users {' '.join(args.users)}, source {'/'.join(sorted(sources))}"
             + (" (SYNTHETIC data)" if result["synthetic_root"] else ""))
    plot(per, summary, png, title)
    print(f"{'strategy':11} {'clips':>5} {'bnd':>4} {'dist mean':>9} {'<=2 fr':>7} {'best tIoU':>9} {'>=.5':>6}"
          f" {'mid tIoU':>8} {'>=.5':>6}")
    for n, s in summary.items():
        print(f"{n:11} {s['clips']:5d} {s['boundaries']:4d} {s['boundary_dist_frames_mean_ci95'][0]:9.2f} "
              f"{s['boundary_within_2_frames']:7.0%} {s['best_tiou_mean_ci95'][0]:9.3f} {s['best_tiou_ge_0.5']:6.0%}"
              f" {s['mid_tiou_mean_ci95'][0]:8.3f} {s['mid_tiou_ge_0.5']:6.0%}")
    print(verdict)
    print(f"wrote {out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
