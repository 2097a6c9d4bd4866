"""Errors of the frame layer; each message is one line naming the file or the problem."""
from __future__ import annotations


class FrameError(ValueError):
    """A frame stream that cannot provide a clip (message is one line naming the file/problem)."""


class CorruptFrameError(FrameError):
    pass


class FrameGapError(FrameError):
    pass


class VideoDecodeError(ValueError):
    """A video that cannot be decoded (missing, empty, not a video, zero frames)."""

