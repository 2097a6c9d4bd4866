"""Qwen2.5-VL through the same code as Qwen2-VL: a tiny Qwen2.5-VL scaled down from the real Qwen2.5-VL-3B-Instruct
config.json (same keys, window attention in the vision tower, gated vision MLP) with the real tokenizer (Qwen2.5-VL
uses the same vocab and merges as Qwen2-VL-2B) is trained by openpack_vlm.model.train, evaluated by evaluate.py and
served by the FastAPI app, with no model-specific branch in any of them."""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
REAL_CONFIG = REPO / "tests" / "data" / "qwen2.5-vl-3b-instruct" / "config.json"
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny25_dir(tmp_path_factory) -> Path:
    from openpack_vlm.testing.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny25"), family="qwen2_5_vl", base_config=REAL_CONFIG,
                            tokenizer="real")


def test_tiny_qwen25vl_keeps_the_real_configs_keys(tiny25_dir):
    real = json.loads(REAL_CONFIG.read_text())
    tiny = json.loads((tiny25_dir / "config.json").read_text())
    assert tiny["model_type"] == "qwen2_5_vl" and tiny["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]
    rv, tv = real["vision_config"], tiny["vision_config"]
    for key in ("window_size", "patch_size", "spatial_merge_size", "temporal_patch_size", "tokens_per_second",
                "hidden_act"):
        assert tv[key] == rv[key], key
    assert tv["fullatt_block_indexes"] == [1, 3] and tv["depth"] == 4  # window attention in the other blocks
    from openpack_vlm.model import vram

    assert vram.arch(tiny25_dir).v_gated  # the gated vision MLP, priced as such
    assert (tiny.get("text_config") or tiny)["vocab_size"] == real["vocab_size"] == 151936  # saved nested in v5
    assert tiny["image_token_id"] == real["image_token_id"]


def test_qwen25vl_trains_evaluates_and_serves_through_the_same_code(tiny25_dir, pipeline_out, tmp_path):
    from fastapi.testclient import TestClient
    from media import make_video

    from openpack_vlm.model import train
    from openpack_vlm.model.loading import ModelConfig, load_model
    from openpack_vlm.schema import Prediction
    from openpack_vlm.serving.app import create_app
    from openpack_vlm.serving.settings import ServeConfig

    run = tmp_path / "R"
    assert train.main(["--data", str(pipeline_out), "--out", str(run), "--model", str(tiny25_dir),
                       "--quantization", "none", "--max_steps", "3", "--save_steps", "3", "--batch-size", "2",
                       "--num_workers", "0", "--report_to", "none"]) == 0
    model, _ = load_model(ModelConfig(model_id=str(tiny25_dir), quantization="none", device="cpu"),
                          adapter=run / "adapter")
    assert type(model.get_base_model()).__name__ == "Qwen2_5_VLForConditionalGeneration"
    lora = [n for n, _ in model.named_parameters() if "lora_" in n]
    assert lora and not any(".visual." in n for n in lora)  # the vision tower's gate/up/down_proj get no LoRA
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    evaluate = importlib.import_module("evaluate")
    out = tmp_path / "E"
    assert evaluate.main(["--data", str(pipeline_out), "--out", str(out), "--model", str(tiny25_dir), "--adapter",
                          str(run / "adapter"), "--quantization", "none", "--n_clips", "2", "--val_clips", "2",
                          "--n_boot", "20", "--no_free_text", "--no_keypoint_baseline", "--no_timeline"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["n_clips"] == 2 and set(results["finetuned_model"]) == {"OCA", "tIoU@0.5", "AA@1"}
    video = make_video(tmp_path / "clip.mp4", seconds=3.0)
    cfg = ServeConfig(model_id=str(tiny25_dir), adapter_path=str(run / "adapter"), quantization="none",
                      device="cpu", decode_workers=1)
    with TestClient(create_app(cfg)) as c:
        assert c.app.state.model.wait(300), c.app.state.model.error
        ready = c.get("/ready").json()
        assert ready["run"]["path"] == str(run / "run.json") and ready["fuse_weight"] == results[
            "grammar_fusion"]["fuse_weight"]
        r = c.post("/predict", files={"file": ("clip.mp4", video.read_bytes(), "video/mp4")})
        assert r.status_code == 200, r.text
        Prediction.model_validate(r.json())
        assert type(c.app.state.model.predictor.model.get_base_model()).__name__ == "Qwen2_5_VLForConditionalGeneration"
