"""Predictor on the tiny random Qwen2-VL: cached scoring equals a plain forward, output always schema-valid,
grammar fusion, adapter + grammar loading, input errors, thread safety."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from openpack_vlm.grammar import Grammar
from openpack_vlm.labels import NAME_TO_ID, OPERATION_NAMES
from openpack_vlm.model.answers import (
    PredictError,
    check_raw_text,
    dominant_candidates,
    end_candidates,
    next_candidates,
    parse_raw_text,
    start_candidates,
)
from openpack_vlm.model.predict import PredictConfig, Predictor, find_grammar
from openpack_vlm.prompt import clip_span, shown_span, target_text
from openpack_vlm.data.sampling import sample_clip
from openpack_vlm.data.shards import jpeg_round_trip
from openpack_vlm.data.timebar import read_time_bar
from openpack_vlm.schema import Prediction

torch.set_num_threads(1)
IDX = [0, 12, 30, 47, 70, 88, 101, 124]


def _images(seed=0, n=len(IDX)):
    rng = np.random.RandomState(seed)
    return [Image.fromarray(rng.randint(0, 255, (336, 336, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def predictor(tiny_model_dir):
    return Predictor.from_pretrained(str(tiny_model_dir), grammar=None, device="cpu")


@pytest.fixture(scope="module")
def adapter_run(tiny_model_dir, tmp_path_factory):
    """A training-run-shaped dir R with R/adapter (a non-zero random LoRA) and R/grammar.json."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("run")
    base = AutoModelForImageTextToText.from_pretrained(str(tiny_model_dir))
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)", init_lora_weights=False)
    get_peft_model(base, cfg).save_pretrained(run / "adapter")
    g = Grammar.fit([[100, 200, 300, 400, 500, 600, 700, 1000, 800, 900]])
    g.meta["fuse_weight"] = 1.0
    g.save(run / "grammar.json")
    return run


def test_candidates_tokenise_as_prefixes_of_the_training_target(predictor):
    tok = predictor.tokenizer
    full = target_text({"dominant_operation": "Attach Box Label", "temporal_segment": {"start_frame": 7,
                        "end_frame": 93}, "anticipated_next_operation": "Scan Label"})
    full_ids = tok(full, add_special_tokens=False)["input_ids"]
    for cand in (dominant_candidates()[OPERATION_NAMES.index("Attach Box Label")], start_candidates("Attach Box Label")[7],
                 end_candidates("Attach Box Label", 7)[93 - 7], next_candidates("Attach Box Label", 7, 93)[
                     OPERATION_NAMES.index("Scan Label")]):
        ids = tok(cand, add_special_tokens=False)["input_ids"]
        assert full.startswith(cand) and full_ids[:len(ids)] == ids, cand
    assert next_candidates("Picking", 0, 1)[0] == full.replace("Attach Box Label", "Picking").replace(
        "7", "0", 1).replace("93", "1").replace("Scan Label", "Picking")
    assert len(start_candidates("Picking")) == 125 and len(end_candidates("Picking", 120)) == 5


def test_every_candidate_tokenises_as_its_training_target_with_the_real_tokenizer():
    """Each closed-set candidate the predictor scores is, token for token, the start of the training target that
    names the same value — with the real Qwen2-VL-2B-Instruct BPE (one token per digit, merges across the quote)."""
    from openpack_vlm.testing.tiny import real_processor

    tok = real_processor().tokenizer
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731

    def target(dom, s, e, nxt):
        return target_text({"dominant_operation": dom, "temporal_segment": {"start_frame": s, "end_frame": e},
                            "anticipated_next_operation": nxt})

    checked = 0
    for k, cand in enumerate(dominant_candidates()):
        full = target(OPERATION_NAMES[k], 0, 0, OPERATION_NAMES[0])
        assert enc(full)[:len(enc(cand))] == enc(cand), cand
        checked += 1
    for s, cand in enumerate(start_candidates("Insert Items")):
        assert enc(target("Insert Items", s, s, "Close Box"))[:len(enc(cand))] == enc(cand), cand
        checked += 1
    for j, cand in enumerate(end_candidates("Insert Items", 17)):
        assert enc(target("Insert Items", 17, 17 + j, "Close Box"))[:len(enc(cand))] == enc(cand), cand
        checked += 1
    for k, cand in enumerate(next_candidates("Insert Items", 17, 93)):
        assert enc(target("Insert Items", 17, 93, OPERATION_NAMES[k]))[:len(enc(cand))] == enc(cand), cand
        checked += 1
    assert checked == 11 + 125 + 108 + 11
    assert enc(start_candidates("Picking")[124])[-4:-1] == enc("124")  # "1", "2", "4", then ","


def test_tiny_real_model_answers_through_the_predictor(tiny_real_model_dir):
    """The predictor on the tiny model with the real tokenizer and processor: 144 visual tokens per frame, a valid
    answer, and the answer's tokens are the real BPE's."""
    from openpack_vlm.model.predict import Predictor

    p = Predictor.from_pretrained(str(tiny_real_model_dir), device="cpu", run=None,
                                  config=PredictConfig(free_text=False))
    frames = np.random.default_rng(0).integers(0, 255, (125, 336, 336, 3), dtype=np.uint8)
    r = p.predict_clip(frames, "real")
    Prediction.model_validate(r.prediction.model_dump())
    assert len(r.scores["frame_indices"]) == 8 and abs(sum(r.scores["dominant"].values()) - 1) < 1e-5
    inputs = p._encode_prompt([frames[i] for i in r.scores["frame_indices"]], r.scores["frame_indices"])
    image_id = p.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((inputs["input_ids"] == image_id).sum()) == 8 * 144


def test_cached_batched_scores_equal_a_plain_forward(predictor):
    p = predictor
    imgs = _images(1)
    inputs = p._encode_prompt(imgs, IDX)
    cands = [dominant_candidates()[i] for i in (0, 3, 10)]
    with torch.inference_mode():
        state = p._prefill(inputs)
        cached = p.score_texts(state, cands)
        toks = [p.tokenizer(c, add_special_tokens=False)["input_ids"] for c in cands]
        cp = 0
        while len({t[cp] for t in toks}) == 1:
            cp += 1
        L = inputs["input_ids"].shape[1]
        for c_ids, got in zip(toks, cached):
            ids = torch.cat([inputs["input_ids"], torch.tensor([c_ids])], 1)
            mm = torch.cat([inputs["mm_token_type_ids"], torch.zeros(1, len(c_ids), dtype=inputs["mm_token_type_ids"].dtype)], 1)
            out = p.model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=inputs["pixel_values"],
                          image_grid_thw=inputs["image_grid_thw"], mm_token_type_ids=mm)
            logp = torch.log_softmax(out.logits[0].float(), -1)
            want = sum(float(logp[L + j - 1, c_ids[j]]) for j in range(cp, len(c_ids)))
            assert got == pytest.approx(want, abs=1e-3)
        # free text from the cache == transformers' greedy generate
        p.config.max_new_tokens = 12
        try:
            raw = p._generate(state)
        finally:
            p.config.max_new_tokens = PredictConfig().max_new_tokens
        gen = p.model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert raw == p.tokenizer.decode(gen[0, L:], skip_special_tokens=True)
    # the trie path's free answer (after the prompt in its static cache) is the same greedy text
    trie = Predictor(p.model, p.processor, config=PredictConfig(max_new_tokens=12))
    assert trie.predict(imgs, IDX, "c").raw_text == raw


def test_trie_merges_shared_prefixes():
    from openpack_vlm.model.scorer import Trie, common_prefix

    seqs = [[5, 6, 7], [5, 6, 8, 9], [5, 10], [11]]
    t = Trie.build(seqs)
    assert t.tokens == [5, 6, 7, 8, 9, 10, 11] and t.parent == [-1, 0, 1, 1, 3, 0, -1]
    assert t.depth == [0, 1, 2, 2, 3, 1, 0]
    assert [[t.tokens[n] for n in path] for path in t.paths] == seqs
    a = t.ancestors()
    assert a[4].nonzero()[0].tolist() == [0, 1, 3, 4]  # 9 sees 5, 6, 8 and itself, not its sibling branch 7
    assert a[6].nonzero()[0].tolist() == [6]
    # the positions that go through the output head: parents of the scored tokens
    assert t.inner_nodes(1) == [0, 1, 3] and t.inner_nodes(2) == [1, 3] and t.inner_nodes(0) == t.inner_nodes(1)
    assert common_prefix(seqs) == 0 and common_prefix(seqs[:3]) == 1 and common_prefix(seqs[:2]) == 2


def _sharpened(model_dir, scale=0.3):
    """A fresh copy of a tiny random model with larger weights, so its answers differ from clip to clip (the plain
    tiny model answers nearly the same for any input, which would make an equality test vacuous)."""
    p = Predictor.from_pretrained(str(model_dir), device="cpu", run=None, grammar=None,
                                  config=PredictConfig(free_text=False))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for w in p.model.parameters():
            if w.ndim == 2:
                w.add_(torch.randn(w.shape, generator=g) * scale)
    return p


def _clips(n, seed=0):
    """n clips of random frames, K alternating 8 / 6 (prompts of different lengths: batches need left padding)."""
    rng = np.random.RandomState(seed)
    out = []
    for c in range(n):
        idx = sorted(rng.choice(125, 8 if c % 2 == 0 else 6, replace=False).tolist())
        out.append(([rng.randint(0, 255, (336, 336, 3), dtype=np.uint8) for _ in idx], idx, f"c{c:02d}"))
    return out


def _same_answer(a, b):
    pa, pb = a.prediction.model_dump(), b.prediction.model_dump()
    assert pa["confidence"] == pytest.approx(pb["confidence"], abs=1e-5)
    assert {**pa, "confidence": 0} == {**pb, "confidence": 0}
    for key in ("dominant", "next_model"):
        assert a.scores[key] == pytest.approx(b.scores[key], abs=1e-5)
    assert a.scores["span_logprob"] == pytest.approx(b.scores["span_logprob"], abs=1e-3)


@pytest.mark.parametrize("which,scale,span", [("tiny", 0.3, "shown"), ("tiny", 0.3, "clip"),
                                              pytest.param("tiny_real", 0.5, "shown", marks=pytest.mark.slow)])
def test_trie_scorer_gives_the_reference_answers(which, scale, span, request):
    """The one-call-per-set scorer answers 20 clips exactly as the reference path that scores candidate rows over
    copies of the prompt cache (full-vocabulary log-probs both), in 5 model calls per clip; the rows path needs 11
    when the span is one of 125 clip frames (4 batches of 32 rows for start and for end)."""
    new = _sharpened(request.getfixturevalue(f"{which}_model_dir"), scale)
    new.config.span = span
    old = Predictor(new.model, new.processor, config=PredictConfig(free_text=False, scorer="rows", span=span))
    clips = _clips(20)
    got = [new.predict(*c) for c in clips]
    want = [old.predict(*c) for c in clips]
    for a, b in zip(got, want):
        _same_answer(a, b)
        assert a.scores["span_format"] == span and a.scores["span_answered"] == b.scores["span_answered"]
        if span == "shown":  # the model names sampled frames; the answer is in clip frames
            s, e = a.scores["span_answered"]
            idx = a.scores["frame_indices"]
            assert s in idx and e in idx
            seg = a.prediction.temporal_segment
            assert seg.start_frame <= s <= e <= seg.end_frame
    calls_rows = 5 if span == "shown" else 11
    assert {r.scores["model_calls"] for r in got} == {5} and {r.scores["model_calls"] for r in want} == {calls_rows}
    # not vacuous: the answers vary from clip to clip
    assert len({(r.prediction.dominant_operation, r.prediction.anticipated_next_operation) for r in got}) >= 2
    assert len({(r.prediction.temporal_segment.start_frame, r.prediction.temporal_segment.end_frame)
                 for r in got}) >= 3


def test_batched_answers_equal_one_by_one(tiny_model_dir):
    """Clips answered together (left-padded prompts of different lengths, per-clip M-RoPE offsets) get the answers
    and free texts they get alone; the batch costs 5 calls + the free-text steps, whatever its size."""
    p = _sharpened(tiny_model_dir)
    p.config = PredictConfig(free_text=True, max_new_tokens=16)
    clips = _clips(5, seed=1)
    assert len({len(c[1]) for c in clips}) == 2
    alone = [p.predict(*c) for c in clips]
    calls0 = p.model_calls
    together = p.predict_batch(clips)
    for a, b in zip(together, alone):
        _same_answer(a, b)
        assert a.raw_text == b.raw_text and a.repair == b.repair
        assert a.scores["batch_size"] == 5 and a.prediction.clip_id == b.prediction.clip_id
    steps = p.model_calls - calls0 - 5
    assert 0 < steps <= 16 and together[0].scores["model_calls"] == pytest.approx((5 + steps) / 5)
    p.config = PredictConfig(free_text=False)
    calls0 = p.model_calls
    p.predict_batch(clips)
    assert p.model_calls - calls0 == 5
    assert p.predict_batch([]) == []


def test_predict_output_contract(predictor):
    r = predictor.predict(_images(2), IDX, "U0108_S0500_t0001")
    pred = Prediction.model_validate(r.prediction.model_dump())
    assert pred.clip_id == "U0108_S0500_t0001"
    dom = r.scores["dominant"]
    assert set(dom) == set(OPERATION_NAMES) and sum(dom.values()) == pytest.approx(1.0)
    assert pred.confidence == pytest.approx(dom[pred.dominant_operation]) == pytest.approx(max(dom.values()))
    assert 0 <= pred.temporal_segment.start_frame <= pred.temporal_segment.end_frame <= 124
    nm = r.scores["next_model"]
    assert pred.anticipated_next_operation == max(nm, key=nm.get)
    assert r.scores["next_grammar"] is None and r.scores["frame_indices"] == IDX
    assert isinstance(r.raw_text, str) and r.raw_text  # the random model babbles ...
    assert r.repair is not None and r.repair == check_raw_text(r.raw_text)  # ... which needs repair
    # other frames → other scores: confidence is computed, not a constant
    r2 = predictor.predict(_images(3), IDX, "c2")
    assert r2.scores["dominant"] != dom
    # numpy frames accepted as well
    r3 = predictor.predict([np.asarray(im) for im in _images(2)], IDX, "U0108_S0500_t0001")
    assert r3.prediction == r.prediction


def test_predict_clip_samples_like_training(predictor):
    rng = np.random.RandomState(5)
    frames = np.zeros((125, 336, 336, 3), np.uint8)
    frames[40:60] = rng.randint(0, 255, (20, 336, 336, 3), dtype=np.uint8)  # motion only in 40..60
    r = predictor.predict_clip(frames, "c")
    assert r.scores["frame_indices"] == sample_clip(frames)
    # a run whose frames carry the time bar gets it drawn into the served frames too, before the JPEG round trip
    shown, idx = predictor.sampled_frames(frames)
    assert all((np.asarray(f) == np.asarray(jpeg_round_trip(frames[i], 90))).all() for f, i in zip(shown, idx))
    barred = Predictor(predictor.model, predictor.processor, config=PredictConfig(free_text=False, time_bar=True))
    shown, idx = barred.sampled_frames(frames)
    assert [round(read_time_bar(np.asarray(f))) for f in shown] == idx
    with pytest.raises(PredictError, match=r"\(125, H, W, 3\)"):
        predictor.predict_clip(frames[:100], "c")
    with pytest.raises(PredictError, match="uint8"):
        predictor.predict_clip(frames.astype(np.float32), "c")


def test_a_skeleton_clip_is_drawn_only_where_it_is_sampled_and_answers_as_drawn(predictor):
    """Timeline windows of keypoints reach the predictor undrawn (``SkeletonClip``): it samples on the joints' motion
    and draws only those frames — the same frames, indices and answer as the whole clip drawn first (with the time
    bar as well); a clip of the wrong length is refused."""
    from openpack_vlm.data.openpack import keypoints_from_json
    from openpack_vlm.data.sources import PoseFrameSource

    real = Path(__file__).resolve().parent / "data" / "openpack-keypoints" / "U0102-S0100-mmpose-100frames.json"
    ts, k = keypoints_from_json(real)  # 100 real keypoint frames (6.6 s at 15 Hz)
    clip = PoseFrameSource(ts, k).skeleton_clip(int(ts[0]))
    whole = np.asarray(clip)
    assert whole.shape == clip.shape == (125, 336, 336, 3) and whole.dtype == np.uint8
    for p in (predictor, Predictor(predictor.model, predictor.processor,
                                   config=PredictConfig(free_text=False, time_bar=True))):
        shown, idx = p.sampled_frames(clip)
        shown_whole, idx_whole = p.sampled_frames(whole, clip.motion)
        assert idx == idx_whole and len(idx) == 8
        assert all((np.asarray(a) == np.asarray(b)).all() for a, b in zip(shown, shown_whole))
    a, b = predictor.predict_clip(clip, "c", clip.motion), predictor.predict_clip(whole, "c", clip.motion)
    assert a.prediction == b.prediction and a.scores["frame_indices"] == b.scores["frame_indices"]
    short = PoseFrameSource(ts, k).skeleton_clip(int(ts[0]), n=100)
    with pytest.raises(PredictError, match="125 frames"):
        predictor.sampled_frames(short)


@pytest.mark.parametrize(
    "images,idx,msg",
    [([], [], "no frames"), (_images(0, 2), [1, 2, 3], "2 images for 3"), (_images(0, 2), [5, 1], "sorted"),
     (_images(0, 2), [1, 125], "0..124")],
)
def test_predict_rejects_bad_input(predictor, images, idx, msg):
    with pytest.raises(PredictError, match=msg):
        predictor.predict(images, idx, "x")


def test_grammar_fusion_weight_extremes(predictor):
    g = Grammar.fit([[100, 200, 300, 400, 500, 600, 700, 1000, 800, 900]] * 3)
    imgs = _images(4)
    p1 = Predictor(predictor.model, predictor.processor, grammar=g, fuse_weight=1.0, config=PredictConfig(free_text=False))
    r1 = p1.predict(imgs, IDX, "c")
    dom_id = NAME_TO_ID[r1.prediction.dominant_operation]
    assert NAME_TO_ID[r1.prediction.anticipated_next_operation] == g.predict_next(dom_id)
    assert r1.scores["fuse_weight"] == 1.0 and r1.raw_text == "" and r1.repair is None
    p0 = Predictor(predictor.model, predictor.processor, grammar=g, fuse_weight=0.0, config=PredictConfig(free_text=False))
    r0 = p0.predict(imgs, IDX, "c")
    nm = r0.scores["next_model"]
    assert r0.prediction.anticipated_next_operation == max(nm, key=nm.get)
    assert r0.scores["next_fused"] == pytest.approx(nm)
    with pytest.raises(PredictError, match="fuse_weight"):
        Predictor(predictor.model, predictor.processor, grammar=g, fuse_weight=2.0)


def test_from_pretrained_with_adapter_finds_the_run_grammar(tiny_model_dir, adapter_run, predictor):
    assert find_grammar(adapter_run / "adapter") == adapter_run / "grammar.json"
    assert find_grammar(adapter_run) == adapter_run / "grammar.json"
    assert find_grammar(None) is None
    p = Predictor.from_pretrained(str(tiny_model_dir), adapter=str(adapter_run / "adapter"), device="cpu",
                                  config=PredictConfig(free_text=False))
    assert p.grammar is not None and p.fuse_weight == 1.0  # tuned weight stored in the grammar's meta
    # no run.json: an old run, whose answers named exact clip frames (a pipeline's run.json says "shown")
    assert p.config.span == "clip" and p.info["run"]["answer_span"] == "clip"
    assert p.info["grammar"] == str(adapter_run / "grammar.json")
    imgs = _images(6)
    ra = p.predict(imgs, IDX, "c")
    rb = predictor.predict(imgs, IDX, "c")
    assert ra.scores["dominant"] != rb.scores["dominant"]  # the adapter changes the model
    no_g = Predictor.from_pretrained(str(tiny_model_dir), adapter=str(adapter_run / "adapter"), device="cpu",
                                     grammar=None, config=PredictConfig(free_text=False))
    assert no_g.grammar is None


def test_concurrent_predictions_match_sequential(predictor):
    imgs = [_images(10), _images(11)]
    want = [predictor.predict(im, IDX, f"c{i}").prediction for i, im in enumerate(imgs)]
    got: dict[int, Prediction] = {}

    def run(i):
        got[i] = predictor.predict(imgs[i], IDX, f"c{i}").prediction

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[0], got[1]] == want


@pytest.mark.parametrize(
    "text,why",
    [
        ('{"dominant_operation": "Picking", "temporal_segment": {"start_frame": 0, "end_frame": 5}, '
         '"anticipated_next_operation": "Close Box"}', None),
        ("garbage", "invalid JSON"),
        ('```json\n{}\n```', "code fence"),
        ("[1, 2]", "not an object"),
        ('{"dominant_operation": "Picking"}', "missing key temporal_segment"),
        ('{"dominant_operation": "Wrap", "temporal_segment": {"start_frame": 0, "end_frame": 5}, '
         '"anticipated_next_operation": "Close Box"}', "unknown operation name 'Wrap'"),
        ('{"dominant_operation": "Picking", "temporal_segment": {"start_frame": 9, "end_frame": 5}, '
         '"anticipated_next_operation": "Close Box"}', "invalid span 9..5"),
        ('{"dominant_operation": "Picking", "temporal_segment": {"start_frame": 0, "end_frame": 200}, '
         '"anticipated_next_operation": "Close Box"}', "invalid span"),
        ('{"dominant_operation": "Picking", "temporal_segment": {"start_frame": "0", "end_frame": 5}, '
         '"anticipated_next_operation": "Close Box"}', "invalid span '0'..5"),  # strict: a string is no frame
        ('{"dominant_operation": "Picking", "temporal_segment": {"start_frame": true, "end_frame": 5}, '
         '"anticipated_next_operation": "Close Box"}', "invalid span True..5"),
        ('{"dominant_operation": "Picking", "temporal_segment": [0, 5], '
         '"anticipated_next_operation": "Close Box"}', "temporal_segment is not"),
        ('{"dominant_operation": 100, "temporal_segment": {"start_frame": 0, "end_frame": 5}, '
         '"anticipated_next_operation": "Close Box"}', "unknown operation name '100'"),  # no ids in the target
    ],
)
def test_check_raw_text(text, why):
    got = check_raw_text(text)
    if why is None:
        assert got is None
    else:
        assert got is not None and why in got


def test_parse_raw_text_is_lenient_but_never_invents():
    ok = ('Sure! ```json\n{"dominant_operation": "Tape", "temporal_segment": {"start_frame": 3, "end_frame": 80}, '
          '"anticipated_next_operation": "Attach Box Label"}\n```')
    assert parse_raw_text(ok) == {"op": 500, "span": (3, 80), "next": 600}
    assert parse_raw_text("no json here") == {"op": None, "span": None, "next": None}
    bad = ('{"dominant_operation": "Wrap", "temporal_segment": {"start_frame": 90, "end_frame": 10}, '
           '"anticipated_next_operation": 700}')
    assert parse_raw_text(bad) == {"op": None, "span": None, "next": 700}
    assert parse_raw_text('{"dominant_operation": ["Picking"]}') == {"op": None, "span": None, "next": None}


SAMPLED = [0, 8, 35, 56, 65, 88, 104, 124]  # a demo test clip's motion-sampled frames (boundary at frame 55)


def test_shown_span_names_sampled_frames_and_clip_span_returns_to_clip_frames():
    # the operation before the boundary: frames 0..54 -> shown 0..35 -> back: 0..45 (half-way from 35 to 56)
    assert shown_span(0, 54, SAMPLED) == (0, 35) and clip_span(0, 35, SAMPLED) == (0, 45)
    # the one after it: 55..124 -> shown 56..124 -> back: 46..124
    assert shown_span(55, 124, SAMPLED) == (56, 124) and clip_span(56, 124, SAMPLED) == (46, 124)
    assert clip_span(0, 124, SAMPLED) == (0, 124) and clip_span(65, 65, SAMPLED) == (61, 76)
    # no sampled frame inside: the one nearest the span's middle, twice
    assert shown_span(40, 50, SAMPLED) == (35, 35) and shown_span(60, 62, SAMPLED) == (65, 65)
    # a boundary that is not a sampled frame (free text) is kept; out-of-range frames are refused
    assert clip_span(40, 70, SAMPLED) == (40, 70)
    with pytest.raises(ValueError, match="must lie in 0..124"):
        shown_span(0, 10, [0, 130])
    # every boundary lands within half a gap of the truth (+1 frame of rounding), for any span a sample falls in
    rng = np.random.RandomState(0)
    for _ in range(2000):
        idx = sorted({0, 124, *rng.choice(125, 6, replace=False).tolist()})
        s, e = sorted(rng.choice(125, 2, replace=False).tolist())
        if not any(s <= f <= e for f in idx):
            continue
        a, b = clip_span(*shown_span(s, e, idx), idx)
        gap_s = min([f for f in idx if f >= s]) - max([f for f in idx if f < s], default=0)
        gap_e = min([f for f in idx if f > e], default=124) - max([f for f in idx if f <= e])
        assert abs(a - s) <= gap_s / 2 + 1 and abs(b - e) <= gap_e / 2 + 1, (idx, s, e, a, b)


def test_frame_cells_partition_the_clip_where_clip_span_puts_the_ends():
    """Each sampled frame's cell (the frame head's share of the clip, the timeline's per-frame seconds) holds the
    frame, the cells tile 0..124, and a run of shown frames covers the clip frames ``clip_span`` gives it (within
    the one midpoint frame clip_span hands to both neighbours)."""
    from openpack_vlm.prompt import frame_cells

    rng = np.random.RandomState(1)
    for _ in range(300):
        idx = sorted(set(rng.choice(125, rng.randint(1, 12), replace=False).tolist()))
        cells = frame_cells(idx)
        assert sum(cells) == 125 and all(c > 0 for c in cells)
        edges = np.cumsum([0] + cells)
        assert all(edges[i] <= f < edges[i + 1] for i, f in enumerate(idx))
        a, b = sorted(rng.choice(len(idx), 2).tolist())
        s, e = clip_span(idx[a], idx[b], idx)
        assert s == edges[a] and edges[b + 1] - 1 <= e <= edges[b + 1]


def test_parse_raw_text_reads_a_shown_span_as_clip_frames():
    text = ('{"dominant_operation": "Picking", "temporal_segment": {"start_frame": 0, "end_frame": 35}, '
            '"anticipated_next_operation": "Relocate Item Label"}')
    assert parse_raw_text(text)["span"] == (0, 35)
    assert parse_raw_text(text, SAMPLED) == {"op": 100, "span": (0, 45), "next": 200}


def test_next_operation_is_never_null(predictor):
    """The ground truth skips Null (clips.py), so it is not a next-op candidate."""
    for seed in range(4):
        r = predictor.predict(_images(10 + seed), IDX, f"c{seed}")
        nm = r.scores["next_model"]
        dom = r.prediction.dominant_operation
        assert nm["Null"] == 0.0 and nm[dom] > 0.0 and sum(nm.values()) == pytest.approx(1.0)
        assert r.prediction.anticipated_next_operation != "Null"


def test_bench_predict_reports_calls_and_ratios(tmp_path, capsys):
    """scripts/bench_predict.py runs the reference and trie paths on the same clips and reports calls, ratios,
    agreement and the labelled 2B estimates."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_predict.py"
    spec = importlib.util.spec_from_file_location("bench_predict", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "b.json"
    assert bench.main(["--model", "tiny", "--clips", "3", "--batches", "3", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    calls = [run["model_calls_per_clip"] for run in r["runs"]]
    assert calls == [5, 5, pytest.approx(5 / 3)]  # rows: 8 sampled frames fit one batch of rows per set
    assert all(run["same_answers_as_rows"] == 3 for run in r["runs"])
    assert r["runs"][0]["speedup_vs_rows"] == 1.0 and r["flops_2b_per_clip"]["prefill"] > 5e12
    assert "ESTIMATE" in r["estimates"]["note"] and "x rows" in capsys.readouterr().out
    # --frame-head: the path of an adapter with a frame head, 2 calls fewer on both scorers
    assert bench.main(["--model", "tiny", "--clips", "2", "--batches", "", "--frame-head", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["frame_head"] is True and [run["model_calls_per_clip"] for run in r["runs"]] == [3, 3]
    assert all(run["same_answers_as_rows"] == 2 for run in r["runs"])
