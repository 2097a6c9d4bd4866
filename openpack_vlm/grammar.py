"""Procedural grammar of the packaging work: smoothed P(next operation | current operation).

OpenPack workers repeat one procedure per box (Picking → Relocate Item Label → Assemble Box → Insert Items → Close Box
→ …), so the operation that follows the current one is largely predictable from the current one alone. ``Grammar``
is a first-order (optionally higher-order, backing off to lower orders) Markov model over the *sequence of
operations*: Null (8100) is skipped and consecutive repeats are merged before counting, so "next" always means the
next different, non-Null operation. Pure Python: no torch, no I/O beyond JSON.

Smoothing (Dirichlet prior, ``alpha`` pseudo-counts per candidate):
  order 0:  P0(n)       = (c(n) + alpha) / (N + alpha·|S|)            S = the 10 non-Null operations
  order 1:  P1(n | a)   = (c(a,n) + alpha) / (c(a) + alpha·|S(a)|)    S(a) = S without a (no self-transitions)
  order k:  Pk(n | h,a) = (c(h,a,n) + alpha·|S(a)|·P(k-1)(n | a)) / (c(h,a) + alpha·|S(a)|)
For a Null/unknown current operation the order-0 distribution (how often each operation is somebody's successor) is
used. Null itself always gets probability 0: the grammar never predicts it.

``fuse`` combines a model's next-operation distribution with the grammar's (linear or log-linear mix);
``tune_fuse_weight`` picks the weight on validation clips.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .labels import ID_TO_NAME, NULL_ID, OPERATION_IDS
from .io_utils import read_json, write_json

#: Per-class duration mean and sample std (s) in the real U0209/S0500 session (tests/data/openpack): the synthetic
#: generator draws durations from them and the timeline's HMM uses the means when no fitted ones are given.
REAL_DURATIONS_S: dict[int, tuple[float, float]] = {
    100: (6.898, 2.532), 200: (8.849, 6.255), 300: (10.542, 4.156), 400: (5.278, 2.362), 500: (8.930, 1.735),
    600: (3.069, 0.899), 700: (9.892, 1.743), 800: (6.292, 1.242), 900: (3.991, 2.128), 1000: (5.785, 2.402),
}


def mean_durations(timelines) -> dict[int, float]:
    """{op id: mean segment duration s} over sessions' segment lists (``op_id``, ``start_ms``, ``end_ms``): fitted
    with the grammar on the training timelines (data pipeline), the duration half of the timeline's HMM prior."""
    acc: dict[int, list[float]] = {}
    for segs in timelines:
        for seg in segs:
            acc.setdefault(int(seg.op_id), []).append((seg.end_ms - seg.start_ms) / 1000.0)
    return {op: round(float(np.mean(v)), 3) for op, v in sorted(acc.items())}

FORMAT = "openpack-vlm-grammar"
VERSION = 1
#: Candidate next operations: every operation except Null.
SUPPORT: tuple[int, ...] = tuple(i for i in OPERATION_IDS if i != NULL_ID)


class GrammarError(ValueError):
    """A grammar file or input that cannot be used (message is one line)."""


def op_sequence(labels: Iterable[int]) -> list[int]:
    """Operation sequence of a label stream or a segment list's op ids: Null dropped, consecutive repeats merged.

    Works for per-frame/per-second label columns (run-length) and for interval files alike.
    """
    out: list[int] = []
    for v in labels:
        v = int(v)
        if v not in ID_TO_NAME:
            raise GrammarError(f"unknown OpenPack operation id {v} in sequence; known: {list(OPERATION_IDS)}")
        if v == NULL_ID:
            continue
        if not out or out[-1] != v:
            out.append(v)
    return out


def _key(ctx: Sequence[int]) -> str:
    return ",".join(str(int(c)) for c in ctx)


class Grammar:
    """Smoothed n-gram model of the next operation given the current one (and, for order > 1, the ones before)."""

    def __init__(self, counts: dict[tuple[int, ...], dict[int, int]], alpha: float = 1.0, order: int = 1,
                 meta: dict | None = None):
        if order < 1:
            raise GrammarError(f"order must be >= 1, got {order}")
        if not alpha > 0:
            raise GrammarError(f"alpha must be > 0 (pseudo-counts), got {alpha}")
        self.counts = {tuple(int(c) for c in k): {int(n): int(v) for n, v in d.items()} for k, d in counts.items()}
        self.alpha = float(alpha)
        self.order = int(order)
        self.meta = dict(meta or {})

    # ---------------------------------------------------------------- fitting
    @classmethod
    def fit(cls, sequences: Iterable[Iterable[int]], alpha: float = 1.0, order: int = 1) -> "Grammar":
        """Count transitions in op-id sequences (each one session; Null and repeats are removed here)."""
        counts: dict[tuple[int, ...], dict[int, int]] = {}
        n_seq = n_trans = 0
        for raw in sequences:
            seq = op_sequence(raw)
            n_seq += 1
            for j in range(1, len(seq)):
                n_trans += 1
                nxt = seq[j]
                for k in range(0, order + 1):  # contexts of length 0..order ending at seq[j-1]
                    if j - k < 0:
                        break
                    ctx = tuple(seq[j - k:j])
                    d = counts.setdefault(ctx, {})
                    d[nxt] = d.get(nxt, 0) + 1
        return cls(counts, alpha=alpha, order=order, meta={"n_sequences": n_seq, "n_transitions": n_trans})

    # ---------------------------------------------------------------- querying
    def _smoothed(self, ctx: tuple[int, ...], support: tuple[int, ...], prior: dict[int, float] | None) -> dict[int, float]:
        c = self.counts.get(ctx, {})
        total = sum(c.get(n, 0) for n in support)
        mass = self.alpha * len(support)
        if prior is None:
            return {n: (c.get(n, 0) + self.alpha) / (total + mass) for n in support}
        return {n: (c.get(n, 0) + mass * prior.get(n, 0.0)) / (total + mass) for n in support}

    def next_distribution(self, cur_id: int, history: Sequence[int] | None = None) -> dict[int, float]:
        """P(next | current [, earlier ops]) over all 11 class ids (Null and the current op get 0); sums to 1.

        ``history`` = earlier operations, oldest first, ending just before ``cur_id`` (Null/repeats are removed);
        only used when ``order > 1``.
        """
        cur = int(cur_id)
        if cur not in ID_TO_NAME:
            raise GrammarError(f"unknown OpenPack operation id {cur}; known: {list(OPERATION_IDS)}")
        p = self._smoothed((), SUPPORT, None)
        if cur != NULL_ID:
            support = tuple(n for n in SUPPORT if n != cur)
            p = self._smoothed((cur,), support, None)
            if self.order > 1 and history:
                hist = op_sequence(list(history) + [cur])[:-1]
                for k in range(1, min(self.order, len(hist) + 1)):
                    ctx = tuple(hist[len(hist) - k:]) + (cur,)
                    p = self._smoothed(ctx, support, p)
        out = {i: 0.0 for i in OPERATION_IDS}
        out.update(p)
        return out

    def expected_next_distribution(self, current: dict[int, float], exclude: int | None = None) -> dict[int, float]:
        """Σ_c P(c) · P(next | c): the grammar's next-op distribution when the current operation is only known as a
        distribution (the model's scores over the 11 classes), so a wrong argmax does not drag the answer along.
        ``exclude`` (the operation the answer names as current) gets 0, as in ``next_distribution``; sums to 1."""
        z = sum(max(0.0, float(v)) for v in current.values())
        if not z > 0:
            raise GrammarError("current-operation distribution has zero mass")
        out = {i: 0.0 for i in OPERATION_IDS}
        for c, pc in current.items():
            if pc > 0:
                for n, pn in self.next_distribution(int(c)).items():
                    out[n] += pc / z * pn
        if exclude is not None:
            out[int(exclude)] = 0.0
        total = sum(out.values())
        if not total > 0:
            raise GrammarError("expected next-op distribution has zero mass")
        return {i: v / total for i, v in out.items()}

    def predict_next(self, cur_id: int, history: Sequence[int] | None = None) -> int:
        """Most probable next operation (ties broken by the lower class id)."""
        d = self.next_distribution(cur_id, history)
        return max(OPERATION_IDS, key=lambda i: (d[i], -i))

    def accuracy(self, sequences: Iterable[Iterable[int]]) -> tuple[float, int]:
        """Held-out next-operation accuracy over every transition of the given sequences → (accuracy, n)."""
        hits = n = 0
        for raw in sequences:
            seq = op_sequence(raw)
            for j in range(1, len(seq)):
                n += 1
                hits += int(self.predict_next(seq[j - 1], seq[:j - 1]) == seq[j])
        return (hits / n if n else float("nan")), n

    def log_likelihood(self, sequences: Iterable[Iterable[int]]) -> tuple[float, int]:
        """Mean log P(next | history) over every transition of the given sequences → (mean, n); picks alpha."""
        total, n = 0.0, 0
        for raw in sequences:
            seq = op_sequence(raw)
            for j in range(1, len(seq)):
                n += 1
                total += math.log(self.next_distribution(seq[j - 1], seq[:j - 1])[seq[j]])
        return (total / n if n else float("nan")), n

    def transition_counts(self) -> dict[int, dict[int, int]]:
        """First-order counts c(current → next), current/next as ids."""
        return {k[0]: dict(v) for k, v in self.counts.items() if len(k) == 1}

    def format_table(self, probabilities: bool = True) -> str:
        """Text table: one row per current operation, its successors as 'name p (count)' by decreasing p."""
        lines = []
        tc = self.transition_counts()
        for cur in SUPPORT:
            row = tc.get(cur, {})
            total = sum(row.values())
            if not total:
                continue
            d = self.next_distribution(cur)
            succ = sorted(row, key=lambda n: (-row[n], n))
            cells = [f"{ID_TO_NAME[n]} {d[n]:.2f} ({row[n]})" if probabilities else f"{ID_TO_NAME[n]} ({row[n]})"
                     for n in succ]
            lines.append(f"{cur:>4} {ID_TO_NAME[cur]:<22} n={total:<3} -> " + ", ".join(cells))
        return "\n".join(lines)

    # ---------------------------------------------------------------- persistence
    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "order": self.order,
            "alpha": self.alpha,
            "null_id": NULL_ID,
            "counts": {_key(k): {str(n): v for n, v in sorted(d.items())} for k, d in sorted(self.counts.items())},
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, d: dict) -> "Grammar":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise GrammarError(f"not a grammar JSON (expected \"format\": \"{FORMAT}\")")
        if int(d.get("version", -1)) != VERSION:
            raise GrammarError(f"grammar JSON version {d.get('version')!r} unsupported (expected {VERSION})")
        try:
            counts = {tuple(int(c) for c in k.split(",")) if k else (): {int(n): int(v) for n, v in row.items()}
                      for k, row in d["counts"].items()}
            g = cls(counts, alpha=float(d["alpha"]), order=int(d["order"]), meta=d.get("meta"))
        except (KeyError, ValueError, AttributeError, TypeError) as e:
            raise GrammarError(f"malformed grammar JSON: {type(e).__name__}: {e}") from None
        for k, row in g.counts.items():
            for i in list(k) + list(row):
                if i not in ID_TO_NAME:
                    raise GrammarError(f"grammar JSON names unknown operation id {i}")
        return g

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON atomically (never a half-written file)."""
        return write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Grammar":
        return cls.from_json(read_json(path, "grammar file", GrammarError))

    def __repr__(self) -> str:
        return f"Grammar(order={self.order}, alpha={self.alpha}, transitions={self.meta.get('n_transitions')})"


# -------------------------------------------------------------------- fusion with a model
FUSE_MODES = ("linear", "loglinear")
_EPS = 1e-6  # probability floor for the log-linear mix (the grammar gives Null and self-transitions exactly 0)


def fuse(model_dist: dict[int, float], grammar_dist: dict[int, float], weight: float,
         mode: str = "linear") -> dict[int, float]:
    """Mix two next-op distributions over class ids: weight 0 = model only, 1 = grammar only. Returns a normalised dict.

    linear:    (1-w)·p_model + w·p_grammar
    loglinear: p_model^(1-w) · p_grammar^w, renormalised (floors at 1e-6)
    """
    if not 0.0 <= weight <= 1.0:
        raise GrammarError(f"fusion weight must be in [0, 1], got {weight}")
    if mode not in FUSE_MODES:
        raise GrammarError(f"fusion mode must be one of {FUSE_MODES}, got {mode!r}")
    ids = list(OPERATION_IDS)
    pm = [float(model_dist.get(i, 0.0)) for i in ids]
    pg = [float(grammar_dist.get(i, 0.0)) for i in ids]
    if mode == "linear":
        raw = [(1 - weight) * a + weight * b for a, b in zip(pm, pg)]
    else:
        logs = [(1 - weight) * math.log(max(a, _EPS)) + weight * math.log(max(b, _EPS)) for a, b in zip(pm, pg)]
        m = max(logs)
        raw = [math.exp(v - m) for v in logs]
    z = sum(raw)
    if not z > 0:
        raise GrammarError("fused distribution has zero mass")
    return {i: v / z for i, v in zip(ids, raw)}


def argmax_id(dist: dict[int, float]) -> int:
    """Class id of the highest probability (ties → lower id, so results are deterministic)."""
    return max(dist, key=lambda i: (dist[i], -i))


DEFAULT_WEIGHT_GRID = tuple(round(0.1 * i, 1) for i in range(11))


def tune_fuse_weight(model_dists: Sequence[dict[int, float]], grammar_dists: Sequence[dict[int, float]],
                     truths: Sequence[int], mode: str = "linear",
                     grid: Sequence[float] = DEFAULT_WEIGHT_GRID) -> tuple[float, dict[float, float]]:
    """Weight on ``grid`` with the best next-op accuracy on validation clips → (weight, {weight: accuracy}).

    Ties go to the weight whose fused distributions give the truth the higher mean log-probability, then to the
    smaller weight (trust the model unless the grammar helps).
    """
    if not (len(model_dists) == len(grammar_dists) == len(truths)) or not truths:
        raise GrammarError(f"need equally many (>0) model/grammar distributions and truths, got "
                           f"{len(model_dists)}/{len(grammar_dists)}/{len(truths)}")
    acc: dict[float, float] = {}
    score: dict[float, tuple[float, float, float]] = {}
    for w in grid:
        hits, ll = 0, 0.0
        for pm, pg, t in zip(model_dists, grammar_dists, truths):
            f = fuse(pm, pg, w, mode)
            hits += int(argmax_id(f) == int(t))
            ll += math.log(max(f.get(int(t), 0.0), 1e-12))
        acc[float(w)] = hits / len(truths)
        score[float(w)] = (acc[float(w)], ll / len(truths), -float(w))
    best = max(score, key=lambda w: score[w])
    return best, acc
