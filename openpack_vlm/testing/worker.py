"""The synthetic worker: what one packing session holds (box cycles in the real procedural order, per-class
durations drawn from the real ones, Null gaps) and how the worker's COCO-17 keypoints move through it (a place per
operation, arm poses and hand motion, walking, jitter and per-joint scores CALIBRATED to the real OpenPack keypoints:
``pose_stats``, ``calibration_table``). ``synthetic.py`` writes what it makes in the real file formats."""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from ..data.openpack import KINECT_FPS, KINECT_SIZE, Segment, labels_at, normalize_timeline
from ..data.timegrid import at_or_before
from ..grammar import REAL_DURATIONS_S  # the real session's per-class durations (mean, std s)
from ..labels import NULL_ID

DEFAULT_USERS = ("U0101", "U0102", "U0103", "U0104", "U0105", "U0106", "U0107", "U0108")

# ---- procedural order and durations, fitted on the real U0209/S0500 interval file (tests/data/openpack) ----------
#: One box, in the order of the real session (Fill out Order comes before Attach Shipping Label there).
BOX_CYCLE = (100, 200, 300, 400, 500, 600, 700, 1000, 800)
#: Pairs the real session repeats right after themselves, with the fraction of its 20 boxes that do so.
REPEATS: dict[tuple[int, int], float] = {(100, 200): 2 / 20, (300, 400): 1 / 20, (400, 500): 1 / 20}
#: Fraction of the real boxes that end with Put on Back Table (900).
P_BACK_TABLE = 5 / 20

# ---- visual cues (RGB colours; positions in the 1280x720 Kinect pixel space) ------------------------------------
#: Workstation panel colour per operation (RGB): saturated hues far apart, so a 56x56 px view still separates them.
OP_COLORS: dict[int, tuple[int, int, int]] = {
    100: (220, 30, 30),  # red
    200: (245, 140, 0),  # orange
    300: (235, 225, 30),  # yellow
    400: (30, 170, 50),  # green
    500: (0, 210, 220),  # cyan
    600: (30, 60, 230),  # blue
    700: (140, 40, 210),  # violet
    800: (240, 50, 190),  # magenta
    900: (130, 75, 30),  # brown
    1000: (0, 105, 105),  # dark teal
    NULL_ID: (70, 70, 70),  # panel off
}
#: Pelvis centre (x, y) px of the worker per operation: where around the packing table each operation is done
#: (the real worker stays within x ~380-760 px, pelvis y ~560 px of the 1280x720 frame; pose_stats).
OP_POSITIONS: dict[int, tuple[float, float]] = {
    100: (400.0, 555.0), 200: (520.0, 565.0), 300: (600.0, 570.0), 400: (640.0, 570.0), 500: (680.0, 570.0),
    600: (720.0, 565.0), 700: (760.0, 560.0), 800: (700.0, 560.0), 900: (860.0, 545.0), 1000: (480.0, 570.0),
    NULL_ID: (620.0, 560.0),
}
#: The real worker's keypoint box is ~130 x 320 px (median over the vendored sample); the body, arm offsets and hand
#: amplitudes below are drawn at this scale of their 1.5x-sized values.
BODY_SCALE = 0.667
#: Arm pose per operation: (right elbow, right wrist, left elbow, left wrist) offsets (dx, dy) px from the shoulder
#: (elbows) or from the elbow (wrists). The worker faces the camera: their right side is the image's left.
OP_ARM_POSES: dict[int, tuple[tuple[float, float], ...]] = {
    100: ((-50, -70), (-40, -90), (40, -60), (30, -80)),  # reaching up to the shelf
    200: ((-20, 70), (30, 40), (20, 70), (-30, 40)),  # hands together at the chest
    300: ((-80, 10), (-80, 0), (80, 10), (80, 0)),  # arms wide, folding
    400: ((-25, 80), (10, 75), (25, 80), (-10, 75)),  # hands down into the box
    500: ((-40, 60), (20, 60), (40, 60), (-20, 60)),  # pressing the lid, taping
    600: ((-70, 30), (-70, -20), (15, 85), (5, 80)),  # right arm out to the label
    700: ((-50, -40), (-20, -80), (15, 85), (5, 80)),  # right hand up with the scanner
    800: ((-40, 50), (40, 20), (40, 50), (-40, 20)),  # both hands across the box
    900: ((-40, -50), (-10, -70), (40, -50), (10, -70)),  # box carried high
    1000: ((-20, 80), (40, 20), (20, 85), (5, 80)),  # writing with the right hand
    NULL_ID: ((-15, 85), (-5, 80), (15, 85), (5, 80)),  # arms hanging
}
#: Hand motion per operation: (frequency Hz, amplitude px) of the wrists' oscillation (elbows move half as much).
OP_MOTION: dict[int, tuple[float, float]] = {
    100: (0.8, 25.0), 200: (1.5, 10.0), 300: (1.0, 30.0), 400: (1.2, 20.0), 500: (2.0, 15.0), 600: (0.6, 8.0),
    700: (2.5, 12.0), 800: (0.7, 10.0), 900: (0.3, 5.0), 1000: (3.0, 6.0), NULL_ID: (0.2, 3.0),
}
#: Action id written to the preprocessed CSV's ``action`` column (first action of each operation's family).
OP_ACTION: dict[int, int] = {op: (op + 1 if op != NULL_ID else NULL_ID) for op in OP_COLORS}
WALK_S = 0.6  # s the worker takes to walk to the next operation's place
PANEL_BOX = (0.03, 0.03, 0.97, 0.62)  # panel rectangle (x0, y0, x1, y1) as fractions of the frame
BENCH_BOX = (0.0, 0.70, 1.0, 0.82)  # workbench strip, same units
BENCH_COLOR = (95, 85, 75)
BACKGROUND = (40, 40, 40)
WORKER_COLOR = (235, 235, 235)  # the masked worker

# COCO-17 skeleton relative to the pelvis centre (px), facing the camera; arms come from OP_ARM_POSES.
_BODY = np.array([
    (0, -250), (10, -262), (-10, -262), (22, -255), (-22, -255),  # nose, left/right eye, left/right ear
    (55, -195), (-55, -195), (0, 0), (0, 0), (0, 0), (0, 0),  # left/right shoulder, elbows & wrists (filled later)
    (32, 0), (-32, 0), (35, 110), (-35, 110), (36, 215), (-36, 215),  # hips, knees, ankles
], np.float64)
LIMBS = ((5, 7), (7, 9), (6, 8), (8, 10), (5, 6), (5, 11), (6, 12), (11, 12), (11, 13), (13, 15), (12, 14), (14, 16))
#: Per-joint keypoint score mean and std of the REAL sample (U0102/S0100, 100 frames; COCO-17 order): ears, wrists
#: (when a hand is hidden) and the legs under the table score low, as in the real mmpose output.
REAL_SCORE_MEAN = np.array([0.89, 0.88, 0.73, 0.32, 0.35, 0.88, 0.89, 0.81, 0.84, 0.85, 0.66, 0.75, 0.77, 0.57, 0.59,
                            0.37, 0.36])
REAL_SCORE_STD = np.array([0.08, 0.06, 0.13, 0.04, 0.06, 0.03, 0.06, 0.05, 0.09, 0.07, 0.25, 0.09, 0.09, 0.27, 0.26,
                           0.32, 0.32])


@dataclass
class SyntheticConfig:
    users: tuple[str, ...] = DEFAULT_USERS
    sessions: tuple[str, ...] = ("S0100",)
    seed: int = 0
    session_seconds: float = 90.0  # annotated length of each session, s
    duration_scale: float = 0.5  # real per-class durations x this (real boxes take ~66 s)
    min_op_seconds: float = 1.2  # shortest operation/gap, s (> 1 s keeps every segment visible in the 1 Hz file)
    null_gap_prob: float = 0.05  # chance of an unannotated (Null) gap after an operation (real: 5 of 192)
    null_gap_seconds: tuple[float, float] = (1.2, 3.0)  # Null gap length range, s (real gaps: 2.0-3.7 s)
    lead_seconds: float = 1.0  # Kinect streams start this long before the first annotation and end after the last
    keypoint_noise_px: float = 2.5  # std of the Gaussian jitter on every joint, px (real torso moves ~4 px/frame)
    rgb: bool = True  # write color-masked JPEG frames
    rgb_size: tuple[int, int] = KINECT_SIZE  # JPEG width, height (px); real frames are 1280x720
    jpeg_quality: int = 70
    write_interval: bool = True  # openpack-operations/{session}.csv
    write_1hz: bool = True  # openpack-operations-1hz/{session}.csv
    write_kpt_json: bool = True  # kinect 2d-kpt mmpose JSON
    write_preprocessed: bool = True  # kinect-2d-kpt-with-operation-action-labels/{user}-{session}.csv


# ------------------------------------------------------------------------------------------------------ helpers
def session_rng(cfg: SyntheticConfig, *keys: str) -> np.random.Generator:
    """A generator that depends only on (seed, keys), so a user's data does not change with the user list."""
    return np.random.default_rng([int(cfg.seed)] + [zlib.crc32(k.encode()) for k in keys])


def session_start_ms(user: str, session: str) -> int:
    """A plausible JST session start: March/April 2022 working hours, one day per user, one slot per session."""
    day = int(user[1:]) % 28
    slot = (int(session[1:]) // 100) % 5
    base = 1648429200000  # 2022-03-28 10:00:00+09:00
    return base + day * 86_400_000 + slot * 5_400_000 + (zlib.crc32(f"{user}{session}".encode()) % 1000)


def box_sequence(rng: np.random.Generator) -> list[int]:
    """Operations of one box: BOX_CYCLE with the real session's repeats and optional Put on Back Table."""
    seq: list[int] = []
    for op in BOX_CYCLE:
        seq.append(op)
        for pair, p in REPEATS.items():
            if op == pair[1] and seq[-2:] == list(pair) and rng.random() < p:
                seq.extend(pair)
    if rng.random() < P_BACK_TABLE:
        seq.append(900)
    return seq


def _draw_duration(rng: np.random.Generator, op: int, cfg: SyntheticConfig) -> float:
    m, s = REAL_DURATIONS_S[op]
    m, s = m * cfg.duration_scale, s * cfg.duration_scale
    sigma2 = np.log1p((s / m) ** 2)  # log-normal with this mean and std
    d = float(rng.lognormal(np.log(m) - sigma2 / 2, np.sqrt(sigma2)))
    return max(d, cfg.min_op_seconds)


def make_rows(cfg: SyntheticConfig, user: str, session: str) -> list[tuple[int, int, int, int]]:
    """Annotated operations of a session: (start_ms, end_ms, op_id, box); Null gaps are the holes between rows."""
    rng = session_rng(cfg, user, session, "timeline")
    t0 = session_start_ms(user, session)
    total = cfg.session_seconds
    rows: list[tuple[float, float, int, int]] = []
    t, box = 0.0, 1
    while t < total:
        for op in box_sequence(rng):
            d = _draw_duration(rng, op, cfg)
            rows.append((t, t + d, op, box))
            t += d
            if rng.random() < cfg.null_gap_prob:
                t += float(rng.uniform(*cfg.null_gap_seconds))
            if t >= total:
                break
        box += 1
    a, b, op, bx = rows[-1]
    if b > total:
        rows[-1] = (a, total, op, bx)
        if total - a < cfg.min_op_seconds:
            rows.pop()
    return [(t0 + round(a * 1000), t0 + round(b * 1000), op, bx) for a, b, op, bx in rows]


def rows_to_timeline(rows) -> list[Segment]:
    return normalize_timeline([Segment(a, b, op) for a, b, op, _ in rows])


def kinect_timestamps(rows, cfg: SyntheticConfig) -> np.ndarray:
    """15 Hz frame times from ``lead_seconds`` before the first row to ``lead_seconds`` after the last."""
    t0 = rows[0][0] - round(cfg.lead_seconds * 1000)
    t1 = rows[-1][1] + round(cfg.lead_seconds * 1000)
    n = int((t1 - t0) * KINECT_FPS // 1000)
    return t0 + np.round(np.arange(n) * 1000 / KINECT_FPS).astype(np.int64)


def make_keypoints(cfg: SyntheticConfig, user: str, session: str, timeline: list[Segment], ts: np.ndarray) -> np.ndarray:
    """Keypoints (N, 17, 3) for frames at ``ts``: per-operation place, arm pose and motion, walking, noise, scores."""
    rng = session_rng(cfg, user, session, "keypoints")
    n = len(ts)
    ops = labels_at(timeline, ts)
    starts = np.array([s.start_ms for s in timeline], np.int64)
    seg = at_or_before(starts, ts)
    inside = (ts >= timeline[0].start_ms) & (ts < timeline[-1].end_ms)
    prev_ops = np.array([timeline[i - 1].op_id if i > 0 else NULL_ID for i in range(len(timeline))])[seg]
    prev_ops = np.where(inside, prev_ops, NULL_ID)
    since = np.where(inside, (ts - starts[seg]) / 1000.0, 1e9)
    pos = np.array([OP_POSITIONS[o] for o in ops])
    prev_pos = np.array([OP_POSITIONS[o] for o in prev_ops])
    w = np.clip(since / WALK_S, 0, 1)[:, None]
    centre = prev_pos + (pos - prev_pos) * w  # walk from the previous place

    k = np.repeat(BODY_SCALE * _BODY[None], n, axis=0)
    arms = BODY_SCALE * np.array([OP_ARM_POSES[o] for o in ops], np.float64)  # (n, 4, 2)
    r_el = k[:, 6] + arms[:, 0]
    l_el = k[:, 5] + arms[:, 2]
    freq_amp = np.array([OP_MOTION[o] for o in ops])
    t_s = (ts - ts[0]) / 1000.0
    phase = 2 * np.pi * freq_amp[:, 0] * t_s
    wob = BODY_SCALE * freq_amp[:, 1:2] * np.stack([np.sin(phase), 0.5 * np.cos(phase)], 1)
    k[:, 8] = r_el + 0.5 * wob
    k[:, 7] = l_el - 0.5 * wob
    k[:, 10] = r_el + arms[:, 1] + wob
    k[:, 9] = l_el + arms[:, 3] - wob
    sway = 3.0 * BODY_SCALE * np.stack([np.sin(2 * np.pi * 0.25 * t_s), np.zeros(n)], 1)
    xy = k + (centre + sway)[:, None, :] + rng.normal(0, cfg.keypoint_noise_px, (n, 17, 2))
    xy[..., 0] = np.clip(xy[..., 0], 0, KINECT_SIZE[0] - 1)
    xy[..., 1] = np.clip(xy[..., 1], 0, KINECT_SIZE[1] - 1)
    m, v = REAL_SCORE_MEAN, REAL_SCORE_STD ** 2  # beta distributions with the real per-joint mean and variance
    common = m * (1 - m) / v - 1
    score = np.clip(rng.beta(m * common, (1 - m) * common, (n, 17)), 0.01, 1.0)
    return np.concatenate([xy, score[..., None]], axis=2).astype(np.float32)


# ------------------------------------------------------------------------------------------------ calibration
def pose_stats(ts: np.ndarray, kpts: np.ndarray, min_score: float = 0.1) -> dict[str, float]:
    """What the synthetic pose is calibrated on, for a keypoint stream (N,) ms + (N,17,3): the median box of the
    confident joints (size, centre), frame-to-frame jitter of the torso joints (px per frame), wrist speed (px/s,
    median and 90th percentile), the score distribution, and the frame interval (ms)."""
    k = np.asarray(kpts, dtype=np.float64)
    s = k[..., 2]
    ok = s >= min_score
    lo = np.array([k[t, ok[t], :2].min(0) if ok[t].any() else (np.nan, np.nan) for t in range(len(k))])
    hi = np.array([k[t, ok[t], :2].max(0) if ok[t].any() else (np.nan, np.nan) for t in range(len(k))])
    ext, ctr = hi - lo, (lo + hi) / 2
    step = np.linalg.norm(np.diff(k[..., :2], axis=0), axis=-1)  # (N-1, 17) px per frame
    dt = np.diff(np.asarray(ts, dtype=np.int64))
    rate = 1000.0 / np.median(dt)
    return {"box_w_px": float(np.nanmedian(ext[:, 0])), "box_h_px": float(np.nanmedian(ext[:, 1])),
            "centre_x_px": float(np.nanmedian(ctr[:, 0])), "centre_y_px": float(np.nanmedian(ctr[:, 1])),
            "torso_jitter_px": float(np.median(step[:, [5, 6, 11, 12]])),
            "wrist_speed_p50_px_s": float(np.median(step[:, [9, 10]]) * rate),
            "wrist_speed_p90_px_s": float(np.percentile(step[:, [9, 10]], 90) * rate),
            "score_p50": float(np.median(s)), "score_p10": float(np.percentile(s, 10)),
            "score_below_0.3": float((s < 0.3).mean()), "score_below_0.1": float((s < 0.1).mean()),
            "frame_interval_ms": float(np.median(dt))}


#: How far the synthetic pose may drift from the real sample: ("rel", x) = within x of the real value as a share of
#: it, ("abs", x) = within x in the statistic's units (tests/test_synthetic.py, scripts/pose_calibration.py).
CALIBRATION: dict[str, tuple[str, float]] = {
    "box_w_px": ("rel", 0.3), "box_h_px": ("rel", 0.2), "centre_x_px": ("abs", 150.0), "centre_y_px": ("abs", 80.0),
    "torso_jitter_px": ("rel", 0.35), "wrist_speed_p50_px_s": ("rel", 0.4), "wrist_speed_p90_px_s": ("rel", 0.4),
    "score_p50": ("abs", 0.08), "score_p10": ("abs", 0.12), "score_below_0.3": ("abs", 0.08),
    "score_below_0.1": ("abs", 0.03), "frame_interval_ms": ("abs", 1.0),
}


def calibration_table(real: dict, synthetic: dict) -> list[dict]:
    """Per statistic: real, synthetic, tolerance and whether the synthetic value is within it."""
    rows = []
    for key, (kind, tol) in CALIBRATION.items():
        r, y = real[key], synthetic[key]
        bound = tol * abs(r) if kind == "rel" else tol
        rows.append({"stat": key, "real": r, "synthetic": y, "tolerance": f"+-{tol:.0%}" if kind == "rel" else
                     f"+-{tol:g}", "ok": bool(abs(y - r) <= bound)})
    return rows


# ------------------------------------------------------------------------------------------------------ writers
