"""finetune.ipynb runs end to end with papermill on the tiny model and the synthetic pipeline output (CPU), into a
temp notebook; the committed notebook stays untouched and output-free."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "finetune.ipynb"


def test_committed_notebook_shape():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "markdown"
    assert "https://kaggle.com/kernels/welcome?src=https://github.com/<OWNER>/openpack-vlm/blob/main/finetune.ipynb" \
        in first.source and "Open in Kaggle" in first.source
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and params[0] is nb.cells[1]
    for name in ("MODEL_ID", "DATA_DIR", "OUT_DIR", "QUANTIZATION", "MAX_STEPS"):
        assert f"\n{name} = " in "\n" + params[0].source
    src = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "# VRAM MATH" in src and "openpack_vlm.model.train" in src
    assert "Trainer(" not in src and "get_peft_model" not in src  # no training logic in the notebook
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"


@pytest.mark.slow
def test_notebook_runs_on_tiny_model(synthetic_root, tmp_path, monkeypatch):
    """DATA_DIR without shards and no OPENPACK_ROOT: the data cell downloads OpenPack's keypoint CSVs from "Zenodo"
    (a stand-in on loopback serving the synthetic root's CSVs in the record's zip layout) and builds the shards."""
    import papermill as pm
    from zenodo import PREPROCESSED, FakeZenodo, preprocessed_zip

    before = hashlib.sha256(NOTEBOOK.read_bytes()).hexdigest()
    monkeypatch.setenv("OPENPACK_VLM_CACHE", str(tmp_path / "cache"))  # "tiny" is built here by the kernel
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out_nb = tmp_path / "finetune.out.ipynb"
    run = tmp_path / "run"
    with FakeZenodo({f"{PREPROCESSED}.zip": preprocessed_zip(synthetic_root)}) as zenodo:
        monkeypatch.setenv("OPENPACK_ZENODO_URL", zenodo.url)  # the kernel inherits it
        pm.execute_notebook(
            str(NOTEBOOK), str(out_nb), kernel_name="python3", progress_bar=False, cwd=str(tmp_path),
            parameters=dict(MODEL_ID="tiny", QUANTIZATION="none", DATA_DIR=str(tmp_path / "attached"),
                            OPENPACK_ROOT="", OPENPACK_DOWNLOAD=str(tmp_path / "openpack"), OUT_DIR=str(run),
                            MAX_STEPS=4, SAVE_STEPS=2, LOGGING_STEPS=1, GRAD_ACCUM=1, NUM_WORKERS=2,
                            REPORT_TO="none"),
        )
        assert len(zenodo.file_requests()) == 1
    assert sorted(p.name for p in (tmp_path / "openpack" / PREPROCESSED).glob("*.csv")) == sorted(
        p.name for p in (synthetic_root / PREPROCESSED).glob("*.csv"))
    assert hashlib.sha256(NOTEBOOK.read_bytes()).hexdigest() == before  # never executed in place
    nb = nbformat.read(out_nb, as_version=4)
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    for line in ("# Model weights (4-bit): 0.68 GB", "# LoRA params + grads + AdamW states", "# Activations (batch 2, 8 frames",
                 "# Total:", "8 frames -> 1152 visual tokens"):
        assert line in text, line
    assert "openpack_vlm already installed: " + str(Path(__file__).resolve().parents[1] / "openpack_vlm") in text
    assert "CUDA not available" in text and "NVIDIA driver none, no NVIDIA GPU found" in text
    assert "building them from Zenodo -> " in text and "train: " in text
    assert "estimate (vram.py, this model and config):" in text and "measured peak: n/a (CPU run" in text
    assert (run / "adapter" / "adapter_config.json").is_file()
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["global_step"] == 4
    conf = json.loads((run / "config.json").read_text())
    assert conf["train"]["num_workers"] == 2 and conf["model"]["modules_to_save"] == ["lm_head"]  # tiny recipe
    built = tmp_path / "data"  # the data cell's output next to OUT_DIR
    assert list((built / "train").glob("shard-*.tar")) and conf["train"]["data"] == str(built)
    assert (run / "grammar.json").read_bytes() == (built / "grammar.json").read_bytes()


def _fake_nvidia_smi(bin_dir: Path, driver: str, gpu: str = "Tesla T4") -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho '{driver}, {gpu}'\n")
    smi.chmod(0o755)


@pytest.mark.parametrize("driver,ok", [("535.104.05", False), ("580.95.05", True)])
def test_notebook_environment_check_stops_on_an_old_driver(driver, ok, tmp_path):
    """The install cell's check, run as the notebook runs it, on a machine whose nvidia-smi reports a T4 with
    ``driver``: the pinned torch (a CUDA 13.0 build) needs driver >= 580, so 535 stops with one line naming the
    torch to install; 580 passes."""
    import os
    import subprocess
    import sys

    import torch

    if not (torch.version.cuda or "").startswith("13."):
        pytest.skip(f"this check is about the pinned CUDA 13 torch; installed: {torch.__version__}")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    check, imports, _ = nb.cells[2].source.partition("\nimport torch, transformers, peft\n")
    assert imports, "the install cell no longer imports torch, transformers, peft after its check"
    # parameters + the install/check cell up to its check: the imports after it (~6 s of CPU) are what
    # test_notebook_runs executes
    code = nb.cells[1].source + "\n" + check
    _fake_nvidia_smi(tmp_path / "bin", driver)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                         cwd=tmp_path)
    assert f"NVIDIA driver {driver}, 1 x Tesla T4" in res.stdout
    if ok:
        assert res.returncode == 0, res.stderr
    else:
        assert res.returncode == 1 and "Traceback" not in res.stderr
        err = res.stderr.strip()
        assert "\n" not in err and "built for CUDA 13.0, which needs NVIDIA driver >= 580.65.06" in err
        assert "this machine has 535.104.05 (Tesla T4)" in err and "download.pytorch.org/whl/cu126" in err
