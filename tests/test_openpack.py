"""openpack.py on the real U0209/S0500 (v1.0.0) and U0102/S0500 (v0.3.0) files, layout precedence, and one-line errors
for every missing or malformed part of a root."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from openpack_vlm.data import openpack as op
from openpack_vlm.data.openpack import OpenPackError, Segment

U, S = "U0209", "S0500"


def _check_timeline(tl: list[Segment]) -> None:
    assert tl, "empty timeline"
    for a, b in zip(tl, tl[1:]):
        assert a.end_ms == b.start_ms  # gap-free
        assert a.op_id != b.op_id  # equal neighbours merged
    assert all(s.end_ms > s.start_ms for s in tl)


def _one_line_error(fn, *needles: str) -> str:
    with pytest.raises(OpenPackError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and msg.strip() == msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    return msg


# ------------------------------------------------------------------------------------------------- real samples
def test_real_root_users_sessions_streams(real_root):
    assert op.list_users(real_root) == [U]
    assert op.list_sessions(real_root, U) == [S]
    assert op.available_streams(real_root, U, S) == {"rgb": None, "kpt_json": None, "kpt_csv": None, "video": None}
    assert op.resolve_root(real_root.parent) == real_root  # the release's top level enters v1.0.0/
    assert op.timeline_source(real_root, U, S) == real_root / U / "annotation/openpack-operations/S0500.csv"


def test_real_interval_timeline(real_root):
    tl = op.load_timeline(real_root, U, S)
    _check_timeline(tl)
    raw = pd.read_csv(real_root / U / "annotation/openpack-operations/S0500.csv")
    ops = [s for s in tl if s.op_id != op.NULL_ID]
    assert [s.op_id for s in ops] == raw["id"].tolist()  # 193 operations, in file order
    nulls = [s for s in tl if s.op_id == op.NULL_ID]
    assert len(tl) == 198 and len(nulls) == 5  # the five unannotated gaps of 2.0-3.7 s
    assert sorted(s.duration_ms for s in nulls) == [2016, 2684, 2798, 3394, 3706]
    assert tl[0] == Segment(1648531522143, 1648531530304, 100)  # 2022-03-29 14:25:22.143+09:00 .. 14:25:30.304
    assert tl[-1].end_ms == op.iso_to_ms("2022-03-29 14:48:48.913000+09:00")
    assert tl[0].name == "Picking"


def test_real_1hz_file_is_the_floored_interval_file(real_root):
    """The real 1 Hz file starts each operation at the floor of its interval start (short gaps carry the previous
    operation on): its timeline has the same operations with boundaries = floor(interval boundary)."""
    tl = [s for s in op.load_timeline(real_root, U, S) if s.op_id != op.NULL_ID]
    hz = op.timeline_from_1hz_csv(op.operations_1hz_csv(real_root, U, S))
    _check_timeline(hz)
    assert [s.op_id for s in hz] == [s.op_id for s in tl]
    assert [s.start_ms for s in hz] == [s.start_ms // 1000 * 1000 for s in tl]
    assert all(s.start_ms % 1000 == 0 and s.end_ms % 1000 == 0 for s in hz)


def test_precedence_interval_then_1hz(real_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(real_root, root)
    assert op.load_timeline(root, U, S)[0].start_ms == 1648531522143  # interval file (ms precision)
    op.operations_csv(root, U, S).unlink()
    assert op.timeline_source(root, U, S) == op.operations_1hz_csv(root, U, S)
    tl = op.load_timeline(root, U, S)
    assert tl[0].start_ms == 1648531522000 and len(tl) == 193  # the 1 Hz file
    op.operations_1hz_csv(root, U, S).unlink()
    _one_line_error(lambda: op.load_timeline(root, U, S), "no operation annotation for U0209/S0500",
                    "openpack-operations/S0500.csv")


def test_precedence_preprocessed_last(tmp_path):
    """A root with the interval file AND a preprocessed CSV that disagree: the interval file wins; without it the
    preprocessed CSV's run-length timeline is used."""
    root = tmp_path
    p = op.operations_csv(root, "U0101", "S0100")
    p.parent.mkdir(parents=True)
    p.write_text("uuid,user,session,box,id,operation,start,end,actions\n"
                 "op:1,U0101,S0100,1,100,Picking,2022-03-29 14:00:00.000000+09:00,2022-03-29 14:00:02.000000+09:00,\n")
    ts = 1648530000000 + np.round(np.arange(45) * 1000 / 15).astype(np.int64)
    ops = np.where(np.arange(45) < 20, 300, 400)
    _write_preprocessed(root, "U0101", "S0100", ts, ops)
    assert op.load_timeline(root, "U0101", "S0100") == [Segment(1648530000000, 1648530002000, 100)]
    p.unlink()
    tl = op.load_timeline(root, "U0101", "S0100")
    assert tl == [Segment(int(ts[0]), int(ts[20]), 300), Segment(int(ts[20]), int(ts[-1]) + 67, 400)]
    assert op.list_users(root) == ["U0101"] and op.list_sessions(root, "U0101") == ["S0100"]


def test_v030_activity_1s_layout():
    root = Path(__file__).parent / "data" / "openpack" / "v0.3.0"
    assert op.list_users(root) == ["U0102"] and op.list_sessions(root, "U0102") == ["S0500"]
    tl = op.load_timeline(root, "U0102", "S0500")
    _check_timeline(tl)
    raw = pd.read_csv(root / "U0102/annotation/activity-1s/S0500.csv")
    assert tl[0].start_ms == raw["unixtime"].iloc[0] and tl[-1].end_ms == raw["unixtime"].iloc[-1] + 1000
    assert [s.op_id for s in tl[:4]] == [100, 200, 300, 400]
    labels = op.labels_at(tl, raw["unixtime"].to_numpy() + 500)
    assert np.array_equal(labels, raw["operation"].to_numpy())  # every second reproduced


# --------------------------------------------------------------------------------------------- small unit parts
def test_time_conversions():
    assert op.iso_to_ms("2022-03-29 14:25:22.143000+09:00") == 1648531522143
    assert op.iso_to_ms("2022-03-29T05:25:22.143Z") == 1648531522143
    assert op.ms_to_iso(1648531522143) == "2022-03-29 14:25:22.143000+09:00"
    assert op.frame_name(1648531522143) == "2022/03/29/14/25/20220329_142522_143.jpg"
    assert op.parse_frame_name("20220329_142522_143.jpg") == 1648531522143
    for t in (0, 1648531522000, 1648531599999, 1700000000007):
        assert op.parse_frame_name(Path(op.frame_name(t)).name) == t
        assert op.iso_to_ms(op.ms_to_iso(t)) == t
    with pytest.raises(ValueError, match="no UTC offset"):
        op.iso_to_ms("2022-03-29 14:25:22.143000")
    _one_line_error(lambda: op.parse_frame_name("frame_0001.jpg"), "YYYYMMDD_HHMMSS_mmm.jpg")
    _one_line_error(lambda: op.parse_frame_name("20221399_142522_143.jpg"), "not a valid date")


def test_normalize_timeline_fills_trims_merges():
    segs = [Segment(5000, 7000, 200), Segment(0, 2000, 100), Segment(2000, 3000, 100), Segment(6500, 9000, 300),
            Segment(9000, 9000, 400)]
    assert op.normalize_timeline(segs) == [
        Segment(0, 3000, 100), Segment(3000, 5000, op.NULL_ID), Segment(5000, 6500, 200), Segment(6500, 9000, 300)]
    # a later segment that starts with an earlier one replaces it; Null gaps next to each other merge
    assert op.normalize_timeline([Segment(0, 1000, 100), Segment(0, 500, 200)]) == [Segment(0, 500, 200)]
    assert op.labels_at([Segment(0, 1000, 100), Segment(1000, 2000, 200)], [-1, 0, 999, 1000, 1999, 2000]).tolist() \
        == [8100, 100, 100, 200, 200, 8100]
    assert op.labels_at([], [1, 2]).tolist() == [8100, 8100]


def test_runs_to_segments_fills_missing_samples():
    tl = op.runs_to_segments(np.array([0, 1000, 2000, 5000, 6000]), np.array([100, 100, 200, 200, 300]), 1000)
    assert tl == [Segment(0, 2000, 100), Segment(2000, 3000, 200), Segment(3000, 5000, op.NULL_ID),
                  Segment(5000, 6000, 200), Segment(6000, 7000, 300)]


# ------------------------------------------------------------------------------------------------- keypoints
def _write_kpt_json(path: Path, ts, kpts, flat=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    anns = [{"id": i, "image_id": int(t), "keypoints": (np.asarray(k).ravel() if flat else np.asarray(k)).tolist()}
            for i, (t, k) in enumerate(zip(ts, kpts))]
    path.write_text(json.dumps({"info": {}, "licences": [], "annotations": anns, "category": []}))


def _write_preprocessed(root, user, session, ts, ops, kpts=None):
    n = len(ts)
    kpts = np.zeros((n, 17, 3)) if kpts is None else kpts
    df = pd.DataFrame(np.asarray(kpts).reshape(n, -1), columns=list(op.KPT_COLUMNS))
    df.insert(0, "action", 8100)
    df.insert(0, "operation", ops)
    df.insert(0, "timestamp", ts)
    p = op.preprocessed_csv(root, user, session)
    p.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(p, index=False)
    return p


@pytest.mark.parametrize("flat", [False, True])
def test_keypoints_json_both_shapes(tmp_path, flat):
    rng = np.random.default_rng(0)
    ts = np.array([1000, 1067, 1133, 1200])
    kpts = rng.uniform(0, 700, (4, 17, 3)).round(2)
    order = [2, 0, 3, 1, 1]  # unsorted, with a duplicate frame (second person): first one kept
    _write_kpt_json(op.keypoints_json(tmp_path, "U0101", "S0100"), ts[order], kpts[order], flat=flat)
    got_ts, got = op.load_keypoints(tmp_path, "U0101", "S0100")
    assert got_ts.dtype == np.int64 and got.dtype == np.float32 and got.shape == (4, 17, 3)
    assert got_ts.tolist() == ts.tolist()
    np.testing.assert_allclose(got, kpts, rtol=0, atol=1e-3)
    assert op.available_streams(tmp_path, "U0101", "S0100")["kpt_json"] is not None


def test_keypoints_fall_back_to_preprocessed_csv(tmp_path):
    ts = np.array([1000, 1067, 1133])
    kpts = np.arange(3 * 51, dtype=float).reshape(3, 17, 3)
    _write_preprocessed(tmp_path, "U0101", "S0100", ts, [100, 100, 200], kpts)
    got_ts, got = op.load_keypoints(tmp_path, "U0101", "S0100")
    assert got_ts.tolist() == ts.tolist()
    assert np.array_equal(got, kpts.astype(np.float32))  # J00_D0, J00_D1, J00_D2, J01_D0 ... -> (N, 17, 3)
    assert got[1, 16, 2] == kpts[1, 16, 2]


# ------------------------------------------------------------------------------------------------- RGB + video
def test_rgb_frames_sorted_by_name_time(tmp_path):
    d = op.rgb_dir(tmp_path, "U0101", "S0100")
    ts = [1648531522143 + round(i * 1000 / 15) for i in range(30)]  # crosses a minute folder
    for t in reversed(ts):
        p = d / op.frame_name(t)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"\xff\xd8")
    got_ts, paths = op.rgb_frames(tmp_path, "U0101", "S0100")
    assert got_ts.tolist() == ts and [op.parse_frame_name(p.name) for p in paths] == ts
    assert op.available_streams(tmp_path, "U0101", "S0100")["rgb"] == d


def test_video_start(tmp_path, real_root):
    root = tmp_path / "root"
    shutil.copytree(real_root, root)
    v = op.video_path(root, U, S)
    _one_line_error(lambda: op.video_start_ms(root, U, S), "no video", str(v))
    v.parent.mkdir(parents=True)
    v.write_bytes(b"not decoded here")
    assert op.available_streams(root, U, S)["video"] == v
    assert op.video_start_ms(root, U, S) == 1648531522143  # first annotation
    v.with_suffix(".json").write_text(json.dumps({"start_unixtime_ms": 1648531500000}))
    assert op.video_start_ms(root, U, S) == 1648531500000
    v.with_suffix(".json").write_text(json.dumps({"start_unixtime_ms": "soon"}))
    _one_line_error(lambda: op.video_start_ms(root, U, S), "start_unixtime_ms", "S0500.json")
    v.with_suffix(".json").write_text("{oops")
    _one_line_error(lambda: op.video_start_ms(root, U, S), "S0500.json")


# ------------------------------------------------------------------------------------------------- errors
def test_root_errors(tmp_path, monkeypatch):
    monkeypatch.delenv(op.ROOT_ENV, raising=False)
    _one_line_error(lambda: op.resolve_root(None), "$OPENPACK_ROOT")
    _one_line_error(lambda: op.resolve_root(tmp_path / "nope"), "not found", str(tmp_path / "nope"))
    monkeypatch.setenv(op.ROOT_ENV, str(tmp_path))
    assert op.resolve_root(None) == tmp_path
    _one_line_error(lambda: op.list_users(None), "no OpenPack users under", str(tmp_path))
    (tmp_path / "U0101").mkdir()
    assert op.list_users(None) == ["U0101"]
    _one_line_error(lambda: op.list_sessions(None, "U0101"), "no sessions for U0101", "openpack-operations")
    _one_line_error(lambda: op.list_sessions(None, "U0199"), "user U0199 not found", str(tmp_path / "U0199"))
    _one_line_error(lambda: op.list_sessions(None, "../etc"), "bad user id")
    _one_line_error(lambda: op.load_timeline(None, "U0101", "S01"), "bad session id")
    _one_line_error(lambda: op.load_keypoints(None, "U0101", "S0100"), "no 2D keypoints", "S0100.json",
                    "U0101-S0100.csv")
    _one_line_error(lambda: op.rgb_frames(None, "U0101", "S0100"), "no RGB frames", "color-masked/frames/S0100")
    op.rgb_dir(tmp_path, "U0101", "S0100").mkdir(parents=True)
    _one_line_error(lambda: op.rgb_frames(None, "U0101", "S0100"), "holds no .jpg")
    (op.rgb_dir(tmp_path, "U0101", "S0100") / "img_001.jpg").write_bytes(b"")
    _one_line_error(lambda: op.rgb_frames(None, "U0101", "S0100"), "img_001.jpg", "YYYYMMDD_HHMMSS_mmm.jpg")


INTERVAL_HEAD = "uuid,user,session,box,id,operation,start,end,actions\n"
GOOD_ROW = "op:1,U0101,S0100,1,100,Picking,2022-03-29 14:00:00.000000+09:00,2022-03-29 14:00:02.000000+09:00,\n"


@pytest.mark.parametrize("text,needles", [
    ("uuid,user,session,box,operation,start,end\n", ["missing column 'id'"]),
    (INTERVAL_HEAD, ["no rows"]),
    (INTERVAL_HEAD + GOOD_ROW + GOOD_ROW.replace(",100,", ",123,"), ["row 3", "unknown operation id 123"]),
    (INTERVAL_HEAD + GOOD_ROW.replace(",100,", ",abc,"), ["row 2", "'id'", "expected an integer"]),
    (INTERVAL_HEAD + GOOD_ROW.replace("14:00:00.000000+09:00", "yesterday"), ["row 2", "bad start/end time"]),
    (INTERVAL_HEAD + GOOD_ROW.replace("14:00:00.000000+09:00", "14:00:00.000000"), ["row 2", "no UTC offset"]),
    (INTERVAL_HEAD + GOOD_ROW.replace("14:00:02", "13:59:59"), ["row 2", "not after start"]),
    ("\x00\x01\x02", ["S0100.csv"]),
])
def test_malformed_interval_csv(tmp_path, text, needles):
    p = op.operations_csv(tmp_path, "U0101", "S0100")
    p.parent.mkdir(parents=True)
    p.write_text(text)
    _one_line_error(lambda: op.load_timeline(tmp_path, "U0101", "S0100"), str(p), *needles)


@pytest.mark.parametrize("text,needles", [
    ("unixtime,user,session,box\n1000,U0101,S0100,1\n", ["missing column 'id' or 'operation'"]),
    ("unixtime,id\n1000,100\n1000,200\n", ["row 3", "does not increase"]),
    ("unixtime,id\n1000,100\n2000,77\n", ["row 3", "unknown operation id 77"]),
    ("unixtime,id\nnow,100\n", ["row 2", "'unixtime'"]),
])
def test_malformed_1hz_csv(tmp_path, text, needles):
    p = op.operations_1hz_csv(tmp_path, "U0101", "S0100")
    p.parent.mkdir(parents=True)
    p.write_text(text)
    _one_line_error(lambda: op.load_timeline(tmp_path, "U0101", "S0100"), str(p), *needles)


def test_malformed_preprocessed_csv(tmp_path):
    p = _write_preprocessed(tmp_path, "U0101", "S0100", [0, 67, 133], [100, 100, 999])
    _one_line_error(lambda: op.load_timeline(tmp_path, "U0101", "S0100"), str(p), "row 4", "999")
    df = pd.read_csv(p).drop(columns=["J16_D2"])
    df["operation"] = 100
    df.to_csv(p, index=False)
    assert op.load_timeline(tmp_path, "U0101", "S0100") == [Segment(0, 133 + 67, 100)]  # timeline needs no joints
    _one_line_error(lambda: op.load_keypoints(tmp_path, "U0101", "S0100"), str(p), "missing column 'J16_D2'")
    df["J16_D2"] = ["x", 0.5, 0.5]
    df.to_csv(p, index=False)
    _one_line_error(lambda: op.load_keypoints(tmp_path, "U0101", "S0100"), "row 2", "'J16_D2' is not a number")


@pytest.mark.parametrize("content,needles", [
    ("{not json", ["not valid JSON"]),
    (json.dumps({"info": {}}), ["missing list 'annotations'"]),
    (json.dumps({"annotations": []}), ["'annotations' is empty"]),
    (json.dumps({"annotations": [{"image_id": 1, "keypoints": [[0, 0, 1]] * 17},
                                 {"image_id": 2, "keypoints": [[0, 0, 1]] * 16}]}), ["annotations[1].keypoints", "48"]),
    (json.dumps({"annotations": [{"image_id": "t0", "keypoints": [[0, 0, 1]] * 17}]}), ["annotations[0].image_id"]),
    (json.dumps({"annotations": [{"keypoints": [[0, 0, 1]] * 17}]}), ["annotations[0].image_id is None"]),
])
def test_malformed_keypoint_json(tmp_path, content, needles):
    p = op.keypoints_json(tmp_path, "U0101", "S0100")
    p.parent.mkdir(parents=True)
    p.write_text(content)
    _one_line_error(lambda: op.load_keypoints(tmp_path, "U0101", "S0100"), str(p), *needles)


def test_duplicate_rgb_timestamps(tmp_path):
    d = op.rgb_dir(tmp_path, "U0101", "S0100")
    for sub in ("a", "b"):  # the same frame name in two folders
        p = d / sub / "20220329_142522_143.jpg"
        p.parent.mkdir(parents=True)
        p.write_bytes(b"")
    _one_line_error(lambda: op.rgb_frames(tmp_path, "U0101", "S0100"), "two frames with the same time")
