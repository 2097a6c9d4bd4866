"""Clips and their ground truth, hand-checked on the real U0209/S0500 annotations and on small made-up timelines."""
from __future__ import annotations

import pytest

from openpack_vlm.data import openpack
from openpack_vlm.data.clips import CLIP_MS, ClipConfig, ClipError, clip_id_for, clip_truth, make_clips
from openpack_vlm.labels import NULL_ID
from openpack_vlm.data.openpack import Segment, iso_to_ms

# Real U0209/S0500: Picking 14:25:22.143-14:25:30.304, Relocate Item Label -14:25:56.039, Assemble Box -14:25:59.614
SESSION_START = iso_to_ms("2022-03-29 14:25:22.143+09:00")
PICK_TO_RELOCATE = iso_to_ms("2022-03-29 14:25:30.304+09:00")


@pytest.fixture(scope="module")
def real_timeline(real_root):
    return openpack.load_timeline(real_root, "U0209", "S0500")


def test_clip_across_picking_to_relocate_boundary(real_timeline):
    # centred on the boundary: frame i at t0 + 40i; frames 0..62 end before 30.304 s, 63..124 after
    truth = clip_truth(real_timeline, PICK_TO_RELOCATE - 2500)
    assert truth.dominant_operation == "Picking"
    assert truth.temporal_segment.start_frame == 0 and truth.temporal_segment.end_frame == 62
    assert truth.anticipated_next_operation == "Relocate Item Label"
    assert clip_id_for("U0209", "S0500", PICK_TO_RELOCATE - 2500, SESSION_START) == "U0209_S0500_t0005"
    # jittered +0.5 s: boundary at frame 50 -> Relocate dominates frames 50..124, and Assemble Box comes next
    truth = clip_truth(real_timeline, PICK_TO_RELOCATE - 2000)
    assert (truth.dominant_operation, truth.temporal_segment.start_frame, truth.temporal_segment.end_frame) == (
        "Relocate Item Label", 50, 124)
    assert truth.anticipated_next_operation == "Assemble Box"


def test_next_operation_skips_null_and_null_can_dominate(real_timeline):
    # real gap: Relocate Item Label ends 14:33:02.227, Null (unannotated) until 14:33:05.025, then Assemble Box
    gap = iso_to_ms("2022-03-29 14:33:02.227+09:00")
    i = next(k for k, s in enumerate(real_timeline) if s.start_ms == gap)
    assert real_timeline[i].op_id == NULL_ID and real_timeline[i + 1].op_id == 300
    truth = clip_truth(real_timeline, gap - 4000)  # frames 0..99 Relocate, 100..124 Null
    assert truth.dominant_operation == "Relocate Item Label"
    assert (truth.temporal_segment.start_frame, truth.temporal_segment.end_frame) == (0, 99)
    assert truth.anticipated_next_operation == "Assemble Box"  # never "Null"
    # Close Box -> Null (3.394 s) -> Insert Items: Null fills frames 13..97 and dominates; next is Insert Items
    gap2 = iso_to_ms("2022-03-29 14:34:32.755+09:00")
    truth = clip_truth(real_timeline, gap2 - 500)
    assert truth.dominant_operation == "Null"
    assert (truth.temporal_segment.start_frame, truth.temporal_segment.end_frame) == (13, 97)
    assert truth.anticipated_next_operation == "Insert Items"


def test_end_of_session_and_outside_timeline(real_timeline):
    end = real_timeline[-1].end_ms
    with pytest.raises(ClipError, match="no operation follows Put on Back Table"):
        clip_truth(real_timeline, end - CLIP_MS)  # the session's last operation has no successor
    with pytest.raises(ClipError, match="outside the annotated timeline"):
        clip_truth(real_timeline, end - CLIP_MS + 40)
    with pytest.raises(ClipError, match="outside"):
        clip_truth(real_timeline, real_timeline[0].start_ms - 1)
    with pytest.raises(ClipError, match="empty"):
        clip_truth([], 0)


def test_make_clips_on_real_session(real_timeline):
    skipped: list[dict] = []
    specs = make_clips(real_timeline, "U0209", "S0500", ClipConfig(seed=0), skipped=skipped)
    boundaries = [b.start_ms for a, b in zip(real_timeline, real_timeline[1:]) if NULL_ID not in (a.op_id, b.op_id)]
    assert len(boundaries) == 187  # 197 boundaries, 10 of them next to the 5 Null gaps
    bspecs = [s for s in specs if s.kind == "boundary"]
    assert len(bspecs) + len(skipped) == len(boundaries)
    assert [s["reason"] for s in skipped] == ["no operation follows Put on Back Table in the session (end of timeline)"]
    for s in bspecs:  # centre within +-0.5 s of a boundary
        centre = s.t0_ms + CLIP_MS // 2
        assert min(abs(centre - b) for b in boundaries) <= 500
        assert any(50 <= b <= 75 for b in s.boundaries)  # the boundary it was centred on (+-0.5 s = 12.5 frames)
        assert s.boundary_frame == s.boundaries[0]  # first label change (an earlier one if an operation is short)
        assert s.truth.dominant_operation != "Null"
    within = [s for s in specs if s.kind == "within"]
    assert abs(len(within) / len(specs) - 0.2) < 0.02
    for s in within:
        assert s.boundary_frame is None and len(set(s.labels)) == 1
        assert (s.truth.temporal_segment.start_frame, s.truth.temporal_segment.end_frame) == (0, 124)
    ids = [s.clip_id for s in specs]
    assert len(set(ids)) == len(ids)
    assert [s.t0_ms for s in specs] == sorted(s.t0_ms for s in specs)
    for s in specs:
        assert s.clip_id.split("_t")[1][:4] == f"{(s.t0_ms - SESSION_START) // 1000:04d}"
        assert s.truth == clip_truth(real_timeline, s.t0_ms)
    # deterministic per seed; another seed moves the clips
    again = make_clips(real_timeline, "U0209", "S0500", ClipConfig(seed=0))
    assert [(s.clip_id, s.t0_ms) for s in again] == [(s.clip_id, s.t0_ms) for s in specs]
    other = make_clips(real_timeline, "U0209", "S0500", ClipConfig(seed=1))
    assert [s.t0_ms for s in other] != [s.t0_ms for s in specs]
    with_null = make_clips(real_timeline, "U0209", "S0500", ClipConfig(null_boundaries=True, within_share=0))
    assert len(with_null) > len(bspecs)


def _tl(*ops_ms):
    segs, t = [], 1_000_000
    for op, dur in ops_ms:
        segs.append(Segment(t, t + dur, op))
        t += dur
    return segs


def test_longest_run_and_ties():
    # Picking 1 s, Relocate 0.8 s, Picking 2 s, Assemble 2.2 s: Picking has 25 + 50 frames, longest run 45..94
    tl = _tl((100, 1000), (200, 800), (100, 2000), (300, 2200), (400, 5000))
    t = clip_truth(tl, tl[0].start_ms)
    assert t.dominant_operation == "Picking"
    assert (t.temporal_segment.start_frame, t.temporal_segment.end_frame) == (45, 94)
    assert t.anticipated_next_operation == "Assemble Box"
    # equal frame counts (60 vs 60 + 5 Null): the longer run wins, then the earlier
    tl = _tl((100, 2400), (8100, 200), (200, 2400), (300, 5000))
    t = clip_truth(tl, tl[0].start_ms)
    assert t.dominant_operation == "Picking" and t.temporal_segment.end_frame == 59


def test_clip_id_collisions_are_suffixed_in_time_order():
    # boundaries 0.3 s apart, no jitter: both clips start in second 7 of the session
    tl = _tl((100, 10_000), (200, 300), (300, 10_000), (400, 10_000))
    specs = make_clips(tl, "U0101", "S0100", ClipConfig(jitter_ms=0, within_share=0))
    assert [s.clip_id for s in specs] == ["U0101_S0100_t0007", "U0101_S0100_t0007_1", "U0101_S0100_t0017"]
    assert "." not in "".join(s.clip_id for s in specs)  # WebDataset keys


def test_short_and_empty_timelines():
    with pytest.raises(ClipError, match="empty"):
        make_clips([], "U0101", "S0100")
    skipped: list[dict] = []
    assert make_clips(_tl((100, 2000), (200, 2000)), "U0101", "S0100", skipped=skipped) == []
    assert "too close" in skipped[0]["reason"]
