"""Smoke shards: a few clips in the pipeline's shard format whose frames say their operation by grey level, enough
for a few training steps of the GPU checks and the DDP test (scripts/gpu_smoke.py, gpu_vram_check.py,
tests/test_ddp.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..data.shards import ClipRecord, ShardWriter, encode_jpeg
from ..labels import OPERATION_IDS, OPERATION_NAMES


def write_smoke_shards(data_dir: Path, n: int = 16) -> Path:
    """n clips of 8 frames, four operations; the frames before frame 100 are brighter (the span's change)."""
    rng = np.random.default_rng(0)
    with ShardWriter(data_dir / "train") as w:
        for i in range(n):
            a, b = OPERATION_NAMES[i % 4], OPERATION_NAMES[i % 4 + 1]
            idx = sorted(rng.choice(125, 8, replace=False).tolist())
            truth = {"dominant_operation": a, "temporal_segment": {"start_frame": 0, "end_frame": 99},
                     "anticipated_next_operation": b}
            rec = ClipRecord(clip_id=f"smoke_{i:03d}", user="U0101", session="S0100", t0_ms=5000 * i, source="rgb",
                             frame_indices=idx, truth=truth, split="train",
                             frame_ops=[OPERATION_IDS[i % 4 + (k > 99)] for k in idx])
            jpegs = [encode_jpeg(Image.fromarray(np.full((336, 336, 3), 20 * (i % 4) + (k < 100) * 100, np.uint8)))
                     for k in idx]
            w.write(rec, jpegs)
    return data_dir
