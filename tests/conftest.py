"""Shared fixtures. Each engineer adds only their own fixture here (small, targeted edits)."""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
REAL_SAMPLES = REPO / "tests" / "data" / "openpack"  # real OpenPack files (CC BY-NC-SA 4.0, see PROVENANCE.tsv there)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def real_root() -> Path:
    """A dataset root in the real v1.0.0 layout holding the real U0209/S0500 annotation files."""
    return REAL_SAMPLES / "v1.0.0"


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """Small synthetic OpenPack root (default split users U0101-U0108, 90 s sessions), all layouts written.

    Only the JPEG size differs from the default (320x180 instead of the real 1280x720): ~5 s instead of ~20 s to
    write; keypoints stay in 1280x720 px and frame sources resize to 336x336 either way."""
    from openpack_vlm.testing.synthetic import SyntheticConfig, write_synthetic_root

    root = tmp_path_factory.mktemp("openpack_root")
    return write_synthetic_root(root, SyntheticConfig(rgb_size=(320, 180)))


@pytest.fixture(scope="session")
def pose_samples(synthetic_root, tmp_path_factory) -> Path:
    """data_pipeline.py on `synthetic_root` with skeleton frames (the public path, person-centred renderer) and its 20
    exported examples: the committed training_data_samples/ must equal them byte for byte."""
    import importlib

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    data_pipeline = importlib.import_module("data_pipeline")
    out = tmp_path_factory.mktemp("pose_pipeline") / "data"
    rc = data_pipeline.main(["--root", str(synthetic_root), "--out", str(out), "--source", "pose",
                             "--samples-out", str(out / "samples"), "--n-samples", "20"])
    assert rc == 0, "data_pipeline.py --source pose failed on the synthetic root"
    return out / "samples"


@pytest.fixture(scope="session")
def pipeline_out(synthetic_root, tmp_path_factory) -> Path:
    """data_pipeline.py run on `synthetic_root` with default settings (train U0101-U0106, val U0107, test U0108;
    RGB frames, K=8): D/{split}/shard-*.tar, manifest.jsonl, pairs.jsonl, D/summary.json, D/grammar.json, plus the
    20 exported examples in D/samples (the committed training_data_samples/ must equal them byte for byte)."""
    import importlib

    if str(REPO) not in sys.path:  # top-level scripts live in the repo root
        sys.path.insert(0, str(REPO))
    data_pipeline = importlib.import_module("data_pipeline")
    out = tmp_path_factory.mktemp("pipeline") / "data"
    rc = data_pipeline.main(["--root", str(synthetic_root), "--out", str(out),
                             "--samples-out", str(out / "samples"), "--n-samples", "20"])
    assert rc == 0, "data_pipeline.py failed on the synthetic root"
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tiny random Qwen2-VL, built offline and saved with save_pretrained. Its tokenizer is a 512-token BPE
    trained in code (4 visual tokens per frame): ~20x cheaper per clip than ``tiny_real_model_dir``, so it serves the
    tests where the tokenizer does not matter (training mechanics, serving, evaluation plumbing)."""
    from openpack_vlm.testing.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"), seed=0)


@pytest.fixture(scope="session")
def tiny_real_model_dir(tmp_path_factory) -> Path:
    """The tiny random Qwen2-VL with the REAL Qwen2-VL-2B-Instruct tokenizer, chat template and processor settings
    (vocabulary 151936, 144 visual tokens per 336x336 frame): for the tests where the tokenizer matters. The other
    tests use ``tiny_model_dir`` (a 512-token BPE, 4 visual tokens per frame) because it is ~20x cheaper per clip."""
    from openpack_vlm.testing.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_real_model"), seed=0, tokenizer="real")


@pytest.fixture(scope="session")
def run_dir(pipeline_out, tiny_model_dir, tmp_path_factory) -> Path:
    """A real (short) training run: R/adapter, R/grammar.json (copied from D/grammar.json), R/config.json."""
    from openpack_vlm.model import train

    out = tmp_path_factory.mktemp("run") / "run"
    rc = train.main(["--data", str(pipeline_out), "--out", str(out), "--model", str(tiny_model_dir),
                     "--quantization", "none", "--max-steps", "3", "--save-steps", "3", "--batch-size", "2",
                     "--num-workers", "0", "--report-to", "none"])
    assert rc == 0 and (out / "adapter" / "adapter_config.json").is_file() and (out / "grammar.json").is_file()
    return out


@pytest.fixture(scope="session")
def eval_out(pipeline_out, tiny_model_dir, run_dir, tmp_path_factory) -> Path:
    """evaluate.py on 5 test clips of ``pipeline_out`` with the adapter of ``run_dir`` (writes R/run.json's
    evaluation section): E/results.json, predictions, confusion, calibration, timeline."""
    out = tmp_path_factory.mktemp("eval") / "E"
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    rc = importlib.import_module("evaluate").main([
        "--data", str(pipeline_out), "--out", str(out), "--model", str(tiny_model_dir), "--adapter",
        str(run_dir / "adapter"), "--quantization", "none", "--n-clips", "5", "--val-clips", "4", "--n-boot", "200"])
    assert rc == 0
    return out
