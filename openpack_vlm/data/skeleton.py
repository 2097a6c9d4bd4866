"""Skeleton rendering: one COCO-17 keypoint frame (Kinect 1280x720 px) -> a 336x336 RGB image.

Skeletons are drawn in Kinect pixel coordinates mapped by the letterbox transform (equivalent to drawing on the
1280x720 frame and scaling it, without rendering 1280x720 images): COCO-17 limbs, left side warm, right side cool,
torso/head grey, forearms thicker and wrists as large discs (the hands carry the work), each limb's colour scaled by
its keypoint score (opacity over the black background). Joints under ``min_score`` are not drawn.
"""
from __future__ import annotations

import cv2
import numpy as np

from .errors import FrameError
from .letterbox import KINECT_H, KINECT_W, SIZE, Letterbox

# COCO-17: 0 nose, 1/2 eyes, 3/4 ears, 5/6 shoulders, 7/8 elbows, 9/10 wrists, 11/12 hips, 13/14 knees, 15/16 ankles
LEFT, RIGHT, CENTRE = (255, 140, 0), (0, 150, 255), (200, 200, 200)  # RGB: left warm, right cool, torso grey
LIMBS: tuple[tuple[int, int, tuple[int, int, int], int], ...] = (
    # (joint a, joint b, colour, thickness in Kinect px)
    (0, 1, LEFT, 6), (0, 2, RIGHT, 6), (1, 3, LEFT, 6), (2, 4, RIGHT, 6),
    (5, 6, CENTRE, 10), (5, 11, CENTRE, 10), (6, 12, CENTRE, 10), (11, 12, CENTRE, 10),
    (5, 7, LEFT, 12), (7, 9, LEFT, 20), (6, 8, RIGHT, 12), (8, 10, RIGHT, 20),  # forearms thicker
    (11, 13, LEFT, 12), (13, 15, LEFT, 12), (12, 14, RIGHT, 12), (14, 16, RIGHT, 12),
)
JOINT_RADIUS = 8  # Kinect px
WRISTS = ((9, LEFT), (10, RIGHT))
WRIST_RADIUS = 28  # Kinect px: hands emphasised
WRIST_RING = (255, 255, 255)
MIN_SCORE = 0.1  # joints below this confidence are not drawn
_SHIFT = 4  # cv2 sub-pixel bits


def _scaled(colour: tuple[int, int, int], score: float) -> tuple[int, int, int]:
    s = float(min(max(score, 0.0), 1.0))
    return (int(colour[0] * s), int(colour[1] * s), int(colour[2] * s))


def render_pose(kpts: np.ndarray, size: int = SIZE, frame_w: int = KINECT_W, frame_h: int = KINECT_H,
                min_score: float = MIN_SCORE) -> np.ndarray:
    """One (17,3) COCO keypoint frame (x, y, score in frame_w x frame_h px) -> (size,size,3) uint8 skeleton image."""
    kpts = np.asarray(kpts, dtype=np.float64)
    if kpts.shape != (17, 3):
        raise FrameError(f"keypoints must be (17,3), got {kpts.shape}")
    box = Letterbox.for_shape(frame_w, frame_h, size)
    img = np.zeros((size, size, 3), dtype=np.uint8)
    mult = 1 << _SHIFT
    xy = np.empty((17, 2), dtype=np.int64)
    xy[:, 0] = np.round((kpts[:, 0] * box.scale + box.off_x) * mult)
    xy[:, 1] = np.round((kpts[:, 1] * box.scale + box.off_y) * mult)
    score = np.nan_to_num(kpts[:, 2], nan=0.0)
    ok = (score >= min_score) & np.all(np.isfinite(kpts[:, :2]), axis=1)

    def thick(px: float) -> int:
        return max(1, int(round(px * box.scale)))

    for a, b, colour, t in LIMBS:
        if ok[a] and ok[b]:
            cv2.line(img, tuple(xy[a]), tuple(xy[b]), _scaled(colour, min(score[a], score[b])), thick(t),
                     cv2.LINE_AA, _SHIFT)
    r = max(1, int(round(JOINT_RADIUS * box.scale * mult)))
    for j in range(17):
        if ok[j] and j not in (9, 10):
            cv2.circle(img, tuple(xy[j]), r, _scaled(CENTRE, score[j]), -1, cv2.LINE_AA, _SHIFT)
    rw = max(2, int(round(WRIST_RADIUS * box.scale * mult)))
    for j, colour in WRISTS:
        if ok[j]:
            cv2.circle(img, tuple(xy[j]), rw, _scaled(colour, score[j]), -1, cv2.LINE_AA, _SHIFT)
            cv2.circle(img, tuple(xy[j]), rw, _scaled(WRIST_RING, score[j]), thick(4), cv2.LINE_AA, _SHIFT)
    return img
