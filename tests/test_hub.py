"""Publishing and loading adapters by Hub id (openpack_vlm/hub.py), offline: the folder ``push`` uploads, its model
card, and that folder placed in an HF cache as a Hub snapshot, loaded back by id through serving's own loader with
HF_HUB_OFFLINE=1 and answering exactly as the local run dir does. The upload itself is one library call
(``upload_folder``) and is not mocked."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from openpack_vlm import hub
from openpack_vlm.model import loading

REPO_ID = "alice/openpack-tiny"
SHA = "4c5d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f70819"  # the snapshot's commit hash (any 40 hex digits)

ANSWER = r"""
import json, sys
from openpack_vlm.data.shards import iter_samples, shard_paths
from openpack_vlm.serving.state import load_predictor
from openpack_vlm.serving.settings import ServeConfig

model, adapter, data = sys.argv[1:4]
env = {"MODEL_ID": model, "QUANTIZATION": "none", "DEVICE": "cpu"} | ({} if adapter == "-" else {"ADAPTER_PATH": adapter})
cfg = ServeConfig.from_env(env)
p = load_predictor(cfg)
out = {"adapter": str(p.info["adapter"]), "run": p.info["run"], "fuse_weight": p.fuse_weight, "answers": []}
for i, (rec, frames) in enumerate(iter_samples(shard_paths(data + "/test"))):
    if i == 3:
        break
    r = p.predict(frames, rec.frame_indices, rec.clip_id)
    out["answers"].append({"prediction": r.prediction.model_dump(), "dominant": r.scores["dominant"],
                           "next": r.scores["next_model"]})
print("ANSWER " + json.dumps(out))
"""


def _answer(model_dir: Path, adapter: str, data: Path, env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", ANSWER, str(model_dir), adapter, str(data)], env=env,
                          capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    line = [x for x in proc.stdout.splitlines() if x.startswith("ANSWER ")]
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    return json.loads(line[0][len("ANSWER "):])


@pytest.fixture(scope="module")
def pushed(run_dir, eval_out, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("push") / "folder"
    rc = hub.main(["push", str(run_dir), "--repo-id", REPO_ID, "--results", str(eval_out / "results.json"),
                   "--folder", str(folder), "--dry-run"])
    assert rc == 0
    return folder


def test_folder_layout_and_model_card(pushed, eval_out, run_dir):
    from huggingface_hub import ModelCard

    assert sorted(os.listdir(pushed)) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                          "grammar.json", "results.json", "run.json"]
    assert (pushed / "adapter_model.safetensors").read_bytes() == (run_dir / "adapter" /
                                                                   "adapter_model.safetensors").read_bytes()
    run = json.loads((pushed / "run.json").read_text())
    assert run["data"]["grammar"]["file"] == "grammar.json" and run["evaluation"] is not None
    res = json.loads((eval_out / "results.json").read_text())
    assert json.loads((pushed / "results.json").read_text()) == res
    card = ModelCard.load(pushed / "README.md")
    assert card.data.library_name == "peft" and card.data.license == "cc-by-nc-sa-4.0"
    assert card.data.base_model is None  # a local tiny model is not a Hub id; the Hub would refuse it
    assert "synthetic-data" in card.data.tags
    text = card.text
    # what the numbers were measured on, read from results.json / run.json
    assert "data: **synthetic**" in text and "SYNTHETIC" in text
    assert "test U0108" in text and "train U0101 U0102 U0103 U0104 U0105 U0106" in text
    assert f"evaluated: {res['n_clips']} test clips" in text
    assert res["provenance"]["git_commit"] in text
    ft, lo_hi = res["finetuned_model"], res["intervals"]["finetuned_model"]["OCA"]
    assert f"| fine-tuned | {ft['OCA']:.3f} [{lo_hi[0]:.2f}, {lo_hi[1]:.2f}] |" in text
    assert '"max_steps": 3' in text and f"ADAPTER_PATH={REPO_ID}" in text


@pytest.mark.slow  # three model-loading subprocesses (~25 s)
def test_loaded_by_id_from_an_offline_cache_answers_like_the_local_run(pushed, run_dir, tiny_model_dir,
                                                                        pipeline_out, tmp_path):
    cache = tmp_path / "hf-cache"
    repo = cache / "models--alice--openpack-tiny"
    shutil.copytree(pushed, repo / "snapshots" / SHA)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    by_id = _answer(tiny_model_dir, REPO_ID, pipeline_out, env)
    local = _answer(tiny_model_dir, str(run_dir / "adapter"), pipeline_out, env)
    assert by_id["adapter"] == str(repo / "snapshots" / SHA)  # the snapshot, not a download
    assert by_id["run"].pop("path") == str(repo / "snapshots" / SHA / "run.json")
    local["run"].pop("path")
    assert by_id["run"] == local["run"] and by_id["fuse_weight"] == local["fuse_weight"]  # run.json + grammar applied
    assert by_id["answers"] == local["answers"] and len(by_id["answers"]) == 3
    # and the adapter is really on: the base model alone scores differently
    base = _answer(tiny_model_dir, "-", pipeline_out, env)["answers"]
    assert [a["dominant"] for a in by_id["answers"]] != [a["dominant"] for a in base]


def test_ids_paths_and_clear_errors(tmp_path, run_dir, capsys, monkeypatch):
    from openpack_vlm.serving.settings import ServeConfig

    assert loading.hub_id("alice/openpack-tiny") == ("alice/openpack-tiny", None)
    assert loading.hub_id("alice/openpack-tiny@v1.0") == ("alice/openpack-tiny", "v1.0")
    assert loading.hub_id(str(run_dir / "adapter")) is None  # an existing folder is a folder
    assert loading.hub_id("runs/a/adapter") is None and loading.hub_id("./x/y") is None
    assert ServeConfig.from_env({"ADAPTER_PATH": "alice/openpack-tiny"}).adapter_path == "alice/openpack-tiny"
    with pytest.raises(ValueError, match="Hub id"):
        ServeConfig.from_env({"ADAPTER_PATH": "runs/a/adapter"})
    with pytest.raises(loading.ModelLoadError, match="neither a local folder nor in the HF cache"):
        loading.resolve_adapter("alice/not-in-any-cache-" + SHA[:8])
    assert hub.main(["push", str(tmp_path), "--repo-id", REPO_ID, "--folder", str(tmp_path / "f"), "--dry-run"]) == 2
    assert "no LoRA adapter" in capsys.readouterr().err
    assert hub.main(["push", str(run_dir), "--repo-id", "not an id", "--folder", str(tmp_path / "f"),
                     "--dry-run"]) == 2
    assert "USER/NAME" in capsys.readouterr().err
    assert hub.main(["push", str(run_dir), "--repo-id", REPO_ID, "--results", str(tmp_path / "none.json"),
                     "--folder", str(tmp_path / "f"), "--dry-run"]) == 2
    assert "results file not found" in capsys.readouterr().err and not (tmp_path / "f").exists()
