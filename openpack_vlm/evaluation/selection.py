"""Which clips an evaluation reads: a split's manifest rows sorted by clip_id (the first N), streamed from its shards
in batches, their truth as ids, and the train split's majority classes (the majority baseline)."""
from __future__ import annotations

import json
from pathlib import Path

from ..labels import to_id
from ..metrics import majority_class


class EvalError(RuntimeError):
    """Evaluation cannot run as asked (one-line message)."""


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise EvalError(f"{path}: line {n} is not JSON ({e.msg})") from None
    return rows


def select_clips(data: Path, split: str, n: int | None) -> list[dict]:
    """Manifest rows of a split sorted by clip_id; the first ``n`` (all when n is None)."""
    path = data / split / "manifest.jsonl"
    if not path.is_file():
        raise EvalError(f"no manifest for split {split!r}: {path} (run data_pipeline.py --out {data})")
    rows = sorted(_read_jsonl(path), key=lambda r: r["clip_id"])
    if not rows:
        raise EvalError(f"split {split!r} has no clips ({path} is empty)")
    return rows if n is None else rows[:n]


def iter_clips(data: Path, split: str, rows: list[dict]):
    """Stream (record, PIL frames) of the chosen clips in shard order; only one clip's frames in memory at a time.
    Raises EvalError at the end if a manifest clip was not found in the shards."""
    from ..data.shards import iter_samples, shard_paths  # deferred: would load PIL on import

    want = {r["clip_id"] for r in rows}
    try:
        paths = shard_paths(data / split)
    except FileNotFoundError as e:
        raise EvalError(str(e)) from None
    seen: set[str] = set()
    for rec, frames in iter_samples(paths):
        if rec.clip_id in want and rec.clip_id not in seen:
            seen.add(rec.clip_id)
            yield rec, frames
            if len(seen) == len(want):
                return
    missing = sorted(want - seen)
    raise EvalError(f"{len(missing)} manifest clips not found in {data / split} shards, e.g. {missing[0]}")


def load_clips(data: Path, split: str, rows: list[dict]):
    """(record, PIL frames) for the chosen clips, in the order of ``rows`` (all held in memory: small selections)."""
    got = {rec.clip_id: (rec, frames) for rec, frames in iter_clips(data, split, rows)}
    return [got[r["clip_id"]] for r in rows]


def batches(items, n: int):
    """Consecutive lists of ``n`` items (the last one shorter) from any iterable, consumed lazily."""
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def truth_ids(rec) -> dict:
    t = rec.truth
    seg = t["temporal_segment"]
    return {"op": to_id(t["dominant_operation"]), "span": (int(seg["start_frame"]), int(seg["end_frame"])),
            "next": to_id(t["anticipated_next_operation"])}


def train_majority(data: Path) -> tuple[int, int, str]:
    """Majority dominant op and majority next op of the train split (ties → lower id)."""
    path = data / "train" / "manifest.jsonl"
    if not path.is_file():
        raise EvalError(f"majority baseline needs the train manifest: {path} not found")
    rows = _read_jsonl(path)
    if not rows:
        raise EvalError(f"train manifest {path} is empty")
    return (majority_class([r["truth"]["dominant_operation"] for r in rows]),
            majority_class([r["truth"]["anticipated_next_operation"] for r in rows]), str(path))
