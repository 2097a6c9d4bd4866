"""The answer side of the predictor: the closed candidate sets the model's answer is scored over, and its free text.

Candidates are the exact training-target prefixes (``prompt.target_text``) cut right after each value, so their
tokens are those of the full target (BPE merges across the value boundary included): the dominant operation's 11
names, the span's start / end frames (the clip's sampled frames in the "shown" format, every frame in "clip"), the
next operation's names. ``check_raw_text`` / ``parse_raw_text`` read the model's free (greedy) answer.
"""
from __future__ import annotations

import json
import math

from pydantic import ValidationError

from ..labels import OPERATION_NAMES
from ..metrics import as_span, pred_id
from ..prompt import clip_span, target_text
from ..schema import CLIP_FRAMES, RawAnswer


class PredictError(ValueError):
    """Input the predictor cannot answer for (one-line message)."""


_DUMMY = OPERATION_NAMES[0]


def _target(dom: str, start: int, end: int, nxt: str) -> str:
    return target_text({"dominant_operation": dom, "temporal_segment": {"start_frame": start, "end_frame": end},
                        "anticipated_next_operation": nxt})


def _cut_after_value(text: str, key: str, value: str) -> str:
    """``text`` up to and including ``"key": <value>`` and the punctuation glued to it (``",`` / ``},`` / ``"}``), i.e.
    up to the next space: the BPE pre-tokenizer boundary, so a candidate's tokens are those of the full target."""
    k = text.index(f'"{key}": ')
    v = k + len(f'"{key}": ')
    if text[v] == '"':
        v += 1
    if not text.startswith(value, v):
        raise AssertionError(f"target format changed: {value!r} not found after {key!r} in {text!r}")
    j = v + len(value)
    while j < len(text) and text[j] != " ":
        j += 1
    return text[:j]


def dominant_candidates() -> list[str]:
    return [_cut_after_value(_target(n, 0, 0, _DUMMY), "dominant_operation", n) for n in OPERATION_NAMES]


def start_candidates(dom: str, values: list[int] | None = None) -> list[str]:
    """The target prefixes ending in each start frame of ``values`` (default: every clip frame 0..124)."""
    values = range(CLIP_FRAMES) if values is None else values
    return [_cut_after_value(_target(dom, s, s, _DUMMY), "start_frame", str(s)) for s in values]


def end_candidates(dom: str, start: int, values: list[int] | None = None) -> list[str]:
    """The target prefixes ending in each end frame of ``values`` (default: start..124)."""
    values = range(start, CLIP_FRAMES) if values is None else values
    return [_cut_after_value(_target(dom, start, e, _DUMMY), "end_frame", str(e)) for e in values]


def next_candidates(dom: str, start: int, end: int) -> list[str]:
    return [_cut_after_value(_target(dom, start, end, n), "anticipated_next_operation", n) for n in OPERATION_NAMES]


def softmax(logps: list[float]) -> list[float]:
    m = max(logps)
    ex = [math.exp(v - m) for v in logps]
    z = sum(ex)
    return [v / z for v in ex]


def best(logps: list[float], later: bool = True) -> int:
    """Index of the highest log-prob; ties → the later candidate (``later``; end frames) or the earlier one (start
    frames): either way the longer span."""
    return max(range(len(logps)), key=lambda i: (logps[i], i if later else -i))


def check_raw_text(text: str) -> str | None:
    """None when the free answer is a valid target (``schema.RawAnswer``: JSON, the 3 keys, OpenPack names, a valid
    span), else why not, in one line."""
    s = text.strip()
    if s.startswith("```"):  # a fenced answer is still a repair
        return "wrapped in a code fence"
    try:
        RawAnswer.model_validate_json(s, strict=True)  # strict all the way down: "5" or true is no frame
    except ValidationError as e:
        return _why(e, s)
    return None


def _why(err: ValidationError, text: str) -> str:
    """The first validation error of a raw answer, said as the model's mistake."""
    first = err.errors()[0]
    kind, loc = first["type"], first["loc"]
    if kind == "json_invalid":
        return f"invalid JSON ({first.get('ctx', {}).get('error', first['msg'])})"
    if not loc:
        return "JSON is not an object"
    key = loc[0]
    if kind == "missing" and len(loc) == 1:
        return f"missing key {key}"
    if key == "temporal_segment":
        seg = json.loads(text).get("temporal_segment")
        if not isinstance(seg, dict) or set(seg) != {"start_frame", "end_frame"}:
            return "temporal_segment is not {start_frame, end_frame}"
        return f"invalid span {seg['start_frame']!r}..{seg['end_frame']!r}"
    return f"unknown operation name {str(first.get('input'))[:40]!r} in {key}"


def parse_raw_text(text: str, frame_indices: list[int] | None = None) -> dict:
    """What the free answer says, read leniently (surrounding text/code fences ignored, aliases accepted):
    {"op": id|None, "span": (start, end)|None, "next": id|None}; a part that is missing or invalid is None.
    Scores the model as if its free text were trusted (evaluation's *_free_text systems). ``frame_indices``: the
    clip's sampled frames when the answer is in the "shown" format; its span is then turned into clip frames
    (``prompt.clip_span``), as the scored answer's is."""
    s = text.strip()
    d = None
    for cand in (s, s[s.find("{"): s.rfind("}") + 1]):
        try:
            d = json.loads(cand)
            break
        except (json.JSONDecodeError, ValueError):
            continue
    if not isinstance(d, dict):
        return {"op": None, "span": None, "next": None}
    span = as_span(d.get("temporal_segment"))
    if span is not None and frame_indices is not None:
        span = clip_span(span[0], span[1], frame_indices)
    return {"op": pred_id(d.get("dominant_operation")), "span": span,
            "next": pred_id(d.get("anticipated_next_operation"))}
