"""Motion-adaptive choice of the K frames (of a 125-frame, 25-fps clip) that the model sees.

The same function picks the frames for training (data pipeline), evaluation (the shards it wrote) and serving
(``Predictor.predict_clip``), always from the decoded 336x336 frames, so a clip's frames are chosen the same way
wherever it comes from.

Method (``sample_clip``):
1. Motion per frame = mean absolute difference of consecutive frames on a 42x42 copy (every 8th pixel
   in x and y) of the green channel (``motion_from_frames``; ~0.5 ms per 125-frame clip). Dense Farneback flow at
   112 px costs ~2.2 ms per frame pair (~270 ms per clip), 100x more, and would break the "sampling <= 10 % of
   pipeline time" budget; differencing is enough to find *when* something moves, which is all the sampler needs.
2. Weights = motion + a floor (``floor`` x mean motion) so quiet stretches keep some density and an all-static clip
   degrades to uniform sampling.
3. The first and last frame are always taken (``anchor_ends``): the answer's segment very often starts at frame 0
   or ends at frame 124, and without them no sampled frame shows the clip's edges (scripts/compare_sampling.py
   measured it). The other K-2 frames come from the inverse CDF of the weights at the quantiles j/(K-1), j = 1..K-2
   (flat motion gives exactly the uniform spacing); collisions are moved to the nearest free frame, so the K
   indices are unique.
4. Coverage floor: the clip is cut into one-second bins (K >= number of bins) and every empty bin receives the
   frame of most motion in it, taken from the bin that holds the most samples (its lowest-motion sample is
   dropped). No second of the clip is left without a frame.
Clips with fewer than K frames return all their frames. Indices are sorted and unique.

``sample_uniform`` (evenly spaced, first and last frame included) is the baseline of scripts/compare_sampling.py;
it is not used for training. ``motion_from_keypoints`` (joint speed, wrists weighted double) is an alternative
motion signal for skeleton sources, offered to ``sample_clip(..., motion=...)`` and compared in that script.
"""
from __future__ import annotations

import cv2
import numpy as np

from ..contract import SamplingConfig  # the sampler's settings, recorded in the run contract


def sample_uniform(n_frames: int, k: int) -> list[int]:
    """K evenly spaced frames including the first and the last (all frames when n_frames <= k)."""
    if n_frames <= 0:
        raise ValueError(f"cannot sample from {n_frames} frames")
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if n_frames <= k:
        return list(range(n_frames))
    return sorted({int(round(x)) for x in np.linspace(0, n_frames - 1, k)})


def motion_from_frames(frames: np.ndarray, stride: int = 8) -> np.ndarray:
    """(T,) motion magnitude: mean |frame(t) - frame(t-1)| over every stride-th pixel of the green channel (0-255).

    motion[0] = motion[1] (the first frame has no predecessor)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T,H,W,3), got shape {frames.shape}")
    t = frames.shape[0]
    if t == 0:
        raise ValueError("no frames")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    # every stride-th pixel of the green channel: it carries most of the luminance (0.59 of Y), and gathering one
    # byte per pixel costs ~0.2 ms per clip against ~0.8 ms for all three channels
    small = np.ascontiguousarray(frames[:, ::stride, ::stride, 1]).reshape(t, -1)
    motion = np.zeros(t, dtype=np.float64)
    if t > 1:
        motion[1:] = cv2.absdiff(small[1:], small[:-1]).sum(axis=1, dtype=np.uint32) / small.shape[1]
        motion[0] = motion[1]
    return motion


def motion_from_keypoints(kpts: np.ndarray, min_score: float = 0.1) -> np.ndarray:
    """(T,) mean joint speed (px/frame) of confidently detected joints, wrists (COCO 9, 10) weighted double."""
    kpts = np.asarray(kpts, dtype=np.float64)
    if kpts.ndim != 3 or kpts.shape[1:] != (17, 3):
        raise ValueError(f"keypoints must be (T,17,3), got shape {kpts.shape}")
    t = kpts.shape[0]
    if t == 0:
        raise ValueError("no keypoint frames")
    motion = np.zeros(t, dtype=np.float64)
    if t == 1:
        return motion
    speed = np.linalg.norm(np.diff(kpts[:, :, :2], axis=0), axis=-1)  # (T-1, 17)
    ok = (kpts[1:, :, 2] >= min_score) & (kpts[:-1, :, 2] >= min_score)
    w = np.ones(17)
    w[[9, 10]] = 2.0
    wt = ok * w
    denom = wt.sum(axis=1)
    motion[1:] = np.where(denom > 0, (speed * wt).sum(axis=1) / np.maximum(denom, 1e-9), 0.0)
    motion[0] = motion[1]
    return motion


def _smooth(x: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(x) < window:
        return x
    padded = np.pad(x, (window // 2, window - 1 - window // 2), mode="edge")
    return np.convolve(padded, np.ones(window) / window, "valid")


def _unique_nearest(idx: np.ndarray, n: int, taken: set[int] | None = None) -> list[int]:
    """Make sorted indices unique (and distinct from ``taken``) by moving each collision to the nearest free frame
    (ties: the later frame)."""
    taken = set(taken or ())
    out = sorted(taken)
    for i in idx:
        i = int(i)
        for d in range(n):
            for cand in (i + d, i - d):
                if 0 <= cand < n and cand not in taken:
                    taken.add(cand)
                    out.append(cand)
                    break
            else:
                continue
            break
    return sorted(out)


def sample_from_motion(motion: np.ndarray, cfg: SamplingConfig | None = None) -> list[int]:
    """K sorted unique indices by the inverse CDF of (motion + floor), with one-second coverage (see module doc)."""
    cfg = cfg or SamplingConfig()
    motion = np.asarray(motion, dtype=np.float64)
    n = len(motion)
    if n == 0:
        raise ValueError("cannot sample from 0 frames")
    if cfg.k <= 0:
        raise ValueError(f"k must be positive, got {cfg.k}")
    if not np.all(np.isfinite(motion)) or np.any(motion < 0):
        raise ValueError("motion must be finite and non-negative")
    if n <= cfg.k:
        return list(range(n))
    m = _smooth(motion, cfg.smooth)
    mean = m.mean()
    w = m + (cfg.floor * mean if mean > 0 else 1.0)  # all-static clip -> uniform weights
    cdf = np.cumsum(w)
    cdf /= cdf[-1]
    anchors = {0, n - 1} if cfg.anchor_ends and cfg.k >= 3 else set()
    k_free = cfg.k - len(anchors)
    # with anchors: quantiles j/(K-1), j = 1..K-2 (flat motion -> exactly the uniform spacing); else (j+0.5)/K
    q = np.arange(1, k_free + 1) / (k_free + 1) if anchors else (np.arange(k_free) + 0.5) / k_free
    idx = np.minimum(np.searchsorted(cdf, q), n - 1)
    chosen = _unique_nearest(idx, n, anchors)

    # coverage floor: every bin (one second, or K equal parts when K < number of seconds) gets a sample
    n_bins = -(-n // cfg.bin_frames)
    if n_bins <= cfg.k:
        edges = np.append(np.arange(0, n, cfg.bin_frames), n)
    else:  # too few samples for one per second: K equal parts instead
        n_bins = cfg.k
        edges = np.linspace(0, n, n_bins + 1).round().astype(int)
    bin_of = np.searchsorted(edges, np.arange(n), side="right") - 1
    chosen_set = set(chosen)
    for _ in range(n_bins):
        counts = np.bincount(bin_of[sorted(chosen_set)], minlength=n_bins)
        empty = np.flatnonzero(counts == 0)
        if len(empty) == 0:
            break
        b = int(empty[0])
        donor = int(np.argmax(counts))  # first of the fullest bins
        donor_samples = [i for i in sorted(chosen_set) if bin_of[i] == donor and i not in anchors]
        chosen_set.remove(min(donor_samples, key=lambda i: (w[i], i)))
        lo, hi = edges[b], edges[b + 1]
        centre_pull = 1e-6 * w.max() * (1.0 - np.abs(np.arange(lo, hi) - (lo + hi - 1) / 2) / (hi - lo))
        chosen_set.add(int(lo + np.argmax(w[lo:hi] + centre_pull)))  # most motion; flat bin -> its centre
    return sorted(chosen_set)


def sample_clip(frames: np.ndarray, cfg: SamplingConfig | None = None, motion: np.ndarray | None = None) -> list[int]:
    """Motion-adaptive K frame indices of a (T,H,W,3) uint8 clip; ``motion`` (T,) overrides frame differencing."""
    cfg = cfg or SamplingConfig()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise ValueError(f"frames must be a non-empty (T,H,W,3) array, got shape {frames.shape}")
    if motion is None:
        motion = motion_from_frames(frames, cfg.diff_stride)
    elif len(motion) != frames.shape[0]:
        raise ValueError(f"motion has {len(motion)} values for {frames.shape[0]} frames")
    return sample_from_motion(motion, cfg)
