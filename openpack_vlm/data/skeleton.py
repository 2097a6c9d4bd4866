"""Skeleton rendering: COCO-17 keypoints (Kinect 1280x720 px) -> 336x336 RGB frames.

Two renderers, recorded in the run contract (``data.pose_render``) so training, evaluation and serving agree:

* ``mode="person"`` (default, ``render_pose_clip``): a window around the worker, its size fixed for the clip (the
  90th percentile of the per-frame extent of the upper body's and arms' confident joints, COCO 0-12, grown by
  ``margin``, at least ``min_window`` Kinect px) and its centre following the worker (per-frame box centre, moving
  average over +-``smooth`` keypoint frames), so the figure fills the frame even while the worker walks. A
  standing worker is about twice as tall as wide: the narrow side is stretched onto the square frame by up to
  ``max_stretch``, the same way in training and serving. Motion is drawn inside each frame: fading trails of the
  wrists, elbows and the hip centre over the ``trail`` preceding keypoint frames, placed where they were relative to
  the current window (a walking worker leaves a hip trail behind). Limb widths and discs are sized in output pixels
  (discs stay round); the torso is filled. A clip without confident joints falls back to the whole frame.
* ``mode="frame"`` (``render_pose``, the first renderer): the whole 1280x720 frame letterboxed into 336x336; the
  worker is a ~100 px figure (measured on the real keypoints: ``scripts/pose_coverage.py``).

Both: left side warm, right side cool, torso/head grey, forearms thicker and wrists as large discs (the hands carry
the work), colours scaled by the keypoint score; joints under ``min_score`` are not drawn.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from .errors import FrameError
from .letterbox import KINECT_H, KINECT_W, SIZE, Letterbox
from .sampling import SamplingConfig, sample_from_motion

# COCO-17: 0 nose, 1/2 eyes, 3/4 ears, 5/6 shoulders, 7/8 elbows, 9/10 wrists, 11/12 hips, 13/14 knees, 15/16 ankles
LEFT, RIGHT, CENTRE = (255, 140, 0), (0, 150, 255), (200, 200, 200)  # RGB: left warm, right cool, torso grey
LIMBS: tuple[tuple[int, int, tuple[int, int, int], int], ...] = (
    # (joint a, joint b, colour, thickness in Kinect px)
    (0, 1, LEFT, 6), (0, 2, RIGHT, 6), (1, 3, LEFT, 6), (2, 4, RIGHT, 6),
    (5, 6, CENTRE, 10), (5, 11, CENTRE, 10), (6, 12, CENTRE, 10), (11, 12, CENTRE, 10),
    (5, 7, LEFT, 12), (7, 9, LEFT, 20), (6, 8, RIGHT, 12), (8, 10, RIGHT, 20),  # forearms thicker
    (11, 13, LEFT, 12), (13, 15, LEFT, 12), (12, 14, RIGHT, 12), (14, 16, RIGHT, 12),
)
JOINT_RADIUS = 8  # Kinect px
WRISTS = ((9, LEFT), (10, RIGHT))
WRIST_RADIUS = 28  # Kinect px: hands emphasised
WRIST_RING = (255, 255, 255)
MIN_SCORE = 0.1  # joints below this confidence are not drawn
_SHIFT = 4  # cv2 sub-pixel bits


def _scaled(colour: tuple[int, int, int], score: float) -> tuple[int, int, int]:
    s = float(min(max(score, 0.0), 1.0))
    return (int(colour[0] * s), int(colour[1] * s), int(colour[2] * s))


def render_pose(kpts: np.ndarray, size: int = SIZE, frame_w: int = KINECT_W, frame_h: int = KINECT_H,
                min_score: float = MIN_SCORE) -> np.ndarray:
    """One (17,3) COCO keypoint frame (x, y, score in frame_w x frame_h px) -> (size,size,3) uint8 skeleton image."""
    kpts = np.asarray(kpts, dtype=np.float64)
    if kpts.shape != (17, 3):
        raise FrameError(f"keypoints must be (17,3), got {kpts.shape}")
    box = Letterbox.for_shape(frame_w, frame_h, size)
    img = np.zeros((size, size, 3), dtype=np.uint8)
    mult = 1 << _SHIFT
    xy = np.empty((17, 2), dtype=np.int64)
    xy[:, 0] = np.round((kpts[:, 0] * box.scale + box.off_x) * mult)
    xy[:, 1] = np.round((kpts[:, 1] * box.scale + box.off_y) * mult)
    score = np.nan_to_num(kpts[:, 2], nan=0.0)
    ok = (score >= min_score) & np.all(np.isfinite(kpts[:, :2]), axis=1)

    def thick(px: float) -> int:
        return max(1, int(round(px * box.scale)))

    for a, b, colour, t in LIMBS:
        if ok[a] and ok[b]:
            cv2.line(img, tuple(xy[a]), tuple(xy[b]), _scaled(colour, min(score[a], score[b])), thick(t),
                     cv2.LINE_AA, _SHIFT)
    r = max(1, int(round(JOINT_RADIUS * box.scale * mult)))
    for j in range(17):
        if ok[j] and j not in (9, 10):
            cv2.circle(img, tuple(xy[j]), r, _scaled(CENTRE, score[j]), -1, cv2.LINE_AA, _SHIFT)
    rw = max(2, int(round(WRIST_RADIUS * box.scale * mult)))
    for j, colour in WRISTS:
        if ok[j]:
            cv2.circle(img, tuple(xy[j]), rw, _scaled(colour, score[j]), -1, cv2.LINE_AA, _SHIFT)
            cv2.circle(img, tuple(xy[j]), rw, _scaled(WRIST_RING, score[j]), thick(4), cv2.LINE_AA, _SHIFT)
    return img


# ------------------------------------------------------------------------------------------- person-centred clips
UPPER_BODY = tuple(range(13))  # nose, eyes, ears, shoulders, elbows, wrists, hips: where packing work shows
TRAIL_JOINTS = ((9, LEFT), (10, RIGHT), (7, LEFT), (8, RIGHT), (17, CENTRE))  # wrists, elbows, hip centre (17)


@dataclass(frozen=True)
class PoseRender:
    """How keypoint clips become frames (``data.pose_render`` of the run contract)."""

    mode: str = "person"  # "person": a window following the worker, sized per clip | "frame": the whole Kinect frame
    margin: float = 0.1  # share of the window's side added on each side of the joints' box
    min_window: float = 200.0  # Kinect px: the smallest window side (a still worker is not magnified beyond ~1.7x)
    max_stretch: float = 2.0  # most the window's narrow side is stretched relative to its long side (1 = square)
    smooth: int = 7  # keypoint frames each side averaged for the window's centre (15 Hz: +-0.47 s)
    trail: int = 8  # keypoint frames of fading wrist/elbow/hip trail (15 Hz keypoints: 0.53 s)
    limb_px: float = 16.0  # output px at 336: limb width
    forearm_px: float = 22.0
    joint_px: float = 9.0  # joint disc radius
    wrist_px: float = 24.0  # hand disc radius
    torso_fill: int = 70  # grey level of the filled torso (shoulders-hips quad): the body reads as a shape
    min_score: float = MIN_SCORE

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict | None) -> "PoseRender":
        """The renderer a record names; None (runs made before the record had it) = the first renderer."""
        if d is None:
            return cls(mode="frame")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise FrameError(f"unknown pose_render key(s) {sorted(unknown)}")
        r = cls(**d)
        if r.mode not in ("person", "frame"):
            raise FrameError(f"unknown pose_render mode {r.mode!r} (person | frame)")
        return r


def clip_window(kpts: np.ndarray, frames: list[int] | np.ndarray | None = None, cfg: PoseRender = PoseRender(),
                frame_w: int = KINECT_W, frame_h: int = KINECT_H) -> tuple[np.ndarray, float, float]:
    """The window of each keypoint frame of ``kpts`` (N,17,3) for a clip showing ``frames``: (centres (N,2), width,
    height) in Kinect px. Size from the shown frames' extents; centres for every frame (trails look back), missing
    ones filled from the nearest frame with joints, then smoothed. No confident joint: the whole frame."""
    k = np.asarray(kpts, dtype=np.float64)[:, UPPER_BODY]
    n = len(k)
    idx = np.arange(n) if frames is None else np.unique(np.asarray(frames, dtype=np.int64))
    ok = (np.nan_to_num(k[..., 2]) >= cfg.min_score) & np.all(np.isfinite(k[..., :2]), axis=-1)
    good = ok.sum(1) >= 3
    side_full = float(max(frame_w, frame_h))
    if cfg.mode == "frame" or not good[idx].any():
        return np.tile([frame_w / 2, frame_h / 2], (n, 1)), side_full, side_full
    lo = np.full((n, 2), np.nan)
    hi = np.full((n, 2), np.nan)
    for t in np.flatnonzero(good):
        p = k[t, ok[t], :2]
        lo[t], hi[t] = p.min(0), p.max(0)
    ext = (hi - lo)[idx][good[idx]]
    w, h = np.percentile(ext, 90, axis=0) * (1 + 2 * cfg.margin)
    long = min(max(w, h, cfg.min_window), side_full)
    short = max(long / max(cfg.max_stretch, 1.0), min(w, h))
    w, h = (long, short) if w >= h else (short, long)
    centre = (lo + hi) / 2
    valid = np.flatnonzero(good)
    nearest = valid[np.abs(np.arange(n)[:, None] - valid[None, :]).argmin(1)]
    centre = centre[nearest]
    if cfg.smooth > 0:
        pad = np.pad(centre, ((cfg.smooth, cfg.smooth), (0, 0)), mode="edge")
        kern = np.ones(2 * cfg.smooth + 1) / (2 * cfg.smooth + 1)
        centre = np.stack([np.convolve(pad[:, c], kern, mode="valid") for c in range(2)], 1)
    return centre, float(w), float(h)


def render_pose_clip(kpts: np.ndarray, frames: list[int] | np.ndarray | None = None, cfg: PoseRender = PoseRender(),
                     size: int = SIZE, frame_w: int = KINECT_W, frame_h: int = KINECT_H,
                     draw: list[int] | np.ndarray | None = None) -> np.ndarray:
    """Keypoint frames ``kpts`` (N,17,3) -> the clip showing ``frames`` (indices into kpts, default all), rendered as
    ``cfg`` says: (len(frames), size, size, 3) uint8. Trails use the keypoint frames before each shown frame.

    ``draw`` (positions in ``frames``) renders only those frames of the clip, (len(draw), size, size, 3): the same
    pixels as ``render_pose_clip(kpts, frames, ...)[draw]`` — the window is still sized by all of ``frames`` — for a
    caller that keeps only the sampled frames (the data pipeline: 8 of 125)."""
    kpts = np.asarray(kpts, dtype=np.float64)
    if kpts.ndim != 3 or kpts.shape[1:] != (17, 3):
        raise FrameError(f"keypoints must be (N,17,3), got {kpts.shape}")
    clip_idx = np.arange(len(kpts)) if frames is None else np.asarray(frames, dtype=np.int64)
    idx = clip_idx if draw is None else clip_idx[np.asarray(draw, dtype=np.int64)]
    if cfg.mode == "frame":
        return np.stack([render_pose(kpts[i], size, frame_w, frame_h, cfg.min_score) for i in idx])
    centre, ww, wh = clip_window(kpts, clip_idx, cfg, frame_w, frame_h)
    score = np.nan_to_num(kpts[..., 2], nan=0.0)
    ok = (score >= cfg.min_score) & np.all(np.isfinite(kpts[..., :2]), axis=-1)
    hip = ok[:, 11] & ok[:, 12]  # joint 17: the hip centre, for the body's trail
    pts = np.concatenate([kpts[..., :2], ((kpts[:, 11, :2] + kpts[:, 12, :2]) / 2)[:, None]], 1)
    score = np.concatenate([score, np.minimum(score[:, 11], score[:, 12])[:, None]], 1)
    ok = np.concatenate([ok, hip[:, None]], 1)
    mult = 1 << _SHIFT
    sx, sy = size / ww * mult, size / wh * mult
    px = lambda v: max(1, int(round(v * size / SIZE)))  # noqa: E731  widths are given at 336 px
    out = np.zeros((len(idx), size, size, 3), dtype=np.uint8)
    cache: dict[int, np.ndarray] = {}
    for n, i in enumerate(idx.tolist()):
        if i in cache:
            out[n] = cache[i]
            continue
        img = out[n]
        x0, y0 = centre[i] - (ww / 2, wh / 2)
        xy = np.stack([np.round((pts[..., 0] - x0) * sx), np.round((pts[..., 1] - y0) * sy)], -1).astype(np.int64)
        if cfg.torso_fill and ok[i, [5, 6, 12, 11]].all():
            cv2.fillPoly(img, [xy[i, [5, 6, 12, 11]].reshape(-1, 1, 2)], (cfg.torso_fill,) * 3, cv2.LINE_AA, _SHIFT)
        for j, colour in TRAIL_JOINTS:  # oldest first, fading in; drawn under the skeleton
            seen = [p for p in range(i - cfg.trail, i + 1) if p >= 0 and ok[p, j]]
            for a, b in zip(seen, seen[1:]):
                fade = 0.25 + 0.5 * (b - (i - cfg.trail)) / max(1, cfg.trail)
                w = px(cfg.wrist_px if j in (9, 10, 17) else cfg.joint_px) // 2 + 1
                cv2.line(img, tuple(xy[a, j]), tuple(xy[b, j]), _scaled(colour, fade * score[b, j]), w,
                         cv2.LINE_AA, _SHIFT)
        for a, b, colour, t in LIMBS:
            if ok[i, a] and ok[i, b]:
                width = cfg.forearm_px if (a, b) in ((7, 9), (8, 10)) else cfg.limb_px
                cv2.line(img, tuple(xy[i, a]), tuple(xy[i, b]), _scaled(colour, min(score[i, a], score[i, b])),
                         px(width), cv2.LINE_AA, _SHIFT)
        for j in range(17):
            if ok[i, j] and j not in (9, 10):
                cv2.circle(img, tuple(xy[i, j]), px(cfg.joint_px) * mult, _scaled(CENTRE, score[i, j]), -1,
                           cv2.LINE_AA, _SHIFT)
        for j, colour in WRISTS:
            if ok[i, j]:
                cv2.circle(img, tuple(xy[i, j]), px(cfg.wrist_px) * mult, _scaled(colour, score[i, j]), -1,
                           cv2.LINE_AA, _SHIFT)
                cv2.circle(img, tuple(xy[i, j]), px(cfg.wrist_px) * mult, _scaled(WRIST_RING, score[i, j]), px(2),
                           cv2.LINE_AA, _SHIFT)
        cache[i] = img
    return out


@dataclass(frozen=True, eq=False)
class SkeletonClip:
    """A skeleton clip not drawn yet: the keypoint frames its window, trails and smoothing look at, which of them each
    of its ticks shows, and the joints' motion the frame sampler reads (``sources.PoseFrameSource.skeleton_clip``).
    The sampler needs no pixels, so a caller that keeps K frames renders only those: ``frames(draw)`` (the same pixels
    as the whole clip's frames at those positions). ``np.asarray(clip)`` renders every frame."""

    kpts: np.ndarray  # (N, 17, 3) keypoint frames around the clip
    ticks: np.ndarray  # (T,) index into kpts shown at each output tick
    render: PoseRender
    size: int
    motion: np.ndarray  # (T,) the joints' motion per tick

    def __len__(self) -> int:
        return len(self.ticks)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.ticks), self.size, self.size, 3)

    def frames(self, draw: list[int] | np.ndarray | None = None) -> np.ndarray:
        """The frames at positions ``draw`` of the clip (default: all), (len(draw), size, size, 3) uint8."""
        return render_pose_clip(self.kpts, self.ticks, self.render, self.size, draw=draw)

    def sampled(self, cfg: SamplingConfig, motion: np.ndarray | None = None) -> tuple[np.ndarray, list[int]]:
        """The frames the sampler keeps and their positions in the clip: ``sample_from_motion`` on the joints' motion
        (or ``motion``), then only those frames drawn — what the data pipeline stores and the predictor shows."""
        idx = sample_from_motion(self.motion if motion is None else motion, cfg)
        return self.frames(idx), idx

    def __getitem__(self, i) -> np.ndarray:
        """Frame ``i`` drawn (an int), or the frames at positions ``i`` (a list / array of ints)."""
        if np.ndim(i) == 0:
            return self.frames([int(i)])[0]
        return self.frames(np.asarray(i, dtype=np.int64))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        f = self.frames()
        return f if dtype is None else f.astype(dtype)


def token_coverage(frames: np.ndarray, cell: int = 28, threshold: int = 8) -> float:
    """Mean share of a frame's visual tokens (cell x cell px patches: 28 = Qwen2-VL's 14 px patch x 2x2 merge, 144 at
    336 px) in which some pixel is brighter than ``threshold`` (i.e. the skeleton touches it)."""
    f = np.asarray(frames)
    f = f.reshape(-1, *f.shape[-3:])
    n, h, w, _ = f.shape
    gh, gw = h // cell, w // cell
    lit = f[:, :gh * cell, :gw * cell].max(-1) > threshold
    return float(lit.reshape(n, gh, cell, gw, cell).any(axis=(2, 4)).mean())
