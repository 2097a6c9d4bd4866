"""evaluate.py on the data pipeline's synthetic output + a tiny model trained a few steps by openpack_vlm.model.train:
output files, results.json shape, metrics consistent with the per-clip predictions, provenance, error paths."""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from openpack_vlm.evaluation.report import data_provenance
from openpack_vlm.grammar import Grammar
from openpack_vlm.labels import NAME_TO_ID
from openpack_vlm.metrics import evaluate_predictions, majority_class
from openpack_vlm.model.answers import parse_raw_text
from openpack_vlm.schema import Prediction

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)
N_CLIPS = 5


def _evaluate_cli():
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return importlib.import_module("evaluate")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_output_files_and_results_shape(eval_out, capsys):
    for name in ("results.json", "predictions.jsonl", "confusion.json", "confusion.png", "failure_modes.json",
                 "grammar.json"):
        assert (eval_out / name).is_file(), name
    assert not list(eval_out.glob("*.tmp*"))
    r = json.loads((eval_out / "results.json").read_text())
    for system in ("base_model", "finetuned_model"):
        assert set(r[system]) == {"OCA", "tIoU@0.5", "AA@1"}  # exactly the assignment's shape
        assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in r[system].values())
    # (the adapter was trained with a frame head: its text-only answers are a variant too)
    assert set(r["variants"]) == {"base_model", "finetuned_model", "finetuned_grammar", "base_model_free_text",
                                  "finetuned_model_free_text", "finetuned_answer_only"}
    # constrained answers always carry a valid span; free text is scored as written
    assert r["variants"]["finetuned_model"]["span_valid_rate"] == 1.0
    assert {"majority_class", "whole_clip_span", "grammar_given_predicted_op", "grammar_given_true_op"} <= set(
        r["baselines"])
    for system, iv in r["intervals"].items():
        for k in ("OCA", "tIoU@0.5", "AA@1"):
            assert iv[k][0] <= r["variants"][system][k] <= iv[k][1]
    assert r["n_clips"] == N_CLIPS
    assert r["selection"]["users"] == ["U0108"] and r["selection"]["split"] == "test"
    with Image.open(eval_out / "confusion.png") as im:
        assert im.format == "PNG" and im.size[0] > 500
    # calibration: ECE of the test confidences before / after the temperature fitted on val, recorded for serving
    cal = r["calibration"]
    assert cal["fitted_on"].startswith("val: 4 clips") and 0.05 <= cal["temperature"] <= 20
    assert set(cal["dominant"]) == {"base_model", "finetuned_model", "finetuned_model_tempered"}
    assert all(0 <= d["ece"] <= 1 and d["n"] == N_CLIPS for d in cal["dominant"].values())
    assert set(cal["anticipation"]) == {"finetuned_model", "finetuned_grammar"}
    assert (eval_out / "reliability.png").is_file() and cal["png"] == "reliability.png"
    from openpack_vlm.contract import RunContract

    assert RunContract.load(eval_out).evaluation.temperature == cal["temperature"]
    # per class: the support adds up to the clips, and recall agrees with the per-clip records
    pc = r["per_class"]["finetuned_model"]
    assert sum(s["support"] for s in pc.values()) == N_CLIPS
    rows = _rows(eval_out / "predictions.jsonl")
    for name, s in pc.items():
        mine = [x for x in rows if x["truth"]["dominant_operation"] == name]
        assert s["recall"] == round(sum(x["finetuned_model"]["prediction"]["dominant_operation"] == name
                                        for x in mine) / len(mine), 4)
    from openpack_vlm.evaluation.report import format_table

    table = format_table(r)  # what evaluate.py prints
    assert "confidence calibration (ECE, 10 bins)" in table and "per class, finetuned_model" in table


def test_provenance_marks_synthetic_and_tiny(eval_out, pipeline_out, run_dir):
    r = json.loads((eval_out / "results.json").read_text())
    p = r["provenance"]
    assert p["data"] == "synthetic" and p["tiny_random_model"] is True
    assert p["frame_sources"] == {"rgb": N_CLIPS}
    assert p["adapter"] == str(run_dir / "adapter") and p["quantization"] == "none"
    assert p["date"] and "git_commit" in p and p["data_dir"] == str(pipeline_out)
    assert r["synthetic"] is True and "NOT OpenPack results" in r["note"]
    assert r["grammar_fusion"]["grammar"] == str(run_dir / "grammar.json")
    assert r["grammar_fusion"]["tuned_on"] == "val" and r["grammar_fusion"]["val_clips"] == 4
    assert r["grammar_fusion"]["fuse_weight"] in [float(w) for w in r["grammar_fusion"]["val_AA1_by_weight"]]
    # the grammar used is copied byte for byte; its tuned weight goes into the run contract, for serving
    assert (eval_out / "grammar.json").read_bytes() == (run_dir / "grammar.json").read_bytes()
    from openpack_vlm.contract import RunContract

    for where in (eval_out, run_dir):
        ev = RunContract.load(where).evaluation
        assert ev.fuse_weight == r["grammar_fusion"]["fuse_weight"] and ev.tuned_on == "val: 4 clips"


def test_metrics_match_the_per_clip_predictions(eval_out, pipeline_out, run_dir):
    r = json.loads((eval_out / "results.json").read_text())
    rows = _rows(eval_out / "predictions.jsonl")
    manifest = sorted(_rows(pipeline_out / "test" / "manifest.jsonl"), key=lambda m: m["clip_id"])[:N_CLIPS]
    assert [row["clip_id"] for row in rows] == [m["clip_id"] for m in manifest]  # first N by clip_id
    for row, m in zip(rows, manifest):
        t = m["truth"]
        assert row["truth"]["dominant_operation"] == t["dominant_operation"]
        assert row["truth"]["temporal_segment"] == [t["temporal_segment"]["start_frame"],
                                                    t["temporal_segment"]["end_frame"]]
        for system in ("base_model", "finetuned_model"):
            Prediction.model_validate(row[system]["prediction"])
            assert isinstance(row[system]["raw_text"], str) and "repair" in row[system]
    for system in ("base_model", "finetuned_model"):
        recs = [dict(true_op=row["truth"]["dominant_operation"], pred_op=row[system]["prediction"]["dominant_operation"],
                     true_span=tuple(row["truth"]["temporal_segment"]),
                     pred_span=row[system]["prediction"]["temporal_segment"],
                     true_next=row["truth"]["anticipated_next_operation"],
                     pred_next=row[system]["prediction"]["anticipated_next_operation"]) for row in rows]
        m = evaluate_predictions(recs, n_boot=0)
        for k in ("OCA", "tIoU@0.5", "AA@1"):
            assert r[system][k] == pytest.approx(m[k])
        free = [parse_raw_text(row[system]["raw_text"], row["frame_indices"] if row["span_format"] == "shown" else None)
                for row in rows]
        fm = evaluate_predictions([dict(rec, pred_op=f["op"], pred_span=f["span"], pred_next=f["next"])
                                   for rec, f in zip(recs, free)], n_boot=0)
        for k in ("OCA", "tIoU@0.5", "AA@1", "span_valid_rate"):
            assert r["variants"][f"{system}_free_text"][k] == pytest.approx(fm[k], nan_ok=True)
        assert r["variants"][system]["free_text_valid_rate"] == sum(row[system]["repair"] is None
                                                                     for row in rows) / len(rows)
    # baselines recomputed independently
    g = Grammar.load(run_dir / "grammar.json")
    want = sum(g.predict_next(NAME_TO_ID[row["truth"]["dominant_operation"]]) ==
               NAME_TO_ID[row["truth"]["anticipated_next_operation"]] for row in rows) / len(rows)
    assert r["baselines"]["grammar_given_true_op"]["AA@1"] == pytest.approx(want)
    train = _rows(pipeline_out / "train" / "manifest.jsonl")
    maj = majority_class([m["truth"]["dominant_operation"] for m in train])
    assert NAME_TO_ID[r["baselines"]["majority_class"]["dominant_operation"]] == maj
    assert r["baselines"]["majority_class"]["OCA"] == pytest.approx(
        sum(NAME_TO_ID[row["truth"]["dominant_operation"]] == maj for row in rows) / len(rows))
    whole = sum((row["truth"]["temporal_segment"][1] - row["truth"]["temporal_segment"][0] + 1) / 125 >= 0.5
                for row in rows) / len(rows)
    assert r["baselines"]["whole_clip_span"]["tIoU@0.5"] == pytest.approx(whole)


def test_confusion_and_failure_modes_point_at_real_clips(eval_out):
    rows = {row["clip_id"]: row for row in _rows(eval_out / "predictions.jsonl")}
    cm = json.loads((eval_out / "confusion.json").read_text())
    for system in ("base_model", "finetuned_model"):
        assert sum(map(sum, cm[system]["matrix"])) == N_CLIPS
    fm = json.loads((eval_out / "failure_modes.json").read_text())
    pair = fm["most_confused_pair"]
    if pair is None:  # a perfect fine-tuned model: then no confusions are listed either
        assert fm["confusions"] == []
    else:
        assert pair["count"] == len(pair["clip_ids"]) >= 1
        assert pair["count"] == max(c["count"] for c in fm["confusions"])
        for cid in pair["clip_ids"]:
            assert rows[cid]["truth"]["dominant_operation"] == pair["true"]
            assert rows[cid]["finetuned_model"]["prediction"]["dominant_operation"] == pair["predicted"]


def test_given_fuse_weight_and_no_free_text(pipeline_out, tiny_model_dir, run_dir, eval_out, tmp_path, capsys):
    import shutil

    # a copy: evaluate records its weight in R/run.json, and run_dir is shared with the tests that read eval_out's
    own_run = shutil.copytree(run_dir, tmp_path / "R")
    rc = _evaluate_cli().main(["--data", str(pipeline_out), "--out", str(tmp_path / "E"), "--model",
                               str(tiny_model_dir), "--adapter", str(own_run), "--quantization", "none",
                               "--n-clips", "2", "--fuse-weight", "1.0", "--no-free-text", "--n-boot", "50",
                               "--batch-clips", "1", "--no_keypoint_baseline", "--no_timeline"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "finetuned_grammar" in printed and "NOT OpenPack results" in printed
    r = json.loads((tmp_path / "E" / "results.json").read_text())
    assert r["grammar_fusion"]["fuse_weight"] == 1.0 and r["grammar_fusion"]["tuned_on"] is None
    assert "base_model_free_text" not in r["variants"]
    rows = _rows(tmp_path / "E" / "predictions.jsonl")
    g = Grammar.load(run_dir / "grammar.json")
    for row in rows:  # weight 1 → the grammar's answer given the fine-tuned dominant op
        dom = NAME_TO_ID[row["finetuned_model"]["prediction"]["dominant_operation"]]
        assert NAME_TO_ID[row["finetuned_grammar"]["anticipated_next_operation"]] == g.predict_next(dom)
        assert row["finetuned_model"]["raw_text"] == "" and row["finetuned_model"]["repair"] is None
    # one clip at a time (here) answers as eval_out's batches of 4 (the default) did, free text or not
    batched = {row["clip_id"]: row for row in _rows(eval_out / "predictions.jsonl")}
    for row in rows:
        for system in ("base_model", "finetuned_model"):
            a, b = row[system]["prediction"], batched[row["clip_id"]][system]["prediction"]
            assert a["confidence"] == pytest.approx(b["confidence"], abs=1e-5)
            assert {**a, "confidence": 0} == {**b, "confidence": 0}
    r1 = json.loads((eval_out / "results.json").read_text())
    assert r1["provenance"]["batch_clips"] == 4 and r["provenance"]["batch_clips"] == 1
    assert r1["provenance"]["memory"]["kind"] in ("cpu_peak_rss", "cuda_max_memory_allocated")
    assert r1["provenance"]["memory"]["bytes"] > 1e8  # a loaded model and its data: well over 100 MB
    # prefill + 2 closed sets (dominant, next; the frame head gives the span), no free text
    assert r["variants"]["finetuned_model"]["model_calls_per_clip"] == 3
    assert "peak memory: cpu_peak_rss " in printed or "peak memory: cuda_max_memory_allocated " in printed


@pytest.mark.parametrize("case", ["no_data", "no_adapter", "bad_split"])
def test_cli_errors_are_one_line(case, pipeline_out, tiny_model_dir, run_dir, tmp_path, capsys):
    args = {"--data": str(pipeline_out), "--out": str(tmp_path / "E"), "--model": str(tiny_model_dir),
            "--adapter": str(run_dir / "adapter"), "--quantization": "none", "--n-clips": "1"}
    if case == "no_data":
        args["--data"] = str(tmp_path / "missing")
    elif case == "no_adapter":
        args["--adapter"] = str(tmp_path / "nothing")
    else:
        args["--split"] = "nosuchsplit"
    argv = [x for kv in args.items() for x in kv]
    assert _evaluate_cli().main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err
    assert {"no_data": "data dir not found", "no_adapter": "no LoRA adapter", "bad_split": "nosuchsplit"}[case] in err


def test_data_provenance_real_synthetic_unknown(tmp_path, synthetic_root):
    def d(root) -> Path:
        p = tmp_path / f"d{len(list(tmp_path.iterdir()))}"
        p.mkdir()
        (p / "summary.json").write_text(json.dumps({"root": str(root)}))
        return p

    real = tmp_path / "realroot"
    real.mkdir()
    assert data_provenance(d(real))["data"] == "real"
    assert data_provenance(d(synthetic_root))["data"] == "synthetic"
    assert data_provenance(d(tmp_path / "gone"))["data"] == "unknown"


def test_base_model_is_exactly_the_base(eval_out, pipeline_out, tiny_model_dir):
    """The base system runs the fine-tuned model with its LoRA disabled: it must answer like the plain base model."""
    from openpack_vlm.evaluation.selection import load_clips, select_clips
    from openpack_vlm.model.predict import Predictor

    rows = _rows(eval_out / "predictions.jsonl")[:2]
    clips = load_clips(pipeline_out, "test", select_clips(pipeline_out, "test", 2))
    plain = Predictor.from_pretrained(str(tiny_model_dir), grammar=None, device="cpu")
    for row, (rec, frames) in zip(rows, clips):
        r = plain.predict(frames, rec.frame_indices, rec.clip_id)
        got = row["base_model"]["prediction"]
        assert got["dominant_operation"] == r.prediction.dominant_operation
        assert got["temporal_segment"] == r.prediction.temporal_segment.model_dump()
        assert got["anticipated_next_operation"] == r.prediction.anticipated_next_operation
        assert got["confidence"] == pytest.approx(r.prediction.confidence, abs=1e-5)
        assert row["base_model"]["raw_text"] == r.raw_text


def test_keypoint_baseline_is_scored_beside_the_vlm(eval_out, pipeline_out, capsys):
    """results.json carries the keypoint baseline on the same test clips (trained on the train split, same metrics);
    its CLI answers the same numbers; data without a reachable OpenPack root give a one-line error."""
    from openpack_vlm.evaluation import keypoint_baseline as kb

    r = json.loads((eval_out / "results.json").read_text())
    kp = r["keypoint_baseline"]
    assert kp["n_clips"] == r["n_clips"] == N_CLIPS and kp["train_clips"] > 50
    for k in ("OCA", "tIoU@0.5", "AA@1"):
        assert 0.0 <= kp[k] <= 1.0 and kp["intervals"][k][0] <= kp[k] <= kp["intervals"][k][1]
    # the CLI trained as evaluate trained it (eval_out sets the baseline's epochs through --keypoint_epochs)
    assert kb.main(["--data", str(pipeline_out), "--n_clips", str(N_CLIPS), "--n_boot", "200",
                    "--epochs", str(kp["config"]["epochs"])]) == 0
    out = capsys.readouterr().out
    assert f"OCA {kp['OCA']:.3f}" in out and f"AA@1 {kp['AA@1']:.3f}" in out  # deterministic: same seed, same clips
    # per-frame answers give a valid span; features do not depend on where the body is or how big it is
    k = np.random.default_rng(0).uniform(300, 700, (125, 17, 3))
    k[..., 2] = 0.9
    moved = k.copy()
    moved[..., :2] = moved[..., :2] * 1.5 + 100
    assert np.allclose(kb.features(k)[:, :51].reshape(125, 17, 3)[..., :2],
                       kb.features(moved)[:, :51].reshape(125, 17, 3)[..., :2], atol=1e-4)


def test_keypoint_baseline_without_root_is_a_clear_error(tmp_path, capsys):
    from openpack_vlm.evaluation import keypoint_baseline as kb

    (tmp_path / "D").mkdir()
    (tmp_path / "D" / "summary.json").write_text(json.dumps({"root": str(tmp_path / "gone")}))
    assert kb.main(["--data", str(tmp_path / "D")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "names no OpenPack root" in err and "\n" not in err


def test_timeline_mode_scores_a_whole_session_with_openpacks_metric(eval_out, pipeline_out):
    """results.json's timeline: the first test session analysed window by window by both systems, merged, and
    scored at 1 Hz by openpack-toolkit; the numbers can be recomputed from the per-session files."""
    from openpack_vlm.timeline import score_timeline
    from openpack_vlm.timeline.windows import expected_windows

    r = json.loads((eval_out / "results.json").read_text())
    tl = r["timeline"]
    assert tl is not None and "skipped" not in tl, tl
    assert len(tl["sessions"]) == 1 and tl["sessions"][0]["user"] == "U0108" and tl["stride_s"] == 2.48
    sess = tl["sessions"][0]
    assert sess["n_windows"] == expected_windows(int(sess["seconds"] * 25), 62)
    assert "SYNTHETIC" in tl["note"]
    for system in ("base_model", "finetuned_model"):
        res = json.loads((eval_out / "timeline" / f"U0108-{sess['session']}.{system}.json").read_text())
        assert (eval_out / "timeline" / f"U0108-{sess['session']}.{system}.png").is_file()
        again = score_timeline(res["seconds"], res["truth"])
        assert again["macro_f1"] == sess[system]["macro_f1"] == tl[system]["macro_f1"]
        for k in ("edit", "F1@10", "F1@25", "F1@50"):  # segment metrics beside OpenPack's, from the same 1 Hz labels
            assert again[k] == sess[system][k] == tl[system][k] and 0.0 <= again[k] <= 1.0
        assert sess[system]["per_class_f1"] == again["per_class_f1"]
        assert 0.0 <= again["macro_f1"] <= 1.0 and len(res["seconds"]) == int(np.ceil(res["duration_s"]))
        assert res["n_windows"] == sess["n_windows"]
        tuned = system == "finetuned_model"  # the tuned grammar fusion, as served; its durations prime the HMM
        assert res["merge"]["grammar"] is tuned and res["merge"]["hmm"] is tuned
        assert bool(res["merge"]["mean_seconds"]) is tuned
    grammar = json.loads((pipeline_out / "grammar.json").read_text())
    fitted = {int(k): v for k, v in grammar["meta"]["mean_seconds"].items()}
    assert set(fitted) >= {100, 300, 500} and all(0.5 < v < 30 for v in fitted.values())
    ft = json.loads((eval_out / "timeline" / f"U0108-{sess['session']}.finetuned_model.json").read_text())
    assert {int(k): v for k, v in ft["merge"]["mean_seconds"].items()} == fitted
    assert r["config"]["timeline_sessions"] == 1
