"""Camera frames -> OpenPack-shaped 2D keypoints, so a skeleton-trained model sees skeletons when served video.

OpenPack's public keypoints are COCO-17 (x, y, score) in the Kinect colour frame (1280x720 px) at 15 Hz, from HRNet.
``estimate_video`` makes the same from any video: frames decoded at ``KEYPOINT_HZ`` on the letterboxed square grid
(``video.decode_video``/``iter_video``), one person tracked by MediaPipe Pose (0.10.21's legacy ``solutions`` API, the
"full" model inside the wheel, Apache-2.0 code and model; runs offline), its 33 landmarks mapped to COCO-17 (the
subject's own left/right, as COCO), ``visibility`` as the score, and the coordinates placed in a 1280x720 "Kinect"
canvas: the video letterboxed into it, so the renderer's Kinect-pixel settings (window sizes, limb widths) mean the
same on an upload as on OpenPack. ``KeypointTrack.source()`` then renders clips exactly as the data pipeline renders
OpenPack's keypoints (``sources.PoseFrameSource``).

MediaPipe finds one person, and misses one shorter than about half the frame (its detector sees a 224-px image).
OpenPack's worker fills ~45 % of the frame height, so when the whole frame gives a person in fewer than
``min_found_share`` of the frames, overlapping crops are searched on a few frames (the detector then sees the worker
larger) and the video is tracked again inside the best crop; a user's region of interest (``roi``) skips the search.
A frame counts as showing a worker only if a shoulder and ``MIN_JOINTS`` upper-body joints are confident: a lone
hand, which MediaPipe can turn into a whole "person", does not pass.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np

from .errors import FrameError, VideoDecodeError
from .letterbox import KINECT_H, KINECT_W, Letterbox
from .video import decode_video, iter_video

KEYPOINT_HZ = 15  # OpenPack's Kinect keypoint rate (frames per second)
POSE_SIDE = 640  # px: the square frames the estimator gets (1280x720 -> 640x360 content: MediaPipe crops the person
#                  and resizes it to 256 px itself, so a larger frame buys nothing but decoding time)
# MediaPipe's 33 landmarks -> COCO-17 (nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles)
MP_TO_COCO = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)
UPPER_BODY = tuple(range(13))
WORKER_SCORE = 0.5  # a joint "seen" for the worker test
MIN_JOINTS = 4  # upper-body joints seen (a shoulder among them) for a frame to show a worker
MEDIAPIPE_PIN = "mediapipe==0.10.21"  # later versions dropped mp.solutions and ship no model
MODEL_COMPLEXITY = 1  # the "full" landmark model, the only one inside the wheel (lite and heavy are downloaded)


class PoseUnavailableError(FrameError):
    """The pose estimator is not installed (the message says what to install)."""


class NoWorkerError(FrameError):
    """Too few frames show a person for the skeleton model to judge (the message gives the share)."""


@dataclass(frozen=True)
class PoseEstimateConfig:
    """How keypoints are estimated from video (serving's ``POSE_*`` settings)."""

    min_detection: float = 0.5  # MediaPipe's person-detector threshold
    min_tracking: float = 0.5  # MediaPipe's landmark-tracking threshold (below it: detect again)
    min_found_share: float = 0.5  # share of keypoint frames that must show a worker (else NoWorkerError / crop search)
    roi: tuple[float, float, float, float] | None = None  # (x, y, w, h) as shares of the frame: where the worker is
    facing_camera: bool = True  # the worker faces the camera most of the clip, as OpenPack's worker faces the Kinect
    #                             across the packing table: a track whose left shoulder is mostly on the image's left
    #                             is mirrored left<->right (MediaPipe takes a masked or hidden face for a back view)
    side: int = POSE_SIDE

    def __post_init__(self):
        if not 0.0 <= self.min_found_share <= 1.0:
            raise FrameError(f"pose min_found_share must be in [0, 1], got {self.min_found_share}")
        if self.roi is not None:
            x, y, w, h = self.roi
            if not (0 <= x < 1 and 0 <= y < 1 and 0 < w <= 1 - x + 1e-9 and 0 < h <= 1 - y + 1e-9):
                raise FrameError(f"pose roi (x, y, w, h) must be shares of the frame inside it, got {self.roi}")


def parse_roi(value: str) -> tuple[float, float, float, float]:
    """"x,y,w,h" (shares of the frame) -> a tuple; ValueError naming the problem."""
    try:
        roi = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise ValueError(f"must be four numbers x,y,w,h (shares of the frame), got {value!r}") from None
    if len(roi) != 4:
        raise ValueError(f"must be four numbers x,y,w,h (shares of the frame), got {value!r}")
    try:
        PoseEstimateConfig(roi=roi)
    except FrameError as e:
        raise ValueError(str(e)) from None
    return roi


def _mediapipe():
    try:
        import mediapipe as mp
    except ImportError as e:
        raise PoseUnavailableError(f"pose estimation needs {MEDIAPIPE_PIN} (pip install --no-deps {MEDIAPIPE_PIN}, "
                                   f"see requirements-nodeps.txt): {e}") from None
    if not hasattr(mp, "solutions"):
        raise PoseUnavailableError(f"mediapipe {getattr(mp, '__version__', '?')} has no mp.solutions: install "
                                   f"{MEDIAPIPE_PIN}")
    return mp


def require_estimator() -> str:
    """The installed estimator's version, without importing it (servers check at start-up); PoseUnavailableError
    naming the pin when it is missing or a version without the bundled model."""
    from importlib import metadata

    try:
        version = metadata.version("mediapipe")
    except metadata.PackageNotFoundError:
        raise PoseUnavailableError(f"this run serves skeleton frames, which needs the pose estimator {MEDIAPIPE_PIN} "
                                   f"(pip install --no-deps {MEDIAPIPE_PIN}; requirements-nodeps.txt)") from None
    if version != MEDIAPIPE_PIN.split("==")[1]:
        raise PoseUnavailableError(f"mediapipe {version} is installed; this code needs {MEDIAPIPE_PIN} (later "
                                   "versions have no mp.solutions and bundle no model)")
    return version


COCO_MIRROR = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)  # left <-> right


def face_camera(kpts: np.ndarray) -> tuple[np.ndarray, bool]:
    """The track mirrored left<->right when, over the frames that show a worker, the subject's left shoulder is
    mostly on the image's left (a back view); one decision per track, so a worker who turns away for a moment keeps
    their sides. Returns (keypoints, mirrored)."""
    k = np.asarray(kpts)
    seen = worker_seen(k) & (k[:, 5, 2] >= WORKER_SCORE) & (k[:, 6, 2] >= WORKER_SCORE)
    if not seen.any() or np.median(k[seen, 5, 0] - k[seen, 6, 0]) >= 0:
        return k, False
    return k[:, COCO_MIRROR], True


def warm_tracker(cfg: PoseEstimateConfig = PoseEstimateConfig()) -> None:
    """Build this process's trackers (the MediaPipe graph: ~1 s on the first use) before the first upload needs them;
    decoder processes of skeleton runs call it once at start-up."""
    blank = np.zeros((cfg.side, cfg.side, 3), np.uint8)
    PoseTracker.shared(cfg)(blank)
    PoseTracker.shared(cfg, static=True)(blank)


def worker_seen(kpts: np.ndarray) -> np.ndarray:
    """(N,) bool: the keypoint frame shows a worker (a shoulder and ``MIN_JOINTS`` upper-body joints confident)."""
    k = np.asarray(kpts)
    ok = np.nan_to_num(k[:, UPPER_BODY, 2]) >= WORKER_SCORE
    return (ok.sum(1) >= MIN_JOINTS) & (ok[:, 5] | ok[:, 6])


class PoseTracker:
    """One MediaPipe Pose in video mode (it tracks the person from frame to frame), or detecting on every frame
    (``static``). ``PoseTracker.shared`` keeps one per process and setting: building one costs ~0.4 s."""

    _shared: dict = {}

    @classmethod
    def shared(cls, cfg: "PoseEstimateConfig", static: bool = False) -> "PoseTracker":
        """This process's tracker for (thresholds, static), its tracking state reset (a new video starts)."""
        key = (cfg.min_detection, cfg.min_tracking, static)
        t = cls._shared.get(key)
        if t is None:
            t = cls._shared[key] = cls(cfg, static)
        else:
            t._pose.reset()
        return t

    def __init__(self, cfg: PoseEstimateConfig = PoseEstimateConfig(), static: bool = False):
        mp = _mediapipe()
        self._pose = mp.solutions.pose.Pose(static_image_mode=static, model_complexity=MODEL_COMPLEXITY,
                                             smooth_landmarks=not static, enable_segmentation=False,
                                             min_detection_confidence=cfg.min_detection,
                                             min_tracking_confidence=cfg.min_tracking)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """(17, 3) COCO keypoints in ``rgb``'s pixels; all zeros when nobody is found. Joints outside the image get
        score 0 (MediaPipe guesses them)."""
        h, w = rgb.shape[:2]
        res = self._pose.process(np.ascontiguousarray(rgb))
        out = np.zeros((17, 3), dtype=np.float32)
        if res.pose_landmarks is None:
            return out
        lm = res.pose_landmarks.landmark
        for c, m in enumerate(MP_TO_COCO):
            p = lm[m]
            inside = 0.0 <= p.x <= 1.0 and 0.0 <= p.y <= 1.0
            out[c] = (p.x * w, p.y * h, p.visibility if inside else 0.0)
        return out

    def close(self) -> None:
        self._pose.close()


def _crop_px(roi: tuple[float, float, float, float], w: int, h: int) -> tuple[int, int, int, int]:
    x, y, cw, ch = roi
    x0, y0 = int(round(x * w)), int(round(y * h))
    return x0, y0, max(1, min(w - x0, int(round(cw * w)))), max(1, min(h - y0, int(round(ch * h))))


PROBE_FRAMES = 15  # keypoint frames (1 s) after which a whole-frame track that has seen no worker gives up early


def track_frames(frames: Iterable[np.ndarray], cfg: PoseEstimateConfig = PoseEstimateConfig(),
                 roi: tuple[float, float, float, float] | None = None, give_up: bool = False) -> np.ndarray | None:
    """(N,17,3) keypoints of the frames in their own pixels, tracked inside ``roi`` (shares of the frame) if given.
    ``give_up``: None when the first ``PROBE_FRAMES`` frames show no worker (the caller searches crops instead of
    tracking a worker too small to be found to the end)."""
    out = []
    tracker = PoseTracker.shared(cfg)
    for i, f in enumerate(frames):
        if give_up and i == PROBE_FRAMES and not worker_seen(np.stack(out)).any():
            return None
        if roi is None:
            out.append(tracker(f))
            continue
        x0, y0, cw, ch = _crop_px(roi, f.shape[1], f.shape[0])
        k = tracker(f[y0:y0 + ch, x0:x0 + cw])
        k[:, 0] += x0
        k[:, 1] += y0
        out.append(k)
    return np.stack(out) if out else np.zeros((0, 17, 3), np.float32)


SEARCH_CROPS = tuple((x, y, 0.6, 0.6) for y in (0.0, 0.2, 0.4) for x in (0.0, 0.2, 0.4))  # 3x3 overlapping crops
SEARCH_FRAMES = 3  # frames probed by the crop search (spread over the clip)


def search_roi(frames: list[np.ndarray], cfg: PoseEstimateConfig = PoseEstimateConfig()
               ) -> tuple[float, float, float, float] | None:
    """Where a worker too small for the whole-frame detector stands: the crop (of ``SEARCH_CROPS``) in which the most
    probe frames show a worker, grown around the worker it found (2x its box, at least half the frame, square in
    pixels where the frame allows). None when no crop shows one."""
    if not frames:
        return None
    h, w = frames[0].shape[:2]
    probes = [frames[i] for i in np.linspace(0, len(frames) - 1, min(SEARCH_FRAMES, len(frames))).astype(int)]
    best, best_n, boxes = None, 0, []
    det = PoseTracker.shared(cfg, static=True)
    for roi in SEARCH_CROPS:
        x0, y0, cw, ch = _crop_px(roi, w, h)
        found = []
        for f in probes:
            k = det(f[y0:y0 + ch, x0:x0 + cw])
            if worker_seen(k[None])[0]:
                ok = k[:, 2] >= WORKER_SCORE
                found.append((k[ok, 0].min() + x0, k[ok, 1].min() + y0, k[ok, 0].max() + x0, k[ok, 1].max() + y0))
        if len(found) > best_n:
            best, best_n, boxes = roi, len(found), found
    if best is None:
        return None
    b = np.asarray(boxes, dtype=np.float64)
    cx, cy = (b[:, 0].min() + b[:, 2].max()) / 2, (b[:, 1].min() + b[:, 3].max()) / 2
    side = max(2 * (b[:, 2].max() - b[:, 0].min()), 2 * (b[:, 3].max() - b[:, 1].min()), 0.5 * min(w, h))
    cw, ch = min(side, w), min(side, h)
    x0, y0 = min(max(cx - cw / 2, 0), w - cw), min(max(cy - ch / 2, 0), h - ch)
    return (float(x0 / w), float(y0 / h), float(cw / w), float(ch / h))


@dataclass
class KeypointTrack:
    """Keypoints of a video in OpenPack's shape: (N,17,3) in a 1280x720 Kinect canvas at 15 Hz, from t = 0 ms."""

    kpts: np.ndarray
    ts_ms: np.ndarray
    frame_w: int  # the video's own frame size (px)
    frame_h: int
    roi: tuple | None = None  # where the worker was tracked (shares of the frame), None = the whole frame
    searched: bool = False  # the crop search ran (the whole frame showed too few workers)
    mirrored: bool = False  # left and right were swapped to face the camera (PoseEstimateConfig.facing_camera)
    stats: dict = field(default_factory=dict)

    @property
    def seen(self) -> np.ndarray:
        return worker_seen(self.kpts)

    @property
    def found_share(self) -> float:
        return float(self.seen.mean()) if len(self.kpts) else 0.0

    def summary(self) -> dict:
        """What serving reports (headers, /timeline's result)."""
        seen = self.seen
        upper = self.kpts[seen][:, UPPER_BODY, 2] if seen.any() else np.zeros((0, 13))
        return {"keypoint_frames": int(len(self.kpts)), "worker_share": round(self.found_share, 3),
                "mean_upper_body_score": round(float(upper.mean()), 3) if upper.size else 0.0,
                "roi": None if self.roi is None else [round(v, 3) for v in self.roi], "crop_search": self.searched,
                "mirrored": self.mirrored}

    def source(self, render=None):
        """A ``PoseFrameSource`` over this track: clips rendered as the data pipeline renders OpenPack keypoints."""
        from .sources import PoseFrameSource  # deferred: would load pandas (~0.2 s) on import

        return PoseFrameSource(self.ts_ms, self.kpts, render=render)


def to_kinect(kpts: np.ndarray, frame_w: int, frame_h: int) -> np.ndarray:
    """Keypoints in a (frame_w x frame_h) video's pixels -> the 1280x720 canvas the video is letterboxed into."""
    scale = min(KINECT_W / frame_w, KINECT_H / frame_h)
    off = np.array([(KINECT_W - frame_w * scale) / 2, (KINECT_H - frame_h * scale) / 2])
    out = np.array(kpts, dtype=np.float32, copy=True)
    out[..., :2] = out[..., :2] * scale + off
    return out


def _square_to_video(kpts: np.ndarray, box: Letterbox) -> np.ndarray:
    out = np.array(kpts, dtype=np.float32, copy=True)
    out[..., 0] = (out[..., 0] - box.off_x) / box.scale
    out[..., 1] = (out[..., 1] - box.off_y) / box.scale
    return out


def track_from_square_frames(frames: list[np.ndarray], frame_w: int, frame_h: int,
                             cfg: PoseEstimateConfig = PoseEstimateConfig()) -> KeypointTrack:
    """Keypoints of frames letterboxed to ``cfg.side`` squares (the decoder's grid) from a (frame_w x frame_h) video.

    The user's ``roi`` and the crop search are shares of the VIDEO frame; they are mapped onto the square here."""
    box = Letterbox.for_shape(frame_w, frame_h, cfg.side)

    def square_roi(roi):
        x, y, w, h = roi
        return ((box.off_x + x * box.new_w) / box.size, (box.off_y + y * box.new_h) / box.size,
                w * box.new_w / box.size, h * box.new_h / box.size)

    content = (box.off_x / box.size, box.off_y / box.size, box.new_w / box.size, box.new_h / box.size)
    roi_video = cfg.roi
    search = roi_video is None and cfg.min_found_share > 0
    k = track_frames(frames, cfg, square_roi(roi_video) if roi_video else content, give_up=search)
    searched = False
    if search and (k is None or (len(k) and worker_seen(k).mean() < cfg.min_found_share)):
        searched = True
        crops = [f[box.off_y:box.off_y + box.new_h, box.off_x:box.off_x + box.new_w] for f in frames]
        found = search_roi(crops, cfg)
        if found is not None:
            k2 = track_frames(frames, cfg, square_roi(found))
            if k is None or worker_seen(k2).mean() > worker_seen(k).mean():
                k, roi_video = k2, found
        if k is None:  # nobody in the first second nor in any crop: the whole frame, to the end
            k = track_frames(frames, cfg, content)
    mirrored = False
    if cfg.facing_camera:
        k, mirrored = face_camera(k)
    kinect = to_kinect(_square_to_video(k, box), frame_w, frame_h)
    ts = np.round(np.arange(len(kinect)) * 1000.0 / KEYPOINT_HZ).astype(np.int64)
    return KeypointTrack(kinect, ts, frame_w, frame_h, roi_video, searched, mirrored)


def video_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of a video's first stream, from its header."""
    import av

    try:
        with av.open(str(path), metadata_errors="ignore") as c:
            ctx = c.streams.video[0].codec_context
            return int(ctx.width), int(ctx.height)
    except Exception as e:  # noqa: BLE001 - libav errors come in many types
        raise VideoDecodeError(f"cannot read the frame size of {os.fspath(path)}: {type(e).__name__}") from None


def estimate_video(path: str | os.PathLike, cfg: PoseEstimateConfig = PoseEstimateConfig(),
                   max_seconds: float | None = None, size: tuple[int, int] | None = None) -> KeypointTrack:
    """A video file -> its ``KeypointTrack`` (frames at 15 Hz by timestamp, as ``video.decode_video`` picks them)."""

    w, h = size or video_size(path)
    t0 = time.perf_counter()
    frames = decode_video(path, fps=KEYPOINT_HZ, size=cfg.side, max_seconds=max_seconds)
    t1 = time.perf_counter()
    track = track_from_square_frames(list(frames), w, h, cfg)
    track.stats = {"decode_s": round(t1 - t0, 3), "pose_s": round(time.perf_counter() - t1, 3)}
    return track


def estimate_recording(path: str | os.PathLike, cfg: PoseEstimateConfig = PoseEstimateConfig(),
                       size: tuple[int, int] | None = None, on_chunk=None, chunk_s: float = 20.0) -> KeypointTrack:
    """A whole recording's ``KeypointTrack``, tracked chunk by chunk (``iter_video_keypoints``: bounded memory);
    ``on_chunk(seconds_done)`` reports progress after each ``chunk_s`` seconds of video (~6 s of work per 20 s)."""
    t0 = time.perf_counter()
    parts = []
    for tr in iter_video_keypoints(path, cfg, size, chunk_s):
        parts.append(tr)
        if on_chunk is not None:
            on_chunk(float(tr.ts_ms[-1]) / 1000 + 1 / KEYPOINT_HZ)
    if not parts:
        raise VideoDecodeError(f"no frame could be decoded from {os.fspath(path)}")
    first = parts[0]
    out = KeypointTrack(np.concatenate([p.kpts for p in parts]), np.concatenate([p.ts_ms for p in parts]),
                        first.frame_w, first.frame_h, first.roi, any(p.searched for p in parts),
                        any(p.mirrored for p in parts))
    out.stats = {"pose_s": round(time.perf_counter() - t0, 3)}
    return out


def iter_video_keypoints(path: str | os.PathLike, cfg: PoseEstimateConfig = PoseEstimateConfig(),
                         size: tuple[int, int] | None = None, chunk_s: float = 20.0) -> Iterator[KeypointTrack]:
    """A long recording's keypoints in chunks of ``chunk_s`` seconds (bounded memory: 20 s of 640-px frames at 15 Hz
    is 370 MB; only the keypoints are kept). The crop search, if needed, runs
    on the first chunk and its crop serves the whole recording."""

    w, h = size or video_size(path)
    per = max(1, int(chunk_s * KEYPOINT_HZ))
    buf: list[np.ndarray] = []
    done = 0

    def chunk() -> KeypointTrack:
        nonlocal cfg, done
        tr = track_from_square_frames(buf, w, h, cfg)
        cfg = replace(cfg, roi=cfg.roi or tr.roi)  # a crop found once serves the rest of the recording
        tr.ts_ms = tr.ts_ms + round(done * 1000 / KEYPOINT_HZ)
        done += len(buf)
        buf.clear()
        return tr

    for f in iter_video(path, fps=KEYPOINT_HZ, size=cfg.side):
        buf.append(f)
        if len(buf) == per:
            yield chunk()
    if buf:
        yield chunk()
