"""OpenPack -> boundary clips -> motion-adaptive frames -> WebDataset shards + chat pairs + the run contract.

    python data_pipeline.py --download openpack --out D     # fetch OpenPack's keypoint CSVs from Zenodo, then build
    python data_pipeline.py --root R --out D [--source auto|rgb|pose] [--workers N] [--shard_mb 256] [--k 8]
                            [--seed 0] [--splits train=U0101-U0106 val=U0107 test=U0108]
                            [--samples_out training_data_samples --n_samples 20] [--export_llava X]

Every flag is a field of ``openpack_vlm.data.pipeline.PipelineConfig`` (``--help`` lists them with their defaults;
``--max-clips-per-session`` and ``--max_clips_per_session`` are the same flag). Writes D/{train,val,test}/shard-%06d.tar,
D/{split}/manifest.jsonl, D/{split}/pairs.jsonl, D/summary.json, D/grammar.json and D/run.json (the run contract that
training, evaluation and serving carry on); with --export_llava X also the pairs for 2U1/Qwen2-VL-Finetune and
LLaMA-Factory (``python -m openpack_vlm.data.export``). A rerun with the same settings resumes: finished shards are kept.
"""
from __future__ import annotations

import logging
import sys

from openpack_vlm.cli import build_parser, parse
from openpack_vlm.data.pipeline import PipelineConfig, PipelineError, run
from openpack_vlm.io_utils import one_line


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(PipelineConfig, prog="data_pipeline.py", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        cfg, _ = parse(parser, argv)
        summary = run(cfg)
    except (PipelineError, OSError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a bug, not bad input: one line here, the traceback with --debug
        if debug:
            raise
        print(f"error: unexpected {type(e).__name__}: {one_line(e)} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1
    for split, c in summary["splits"].items():
        print(f"{split}: {c['clips']} clips in {c['shards']} shards from {c['sessions']} sessions "
              f"-> {cfg.out}/{split}/")
    print(f"skipped: {len(summary['skipped'])} ({summary['skipped_by_reason'] or 'none'})")
    print(f"wrote {cfg.out}/summary.json, run.json" + (", grammar.json" if summary["grammar"] else ""))
    if cfg.samples_out:
        print(f"wrote {cfg.n_samples} samples to {cfg.samples_out}/")
    if cfg.export_llava:
        print(f"wrote the pairs for 2U1 ({cfg.export_llava}/{{split}}.llava.json) and LLaMA-Factory "
              f"({cfg.export_llava}/dataset_info.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
