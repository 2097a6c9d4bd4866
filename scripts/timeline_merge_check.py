"""How much the merge rule's HMM adds to the per-second votes, on synthetic session videos with a known timeline,
the windows answered by the oracle that reads each frame's operation (tests/oracle.py) — so only the windowing and
the merge are measured, not a model.

    python scripts/timeline_merge_check.py [--seconds 300] [--seeds 0 1 2] [--out docs/figures/timeline_merge.json]

For each seed: votes alone vs HMM without a grammar vs HMM with the grammar fitted on another synthetic session
(seed 100); 1 Hz accuracy, macro-F1 over the present classes (openpack-toolkit's metric), and the segment metrics
edit and F1@{10,25,50} (Null as background), which see over- and under-segmentation. Prints a table.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from oracle import OraclePredictor  # noqa: E402

KEYS = ("accuracy_1hz", "macro_f1_present_classes", "edit", "F1@10", "F1@25", "F1@50")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--stride", type=float, default=2.5)
    ap.add_argument("--out", default="docs/figures/timeline_merge.json")
    args = ap.parse_args(argv)
    from openpack_vlm.testing.synthetic import write_session_video
    from openpack_vlm.grammar import Grammar, op_sequence
    from openpack_vlm.io_utils import write_json
    from openpack_vlm.labels import NAME_TO_ID
    from openpack_vlm.timeline import TimelineConfig, analyse_video

    work = Path(tempfile.mkdtemp(prefix="merge_check_"))
    other = write_session_video(work / "grammar_src.mp4", 600, seed=100, size=(64, 36))
    grammar = Grammar.fit([op_sequence([NAME_TO_ID[s["operation"]] for s in other["segments"]])])
    rows = []
    for seed in args.seeds:
        truth = write_session_video(work / f"s{seed}.mp4", args.seconds, seed=seed)
        for name, hmm, g in (("votes", "off", None), ("hmm", "on", None), ("hmm+grammar", "on", grammar)):
            oracle = OraclePredictor()
            oracle.grammar = g
            res = analyse_video(oracle, work / f"s{seed}.mp4", TimelineConfig(stride=args.stride, hmm=hmm),
                                truth=truth["segments"])
            m = res["metrics"]
            rows.append({"seed": seed, "merge": name, "segments": len(res["segments"]),
                         "true_segments": len(truth["segments"]), **{k: m[k] for k in KEYS}})
            print(f"seed {seed} {name:<12} " + "  ".join(f"{k} {m[k]:.4f}" for k in KEYS)
                  + f"  segments {len(res['segments'])} (truth {len(truth['segments'])})", flush=True)
    summary = {}
    for name in ("votes", "hmm", "hmm+grammar"):
        sel = [r for r in rows if r["merge"] == name]
        summary[name] = {k: round(sum(r[k] for r in sel) / len(sel), 4) for k in (*KEYS, "segments")}
    print("mean:", summary)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    write_json(args.out, {"rows": rows, "mean": summary, "seconds": args.seconds, "stride_s": args.stride,
                          "commit": git, "command": "python scripts/timeline_merge_check.py " + " ".join(argv or sys.argv[1:]),
                          "predictor": "oracle reading the synthetic video's colour panel (tests/oracle.py)"})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
