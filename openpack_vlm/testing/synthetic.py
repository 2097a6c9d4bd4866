"""Write a synthetic OpenPack root in exactly the real file formats, for tests and CPU dry runs.

    python -m openpack_vlm.testing.synthetic --out /tmp/openpack_synth [--users U0101 U0102] [--sessions S0100] [--seed 0]
                                     [--seconds 90] [--rgb-size 1280x720] [--no-rgb]

Per user/session it writes (see ``openpack_vlm.data.openpack`` for the layouts, which read it back):

* ``{user}/annotation/openpack-operations/{session}.csv`` — interval file (uuid, user, session, box, id, operation,
  ISO start/end in JST, actions); Null gaps have no row, as in the real files;
* ``{user}/annotation/openpack-operations-1hz/{session}.csv`` — second ``t`` is labelled with the segment that started
  last at or before ``t`` (floor of its start), which is how the real U0209/S0500 1 Hz file relates to its interval
  file; Null gaps are written as 8100 rows (the real U0209/S0500 file carries the previous operation over its short
  gaps instead);
* ``{user}/kinect/2d-kpt/mmpose-hrnet-w48-posetrack18-384x288-posewarper-stage2/single/{session}.json`` — 15 Hz
  mmpose output, ``keypoints`` as 17 ``[x, y, score]`` triples in 1280x720 px (the shape openpack-toolkit reads);
* ``{user}/kinect/color-masked/frames/{session}/YYYY/MM/DD/HH/MM/YYYYMMDD_HHMMSS_mmm.jpg`` — 15 Hz JPEGs named by
  JST time, ``rgb_size`` px (real: 1280x720);
* ``kinect-2d-kpt-with-operation-action-labels/{user}-{session}.csv`` — the preprocessed Zenodo CSV
  (timestamp, operation, action, J00_D0..J16_D2), one row per keypoint frame.

Kinect streams run from 1 s before the first annotation to 1 s after the last, as a camera started before the work.

Timelines: boxes follow the procedural order of the real U0209/S0500 session (``BOX_CYCLE`` plus the repeats and the
optional Put on Back Table seen there, ``REPEATS``/``P_BACK_TABLE``); each operation's duration is drawn from a
log-normal with the real per-class mean/std (``REAL_DURATIONS_S``) times ``duration_scale`` so a 90 s session holds
~3 boxes. Visual cues: every RGB frame shows a large workstation panel in the operation's colour (``OP_COLORS``)
behind a masked worker — a cue real frames do not have, so the demo trains on the skeleton path instead; the
skeleton stands at an operation-specific place around the table (``OP_POSITIONS``) with an operation-specific arm pose
and hand motion (``OP_ARM_POSES``, ``OP_MOTION``), walks there in ``WALK_S`` at a change, and carries jitter.
The pose is CALIBRATED to the real OpenPack keypoints vendored in tests/data/openpack-keypoints (``pose_stats``,
``CALIBRATION``): body size (``BODY_SCALE``), place in the 1280x720 frame, frame-to-frame jitter, hand speed and
the per-joint score distribution (``REAL_SCORE_MEAN``/``REAL_SCORE_STD``, low-score joints included), at 15 Hz;
tests/test_synthetic.py fails when they drift apart. Everything is deterministic for (seed, user, session).

Writing 8 users x 90 s (11k frames) takes ~20 s at 1280x720 on one core (JPEG encoding dominates; 376 MB) and
~5 s at 320x180 (98 MB), the size the test fixture uses (tests/conftest.py); ``rgb_size`` changes no other stream.
"""
from __future__ import annotations

import json
import re
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from ..cli import build_parser, parse, setting
from ..data.openpack import (
    KINECT_FPS,
    KINECT_SIZE,
    KPT_COLUMNS,
    Segment,
    frame_name,
    keypoints_json,
    labels_at,
    ms_to_iso,
    operations_1hz_csv,
    operations_csv,
    preprocessed_csv,
    rgb_dir,
)
from ..data.timegrid import at_or_before
from ..io_utils import atomic_path, write_atomic, write_json
from ..labels import ID_TO_NAME, NULL_ID
from .worker import (
    BACKGROUND,
    BENCH_BOX,
    BENCH_COLOR,
    DEFAULT_USERS,
    LIMBS,
    OP_ACTION,
    OP_COLORS,
    PANEL_BOX,
    WORKER_COLOR,
    SyntheticConfig,
    kinect_timestamps,
    make_keypoints,
    make_rows,
    rows_to_timeline,
    session_rng,
)


def _atomic_write_csv(path: Path, df: pd.DataFrame, **kw) -> None:
    write_atomic(path, df.to_csv(index=False, lineterminator="\n", **kw))


def write_interval_csv(path: Path, rows, user: str, session: str, rng: np.random.Generator) -> None:
    ns = uuid.UUID(int=int(rng.integers(0, 2**63)))
    recs = []
    for i, (a, b, op, box) in enumerate(rows):
        acts = ";".join(f"act:{uuid.uuid5(ns, f'act-{i}-{j}')}" for j in range(1 + int(rng.integers(0, 3))))
        recs.append({"uuid": f"op:{uuid.uuid5(ns, f'op-{i}')}", "user": user, "session": session, "box": box,
                     "id": op, "operation": ID_TO_NAME[op], "start": ms_to_iso(a), "end": ms_to_iso(b),
                     "actions": acts})
    _atomic_write_csv(path, pd.DataFrame(recs))


def onehz_labels(rows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seconds, op ids and boxes of the 1 Hz file: second t takes the segment (Null gaps included) whose floored
    start is the latest at or before t."""
    segs = []
    for i, (a, b, op, box) in enumerate(rows):
        segs.append((a, op, box))
        nxt = rows[i + 1][0] if i + 1 < len(rows) else b
        if nxt > b:
            segs.append((b, NULL_ID, box))
    floors = np.array([a // 1000 * 1000 for a, _, _ in segs], np.int64)
    secs = np.arange(rows[0][0] // 1000 * 1000, (rows[-1][1] - 1) // 1000 * 1000 + 1000, 1000, dtype=np.int64)
    idx = at_or_before(floors, secs, clip=False)
    ops = np.array([segs[i][1] for i in idx], np.int64)
    boxes = np.array([segs[i][2] for i in idx], np.int64)
    return secs, ops, boxes


def write_1hz_csv(path: Path, rows, user: str, session: str) -> None:
    secs, ops, boxes = onehz_labels(rows)
    _atomic_write_csv(path, pd.DataFrame({"unixtime": secs, "user": user, "session": session, "box": boxes,
                                          "id": ops}))


def write_keypoint_json(path: Path, ts: np.ndarray, kpts: np.ndarray) -> None:
    # Top-level keys as in the OpenPack docs' table for kinect-2d-kpt (info, licences, annotations, category).
    anns = []
    for i, (t, k) in enumerate(zip(ts.tolist(), np.round(kpts.astype(np.float64), 3).tolist())):
        xs, ys = [p[0] for p in k], [p[1] for p in k]
        x0, y0 = min(xs), min(ys)
        w, h = max(xs) - x0, max(ys) - y0
        anns.append({"id": i, "image_id": int(t), "category_id": 1, "area": round(w * h, 2),
                     "bbox": [round(x0, 2), round(y0, 2), round(w, 2), round(h, 2)], "iscrowd": 0,
                     "keypoints": k, "num_keypoints": 17, "bbox_score": round(float(np.mean([p[2] for p in k])), 4),
                     "track_id": 0})
    data = {
        "info": {"description": "openpack-vlm synthetic mmpose-hrnet-w48-posetrack18-384x288-posewarper-stage2",
                 "frame_rate": KINECT_FPS},
        "licences": [],
        "annotations": anns,
        "category": [{"id": 1, "name": "person", "skeleton": [list(l) for l in LIMBS]}],
    }
    write_atomic(path, json.dumps(data, separators=(",", ":")))


def write_preprocessed_csv(path: Path, ts: np.ndarray, kpts: np.ndarray, timeline: list[Segment]) -> None:
    ops = labels_at(timeline, ts)
    df = pd.DataFrame(kpts.reshape(len(ts), -1).astype(np.float64).round(3), columns=list(KPT_COLUMNS))
    df.insert(0, "action", [OP_ACTION[int(o)] for o in ops])
    df.insert(0, "operation", ops)
    df.insert(0, "timestamp", ts)
    _atomic_write_csv(path, df)


def _base_frames(size: tuple[int, int]) -> dict[int, np.ndarray]:
    w, h = size
    out = {}
    for op, rgb in OP_COLORS.items():
        img = np.empty((h, w, 3), np.uint8)
        img[:] = BACKGROUND[::-1]  # OpenCV images are BGR
        x0, y0, x1, y1 = PANEL_BOX
        img[int(y0 * h):int(y1 * h), int(x0 * w):int(x1 * w)] = rgb[::-1]
        x0, y0, x1, y1 = BENCH_BOX
        img[int(y0 * h):int(y1 * h), int(x0 * w):int(x1 * w)] = BENCH_COLOR[::-1]
        out[op] = img
    return out


def render_frame(base: np.ndarray, kpts: np.ndarray) -> np.ndarray:
    """One masked color frame (BGR): the operation's base image plus the worker drawn from the keypoints."""
    h, w = base.shape[:2]
    s = np.array([w / KINECT_SIZE[0], h / KINECT_SIZE[1]])
    p = np.round(kpts[:, :2] * s).astype(np.int32)
    img = base.copy()
    thick = max(2, int(round(14 * s[0])))
    for a, b in LIMBS:
        cv2.line(img, tuple(map(int, p[a])), tuple(map(int, p[b])), WORKER_COLOR, thick, cv2.LINE_8)
    cv2.circle(img, tuple(map(int, p[0])), max(3, int(round(30 * s[0]))), WORKER_COLOR, -1, cv2.LINE_8)
    return img


def write_rgb_frames(out_dir: Path, ts: np.ndarray, kpts: np.ndarray, timeline: list[Segment],
                     cfg: SyntheticConfig) -> int:
    """All frames of a session into a temp folder next to ``out_dir``, then renamed into place."""
    with atomic_path(out_dir, directory=True) as tmp:
        bases = _base_frames(tuple(cfg.rgb_size))
        ops = labels_at(timeline, ts)
        made: set[Path] = set()
        params = [cv2.IMWRITE_JPEG_QUALITY, int(cfg.jpeg_quality)]
        for t, op, k in zip(ts.tolist(), ops.tolist(), kpts):
            rel = tmp / frame_name(t)
            if rel.parent not in made:
                rel.parent.mkdir(parents=True, exist_ok=True)
                made.add(rel.parent)
            ok, buf = cv2.imencode(".jpg", render_frame(bases[op], k), params)
            if not ok:
                raise RuntimeError(f"JPEG encoding failed for {rel}")
            rel.write_bytes(buf.tobytes())
    return len(ts)


def write_session(root: Path, cfg: SyntheticConfig, user: str, session: str) -> dict:
    """Write every enabled stream of one session; returns a small summary."""
    rows = make_rows(cfg, user, session)
    timeline = rows_to_timeline(rows)
    ts = kinect_timestamps(rows, cfg)
    kpts = make_keypoints(cfg, user, session, timeline, ts)
    if cfg.write_interval:
        write_interval_csv(operations_csv(root, user, session), rows, user, session, session_rng(cfg, user, session, "ids"))
    if cfg.write_1hz:
        write_1hz_csv(operations_1hz_csv(root, user, session), rows, user, session)
    if cfg.write_kpt_json:
        write_keypoint_json(keypoints_json(root, user, session), ts, kpts)
    if cfg.write_preprocessed:
        write_preprocessed_csv(preprocessed_csv(root, user, session), ts, kpts, timeline)
    n_rgb = write_rgb_frames(rgb_dir(root, user, session), ts, kpts, timeline, cfg) if cfg.rgb else 0
    return {"user": user, "session": session, "operations": len(rows), "segments": len(timeline),
            "kinect_frames": int(len(ts)), "rgb_frames": n_rgb}


def _check_config(cfg: SyntheticConfig) -> None:
    for u in cfg.users:
        if not re.fullmatch(r"U\d{4}", u):
            raise ValueError(f"bad user id {u!r}: expected U followed by 4 digits, e.g. U0101")
    for s in cfg.sessions:
        if not re.fullmatch(r"S\d{4}", s):
            raise ValueError(f"bad session id {s!r}: expected S followed by 4 digits, e.g. S0100")
    if not cfg.users or not cfg.sessions:
        raise ValueError("need at least one user and one session")
    if cfg.session_seconds < 10:
        raise ValueError(f"session_seconds={cfg.session_seconds} is too short: need >= 10 s for 5 s clips")
    w, h = cfg.rgb_size
    if w < 16 or h < 16:
        raise ValueError(f"rgb_size {w}x{h} is too small (>= 16x16)")
    if cfg.min_op_seconds <= 1.0 or cfg.null_gap_seconds[0] <= 1.0:
        raise ValueError("min_op_seconds and null gaps must exceed 1 s (every segment must show in the 1 Hz file)")


def write_synthetic_root(root: str | Path, cfg: SyntheticConfig | None = None) -> Path:
    """Write a synthetic OpenPack root (all layouts enabled in ``cfg``) under ``root``; returns the root."""
    cfg = cfg or SyntheticConfig()
    _check_config(cfg)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    summary = []
    pairs = [(u, s) for u in cfg.users for s in cfg.sessions]
    for u, s in tqdm(pairs, desc="synthetic sessions", unit="session", disable=len(pairs) < 2, leave=False):
        summary.append(write_session(root, cfg, u, s))
    meta = {"config": asdict(cfg), "sessions": summary,
            "note": "synthetic OpenPack root written by openpack_vlm.testing.synthetic; not real data"}
    write_atomic(root / "synthetic_config.json", json.dumps(meta, indent=1))
    return root


# ------------------------------------------------------------------------------------------- a camera video
def write_session_video(path: str | Path, seconds: float, seed: int = 0, user: str = "U0108", session: str = "S0100",
                        size: tuple[int, int] = (640, 360), fps: int = KINECT_FPS, progress: bool = False) -> dict:
    """A synthetic session as ONE camera video with a known timeline (long-video / timeline tests and benchmarks).

    The frames are the synthetic colour frames (``render_frame``: the operation's panel colour behind the masked
    worker) at the Kinect's 15 fps, H.264, from the first annotated operation on; ``seconds`` of annotated work.
    Written atomically (a temp file renamed into place), one frame at a time (memory does not grow with length).
    Returns the truth: ``{"video", "seconds", "fps", "size", "segments": [{"start_s", "end_s", "operation"}]}`` with
    times from the video's first frame; Null gaps are segments of "Null".
    """
    import av

    path = Path(path)
    cfg = SyntheticConfig(users=(user,), sessions=(session,), seed=seed, session_seconds=float(seconds),
                          lead_seconds=0.0, rgb_size=tuple(size))
    rows = make_rows(cfg, user, session)
    timeline = rows_to_timeline(rows)
    t0 = rows[0][0]
    n = int(round((rows[-1][1] - t0) * fps / 1000))
    ts = t0 + np.round(np.arange(n) * 1000 / fps).astype(np.int64)
    kpts = make_keypoints(cfg, user, session, timeline, ts)
    ops = labels_at(timeline, ts)
    bases = _base_frames(tuple(size))
    w, h = size
    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format="mp4") as out:
            stream = out.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.options = {"preset": "ultrafast", "crf": "23"}
            for k, op in tqdm(zip(kpts, ops.tolist()), total=n, disable=not progress, unit="frame",
                              desc=f"video {path.name}"):
                rgb = cv2.cvtColor(render_frame(bases[op], k), cv2.COLOR_BGR2RGB)
                for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
    segs = [{"start_s": round((s.start_ms - t0) / 1000, 3), "end_s": round((s.end_ms - t0) / 1000, 3),
             "operation": ID_TO_NAME[s.op_id]} for s in timeline]
    return {"video": path.name, "seconds": n / fps, "fps": fps, "size": list(size), "user": user, "session": session,
            "seed": seed, "segments": segs}


# ---------------------------------------------------------------------------------------------------------- CLI
@dataclass
class SyntheticRunConfig:
    """``python -m openpack_vlm.testing.synthetic``'s settings (the flags are generated from these fields)."""

    out: str | None = setting(None, "root folder to write")
    video: str | None = setting(None, "instead of a root: one session as a camera video with a known timeline "
                                      "(--seconds long; its truth beside it as FILE.truth.json)")
    users: list[str] = setting(help="users to write", default_factory=lambda: list(DEFAULT_USERS))
    sessions: list[str] = setting(help="sessions per user", default_factory=lambda: ["S0100"])
    seed: int = setting(0, "random seed (everything is deterministic for seed, user, session)")
    seconds: float = setting(SyntheticConfig.session_seconds, "annotated s per session")
    rgb_size: str = setting("x".join(map(str, KINECT_SIZE)), "JPEG WIDTHxHEIGHT (real: 1280x720)")
    rgb: bool = setting(True, "write the color-masked JPEG frames (--no_rgb: keypoints and annotations only, as "
                              "published)")

    def __post_init__(self):
        if bool(self.out) == bool(self.video):
            raise ValueError("give exactly one of --out ROOT or --video FILE.mp4")
        try:
            w, h = (int(v) for v in str(self.rgb_size).lower().split("x"))
        except ValueError:
            raise ValueError(f"--rgb_size: expected WIDTHxHEIGHT, e.g. 1280x720, got {self.rgb_size!r}") from None
        self.size = (w, h)


def main(argv=None) -> int:
    parser = build_parser(SyntheticRunConfig, prog="python -m openpack_vlm.testing.synthetic",
                          description=__doc__.split("\n\n")[0])
    try:
        args, _ = parse(parser, argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.video:
        t = time.time()
        try:
            truth = write_session_video(args.video, args.seconds, seed=args.seed, progress=True)
        except (ValueError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        truth_path = write_json(Path(args.video).with_suffix(".truth.json"), truth)
        print(f"wrote {args.video} ({truth['seconds']:.1f} s, {len(truth['segments'])} segments; truth {truth_path}) "
              f"in {time.time() - t:.1f} s")
        return 0
    cfg = SyntheticConfig(users=tuple(args.users), sessions=tuple(args.sessions), seed=args.seed,
                          session_seconds=args.seconds, rgb=args.rgb, rgb_size=args.size)
    t = time.time()
    try:
        root = write_synthetic_root(args.out, cfg)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    meta = json.loads((root / "synthetic_config.json").read_text())
    n = sum(s["rgb_frames"] for s in meta["sessions"])
    print(f"wrote synthetic OpenPack root {root} ({len(cfg.users)} users x {len(cfg.sessions)} sessions, "
          f"{n} RGB frames) in {time.time() - t:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
