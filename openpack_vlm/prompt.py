"""Chat format shared by training, evaluation and serving.

One clip = a system prompt, a user turn in which each sampled frame is preceded by its timestamp (frame index in the
25-fps clip and seconds: the sampling is non-uniform, so the model must be told when each frame was taken), and the
assistant's JSON answer (``ClipTruth.target_dict``; see schema.py).

How the answer's span is written (``SPAN_FORMATS``; the run contract's ``data.answer_span``):
- ``"shown"`` (default): start_frame / end_frame are the first and the last SAMPLED frame inside the dominant
  operation (``shown_span``): numbers that stand in the prompt, so the model picks one of K frames it saw instead of
  writing one of 125 it did not. The predictor scores only those K candidates and turns the answer back into clip
  frames with ``clip_span`` (each boundary half-way to the neighbouring sampled frame). Served and evaluated spans
  are always clip frames 0..124.
- ``"clip"``: the truth's exact clip frames (the format before ``answer_span`` existed; what a run.json without the
  field means). The tiny model never learned it: a boundary between two sampled frames spreads over ~20 numbers, and
  the argmax is the clip's edges (ARCHITECTURE.md §3).
"""
from __future__ import annotations

import json

from .labels import OPERATION_NAMES
from .schema import CLIP_FRAMES, FPS, ClipTruth

SPAN_FORMATS = ("shown", "clip")
DEFAULT_SPAN = "shown"


def system_prompt(span: str = DEFAULT_SPAN) -> str:
    """The system turn; it says which frames the span names (``span``: one of SPAN_FORMATS)."""
    check_span_format(span)
    first, last = ("first shown frame of it", "last shown frame of it") if span == "shown" else (
        "first frame of it", "last frame of it")
    return (
        "You analyse 5-second clips of a warehouse packaging worker (OpenPack). "
        f"Operations: {', '.join(OPERATION_NAMES)}. "
        "Answer with JSON only: "
        '{"dominant_operation": <operation filling most of the clip>, '
        f'"temporal_segment": {{"start_frame": <{first}>, "end_frame": <{last}>}}, '
        '"anticipated_next_operation": <operation that comes after it>}. '
        f"Frames are numbered 0-{CLIP_FRAMES - 1} at {FPS} fps."
    )


def check_span_format(span: str) -> str:
    if span not in SPAN_FORMATS:
        raise ValueError(f"unknown answer span format {span!r} (one of: {', '.join(SPAN_FORMATS)})")
    return span


SYSTEM_PROMPT = system_prompt(DEFAULT_SPAN)

USER_PREFIX = "Sampled frames of the clip:"
USER_SUFFIX = "Which operation dominates, where does it run, and what comes next?"


def frame_label(frame_index: int, fps: int = FPS) -> str:
    """Timestamp text placed before each frame, e.g. ``frame 12 (t=0.48s):``."""
    return f"frame {int(frame_index)} (t={frame_index / fps:.2f}s):"


def user_content(frame_indices: list[int], fps: int = FPS) -> list[dict]:
    """User-turn content: text, then per frame its timestamp text and an image placeholder."""
    content: list[dict] = [{"type": "text", "text": USER_PREFIX}]
    for i in frame_indices:
        content.append({"type": "text", "text": " " + frame_label(i, fps) + " "})
        content.append({"type": "image"})
    content.append({"type": "text", "text": "\n" + USER_SUFFIX})
    return content


def build_messages(frame_indices: list[int], truth: ClipTruth | dict | None = None, fps: int = FPS,
                   span: str = DEFAULT_SPAN) -> list[dict]:
    """Chat messages for one clip; with ``truth`` the assistant's answer is appended (training), its span written in
    the ``span`` format."""
    msgs = [
        {"role": "system", "content": [{"type": "text", "text": system_prompt(span)}]},
        {"role": "user", "content": user_content(list(frame_indices), fps)},
    ]
    if truth is not None:
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": target_text(
            truth, frame_indices if span == "shown" else None)}]})
    return msgs


def target_text(truth: ClipTruth | dict, frame_indices: list[int] | None = None) -> str:
    """The assistant's answer: compact JSON with keys in the order the model writes them. With ``frame_indices``
    the span is the "shown" one (``shown_span``), else the truth's clip frames."""
    if not isinstance(truth, ClipTruth):
        truth = ClipTruth.model_validate(truth)
    d = truth.target_dict()
    if frame_indices is not None:
        s, e = shown_span(d["temporal_segment"]["start_frame"], d["temporal_segment"]["end_frame"], frame_indices)
        d["temporal_segment"] = {"start_frame": s, "end_frame": e}
    return json.dumps(d, separators=(", ", ": "))


def _sorted_frames(frame_indices) -> list[int]:
    idx = sorted({int(i) for i in frame_indices})
    if not idx or idx[0] < 0 or idx[-1] > CLIP_FRAMES - 1:
        raise ValueError(f"sampled frame indices must lie in 0..{CLIP_FRAMES - 1}, got {list(frame_indices)}")
    return idx


def shown_span(start: int, end: int, frame_indices) -> tuple[int, int]:
    """The clip span [start, end] as the "shown" format writes it: the first and the last sampled frame inside it.
    A span that no sampled frame falls in (shorter than the gap around it) is named by the sampled frame nearest
    its middle, twice, so the answer is always a pair of frames the model saw."""
    idx = _sorted_frames(frame_indices)
    inside = [f for f in idx if start <= f <= end]
    if inside:
        return inside[0], inside[-1]
    mid = (start + end) / 2
    f = min(idx, key=lambda x: (abs(x - mid), x))
    return f, f


def clip_span(start: int, end: int, frame_indices) -> tuple[int, int]:
    """A "shown" span back in clip frames: each boundary half-way to the neighbouring sampled frame outside it (the
    operation changes somewhere in that gap; the midpoint halves the worst error), the clip's edges beyond the first
    and the last sampled frame. A boundary that is not a sampled frame (a free-text answer) is kept as written."""
    idx = _sorted_frames(frame_indices)
    s, e = int(start), int(end)
    if s in idx:
        i = idx.index(s)
        s = 0 if i == 0 else (idx[i - 1] + s + 1) // 2
    if e in idx:
        j = idx.index(e)
        e = CLIP_FRAMES - 1 if j == len(idx) - 1 else (e + idx[j + 1]) // 2
    s = min(max(s, 0), CLIP_FRAMES - 1)
    e = min(max(e, s), CLIP_FRAMES - 1)
    return s, e


def frame_cells(frame_indices) -> list[int]:
    """Clip frames each sampled frame stands for, in order: from half-way to its left neighbour to half-way to its
    right one (the clip's edges beyond the first and the last), as ``clip_span`` places a span's ends; a partition
    of the 125 frames (a midpoint frame that ``clip_span`` gives to both neighbours belongs to the right-hand cell).
    The frame head's clip shares and the timeline's per-frame seconds use them."""
    idx = _sorted_frames(frame_indices)
    cuts = [0] + [(a + b + 1) // 2 for a, b in zip(idx, idx[1:])] + [CLIP_FRAMES]
    return [b - a for a, b in zip(cuts, cuts[1:])]
