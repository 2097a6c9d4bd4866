"""The time grid: every stream becomes frames at 25 fps by timestamps, never by counting frames.

Output frame i of a clip starting at t0 (ms) is shown at ``t0 + round(1000*i/fps)`` ms (``tick_times``), and shows
the last source sample whose timestamp is at or before that tick (``at_or_before``; the first sample for ticks before
it). 15 Hz -> 25 fps therefore repeats frames by their timestamps. The same two rules label the clip's frames with
operations (clips.frame_labels), choose the frames of a session stream (sources.py), of an uploaded video
(``video_ticks``) and the keypoint frames of the synthetic root.
"""
from __future__ import annotations

import numpy as np

from ..schema import CLIP_FRAMES, FPS
from .errors import FrameGapError

MAX_GAP_MS = 250  # largest allowed distance (ms) from an output tick to the source frame shown (15 Hz step = 67 ms)


def tick_times(t0_ms: int, n: int = CLIP_FRAMES, fps: int = FPS) -> np.ndarray:
    """Timestamps (ms, int64) of the n output frames of a clip starting at t0_ms."""
    return int(t0_ms) + np.round(np.arange(n) * 1000.0 / fps).astype(np.int64)


def at_or_before(times, t, clip: bool = True) -> np.ndarray:
    """Index of the last of the sorted ``times`` at or before each ``t``. ``clip=True``: ticks before the first
    sample get the first one (0); ``clip=False``: they get -1 (callers that must tell "before the stream")."""
    idx = np.searchsorted(np.asarray(times), t, side="right") - 1
    return np.clip(idx, 0, len(times) - 1) if clip else idx


def resample_indices(src_ts_ms: np.ndarray, ticks_ms: np.ndarray, max_gap_ms: int | None = MAX_GAP_MS,
                     what: str = "stream") -> np.ndarray:
    """For each tick, the index of the source frame shown (``at_or_before``).

    Raises FrameGapError when a tick is more than ``max_gap_ms`` away from the frame chosen for it.
    """
    src = np.asarray(src_ts_ms, dtype=np.int64)
    if len(src) == 0:
        raise FrameGapError(f"{what}: no frames")
    idx = at_or_before(src, ticks_ms)
    if max_gap_ms is not None:
        gap = np.abs(ticks_ms - src[idx])
        worst = int(np.argmax(gap))
        if gap[worst] > max_gap_ms:
            raise FrameGapError(
                f"{what}: no frame within {max_gap_ms} ms of t={int(ticks_ms[worst])} ms "
                f"(nearest {int(gap[worst])} ms away; missing frames or outside the recording)"
            )
    return idx


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
    src = at_or_before(ts, ticks + 1e-6)  # 1 µs: float32 decoder timestamps
    return ticks, order[src]

