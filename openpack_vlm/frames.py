"""Frame sources: every visual stream becomes 25-fps, 336x336 RGB uint8 frames, the one input format of the model.

Sources (``open_source(root, user, session, kind)``; ``.name`` is recorded per clip as ``ClipRecord.source``):
  ``rgb``   Kinect colour frames, masked JPEGs at ~15 Hz named by their timestamp (openpack.rgb_frames).
  ``video`` a plain video file of the session (openpack.available_streams()["video"]); its first frame is at
            openpack.video_start_ms (sidecar JSON, else the session's first annotation), later frames at the
            decoder's frame timestamps.
  ``pose``  skeleton frames rendered from Kinect 2D keypoints (openpack.load_keypoints: mmpose JSON or Zenodo CSV).
  ``kind="auto"`` takes rgb frames, else the video, else pose; ``kind="rgb"`` means camera pixels (frames, else video).

Normalisation, identical for every source and for uploads (serve.py):
* Time: output frame i of a clip starting at t0 is the source frame shown at t0 + 40*i ms, i.e. the last source
  frame whose timestamp is <= that tick (the first frame for ticks before it). 15 Hz -> 25 fps therefore repeats
  frames by their timestamps, never by counting frames. A tick farther than ``max_gap_ms`` from that frame (missing
  frames, stream ended) raises ``FrameGapError``.
* Space: LETTERBOX. The frame is scaled to fit 336x336 keeping its aspect (1280x720 -> 336x189: exact 2x area
  halvings, or libjpeg's 1/2-scale decode for JPEGs, then one bilinear step) and centred on black bars.
  Centre-cropping would cut 280 px off each side of the Kinect view, where the worker reaches for items and the
  back table; letterboxing keeps the whole workspace at the cost of resolution.
* Skeletons are drawn in Kinect pixel coordinates mapped by the same letterbox transform (equivalent to drawing on
  the 1280x720 frame and scaling it, without rendering 1280x720 images): COCO-17 limbs, left side warm, right side
  cool, torso/head grey, forearms thicker and wrists as large discs (the hands carry the work), each limb's colour
  scaled by its keypoint score (opacity over the black background). Joints under ``min_score`` are not drawn.

``decode_video`` decodes a file with PyAV (decord fallback), resampled to 25 fps by frame timestamps; ``to_clip``
turns any decoded upload into exactly 125 frames (rule in its docstring).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .schema import CLIP_FRAMES, FPS

SIZE = 336  # model input side (px): 336 = 24 patches of 14 px -> 144 visual tokens after 2x2 merge
KINECT_W, KINECT_H = 1280, 720  # Kinect colour frame (px); keypoints are in this frame
MAX_GAP_MS = 250  # largest allowed distance (ms) from an output tick to the source frame shown (15 Hz step = 67 ms)
MIN_CLIP_FRAMES = 50  # to_clip: uploads shorter than 2 s (50 frames at 25 fps) are refused

cv2.setNumThreads(1)  # one core per worker process; the pipeline parallelises over sessions


class FrameError(ValueError):
    """A frame stream that cannot provide a clip (message is one line naming the file/problem)."""


class CorruptFrameError(FrameError):
    pass


class FrameGapError(FrameError):
    pass


class VideoDecodeError(ValueError):
    """A video that cannot be decoded (missing, empty, not a video, zero frames)."""


def one_line(e: BaseException) -> str:
    """First line of an exception's message (its type name when the message is empty)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ----------------------------------------------------------------------------------------------------------- space
@dataclass(frozen=True)
class Letterbox:
    """Maps a (w, h) frame into a size x size square: scale, then offset (px)."""

    scale: float
    new_w: int
    new_h: int
    off_x: int
    off_y: int
    size: int

    @classmethod
    def for_shape(cls, w: int, h: int, size: int = SIZE) -> "Letterbox":
        if w <= 0 or h <= 0:
            raise FrameError(f"frame has no pixels ({w}x{h})")
        scale = min(size / w, size / h)
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        return cls(scale, new_w, new_h, (size - new_w) // 2, (size - new_h) // 2, size)

    def apply(self, img: np.ndarray) -> np.ndarray:
        # exact 2x area halvings while the frame is >= 2x the target (OpenCV's fast path), then one bilinear step
        # (< 2x): 1280x720 -> 640x360 -> 336x189 takes ~0.9 ms where a direct INTER_AREA takes ~6 ms
        h, w = img.shape[:2]
        while w >= 2 * self.new_w and h >= 2 * self.new_h and w % 2 == 0 and h % 2 == 0:
            w, h = w // 2, h // 2
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        if (w, h) == (self.new_w, self.new_h):
            resized = img
        else:
            resized = cv2.resize(img, (self.new_w, self.new_h), interpolation=cv2.INTER_LINEAR)
        if self.new_w == self.size and self.new_h == self.size:
            return resized
        out = np.zeros((self.size, self.size, 3), dtype=np.uint8)
        out[self.off_y : self.off_y + self.new_h, self.off_x : self.off_x + self.new_w] = resized
        return out


def letterbox(img: np.ndarray, size: int = SIZE) -> np.ndarray:
    """(H,W,3) uint8 RGB -> (size,size,3): aspect kept, black bars (the project's one spatial normalisation)."""
    if img.ndim != 3 or img.shape[2] != 3:
        raise FrameError(f"expected an (H,W,3) RGB frame, got shape {img.shape}")
    return Letterbox.for_shape(img.shape[1], img.shape[0], size).apply(img)


# ------------------------------------------------------------------------------------------------------------ time
def tick_times(t0_ms: int, n: int = CLIP_FRAMES, fps: int = FPS) -> np.ndarray:
    """Timestamps (ms, int64) of the n output frames of a clip starting at t0_ms."""
    return int(t0_ms) + np.round(np.arange(n) * 1000.0 / fps).astype(np.int64)


def resample_indices(src_ts_ms: np.ndarray, ticks_ms: np.ndarray, max_gap_ms: int | None = MAX_GAP_MS,
                     what: str = "stream") -> np.ndarray:
    """For each tick, the index of the last source frame at or before it (the first frame for earlier ticks).

    Raises FrameGapError when a tick is more than ``max_gap_ms`` away from the frame chosen for it.
    """
    src = np.asarray(src_ts_ms, dtype=np.int64)
    if len(src) == 0:
        raise FrameGapError(f"{what}: no frames")
    idx = np.searchsorted(src, ticks_ms, side="right") - 1
    idx = np.clip(idx, 0, len(src) - 1)
    if max_gap_ms is not None:
        gap = np.abs(ticks_ms - src[idx])
        worst = int(np.argmax(gap))
        if gap[worst] > max_gap_ms:
            raise FrameGapError(
                f"{what}: no frame within {max_gap_ms} ms of t={int(ticks_ms[worst])} ms "
                f"(nearest {int(gap[worst])} ms away; missing frames or outside the recording)"
            )
    return idx


# ----------------------------------------------------------------------------------------------------- RGB frames
class FrameSource:
    """Base class: ``name`` and ``clip(t0_ms, n, fps) -> (n, 336, 336, 3) uint8``."""

    name = "base"

    def clip(self, t0_ms: int, n: int = CLIP_FRAMES, fps: int = FPS) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def span_ms(self) -> tuple[int, int]:  # pragma: no cover - interface
        raise NotImplementedError


def read_jpeg(path: Path, reduce: int = 1) -> np.ndarray:
    """Decode a JPEG to RGB (optionally at 1/2, 1/4 scale inside libjpeg); CorruptFrameError if it cannot be read."""
    flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}[reduce]
    img = cv2.imread(str(path), flag)
    if img is None:
        if not Path(path).exists():
            raise CorruptFrameError(f"frame file missing: {path}")
        raise CorruptFrameError(f"cannot decode frame (corrupt or not an image): {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def jpeg_reduce_factor(path: Path, size: int = SIZE) -> int:
    """Largest libjpeg downscale (1, 2, 4) whose longer side stays >= ``size``: the same as an exact 2x area halving
    in ``Letterbox.apply`` (1280x720 decodes to 640x360), at less decoding cost."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
        raise CorruptFrameError(f"cannot read frame header: {path} ({type(e).__name__})") from None
    for r in (4, 2):
        if max(w, h) // r >= size and w % r == 0 and h % r == 0:
            return r
    return 1


class RgbFrameSource(FrameSource):
    """Kinect colour JPEG frames (timestamps from the file names, via openpack.rgb_frames)."""

    name = "rgb"

    def __init__(self, ts_ms: np.ndarray, paths: list[Path], size: int = SIZE, max_gap_ms: int = MAX_GAP_MS,
                 cache_frames: int = 256):
        if len(ts_ms) == 0 or len(ts_ms) != len(paths):
            raise FrameError(f"RGB stream has {len(ts_ms)} timestamps for {len(paths)} frames")
        self.ts_ms = np.asarray(ts_ms, dtype=np.int64)
        self.paths = [Path(p) for p in paths]
        self.size = size
        self.max_gap_ms = max_gap_ms
        self._reduce: int | None = None
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()  # overlapping clips reuse decoded frames
        self._cache_frames = cache_frames

    def span_ms(self) -> tuple[int, int]:
        return int(self.ts_ms[0]), int(self.ts_ms[-1])

    def frame(self, i: int) -> np.ndarray:
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        if self._reduce is None:  # from the clip's own frame: one corrupt frame must not spoil the session
            self._reduce = jpeg_reduce_factor(self.paths[i], self.size)
        img = letterbox(read_jpeg(self.paths[i], self._reduce), self.size)
        self._cache[i] = img
        if len(self._cache) > self._cache_frames:
            self._cache.popitem(last=False)
        return img

    def clip(self, t0_ms: int, n: int = CLIP_FRAMES, fps: int = FPS) -> np.ndarray:
        idx = resample_indices(self.ts_ms, tick_times(t0_ms, n, fps), self.max_gap_ms, "RGB frames")
        return np.stack([self.frame(int(i)) for i in idx])


# ---------------------------------------------------------------------------------------------------------- video
DECODE_CHUNK = 64  # frames fetched from decord per call: bounds memory at full resolution (64 x 6 MB for 1080p)


def _decode_decord(path: Path, size: int, max_seconds: float | None) -> tuple[np.ndarray, callable]:
    """decord: timestamps of all frames, and a getter of letterboxed frames by index (decoded in chunks)."""
    import decord

    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    n = len(vr)
    if n == 0:
        raise VideoDecodeError(f"video has zero frames: {path}")
    ts = np.asarray(vr.get_frame_timestamp(np.arange(n)))[:, 0].astype(np.float64)  # start time (s) per frame

    def get(indices: np.ndarray) -> np.ndarray:
        uniq, inverse = np.unique(np.asarray(indices, dtype=int), return_inverse=True)  # each frame decoded once
        out = np.empty((len(uniq), size, size, 3), np.uint8)
        box = None
        for c in range(0, len(uniq), DECODE_CHUNK):
            raw = vr.get_batch([int(i) for i in uniq[c : c + DECODE_CHUNK]]).asnumpy()
            box = box or Letterbox.for_shape(raw.shape[2], raw.shape[1], size)
            for j, f in enumerate(raw):
                out[c + j] = box.apply(f)
        return out[inverse]

    return ts, get


class _Unordered(Exception):
    """Frame times went backwards: frames cannot be dropped while decoding (decode again, keeping all)."""


def _decode_pyav(path: Path, size: int, max_seconds: float | None, fps: int = FPS, keep_all: bool = False
                 ) -> tuple[np.ndarray, callable]:
    """PyAV, one sequential pass: timestamps of all frames, and a getter of letterboxed frames by index.

    A decoded frame is converted to RGB and letterboxed only when some output tick shows it, i.e. a tick falls in
    [its time, the next frame's time) — known once the next frame arrives — or it is the last frame. So a 30-fps
    upload converts 25 of every 30 frames and memory holds at most the output's frames at 336x336, never the
    full-resolution stream. Frame times going backwards (broken timestamps) switch to keeping every frame.
    """
    import av

    frames: dict[int, np.ndarray] = {}
    ts: list[float] = []
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise VideoDecodeError(f"no video stream in {path}")
        stream = container.streams.video[0]
        stream.thread_count = 1  # one thread: the service runs DECODE_WORKERS decoder processes, one per core
        rate = float(stream.average_rate or fps)
        box, held = None, None  # held: the previous frame, kept until the next one's time decides whether it shows
        eps = 1e-6 * fps  # video_ticks' 1 µs tolerance, in ticks

        def keep(i: int, fr) -> None:
            nonlocal box
            img = fr.to_ndarray(format="rgb24", threads=1)  # swscale's default is a thread per CPU; each decoder
            # process is one thread (on a 16-core host, unpinned decoding used 1.3x its wall time in CPU without this)
            box = box or Letterbox.for_shape(img.shape[1], img.shape[0], size)
            frames[i] = box.apply(img)

        for fr in container.decode(stream):
            t = len(ts) / rate if fr.pts is None else float(fr.pts * fr.time_base)
            if ts and max_seconds is not None and t - ts[0] >= max_seconds:
                break
            if held is not None:
                a, b = (ts[-1] - ts[0]) * fps, (t - ts[0]) * fps  # previous and this frame, in ticks
                if b < a and not keep_all:
                    raise _Unordered
                if keep_all or np.ceil(a - eps) < b - eps:  # a tick k with a <= k < b (within eps) shows it
                    keep(len(ts) - 1, held)
            ts.append(t)
            held = fr
        if held is not None:
            keep(len(ts) - 1, held)
    if not frames:
        raise VideoDecodeError(f"video has zero frames: {path}")

    def get(indices: np.ndarray) -> np.ndarray:
        missing = [int(i) for i in indices if int(i) not in frames]
        if missing:  # a selection rule out of step with video_ticks: fail (decode_video then uses decord), never
            # show a wrong frame; tests/test_frames.py calls this getter directly, so such a bug cannot hide
            raise RuntimeError(f"frames {missing[:5]} of {path.name} were not kept while decoding")
        return np.stack([frames[int(i)] for i in indices])

    return np.asarray(ts), get


def _decode_pyav_any_order(path: Path, size: int, max_seconds: float | None) -> tuple[np.ndarray, callable]:
    try:
        return _decode_pyav(path, size, max_seconds)
    except _Unordered:
        return _decode_pyav(path, size, max_seconds, keep_all=True)


def video_ticks(ts_s: np.ndarray, fps: int = FPS, max_seconds: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Output tick times (s, from the first frame) and the source frame index shown at each (last frame <= tick).

    Duration = last frame's start + the median frame interval (one frame of 1/fps for single-frame files).
    """
    ts = np.asarray(ts_s, dtype=np.float64)
    order = np.argsort(ts, kind="stable")
    ts = ts[order] - ts[order[0]]
    step = float(np.median(np.diff(ts))) if len(ts) > 1 else 1.0 / fps
    duration = ts[-1] + max(step, 1e-6)
    if max_seconds is not None:
        duration = min(duration, float(max_seconds))
    n_out = max(1, int(np.floor(duration * fps + 0.01)))  # tolerance for float32 decoder timestamps
    ticks = np.arange(n_out) / fps
    src = np.clip(np.searchsorted(ts, ticks + 1e-6, side="right") - 1, 0, len(ts) - 1)
    return ticks, order[src]


def decode_video(path: str | os.PathLike, fps: int = FPS, size: int = SIZE, max_seconds: float | None = None
                 ) -> np.ndarray:
    """Decode a video file to (T, size, size, 3) uint8 RGB at ``fps`` by frame timestamps, letterboxed.

    PyAV first (one sequential pass, only the frames shown converted; about half decord's time on a 5-s upload,
    same pixels), decord when PyAV cannot decode the file. ``max_seconds`` caps the decoded duration (uploads).
    Raises VideoDecodeError (one line) for a missing, empty, undecodable or zero-frame file.
    """
    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(f"video file not found: {path}")
    if path.stat().st_size == 0:
        raise VideoDecodeError(f"video file is empty (0 bytes): {path}")
    errors = []
    for decoder in (_decode_pyav_any_order, _decode_decord):
        try:
            ts, get = decoder(path, size, max_seconds)
            _, src = video_ticks(ts, fps, max_seconds)
            frames = get(src)
            break
        except VideoDecodeError:
            raise
        except Exception as e:  # noqa: BLE001 - decoders raise library-specific errors; we report them in one line
            errors.append(f"{decoder.__name__[8:].removesuffix('_any_order')}: {one_line(e)}")
    else:
        raise VideoDecodeError(f"cannot decode video {path.name} ({'; '.join(errors)})")
    return frames


class VideoFrameSource(FrameSource):
    """A session video file; frame timestamps (unixtime ms) = ``start_ms`` + the decoder's frame times."""

    name = "video"

    def __init__(self, path: str | os.PathLike, start_ms: int, size: int = SIZE, max_gap_ms: int = MAX_GAP_MS):
        import decord

        self.path = Path(path)
        self.size = size
        self.max_gap_ms = max_gap_ms
        try:
            self._vr = decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=1)
            n = len(self._vr)
        except Exception as e:  # noqa: BLE001
            raise VideoDecodeError(f"cannot open video {self.path}: {one_line(e)}") from None
        if n == 0:
            raise VideoDecodeError(f"video has zero frames: {self.path}")
        ts = np.asarray(self._vr.get_frame_timestamp(np.arange(n)))[:, 0]
        self.ts_ms = int(start_ms) + np.round(ts * 1000).astype(np.int64)
        self._box: Letterbox | None = None

    def span_ms(self) -> tuple[int, int]:
        return int(self.ts_ms[0]), int(self.ts_ms[-1])

    def clip(self, t0_ms: int, n: int = CLIP_FRAMES, fps: int = FPS) -> np.ndarray:
        idx = resample_indices(self.ts_ms, tick_times(t0_ms, n, fps), self.max_gap_ms, f"video {self.path.name}")
        uniq, inverse = np.unique(idx, return_inverse=True)
        try:
            raw = self._vr.get_batch([int(i) for i in uniq]).asnumpy()
        except Exception as e:  # noqa: BLE001
            raise CorruptFrameError(f"cannot decode frames of {self.path}: {one_line(e)}") from None
        if self._box is None:
            self._box = Letterbox.for_shape(raw.shape[2], raw.shape[1], self.size)
        return np.stack([self._box.apply(f) for f in raw])[inverse]


# ----------------------------------------------------------------------------------------------------------- pose
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


class PoseFrameSource(FrameSource):
    """Skeleton frames rendered from 2D keypoints (N,17,3) with unixtime-ms timestamps (N,)."""

    name = "pose"

    def __init__(self, ts_ms: np.ndarray, kpts: np.ndarray, size: int = SIZE, max_gap_ms: int = MAX_GAP_MS,
                 cache_frames: int = 256):
        ts_ms = np.asarray(ts_ms, dtype=np.int64)
        kpts = np.asarray(kpts, dtype=np.float32)
        if len(ts_ms) == 0 or kpts.shape != (len(ts_ms), 17, 3):
            raise FrameError(f"keypoints must be (N,17,3) with N={len(ts_ms)} timestamps, got {kpts.shape}")
        order = np.argsort(ts_ms, kind="stable")
        self.ts_ms, self.kpts = ts_ms[order], kpts[order]
        self.size = size
        self.max_gap_ms = max_gap_ms
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_frames = cache_frames

    def span_ms(self) -> tuple[int, int]:
        return int(self.ts_ms[0]), int(self.ts_ms[-1])

    def source_indices(self, t0_ms: int, n: int = CLIP_FRAMES, fps: int = FPS) -> np.ndarray:
        """Index of the keypoint frame shown at each output tick (for keypoint-based motion)."""
        return resample_indices(self.ts_ms, tick_times(t0_ms, n, fps), self.max_gap_ms, "keypoints")

    def frame(self, i: int) -> np.ndarray:
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        img = render_pose(self.kpts[i], self.size)
        self._cache[i] = img
        if len(self._cache) > self._cache_frames:
            self._cache.popitem(last=False)
        return img

    def clip(self, t0_ms: int, n: int = CLIP_FRAMES, fps: int = FPS) -> np.ndarray:
        return np.stack([self.frame(int(i)) for i in self.source_indices(t0_ms, n, fps)])


# -------------------------------------------------------------------------------------------------------- helpers
SOURCE_KINDS = ("auto", "rgb", "pose")


def open_source(root, user: str, session: str, kind: str = "auto") -> FrameSource:
    """The frame source of a session: ``auto`` = rgb frames, else video, else pose; ``rgb`` = frames, else video.

    Raises openpack.OpenPackError (one line) when the session has no stream of the requested kind.
    """
    from . import openpack

    if kind not in SOURCE_KINDS:
        raise ValueError(f"unknown frame source {kind!r}; choose one of {', '.join(SOURCE_KINDS)}")
    streams = openpack.available_streams(root, user, session)
    if kind in ("auto", "rgb"):
        if streams.get("rgb") is not None:
            ts, paths = openpack.rgb_frames(root, user, session)
            return RgbFrameSource(ts, paths)
        if streams.get("video") is not None:
            return VideoFrameSource(streams["video"], openpack.video_start_ms(root, user, session))
        if kind == "rgb":
            raise openpack.OpenPackError(f"{user}/{session}: no Kinect RGB frames or video under {root}")
    if streams.get("kpt_json") is not None or streams.get("kpt_csv") is not None:
        ts, kpts = openpack.load_keypoints(root, user, session)
        return PoseFrameSource(ts, kpts)
    raise openpack.OpenPackError(f"{user}/{session}: no RGB frames, video or 2D keypoints under {root}")


def to_clip(frames: np.ndarray, n: int = CLIP_FRAMES, min_frames: int = MIN_CLIP_FRAMES) -> np.ndarray:
    """Exactly n frames from a decoded upload (25 fps), by one fixed rule that serve.py and tests rely on.

    * longer than n: the FIRST n frames (the first 5 s), so clip frame i is frame i of the upload and the
      predicted frame span maps straight onto the uploaded video;
    * shorter than n but at least ``min_frames`` (2 s): padded by repeating the last frame (a still tail);
    * fewer than ``min_frames``: FrameError (too little to judge a 5-s operation span).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise FrameError(f"expected frames of shape (T,H,W,3), got {frames.shape}")
    t = frames.shape[0]
    if t < min(min_frames, n):
        raise FrameError(f"clip too short: {t} frames ({t / FPS:.2f} s at {FPS} fps); need at least "
                         f"{min(min_frames, n)} ({min(min_frames, n) / FPS:.1f} s)")
    if t >= n:
        return frames[:n]
    pad = np.repeat(frames[-1:], n - t, axis=0)
    return np.concatenate([frames, pad], axis=0)
