"""Procedural grammar: hand-computed probabilities, JSON round trip, fusion, and the table of the REAL sessions."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from openpack_vlm.grammar import SUPPORT, Grammar, GrammarError, argmax_id, fuse, op_sequence, tune_fuse_weight
from openpack_vlm.labels import NULL_ID, OPERATION_IDS

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("fit_grammar", REPO / "scripts" / "fit_grammar.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_op_sequence_drops_null_and_merges_repeats():
    assert op_sequence([8100, 100, 100, 8100, 100, 200, 200, 8100]) == [100, 200]
    assert op_sequence([]) == []
    with pytest.raises(GrammarError, match="unknown OpenPack operation id 123"):
        op_sequence([100, 123])


def test_first_order_probabilities_by_hand():
    g = Grammar.fit([[100, 200, 300], [100, 8100, 300]], alpha=1.0)
    d = g.next_distribution(100)
    # c(100→200)=1, c(100→300)=1, 9 candidates (10 ops minus 100): (1+1)/(2+9)
    assert d[200] == pytest.approx(2 / 11)
    assert d[300] == pytest.approx(2 / 11)
    assert d[400] == pytest.approx(1 / 11)
    assert d[100] == 0.0 and d[NULL_ID] == 0.0
    assert set(d) == set(OPERATION_IDS)
    assert sum(d.values()) == pytest.approx(1.0)
    # Null current → order 0: successors 200×1, 300×2 over 10 candidates: (2+1)/(3+10)
    d0 = g.next_distribution(NULL_ID)
    assert d0[300] == pytest.approx(3 / 13)
    assert d0[200] == pytest.approx(2 / 13)
    assert d0[NULL_ID] == 0.0
    assert g.predict_next(100) == 200  # tie → lower id
    assert g.meta == {"n_sequences": 2, "n_transitions": 3}
    with pytest.raises(GrammarError, match="unknown OpenPack operation id 5"):
        g.next_distribution(5)


def test_log_likelihood_by_hand():
    g = Grammar.fit([[100, 200, 300], [100, 8100, 300]], alpha=1.0)
    ll, n = g.log_likelihood([[100, 200]])
    assert n == 1 and ll == pytest.approx(math.log(2 / 11))


def test_unseen_current_is_uniform_over_other_ops():
    g = Grammar.fit([[100, 200]], alpha=0.5)
    d = g.next_distribution(700)
    assert all(d[i] == pytest.approx(1 / 9) for i in SUPPORT if i != 700)


def test_higher_order_backs_off_and_uses_history():
    # after 200 comes 300 when 100 preceded it, 400 when 900 preceded it: order 1 cannot tell, order 2 can
    seqs = [[100, 200, 300, 900, 200, 400] * 5]
    g1 = Grammar.fit(seqs, order=1)
    g2 = Grammar.fit(seqs, order=2)
    assert g2.predict_next(200, [100]) == 300
    assert g2.predict_next(200, [900]) == 400
    assert g1.predict_next(200, [900]) == g1.predict_next(200, [100])
    assert g2.accuracy(seqs)[0] > g1.accuracy(seqs)[0]
    # unseen history → exactly the order-1 answer
    assert g2.next_distribution(200, [700]) == pytest.approx(g1.next_distribution(200))
    assert sum(g2.next_distribution(200, [100]).values()) == pytest.approx(1.0)


def test_json_round_trip_and_errors(tmp_path):
    g = Grammar.fit([[100, 200, 300, 400], [100, 300]], alpha=0.7, order=2)
    p = g.save(tmp_path / "sub" / "grammar.json")
    assert not list(p.parent.glob("*.tmp"))
    h = Grammar.load(p)
    assert h.order == 2 and h.alpha == 0.7
    for cur in OPERATION_IDS:
        assert h.next_distribution(cur, [100]) == g.next_distribution(cur, [100])
    assert Grammar.from_json(json.loads(json.dumps(g.to_json()))).counts == g.counts
    with pytest.raises(GrammarError, match="not found"):
        Grammar.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(GrammarError, match="not valid JSON"):
        Grammar.load(tmp_path / "bad.json")
    with pytest.raises(GrammarError, match="not a grammar JSON"):
        Grammar.from_json({"counts": {}})
    bad = g.to_json()
    bad["counts"]["100"] = {"42": 1}
    with pytest.raises(GrammarError, match="unknown operation id 42"):
        Grammar.from_json(bad)


def test_fuse_linear_and_loglinear_by_hand():
    pm = {100: 0.6, 200: 0.4}
    pg = {100: 0.2, 200: 0.8}
    f = fuse(pm, pg, 0.5, "linear")
    assert f[100] == pytest.approx(0.4) and f[200] == pytest.approx(0.6)
    assert fuse(pm, pg, 0.0)[100] == pytest.approx(0.6)
    assert fuse(pm, pg, 1.0)[200] == pytest.approx(0.8)
    ll = fuse(pm, pg, 0.5, "loglinear")
    a, b = math.sqrt(0.6 * 0.2), math.sqrt(0.4 * 0.8)
    # the 9 absent classes keep the 1e-6 floor, hence abs=1e-4
    assert ll[100] == pytest.approx(a / (a + b), abs=1e-4) and ll[200] == pytest.approx(b / (a + b), abs=1e-4)
    assert sum(ll.values()) == pytest.approx(1.0)
    assert argmax_id({100: 0.5, 200: 0.5}) == 100
    with pytest.raises(GrammarError, match="weight"):
        fuse(pm, pg, 1.5)
    with pytest.raises(GrammarError, match="mode"):
        fuse(pm, pg, 0.5, "max")


def test_tune_fuse_weight_prefers_grammar_only_when_it_helps():
    good_grammar = [{200: 0.9, 300: 0.1}, {300: 0.9, 200: 0.1}]
    weak_model = [{200: 0.4, 300: 0.6}, {300: 0.4, 200: 0.6}]
    w, acc = tune_fuse_weight(weak_model, good_grammar, [200, 300])
    assert acc[0.0] == 0.0 and acc[w] == 1.0 and w > 0
    # model already right, grammar wrong → weight 0 wins
    w2, acc2 = tune_fuse_weight(good_grammar, weak_model, [200, 300])
    assert w2 == 0.0 and acc2[1.0] == 0.0
    with pytest.raises(GrammarError, match="equally many"):
        tune_fuse_weight([], [], [])


# ---------------------------------------------------------------- the real OpenPack sessions
# Counts read by hand from the real files (U0209/S0500 v1.0.0 interval file, U0102/S0500 v0.3.0 1 Hz file).
U0209_COUNTS = {100: {200: 22}, 200: {300: 20, 100: 2}, 300: {400: 21}, 400: {500: 21, 300: 1},
                500: {600: 20, 400: 1}, 600: {700: 20}, 700: {1000: 20}, 800: {100: 15, 900: 5},
                900: {100: 4}, 1000: {800: 20}}
U0102_COUNTS = {100: {200: 14}, 200: {300: 14, 400: 1}, 300: {400: 13, 200: 1}, 400: {500: 14}, 500: {600: 14},
                600: {700: 14}, 700: {800: 14}, 800: {900: 14}, 900: {1000: 14}, 1000: {100: 13}}


def test_real_sessions_reproduce_the_transition_table():
    mod = _script()
    samples = mod.default_samples()
    u0209, u0102 = mod.load_u0209(samples), mod.load_u0102(samples)
    assert len(u0209) == 193 and len(u0102) == 141
    assert Grammar.fit([u0209]).transition_counts() == U0209_COUNTS
    assert Grammar.fit([u0102]).transition_counts() == U0102_COUNTS
    # scenario S4 (U0209) files the order before the shipping label, S1 (U0102) after it: held-out accuracy shows it
    assert Grammar.fit([u0102]).accuracy([u0209]) == (pytest.approx(129 / 192), 192)
    assert Grammar.fit([u0209]).accuracy([u0102]) == (pytest.approx(83 / 140), 140)
    # alpha=1 (the default) maximises held-out log-likelihood across the two scenarios among 0.1..3
    lls = {a: Grammar.fit([u0209], alpha=a).log_likelihood([u0102])[0] for a in (0.1, 0.3, 1.0, 3.0)}
    assert max(lls, key=lls.get) == 1.0


def test_fit_grammar_cli_prints_table_and_held_out_accuracy(tmp_path, capsys):
    mod = _script()
    out = tmp_path / "g.json"
    assert mod.main(["--out", str(out), "--max-order", "2"]) == 0
    text = capsys.readouterr().out
    assert "1000 Fill out Order" in text and "Attach Shipping Label 0.72 (20)" in text
    assert "order 1  fit U0102/S0500  test U0209/S0500  accuracy 0.672  mean log-lik -1.324  (n=192)" in text
    assert "alpha 1.0   fit U0209/S0500: -1.312" in text
    assert "order 2  fit U0209/S0500  test U0102/S0500" in text
    g = Grammar.load(out)
    assert g.meta["fitted_on"] == ["U0209/S0500", "U0102/S0500"] and g.meta["n_transitions"] == 192 + 140
    assert mod.main(["--samples", str(tmp_path / "nothing")]) == 1
    assert "error:" in capsys.readouterr().err


def test_expected_next_distribution_mixes_by_current_probabilities():
    from openpack_vlm.grammar import Grammar

    g = Grammar.fit([[100, 200, 300], [100, 200, 300]], alpha=0.5)
    # certain current op -> the same as next_distribution
    d = g.expected_next_distribution({100: 1.0})
    assert d == pytest.approx(g.next_distribution(100))
    # 50/50 between Picking and Relocate: next is Relocate (from Picking) or Assemble (from Relocate)
    mix = g.expected_next_distribution({100: 0.5, 200: 0.5})
    assert mix[200] == pytest.approx(0.5 * g.next_distribution(100)[200] + 0.5 * g.next_distribution(200)[200])
    assert sum(mix.values()) == pytest.approx(1.0)
    # the op named as current is excluded and the rest renormalised
    ex = g.expected_next_distribution({100: 0.5, 200: 0.5}, exclude=200)
    assert ex[200] == 0.0 and sum(ex.values()) == pytest.approx(1.0)
    with pytest.raises(Exception, match="zero mass"):
        g.expected_next_distribution({100: 0.0})
