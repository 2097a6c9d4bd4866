"""The multi-GPU path (Kaggle 2xT4) run as 2 processes on CPU: torchrun + gloo, the same train.py code. Checks that
both ranks train, the stream is split between them, and only rank 0 writes the run's files."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path, repo_root):
    sys.path.insert(0, str(repo_root / "scripts"))
    from gpu_smoke import write_smoke_shards

    data = write_smoke_shards(tmp_path / "data", n=16)
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "openpack_vlm.train", "--data", str(data), "--out", str(out),
           "--model", "tiny", "--quantization", "none", "--max-steps", "3", "--save-steps", "3", "--num-workers", "0",
           "--report-to", "none"]
    proc = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1  # rank 0 reports once
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["world_size"] == 2
    summ = json.loads((out / "train_summary.json").read_text())
    assert summ["global_step"] == 3
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "checkpoint-3").is_dir()
