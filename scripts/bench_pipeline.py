"""Throughput of the data pipeline's per-clip path for each frame source, on one core.

    python scripts/bench_pipeline.py [--root R --user U0107 --session S0100] [--clips 24] [--out bench.json]

Without --root it writes a synthetic session at the real Kinect size (1280x720 JPEGs at 15 Hz, 45 s) into a temp
dir and encodes those frames into the session video ({user}/video/{session}.mp4, H.264, 15 fps, with the start-time
sidecar), so all three sources show the same scene. For each source (rgb JPEG frames, video file, pose) it runs the
pipeline's per-clip work (frames.open_source/VideoFrameSource .clip -> sampling.sample_clip -> JPEG encode) on the
same clips and reports clips/s, real-time factor per core (clip seconds per wall second), the share of time spent
in sampling, and for rgb/video the decode-only throughput of the very same source frames (decoded as the path
decodes them, no resize/sampling/encoding; for rgb also at full size) with the ratio path/decode of this run.
Targets: rgb/video path >= 50 % of decode-only, pose >= 100x real time per core, sampling <= 10 % of the path.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from openpack_vlm.contract import SamplingConfig
from openpack_vlm.data import openpack
from openpack_vlm.data.clips import ClipConfig, make_clips
from openpack_vlm.data.sampling import sample_clip, sample_from_motion
from openpack_vlm.data.shards import encode_jpeg
from openpack_vlm.data.sources import VideoFrameSource, open_source
from openpack_vlm.data.timegrid import resample_indices, tick_times
from openpack_vlm.io_utils import write_atomic
from openpack_vlm.schema import CLIP_SECONDS


def write_bench_root(root: Path, user: str, session: str, seconds: float) -> None:
    """A synthetic session at the real frame size plus an H.264 video of its RGB frames."""
    import av

    from openpack_vlm.testing.synthetic import SyntheticConfig, write_synthetic_root

    write_synthetic_root(root, SyntheticConfig(users=(user,), sessions=(session,), session_seconds=seconds))
    ts, paths = openpack.rgb_frames(root, user, session)
    vpath = openpack.video_path(root, user, session)
    vpath.parent.mkdir(parents=True, exist_ok=True)
    h, w = cv2.imread(str(paths[0])).shape[:2]
    with av.open(str(vpath), "w") as c:
        st = c.add_stream("libx264", rate=openpack.KINECT_FPS)
        st.width, st.height, st.pix_fmt = w, h, "yuv420p"
        st.options = {"preset": "veryfast", "crf": "23"}
        for p in tqdm(paths, desc="encoding bench video", unit="frame", leave=False):
            img = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
            for pkt in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)
    write_atomic(vpath.with_suffix(".json"), json.dumps({"start_unixtime_ms": int(ts[0])}))


def run_path(src, specs, only_sampled: bool = False) -> dict:
    """The pipeline's per-clip work; seconds per stage. ``only_sampled`` (skeleton clips, what the pipeline does:
    ``SkeletonClip.sampled`` step by step): motion from the keypoints, the sampler, then only the K kept frames
    rendered; else the whole clip, the sampler on it, its K frames."""
    t = {"frames": 0.0, "sampling": 0.0, "encode": 0.0}
    for s in specs:
        a = time.perf_counter()
        if only_sampled:
            clip = src.skeleton_clip(s.t0_ms)  # the keypoints' motion, nothing drawn yet
            idx = sample_from_motion(clip.motion, SamplingConfig())
            t["sampling"] += time.perf_counter() - a
            a = time.perf_counter()
            frames = clip.frames(idx)
            t["frames"] += time.perf_counter() - a
        else:
            clip = src.clip(s.t0_ms)
            t["frames"] += time.perf_counter() - a
            a = time.perf_counter()
            idx = sample_clip(clip)
            frames = clip[idx]
            t["sampling"] += time.perf_counter() - a
        a = time.perf_counter()
        [encode_jpeg(Image.fromarray(f)) for f in frames]
        t["encode"] += time.perf_counter() - a
    t["total"] = t["frames"] + t["sampling"] + t["encode"]
    return t


def used_indices(ts_ms: np.ndarray, specs) -> np.ndarray:
    return np.unique(np.concatenate([resample_indices(ts_ms, tick_times(s.t0_ms), None) for s in specs]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=None, help="OpenPack root with RGB frames, keypoints (and a video) for --user")
    ap.add_argument("--user", default="U0107")
    ap.add_argument("--session", default="S0100")
    ap.add_argument("--seconds", type=float, default=45.0, help="synthetic session length (without --root)")
    ap.add_argument("--clips", type=int, default=24, help="clips per source")
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    tmp = None
    try:
        if args.root is None:
            tmp = tempfile.TemporaryDirectory(prefix="bench_root_")
            root = Path(tmp.name)
            print(f"writing a synthetic 1280x720 session ({args.seconds:g} s) + video to {root} ...")
            write_bench_root(root, args.user, args.session, args.seconds)
        else:
            root = openpack.resolve_root(args.root)
        timeline = openpack.load_timeline(root, args.user, args.session)
        specs = make_clips(timeline, args.user, args.session, ClipConfig(seed=0))[: args.clips]
        if not specs:
            raise openpack.OpenPackError(f"{args.user}/{args.session}: no clips fit the timeline")
        streams = openpack.available_streams(root, args.user, args.session)
        n = len(specs)
        clip_s = n * CLIP_SECONDS
        results: dict = {"clips": n, "clip_seconds": clip_s, "cpu": "1 core (cv2/decord single-threaded)"}

        if streams["rgb"] is not None:
            src = open_source(root, args.user, args.session, "rgb")
            path = run_path(src, specs)
            used = used_indices(src.ts_ms, specs)
            a = time.perf_counter()
            for i in used:
                img = cv2.imread(str(src.paths[i]), cv2.IMREAD_COLOR)
            dec_full = time.perf_counter() - a
            flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}[src._reduce]
            a = time.perf_counter()
            for i in used:
                cv2.imread(str(src.paths[i]), flag)
            dec_same = time.perf_counter() - a
            # the target compares against decoding at the scale the path decodes at (libjpeg 1/reduce): the
            # harder baseline; the plain full-size decode is reported as well
            results["rgb"] = {**path, "source_frames": len(used), "frame_size": f"{img.shape[1]}x{img.shape[0]}",
                              "jpeg_reduce": src._reduce, "decode_only_s": dec_same,
                              "decode_only_full_size_s": dec_full}
        if streams["video"] is not None:
            src = VideoFrameSource(streams["video"], openpack.video_start_ms(root, args.user, args.session))
            path = run_path(src, specs)
            used = used_indices(src.ts_ms, specs)
            import decord

            vr = decord.VideoReader(str(streams["video"]), ctx=decord.cpu(0), num_threads=1)
            a = time.perf_counter()
            for s in specs:  # decode the same frames clip by clip, as the path does, without resize/sampling/encode
                idx = np.unique(resample_indices(src.ts_ms, tick_times(s.t0_ms), None))
                vr.get_batch([int(i) for i in idx]).asnumpy()
            results["video"] = {**path, "source_frames": len(used), "decode_only_s": time.perf_counter() - a}
        if streams["kpt_json"] is not None or streams["kpt_csv"] is not None:
            src = open_source(root, args.user, args.session, "pose")
            frames = len(used_indices(src.ts_ms, specs))
            results["pose"] = {**run_path(src, specs, only_sampled=True), "source_frames": frames}
            # before: the whole 125-frame clip rendered, then sampled (what run_path does for the camera sources)
            results["pose_whole_clip"] = {**run_path(src, specs), "source_frames": frames}
    except (openpack.OpenPackError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if tmp is not None:
            tmp.cleanup()

    print(f"\n{n} clips of 5 s per source, one core")
    print(f"{'source':15} {'clips/s':>8} {'x real time':>12} {'sampling':>9} {'frames s':>9} {'encode s':>9}"
          f" {'path fr/s':>10} {'decode fr/s':>12} {'path/decode':>12}")
    for name in ("rgb", "video", "pose", "pose_whole_clip"):
        r = results.get(name)
        if r is None:
            continue
        r["clips_per_s"] = n / r["total"]
        r["realtime_factor_per_core"] = clip_s / r["total"]
        r["sampling_share"] = r["sampling"] / r["total"]
        line = (f"{name:15} {r['clips_per_s']:8.2f} {r['realtime_factor_per_core']:11.1f}x "
                f"{100 * r['sampling_share']:8.1f}% {r['frames']:9.2f} {r['encode']:9.2f}")
        if "decode_only_s" in r:
            r["path_source_fps"] = r["source_frames"] / r["total"]
            r["decode_only_source_fps"] = r["source_frames"] / r["decode_only_s"]
            r["path_over_decode"] = r["decode_only_s"] / r["total"]
            line += f" {r['path_source_fps']:10.1f} {r['decode_only_source_fps']:12.1f} {r['path_over_decode']:11.0%}"
        print(line)
    if "pose" in results:
        results["pose_speedup_vs_whole_clip"] = results["pose_whole_clip"]["total"] / results["pose"]["total"]
        print(f"pose: rendering only the sampled frames is {results['pose_speedup_vs_whole_clip']:.1f}x the whole-clip "
              "path (same frames: tests/test_frames.py)")
    checks = {}
    for name in ("rgb", "video"):
        if name in results:
            checks[f"{name}_path_ge_50pct_of_decode"] = results[name]["path_over_decode"] >= 0.5
    if "pose" in results:
        checks["pose_ge_100x_realtime"] = results["pose"]["realtime_factor_per_core"] >= 100
    checks["sampling_le_10pct"] = all(results[k]["sampling_share"] <= 0.10 for k in ("rgb", "video", "pose")
                                      if k in results)
    results["targets_met"] = checks
    if "rgb" in results:
        r = results["rgb"]
        print(f"rgb: the path decodes {r['frame_size']} JPEGs at 1/{r['jpeg_reduce']} scale inside libjpeg; "
              f"decode-only above is at that scale; a full-size decode runs at "
              f"{r['source_frames'] / r['decode_only_full_size_s']:.1f} frames/s "
              f"(path = {r['decode_only_full_size_s'] / r['total']:.0%} of it)")
    print("targets: " + ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in checks.items()))
    if args.out:
        write_atomic(Path(args.out), json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
