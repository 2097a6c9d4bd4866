"""The multi-GPU path (Kaggle 2xT4) run as 2 processes on CPU: torchrun + gloo, the same train.py code. Checks that
both ranks train, the stream is split between them, and only rank 0 writes the run's files."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path, repo_root):
    from openpack_vlm.testing.smoke import write_smoke_shards

    data = write_smoke_shards(tmp_path / "data", n=16)
    out = tmp_path / "run"
    # gloo on the loopback interface only (it would otherwise resolve the host name to whatever interface that gives;
    # this machine allows loopback traffic only); --standalone lets torchrun pick its own free rendezvous port
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", GLOO_SOCKET_IFNAME="lo")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "openpack_vlm.model.train", "--data", str(data), "--out", str(out),
           "--model", "tiny", "--quantization", "none", "--max-steps", "3", "--save-steps", "3", "--num-workers", "0",
           "--report-to", "none"]
    proc = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, "\n".join(l for l in proc.stderr.splitlines() if "Warning" not in l and "warnings.warn" not in l)[-4000:]
    assert proc.stdout.count("wrote ") == 1  # rank 0 reports once
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["world_size"] == 2
    summ = json.loads((out / "train_summary.json").read_text())
    assert summ["global_step"] == 3
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "checkpoint-3").is_dir()
