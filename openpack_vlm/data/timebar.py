"""TIME BAR: each sampled frame shows, along its bottom edge, how far into the clip it was taken.

Why: the model has to say WHERE in the clip the dominant operation runs, and the only carrier of a frame's time was
the text before it (``frame 56 (t=2.24s):``). A frame's visual tokens are computed from that frame alone, so they
carry what the frame shows but not when; reading "the operation changes between the 4th and the 5th frame" off the
text needs the language model to match each image to its timestamp by position, which the tiny demo LM never learned
(ARCHITECTURE.md §3: its span answer stayed the clip's typical numbers). Drawing the time into the pixels puts it into
every visual token of the frame, next to the pose — as NumPro (Wu et al. 2024, "Number it: Temporal Grounding Videos
like Flipping Manga") prints frame numbers onto frames to give Video-LLMs temporal grounding.

The bar: the bottom ``BAR_ROWS`` of the frame (28 px at 336 px = one row of merged 2x2 visual tokens; there the
letterbox's black band lies for 16:9 camera frames), a dark track filled in white from the left up to
(frame index + 1) / 125 of the width. Its filled share is the frame's time, so it also shifts the frame's mean
brightness with time. Drawn on the sampled frames only, in the data pipeline before the JPEG encode and in
``Predictor.sampled_frames`` before the same round trip: the run contract's ``data.time_bar`` says whether a run's
frames carry it.
"""
from __future__ import annotations

import numpy as np

from ..schema import CLIP_FRAMES

BAR_ROWS = 28 / 336  # bar height as a share of the frame height (28 px of 336: one merged-token row)
TRACK = 48  # grey level of the unfilled track (0-255): distinct from the black letterbox band
FILL = 255  # grey level of the filled part


def draw_time_bar(frame: np.ndarray, frame_index: int, clip_frames: int = CLIP_FRAMES) -> np.ndarray:
    """A copy of ``frame`` (H, W, 3 uint8) with the time bar of frame ``frame_index`` (0-based) of a clip of
    ``clip_frames`` frames along its bottom edge."""
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"time bar: frame must be (H, W, 3) uint8, got {frame.shape} {frame.dtype}")
    if not 0 <= int(frame_index) < clip_frames:
        raise ValueError(f"time bar: frame index {frame_index} outside 0..{clip_frames - 1}")
    out = frame.copy()
    h, w = out.shape[:2]
    rows = max(1, int(round(h * BAR_ROWS)))
    filled = int(round(w * (int(frame_index) + 1) / clip_frames))
    out[h - rows:, :] = TRACK
    out[h - rows:, :filled] = FILL
    return out


def read_time_bar(frame: np.ndarray, clip_frames: int = CLIP_FRAMES) -> float:
    """The frame index a drawn bar shows (its filled share x clip_frames - 1), read back from the middle row of the
    bar; tests use it to check that the bar survives the JPEG round trip."""
    frame = np.asarray(frame)
    h = frame.shape[0]
    rows = max(1, int(round(h * BAR_ROWS)))
    line = frame[h - rows // 2 - 1, :, :].mean(axis=1)
    share = float((line > (TRACK + FILL) / 2).mean())
    return share * clip_frames - 1
