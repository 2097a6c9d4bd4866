"""Space: LETTERBOX, the project's one spatial normalisation of a frame.

The frame is scaled to fit 336x336 keeping its aspect (1280x720 -> 336x189: exact 2x area halvings, or libjpeg's
1/2-scale decode for JPEGs, then one bilinear step) and centred on black bars. Centre-cropping would cut 280 px off
each side of the Kinect view, where the worker reaches for items and the back table; letterboxing keeps the whole
workspace at the cost of resolution.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .errors import FrameError

SIZE = 336  # model input side (px): 336 = 24 patches of 14 px -> 144 visual tokens after 2x2 merge
KINECT_W, KINECT_H = 1280, 720  # Kinect colour frame (px); keypoints are in this frame

cv2.setNumThreads(1)  # one core per worker process; the pipeline parallelises over sessions


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

