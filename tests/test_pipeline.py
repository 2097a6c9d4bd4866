"""data_pipeline.py end to end on the synthetic root: shards, manifests, pairs, grammar, samples, resume, bad input."""
from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from openpack_vlm.data import openpack
from openpack_vlm.data.clips import clip_truth
from openpack_vlm.data.sources import open_source
from openpack_vlm.grammar import Grammar
from openpack_vlm.prompt import frame_label, target_text
from openpack_vlm.data.shards import ClipRecord, encode_jpeg, iter_samples, shard_paths
from openpack_vlm.data.timebar import draw_time_bar, read_time_bar
from openpack_vlm.contract import RunContract

SPLITS = {"train": [f"U010{i}" for i in range(1, 7)], "val": ["U0107"], "test": ["U0108"]}


def _main(argv):
    import data_pipeline

    return data_pipeline.main([str(a) for a in argv])


def _manifest(d: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (d / split / "manifest.jsonl").read_text().splitlines()]


def test_outputs_and_ground_truth_from_shards(pipeline_out, synthetic_root):
    summary = json.loads((pipeline_out / "summary.json").read_text())
    timelines: dict = {}
    for split, users in SPLITS.items():
        records = _manifest(pipeline_out, split)
        assert records, split
        assert summary["splits"][split]["clips"] == len(records)
        assert {r["user"] for r in records} == set(users)
        streamed = []
        for rec, frames in iter_samples(shard_paths(pipeline_out / split)):  # webdataset reads the shards back
            assert isinstance(rec, ClipRecord) and rec.split == split and rec.source == "rgb"
            assert len(frames) == len(rec.frame_indices) == 8
            assert rec.frame_indices == sorted(set(rec.frame_indices)) and 0 <= rec.frame_indices[0]
            assert rec.frame_indices[-1] <= 124
            assert {i // 25 for i in rec.frame_indices} == {0, 1, 2, 3, 4}  # coverage floor held
            assert all(f.size == (336, 336) for f in frames)
            key = (rec.user, rec.session)
            if key not in timelines:
                timelines[key] = openpack.load_timeline(synthetic_root, *key)
            assert rec.truth == clip_truth(timelines[key], rec.t0_ms).model_dump()  # truth matches the timeline
            streamed.append(rec.to_json())
        assert streamed == records  # manifest = shard contents, in order
    assert len({r["clip_id"] for s in SPLITS for r in _manifest(pipeline_out, s)}) == sum(
        summary["splits"][s]["clips"] for s in SPLITS)
    assert summary["sources_used_this_run"] == {"rgb": sum(summary["splits"][s]["clips"] for s in SPLITS)}
    t = summary["timing"]  # the <= 10 % sampling budget is measured at real frame size by scripts/bench_pipeline.py
    assert t["clips_this_run"] == sum(summary["splits"][s]["clips"] for s in SPLITS)
    assert set(t["cpu_s"]) >= {"frames", "sampling", "encode"} and 0 < t["sampling_share"] < 1
    kinds = summary["splits"]["train"]["kinds"]
    assert kinds["boundary"] > 3 * kinds["within"] > 0


def test_stored_frames_are_the_sampled_source_frames(pipeline_out, synthetic_root):
    rec = _manifest(pipeline_out, "val")[3]
    src = open_source(synthetic_root, rec["user"], rec["session"], "auto")
    frames = src.clip(rec["t0_ms"])
    with tarfile.open(pipeline_out / "val" / rec["extra"]["shard"]) as tar:
        for j, i in enumerate(rec["frame_indices"]):
            stored = tar.extractfile(f"{rec['clip_id']}.f{j:02d}.jpg").read()
            assert stored == encode_jpeg(Image.fromarray(frames[i]), 90)
    assert RunContract.load(pipeline_out).data.time_bar is False  # the default: plain frames


def test_pairs_are_chat_format_with_shard_members(pipeline_out):
    records = {r["clip_id"]: r for r in _manifest(pipeline_out, "train")}
    lines = (pipeline_out / "train" / "pairs.jsonl").read_text().splitlines()
    assert len(lines) == len(records)
    members = {}
    for p in sorted((pipeline_out / "train").glob("shard-*.tar")):
        with tarfile.open(p) as tar:
            members[p.name] = set(tar.getnames())
    for line in lines:
        pair = json.loads(line)
        rec = records[pair["clip_id"]]
        roles = [m["role"] for m in pair["messages"]]
        assert roles == ["system", "user", "assistant"]
        images = [c["image"] for c in pair["messages"][1]["content"] if c["type"] == "image"]
        assert images == pair["images"] and len(images) == 8
        assert set(images) <= members[pair["shard"]]
        texts = [c["text"] for c in pair["messages"][1]["content"] if c["type"] == "text"]
        assert [t.strip() for t in texts[1:-1]] == [frame_label(i) for i in rec["frame_indices"]]
        # the default answer format names the first and last SAMPLED frame of the operation (prompt.shown_span)
        answer = pair["messages"][2]["content"][0]["text"]
        assert answer == target_text(rec["truth"], rec["frame_indices"])
        seg = json.loads(answer)["temporal_segment"]
        assert seg["start_frame"] in rec["frame_indices"] and seg["end_frame"] in rec["frame_indices"]


def test_grammar_fitted_on_train_timelines(pipeline_out, synthetic_root):
    g = Grammar.load(pipeline_out / "grammar.json")
    timelines = [openpack.load_timeline(synthetic_root, u, "S0100") for u in SPLITS["train"]]
    seqs = [[s.op_id for s in tl] for tl in timelines]
    expected = Grammar.fit(seqs)
    # with it, the train timelines' mean duration per operation: the timeline HMM's prior wherever the grammar goes
    from openpack_vlm.grammar import mean_durations

    expected.meta["mean_seconds"] = {str(k): v for k, v in mean_durations(timelines).items()}
    assert g.to_json() == expected.to_json()
    assert set(g.meta["mean_seconds"]) == {str(s.op_id) for tl in timelines for s in tl}
    # val/test timelines are not in it: fitting with U0107 too changes the counts
    assert g.to_json() != Grammar.fit(seqs + [[s.op_id for s in openpack.load_timeline(
        synthetic_root, "U0107", "S0100")]]).to_json()


@pytest.mark.slow
def test_training_data_samples_regenerate_byte_identical(pose_samples, repo_root):
    """training_data_samples/ comes from the public path (skeleton frames from keypoints) and its README's commands
    remake it byte for byte."""
    committed = repo_root / "training_data_samples"
    fresh = pose_samples
    assert "--source pose --samples-out training_data_samples" in (fresh / "README.md").read_text()
    names = sorted(p.name for p in fresh.iterdir())
    assert len([n for n in names if n.endswith(".json")]) == 20
    assert names == sorted(p.name for p in committed.iterdir())
    for n in names:
        assert (fresh / n).read_bytes() == (committed / n).read_bytes(), n
    assert sum((committed / n).stat().st_size for n in names) < 2 * 1024**2


def test_parallel_resume_and_settings_guard(pipeline_out, synthetic_root, tmp_path, capsys):
    out = tmp_path / "d"
    args = ["--root", synthetic_root, "--out", out, "--splits", "val=U0107", "test=U0108"]
    assert _main(args + ["--workers", "2"]) == 0
    for split in ("val", "test"):  # 2 workers write the same bytes as 1 worker
        assert (out / split / "shard-000000.tar").read_bytes() == (
            pipeline_out / split / "shard-000000.tar").read_bytes()

    # small shards, then a crash: the last shard's log line is lost and a temp file is left behind
    out2 = tmp_path / "d2"
    args2 = ["--root", synthetic_root, "--out", out2, "--splits", "val=U0107", "--shard-mb", "1"]
    assert _main(args2) == 0
    shards = sorted((out2 / "val").glob("shard-*.tar"))
    assert len(shards) >= 2
    full = {p.name: p.read_bytes() for p in shards}
    manifest = (out2 / "val" / "manifest.jsonl").read_text()
    prog = out2 / "val" / "progress.jsonl"
    lines = prog.read_text().splitlines()
    prog.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    (out2 / "val" / "shard-000099.tar.tmp").write_bytes(b"partial")
    first_mtime = shards[0].stat().st_mtime_ns
    assert _main(args2) == 0
    assert {p.name: p.read_bytes() for p in sorted((out2 / "val").glob("shard-*.tar"))} == full
    assert not list((out2 / "val").glob("*.tmp"))
    assert shards[0].stat().st_mtime_ns == first_mtime  # finished shards were kept, not rewritten
    assert (out2 / "val" / "manifest.jsonl").read_text() == manifest

    capsys.readouterr()
    assert _main(args2 + ["--k", "4"]) == 2  # other settings into the same --out are refused
    err = capsys.readouterr().err
    assert "other settings (k, sampler)" in err and err.count("\n") == 1


def test_pose_source(synthetic_root, tmp_path):
    out = tmp_path / "p"
    assert _main(["--root", synthetic_root, "--out", out, "--splits", "test=U0108", "--source", "pose",
                  "--max-clips-per-session", "6"]) == 0
    recs = _manifest(out, "test")
    assert len(recs) == 6 and {r["source"] for r in recs} == {"pose"}
    # skeleton clips are sampled by joint speed, and the indices are exactly what that motion signal gives
    assert {r["sampler"] for r in recs} == {"motion_kpt"}
    from openpack_vlm.data.sources import open_source
    from openpack_vlm.data.sampling import SamplingConfig, motion_from_keypoints, sample_from_motion

    src = open_source(synthetic_root, "U0108", "S0100", "pose")
    for r in recs:
        motion = motion_from_keypoints(src.kpts[src.source_indices(r["t0_ms"])])
        assert r["frame_indices"] == sample_from_motion(motion, SamplingConfig())
    from openpack_vlm.data.skeleton import PoseRender, token_coverage

    for rec, frames in iter_samples(shard_paths(out / "test")):
        arr = np.stack([np.asarray(f) for f in frames])
        assert arr.shape[1:] == (336, 336, 3) and arr.max() > 100  # a skeleton was drawn ...
        assert token_coverage(arr) > 0.3  # ... filling the frame: the window follows the worker
        want = src.clip(rec.t0_ms)[rec.frame_indices]  # the stored JPEGs are the source's person-centred clip
        assert np.abs(arr.astype(int) - want.astype(int)).mean() < 4
    run = json.loads((out / "run.json").read_text())
    assert run["data"]["pose_render"] == PoseRender().to_json() and run["data"]["pose_render"]["mode"] == "person"
    # the first renderer stays available: the whole Kinect frame, letterboxed (black bars above it)
    assert _main(["--root", synthetic_root, "--out", tmp_path / "f", "--splits", "test=U0108", "--source", "pose",
                  "--max-clips-per-session", "2", "--pose-render", "frame"]) == 0
    for rec, frames in iter_samples(shard_paths(tmp_path / "f" / "test")):
        arr = np.asarray(frames[0])
        assert arr[:60].max() < 30 and arr.max() > 100
    # --time_bar: each stored frame shows its time along the bottom edge, and the contract says so
    assert _main(["--root", synthetic_root, "--out", tmp_path / "t", "--splits", "test=U0108", "--source", "pose",
                  "--max-clips-per-session", "2", "--time_bar"]) == 0
    assert RunContract.load(tmp_path / "t").data.time_bar is True
    for rec, frames in iter_samples(shard_paths(tmp_path / "t" / "test")):
        assert [round(read_time_bar(np.asarray(f))) for f in frames] == rec.frame_indices
        want = src.clip(rec.t0_ms)
        with tarfile.open(next((tmp_path / "t" / "test").glob("shard-*.tar"))) as tar:
            stored = tar.extractfile(f"{rec.clip_id}.f00.jpg").read()
        assert stored == encode_jpeg(Image.fromarray(draw_time_bar(want[rec.frame_indices[0]], rec.frame_indices[0])), 90)


def _copy_user(src: Path, dst: Path, user: str) -> None:
    shutil.copytree(src / user, dst / user)


def test_bad_inputs_are_skipped_and_counted(synthetic_root, tmp_path, capsys):
    root = tmp_path / "root"
    for u in ("U0105", "U0106", "U0107", "U0108"):
        _copy_user(synthetic_root, root, u)
    # U0105: no frames, no keypoints at all
    shutil.rmtree(root / "U0105" / "kinect")
    # U0106: a session shorter than one clip
    ops = openpack.operations_csv(root, "U0106", "S0100")
    openpack.operations_1hz_csv(root, "U0106", "S0100").unlink()
    df = pd.read_csv(ops).iloc[:1].copy()
    df["end"] = openpack.ms_to_iso(openpack.iso_to_ms(df["start"].iloc[0]) + 3000)  # one 3-s operation
    df.to_csv(ops, index=False)
    # U0107: one corrupt RGB frame in the middle of the session
    ts, paths = openpack.rgb_frames(root, "U0107", "S0100")
    paths[len(paths) // 2].write_bytes(b"\xff\xd8garbage")
    # U0108: annotation file with a header only (empty timeline)
    ops8 = openpack.operations_csv(root, "U0108", "S0100")
    ops8.write_text(ops8.read_text().splitlines()[0] + "\n")
    openpack.operations_1hz_csv(root, "U0108", "S0100").unlink()

    out = tmp_path / "out"
    assert _main(["--root", root, "--out", out, "--splits", "val=U0105-U0108", "--source", "rgb"]) == 0
    s = json.loads((out / "summary.json").read_text())
    reasons = {(x.get("user"), x["reason"].split(" (")[0]) for x in s["skipped"]}
    assert ("U0105", "no usable frame source") in reasons
    assert ("U0106", "session shorter than one 5-s clip") in reasons
    assert ("U0108", "no usable timeline") in reasons
    corrupt = [x for x in s["skipped"] if x.get("user") == "U0107" and "clip_id" in x]
    assert corrupt and all("cannot decode frame" in x["reason"] for x in corrupt)
    recs = _manifest(out, "val")
    assert recs and {r["user"] for r in recs} == {"U0107"}
    assert not {x["clip_id"] for x in corrupt} & {r["clip_id"] for r in recs}
    assert not list((out / "val").glob("*.tmp"))

    capsys.readouterr()
    assert _main(["--root", tmp_path / "nope", "--out", tmp_path / "o2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: OpenPack root not found") and err.count("\n") == 1
    assert _main(["--root", root, "--out", tmp_path / "o3", "--splits", "val=U0105"]) == 2
    assert "no clips written" in capsys.readouterr().err
    assert _main(["--root", root, "--out", tmp_path / "o4", "--splits", "val=X1"]) == 2
    assert "bad user" in capsys.readouterr().err


def _script(repo_root: Path, name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, repo_root / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_compare_sampling_script(synthetic_root, repo_root, tmp_path):
    cs = _script(repo_root, "compare_sampling")
    out = tmp_path / "cmp.json"
    assert cs.main(["--root", str(synthetic_root), "--out", str(out), "--users", "U0107"]) == 0
    res = json.loads(out.read_text())
    assert (tmp_path / "cmp.png").stat().st_size > 10_000 and res["synthetic_root"] is True
    s = res["strategies"]
    assert set(s) == {"uniform", "motion", "motion_free", "motion_kpt", "random"}
    n = s["uniform"]["clips"]
    assert n > 20 and all(v["clips"] == n and v["boundaries"] == s["uniform"]["boundaries"] for v in s.values())
    for v in s.values():
        assert 0.5 <= v["boundary_dist_frames_mean_ci95"][0] < 30 and 0 < v["best_tiou_mean_ci95"][0] <= 1
    # the metric functions on a hand-made case
    assert cs.boundary_distances([0, 10, 20], [10, 16]) == [0.5, 4.5]
    assert cs.best_tiou([0, 10, 20], (0, 9)) == pytest.approx(10 / 11)
    labels = [1] * 50 + [2] * 75
    assert cs.mid_tiou([0, 40, 60, 124], labels, 2, (50, 124)) == pytest.approx(75 / 75)


def test_bench_script_all_three_sources(repo_root, tmp_path, capsys):
    bench = _script(repo_root, "bench_pipeline")
    root = tmp_path / "bench_root"
    bench.write_bench_root(root, "U0107", "S0100", seconds=12)  # 1280x720 frames + an H.264 video of them
    out = tmp_path / "bench.json"
    assert bench.main(["--root", str(root), "--clips", "2", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    for name in ("rgb", "video", "pose"):
        r = res[name]
        assert r["clips_per_s"] > 0 and 0 < r["sampling_share"] < 1 and r["source_frames"] > 0
    assert res["rgb"]["frame_size"] == "1280x720" and res["rgb"]["jpeg_reduce"] == 2
    assert "path_over_decode" in res["video"] and set(res["targets_met"]) == {
        "rgb_path_ge_50pct_of_decode", "video_path_ge_50pct_of_decode", "pose_ge_100x_realtime", "sampling_le_10pct"}
    assert res["pose_whole_clip"]["source_frames"] == res["pose"]["source_frames"]
    assert res["pose_speedup_vs_whole_clip"] > 0
    out = capsys.readouterr().out
    assert "targets:" in out and "rendering only the sampled frames is" in out
