"""The tiny Qwen2-VL (real classes, loaded through from_pretrained), the 4-bit/LoRA loading recipe, adapters and the
VRAM arithmetic."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from openpack_vlm.model import loading as M
from openpack_vlm.testing import tiny
from openpack_vlm.model import vram
from openpack_vlm.prompt import build_messages, target_text

torch.set_num_threads(1)

TRUTH = {"dominant_operation": "Attach Shipping Label", "temporal_segment": {"start_frame": 3, "end_frame": 124},
         "anticipated_next_operation": "Put on Back Table"}
IDX = [0, 15, 31, 48, 64, 80, 101, 124]


def _frames(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (336, 336, 3), dtype=np.uint8)) for _ in range(n)]


def _batch(processor, truth=TRUTH):
    text = processor.apply_chat_template(build_messages(IDX, truth), tokenize=False)
    return processor(text=[text], images=_frames(), return_tensors="pt")


def test_tiny_model_is_the_real_class_loaded_via_from_pretrained(tiny_model_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    proc = AutoProcessor.from_pretrained(tiny_model_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    assert type(proc).__name__ == "Qwen2VLProcessor" and type(proc.tokenizer).__name__ == "Qwen2Tokenizer"
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    assert sum(f.stat().st_size for f in Path(tiny_model_dir).iterdir()) < 2_000_000
    tok = proc.tokenizer
    for t in tiny.QWEN_SPECIAL_TOKENS:
        assert len(tok(t, add_special_tokens=False)["input_ids"]) == 1, t
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert model.generation_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    # the BPE was trained on the target format: the answer JSON is compact
    assert len(tok(target_text(TRUTH), add_special_tokens=False)["input_ids"]) < 45
    assert tok.decode(tok(target_text(TRUTH))["input_ids"]) == target_text(TRUTH)

    batch = _batch(proc)
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4]] * 8  # 336 px -> 56 px: 16 patches -> 4 tokens/frame
    n_img = int((batch["input_ids"] == model.config.image_token_id).sum())
    assert n_img == 8 * 4
    out = model(**batch, labels=batch["input_ids"])
    assert out.logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(out.loss)


def test_chat_template_matches_qwen2vl_format(tiny_model_dir):
    proc = M.load_processor(str(tiny_model_dir))
    text = proc.apply_chat_template(build_messages([0, 62], TRUTH), tokenize=False)
    assert text.startswith("<|im_start|>system\nYou analyse")
    assert "<|im_start|>user\nSampled frames of the clip: frame 0 (t=0.00s): <|vision_start|><|image_pad|>" \
           "<|vision_end|> frame 62 (t=2.48s): <|vision_start|><|image_pad|><|vision_end|>\nWhich" in text
    # TRUTH runs 3..124; of the shown frames 0 and 62 only 62 lies in it: the "shown" answer names 62..62
    assert text.endswith("<|im_start|>assistant\n" + target_text(TRUTH, [0, 62]) + "<|im_end|>\n")
    assert '"start_frame": 62, "end_frame": 62}' in text and "<first shown frame of it>" in text
    clip = proc.apply_chat_template(build_messages([0, 62], TRUTH, span="clip"), tokenize=False)
    assert clip.endswith("<|im_start|>assistant\n" + target_text(TRUTH) + "<|im_end|>\n")
    assert '"start_frame": 3, "end_frame": 124}' in clip and "<first frame of it>" in clip
    gen = proc.apply_chat_template(build_messages([0]), tokenize=False, add_generation_prompt=True)
    assert gen.endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_resolve_tiny_builds_once_into_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENPACK_VLM_CACHE", str(tmp_path / "cache"))
    p = Path(M.resolve_model_id("tiny"))
    assert p == tmp_path / "cache" / tiny.TINY_DIRNAME and (p / "config.json").is_file()
    stamp = (p / "model.safetensors").stat().st_mtime_ns
    assert Path(M.resolve_model_id("tiny")) == p and (p / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [q for q in (tmp_path / "cache").iterdir() if q.name.startswith(".")]  # no temp dir left
    assert M.resolve_model_id("Qwen/Qwen2-VL-2B-Instruct") == "Qwen/Qwen2-VL-2B-Instruct"
    proc = M.load_processor("tiny")
    assert type(proc).__name__ == "Qwen2VLProcessor"


def test_model_config_defaults_are_the_real_run():
    c = M.ModelConfig()
    assert c.model_id == "Qwen/Qwen2-VL-2B-Instruct" and c.quantization == "4bit"
    assert c.attn_implementation == "sdpa" and c.modules_to_save == ()
    assert set(c.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error; a CUDA machine loads 4-bit")
def test_4bit_without_cuda_is_a_clear_error(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi: a machine without an NVIDIA GPU
    with pytest.raises(M.ModelLoadError, match=r"^4-bit needs CUDA: no NVIDIA GPU visible \(torch .*, NVIDIA driver "
                                               r"none, no NVIDIA GPU found \(nvidia-smi\)\); or use --quantization "
                                               r"none \(CPU\)$"):
        M.load_model(M.ModelConfig(model_id=str(tiny_model_dir)))


def test_bad_inputs_are_clear_errors(tiny_model_dir, tmp_path):
    with pytest.raises(M.ModelLoadError, match="unknown quantization"):
        M.load_model(M.ModelConfig(model_id=str(tiny_model_dir), quantization="8bit"))
    with pytest.raises(M.ModelLoadError, match="no LoRA adapter at"):
        M.load_model(M.ModelConfig(model_id=str(tiny_model_dir), quantization="none"), adapter=tmp_path)
    with pytest.raises(M.ModelLoadError, match="cannot load"):
        M.load_model(M.ModelConfig(model_id=str(tmp_path / "missing"), quantization="none"))


def test_qlora_recipe_quantises_only_language_model(tiny_model_dir):
    """The real 4-bit path on bitsandbytes' CPU backend (device="cpu" asked explicitly): NF4 + double quant on the
    LM's linear layers, vision tower and lm_head in full precision, LoRA on LM projections only, grads only there."""
    cfg = M.ModelConfig(model_id=str(tiny_model_dir), quantization="4bit", device="cpu")
    model, proc = M.load_model(cfg, for_training=True)
    q = M.quantized_modules(model)
    assert len(q) == 2 * 7 and all(".language_model." in n for n in q)
    assert not any("visual" in n or "lm_head" in n for n in q)
    qc = model.config.quantization_config
    qc = qc.to_dict() if hasattr(qc, "to_dict") else qc
    assert qc["bnb_4bit_quant_type"] == "nf4" and qc["bnb_4bit_use_double_quant"] is True
    assert set(qc["llm_int8_skip_modules"]) == {"model.visual", "lm_head"}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and ".language_model." in n for n in trainable)
    assert len(trainable) == 2 * 7 * 2  # layers x projections x (A, B)
    model.train()
    out = model(**_batch(proc), labels=_batch(proc)["input_ids"])
    out.loss.backward()
    assert torch.isfinite(out.loss)
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == set(trainable)


def test_adapter_save_reload_reproduces_logits(tiny_model_dir, tmp_path):
    cfg = M.ModelConfig(model_id=str(tiny_model_dir), quantization="none")
    model, proc = M.load_model(cfg, for_training=True)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # a non-trivial adapter
    model.eval()
    batch = _batch(proc)
    with torch.no_grad():
        ref = model(**batch).logits
        base_logits = M.load_model(cfg)[0](**batch).logits
    model.save_pretrained(tmp_path / "run" / "adapter")
    loaded, _ = M.load_model(cfg, adapter=tmp_path / "run")  # a run dir resolves to run/adapter
    assert not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        got = loaded(**batch).logits
    assert torch.allclose(got, ref, atol=1e-5)
    assert not torch.allclose(base_logits, ref, atol=1e-3)  # the adapter matters


# ---------------------------------------------------------------------------------------------------------------- VRAM
def _param_groups(model) -> dict[str, int]:
    """Parameters of a built model in vram.param_counts' groups, by module path."""
    groups = {"embed": 0, "lm_head": 0, "lm_linear": 0, "lm_other": 0, "vision": 0}
    for n, p in model.named_parameters():
        if n.startswith("model.visual."):
            groups["vision"] += p.numel()
        elif n == "lm_head.weight":
            groups["lm_head"] += p.numel()
        elif "embed_tokens" in n:
            groups["embed"] += p.numel()
        elif n.endswith("_proj.weight"):
            groups["lm_linear"] += p.numel()
        else:
            groups["lm_other"] += p.numel()
    return groups


def test_param_counts_match_the_real_module_tree(tiny_model_dir):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    groups = _param_groups(model)
    counts = vram.param_counts(tiny_model_dir)
    assert {k: counts[k] for k in groups} == groups
    peft_model, _ = M.load_model(M.ModelConfig(model_id=str(tiny_model_dir), quantization="none", lora_r=16),
                                 for_training=True)
    n_lora = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    assert vram.lora_params(tiny_model_dir, r=16) == n_lora


def test_param_counts_of_the_real_qwen25vl_3b_config_match_its_module_tree(repo_root):
    """vram.py on Qwen2.5-VL-3B-Instruct's real config.json (its vision keys and gated MLP) equals the parameter
    groups of the model transformers builds from it (on the meta device: no weights)."""
    import json

    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    path = repo_root / "tests" / "data" / "qwen2.5-vl-3b-instruct" / "config.json"
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**json.loads(path.read_text())))
    groups = _param_groups(model)  # a tied lm_head is listed once, as embed_tokens
    counts = vram.param_counts(path)
    assert {k: counts[k] for k in groups} == groups
    assert 3.7e9 < counts["total"] < 3.8e9
    assert vram.vram_math(vram.vram_table(path, n_text=300, text_exact=True)).startswith("# Qwen2_5_VL: 3.75B params")


def test_vram_counts_text_tokens_with_the_real_tokenizer_offline():
    """The budget's text tokens are the real Qwen2-VL-2B-Instruct tokenizer's count of a training sample (vendored
    files, no network): the prompt and target JSON, without the one image placeholder per frame."""
    from openpack_vlm.testing.tiny import real_processor
    from openpack_vlm.prompt import build_messages

    tok = real_processor().tokenizer
    assert len(tok) == 151657 and tok.convert_tokens_to_ids("<|im_end|>") == 151645
    assert tok("124", add_special_tokens=False)["input_ids"] == [16, 17, 19]  # one token per digit
    n, exact = vram.text_tokens()
    text = tok.apply_chat_template(build_messages([0, 17, 33, 50, 66, 83, 100, 124], vram._sample_truth()),
                                   tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert exact and n == len(ids) - 8 == 340  # 338 before the "shown" span wording
    assert "8 frames x 144 visual tokens + 340 text tokens = 1492 tokens" in vram.vram_math()


def test_vram_budget_for_qwen2vl_2b():
    pc = vram.param_counts()
    assert 2.20e9 < pc["total"] < 2.22e9  # Qwen2-VL-2B has 2.21B parameters
    assert vram.lora_params(r=16) == 18_464_768
    assert vram.visual_tokens_per_frame() == 144  # the real processor settings at 336x336
    rows = vram.vram_table(n_text=300, text_exact=True)
    by = {(r["gpu"], r["gradient_checkpointing"]): r for r in rows}
    assert by[("T4", True)]["fits"] and not by[("T4", False)]["fits"] and by[("A100", False)]["fits"]
    assert by[("T4", True)]["meta"]["tokens_per_sample"] == 300 + 8 * 144
    assert 0.6 < by[("T4", True)]["weights_4bit"] < 0.75
    assert by[("T4", False)]["activations"] > 10 * by[("T4", True)]["activations"]
    text = vram.vram_math(rows)
    assert "# Model weights (4-bit): 0.68 GB" in text and "# Total:" in text and "T4 16 GB: fits" in text


def test_vram_counts_visual_tokens_with_the_given_processor(tiny_model_dir):
    proc = M.load_processor(str(tiny_model_dir))
    assert vram.visual_tokens_per_frame(proc.image_processor) == 4
    n, exact = vram.text_tokens(IDX, proc.tokenizer)
    assert exact and n > 50
    assert vram.main(["--config", str(tiny_model_dir / "nope.json")]) == 2
