"""OpenPack -> boundary clips -> motion-adaptive frames -> WebDataset shards + chat pairs.

    python data_pipeline.py --root R --out D [--source auto|rgb|pose] [--workers N] [--shard-mb 256] [--k 8]
                            [--seed 0] [--splits train=U0101-U0106 val=U0107 test=U0108]
                            [--samples-out training_data_samples --n-samples 20]

Writes D/{train,val,test}/shard-%06d.tar, D/{split}/manifest.jsonl, D/{split}/pairs.jsonl, D/summary.json and
D/grammar.json (see openpack_vlm/pipeline.py). A rerun with the same settings resumes: finished shards are kept.
"""
from __future__ import annotations

import argparse
import logging
import sys

from openpack_vlm.frames import one_line
from openpack_vlm.pipeline import PipelineConfig, PipelineError, parse_splits, run


def build_parser() -> argparse.ArgumentParser:
    d = PipelineConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default=None, help="OpenPack root (default: $OPENPACK_ROOT)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--source", default=d.source, choices=["auto", "rgb", "pose"],
                   help="frames from RGB (frames or video) or rendered 2D keypoints; auto = rgb where present")
    p.add_argument("--workers", type=int, default=d.workers, help="sessions processed in parallel")
    p.add_argument("--shard-mb", type=int, default=d.shard_mb, help="shard size target in MB")
    p.add_argument("--k", type=int, default=d.k, help="sampled frames per clip")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--splits", nargs="+", default=None, metavar="NAME=USERS",
                   help="e.g. train=U0101-U0106 val=U0107 test=U0108 (default)")
    p.add_argument("--sessions", nargs="+", default=None, help="only these sessions, e.g. S0100 S0500")
    p.add_argument("--within-share", type=float, default=d.within_share, help="share of within-operation clips")
    p.add_argument("--max-clips-per-session", type=int, default=None, help="cap for quick runs (default: all)")
    p.add_argument("--jpeg-quality", type=int, default=d.jpeg_quality)
    p.add_argument("--samples-out", default=None, help="also export --n-samples examples (frames + pair JSON) here")
    p.add_argument("--n-samples", type=int, default=d.n_samples)
    p.add_argument("--overwrite", action="store_true", help="replace data in --out made with other settings")
    p.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        if not 0 <= args.within_share < 1:
            raise PipelineError(f"--within-share must be in [0, 1), got {args.within_share}")
        if not 1 <= args.jpeg_quality <= 100:
            raise PipelineError(f"--jpeg-quality must be in 1..100, got {args.jpeg_quality}")
        cfg = PipelineConfig(
            root=args.root, out=args.out, source=args.source, workers=args.workers, shard_mb=args.shard_mb,
            k=args.k, seed=args.seed, sessions=args.sessions, within_share=args.within_share,
            max_clips_per_session=args.max_clips_per_session, jpeg_quality=args.jpeg_quality,
            samples_out=args.samples_out, n_samples=args.n_samples, overwrite=args.overwrite,
        )
        if args.splits:
            cfg.splits = parse_splits(args.splits)
        summary = run(cfg)
    except (PipelineError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a bug, not bad input: one line here, the traceback with --debug
        if args.debug:
            raise
        print(f"error: unexpected {type(e).__name__}: {one_line(e)} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1
    for split, c in summary["splits"].items():
        print(f"{split}: {c['clips']} clips in {c['shards']} shards from {c['sessions']} sessions "
              f"-> {args.out}/{split}/")
    print(f"skipped: {len(summary['skipped'])} ({summary['skipped_by_reason'] or 'none'})")
    print(f"wrote {args.out}/summary.json" + (", grammar.json" if summary["grammar"] else ""))
    if args.samples_out:
        print(f"wrote {args.n_samples} samples to {args.samples_out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
