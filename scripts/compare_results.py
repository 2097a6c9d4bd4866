"""Do two evaluations give the same metrics? (The demo's determinism check: two `make demo` runs on one machine.)

    python scripts/compare_results.py A/results.json B/results.json

Compares every metric and interval of results.json — each system's OCA, tIoU@0.5, AA@1, mean tIoU, valid-span rate
and 95 % intervals, the baselines, the keypoint baseline, the tuned fusion weight and the timeline's scores — and
ignores what legitimately differs between runs: wall times, model-call timing, peak memory, dates and paths.
Prints each differing metric; exits 0 when none differs, 1 otherwise.
"""
from __future__ import annotations

import json
import sys

# keys whose values differ between identical runs: paths, dates, wall times, memory
IGNORED = {"fitted_on", "data", "grammar", "run_contract", "eval", "run", "adapter", "config", "root", "files",
           "memory", "date", "path"}
IGNORED_SUFFIXES = ("seconds", "seconds_per_clip", "_dir", "_path", "_file")


def metrics(node, prefix: str = ""):
    """(dotted key, value) for every number or string under ``node`` whose key is not a timing, a path or a date."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k in IGNORED or k.endswith(IGNORED_SUFFIXES):
                continue
            yield from metrics(v, f"{prefix}.{k}" if prefix else k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from metrics(v, f"{prefix}[{i}]")
    else:
        yield prefix, node


def _same(x, y) -> bool:
    """Equal, with NaN equal to NaN (an interval over no valid span is NaN in both runs)."""
    return x == y or (isinstance(x, float) and isinstance(y, float) and x != x and y != y)


def compare(a: dict, b: dict) -> list[str]:
    keys = ("variants", "intervals", "baselines", "keypoint_baseline", "n_clips", "timeline")
    ma = dict(metrics({k: a.get(k) for k in keys}))
    mb = dict(metrics({k: b.get(k) for k in keys}))
    return [f"{k}: {ma.get(k)!r} != {mb.get(k)!r}" for k in sorted(set(ma) | set(mb)) if not _same(ma.get(k), mb.get(k))]


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python scripts/compare_results.py A/results.json B/results.json", file=sys.stderr)
        return 2
    try:
        a, b = (json.loads(open(p).read()) for p in args)
    except (OSError, ValueError) as e:
        print(f"error: cannot read {e}", file=sys.stderr)
        return 2
    diffs = compare(a, b)
    n = len(dict(metrics({k: a.get(k) for k in ("variants", "intervals", "baselines", "keypoint_baseline",
                                                "n_clips", "timeline")})))
    for d in diffs:
        print(d)
    print(f"{n} metrics compared: {'identical' if not diffs else f'{len(diffs)} differ'}")
    return 0 if not diffs else 1


if __name__ == "__main__":
    sys.exit(main())
