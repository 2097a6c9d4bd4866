"""platform_check: torch, its CUDA build, the NVIDIA driver (a fake nvidia-smi on PATH) and what each entry point
says when they do not fit — one line naming the torch to install, never "4-bit needs CUDA"."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from openpack_vlm.platform_check import Platform, main

REPO = Path(__file__).resolve().parents[1]


def _fake_smi(tmp_path, monkeypatch, driver="535.104.05", gpu="Tesla T4", n=2):
    b = tmp_path / "bin"
    b.mkdir()
    lines = "\\n".join(f"{driver}, {gpu}" for _ in range(n))
    (b / "nvidia-smi").write_text(f"#!/bin/sh\nprintf '{lines}\\n'\n")
    (b / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{b}{os.pathsep}{os.environ['PATH']}")
    return b


@pytest.mark.parametrize("plat,needle", [
    (Platform("2.14.1+cu130", "13.0", "535.104.05", ["Tesla T4"]),
     "torch 2.14.1+cu130 is built for CUDA 13.0, which needs NVIDIA driver >= 580.65.06; this machine has 535.104.05 "
     "(Tesla T4). Install a torch built for CUDA 12.x"),
    (Platform("2.14.1+cu126", "12.6", "535.104.05", ["Tesla T4"]), None),
    (Platform("2.14.1+cu126", "12.6", "470.182.03", ["Tesla K80"]), "needs NVIDIA driver >= 525.60.13"),
    (Platform("2.14.1+cu130", "13.0", "580.95.05", ["NVIDIA A100-SXM4-40GB"]), None),
    (Platform("2.14.1+cpu", None, "550.54.15", ["Tesla T4"]), "is a CPU-only build but this machine has Tesla T4"),
    (Platform("2.5.1+cu124", "12.4", "550.54.15", ["Tesla T4"]), "torch 2.5.1+cu124 is older than 2.6"),
    (Platform("2.14.1+cu130", "13.0", None, []), None),  # no GPU: a CPU run
    (Platform(None, None, None, []), "torch is not installed"),
])
def test_problem_names_the_mismatch_and_the_fix(plat, needle):
    msg = plat.problem()
    if needle is None:
        assert msg is None
    else:
        assert needle in msg and "\n" not in msg
        assert "download.pytorch.org/whl/cu126" in msg or "requirements-torch.txt" in msg


def test_detect_reads_nvidia_smi(tmp_path, monkeypatch, capsys):
    import torch

    _fake_smi(tmp_path, monkeypatch, n=2)
    p = Platform.detect()
    assert p.driver == "535.104.05" and p.gpus == ["Tesla T4", "Tesla T4"] and p.torch == torch.__version__
    assert "NVIDIA driver 535.104.05, 2 x Tesla T4" in p.summary()
    rc = main([])
    out, err = capsys.readouterr()
    assert "2 x Tesla T4" in out
    if (torch.version.cuda or "").startswith("13."):
        assert rc == 1 and err.startswith("error: torch ") and err.count("\n") == 1


def test_no_gpu_is_a_cpu_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi at all
    p = Platform.detect()
    assert p.driver is None and p.gpus == [] and p.problem() is None
    assert main([]) == 0 and "ok: torch fits this machine (CPU run)" in capsys.readouterr().out


def _needs_cu13():
    import torch

    if not (torch.version.cuda or "").startswith("13."):
        pytest.skip("about the pinned CUDA 13 torch")


def test_4bit_on_an_old_driver_says_why(tmp_path, monkeypatch, tiny_model_dir):
    """loading (train, evaluate, serve): 4-bit asked for where torch cannot use the GPU → the driver explanation."""
    from openpack_vlm.model.loading import ModelConfig, ModelLoadError, load_model

    _needs_cu13()
    _fake_smi(tmp_path, monkeypatch)
    with pytest.raises(ModelLoadError, match=r"4-bit needs CUDA: torch .* needs NVIDIA driver >= 580.65.06; this "
                                             r"machine has 535.104.05 .*; or use --quantization none"):
        load_model(ModelConfig(model_id=str(tiny_model_dir), quantization="4bit"))


def test_train_and_serve_stop_at_start_on_an_old_driver(tmp_path, monkeypatch, capsys):
    from openpack_vlm.model import train

    _needs_cu13()
    _fake_smi(tmp_path, monkeypatch)
    assert train.main(["--data", str(tmp_path / "nodata"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: torch ") and "needs NVIDIA driver >= 580.65.06" in err and "\n" not in err
    env = {**os.environ, "MODEL_ID": "tiny", "PORT": "1"}
    res = subprocess.run([sys.executable, "serve.py"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "needs NVIDIA driver >= 580.65.06" in res.stderr and "DEVICE=cpu serves on the CPU anyway" in res.stderr
