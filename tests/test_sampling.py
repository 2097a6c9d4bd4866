"""Motion-adaptive sampler: count, order, uniqueness, one-second coverage, static/moving clips, short clips."""
from __future__ import annotations

import numpy as np
import pytest

from openpack_vlm.data.sampling import (
    SamplingConfig,
    motion_from_frames,
    motion_from_keypoints,
    sample_clip,
    sample_from_motion,
    sample_uniform,
)


def _moving_square(t: int = 125, still: tuple[int, int] | None = None, size: int = 64) -> np.ndarray:
    """A white square moving right one px per frame, except during ``still`` (start, end) frames."""
    frames = np.zeros((t, size, size, 3), np.uint8)
    x = 0
    for i in range(t):
        if still is None or not (still[0] <= i < still[1]):
            x += 1
        frames[i, 20:40, x % 40 : x % 40 + 20] = 255
    return frames


def _check_contract(idx: list[int], n: int, k: int) -> None:
    assert idx == sorted(idx)
    assert len(set(idx)) == len(idx) == min(n, k)
    assert all(0 <= i < n for i in idx)


def test_uniform_includes_ends_and_is_even():
    assert sample_uniform(125, 8) == [0, 18, 35, 53, 71, 89, 106, 124]
    assert sample_uniform(5, 8) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        sample_uniform(0, 8)


def test_motion_signal_follows_the_moving_part():
    m = motion_from_frames(_moving_square(still=(40, 80)), stride=1)
    assert m.shape == (125,)
    assert m[41:80].max() == 0  # no pixel changes while the square stands still
    assert m[1:40].min() > 0 and m[81:].min() > 0
    assert m[0] == m[1]


def test_motion_concentrates_samples_and_keeps_one_per_second():
    motion = np.zeros(125)
    motion[60:70] = 50.0  # one burst of motion in the middle second
    cfg = SamplingConfig(k=8)
    idx = sample_from_motion(motion, cfg)
    _check_contract(idx, 125, 8)
    assert sum(60 <= i < 70 for i in idx) >= 3  # the burst attracts samples (uniform would put 1 there)
    seconds = {i // 25 for i in idx}
    assert seconds == {0, 1, 2, 3, 4}  # coverage floor: no second left empty


def test_pure_motion_without_floor_still_covers_each_second():
    motion = np.zeros(125)
    motion[100:105] = 1.0
    idx = sample_from_motion(motion, SamplingConfig(k=8, floor=0.0))
    _check_contract(idx, 125, 8)
    assert {i // 25 for i in idx} == {0, 1, 2, 3, 4}


def test_all_static_and_all_moving_clips_sample_evenly():
    static = sample_clip(np.zeros((125, 32, 32, 3), np.uint8))
    moving = sample_from_motion(np.full(125, 7.0))
    for idx in (static, moving):
        _check_contract(idx, 125, 8)
        assert np.abs(np.array(idx) - sample_uniform(125, 8)).max() <= 1, idx  # the uniform spacing, +-1 frame
    assert static == moving
    free = sample_from_motion(np.full(125, 7.0), SamplingConfig(anchor_ends=False))
    assert np.diff(free).max() <= 16 and free[0] > 0 and free[-1] < 124  # quantile midpoints without anchors


def test_first_and_last_frame_are_anchored():
    rng = np.random.default_rng(0)
    for _ in range(20):
        motion = rng.random(125) ** 8 * 100  # spiky
        idx = sample_from_motion(motion)
        _check_contract(idx, 125, 8)
        assert idx[0] == 0 and idx[-1] == 124
        assert {i // 25 for i in idx} == {0, 1, 2, 3, 4}


def test_fewer_frames_than_k_returns_all():
    assert sample_clip(np.zeros((5, 8, 8, 3), np.uint8), SamplingConfig(k=8)) == [0, 1, 2, 3, 4]
    assert sample_clip(np.zeros((1, 8, 8, 3), np.uint8)) == [0]
    with pytest.raises(ValueError):
        sample_clip(np.zeros((0, 8, 8, 3), np.uint8))


def test_k_larger_than_seconds_and_odd_lengths():
    for n, k in [(125, 3), (130, 8), (60, 8), (125, 16), (9, 8)]:
        idx = sample_from_motion(np.random.default_rng(n).random(n), SamplingConfig(k=k))
        _check_contract(idx, n, k)
    # k=3 < 5 seconds: three equal parts each get one sample
    idx = sample_from_motion(np.r_[np.zeros(120), np.ones(5)], SamplingConfig(k=3))
    assert [i * 3 // 125 for i in idx] == [0, 1, 2]


def test_sampler_is_deterministic_and_uses_frames():
    frames = _moving_square(still=(0, 90))
    a, b = sample_clip(frames), sample_clip(frames.copy())
    assert a == b
    assert sum(i >= 90 for i in a) >= 4  # motion only after frame 90
    with pytest.raises(ValueError):
        sample_clip(frames, motion=np.ones(3))
    with pytest.raises(ValueError):
        sample_from_motion(np.array([1.0, -1.0, 2.0]))


def test_keypoint_motion_weights_wrists():
    k = np.zeros((10, 17, 3), np.float32)
    k[..., 2] = 1.0
    k[5:, 9, 0] = 30.0  # left wrist jumps 30 px at frame 5
    m = motion_from_keypoints(k)
    assert m.shape == (10,) and m[5] > 0 and m[[1, 2, 3, 4, 6, 7, 8, 9]].max() == 0
    assert m[5] == pytest.approx(30.0 * 2 / 19)  # wrist weight 2 of total weight 15 + 2 + 2
    k[:, :, 2] = 0.0  # undetected joints carry no motion
    assert motion_from_keypoints(k).max() == 0
