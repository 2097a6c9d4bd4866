"""Frame sources: every visual stream of a session becomes 25-fps, 336x336 RGB uint8 clips.

Sources (``open_source(root, user, session, kind)``; ``.name`` is recorded per clip as ``ClipRecord.source``):
  ``rgb``   Kinect colour frames, masked JPEGs at ~15 Hz named by their timestamp (openpack.rgb_frames).
  ``video`` a plain video file of the session (openpack.available_streams()["video"]); its first frame is at
            openpack.video_start_ms (sidecar JSON, else the session's first annotation), later frames at the
            decoder's frame timestamps.
  ``pose``  skeleton frames from Kinect 2D keypoints (openpack.load_keypoints: mmpose JSON or Zenodo CSV), each clip
            rendered by skeleton.render_pose_clip as the run's ``PoseRender`` says (default: person-centred).
  ``kind="auto"`` takes rgb frames, else the video, else pose; ``kind="rgb"`` means camera pixels (frames, else video).

Every source puts its frames on the time grid (timegrid.py) and letterboxes them (letterbox.py), as uploads are
(video.py): a tick farther than ``max_gap_ms`` from its frame (missing frames, stream ended) raises FrameGapError.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np

from ..io_utils import one_line
from ..schema import CLIP_FRAMES, FPS
from . import openpack
from .errors import CorruptFrameError, FrameError, VideoDecodeError
from .letterbox import SIZE, Letterbox, letterbox
from .sampling import motion_from_keypoints
from .skeleton import PoseRender, SkeletonClip
from .timegrid import MAX_GAP_MS, resample_indices, tick_times


class FrameSource:
    """Base class: ``name`` and ``clip(t0_ms, n, fps) -> (n, 336, 336, 3) uint8``."""

    name = "base"

    def clip(self, t0_ms: int, n: int = CLIP_FRAMES, fps: int = FPS) -> np.ndarray:  # pragma: no cover - interface
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
            raise VideoDecodeError(f"cannot open video {self.path}: {one_line(e, 200)}") from None
        if n == 0:
            raise VideoDecodeError(f"video has zero frames: {self.path}")
        ts = np.asarray(self._vr.get_frame_timestamp(np.arange(n)))[:, 0]
        self.ts_ms = int(start_ms) + np.round(ts * 1000).astype(np.int64)
        self._box: Letterbox | None = None

    def clip(self, t0_ms: int, n: int = CLIP_FRAMES, fps: int = FPS) -> np.ndarray:
        idx = resample_indices(self.ts_ms, tick_times(t0_ms, n, fps), self.max_gap_ms, f"video {self.path.name}")
        uniq, inverse = np.unique(idx, return_inverse=True)
        try:
            raw = self._vr.get_batch([int(i) for i in uniq]).asnumpy()
        except Exception as e:  # noqa: BLE001
            raise CorruptFrameError(f"cannot decode frames of {self.path}: {one_line(e, 200)}") from None
        if self._box is None:
            self._box = Letterbox.for_shape(raw.shape[2], raw.shape[1], self.size)
        return np.stack([self._box.apply(f) for f in raw])[inverse]



class PoseFrameSource(FrameSource):
    """Skeleton clips rendered from 2D keypoints (N,17,3) with unixtime-ms timestamps (N,): one window per clip
    (``skeleton.render_pose_clip``), trails from the keypoint frames before each shown one."""

    name = "pose"

    def __init__(self, ts_ms: np.ndarray, kpts: np.ndarray, size: int = SIZE, max_gap_ms: int = MAX_GAP_MS,
                 render: PoseRender | None = None):
        ts_ms = np.asarray(ts_ms, dtype=np.int64)
        kpts = np.asarray(kpts, dtype=np.float32)
        if len(ts_ms) == 0 or kpts.shape != (len(ts_ms), 17, 3):
            raise FrameError(f"keypoints must be (N,17,3) with N={len(ts_ms)} timestamps, got {kpts.shape}")
        order = np.argsort(ts_ms, kind="stable")
        self.ts_ms, self.kpts = ts_ms[order], kpts[order]
        self.size = size
        self.max_gap_ms = max_gap_ms
        self.render = render or PoseRender()

    def source_indices(self, t0_ms: int, n: int = CLIP_FRAMES, fps: int = FPS, hold_last: bool = False) -> np.ndarray:
        """Index of the keypoint frame shown at each output tick (for keypoint-based motion). ``hold_last``: ticks
        after the last keypoint frame show it (an upload shorter than the clip: ``video.to_clip``'s still tail)."""
        ticks = tick_times(t0_ms, n, fps)
        if hold_last:
            ticks = np.minimum(ticks, self.ts_ms[-1])
        return resample_indices(self.ts_ms, ticks, self.max_gap_ms, "keypoints")

    def clip(self, t0_ms: int, n: int = CLIP_FRAMES, fps: int = FPS) -> np.ndarray:
        return self.skeleton_clip(t0_ms, n, fps).frames()

    def skeleton_clip(self, t0_ms: int, n: int = CLIP_FRAMES, fps: int = FPS, hold_last: bool = False
                      ) -> SkeletonClip:
        """The clip starting at ``t0_ms``, not drawn yet (``skeleton.SkeletonClip``: one window, trails from the
        keypoint frames before each shown one, the joints' motion for the frame sampler)."""
        idx = self.source_indices(t0_ms, n, fps, hold_last)
        lo = max(0, int(idx.min()) - self.render.trail - self.render.smooth)  # trails and smoothing look around
        hi = min(len(self.kpts), int(idx.max()) + self.render.smooth + 1)
        return SkeletonClip(self.kpts[lo:hi], idx - lo, self.render, self.size, motion_from_keypoints(self.kpts[idx]))

    def clip_and_motion(self, t0_ms: int, n: int = CLIP_FRAMES, fps: int = FPS, hold_last: bool = False
                        ) -> tuple[np.ndarray, np.ndarray]:
        """The clip and the joints' motion the frame sampler uses for skeleton clips (training, timeline, serving)."""
        sc = self.skeleton_clip(t0_ms, n, fps, hold_last)
        return sc.frames(), sc.motion


SOURCE_KINDS = ("auto", "rgb", "pose")


def open_source(root, user: str, session: str, kind: str = "auto", pose_render: PoseRender | None = None) -> FrameSource:
    """The frame source of a session: ``auto`` = rgb frames, else video, else pose; ``rgb`` = frames, else video.

    Raises openpack.OpenPackError (one line) when the session has no stream of the requested kind.
    """

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
        return PoseFrameSource(ts, kpts, render=pose_render)
    raise openpack.OpenPackError(f"{user}/{session}: no RGB frames, video or 2D keypoints under {root}")
