"""Per-class statistics of one annotated OpenPack session: what a 5-s clip can and cannot show.

    python scripts/class_stats.py [--root tests/data/openpack] [--user U0209] [--session S0500]
                                  [--stride-ms 200] [--json docs/figures/class_stats_U0209_S0500.json]

Default input: the real U0209/S0500 annotation shipped in tests/data/openpack (v1.0.0 interval file, 193 operations).
The timeline is read with openpack_vlm.data.openpack.load_timeline (gaps -> Null 8100, adjacent equal operations merged),
exactly as the data pipeline reads it. Prints three tables:

1. per class: segments, total time, share of annotated time, duration mean / median / min / max (s), share of
   segments shorter than a 5-s clip (5 s) and shorter than half a clip (2.5 s: can cover at most 62 of 125 frames);
2. per class: how often it is the dominant operation (clips.clip_truth rules) of a 5-s window slid over the whole
   session every --stride-ms, next to its share of time; and, over the pipeline's boundary clips (clips.make_clips
   with its defaults), in how many it appears and in how many of those it is dominant - a class that appears in
   clips but is seldom dominant is mostly seen as the neighbour of the answer;
3. operation transitions (Null skipped, repeats merged, as grammar.op_sequence counts them): each class's successors
   with counts, and the share of the most frequent successor (how far "next operation" is predictable from the
   current one alone); the last line is the next-operation accuracy of always naming the commonest successor of the
   TRUE current operation (an upper bound for a grammar-only AA@1 on this session, fitted on itself).
--json writes the same numbers as JSON (temp file + rename).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from openpack_vlm.data import openpack
from openpack_vlm.io_utils import write_atomic
from openpack_vlm.data.clips import CLIP_MS, ClipConfig, ClipError, clip_truth, make_clips
from openpack_vlm.grammar import op_sequence
from openpack_vlm.labels import ID_TO_NAME, NAME_TO_ID, NULL_ID, OPERATION_IDS

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO / "tests" / "data" / "openpack"  # real OpenPack files (see its README / PROVENANCE.tsv)
HALF_CLIP_MS = CLIP_MS // 2  # an operation shorter than this covers at most 62 of a clip's 125 frames


def duration_table(timeline) -> list[dict]:
    """One row per class present in the timeline: count, time share, duration statistics in seconds."""
    total_ms = sum(s.duration_ms for s in timeline)
    rows = []
    for op in OPERATION_IDS:
        d = np.array([s.duration_ms for s in timeline if s.op_id == op], dtype=np.float64) / 1000.0
        if not len(d):
            continue
        rows.append({
            "id": op, "name": ID_TO_NAME[op], "segments": int(len(d)), "total_s": round(float(d.sum()), 1),
            "time_share": round(float(d.sum() * 1000.0 / total_ms), 4),
            "mean_s": round(float(d.mean()), 2), "median_s": round(float(np.median(d)), 2),
            "min_s": round(float(d.min()), 2), "max_s": round(float(d.max()), 2),
            "share_lt_5s": round(float(np.mean(d < CLIP_MS / 1000.0)), 3),
            "share_lt_2.5s": round(float(np.mean(d < HALF_CLIP_MS / 1000.0)), 3),
        })
    return rows


def dominance_table(timeline, stride_ms: int) -> tuple[list[dict], int]:
    """How often each class is the dominant operation of a 5-s window slid every ``stride_ms`` over the session.
    Windows whose truth is undefined (no operation follows the dominant one: end of the session) are not counted."""
    if stride_ms <= 0:
        raise ValueError(f"--stride-ms must be positive, got {stride_ms}")
    t0s = range(int(timeline[0].start_ms), int(timeline[-1].end_ms) - CLIP_MS + 1, stride_ms)
    dom: Counter = Counter()
    for t0 in t0s:
        try:
            dom[NAME_TO_ID[clip_truth(timeline, t0).dominant_operation]] += 1
        except ClipError:
            continue
    n = sum(dom.values())
    total_ms = sum(s.duration_ms for s in timeline)
    rows = []
    for op in OPERATION_IDS:
        t = sum(s.duration_ms for s in timeline if s.op_id == op)
        if not t:
            continue
        rows.append({"id": op, "name": ID_TO_NAME[op], "time_share": round(t / total_ms, 4),
                     "dominant_windows": int(dom[op]), "dominant_share": round(dom[op] / n, 4) if n else 0.0})
    return rows, n


def boundary_clip_table(timeline, user: str, session: str) -> tuple[list[dict], int]:
    """Per class, over the pipeline's boundary clips: clips it appears in, clips it dominates."""
    specs = [c for c in make_clips(timeline, user, session, ClipConfig()) if c.kind == "boundary"]
    present: Counter = Counter()
    dom: Counter = Counter()
    for c in specs:
        present.update(set(c.labels))
        dom[NAME_TO_ID[c.truth.dominant_operation]] += 1
    rows = [{"id": op, "name": ID_TO_NAME[op], "clips_present": int(present[op]), "clips_dominant": int(dom[op]),
             "dominant_when_present": round(dom[op] / present[op], 3) if present[op] else None}
            for op in OPERATION_IDS if present[op]]
    return rows, len(specs)


def transition_table(timeline) -> list[dict]:
    """Successors of each class in the operation sequence (Null skipped, repeats merged)."""
    seq = op_sequence(s.op_id for s in timeline)
    pairs = Counter(zip(seq, seq[1:]))
    rows = []
    for op in OPERATION_IDS:
        succ = {b: c for (a, b), c in pairs.items() if a == op}
        if not succ:
            continue
        total = sum(succ.values())
        ordered = sorted(succ.items(), key=lambda kv: (-kv[1], kv[0]))
        rows.append({"id": op, "name": ID_TO_NAME[op], "transitions": total,
                     "successors": [{"name": ID_TO_NAME[b], "count": c} for b, c in ordered],
                     "top_share": round(ordered[0][1] / total, 3)})
    return rows


def render(stats: dict) -> str:
    lines = [f"{stats['user']}/{stats['session']} ({stats['source']}): {stats['segments']} segments after merging, "
             f"{stats['annotated_s']:.0f} s annotated, {stats['operation_sequence_length']} operations in the sequence "
             f"(Null skipped)", "",
             f"{'class':24} {'segs':>4} {'total s':>7} {'time':>6} {'mean s':>6} {'median':>6} {'min':>5} {'max':>6}"
             f" {'<5s':>5} {'<2.5s':>5}"]
    for r in stats["durations"]:
        lines.append(f"{r['name'][:24]:24} {r['segments']:4d} {r['total_s']:7.1f} {r['time_share']:6.1%} "
                     f"{r['mean_s']:6.1f} {r['median_s']:6.1f} {r['min_s']:5.1f} {r['max_s']:6.1f} "
                     f"{r['share_lt_5s']:5.0%} {r['share_lt_2.5s']:5.0%}")
    lines += ["", f"dominant operation: of a 5-s window slid every {stats['stride_ms']} ms ({stats['windows']} windows);"
              f" of the pipeline's {stats['boundary_clips']} boundary clips",
              f"{'class':24} {'time':>6} {'windows':>8} {'in clips':>8} {'dominant':>8} {'dom|in':>6}"]
    bc = {r["id"]: r for r in stats["boundary_clip_dominance"]}
    for r in stats["dominance"]:
        b = bc.get(r["id"], {"clips_present": 0, "clips_dominant": 0, "dominant_when_present": None})
        dwp = "-" if b["dominant_when_present"] is None else f"{b['dominant_when_present']:.0%}"
        lines.append(f"{r['name'][:24]:24} {r['time_share']:6.1%} {r['dominant_share']:8.1%} {b['clips_present']:8d}"
                     f" {b['clips_dominant']:8d} {dwp:>6}")
    lines += ["", "transitions (Null skipped, repeats merged): successors (count); top = share of the commonest"]
    for r in stats["transitions"]:
        succ = ", ".join(f"{s['name']} ({s['count']})" for s in r["successors"])
        lines.append(f"{r['name'][:24]:24} top {r['top_share']:4.0%} -> {succ}")
    o = stats["oracle_next"]
    lines.append(f"commonest successor of the true operation is the next one in {o['hits']}/{o['transitions']} "
                 f"transitions ({'n/a' if o['accuracy'] is None else format(o['accuracy'], '.1%')})")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=str(DEFAULT_ROOT), help="OpenPack root (default: the real samples in tests/data)")
    ap.add_argument("--user", default="U0209")
    ap.add_argument("--session", default="S0500")
    ap.add_argument("--stride-ms", type=int, default=200, help="step of the sliding 5-s window (ms)")
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)
    try:
        root = openpack.resolve_root(args.root)
        timeline = openpack.load_timeline(root, args.user, args.session)
        dominance, windows = dominance_table(timeline, args.stride_ms)
        boundary, n_boundary = boundary_clip_table(timeline, args.user, args.session)
        source = openpack.timeline_source(root, args.user, args.session)
    except (openpack.OpenPackError, ClipError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        source_name = str(source.relative_to(REPO))
    except ValueError:
        source_name = str(source)
    stats = {
        "user": args.user, "session": args.session, "source": source_name,
        "synthetic_root": (root / "synthetic_config.json").is_file(),
        "segments": len(timeline), "annotated_s": round((timeline[-1].end_ms - timeline[0].start_ms) / 1000.0, 1),
        "operation_sequence_length": len(op_sequence(s.op_id for s in timeline)),
        "null_id": NULL_ID, "stride_ms": args.stride_ms, "windows": windows,
        "durations": duration_table(timeline), "dominance": dominance,
        "boundary_clips": n_boundary, "boundary_clip_dominance": boundary, "transitions": transition_table(timeline),
    }
    hits = sum(r["successors"][0]["count"] for r in stats["transitions"])
    n = sum(r["transitions"] for r in stats["transitions"])
    stats["oracle_next"] = {"hits": hits, "transitions": n, "accuracy": round(hits / n, 4) if n else None}
    print(render(stats))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, json.dumps(stats, indent=1) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
