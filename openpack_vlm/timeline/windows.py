"""Sliding 5-s windows over a long recording, in bounded memory.

A recording is a stream of 25-fps frames (``video.iter_video`` for a camera file; a session's ``FrameSource`` for
OpenPack data). Window w starts at tick ``w * stride`` and holds the next 125 frames; it is exactly the clip
``/predict`` would answer for a video cut at that time (``video.to_clip`` of the cut). The last window is aligned to
the end of the stream (its start is off the stride grid) so every second of the recording is inside some window; a
stream shorter than 5 s gives one window padded by ``to_clip``'s rule, and one shorter than 2 s none (FrameError).
Memory: the last 125 frames (42 MB at 336x336) plus the window handed out, whatever the recording's length.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from ..data.pose_estimate import KEYPOINT_HZ
from ..data.skeleton import PoseRender, SkeletonClip
from ..data.sources import PoseFrameSource
from ..data.video import MIN_CLIP_FRAMES, to_clip
from ..schema import CLIP_FRAMES, FPS


@dataclass
class Window:
    index: int
    start_tick: int  # first frame of the window in the recording (25-fps ticks)
    frames: np.ndarray | SkeletonClip  # (125, H, W, 3) uint8; a skeleton clip is drawn when (and where) it is used
    padded: int = 0  # frames repeated at the end (a recording shorter than 5 s)
    motion: np.ndarray | None = None  # per-frame motion known from keypoints (skeleton sessions), else None


def stride_ticks(stride_s: float) -> int:
    """The stride in 25-fps ticks (at least one tick, at most a window: no second may be left out)."""
    ticks = int(round(float(stride_s) * FPS))
    if not 1 <= ticks <= CLIP_FRAMES:
        raise ValueError(f"stride must be between {1 / FPS:g} s and {CLIP_FRAMES / FPS:g} s, got {stride_s:g} s")
    return ticks


def iter_windows(frames: Iterable[np.ndarray], stride: int, n: int = CLIP_FRAMES) -> Iterator[Window]:
    """Windows of ``n`` frames every ``stride`` frames over a frame stream (see the module docstring)."""
    buf: deque = deque(maxlen=n)
    total = 0
    next_start = 0
    last_start = None
    for frame in frames:
        buf.append(frame)
        total += 1
        if total == next_start + n:
            yield Window(next_start // stride, next_start, np.stack(buf))
            last_start = next_start
            next_start += stride
    if total < min(MIN_CLIP_FRAMES, n) and last_start is None:
        to_clip(np.stack(buf) if buf else np.zeros((0, 1, 1, 3), np.uint8), n)  # raises FrameError naming the length
    if last_start is None:
        yield Window(0, 0, to_clip(np.stack(buf), n), padded=n - total)
    elif last_start + n < total:  # the tail after the last full window on the grid: one window ending at the end
        yield Window(last_start // stride + 1, total - n, np.stack(buf))


def expected_windows(n_ticks: int, stride: int, n: int = CLIP_FRAMES) -> int:
    """How many windows ``iter_windows`` gives for a stream of ``n_ticks`` frames (progress totals)."""
    if n_ticks <= n:
        return 1
    full = (n_ticks - n) // stride + 1
    return full + (1 if (full - 1) * stride + n < n_ticks else 0)


def session_windows(source, t0_ms: int, t1_ms: int, stride: int) -> Iterator[Window]:
    """Windows of a session, each rendered by the source as ONE clip (``source.clip(start, 125)``) — what the data
    pipeline gives a training clip (the skeleton renderer sizes its view per clip; skeleton clips carry their joints'
    motion for the frame sampler, as in data/pipeline.py, and are drawn only where the predictor samples them:
    ``SkeletonClip``) — on ``iter_windows``' grid."""

    n_ticks = int((t1_ms - t0_ms) * FPS // 1000)
    starts = [w * stride for w in range(max(0, (n_ticks - CLIP_FRAMES) // stride + 1))]
    if starts and starts[-1] + CLIP_FRAMES < n_ticks:
        starts.append(n_ticks - CLIP_FRAMES)
    if not starts:
        raise ValueError(f"session span of {n_ticks / FPS:.1f} s is shorter than one {CLIP_FRAMES / FPS:g}-s window")
    for i, s in enumerate(starts):
        t = t0_ms + round(s * 1000 / FPS)
        if isinstance(source, PoseFrameSource):  # drawn later, only the frames the predictor samples
            clip = source.skeleton_clip(t, n=CLIP_FRAMES)
            yield Window(i, s, clip, motion=clip.motion)
        else:
            yield Window(i, s, source.clip(t, n=CLIP_FRAMES))


def track_windows(track, stride: int, render: dict | None = None) -> Iterator[Window]:
    """Windows of a recording's keypoint track (skeleton runs; ``data.pose_estimate.KeypointTrack``), each rendered as
    one training clip with its joints' motion (``session_windows`` over the track's PoseFrameSource). A recording
    shorter than one window gives one window whose tail shows the last keypoint frame, as ``to_clip`` pads."""

    src = track.source(PoseRender.from_json(render) if render is not None else PoseRender())
    end_ms = int(track.ts_ms[-1]) + round(1000 / KEYPOINT_HZ)
    n_ticks = int(end_ms * FPS // 1000)
    if n_ticks >= CLIP_FRAMES:
        yield from session_windows(src, 0, end_ms, stride)
        return
    if n_ticks < MIN_CLIP_FRAMES:
        raise ValueError(f"recording of {n_ticks / FPS:.1f} s is shorter than {MIN_CLIP_FRAMES / FPS:g} s")
    clip = src.skeleton_clip(0, hold_last=True)
    yield Window(0, 0, clip, CLIP_FRAMES - n_ticks, motion=clip.motion)


def worker_share_per_second(track) -> np.ndarray:
    """Per second of the recording: the share of its keypoint frames that show a worker (``pose_estimate``'s test)."""
    seen = track.seen.astype(np.float64)
    sec = (np.asarray(track.ts_ms) // 1000).astype(np.int64)
    n = int(sec.max()) + 1 if len(sec) else 0
    count = np.bincount(sec, minlength=n)
    return np.bincount(sec, weights=seen, minlength=n) / np.maximum(count, 1)
