"""Pose-stage speed on one core: estimator fps at 640x480 and 1280x720, a 5-s clip's keypoints against the 1.5-s
target, the timeline's real-time factor against 3x, and /predict's decode stage with and without pose.

    taskset -c 0 python scripts/bench_pose.py [--json docs/figures/bench_pose_cpu.json]

Frames: the real face-masked OpenPack Kinect frames of tests/data/openpack-rgb-masked (a worker behind the table),
resized to each size, cycled to 75 frames (5 s at the 15-Hz keypoint rate). Printed per size: ms per frame when
tracking (MediaPipe's video mode: the detector runs only when the track is lost) and when detecting on every frame,
fps, and the ratios to the targets (< 1 = met). Then ``uploads.decode_clip`` on a 5-s H.264 file of those frames:
camera frames (rgb) vs skeletons (pose: decode at 15 Hz + keypoints), seconds and their ratio; then the skeleton
frames the model gets: the K sampled frames drawn (what the server does) vs the whole 125-frame clip drawn and then
sampled (what it did), ms and ratio, and the bytes the decoder process hands the server for each.
"""
from __future__ import annotations

import argparse
import os
import pickle
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FRAMES = REPO / "tests" / "data" / "openpack-rgb-masked"
CLIP_TARGET_S = 1.5  # the target: a 5-s clip's keypoints (75 frames) on one core
TIMELINE_TARGET_X = 3.0  # the target: pose for the timeline at >= 3x real time per core


def frames_at(w: int, h: int, n: int = 75) -> list[np.ndarray]:
    import cv2

    from openpack_vlm.data.letterbox import Letterbox

    src = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(FRAMES.glob("*.jpg"))]
    seq = src + src[::-1]
    out = []
    for i in range(n):
        f = seq[i % len(seq)]
        # the Kinect frame letterboxed into w x h (as a 4:3 camera would frame the same scene)
        box = Letterbox.for_shape(f.shape[1], f.shape[0], max(w, h))
        sq = box.apply(f)
        y0, x0 = (sq.shape[0] - h) // 2, (sq.shape[1] - w) // 2
        out.append(np.ascontiguousarray(sq[y0:y0 + h, x0:x0 + w]))
    return out


def time_tracker(frames: list[np.ndarray], static: bool) -> float:
    from openpack_vlm.data.pose_estimate import PoseEstimateConfig, PoseTracker

    tracker = PoseTracker.shared(PoseEstimateConfig(), static=static)
    tracker(frames[0])  # warm: graph start, first detection
    tracker = PoseTracker.shared(PoseEstimateConfig(), static=static)
    t0 = time.perf_counter()
    for f in frames:
        tracker(f)
    return (time.perf_counter() - t0) / len(frames)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    report = {"cores": cores, "cpu": platform.processor() or platform.machine(), "sizes": {}}
    print(f"bench_pose: {cores} core(s) in affinity (run under `taskset -c 0` for per-core numbers)")
    for w, h in ((640, 480), (1280, 720)):
        frames = frames_at(w, h)
        track = time_tracker(frames, static=False)
        detect = time_tracker(frames, static=True)
        clip_s = track * 75
        r = {"ms_per_frame_tracking": round(track * 1000, 2), "ms_per_frame_detecting": round(detect * 1000, 2),
             "fps_tracking": round(1 / track, 1), "fps_detecting": round(1 / detect, 1),
             "clip_keypoints_s": round(clip_s, 3), "clip_vs_target": round(clip_s / CLIP_TARGET_S, 2),
             "timeline_realtime_x": round(1 / track / 15, 2),
             "timeline_vs_target": round(TIMELINE_TARGET_X / (1 / track / 15), 2)}
        report["sizes"][f"{w}x{h}"] = r
        print(f"  {w}x{h}: tracking {r['ms_per_frame_tracking']} ms/frame ({r['fps_tracking']} fps), detecting "
              f"{r['ms_per_frame_detecting']} ms ({r['fps_detecting']} fps); 5-s clip {clip_s:.2f} s = "
              f"{r['clip_vs_target']}x the {CLIP_TARGET_S} s target; timeline {r['timeline_realtime_x']}x real time "
              f"(target {TIMELINE_TARGET_X}x: ratio {r['timeline_vs_target']})")
    sys.path.insert(0, str(REPO / "tests"))
    from media import write_video

    from openpack_vlm.data.sampling import SamplingConfig, sample_from_motion
    from openpack_vlm.serving.settings import ServeConfig
    from openpack_vlm.serving.uploads import decode_clip

    with tempfile.TemporaryDirectory() as tmp:
        cfg = ServeConfig()
        for w, h in ((640, 480), (1280, 720)):
            video = write_video(Path(tmp) / f"v{w}.mp4", frames_at(w, h, 150), fps=30)
            decode_clip(video, cfg, "pose")  # warm the process-wide tracker
            t = {}
            for kind in ("rgb", "pose", "rgb", "pose"):
                t0 = time.perf_counter()
                got = decode_clip(video, cfg, kind)
                t.setdefault(kind, []).append(time.perf_counter() - t0)
            rgb, pose = min(t["rgb"]), min(t["pose"])
            report["sizes"][f"{w}x{h}"]["decode_clip_s"] = {"rgb": round(rgb, 3), "pose": round(pose, 3),
                                                             "pose_over_rgb": round(pose / rgb, 2),
                                                             "pose_detail": got.pose}
            print(f"  decode_clip, 5-s H.264 {w}x{h} at 30 fps: camera frames {rgb:.2f} s, skeletons {pose:.2f} s "
                  f"(x{pose / rgb:.1f}; of it keypoints {got.pose['pose_s']:.2f} s)")
            sampled, whole = [], []
            for _ in range(3):
                t0 = time.perf_counter()
                frames, idx = got.clip.sampled(SamplingConfig())
                sampled.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                drawn = np.asarray(got.clip)
                old = drawn[sample_from_motion(got.motion, SamplingConfig())]
                whole.append(time.perf_counter() - t0)
            assert np.array_equal(frames, old)  # the same pixels either way
            new_s, old_s = min(sampled), min(whole)
            sent_new, sent_old = len(pickle.dumps(got.clip)), drawn.nbytes
            report["sizes"][f"{w}x{h}"]["skeleton_frames"] = {
                "drawn_where_sampled_ms": round(new_s * 1000, 1), "drawn_whole_ms": round(old_s * 1000, 1),
                "speedup": round(old_s / new_s, 1), "sent_bytes": sent_new, "sent_bytes_drawn_whole": sent_old}
            print(f"  skeleton frames for the model: {len(idx)} sampled frames drawn {new_s * 1000:.1f} ms vs the "
                  f"whole clip drawn, then sampled {old_s * 1000:.1f} ms (x{old_s / new_s:.1f}); decoder -> server "
                  f"{sent_new / 1e3:.0f} KB vs {sent_old / 1e6:.1f} MB (x{sent_old / sent_new:.0f})")
    if args.json:
        from openpack_vlm.evaluation.report import git_provenance
        from openpack_vlm.io_utils import write_json

        write_json(Path(args.json), report | git_provenance())
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
