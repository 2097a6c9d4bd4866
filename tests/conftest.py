"""Shared fixtures. Each engineer adds only their own fixture here (small, targeted edits).

The suite runs in one process per core (pytest-xdist, ``make test`` / ``make test-fast``): every session fixture that
builds files is built ONCE for the whole run (``built_once``: the first worker builds it under a file lock, the others
reuse it), each worker runs torch on its share of the cores, and the tests marked slow are handed out first, so the
long ones do not end up last on one worker.
"""
from __future__ import annotations

import fcntl
import importlib
import itertools
import os
import shutil
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
REAL_SAMPLES = REPO / "tests" / "data" / "openpack"  # real OpenPack files (CC BY-NC-SA 4.0, see PROVENANCE.tsv there)


WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))


def pytest_configure(config):
    if WORKERS > 1:  # one process per core already: torch in each would otherwise spin a thread per core
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // WORKERS))


#: rough seconds of the longest tests (2 cores): only the ORDER of the run uses them (longest first, spread over the
#: workers); a stale number costs balance, never a result
HEAVY_S = {"test_demo.py::test_short_demo_chain": 90, "test_learning.py::test_positive_control": 95,
           "test_learning.py::test_negative_control": 95, "test_qwen25vl.py::test_qwen25vl_trains": 35,
           "test_train.py::test_finetuned_beats_untrained": 50, "test_notebook.py::test_notebook_runs": 32,
           "test_hub.py::test_loaded_by_id": 26, "test_ddp.py::": 25}


def _weight(item) -> int:
    nodeid = item.nodeid.split("tests/", 1)[-1]
    hint = next((v for k, v in HEAVY_S.items() if nodeid.startswith(k)), None)
    return hint if hint is not None else 10 if item.get_closest_marker("slow") else 1


@pytest.hookimpl(trylast=True)  # after -m / -k deselection
def pytest_collection_modifyitems(config, items):
    """The slow tests first, spread over the workers (longest first, each to the least-loaded worker), the others in
    file order after them. ``--dist worksteal`` hands worker i the i-th consecutive chunk of the list (then balances
    the tails by stealing), so each chunk starts with its share of the long tests: no worker starts a minutes-long
    test while the others have nothing left."""
    heavy = sorted((it for it in items if _weight(it) >= 10), key=_weight, reverse=True)
    light = [it for it in items if _weight(it) < 10]
    bins, loads = [[] for _ in range(WORKERS)], [0] * WORKERS
    for it in heavy:
        i = loads.index(min(loads))
        bins[i].append(it)
        loads[i] += _weight(it)
    out, rest, left = [], iter(light), len(items)
    for i, chunk in enumerate(bins):
        size = left // (WORKERS - i)  # what worksteal sends worker i first
        out += chunk + list(itertools.islice(rest, max(0, size - len(chunk))))  # the light ones may run out
        left -= size
    items[:] = out + list(rest)


def built_once(tmp_path_factory, name: str, build) -> Path:
    """``build(folder)``'s result for the whole test run: built by the first worker that asks (file lock; a failed
    build leaves no mark, so the next asker retries), reused by the others. Without xdist, simply built."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's folder, above every worker's own
    base = base / "built_once"
    base.mkdir(exist_ok=True)
    mark = base / f"{name}.done"
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not mark.exists():
            folder = base / name
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            mark.write_text(str(build(folder)))
    return Path(mark.read_text())


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

    return built_once(tmp_path_factory, "openpack_root",
                      lambda d: write_synthetic_root(d, SyntheticConfig(rgb_size=(320, 180))))


@pytest.fixture(scope="session")
def pose_samples(synthetic_root, tmp_path_factory) -> Path:
    """data_pipeline.py on `synthetic_root` with skeleton frames (the public path, person-centred renderer) and its 20
    exported examples: the committed training_data_samples/ must equal them byte for byte."""
    import importlib

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    data_pipeline = importlib.import_module("data_pipeline")

    def build(folder: Path) -> Path:
        out = folder / "data"
        rc = data_pipeline.main(["--root", str(synthetic_root), "--out", str(out), "--source", "pose",
                                 "--samples-out", str(out / "samples"), "--n-samples", "20"])
        assert rc == 0, "data_pipeline.py --source pose failed on the synthetic root"
        return out / "samples"

    return built_once(tmp_path_factory, "pose_pipeline", build)


@pytest.fixture(scope="session")
def pipeline_out(synthetic_root, tmp_path_factory) -> Path:
    """data_pipeline.py run on `synthetic_root` with default settings (train U0101-U0106, val U0107, test U0108;
    RGB frames, K=8): D/{split}/shard-*.tar, manifest.jsonl, pairs.jsonl, D/summary.json, D/grammar.json, plus the
    20 exported examples in D/samples (the committed training_data_samples/ must equal them byte for byte)."""
    import importlib

    if str(REPO) not in sys.path:  # top-level scripts live in the repo root
        sys.path.insert(0, str(REPO))
    data_pipeline = importlib.import_module("data_pipeline")

    def build(folder: Path) -> Path:
        out = folder / "data"
        rc = data_pipeline.main(["--root", str(synthetic_root), "--out", str(out),
                                 "--samples-out", str(out / "samples"), "--n-samples", "20"])
        assert rc == 0, "data_pipeline.py failed on the synthetic root"
        return out

    return built_once(tmp_path_factory, "pipeline", build)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tiny random Qwen2-VL, built offline and saved with save_pretrained. Its tokenizer is a 512-token BPE
    trained in code (4 visual tokens per frame): ~20x cheaper per clip than ``tiny_real_model_dir``, so it serves the
    tests where the tokenizer does not matter (training mechanics, serving, evaluation plumbing)."""
    from openpack_vlm.testing.tiny import build_tiny_model

    return built_once(tmp_path_factory, "tiny_model", lambda d: build_tiny_model(d, seed=0))


@pytest.fixture(scope="session")
def tiny_real_model_dir(tmp_path_factory) -> Path:
    """The tiny random Qwen2-VL with the REAL Qwen2-VL-2B-Instruct tokenizer, chat template and processor settings
    (vocabulary 151936, 144 visual tokens per 336x336 frame): for the tests where the tokenizer matters. The other
    tests use ``tiny_model_dir`` (a 512-token BPE, 4 visual tokens per frame) because it is ~20x cheaper per clip."""
    from openpack_vlm.testing.tiny import build_tiny_model

    return built_once(tmp_path_factory, "tiny_real_model", lambda d: build_tiny_model(d, seed=0, tokenizer="real"))


@pytest.fixture(scope="session")
def run_dir(pipeline_out, tiny_model_dir, tmp_path_factory) -> Path:
    """A real (short) training run: R/adapter, R/grammar.json (copied from D/grammar.json), R/config.json. Shared by
    every worker, and ``eval_out`` records its evaluation in R/run.json: a test that evaluates it again works on a
    copy."""
    from openpack_vlm.model import train

    def build(folder: Path) -> Path:
        out = folder / "run"
        rc = train.main(["--data", str(pipeline_out), "--out", str(out), "--model", str(tiny_model_dir),
                         "--quantization", "none", "--max-steps", "3", "--save-steps", "3", "--batch-size", "2",
                         "--num-workers", "0", "--report-to", "none"])
        assert rc == 0 and (out / "adapter" / "adapter_config.json").is_file() and (out / "grammar.json").is_file()
        return out

    return built_once(tmp_path_factory, "run", build)


#: the keypoint baseline's budget in ``eval_out`` (the real default is 80: its numbers are not what these tests check,
#: its CLI test trains the same to compare)
KEYPOINT_EPOCHS = 10


@pytest.fixture(scope="session")
def eval_out(pipeline_out, tiny_model_dir, run_dir, tmp_path_factory) -> Path:
    """evaluate.py on 5 test clips of ``pipeline_out`` with the adapter of ``run_dir`` (writes R/run.json's
    evaluation section): E/results.json, predictions, confusion, calibration, keypoint baseline (``KEYPOINT_EPOCHS``),
    timeline (the first 45 s of the test session)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))

    def build(folder: Path) -> Path:
        out = folder / "E"
        rc = importlib.import_module("evaluate").main([
            "--data", str(pipeline_out), "--out", str(out), "--model", str(tiny_model_dir), "--adapter",
            str(run_dir / "adapter"), "--quantization", "none", "--n-clips", "5", "--val-clips", "4",
            "--n-boot", "200", "--keypoint_epochs", str(KEYPOINT_EPOCHS), "--timeline_max_seconds", "45"])
        assert rc == 0
        return out

    return built_once(tmp_path_factory, "eval", build)
