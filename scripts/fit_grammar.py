"""Fit the procedural grammar on the two real OpenPack sessions shipped with the repo and measure it held-out.

    python scripts/fit_grammar.py [--samples tests/data/openpack] [--alpha 1.0] [--max-order 2] [--out grammar.json]

Sessions (real OpenPack annotation files, CC BY-NC-SA 4.0):
  U0209/S0500  v1.0.0 interval file  {samples}/v1.0.0/U0209/annotation/openpack-operations/S0500.csv (via openpack.load_timeline)
  U0102/S0500  v0.3.0 1 Hz file      {samples}/v0.3.0/U0102/annotation/activity-1s/S0500.csv (run-length of `operation`)
Prints each session's transition table, then next-operation accuracy fitted on one session and tested on the other
(both ways) for orders 1..max-order, and the held-out mean log-likelihood for a few smoothing values alpha; with --out
writes the grammar fitted on both sessions (order 1).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
from openpack_vlm.grammar import Grammar, GrammarError, op_sequence

DEFAULT_SAMPLES = REPO / "tests" / "data" / "openpack"
FALLBACK_SAMPLES = Path("/work/shared/openpack-samples")
V030_FILE = Path("v0.3.0/U0102/annotation/activity-1s/S0500.csv")


def default_samples() -> Path:
    return DEFAULT_SAMPLES if (DEFAULT_SAMPLES / V030_FILE).is_file() else FALLBACK_SAMPLES


def load_u0209(samples: Path) -> list[int]:
    """Op-id sequence of U0209/S0500 from the v1.0.0 interval annotation (Null gaps dropped, repeats merged)."""
    from openpack_vlm.data.openpack import load_timeline

    return op_sequence(seg.op_id for seg in load_timeline(samples / "v1.0.0", "U0209", "S0500"))


def load_u0102(samples: Path) -> list[int]:
    """Op-id sequence of U0102/S0500 from the v0.3.0 1 Hz activity file (run-length of its `operation` column)."""
    from openpack_vlm.data.openpack import load_timeline

    path = samples / V030_FILE
    if not path.is_file():
        raise GrammarError(f"v0.3.0 activity file not found: {path}")
    return op_sequence(seg.op_id for seg in load_timeline(samples / "v0.3.0", "U0102", "S0500"))


ALPHAS = (0.1, 0.3, 1.0, 3.0)  # smoothing values compared by held-out log-likelihood


def held_out_table(seqs: dict[str, list[int]], alpha: float, max_order: int) -> list[dict]:
    """Fit on each session, test on every other one, for orders 1..max_order."""
    rows = []
    for order in range(1, max_order + 1):
        for train_name, train in seqs.items():
            g = Grammar.fit([train], alpha=alpha, order=order)
            for test_name, test in seqs.items():
                if test_name == train_name:
                    continue
                acc, n = g.accuracy([test])
                ll, _ = g.log_likelihood([test])
                rows.append({"order": order, "alpha": alpha, "fit": train_name, "test": test_name, "accuracy": acc,
                             "loglik": ll, "n": n})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=Path, default=None, help="folder with v1.0.0/ and v0.3.0/ real sample files")
    ap.add_argument("--alpha", type=float, default=1.0, help="add-alpha pseudo-counts per candidate next op")
    ap.add_argument("--max-order", type=int, default=2, help="highest Markov order to measure")
    ap.add_argument("--out", type=Path, default=None, help="write the order-1 grammar fitted on both sessions here")
    args = ap.parse_args(argv)
    samples = args.samples or default_samples()
    try:
        seqs = {"U0209/S0500": load_u0209(samples), "U0102/S0500": load_u0102(samples)}
        for name, seq in seqs.items():
            g = Grammar.fit([seq], alpha=args.alpha)
            print(f"== {name}: {len(seq)} operations, {len(seq) - 1} transitions (alpha={args.alpha})")
            print(g.format_table())
        print("== held-out next-operation accuracy (fit on one session, test on the other)")
        for r in held_out_table(seqs, args.alpha, args.max_order):
            print(f"order {r['order']}  fit {r['fit']}  test {r['test']}  accuracy {r['accuracy']:.3f}  "
                  f"mean log-lik {r['loglik']:.3f}  (n={r['n']})")
        print("== smoothing: held-out mean log-likelihood per alpha (order 1; higher is better)")
        for alpha in ALPHAS:
            rows = held_out_table(seqs, alpha, 1)
            cells = "  ".join(f"fit {r['fit']}: {r['loglik']:.3f}" for r in rows)
            print(f"alpha {alpha:<4}  {cells}")
        if args.out:
            both = Grammar.fit(list(seqs.values()), alpha=args.alpha)
            both.meta["fitted_on"] = list(seqs)
            print(f"wrote {both.save(args.out)}")
    except Exception as e:  # one line at the CLI, never a traceback
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
