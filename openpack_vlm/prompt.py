"""Chat format shared by training, evaluation and serving.

One clip = a system prompt, a user turn in which each sampled frame is preceded by its timestamp (frame index in the
25-fps clip and seconds: the sampling is non-uniform, so the model must be told when each frame was taken), and the
assistant's JSON answer (``ClipTruth.target_dict``; see schema.py).
"""
from __future__ import annotations

import json

from .labels import OPERATION_NAMES
from .schema import CLIP_FRAMES, FPS, ClipTruth

SYSTEM_PROMPT = (
    "You analyse 5-second clips of a warehouse packaging worker (OpenPack). "
    f"Operations: {', '.join(OPERATION_NAMES)}. "
    "Answer with JSON only: "
    '{"dominant_operation": <operation filling most of the clip>, '
    '"temporal_segment": {"start_frame": <first frame of it>, "end_frame": <last frame of it>}, '
    '"anticipated_next_operation": <operation that comes after it>}. '
    f"Frames are numbered 0-{CLIP_FRAMES - 1} at {FPS} fps."
)

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


def build_messages(frame_indices: list[int], truth: ClipTruth | dict | None = None, fps: int = FPS) -> list[dict]:
    """Chat messages for one clip; with ``truth`` the assistant's answer is appended (training)."""
    msgs = [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
        {"role": "user", "content": user_content(list(frame_indices), fps)},
    ]
    if truth is not None:
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": target_text(truth)}]})
    return msgs


def target_text(truth: ClipTruth | dict) -> str:
    """The assistant's answer: compact JSON with keys in the order the model writes them."""
    if not isinstance(truth, ClipTruth):
        truth = ClipTruth.model_validate(truth)
    return json.dumps(truth.target_dict(), separators=(", ", ": "))
