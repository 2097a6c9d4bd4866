"""Metrics against hand-computed values (inclusive frame spans 0..124)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from openpack_vlm.labels import OPERATION_IDS
from openpack_vlm.metrics import (
    aa_at_1,
    as_span,
    bootstrap_ci,
    bootstrap_mean_ci,
    confusion_dict,
    confusion_matrix,
    evaluate_predictions,
    majority_class,
    most_confused_pair,
    oca,
    span_iou,
    tiou_at,
)


@pytest.mark.parametrize(
    "pred,true,expected",
    [
        ((0, 9), (20, 29), 0.0),  # disjoint
        ((0, 9), (10, 19), 0.0),  # touching: inclusive ends, no shared frame
        ((0, 10), (10, 19), 1 / 20),  # share exactly frame 10: 1 / (11 + 10 - 1)
        ((10, 19), (0, 124), 10 / 125),  # nested
        ((0, 124), (0, 124), 1.0),  # whole clip
        ((5, 5), (5, 5), 1.0),  # single frame, equal
        ((5, 5), (6, 6), 0.0),  # single frames, adjacent
        ((5, 5), (0, 9), 1 / 10),  # single frame inside
        ((0, 49), (25, 74), 25 / 75),  # partial overlap
        ({"start_frame": 0, "end_frame": 49}, (0, 99), 0.5),  # dict form, exactly 0.5
    ],
)
def test_span_iou_edge_cases(pred, true, expected):
    assert span_iou(pred, true) == pytest.approx(expected)
    assert span_iou(true, pred) == pytest.approx(expected)  # symmetric


@pytest.mark.parametrize("bad", [None, (10, 5), (-1, 5), (0, 125), (1.5, 3), ("1", "3"), (True, 3), (1,), {"start_frame": 1},
                                 (float("nan"), 3)])
def test_invalid_or_missing_predicted_span_is_none(bad):
    assert as_span(bad) is None
    assert span_iou(bad, (0, 10)) is None


def test_invalid_truth_span_is_an_error():
    with pytest.raises(ValueError, match="invalid ground-truth span"):
        span_iou((0, 1), (3, 2))


def test_tiou_at_counts_invalid_as_misses():
    true = [(0, 99), (0, 99), (0, 99), (0, 99)]
    pred = [(0, 49), (0, 48), None, (50, 10)]  # IoU 0.5 (hit), 0.49 (miss), missing, reversed
    r = tiou_at(pred, true)
    assert r["all"] == pytest.approx(1 / 4)
    assert r["valid_only"] == pytest.approx(1 / 2)
    assert r["valid_rate"] == pytest.approx(2 / 4)
    assert r["mean_iou"] == pytest.approx((0.5 + 0.49) / 4)
    assert (r["n"], r["n_valid"]) == (4, 2)
    empty = tiou_at([None], [(0, 1)])
    assert empty["all"] == 0.0 and math.isnan(empty["valid_only"]) and empty["valid_rate"] == 0.0
    with pytest.raises(ValueError, match="differ in length"):
        tiou_at([None], [])


def test_oca_aa_accept_ids_names_and_aliases():
    assert oca(["Picking", 200, "Close Box"], [100, "Relocate Item Label", 400]) == pytest.approx(2 / 3)
    assert aa_at_1(["Tape"], ["Close Box"]) == 1.0  # assignment alias → OpenPack class
    # missing or unknown predicted names are misses, never errors; an unknown TRUE name is a data error
    assert oca([None, "Wrap", "Dance", 3.5, 100], [100, 100, 100, 100, 100]) == pytest.approx(1 / 5)
    with pytest.raises(ValueError, match="unknown operation"):
        oca([100], ["Dance"])
    assert math.isnan(oca([], []))


def test_confusion_matrix_and_most_confused_pair_ties():
    true = [100, 100, 200, 200, 300, 300]
    pred = [200, 100, 100, 200, 400, 300]
    cm = confusion_matrix(true, pred)
    assert cm.shape == (11, 11) and cm.sum() == 6 and np.trace(cm) == 3
    i = {c: k for k, c in enumerate(OPERATION_IDS)}
    assert cm[i[100], i[200]] == 1 and cm[i[200], i[100]] == 1 and cm[i[300], i[400]] == 1
    # three off-diagonal cells tie at 1 → the first in row-major order: true 100, predicted 200
    assert most_confused_pair(cm) == (100, 200, 1)
    cm2 = confusion_matrix(true + [300], pred + [400])
    assert most_confused_pair(cm2) == (300, 400, 2)
    assert most_confused_pair(confusion_matrix([100], [100])) is None
    d = confusion_dict(cm)
    assert d["names"][0] == "Picking" and d["matrix"][i[100]][i[200]] == 1
    with pytest.raises(ValueError, match="not in confusion labels"):
        confusion_matrix([100], [200], labels=[100])


def test_majority_class_tie_goes_to_lower_id():
    assert majority_class([300, 200, 300, 200]) == 200
    assert majority_class(["Close Box", 500, 100]) == 500
    with pytest.raises(ValueError):
        majority_class([])


def test_bootstrap_is_deterministic_and_sane():
    vals = [0.9, 0.1, 0.8, 0.7, 0.0, 1.0, 0.6, 0.95, 0.2, 0.75]  # mean 0.6
    a = bootstrap_mean_ci(vals, n_boot=500, seed=3)
    b = bootstrap_mean_ci(vals, n_boot=500, seed=3)
    c = bootstrap_mean_ci(vals, n_boot=500, seed=4)
    assert a == b and a != c
    assert 0.0 <= a[0] < 0.6 < a[1] <= 1.0
    assert bootstrap_mean_ci([1, 1, 1]) == (1.0, 1.0)  # no variance → degenerate interval
    assert all(math.isnan(v) for v in bootstrap_ci(lambda idx: 0.0, 0))
    assert all(math.isnan(v) for v in bootstrap_ci(lambda idx: float("nan"), 5, n_boot=10))


def test_evaluate_predictions_by_hand():
    recs = [
        dict(true_op=100, pred_op=100, true_span=(0, 99), pred_span=(0, 49), true_next=200, pred_next=200),
        dict(true_op=200, pred_op=100, true_span=(0, 99), pred_span=None, true_next=300, pred_next=200),
        dict(true_op=300, pred_op=300, true_span=(10, 20), pred_span=(30, 40), true_next=400, pred_next=400),
        dict(true_op=400, pred_op=400, true_span=(0, 124), pred_span=(0, 124), true_next=500, pred_next=100),
    ]
    m = evaluate_predictions(recs, n_boot=200, seed=0)
    assert m["OCA"] == pytest.approx(3 / 4)
    assert m["tIoU@0.5"] == pytest.approx(2 / 4)
    assert m["tIoU@0.5_valid_only"] == pytest.approx(2 / 3)
    assert m["span_valid_rate"] == pytest.approx(3 / 4)
    assert m["AA@1"] == pytest.approx(2 / 4)
    assert m["mean_tIoU"] == pytest.approx((0.5 + 0 + 0 + 1.0) / 4)
    assert m["n_clips"] == 4
    for key in ("OCA", "tIoU@0.5", "AA@1", "tIoU@0.5_valid_only", "mean_tIoU"):
        lo, hi = m["intervals"][key]
        assert lo <= m[key] <= hi
    assert evaluate_predictions(recs, n_boot=200, seed=0) == m
    # a free-text answer that named no operation: a miss, not an error
    recs[0] = dict(recs[0], pred_op=None, pred_next="not an op")
    m2 = evaluate_predictions(recs, n_boot=0)
    assert m2["OCA"] == pytest.approx(2 / 4) and m2["AA@1"] == pytest.approx(1 / 4)


# ------------------------------------------------------------------------------------------------ segment metrics
def test_segment_metrics_equal_the_ms_tcn_reference_on_random_timelines():
    from reference import mstcn_eval as ref

    from openpack_vlm.metrics import edit_score, segment_counts

    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(400):
        n = int(rng.integers(1, 80))
        # runs of random length over 4 labels, 0 = background (Null), so segments are realistic, not per-frame noise
        def timeline():
            out = []
            while len(out) < n:
                out += [int(rng.integers(0, 4))] * int(rng.integers(1, 12))
            return out[:n]
        pred, true = timeline(), timeline()
        if all(t == 0 for t in true) or all(p == 0 for p in pred):
            continue  # the reference divides by zero / indexes an empty array there
        assert edit_score(pred, true, [0]) == pytest.approx(ref.edit_score(pred, true, bg_class=[0]) / 100)
        for k in (0.1, 0.25, 0.5):
            assert segment_counts(pred, true, k, [0]) == tuple(int(x) for x in ref.f_score(pred, true, k, bg_class=[0]))
        checked += 1
    assert checked > 300


def test_segment_scores_see_flicker_that_per_second_accuracy_misses():
    from openpack_vlm.metrics import segment_scores

    true = [1] * 30 + [2] * 30
    flicker = [1] * 30 + [2, 1] * 15  # 75 % of the seconds right, but 31 segments for 2
    s = segment_scores(flicker, true, background=[0])
    assert np.mean(np.array(flicker) == np.array(true)) == 0.75
    assert s["edit"] == round(1 - 29 / 31, 4) and s["F1@10"] == round(2 * (1 / 31) * (1 / 2) / (1 / 31 + 1 / 2), 4)
    assert segment_scores(true, true, [0]) == {"edit": 1.0, "F1@10": 1.0, "F1@25": 1.0, "F1@50": 1.0}
    # a constant answer (one class for the whole session) scores low on every one of them
    const = segment_scores([1] * 60, true, [0])
    assert const == {"edit": 0.5, "F1@10": 0.6667, "F1@25": 0.6667, "F1@50": 0.6667}
    assert segment_scores([0] * 60, true, [0])["F1@10"] == 0.0  # all background: nothing found


# ------------------------------------------------------------------------------------------------ calibration
def test_ece_by_hand_and_a_constant_confident_model_is_badly_calibrated():
    from openpack_vlm.metrics import reliability

    r = reliability([0.95, 0.95, 0.55, 0.55], [True, False, True, True])
    # bin [0.9, 1.0): accuracy 0.5 vs confidence 0.95; bin [0.5, 0.6): 1.0 vs 0.55 -> (0.45 + 0.45) / 2
    assert r["ece"] == pytest.approx(0.45) and [b["n"] for b in r["bins"]] == [2, 2]
    # one class at confidence 1.0 for every clip, right on 20 % of them: ECE 0.8 (and 1.0 lands in the last bin)
    const = reliability([1.0] * 10, [True] * 2 + [False] * 8)
    assert const["ece"] == pytest.approx(0.8) and const["bins"][0]["bin"] == [0.9, 1.0]
    assert reliability([0.7] * 10, [True] * 7 + [False] * 3)["ece"] == pytest.approx(0.0)


def test_fitted_temperature_recovers_the_one_that_made_the_labels():
    from openpack_vlm.metrics import fit_temperature, reliability, temper

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (4000, 11))
    true_p = temper(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), 2.5)  # the labels follow p ** (1/2.5)
    y = np.array([rng.choice(11, p=row) for row in true_p])
    over = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)  # over-confident by a factor 2.5 in log space
    t = fit_temperature(over, y)
    assert 2.2 < t < 2.8
    before = reliability(over.max(1), over.argmax(1) == y)["ece"]
    after = reliability(temper(over, t).max(1), over.argmax(1) == y)["ece"]
    assert after < before / 3 and (temper(over, t).argmax(1) == over.argmax(1)).all()  # answers never change


def test_per_class_scores_by_hand():
    from openpack_vlm.metrics import per_class_scores

    s = per_class_scores([100, 100, 200, 300], [100, 200, 200, None])
    assert s["Picking"] == {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2}
    assert s["Relocate Item Label"] == {"precision": 0.5, "recall": 1.0, "f1": 0.6667, "support": 1}
    assert s["Assemble Box"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert set(s) == {"Picking", "Relocate Item Label", "Assemble Box"}  # classes never true are left out
