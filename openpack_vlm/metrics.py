"""Evaluation metrics, pure functions (numpy only; no torch, no I/O).

- OCA: operation classification accuracy = share of clips whose dominant operation is right.
- tIoU: temporal IoU of two *inclusive* frame spans [start, end] of the 125-frame clip (frames 0..124), so
  [10, 10] is one frame long and [0, 9] / [10, 19] touch without overlapping (IoU 0).
- tIoU@0.5: share of clips with tIoU ≥ 0.5. Headline = over ALL clips, a missing or invalid predicted span counting
  as a miss; also reported: the rate over clips with a valid span, and the valid rate.
- AA@1: anticipation accuracy = share of clips whose (top-1) anticipated next operation is right.
- 95 % bootstrap intervals (percentile, seeded, clips resampled with replacement).
Operations may be given as class ids, names or aliases (normalised through labels.to_id).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .labels import ID_TO_NAME, OPERATION_IDS, UnknownOperationError, to_id
from .schema import CLIP_FRAMES

Span = tuple[int, int]


def _ids(values: Sequence) -> list[int]:
    return [to_id(v) for v in values]


def pred_id(value: Any) -> int | None:
    """A predicted operation as a class id; None (= a miss) when it is missing or not an OpenPack operation."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, str)):
        return None
    try:
        return to_id(value)
    except UnknownOperationError:
        return None


def _same_length(*seqs: Sequence) -> int:
    n = {len(s) for s in seqs}
    if len(n) != 1:
        raise ValueError(f"metric inputs differ in length: {[len(s) for s in seqs]}")
    return n.pop()


def accuracy(pred: Sequence, true: Sequence) -> float:
    """Share of equal operations (ids/names normalised; a missing/unknown prediction is a miss); nan for no clips."""
    n = _same_length(pred, true)
    if n == 0:
        return float("nan")
    return sum(pred_id(p) == t for p, t in zip(pred, _ids(true))) / n


def oca(pred_ops: Sequence, true_ops: Sequence) -> float:
    """Operation classification accuracy of the dominant operation."""
    return accuracy(pred_ops, true_ops)


def aa_at_1(pred_next: Sequence, true_next: Sequence) -> float:
    """Anticipation accuracy @1 of the next operation."""
    return accuracy(pred_next, true_next)


def as_span(span: Any) -> Span | None:
    """A valid inclusive span (start, end) with 0 ≤ start ≤ end ≤ 124, else None (missing, malformed, reversed,
    out of range). Accepts (s, e) pairs and {"start_frame", "end_frame"} dicts."""
    if span is None:
        return None
    try:
        if isinstance(span, dict):
            s, e = span["start_frame"], span["end_frame"]
        else:
            s, e = span
    except (KeyError, TypeError, ValueError):
        return None
    if isinstance(s, bool) or isinstance(e, bool):
        return None
    try:
        if int(s) != s or int(e) != e:
            return None
        s, e = int(s), int(e)
    except (TypeError, ValueError, OverflowError):
        return None
    if not 0 <= s <= e <= CLIP_FRAMES - 1:
        return None
    return s, e


def span_iou(pred: Any, true: Any) -> float | None:
    """IoU of two inclusive frame spans; None when the predicted span is missing or invalid.

    A invalid *true* span is a data error (ValueError)."""
    t = as_span(true)
    if t is None:
        raise ValueError(f"invalid ground-truth span {true!r} (need 0 <= start <= end <= {CLIP_FRAMES - 1})")
    p = as_span(pred)
    if p is None:
        return None
    inter = max(0, min(p[1], t[1]) - max(p[0], t[0]) + 1)
    union = (p[1] - p[0] + 1) + (t[1] - t[0] + 1) - inter
    return inter / union


def tiou_at(pred_spans: Sequence, true_spans: Sequence, threshold: float = 0.5) -> dict:
    """tIoU@threshold → {"all": hit rate over all clips (invalid = miss), "valid_only": over valid predictions,
    "valid_rate", "mean_iou" (over all, invalid = 0), "n", "n_valid"}."""
    n = _same_length(pred_spans, true_spans)
    ious = [span_iou(p, t) for p, t in zip(pred_spans, true_spans)]
    valid = [v for v in ious if v is not None]
    hits = sum(v >= threshold for v in valid)
    nan = float("nan")
    return {
        "all": hits / n if n else nan,
        "valid_only": hits / len(valid) if valid else nan,
        "valid_rate": len(valid) / n if n else nan,
        "mean_iou": sum(valid) / n if n else nan,
        "n": n,
        "n_valid": len(valid),
    }


def confusion_matrix(true: Sequence, pred: Sequence, labels: Sequence[int] = OPERATION_IDS) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class, in ``labels`` order (default: the 11 class ids)."""
    _same_length(true, pred)
    index = {int(l): i for i, l in enumerate(labels)}
    cm = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(_ids(true), _ids(pred)):
        if t not in index or p not in index:
            raise ValueError(f"class {t if t not in index else p} not in confusion labels {list(labels)}")
        cm[index[t], index[p]] += 1
    return cm


def most_confused_pair(cm: np.ndarray, labels: Sequence[int] = OPERATION_IDS) -> tuple[int, int, int] | None:
    """(true id, predicted id, count) of the largest off-diagonal cell; ties → first in row-major label order;
    None when nothing is confused."""
    off = np.array(cm, dtype=np.int64).copy()
    np.fill_diagonal(off, 0)
    if off.max(initial=0) <= 0:
        return None
    i, j = np.unravel_index(int(np.argmax(off)), off.shape)  # argmax returns the first maximum: row-major ties
    return int(labels[i]), int(labels[j]), int(off[i, j])


def majority_class(values: Sequence) -> int:
    """Most frequent class id; ties → the lower id (deterministic)."""
    ids = _ids(values)
    if not ids:
        raise ValueError("majority_class of no values")
    counts: dict[int, int] = {}
    for v in ids:
        counts[v] = counts.get(v, 0) + 1
    return max(counts, key=lambda k: (counts[k], -k))


def bootstrap_ci(stat: Callable[[np.ndarray], float], n: int, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat(indices)`` over ``n`` clips resampled with replacement.

    Deterministic for a given seed. Resamples where the statistic is nan (e.g. no valid span drawn) are dropped;
    (nan, nan) when n == 0 or every resample is nan."""
    if n <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    vals = np.array([stat(rng.integers(0, n, size=n)) for _ in range(n_boot)], dtype=np.float64)
    vals = vals[~np.isnan(vals)]
    if vals.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(vals, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def bootstrap_mean_ci(values: Sequence[float], n_boot: int = 1000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float]:
    """Bootstrap interval of the mean of per-clip values (e.g. 0/1 hits)."""
    arr = np.asarray(values, dtype=np.float64)
    return bootstrap_ci(lambda idx: float(arr[idx].mean()), len(arr), n_boot, seed, level)


def evaluate_predictions(records: Sequence[dict], threshold: float = 0.5, n_boot: int = 1000,
                         seed: int = 0) -> dict:
    """All headline metrics with 95 % bootstrap intervals for one system.

    Each record: ``true_op``, ``pred_op``, ``true_span``, ``pred_span``, ``true_next``, ``pred_next``; predictions
    may be None/invalid (counted as misses). Returns {"OCA", "tIoU@0.5", "AA@1", "tIoU@0.5_valid_only", "span_valid_rate", "mean_tIoU",
    "n_clips", "intervals": {metric: [lo, hi]}}.
    """
    n = len(records)
    op_hit = np.array([pred_id(r["pred_op"]) == to_id(r["true_op"]) for r in records], dtype=np.float64)
    nx_hit = np.array([pred_id(r["pred_next"]) == to_id(r["true_next"]) for r in records], dtype=np.float64)
    ious = [span_iou(r["pred_span"], r["true_span"]) for r in records]
    valid = np.array([v is not None for v in ious], dtype=bool)
    span_hit = np.array([v is not None and v >= threshold for v in ious], dtype=np.float64)
    iou0 = np.array([0.0 if v is None else v for v in ious], dtype=np.float64)
    tiou = tiou_at([r["pred_span"] for r in records], [r["true_span"] for r in records], threshold)

    def valid_only(idx: np.ndarray) -> float:
        m = valid[idx]
        return float(span_hit[idx][m].mean()) if m.any() else float("nan")

    key = f"tIoU@{threshold:g}"
    out = {
        "OCA": float(op_hit.mean()) if n else float("nan"),
        key: tiou["all"],
        "AA@1": float(nx_hit.mean()) if n else float("nan"),
        f"{key}_valid_only": tiou["valid_only"],
        "span_valid_rate": tiou["valid_rate"],
        "mean_tIoU": tiou["mean_iou"],
        "n_clips": n,
    }
    # different seeds per metric would decorrelate nothing useful; one seed, same resamples → paired intervals
    out["intervals"] = {
        "OCA": list(bootstrap_mean_ci(op_hit, n_boot, seed)),
        key: list(bootstrap_mean_ci(span_hit, n_boot, seed)),
        "AA@1": list(bootstrap_mean_ci(nx_hit, n_boot, seed)),
        f"{key}_valid_only": list(bootstrap_ci(valid_only, n, n_boot, seed)),
        "mean_tIoU": list(bootstrap_mean_ci(iou0, n_boot, seed)),
    }
    return out


def confusion_dict(cm: np.ndarray, labels: Sequence[int] = OPERATION_IDS) -> dict:
    """JSON form of a confusion matrix: labels (ids and names) and rows = true, columns = predicted."""
    return {
        "labels": [int(l) for l in labels],
        "names": [ID_TO_NAME[int(l)] for l in labels],
        "rows": "true",
        "columns": "predicted",
        "matrix": np.asarray(cm).astype(int).tolist(),
    }


# ------------------------------------------------------------------------------------- segments of a timeline
def label_segments(labels: Sequence, background: Sequence = ()) -> list[tuple[Any, int, int]]:
    """Runs of equal labels as ``(label, start, end)`` (end exclusive), background runs left out (MS-TCN's
    ``get_labels_start_end_time``)."""
    bg = set(background)
    out: list[tuple[Any, int, int]] = []
    start = 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            if labels[start] not in bg:
                out.append((labels[start], start, i))
            start = i
    return out


def edit_score(pred: Sequence, true: Sequence, background: Sequence = ()) -> float:
    """Segmental edit score in [0, 1]: 1 - Levenshtein distance between the two sequences of segment labels / the
    longer one's length (MS-TCN's ``edit_score`` / 100). Penalises over-segmentation that per-frame metrics miss."""
    p = [s[0] for s in label_segments(pred, background)]
    t = [s[0] for s in label_segments(true, background)]
    if not p and not t:
        return 1.0
    d = np.arange(len(t) + 1, dtype=np.int64)
    for i in range(1, len(p) + 1):
        prev, d[0] = d.copy(), i
        for j in range(1, len(t) + 1):
            d[j] = prev[j - 1] if p[i - 1] == t[j - 1] else 1 + min(prev[j], d[j - 1], prev[j - 1])
    return float(1.0 - d[-1] / max(len(p), len(t)))


def segment_counts(pred: Sequence, true: Sequence, overlap: float, background: Sequence = ()) -> tuple[int, int, int]:
    """(tp, fp, fn) of predicted segments at an IoU threshold (MS-TCN's ``f_score``): each predicted segment is
    matched to the same-label true segment it overlaps most; a hit needs IoU >= ``overlap`` and an unmatched one."""
    ps, ts = label_segments(pred, background), label_segments(true, background)
    hit = [False] * len(ts)
    tp = fp = 0
    for lab, s, e in ps:
        ious = [(min(e, te) - max(s, ts_)) / (max(e, te) - min(s, ts_)) if tl == lab else 0.0
                for tl, ts_, te in ts]
        j = int(np.argmax(ious)) if ious else -1
        if j >= 0 and ious[j] >= overlap and not hit[j]:
            tp, hit[j] = tp + 1, True
        else:
            fp += 1
    return tp, fp, len(ts) - sum(hit)


SEGMENT_OVERLAPS = (0.10, 0.25, 0.50)


def segment_scores(pred: Sequence, true: Sequence, background: Sequence = (),
                   overlaps: Sequence[float] = SEGMENT_OVERLAPS) -> dict:
    """The temporal-action-segmentation scores of one timeline: ``edit`` and ``F1@{10,25,50}`` (segment F1 at IoU
    0.1 / 0.25 / 0.5), all in [0, 1], background excluded."""
    _same_length(pred, true)
    out = {"edit": round(edit_score(pred, true, background), 4)}
    for k in overlaps:
        tp, fp, fn = segment_counts(pred, true, k, background)
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        out[f"F1@{round(k * 100)}"] = round(2 * prec * rec / (prec + rec), 4) if prec + rec else 0.0
    return out


# ------------------------------------------------------------------------------------------------ calibration
ECE_BINS = 10


def reliability(conf: Sequence[float], correct: Sequence[bool], bins: int = ECE_BINS) -> dict:
    """Expected calibration error over ``bins`` equal-width confidence bins (Guo et al. 2017: the bins' |accuracy -
    mean confidence|, weighted by their share of answers) and the per-bin table a reliability diagram draws."""
    c = np.asarray(conf, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    _same_length(c, ok)
    if len(c) == 0:
        raise ValueError("no answers to calibrate")
    idx = np.minimum((c * bins).astype(int), bins - 1)  # confidence 1.0 falls in the last bin
    table, ece = [], 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            acc, mean_c = float(ok[m].mean()), float(c[m].mean())
            ece += m.mean() * abs(acc - mean_c)
            table.append({"bin": [b / bins, (b + 1) / bins], "n": int(m.sum()), "accuracy": round(acc, 4),
                          "confidence": round(mean_c, 4)})
    return {"ece": round(float(ece), 4), "n": int(len(c)), "mean_confidence": round(float(c.mean()), 4),
            "accuracy": round(float(ok.mean()), 4), "bins": table}


def temper(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Distributions (rows) sharpened or flattened by a temperature: softmax(log p / T)."""
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-300, None)) / float(temperature)
    logp -= logp.max(axis=-1, keepdims=True)
    e = np.exp(logp)
    return e / e.sum(axis=-1, keepdims=True)


def fit_temperature(probs: Sequence[Sequence[float]], true_idx: Sequence[int],
                    grid: Sequence[float] | None = None) -> float:
    """The temperature minimising the negative log-likelihood of the true classes (Guo et al. 2017), searched on a
    log grid 0.05..20 (401 points: deterministic, no optimiser state); argmax answers do not change with it."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(true_idx, dtype=np.int64)
    _same_length(p, y)
    if len(y) == 0:
        raise ValueError("no clips to fit a temperature on")
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 401)) if grid is None else np.asarray(grid, float)
    nll = [float(-np.log(np.clip(temper(p, t)[np.arange(len(y)), y], 1e-300, None)).mean()) for t in grid]
    return round(float(grid[int(np.argmin(nll))]), 4)


def per_class_scores(true: Sequence, pred: Sequence, labels: Sequence[int] = OPERATION_IDS) -> dict:
    """Precision, recall, F1 and support per class (by name); a class never predicted has precision 0, one never
    true is left out."""
    t, p = _ids(true), [x if x is not None else -1 for x in pred]
    _same_length(t, p)
    out = {}
    for c in labels:
        tp = sum(1 for a, b in zip(t, p) if a == c and b == c)
        n_true, n_pred = sum(1 for a in t if a == c), sum(1 for b in p if b == c)
        if n_true == 0:
            continue
        prec = tp / n_pred if n_pred else 0.0
        rec = tp / n_true
        out[ID_TO_NAME[c]] = {"precision": round(prec, 4), "recall": round(rec, 4),
                              "f1": round(2 * prec * rec / (prec + rec), 4) if prec + rec else 0.0, "support": n_true}
    return out
