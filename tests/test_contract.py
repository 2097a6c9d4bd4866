"""The run contract (run.json) from data to API: what evaluation measured is what serving does.

- one recording through the training path (pipeline → shard → evaluation's predictor) and the same 5-s cut as an
  upload through /predict: same sampled frame indices, same frames after the JPEG round trip, same answer;
- evaluate → serve: /ready and the fused answers use the weight evaluation tuned;
- a K=16 run is served 16 frames; FRAMES_PER_CLIP=8 against it is refused at load time, naming both values;
- records that disagree with the code, or runs without one, are reported as they should be.
"""
from __future__ import annotations

import importlib
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from media import write_video

from openpack_vlm.contract import RUN_FILE, ContractError, RunContract, find_run

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


def _cli(name: str):
    if str(REPO) not in sys.path:  # the top-level scripts live in the repo root
        sys.path.insert(0, str(REPO))
    return importlib.import_module(name)


def _train(data: Path, out: Path, model_dir: Path, steps: int = 2) -> Path:
    from openpack_vlm.model import train

    rc = train.main(["--data", str(data), "--out", str(out), "--model", str(model_dir), "--quantization", "none",
                     "--max-steps", str(steps), "--save-steps", str(steps), "--batch-size", "2", "--num-workers", "0",
                     "--report-to", "none"])
    assert rc == 0
    return out


def _client(**settings):
    from fastapi.testclient import TestClient

    from openpack_vlm.serving.app import create_app
    from openpack_vlm.serving.settings import ServeConfig

    cfg = ServeConfig(quantization="none", device="cpu", decode_workers=1, **settings)
    return TestClient(create_app(cfg))


def _ready(client) -> dict:
    assert client.app.state.model.wait(300), client.app.state.model.error
    r = client.get("/ready")
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def synthetic_video(tmp_path_factory) -> Path:
    return _write_video(tmp_path_factory.mktemp("video") / "clip.mp4", (_frame(i) for i in range(125)))


# ---------------------------------------------------------------------------------------------- pipeline → training
@pytest.mark.slow
def test_pipeline_writes_the_contract_training_carries_it(pipeline_out, tiny_model_dir, tmp_path):
    c = RunContract.load(pipeline_out)
    assert (c.version, c.data.k, c.data.frame_size, c.data.fps, c.data.clip_frames) == (1, 8, 336, 25, 125)
    assert c.data.jpeg_quality == 90 and c.data.sampler["name"] == "motion" and c.data.sampler["params"]["k"] == 8
    assert c.data.splits["test"] == ["U0108"] and c.data.classes[0] == [100, "Picking"]
    assert c.data.grammar["file"] == "grammar.json" and c.grammar_path() == pipeline_out / "grammar.json"
    assert c.data.answer_span == "shown" and c.summary()["answer_span"] == "shown"
    c.check_grammar(pipeline_out / "grammar.json")
    run = _train(pipeline_out, tmp_path / "R", tiny_model_dir)
    r = RunContract.load(run)
    assert r.data == c.data and r.training.model_id == str(tiny_model_dir) and r.evaluation is None
    assert r.training.settings["lora_r"] == 16 and r.training.settings["max_steps"] == 2
    assert find_run(run / "adapter") == run / RUN_FILE


# ---------------------------------------------------------------------------------------------- evaluate → serve
@pytest.fixture(scope="module")
def evaluated(pipeline_out, tiny_model_dir, run_dir, tmp_path_factory):
    """evaluate.py on a copy of ``run_dir`` (it records its tuned weight in the run's run.json; the shared run_dir
    must not change under other tests), without the baseline and timeline stages these tests do not read."""
    run = tmp_path_factory.mktemp("run") / "R"
    shutil.copytree(run_dir, run)
    out = tmp_path_factory.mktemp("eval") / "E"
    rc = _cli("evaluate").main(["--data", str(pipeline_out), "--out", str(out), "--model", str(tiny_model_dir),
                                "--adapter", str(run / "adapter"), "--quantization", "none", "--n_clips", "3",
                                "--val_clips", "6", "--n_boot", "50", "--no_free_text", "--no_keypoint_baseline",
                                "--no_timeline"])
    assert rc == 0
    return run, out


@pytest.mark.slow
def test_evaluate_records_the_tuned_weight_and_serving_uses_it(evaluated, tiny_model_dir, synthetic_video):
    from openpack_vlm.grammar import argmax_id, fuse
    from openpack_vlm.labels import ID_TO_NAME, NAME_TO_ID
    from openpack_vlm.model.predict import grammar_next

    run, out = evaluated
    results = json.loads((out / "results.json").read_text())
    tuned = results["grammar_fusion"]["fuse_weight"]
    assert results["grammar_fusion"]["run_contract"] == {"eval": str(out / RUN_FILE), "run": str(run / RUN_FILE)}
    for where in (run, out):
        ev = RunContract.load(where).evaluation
        assert ev.fuse_weight == tuned and ev.fuse_mode == "linear" and ev.tuned_on == "val: 6 clips"
    RunContract.load(out).check_grammar(out / "grammar.json")  # E is self-contained: its grammar is the run's
    with _client(model_id=str(tiny_model_dir), adapter_path=str(run / "adapter")) as c:
        ready = _ready(c)
        assert ready["fuse_weight"] == tuned and ready["run"]["fuse_weight"] == tuned
        assert ready["run"]["k"] == 8 and ready["run"]["path"] == str(run / RUN_FILE)
        r = c.post("/predict", files={"file": ("clip.mp4", synthetic_video.read_bytes(), "video/mp4")})
        assert r.status_code == 200, r.text
        predictor = c.app.state.model.predictor
        assert predictor.fuse_weight == tuned and predictor.config.sampling.k == 8
        from openpack_vlm.serving.uploads import decode_upload

        clip, _, _ = decode_upload(synthetic_video, c.app.state.cfg)
        res = predictor.predict_clip(clip, "clip")
        assert res.scores["fuse_weight"] == tuned
        want = argmax_id(fuse({NAME_TO_ID[k]: v for k, v in res.scores["next_model"].items()},
                              grammar_next(predictor.grammar, res.scores), tuned, "linear"))
        assert r.json()["anticipated_next_operation"] == ID_TO_NAME[want] == res.prediction.anticipated_next_operation
        # the confidence /predict reports is tempered by the temperature evaluate.py fitted on val
        temperature = results["calibration"]["temperature"]
        assert ready["run"]["temperature"] == temperature == predictor.config.temperature
        from openpack_vlm.metrics import temper
        from openpack_vlm.labels import OPERATION_NAMES

        raw = np.array([[res.scores["dominant"][n] for n in OPERATION_NAMES]])
        k = OPERATION_NAMES.index(r.json()["dominant_operation"])
        assert r.json()["confidence"] == pytest.approx(float(temper(raw, temperature)[0, k]), abs=1e-6)
        assert r.json()["dominant_operation"] == OPERATION_NAMES[int(raw.argmax())]  # the answer is untouched
    # the weight a user passes for one server wins over the record, and is reported
    with _client(model_id=str(tiny_model_dir), adapter_path=str(run / "adapter"), run_config=str(out / RUN_FILE)) as c:
        assert _ready(c)["run"]["path"] == str(out / RUN_FILE)


# ---------------------------------------------------------------------------------------------- K=16
@pytest.mark.slow
def test_a_k16_run_is_served_16_frames_and_k8_is_refused(synthetic_root, tiny_model_dir, synthetic_video, tmp_path):
    data = tmp_path / "D16"
    rc = _cli("data_pipeline").main(["--root", str(synthetic_root), "--out", str(data), "--k", "16",
                                     "--splits", "train=U0101", "val=U0107", "test=U0108",
                                     "--max_clips_per_session", "4"])
    assert rc == 0 and RunContract.load(data).data.k == 16
    run = _train(data, tmp_path / "R16", tiny_model_dir)
    with _client(model_id=str(tiny_model_dir), adapter_path=str(run / "adapter")) as c:
        assert _ready(c)["run"]["k"] == 16
        r = c.post("/predict", files={"file": ("clip.mp4", synthetic_video.read_bytes(), "video/mp4")})
        assert r.status_code == 200, r.text
        assert len(r.headers["X-Frame-Indices"].split(",")) == 16
    with _client(model_id=str(tiny_model_dir), adapter_path=str(run / "adapter"), frames_per_clip=8) as c:
        c.app.state.model.wait(300)
        r = c.get("/ready")
        assert r.status_code == 503 and r.json()["error"] == "model_error"
        detail = r.json()["detail"]
        assert "FRAMES_PER_CLIP=8" in detail and "K=16" in detail and "\n" not in detail
    # evaluation refuses to score the K=16 adapter on K=8 clips
    k8 = _k8_data(synthetic_root, tmp_path)
    assert _cli("evaluate").main(["--data", str(k8), "--out", str(tmp_path / "E"), "--model", str(tiny_model_dir),
                                  "--adapter", str(run / "adapter"), "--quantization", "none", "--n_clips", "2",
                                  "--no_free_text"]) == 1


def _k8_data(root: Path, tmp_path: Path) -> Path:
    data = tmp_path / "D8"
    assert _cli("data_pipeline").main(["--root", str(root), "--out", str(data), "--splits", "train=U0101",
                                       "val=U0107", "test=U0108", "--max_clips_per_session", "2"]) == 0
    return data


# ---------------------------------------------------------------------------------------------- records that disagree
def test_contract_mismatches_are_one_line_errors(pipeline_out, tmp_path):
    c = RunContract.load(pipeline_out)
    with pytest.raises(ContractError, match=r"FRAMES_PER_CLIP=16 but the run was trained on K=8"):
        c.check(frame_size=336, frames_per_clip=16)
    with pytest.raises(ContractError, match="frame size 336 px, but this server renders 224"):
        c.check(frame_size=224)
    bad = RunContract.load(pipeline_out)
    bad.data.classes = bad.data.classes[:-1]
    with pytest.raises(ContractError, match="class list"):
        bad.check(frame_size=336)
    # a grammar other than the recorded one
    other = tmp_path / "grammar.json"
    other.write_text((pipeline_out / "grammar.json").read_text().replace('"alpha": 1.0', '"alpha": 2.0'))
    with pytest.raises(ContractError, match="is not the grammar recorded"):
        c.check_grammar(other)
    # unknown keys (a newer writer), wrong version, not JSON
    d = json.loads((pipeline_out / RUN_FILE).read_text())
    for mutate, pattern in ((lambda x: x["data"].update(crop="centre"), "unknown key"),
                            (lambda x: x["data"].update(answer_span="seconds"), "answer span format 'seconds'"),
                            (lambda x: x.update(version=99), "version 99"),
                            (lambda x: x.pop("data"), "not a run contract")):
        y = json.loads(json.dumps(d))
        mutate(y)
        (tmp_path / RUN_FILE).write_text(json.dumps(y))
        with pytest.raises(ContractError, match=pattern):
            RunContract.load(tmp_path).check(frame_size=336)
    # a record from before the field: its answers named exact clip frames
    y = json.loads(json.dumps(d))
    y["data"].pop("answer_span")
    (tmp_path / RUN_FILE).write_text(json.dumps(y))
    assert RunContract.load(tmp_path).data.answer_span == "clip"
    (tmp_path / RUN_FILE).write_text("{")
    with pytest.raises(ContractError, match="not valid JSON"):
        RunContract.load(tmp_path)


def test_old_run_without_contract_loads_with_a_warning(tiny_model_dir, tmp_path, caplog):
    from peft import LoraConfig, get_peft_model

    from openpack_vlm.model.loading import ModelConfig, load_model
    from openpack_vlm.model.predict import Predictor

    model, _ = load_model(ModelConfig(model_id=str(tiny_model_dir), quantization="none", device="cpu"))
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    peft.save_pretrained(tmp_path / "adapter")
    with caplog.at_level(logging.WARNING, logger="openpack_vlm.contract"):
        p = Predictor.from_pretrained(str(tiny_model_dir), adapter=tmp_path / "adapter", device="cpu")
    assert "has no run.json" in caplog.text and "assuming K=8" in caplog.text
    assert p.config.sampling.k == 8 and p.config.jpeg_quality == 90


# ---------------------------------------------------------------------------------------------- one recording, two paths
def _frame(i: int, w: int = 320, h: int = 180) -> np.ndarray:
    """Frame i of a recording: a moving bar and a drifting background, so the sampler sees motion."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = (i * 3) % 256
    img[..., 2] = 60
    x = (i * 7) % (w - 40)
    img[40:140, x:x + 40, 1] = 255
    return img


def _write_video(path: Path, frames) -> Path:
    """Lossless H.264 (qp 0) at 25 fps: a frame decodes to the same pixels in any file it is written to."""
    return write_video(path, frames, options={"qp": "0"})


@pytest.mark.slow
def test_one_recording_through_training_path_and_predict_gives_the_same_answer(synthetic_root, tiny_model_dir,
                                                                               tmp_path):
    import shutil

    from openpack_vlm.data import openpack
    from openpack_vlm.data.shards import iter_samples, shard_paths
    from openpack_vlm.model.predict import Predictor

    root = tmp_path / "root"
    shutil.copytree(synthetic_root / "U0108" / "annotation", root / "U0108" / "annotation")
    start = openpack.load_timeline(root, "U0108", "S0100")[0].start_ms
    end = openpack.load_timeline(root, "U0108", "S0100")[-1].end_ms
    n = (end - start) // 40 + 1
    (root / "U0108" / "video").mkdir(parents=True)
    _write_video(root / "U0108" / "video" / "S0100.mp4", (_frame(i) for i in range(n)))
    data = tmp_path / "D"
    assert _cli("data_pipeline").main(["--root", str(root), "--out", str(data), "--source", "rgb", "--splits",
                                       "test=U0108", "--sessions", "S0100", "--max_clips_per_session", "2"]) == 0
    records = list(iter_samples(shard_paths(data / "test")))
    assert records and all(rec.source == "video" for rec, _ in records)
    predictor = Predictor.from_pretrained(str(tiny_model_dir), device="cpu", run=data / RUN_FILE)
    with _client(model_id=str(tiny_model_dir), run_config=str(data / RUN_FILE)) as c:
        _ready(c)
        for rec, shard_frames in records:
            j0 = (rec.t0_ms - start) // 40  # the video frame shown at the clip's first tick (frames every 40 ms)
            cut = _write_video(tmp_path / f"{rec.clip_id}.mp4", (_frame(j0 + i) for i in range(125)))
            r = c.post("/predict", files={"file": (cut.name, cut.read_bytes(), "video/mp4")})
            assert r.status_code == 200, r.text
            served_idx = [int(x) for x in r.headers["X-Frame-Indices"].split(",")]
            assert served_idx == rec.frame_indices  # same sampler, same motion, same frames chosen
            # the frames the served model saw (decode → sample → JPEG round trip) equal the shard's
            from openpack_vlm.data.shards import jpeg_round_trip
            from openpack_vlm.serving.uploads import decode_upload

            clip, _, _ = decode_upload(cut, c.app.state.cfg)
            for i, shard_img in zip(served_idx, shard_frames):
                served = np.asarray(jpeg_round_trip(clip[i], 90), np.int16)
                assert np.abs(served - np.asarray(shard_img, np.int16)).max() == 0  # same pixels, same encoder
            want = predictor.predict(shard_frames, rec.frame_indices, rec.clip_id).prediction.model_dump()
            got = r.json()
            assert got["clip_id"] == rec.clip_id
            for key in ("dominant_operation", "temporal_segment", "anticipated_next_operation"):
                assert got[key] == want[key], key
            assert got["confidence"] == pytest.approx(want["confidence"], abs=1e-4)
