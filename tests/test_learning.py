"""Does the VLM learn, and from the frames? Controls of the training signal (issue #21), each CI-sized (~2 min on 2
cores, the two side by side, once the cached ``tiny-pretrained`` base exists):

* positive control: the demo's recipe (LoRA + lm_head + frame head on ``tiny-pretrained``, skeleton frames of
  calibrated synthetic keypoints) learns the pose task well above the majority class on held-out users, and where it
  names the operation right its span beats the whole clip's;
* negative control: the same recipe trained on shuffled answers (``--shuffle_labels``) does not beat the majority
  class — so the gain comes from the frames, not from a leak (clip id, time, position) that encodes the answer;
* the learning check itself fails on a model that answers one constant class (run against one here).
The colour-panel positive control (RGB frames, a cue real frames lack) is test_train's
``test_finetuned_beats_untrained_on_held_out``.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from openpack_vlm.data.shards import iter_samples, shard_paths
from openpack_vlm.model import train as T
from openpack_vlm.model import train_data as TD

#: the controls' budget: steps of 2 clips (~0.75 s a step with the two side by side, one core each), the same for both
#: so they differ only in labels; ARCHITECTURE.md gives what 150 and 250 steps reach
STEPS = 150
#: how far above the majority class the positive control must land on the held-out users' clips (OCA)
MARGIN = 0.2


@pytest.fixture(scope="module")
def pose_data(pose_samples) -> Path:
    """The data pipeline on the synthetic root with skeleton frames (the demo's public path): train U0101-U0106,
    val U0107, test U0108."""
    return pose_samples.parent


@pytest.fixture(scope="module")
def held_out(pose_data):
    return list(iter_samples(shard_paths(pose_data / "val"))) + list(iter_samples(shard_paths(pose_data / "test")))


def _train_majority(data: Path) -> tuple[str, str]:
    rows = [json.loads(line) for line in (data / "train" / "manifest.jsonl").read_text().splitlines() if line]
    ops = Counter(r["truth"]["dominant_operation"] for r in rows)
    nxt = Counter(r["truth"]["anticipated_next_operation"] for r in rows)
    return ops.most_common(1)[0][0], nxt.most_common(1)[0][0]


WHOLE = (0, 124)


def scores(answers: list[tuple], clips) -> dict:
    """OCA, AA@1 and mean tIoU of (dominant, next[, span]) answers on clips [(record, frames)] (no span: the whole
    clip)."""
    from openpack_vlm.metrics import span_iou

    n = len(clips)
    spans = [a[2] if len(a) > 2 else WHOLE for a in answers]
    truth = [(r.truth["temporal_segment"]["start_frame"], r.truth["temporal_segment"]["end_frame"]) for r, _ in clips]
    right = [i for i, (a, (r, _)) in enumerate(zip(answers, clips)) if a[0] == r.truth["dominant_operation"]]
    return {"OCA": len(right) / n,
            "AA@1": sum(a[1] == r.truth["anticipated_next_operation"] for a, (r, _) in zip(answers, clips)) / n,
            "mean_tIoU": sum(span_iou(s, t) for s, t in zip(spans, truth)) / n,
            # where the operation is right, how much better its span is than the whole clip's (0 for a whole-clip
            # answer): the span's own skill, apart from the operation's
            "span_gain": (sum(span_iou(spans[i], truth[i]) - span_iou(WHOLE, truth[i]) for i in right) / len(right)
                          if right else 0.0)}


def learned(s: dict, majority: dict) -> bool:
    """The positive control's verdict: OCA at least MARGIN above the majority class's on the same clips, and on the
    clips whose operation is right a span better than the whole clip by MARGIN / 4 of tIoU on average."""
    return s["OCA"] >= majority["OCA"] + MARGIN and s["span_gain"] >= MARGIN / 4


def _answers(run: Path, clips) -> list[tuple[str, str]]:
    from openpack_vlm.model.predict import PredictConfig, Predictor

    pred = Predictor.from_pretrained("tiny-pretrained", adapter=run / "adapter", grammar=None,
                                     config=PredictConfig(free_text=False))
    out = []
    for i in range(0, len(clips), 8):
        part = clips[i:i + 8]
        for res in pred.predict_batch([(fr, r.frame_indices, r.clip_id) for r, fr in part]):
            seg = res.prediction.temporal_segment
            out.append((res.prediction.dominant_operation, res.prediction.anticipated_next_operation,
                        (seg.start_frame, seg.end_frame)))
    return out


def _train(data: Path, out: Path, **kw) -> Path:
    # the demo's recipe (scripts/demo.sh): tiny recipe defaults, batch 2, no accumulation, no checkpointing
    argv = ["--data", str(data), "--out", str(out), "--model", "tiny-pretrained", "--quantization", "none",
            "--max-steps", str(STEPS), "--grad-accum", "1", "--no_gradient_checkpointing", "--num-workers", "0",
            "--report-to", "none", "--save-steps", str(STEPS)]
    argv += [f"--{k}" for k, v in kw.items() if v is True]
    return T.train(T.parse_args(argv))


def test_learning_check_fails_on_a_constant_answer(pose_data, held_out):
    """The verdict used below, on a model that answers the train split's majority class for every clip: not learned
    (so the positive control cannot pass by answering one class); nor on one that names every operation right but
    answers one constant span (so it cannot pass without a span either)."""
    maj_op, maj_next = _train_majority(pose_data)
    majority = scores([(maj_op, maj_next)] * len(held_out), held_out)
    assert not learned(majority, majority)
    for op in {r.truth["dominant_operation"] for r, _ in held_out}:  # nor any other constant class
        assert not learned(scores([(op, maj_next)] * len(held_out), held_out), majority)
    # nor a model that knows every operation but answers one constant span, whichever it is
    for s in range(0, 125, 8):
        for e in range(s, 125, 8):
            oracle_op = [(r.truth["dominant_operation"], maj_next, (s, e)) for r, _ in held_out]
            assert not learned(scores(oracle_op, held_out), majority), (s, e)


@pytest.mark.slow
def test_positive_control_the_recipe_learns_the_pose_task(pose_data, held_out, tmp_path):
    run = _train(pose_data, tmp_path / "run")
    s = scores(_answers(run, held_out), held_out)
    maj_op, maj_next = _train_majority(pose_data)
    majority = scores([(maj_op, maj_next)] * len(held_out), held_out)
    print(f"\npositive control ({STEPS} steps, {len(held_out)} held-out clips): {s}; majority class {majority}")
    assert learned(s, majority), (s, majority)


@pytest.mark.slow
def test_negative_control_shuffled_labels_do_not_beat_the_majority(pose_data, held_out, tmp_path):
    run = _train(pose_data, tmp_path / "run", shuffle_labels=True)
    settings = json.loads((run / "run.json").read_text())["training"]["settings"]
    assert settings["shuffle_labels"] is True  # the control says what it was
    s = scores(_answers(run, held_out), held_out)
    maj_op, maj_next = _train_majority(pose_data)
    majority = scores([(maj_op, maj_next)] * len(held_out), held_out)
    print(f"\nnegative control ({STEPS} steps on shuffled answers): {s}; majority class {majority}")
    # one clip of slack over the majority (a shuffled model may split its answers between the two commonest classes)
    assert s["OCA"] <= majority["OCA"] + 1 / len(held_out) + 1e-9, (s, majority)
    assert not learned(s, majority)


def test_shuffled_truths_are_a_permutation_of_the_split(pose_data):
    """--shuffle_labels trains every clip on another clip's answer, keeping the split's answer frequencies."""
    rows = [json.loads(line) for line in (pose_data / "train" / "manifest.jsonl").read_text().splitlines() if line]
    got = TD.shuffled_truths(pose_data, seed=42)
    assert set(got) == {r["clip_id"] for r in rows}
    key = lambda t: json.dumps(t, sort_keys=True)  # noqa: E731
    assert Counter(map(key, got.values())) == Counter(key(r["truth"]) for r in rows)
    own = sum(key(got[r["clip_id"]]) == key(r["truth"]) for r in rows)
    assert own < len(rows) * 0.3  # most clips get another clip's answer
    assert got == TD.shuffled_truths(pose_data, seed=42) != TD.shuffled_truths(pose_data, seed=1)


def test_compare_results_sees_a_changed_metric_and_ignores_timing(repo_root, tmp_path):
    """scripts/compare_results.py (the demo's determinism check) on the committed results.json: identical to itself
    with other wall times, paths and dates; one changed metric or interval bound is reported (exit 1)."""
    import copy
    import importlib.util

    spec = importlib.util.spec_from_file_location("compare_results", repo_root / "scripts" / "compare_results.py")
    cr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cr)
    a = json.loads((repo_root / "results.json").read_text())
    b = copy.deepcopy(a)
    b["variants"]["finetuned_model"]["seconds_per_clip"] = 99.0
    b["provenance"]["date"] = "another day"
    b["baselines"]["majority_class"]["fitted_on"] = "/elsewhere/manifest.jsonl"
    assert cr.compare(a, b) == []
    c = copy.deepcopy(a)
    c["intervals"]["finetuned_model"]["AA@1"][0] += 1e-9
    c["timeline"]["finetuned_model"]["macro_f1"] += 0.001
    diffs = cr.compare(a, c)
    assert len(diffs) == 2 and any("AA@1" in d for d in diffs) and any("macro_f1" in d for d in diffs)
    pa, pc = tmp_path / "a.json", tmp_path / "c.json"
    pa.write_text(json.dumps(a))
    pc.write_text(json.dumps(c))
    assert cr.main([str(pa), str(pa)]) == 0 and cr.main([str(pa), str(pc)]) == 1
    assert cr.main([str(pa)]) == 2


def test_learning_curves_script_runs_train_py_with_a_validation_curve(repo_root, pose_data, tiny_model_dir, tmp_path,
                                                                      capsys):
    """scripts/learning_curves.py (ARCHITECTURE's curves) on the cheap tiny model: points every 2 steps through the
    Predictor, the majority line, the PNG, the table, and --regenerate reading its own record back."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("learning_curves", repo_root / "scripts" / "learning_curves.py")
    lc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lc)
    flags = f"--model {tiny_model_dir} --quantization none --max-steps 4 --grad-accum 1 --no_gradient_checkpointing " \
            "--num-workers 0"
    out = tmp_path / "curves"
    assert lc.main(["--data", str(pose_data), "--out", str(out), "--eval-every", "2", "--n-val", "4",
                    "--run", f"tiny: {flags}"]) == 0
    rec = json.loads((out / "curves.json").read_text())
    (run,) = rec["runs"]
    assert [p["step"] for p in run["points"]] == [2, 4] and run["flags"] == flags
    assert all(0 <= p["OCA"] <= 1 and p["train_loss"] > 0 for p in run["points"])
    assert 0 <= rec["majority"]["OCA"] <= 1 and rec["n_val"] == 4
    assert (out / "curves.png").stat().st_size > 0 and not list(out.glob("tiny*"))  # adapters not kept
    assert "| tiny |" in capsys.readouterr().out
    assert lc.main(["--regenerate", str(out)]) == 0
