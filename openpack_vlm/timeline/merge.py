"""From overlapping window answers to one operation per second, then to segments: votes + an HMM (Viterbi).

The rule (documented in ARCHITECTURE.md §5, tested on recordings whose true timeline is known):

1. **Evidence per second.** Second j is the interval [j, j+1) s; its centre c = j + 0.5 s. Every window that covers c
   gives a distribution q over the 11 classes: inside the window's predicted span → the window's dominant-operation
   distribution (the scores behind ``confidence``); after the span → its next-operation distribution (what the
   model expects to follow); before the span → uniform (the window says nothing about what came before). A window
   whose adapter has a frame head (model/frame_head.py) says more: c inside the seconds one of its shown frames
   stands for → that frame's own distribution (``frames``: its ``span_s`` and ``p``). The
   evidence e_j is the MEAN of the covering windows' q (a vote: each window weighs 1/n; at a 2.5-s stride n = 2,
   so a confident wrong window can still win its seconds — rule 2 removes such flickers), floored at ``floor`` and
   renormalised.
2. **HMM smoothing.** The operations are the hidden states, one step per second. Staying in operation a for another
   second has probability ``exp(-1 / d_a)`` with d_a its mean duration in seconds (``mean_seconds``: the grammar's,
   fitted on the training timelines by data_pipeline.py; else OpenPack U0209's x ``duration_scale``), so a segment's
   length prior is geometric with that mean; leaving goes to b with the grammar's P(b | a) (uniform over the others
   without a grammar), with ``null_prob`` of the leaving mass to Null (an unannotated gap) and from Null by the
   grammar's order-0 distribution. Viterbi gives the most probable
   sequence; forward-backward gives each second's posterior.
3. **Segments** are runs of equal Viterbi labels: ``{start_s, end_s, operation, confidence}`` with confidence =
   the mean posterior of the segment's operation over its seconds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..grammar import REAL_DURATIONS_S
from ..labels import ID_TO_INDEX, ID_TO_NAME, NAME_TO_ID, NULL_ID, OPERATION_IDS

N = len(OPERATION_IDS)
NULL_INDEX = ID_TO_INDEX[NULL_ID]

#: Mean duration (s) of each operation in the real U0209/S0500 session (grammar.REAL_DURATIONS_S); Null gaps
#: there last 2.0-3.7 s.
NULL_MEAN_S = 3.0


@dataclass
class MergeConfig:
    floor: float = 1e-3  # smallest evidence of a class in a second (a window is never certain)
    duration_scale: float = 1.0  # x the real mean durations (the synthetic demo data use 0.5)
    null_prob: float = 0.05  # share of operation changes that go to Null first (real U0209: 5 of 192)
    hmm: bool = True  # False: each second's argmax evidence (the vote alone), for comparison
    mean_seconds: dict | None = None  # {op id: mean duration s}, the grammar's (fitted on the training timelines);
    #                                   None = the real U0209 means x duration_scale


def _dist_vector(dist: dict | None) -> np.ndarray:
    """{name or id: p} → a length-11 vector in class-index order (uniform when None/empty)."""
    v = np.zeros(N)
    if dist:
        for k, p in dist.items():
            op = NAME_TO_ID[k] if isinstance(k, str) else int(k)
            v[ID_TO_INDEX[op]] = max(0.0, float(p))
    s = v.sum()
    return v / s if s > 0 else np.full(N, 1.0 / N)


def second_evidence(windows: list[dict], n_seconds: int, fps: int = 25, floor: float = 1e-3) -> np.ndarray:
    """(n_seconds, 11) evidence e_j (rule 1). A window dict has ``start_s``, ``end_s``, ``span_s`` ([a, b) s of its
    predicted span in the recording), ``dominant`` and ``next`` ({name: p}), and optionally ``frames`` (the frame
    head's [{"span_s": [a, b), "p": {name: p}}] per shown frame)."""
    acc = np.zeros((n_seconds, N))
    cnt = np.zeros(n_seconds)
    uniform = np.full(N, 1.0 / N)
    for w in windows:
        dom, nxt = _dist_vector(w.get("dominant")), _dist_vector(w.get("next"))
        a, b = w["span_s"]
        j0 = max(0, int(math.floor(w["start_s"] - 0.5)))
        j1 = min(n_seconds, int(math.ceil(w["end_s"] + 0.5)))
        for j in range(j0, j1):
            c = j + 0.5
            if not w["start_s"] <= c < w["end_s"]:
                continue
            seen = [f["p"] for f in w.get("frames") or () if f["span_s"][0] <= c < f["span_s"][1]]
            acc[j] += _dist_vector(seen[0]) if seen else dom if a <= c < b else (nxt if c >= b else uniform)
            cnt[j] += 1
    e = np.where(cnt[:, None] > 0, acc / np.maximum(cnt, 1)[:, None], uniform)
    e = np.maximum(e, floor)
    return e / e.sum(1, keepdims=True)


def transition_matrix(grammar=None, cfg: MergeConfig | None = None) -> np.ndarray:
    """(11, 11) per-second transition probabilities (rule 2); rows sum to 1."""
    cfg = cfg or MergeConfig()
    a = np.zeros((N, N))
    for i, op in enumerate(OPERATION_IDS):
        mean = NULL_MEAN_S if op == NULL_ID else REAL_DURATIONS_S[op][0]
        mean *= cfg.duration_scale
        if cfg.mean_seconds and op in cfg.mean_seconds:
            mean = float(cfg.mean_seconds[op])
        stay = math.exp(-1.0 / max(1.0, mean))
        if grammar is not None:
            g = grammar.next_distribution(op)
            nxt = np.array([g.get(o, 0.0) for o in OPERATION_IDS])
        else:
            nxt = np.ones(N)
            nxt[NULL_INDEX] = 0.0
        nxt[i] = 0.0
        if op != NULL_ID:
            nxt = nxt / nxt.sum() * (1 - cfg.null_prob)
            nxt[NULL_INDEX] = cfg.null_prob
        nxt = nxt / nxt.sum()
        a[i] = (1 - stay) * nxt
        a[i, i] = stay
    return a


def viterbi(log_e: np.ndarray, log_a: np.ndarray) -> np.ndarray:
    """Most probable state path for per-step log-evidence (T, N) and log-transitions (N, N); uniform start."""
    t_len = len(log_e)
    score = log_e[0] - math.log(N)
    back = np.zeros((t_len, N), np.int64)
    for t in range(1, t_len):
        cand = score[:, None] + log_a  # (from, to)
        back[t] = np.argmax(cand, 0)
        score = cand[back[t], np.arange(N)] + log_e[t]
    path = np.empty(t_len, np.int64)
    path[-1] = int(np.argmax(score))
    for t in range(t_len - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


def posteriors(e: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Per-step state posteriors (forward-backward, scaled); (T, N), rows sum to 1."""
    t_len = len(e)
    alpha = np.empty((t_len, N))
    alpha[0] = e[0] / N
    alpha[0] /= alpha[0].sum()
    for t in range(1, t_len):
        alpha[t] = (alpha[t - 1] @ a) * e[t]
        alpha[t] /= alpha[t].sum()
    beta = np.ones(N)
    post = np.empty((t_len, N))
    post[-1] = alpha[-1]
    for t in range(t_len - 2, -1, -1):
        beta = a @ (e[t + 1] * beta)
        beta /= beta.sum()
        p = alpha[t] * beta
        post[t] = p / p.sum()
    return post


def merge_windows(windows: list[dict], duration_s: float, grammar=None, cfg: MergeConfig | None = None) -> dict:
    """Per-second labels and merged segments for a recording of ``duration_s`` (rules 1-3).

    Returns ``{"seconds": [name per second], "segments": [{start_s, end_s, operation, confidence}]}``.
    """
    cfg = cfg or MergeConfig()
    n = max(1, int(math.ceil(duration_s - 1e-9)))
    e = second_evidence(windows, n, floor=cfg.floor)
    if cfg.hmm:
        a = transition_matrix(grammar, cfg)
        path = viterbi(np.log(e), np.log(np.maximum(a, 1e-300)))
        post = posteriors(e, a)
    else:
        path, post = np.argmax(e, 1), e
    segments = []
    j = 0
    while j < n:
        k = j
        while k + 1 < n and path[k + 1] == path[j]:
            k += 1
        segments.append({"start_s": float(j), "end_s": float(min(k + 1, duration_s)),
                         "operation": ID_TO_NAME[OPERATION_IDS[path[j]]],
                         "confidence": round(float(post[j:k + 1, path[j]].mean()), 4)})
        j = k + 1
    return {"seconds": [ID_TO_NAME[OPERATION_IDS[i]] for i in path], "segments": segments}


NO_WORKER = "no worker"  # a second in which too few keypoint frames show a worker (skeleton runs)


def mark_no_worker(merged: dict, worker_share: np.ndarray, min_share: float) -> dict:
    """Seconds whose share of keypoint frames showing a worker is below ``min_share`` become ``NO_WORKER`` (the
    model's answer there is not evidence of anything), and the segments are rebuilt as runs of equal labels; a
    segment keeps the mean confidence of its seconds' former segments only when no second of it changed."""
    seconds = list(merged["seconds"])
    conf = np.zeros(len(seconds))
    for seg in merged["segments"]:
        conf[int(seg["start_s"]):int(math.ceil(seg["end_s"] - 1e-9))] = seg["confidence"]
    share = np.asarray(worker_share, dtype=np.float64)
    for j in range(len(seconds)):
        if j < len(share) and share[j] < min_share:
            seconds[j] = NO_WORKER
    end = merged["segments"][-1]["end_s"] if merged["segments"] else float(len(seconds))
    segments, j = [], 0
    while j < len(seconds):
        k = j
        while k + 1 < len(seconds) and seconds[k + 1] == seconds[j]:
            k += 1
        segments.append({"start_s": float(j), "end_s": float(min(k + 1, end)), "operation": seconds[j],
                         "confidence": None if seconds[j] == NO_WORKER else round(float(conf[j:k + 1].mean()), 4)})
        j = k + 1
    return {"seconds": seconds, "segments": segments}
