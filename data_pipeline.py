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

import sys

from openpack_vlm.data.pipeline import main  # the CLI lives in the package (also the `openpack-data` command)

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
