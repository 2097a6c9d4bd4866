"""The synthetic pose beside the REAL OpenPack keypoints: one table, statistic by statistic, with its tolerance.

    python scripts/pose_calibration.py [--root SYNTHETIC_ROOT] [--markdown]

Real: tests/data/openpack-keypoints (U0102/S0100, 100 frames at 15 Hz). Synthetic: every user/session of ``--root``
(default: a fresh root written by openpack_vlm.testing.synthetic with its defaults, keypoints only), the median of the
per-session statistics. Statistics, tolerances and the rule are openpack_vlm.testing.synthetic's ``pose_stats`` and
``CALIBRATION``; tests/test_synthetic.py runs the same comparison. Exit 1 when a statistic is out of tolerance.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REAL = REPO / "tests" / "data" / "openpack-keypoints" / "U0102-S0100-mmpose-100frames.json"


def compare(root: Path | None = None) -> list[dict]:
    from openpack_vlm.data import openpack
    from openpack_vlm.testing.synthetic import SyntheticConfig, write_synthetic_root
    from openpack_vlm.testing.worker import calibration_table, pose_stats

    real = pose_stats(*openpack.keypoints_from_json(REAL))
    with tempfile.TemporaryDirectory() as tmp:
        if root is None:
            root = write_synthetic_root(Path(tmp) / "root", SyntheticConfig(rgb=False))
        stats = [pose_stats(*openpack.load_keypoints(root, u, s))
                 for u in openpack.list_users(root) for s in openpack.list_sessions(root, u)]
    synthetic = {k: float(np.median([st[k] for st in stats])) for k in real}
    return calibration_table(real, synthetic)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=None, help="synthetic OpenPack root (default: a fresh one)")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table (ARCHITECTURE.md's)")
    args = ap.parse_args(argv)
    rows = compare(Path(args.root) if args.root else None)
    if args.markdown:
        print("| statistic | real | synthetic | tolerance | within |\n| --- | --- | --- | --- | --- |")
        for r in rows:
            print(f"| {r['stat']} | {r['real']:.3g} | {r['synthetic']:.3g} | {r['tolerance']} | "
                  f"{'yes' if r['ok'] else 'NO'} |")
    else:
        for r in rows:
            print(f"{r['stat']:<22}{r['real']:>10.3f}{r['synthetic']:>11.3f}{r['tolerance']:>9}  "
                  f"{'ok' if r['ok'] else 'OUT'}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
