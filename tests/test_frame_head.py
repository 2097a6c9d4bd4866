"""The frame head (model/frame_head.py): per shown frame, which operation it shows, read off the LM's hidden states of
that frame's own visual tokens; trained beside the answer, saved in the adapter, read by the predictor from the
prompt's forward, and turned into the answer's span by ``frame_segment``."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from openpack_vlm.data.shards import iter_samples, shard_paths
from openpack_vlm.labels import NAME_TO_ID, OPERATION_NAMES
from openpack_vlm.model import frame_head as FH
from openpack_vlm.model import train as T
from openpack_vlm.prompt import clip_span
from openpack_vlm.data.shards import ClipRecord, ShardWriter
from test_train import _COLOURS, _FLOW, _cfg, _frame


def _p(ops: list[int], sure: float = 0.9) -> list[list[float]]:
    """Distributions that put ``sure`` on each frame's operation row."""
    rest = (1 - sure) / (FH.N_OPS - 1)
    return [[sure if j == o else rest for j in range(FH.N_OPS)] for o in ops]


def test_frame_segment_is_the_most_likely_run():
    a, b = 0, 4
    # the operation on frames 2..5 of 8: exactly that run
    assert FH.frame_segment(_p([a, a, b, b, b, b, a, a]), b)[:2] == (2, 5)
    # everywhere: the whole clip; one unsure frame inside does not split it
    assert FH.frame_segment(_p([b] * 8), b)[:2] == (0, 7)
    probs = _p([b] * 8)
    probs[3] = [0.4 if j == b else 0.6 / (FH.N_OPS - 1) for j in range(FH.N_OPS)]
    assert FH.frame_segment(probs, b)[:2] == (0, 7)
    # two runs: the likelier one (more frames) wins over spanning the gap of sure other frames
    assert FH.frame_segment(_p([b, b, a, a, a, b, b, b]), b)[:2] == (5, 7)
    # an operation no frame shows: still one frame (the likeliest), never an empty span
    s, e, ll = FH.frame_segment(_p([a] * 8), b)
    assert s == e and math.isfinite(ll)
    with pytest.raises(ValueError):
        FH.frame_segment([], 0)


def test_frame_span_is_written_as_the_runs_answer_writes_spans():
    """The head's run as the answer's prefix needs it: shown frame numbers for a "shown" run, clip frames (half-way to
    the neighbours, as clip_span maps a shown answer) for a "clip" run."""
    idx = [0, 18, 36, 54, 72, 90, 108, 124]
    probs = _p([0, 0, 0, 4, 4, 4, 4, 4])
    assert FH.frame_span(probs, 4, idx, "shown")[:2] == (54, 124)
    assert FH.frame_span(probs, 4, idx, "clip")[:2] == clip_span(54, 124, idx) == (45, 124)


def test_frame_token_spans_find_every_frame_of_the_real_prompt(tiny_real_model_dir):
    """On the real tokenizer and processor: K spans of 144 visual tokens each, in prompt order."""
    from openpack_vlm.model.loading import load_processor
    from openpack_vlm.prompt import build_messages

    proc = load_processor(str(tiny_real_model_dir))
    idx = [0, 15, 31, 48, 64, 80, 101, 124]
    text = proc.apply_chat_template(build_messages(idx), add_generation_prompt=True, tokenize=False)
    frames = [np.full((336, 336, 3), 40 * k % 255, np.uint8) for k in range(8)]
    ids = proc(text=[text], images=frames, return_tensors="pt")["input_ids"][0].tolist()
    vs, ve = (proc.tokenizer.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>"))
    spans = FH.frame_token_spans(ids, vs, ve)
    pad = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert len(spans) == 8 and all(b - a + 1 == 144 for a, b in spans)
    assert all(set(ids[a:b + 1]) == {pad} for a, b in spans) and [a for a, _ in spans] == sorted(a for a, _ in spans)


def _boundary_split(split_dir, n: int, seed: int) -> None:
    """Colour clips (test_train's frames) with the boundary anywhere in 20..104: operation A, then B; the truth as
    clips.py makes it (the dominant one = the longer run, its span, the next operation after it), so no constant
    span fits them."""
    import random

    rng = random.Random(seed)
    with ShardWriter(split_dir) as w:
        for i in range(n):
            j = rng.randrange(len(_FLOW) - 2)
            a, b, after = _FLOW[j], _FLOW[j + 1], _FLOW[j + 2]
            cut = rng.randrange(20, 105)
            idx = sorted(rng.sample(range(125), 8))
            dom, span, nxt = (a, (0, cut - 1), b) if cut >= 63 else (b, (cut, 124), after)
            truth = {"dominant_operation": dom, "temporal_segment": {"start_frame": span[0], "end_frame": span[1]},
                     "anticipated_next_operation": nxt}
            ops = [a if k < cut else b for k in idx]
            w.write(ClipRecord(clip_id=f"U0101_S0100_b{seed}_{i:04d}", user="U0101", session="S0100", t0_ms=i * 5000,
                               source="rgb", frame_indices=idx, truth=truth, split=split_dir.name,
                               frame_ops=[NAME_TO_ID[o] for o in ops]),
                    [_frame(_COLOURS[o], k) for o, k in zip(ops, idx)])


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("colour")
    _boundary_split(root / "train", 64, seed=1)
    _boundary_split(root / "test", 24, seed=2)
    return root


def _span_scores(pred, clips) -> dict:
    """Mean tIoU and tIoU@0.5 of the predictor's spans (those clips' truths), its OCA and model calls per clip; with a
    frame head, its per-frame accuracy and the mean tIoU of its run for the true operation."""
    from openpack_vlm.metrics import span_iou as tiou

    ious, calls, frames, oca, given = [], [], [], [], []
    for rec, fr in clips:
        r = pred.predict(fr, rec.frame_indices, rec.clip_id)
        t = rec.truth["temporal_segment"]
        s = r.prediction.temporal_segment
        ious.append(tiou((s.start_frame, s.end_frame), (t["start_frame"], t["end_frame"])))
        calls.append(r.scores["model_calls"])
        oca.append(r.prediction.dominant_operation == rec.truth["dominant_operation"])
        if r.scores["frames"] is not None:
            got = [max(d, key=d.get) for d in r.scores["frames"]]
            frames += [NAME_TO_ID[g] == o for g, o in zip(got, rec.frame_ops)]
            # the head's span for the TRUE operation: the frames' part of the answer, whatever the dominant guess
            probs = [[d[n] for n in OPERATION_NAMES] for d in r.scores["frames"]]
            a, b, _ = FH.frame_segment(probs, OPERATION_NAMES.index(rec.truth["dominant_operation"]))
            idx = rec.frame_indices
            given.append(tiou(clip_span(idx[a], idx[b], idx), (t["start_frame"], t["end_frame"])))
    return {"mean_tIoU": float(np.mean(ious)), "tIoU@0.5": float(np.mean([i >= 0.5 for i in ious])),
            "calls": float(np.mean(calls)), "OCA": float(np.mean(oca)),
            "frame_acc": float(np.mean(frames)) if frames else None,
            "mean_tIoU_given_op": float(np.mean(given)) if given else None}


@pytest.mark.slow
def test_frame_head_learns_the_frames_and_gives_the_span(colour_data, tiny_model_dir, tmp_path):
    """Trained with the head (the default), the adapter carries it (modules_to_save), the run logs its loss and
    accuracy, and the predictor reads it from the prompt's forward: per-frame distributions in ``scores["frames"]``,
    the span from them in 2 calls fewer than scoring the answer's frame numbers, and better spans than the whole
    clip on held-out clips — which a constant span (the whole clip, or any one run) does not reach."""
    from openpack_vlm.model.predict import PredictConfig, Predictor

    out = tmp_path / "r"
    T.train(_cfg(colour_data, out, tiny_model_dir, max_steps=60, save_steps=60, per_device_train_batch_size=4,
                 logging_steps=10))
    conf = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert FH.adapter_has_head(conf)
    assert json.loads((out / "run.json").read_text())["training"]["frame_head"] is True
    state = json.loads((out / "checkpoint-60" / "trainer_state.json").read_text())
    logged = [h for h in state["log_history"] if "frame_loss" in h]
    assert logged and logged[-1]["frame_acc"] > logged[0]["frame_acc"]

    test = list(iter_samples(shard_paths(colour_data / "test")))
    pred = Predictor.from_pretrained(str(tiny_model_dir), adapter=out / "adapter", grammar=None,
                                     config=PredictConfig(free_text=False))
    assert pred.has_frame_head
    got = _span_scores(pred, test)
    by_answer = Predictor(pred.model, pred.processor, config=PredictConfig(free_text=False, span_from="answer",
                                                                             span=pred.config.span))
    ans = _span_scores(by_answer, test)
    from openpack_vlm.metrics import span_iou as tiou

    truths = [(r.truth["temporal_segment"]["start_frame"], r.truth["temporal_segment"]["end_frame"]) for r, _ in test]
    # the best span a model could give without looking: one constant span for every clip (the whole clip among them)
    constant = max(float(np.mean([tiou((s, e), t) for t in truths]))
                   for s in range(0, 125, 4) for e in range(s, 125, 4))
    print(f"\nframe head: {got}; answer's numbers: {ans}; best constant span's mean tIoU {constant:.3f}")
    assert got["frame_acc"] >= 0.9
    assert got["calls"] == ans["calls"] - 2
    assert ans["frame_acc"] is None  # span_from="answer" does not read the head at all (the base model's way)
    # given the operation, the head's run beats every constant span; and the head's shares lift the dominant guess
    # over the answer's own (this short run's answer barely knows which of the two colours fills the clip)
    assert got["mean_tIoU_given_op"] > constant + 0.1
    assert got["OCA"] > ans["OCA"] + 0.2 and got["mean_tIoU"] > ans["mean_tIoU"] + 0.2
    # the same checks on a head that answers one constant class (its trained weights zeroed, bias on one class) fail
    head = FH._base(pred.model).frame_head.modules_to_save["default"]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[OPERATION_NAMES.index(_FLOW[1])] = 5.0
    const = _span_scores(pred, test)
    print(f"constant head: {const}")
    assert const["frame_acc"] < 0.9 and not const["mean_tIoU_given_op"] > constant + 0.1


def test_old_data_without_frame_labels_is_refused_by_name(tiny_model_dir, tmp_path):
    """Shards written before the frame head (no ``frame_ops``) get a one-line error naming the clip and the two ways
    out; --frame_loss_weight 0 trains as before, without a head in the adapter."""
    from PIL import Image

    from openpack_vlm.data.shards import encode_jpeg

    data = tmp_path / "old"
    with ShardWriter(data / "train") as w:
        for i in range(4):
            truth = {"dominant_operation": "Picking", "temporal_segment": {"start_frame": 0, "end_frame": 124},
                     "anticipated_next_operation": "Close Box"}
            w.write(ClipRecord(clip_id=f"old_{i}", user="U0101", session="S0100", t0_ms=i, source="rgb",
                               frame_indices=[0, 40, 80, 124], truth=truth),
                    [encode_jpeg(Image.new("RGB", (336, 336), (i * 40, 0, 0)))] * 4)
    with pytest.raises(T.TrainError, match=r"old_\d: no per-frame operations .* --frame_loss_weight 0"):
        T.train(_cfg(data, tmp_path / "r", tiny_model_dir, max_steps=1, save_steps=1))
    T.train(_cfg(data, tmp_path / "r0", tiny_model_dir, max_steps=1, save_steps=1, frame_loss_weight=0.0))
    conf = json.loads((tmp_path / "r0" / "adapter" / "adapter_config.json").read_text())
    assert not FH.adapter_has_head(conf)
    assert json.loads((tmp_path / "r0" / "run.json").read_text())["training"]["frame_head"] is False
    with pytest.raises(T.TrainError, match="frame_loss_weight must be"):
        T.TrainConfig(data="d", frame_loss_weight=-1.0)


def test_frame_loss_matches_a_hand_computation(tiny_model_dir):
    """The loss the head trains on = cross-entropy of head(mean of each frame's final hidden states) against the
    frame's operation, computed here by hand from a plain forward with output_hidden_states."""
    from openpack_vlm.model.loading import ModelConfig, load_model

    model, proc = load_model(ModelConfig(model_id=str(tiny_model_dir), quantization="none", frame_head=True,
                                         gradient_checkpointing=False), for_training=True)
    head = FH._base(model).frame_head
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.5)
    from openpack_vlm.prompt import build_messages

    idx = [0, 31, 64, 124]
    text = proc.apply_chat_template(build_messages(idx), add_generation_prompt=True, tokenize=False)
    frames = [np.full((56, 56, 3), 60 * k, np.uint8) for k in range(4)]
    inputs = proc(text=[text], images=frames, return_tensors="pt")
    vs, ve = (proc.tokenizer.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>"))
    targets = torch.tensor([[0, 3, 3, 10]])
    with torch.no_grad(), FH.final_hidden(model) as hidden:
        out = model(**inputs, output_hidden_states=True)
        loss, acc = FH.frame_loss(model, hidden[0], inputs["input_ids"], targets, vs, ve)
    last = out.hidden_states[-1][0]  # transformers' last entry: after the final norm
    spans = FH.frame_token_spans(inputs["input_ids"][0].tolist(), vs, ve)
    feats = torch.stack([last[a:b + 1].mean(0) for a, b in spans])
    want = torch.nn.functional.cross_entropy(head(feats), targets[0])
    assert torch.allclose(loss, want, atol=1e-5) and 0 <= float(acc) <= 1
