"""Long recordings: streaming decode, sliding windows, the merge rule, cycle times, OpenPack's metric, the CLI.

The merge logic is checked against synthetic camera videos whose true timeline is known
(``synthetic.write_session_video``), answered by an oracle that reads each frame's operation from the video
(tests/oracle.py) — so a window misplaced in time, a frame dropped by the streaming decoder or a wrong merge shows
up as a wrong segment. The real camera files check the streaming decoder against ``decode_video``.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from openpack_vlm.data import video
from openpack_vlm.data.errors import FrameError, VideoDecodeError
from openpack_vlm.testing.synthetic import write_session_video
from openpack_vlm.grammar import Grammar, op_sequence
from openpack_vlm.labels import NAME_TO_ID
from openpack_vlm.timeline import (MergeConfig, TimelineCancelled, TimelineConfig, TimelineError, analyse_video,
                                   analyse_windows, box_cycles, iter_windows, merge_windows, score_timeline)
from openpack_vlm.timeline.__main__ import main as timeline_main
from openpack_vlm.timeline.analyse import per_second_ids
from openpack_vlm.timeline.windows import expected_windows, stride_ticks
from media import make_video
from oracle import OraclePredictor, frame_ops

REAL_VIDEOS = Path(__file__).parent / "data" / "videos"


@pytest.fixture(scope="module")
def session_video(tmp_path_factory):
    """A 2-minute synthetic session video (15 fps, 320x180, H.264) and its truth. The size is the oracle's cost, not
    what these tests check (the real camera files above are decoded at their own sizes): ~4x less to decode than
    640x360, for the several tests that analyse the whole video."""
    d = tmp_path_factory.mktemp("timeline")
    truth = write_session_video(d / "s120.mp4", 120, seed=0, size=(320, 180))
    return d / "s120.mp4", truth


@pytest.fixture(scope="module")
def grammar(tmp_path_factory) -> Grammar:
    """The procedure's grammar, fitted on ANOTHER synthetic session (seed 1), as a training run would fit it."""
    d = tmp_path_factory.mktemp("grammar_src")
    truth = write_session_video(d / "other.mp4", 300, seed=1, size=(64, 36))
    return Grammar.fit([op_sequence([NAME_TO_ID[s["operation"]] for s in truth["segments"]])])


# ------------------------------------------------------------------------------------------ streaming decode
@pytest.mark.parametrize("name,seconds", [("box.mp4", None), ("cup.mp4", None), ("vtest.avi", 20.0)])
def test_iter_video_is_decode_video_one_frame_at_a_time(name, seconds):
    """The streaming decoder gives exactly decode_video's frames (the upload path, itself equal to decord's), also for
    box.mp4, whose frame times go backwards at the decoder's output (re-sorted within a bounded window). The two
    phone videos whole (their ends included); of the 80-s MS-MPEG4 AVI the first 20 s (500 frames: the codec and
    container are what it adds; decoding it whole twice took 15 s of the suite)."""
    path = REAL_VIDEOS / name
    streamed = np.stack(list(itertools.islice(video.iter_video(path), None if seconds is None else int(seconds * 25))))
    np.testing.assert_array_equal(streamed, video.decode_video(path, max_seconds=seconds))


@pytest.mark.parametrize("kw", [dict(fps=30), dict(fps=60, size=(120, 160)), dict(codec="mjpeg", container="avi"),
                                dict(codec="libvpx-vp9", container="webm"), dict(fps=15, seconds=3.0)])
def test_iter_video_formats(tmp_path, kw):
    p = make_video(tmp_path / ("v." + {"avi": "avi", "webm": "webm"}.get(kw.get("container"), "mp4")), **kw)
    np.testing.assert_array_equal(np.stack(list(video.iter_video(p))), video.decode_video(p))


def test_iter_video_errors(tmp_path):
    with pytest.raises(VideoDecodeError, match="not found"):
        list(video.iter_video(tmp_path / "nope.mp4"))
    (tmp_path / "junk.mp4").write_bytes(b"not a video" * 500)
    with pytest.raises(VideoDecodeError, match="cannot decode video junk.mp4") as e:
        list(video.iter_video(tmp_path / "junk.mp4"))
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------ windows
def _numbered(n: int):
    """n one-pixel frames whose value is their tick index (mod 256) in channel 0 and index // 256 in channel 1."""
    for i in range(n):
        f = np.zeros((1, 1, 3), np.uint8)
        f[0, 0, 0], f[0, 0, 1] = i % 256, i // 256
        yield f


def _ticks(w) -> np.ndarray:
    return w.frames[:, 0, 0, 0].astype(int) + 256 * w.frames[:, 0, 0, 1].astype(int)


@pytest.mark.parametrize("n_ticks", [50, 124, 125, 126, 187, 188, 250, 1000, 1999])
def test_windows_cover_every_frame_on_the_stride_grid(n_ticks):
    stride = 62
    wins = list(iter_windows(_numbered(n_ticks), stride))
    assert len(wins) == expected_windows(n_ticks, stride)
    covered = set()
    for i, w in enumerate(wins):
        assert w.index == i and w.frames.shape[0] == 125
        ticks = _ticks(w)
        if n_ticks < 125:  # one window, padded with the last frame (to_clip's rule)
            assert w.padded == 125 - n_ticks and list(ticks[:n_ticks]) == list(range(n_ticks))
            assert set(ticks[n_ticks:]) == {n_ticks - 1}
        else:
            assert list(ticks) == list(range(w.start_tick, w.start_tick + 125))  # the frames of that time
            if i < len(wins) - 1:
                assert w.start_tick == i * stride
        covered |= set(ticks.tolist())
    assert covered == set(range(n_ticks))
    assert wins[-1].start_tick + 125 - wins[-1].padded == n_ticks  # the last window ends with the recording


def test_window_too_short_and_bad_stride():
    with pytest.raises(FrameError, match="too short"):
        list(iter_windows(_numbered(40), 62))
    for bad in (0, 5.1, -1):
        with pytest.raises(ValueError, match="stride must be between"):
            stride_ticks(bad)
    assert stride_ticks(2.5) == 62 and stride_ticks(5) == 125


def test_video_windows_are_the_clips_predict_would_see(session_video):
    """Window k of the streamed video = to_clip of the whole decode from its start tick: what /predict answers for
    the video cut at that time."""
    path, _ = session_video
    full = video.decode_video(path, max_seconds=20)
    wins = []
    for w in iter_windows(video.iter_video(path), 62):
        if w.start_tick + 125 > len(full):
            break
        wins.append(w)
    assert len(wins) >= 5
    for w in wins:
        np.testing.assert_array_equal(w.frames, video.to_clip(full[w.start_tick:]))


# ---------------------------------------------------------------------------------------------- the merge rule
def _dist(op, p):
    """p on ``op``, the rest spread evenly over the other 10 classes (what a model's softmax looks like)."""
    return {n: (p if n == op else (1 - p) / 10) for n in NAME_TO_ID}


def _win(start, dom, span=(0, 124), nxt=None, p=0.9, end=None):
    a, b = start + span[0] / 25, start + (span[1] + 1) / 25
    return {"start_s": start, "end_s": end or start + 5, "span_s": [a, b], "dominant": _dist(dom, p),
            "next": _dist(nxt, p) if nxt else None, "dominant_operation": dom}


def test_merge_recovers_segments_and_outvotes_one_wrong_window():
    # 0-20 s Picking, 20-40 s Assemble Box; windows every 2.5 s; one confident wrong window at 10 s
    wins = []
    for k in range(15):
        s = 2.5 * k
        if s + 5 <= 20:
            dom, span, nxt = "Picking", (0, 124), "Relocate Item Label"
        elif s >= 20:
            dom, span, nxt = "Assemble Box", (0, 124), "Insert Items"
        else:  # straddles the change at 20 s
            cut = int(round((20 - s) * 25))
            dom, span, nxt = ("Picking", (0, cut - 1), "Assemble Box") if cut >= 63 else ("Assemble Box", (cut, 124), "Insert Items")
        wins.append(_win(s, dom, span, nxt))
    wins[4] = _win(10.0, "Close Box", p=0.99)  # a wrong, confident window
    out = merge_windows(wins, 40.0, cfg=MergeConfig(hmm=True))
    assert [(s["start_s"], s["end_s"], s["operation"]) for s in out["segments"]] == [
        (0.0, 20.0, "Picking"), (20.0, 40.0, "Assemble Box")]
    assert len(out["seconds"]) == 40
    # at a 2.5-s stride each second is seen by 2 windows: the votes alone let the more confident one win
    votes = merge_windows(wins, 40.0, cfg=MergeConfig(hmm=False))
    assert ("Close Box" in votes["seconds"]) and votes["seconds"][:10] == ["Picking"] * 10


def test_frame_head_readings_place_the_change_inside_a_window():
    """Windows whose adapter has a frame head carry each shown frame's reading (analyse._frame_records): a second
    inside a frame's cell takes that frame's distribution, so a change at 13 s is placed at 13 s even though every
    window's answer (dominant over the whole clip) says one operation only; the answers alone put it at 15 s."""
    from openpack_vlm.prompt import frame_cells
    from openpack_vlm.timeline.analyse import _frame_records

    idx = [0, 18, 36, 54, 72, 90, 108, 124]
    wins = []
    for k in range(9):
        s = 2.5 * k
        t = [s + i / 25 for i in idx]
        frames = [_dist("Picking" if ti < 13 else "Close Box", 0.9) for ti in t]
        w = _win(s, "Picking" if s + 2.5 < 13 else "Close Box")  # the answer: one operation, the whole clip
        w["frames"] = _frame_records(s, {"frames": frames, "frame_indices": idx})
        wins.append(w)
    assert wins[0]["frames"][0]["span_s"][0] == 0.0 and wins[0]["frames"][-1]["span_s"][1] == 5.0
    assert [round((f["span_s"][1] - f["span_s"][0]) * 25) for f in wins[0]["frames"]] == frame_cells(idx)
    got = merge_windows(wins, 25.0, cfg=MergeConfig(hmm=False))
    assert got["seconds"] == ["Picking"] * 13 + ["Close Box"] * 12
    for w in wins:  # the same windows without their frames
        w["frames"] = None
    assert merge_windows(wins, 25.0, cfg=MergeConfig(hmm=False))["seconds"] == ["Picking"] * 15 + ["Close Box"] * 10


def test_hmm_removes_a_short_flicker_the_votes_keep():
    """Unsure Picking windows (p=0.4) and one confident Close Box window over seconds 8-9: the votes alone make a 2-s
    Close Box segment; the HMM does not (two switches cost more than two seconds of weak evidence)."""
    wins = [_win(2.5 * k, "Picking", p=0.4) for k in range(7)]
    wins.append(_win(8.4, "Close Box", span=(0, 29), p=0.95, end=9.6))
    votes = merge_windows(wins, 20.0, cfg=MergeConfig(hmm=False))
    hmm = merge_windows(wins, 20.0, cfg=MergeConfig(hmm=True))
    assert [(s["start_s"], s["end_s"], s["operation"]) for s in votes["segments"]] == [
        (0.0, 8.0, "Picking"), (8.0, 10.0, "Close Box"), (10.0, 20.0, "Picking")]
    assert [s["operation"] for s in hmm["segments"]] == ["Picking"]
    assert 0.5 < hmm["segments"][0]["confidence"] <= 1.0


# ---------------------------------------------------------------------------------------------- cycle times
def test_box_cycles_rules():
    seg = lambda a, b, op: {"start_s": a, "end_s": b, "operation": op}  # noqa: E731
    segs = [seg(0, 5, "Close Box"), seg(5, 10, "Attach Shipping Label"),  # the end of a box begun before: no box
            seg(10, 20, "Picking"), seg(20, 25, "Relocate Item Label"), seg(25, 27, "Picking"),  # repeat inside a box
            seg(27, 40, "Assemble Box"), seg(40, 41, "Null"), seg(41, 50, "Attach Shipping Label"),
            seg(50, 53, "Put on Back Table"),
            seg(53, 60, "Picking"), seg(60, 70, "Attach Shipping Label"),
            seg(70, 80, "Picking"), seg(80, 90, "Insert Items")]  # the recording ends inside a box
    cycles, summary = box_cycles(segs, 90.0)
    assert [(c["start_s"], c["end_s"], c["complete"], c["cycle_s"]) for c in cycles] == [
        (10, 53, True, 43.0), (53, 70, True, 17.0), (70, None, False, None)]
    assert cycles[0]["operations"] == {"Picking": 12.0, "Relocate Item Label": 5.0, "Assemble Box": 13.0,
                                       "Attach Shipping Label": 9.0, "Put on Back Table": 3.0}
    assert summary == {"boxes_seen": 3, "complete_cycles": 2, "mean_cycle_s": 30.0, "median_cycle_s": 30.0}
    # a box that starts with the recording is not complete (its start was not seen); one ending at the end neither
    cycles, summary = box_cycles([seg(0, 10, "Picking"), seg(10, 20, "Attach Shipping Label")], 20.0)
    assert summary["complete_cycles"] == 0 and cycles[0]["complete"] is False


def test_score_timeline_is_openpacks_metric():
    truth = [{"start_s": 0, "end_s": 10, "operation": "Picking"}, {"start_s": 10, "end_s": 12, "operation": "Null"},
             {"start_s": 12, "end_s": 20, "operation": "Close Box"}]
    perfect = [op for op in ["Picking"] * 10 + ["Null"] * 2 + ["Close Box"] * 8]
    m = score_timeline(perfect, truth)
    assert m["accuracy_1hz"] == 1.0 and m["macro_f1_present_classes"] == 1.0 and m["seconds_scored"] == 18
    assert m["macro_f1"] == pytest.approx(0.2)  # openpack-toolkit averages over all 10 operations
    wrong = ["Picking"] * 12 + ["Insert Items"] * 8
    m2 = score_timeline(wrong, truth)
    assert m2["per_class_f1"]["Close Box"] == 0.0 and m2["accuracy_1hz"] == pytest.approx(10 / 18, abs=1e-4)
    assert list(per_second_ids(truth, 20)[9:13]) == [100, 8100, 8100, 500]


# ------------------------------------------------------------------------------------ a video with a known truth
def test_oracle_reads_the_truth_from_the_frames(session_video):
    path, truth = session_video
    frames = video.decode_video(path, max_seconds=30)
    t = (np.arange(len(frames)) + 0.5) / 25
    ids = per_second_ids(truth["segments"], 31)
    expect = ids[np.floor(t).astype(int)]
    got = frame_ops(frames)
    near_change = np.zeros(len(t), bool)
    for s in truth["segments"]:
        near_change |= np.abs(t - s["start_s"]) < 0.6
    assert np.mean((got == expect)[~near_change]) > 0.97


def test_timeline_of_a_known_video_recovers_segments_and_cycles(session_video, grammar):
    """The oracle answers each window from its frames; the timeline must put the segments where the truth has them
    (boundaries within 1.5 s for segments of >= 3 s), find the same box cycles (within 2 s), and score macro-F1
    over the present classes >= 0.9 with OpenPack's metric."""
    path, truth = session_video
    oracle = OraclePredictor()
    oracle.grammar = grammar
    seen = []
    result = analyse_video(oracle, path, TimelineConfig(stride=2.5, batch_windows=3), truth=truth["segments"],
                           on_window=lambda rec, done, total: seen.append((done, total)))
    assert result["n_windows"] == len(seen) == seen[-1][0] == seen[-1][1]  # progress counts every window
    assert result["merge"]["hmm"] is True and result["merge"]["grammar"] is True  # hmm=auto: a grammar → the HMM
    assert result["duration_s"] == pytest.approx(truth["seconds"], abs=0.05)
    m = result["metrics"]
    assert m["accuracy_1hz"] >= 0.95 and m["macro_f1_present_classes"] >= 0.9, m
    pred = result["segments"]
    for s in truth["segments"]:
        if s["end_s"] - s["start_s"] < 3 or s["operation"] == "Null":
            continue
        mid = (s["start_s"] + s["end_s"]) / 2
        p = next(q for q in pred if q["start_s"] <= mid < q["end_s"])
        assert p["operation"] == s["operation"], (s, p)
        assert abs(p["start_s"] - s["start_s"]) <= 1.5 and abs(p["end_s"] - s["end_s"]) <= 1.5, (s, p)
    true_cycles, _ = box_cycles(truth["segments"], truth["seconds"])
    got = [c for c in result["cycles"] if c["complete"]]
    want = [c for c in true_cycles if c["complete"]]
    assert len(got) == len(want) >= 2
    for g, w in zip(got, want):
        assert abs(g["cycle_s"] - w["cycle_s"]) <= 2.0, (g, w)
    json.dumps(result)  # JSON-ready


def test_hmm_auto_needs_a_grammar(session_video):
    """Without a grammar the votes alone scored better than the HMM (scripts/timeline_merge_check.py), so auto uses
    the HMM only with one; on/off force it."""
    path, truth = session_video
    short = TimelineConfig(max_seconds=None, batch_windows=8)
    res = analyse_video(OraclePredictor(), path, short)
    assert res["merge"]["hmm"] is False and "HMM" not in res["merge"]["rule"]
    forced = analyse_video(OraclePredictor(), path, TimelineConfig(hmm="on", batch_windows=8))
    assert forced["merge"]["hmm"] is True and "HMM" in forced["merge"]["rule"]
    with pytest.raises(ValueError, match="hmm must be auto, on or off"):
        TimelineConfig(hmm="yes")


def test_cancel_stops_between_batches(session_video):
    path, _ = session_video
    oracle = OraclePredictor()
    n = []
    with pytest.raises(TimelineCancelled):
        analyse_video(oracle, path, TimelineConfig(batch_windows=2), on_window=lambda r, d, t: n.append(d),
                      cancelled=lambda: len(n) >= 4)
    assert len(n) == 4 and oracle.calls == 2


def test_max_seconds_refuses_long_recordings(session_video):
    path, _ = session_video
    with pytest.raises(TimelineError, match="over max_seconds=60"):
        analyse_video(OraclePredictor(), path, TimelineConfig(max_seconds=60))
    with pytest.raises(TimelineError, match="longer than max_seconds=60"):  # a stream whose length is not stated
        analyse_windows(OraclePredictor(), iter_windows(video.iter_video(path), 62), TimelineConfig(max_seconds=60))


# --------------------------------------------------------------------------------------------------------- CLI
def test_cli_writes_json_and_chart_with_the_real_tokenizer_model(tmp_path, tiny_real_model_dir, capsys):
    v = make_video(tmp_path / "v.mp4", seconds=12.0)
    out, png = tmp_path / "t.json", tmp_path / "t.png"
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps({"segments": [{"start_s": 0, "end_s": 12, "operation": "Picking"}]}))
    rc = timeline_main([str(v), "--model", str(tiny_real_model_dir), "--quantization", "none", "--device", "cpu",
                        "--out", str(out), "--plot", str(png), "--truth", str(truth), "--stride", "5"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    assert res["n_windows"] == 3 and res["duration_s"] == 12.0 and res["stride_s"] == 5.0
    assert [w["start_s"] for w in res["windows"]] == [0.0, 5.0, 7.0]  # the last window ends with the video
    assert res["segments"][0]["start_s"] == 0.0 and res["segments"][-1]["end_s"] == 12.0
    assert "macro_f1" in res["metrics"] and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path, capsys):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"x" * 1000)
    assert timeline_main([str(junk), "--model", "tiny", "--quantization", "none", "--out", str(tmp_path / "t.json")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "t.json").exists()
    assert timeline_main([str(junk), "--out", str(tmp_path / "t.json"), "--stride", "9"]) == 2
    assert "stride must be between" in capsys.readouterr().err


def test_the_grammars_durations_prime_the_hmm(session_video, grammar):
    """data_pipeline.py stores the train timelines' mean durations in grammar.json's meta; the timeline's HMM uses
    them wherever that grammar goes (evaluation and serving alike), else the real U0209 means."""
    from openpack_vlm.timeline.merge import transition_matrix

    path, _ = session_video
    g = Grammar.from_json(grammar.to_json())
    g.meta["mean_seconds"] = {"100": 2.0, "300": 20.0}
    oracle = OraclePredictor()
    oracle.grammar = g
    res = analyse_video(oracle, path, TimelineConfig(batch_windows=8, max_seconds=200))
    assert res["merge"]["mean_seconds"] == {100: 2.0, 300: 20.0}
    a = transition_matrix(g, MergeConfig(mean_seconds={100: 2.0, 300: 20.0}))
    i, j = 0, 2  # Picking, Assemble Box
    assert a[i, i] == pytest.approx(np.exp(-1 / 2.0)) and a[j, j] == pytest.approx(np.exp(-1 / 20.0))
    assert np.allclose(a.sum(1), 1.0)
