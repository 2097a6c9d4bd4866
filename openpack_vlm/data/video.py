"""Video decoding: a file -> (T, 336, 336, 3) uint8 RGB at 25 fps by frame timestamps, letterboxed.

``decode_video`` decodes with PyAV (one sequential pass, only the frames a tick shows converted; decord when PyAV
cannot decode the file). ``iter_video`` yields the same frames one 25-fps tick at a time in bounded memory (long
recordings: the timeline). ``to_clip`` turns any decoded upload into exactly 125 frames (rule in its docstring). The
frame choice is ``timegrid.video_ticks``; decord's random access (``VideoFrameSource`` in sources.py, used by the
pipeline on session videos) gives the same pixels (tests/test_frames.py).
"""
from __future__ import annotations

import heapq
import os
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..io_utils import one_line
from ..schema import CLIP_FRAMES, FPS
from .errors import FrameError, VideoDecodeError
from .letterbox import SIZE, Letterbox
from .timegrid import video_ticks

MIN_CLIP_FRAMES = 50  # to_clip: uploads shorter than 2 s (50 frames at 25 fps) are refused

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
    """``_decode_pyav``; when frame times go backwards, the decoder's output order is taken as the presentation
    order and the times, sorted, as its clock (what decord, the training pipeline's reader, does). Seen on a real
    camera file (tests/data/videos/box.mp4: packets with pts = dts although the stream reorders frames): the
    decoder's order is the smooth one (mean frame difference 1.9 vs 3.2 grey levels in pts order)."""
    try:
        return _decode_pyav(path, size, max_seconds)
    except _Unordered:
        ts, get = _decode_pyav(path, size, max_seconds, keep_all=True)
        return np.sort(ts), get


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
            errors.append(f"{decoder.__name__[8:].removesuffix('_any_order')}: {one_line(e, 200)}")
    else:
        raise VideoDecodeError(f"cannot decode video {path.name} ({'; '.join(errors)})")
    return frames


REORDER_FRAMES = 32  # iter_video: frames whose times arrive out of order are re-sorted within this many decoded
# frames (box.mp4's swaps span 2-3 frames; a B-frame group is at most 16)


def _iter_pyav(path: Path, size: int, fps: int, reorder: int) -> Iterator[np.ndarray]:
    """PyAV, one sequential pass, yielding the letterboxed frame shown at each 25-fps tick, in order.

    The rule of ``decode_video``: the decoder's output order is the presentation order and the frame times, sorted,
    are its clock (sorted here within ``reorder`` frames: a bounded heap, so memory does not grow with the video);
    tick k (k/fps s after the first frame) shows the last frame at or before it (``timegrid.video_ticks``, 1 µs
    tolerance); the stream lasts until the last frame's time plus the median frame interval. A frame is converted
    only when a tick shows it. Memory: ``reorder`` decoded frames, one letterboxed frame and the frame times (8 bytes
    per frame).
    """
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise VideoDecodeError(f"no video stream in {path}")
        stream = container.streams.video[0]
        stream.thread_count = 1
        rate = float(stream.average_rate or fps)
        times: list[float] = []  # every frame's time (s), for the median interval at the end
        heap: list[float] = []  # times not yet given to a frame
        pending: deque = deque()  # decoded frames waiting for their (sorted) time
        box = None
        t_first = None
        held = None  # (time relative to the first frame, av frame, converted image or None)
        tick = 0

        def show(item) -> np.ndarray:
            nonlocal box
            _, fr, img = item
            if img is None:
                raw = fr.to_ndarray(format="rgb24", threads=1)
                box = box or Letterbox.for_shape(raw.shape[1], raw.shape[0], size)
                img = box.apply(raw)
            return img

        def advance(t_next: float):
            """Yield the held frame for every tick before ``t_next`` (the next frame's time)."""
            nonlocal tick, held
            img = None
            while tick / fps + 1e-6 < t_next:
                img = show(held) if img is None else img
                yield img
                tick += 1
            if img is not None:
                held = (held[0], held[1], img)

        def assign(fr, t: float):
            nonlocal held, t_first
            if t_first is None:
                t_first = t
            t -= t_first
            if held is not None:
                yield from advance(t)
            held = (t, fr, None)

        for fr in container.decode(stream):
            t = len(times) / rate if fr.pts is None else float(fr.pts * fr.time_base)
            times.append(t)
            heapq.heappush(heap, t)
            pending.append(fr)
            if len(pending) > reorder:
                yield from assign(pending.popleft(), heapq.heappop(heap))
        while pending:
            yield from assign(pending.popleft(), heapq.heappop(heap))
        if held is None:
            raise VideoDecodeError(f"video has zero frames: {path}")
        ts = np.sort(np.asarray(times))
        step = float(np.median(np.diff(ts))) if len(ts) > 1 else 1.0 / fps
        n_out = max(1, int(np.floor((ts[-1] - ts[0] + max(step, 1e-6)) * fps + 0.01)))
        while tick < n_out:
            img = show(held)
            held = (held[0], held[1], img)
            yield img
            tick += 1


def _iter_decord(path: Path, size: int, fps: int) -> Iterator[np.ndarray]:
    """decord: the same ticks from the frame times read up front, decoded DECODE_CHUNK ticks at a time."""
    ts, get = _decode_decord(path, size, None)
    _, src = video_ticks(ts, fps)
    for c in range(0, len(src), DECODE_CHUNK):
        yield from get(src[c : c + DECODE_CHUNK])


def iter_video(path: str | os.PathLike, fps: int = FPS, size: int = SIZE, reorder: int = REORDER_FRAMES
               ) -> Iterator[np.ndarray]:
    """The frames of ``decode_video(path)``, one (size, size, 3) uint8 frame per 25-fps tick, in bounded memory.

    PyAV streams the file; decord is used when PyAV fails before its first frame. A failure later (a recording
    damaged in the middle) raises VideoDecodeError naming the time reached, never a silently shortened stream.
    """
    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(f"video file not found: {path}")
    if path.stat().st_size == 0:
        raise VideoDecodeError(f"video file is empty (0 bytes): {path}")
    n = 0
    try:
        for frame in _iter_pyav(path, size, fps, reorder):
            yield frame
            n += 1
        return
    except VideoDecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - libav errors come in many types; reported in one line
        if n:
            raise VideoDecodeError(f"video {path.name} could not be decoded after {n / fps:.1f} s "
                                   f"({one_line(e, 200)})") from None
        first = one_line(e, 200)
    try:
        yield from _iter_decord(path, size, fps)
    except Exception as e:  # noqa: BLE001
        raise VideoDecodeError(f"cannot decode video {path.name} (pyav: {first}; decord: {one_line(e, 200)})"
                               ) from None


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

