"""GPU memory budget of the QLoRA run, from config arithmetic (no weights needed) and the real visual-token count.

    python -m openpack_vlm.model.vram [--config path/to/config.json] [--batch 2] [--frames 8]

Counts every parameter group of Qwen2-VL from ``config.json`` values (checked against the real module tree of the
tiny model in tests), then prices what ``model.load_model(..., for_training=True)`` keeps on the GPU:

* language-model linear weights in 4-bit NF4 with double quantisation: 0.5 B/param + 8-bit absmax per 64 weights
  + one fp32 second-level constant per 256 blocks;
* token embedding (tied with lm_head in 2B) and norms/biases upcast to fp32 by ``prepare_model_for_kbit_training``;
* vision tower + merger frozen in the compute dtype (2 B/param; model.py casts it back after the upcast);
* LoRA weights fp32 + grads fp32 + AdamW m and v fp32 = 16 B per LoRA param;
* activations of the language model at the given batch (text + visual tokens per sample), with/without gradient
  checkpointing, plus the logits (fp16 logits, their fp32 copy and fp32 log-softmax for the loss: 10 B per
  token x vocab), plus a transient vision-tower peak;
* CUDA context + allocator slack: a flat 0.8 GB (typical for torch 2.x on T4/A100).
It is an estimate (+-15 %); ``train_summary.json`` holds the measured ``torch.cuda.max_memory_allocated``.
"""
from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..cli import build_parser, parse, setting
from ..prompt import build_messages, target_text
from ..testing.tiny import QWEN2VL_CHAT_TEMPLATE, real_processor

GB = 1e9  # decimal GB, as GPU makers count (T4 "16 GB" = 15.1 GiB usable ~ 15.8e9 B)

# Values of Qwen/Qwen2-VL-2B-Instruct's config.json on the Hugging Face Hub (flat pre-v5 layout, as published
# 2024-08; unchanged since). Kept here so the budget can be computed offline without downloading anything.
QWEN2VL_2B_CONFIG: dict = {
    "model_type": "qwen2_vl",
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
    "max_position_embeddings": 32768,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vision_config": {
        "depth": 32,
        "embed_dim": 1280,
        "hidden_size": 1536,  # merger output = the LM's hidden size
        "mlp_ratio": 4,
        "num_heads": 16,
        "in_chans": 3,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
}
# Qwen2-VL-2B-Instruct's preprocessor_config.json: 14-px patches, 2x2 merge, 56*56 .. 28*28*1280 pixels per image.
QWEN2VL_IMAGE_PROCESSOR: dict = {"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 1280, "patch_size": 14,
                                 "merge_size": 2, "temporal_patch_size": 2}
GPUS: tuple[tuple[str, float], ...] = (("T4", 16.0), ("A100", 40.0))
CUDA_OVERHEAD = 0.8 * GB  # CUDA context (~0.4 GB) + caching-allocator fragmentation
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Arch:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    v_embed: int
    v_depth: int
    v_mlp_ratio: float
    v_out: int
    in_chans: int
    patch: int
    temporal_patch: int
    merge: int
    v_gated: bool = False  # Qwen2.5-VL vision blocks: RMSNorm + gated SiLU MLP (gate/up/down, biased) of v_intermediate
    v_intermediate: int = 0

    @property
    def kv_dim(self) -> int:
        return self.hidden // self.heads * self.kv_heads


def arch(config: dict | str | os.PathLike | object = None) -> Arch:
    """Architecture numbers from a config dict (flat pre-v5 or nested ``text_config``), a config.json path or model
    dir, or a transformers config object. ``None`` = Qwen2-VL-2B-Instruct."""
    if config is None:
        config = QWEN2VL_2B_CONFIG
    if isinstance(config, (str, os.PathLike)):
        p = Path(config)
        p = p / "config.json" if p.is_dir() else p
        if not p.is_file():
            raise FileNotFoundError(f"no model config at {p}")
        config = json.loads(p.read_text())
    if not isinstance(config, dict):
        config = config.to_dict()
    text = dict(config)
    text.update(config.get("text_config") or {})
    v = config["vision_config"]
    tied = bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))
    # Qwen2-VL names the vision width embed_dim and its output hidden_size; Qwen2.5-VL names them hidden_size and
    # out_hidden_size, and its MLP is gated (intermediate_size) with RMSNorms
    gated = "out_hidden_size" in v
    return Arch(
        hidden=text["hidden_size"], intermediate=text["intermediate_size"], layers=text["num_hidden_layers"],
        heads=text["num_attention_heads"], kv_heads=text.get("num_key_value_heads") or text["num_attention_heads"],
        vocab=text["vocab_size"], tied=tied, v_embed=v["hidden_size"] if gated else v["embed_dim"],
        v_depth=v["depth"], v_mlp_ratio=v.get("mlp_ratio", 4), v_out=v["out_hidden_size"] if gated else v["hidden_size"],
        in_chans=v.get("in_chans", v.get("in_channels", 3)), patch=v.get("patch_size", 14),
        temporal_patch=v.get("temporal_patch_size", 2), merge=v.get("spatial_merge_size", 2),
        v_gated=gated, v_intermediate=v.get("intermediate_size", 0) if gated else 0,
    )


def param_counts(config=None) -> dict[str, int]:
    """Parameters per group, as Qwen2VLForConditionalGeneration (or Qwen2_5_VLForConditionalGeneration) builds them.

    ``lm_linear``: the 7 projections' weights (what 4-bit quantises); ``lm_other``: their biases (q/k/v) and the
    RMSNorms; ``embed``; ``lm_head`` (0 when tied to embed); ``vision``: patch embed + blocks + merger."""
    a = arch(config)
    h, kv, i = a.hidden, a.kv_dim, a.intermediate
    lm_linear = a.layers * (h * h + 2 * h * kv + h * h + 3 * h * i)
    lm_other = a.layers * (h + 2 * kv + 2 * h) + h  # q/k/v biases, 2 RMSNorms per layer, final norm
    e = a.v_embed
    attn = (e * 3 * e + 3 * e) + (e * e + e)  # qkv + proj, biased
    if a.v_gated:  # 2 RMSNorms (weight only) + gate/up (e -> I) and down (I -> e), all biased
        vi = a.v_intermediate
        block = 2 * e + attn + 2 * (e * vi + vi) + (vi * e + e)
        ln_q = e
    else:  # 2 LayerNorms (weight + bias) + fc1/fc2 of width e * mlp_ratio
        mlp = int(e * a.v_mlp_ratio)
        block = 2 * 2 * e + attn + (e * mlp + mlp) + (mlp * e + e)
        ln_q = 2 * e
    patch_embed = a.in_chans * a.temporal_patch * a.patch * a.patch * e  # Conv3d, no bias
    ctx = e * a.merge**2
    merger = ln_q + (ctx * ctx + ctx) + (ctx * a.v_out + a.v_out)
    counts = {
        "embed": a.vocab * h,
        "lm_head": 0 if a.tied else a.vocab * h,
        "lm_linear": lm_linear,
        "lm_other": lm_other,
        "vision": patch_embed + a.v_depth * block + merger,
    }
    counts["total"] = sum(counts.values())
    return counts


def lora_params(config=None, r: int = 16, targets: tuple[str, ...] = LORA_TARGETS) -> int:
    a = arch(config)
    h, kv, i = a.hidden, a.kv_dim, a.intermediate
    shape = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h), "gate_proj": (h, i),
             "up_proj": (h, i), "down_proj": (i, h)}
    return a.layers * sum(r * (shape[t][0] + shape[t][1]) for t in targets)


def visual_tokens_per_frame(image_processor=None, size: int = 336) -> int:
    """Visual tokens one ``size``x``size`` frame costs, counted by running the image processor on such a frame.
    ``None`` = a ``Qwen2VLImageProcessor`` with Qwen2-VL-2B-Instruct's settings (no download needed)."""
    import numpy as np
    from PIL import Image

    if image_processor is None:
        from transformers import Qwen2VLImageProcessor

        image_processor = Qwen2VLImageProcessor(**QWEN2VL_IMAGE_PROCESSOR)
    out = image_processor(images=[Image.fromarray(np.zeros((size, size, 3), np.uint8))], return_tensors="pt")
    t, gh, gw = (int(x) for x in out["image_grid_thw"][0])
    return t * gh * gw // (image_processor.merge_size**2)


def sample_visual_tokens(frames, image_processor=None) -> int:
    """Visual tokens of one sample (its actual frames) as the image processor counts them; ``None`` = Qwen2-VL-2B's
    processor settings."""
    if image_processor is None:
        from transformers import Qwen2VLImageProcessor

        image_processor = Qwen2VLImageProcessor(**QWEN2VL_IMAGE_PROCESSOR)
    out = image_processor(images=list(frames), return_tensors="pt")
    return int(out["image_grid_thw"].prod(dim=1).sum()) // (image_processor.merge_size**2)


def text_tokens(frame_indices=None, tokenizer=None) -> tuple[int, bool]:
    """Text tokens of one training sample (chat template, timestamps, target JSON; image pads excluded), counted
    exactly with ``tokenizer``, by default the real Qwen2-VL-2B-Instruct tokenizer vendored with the package (offline).
    Returns (count, True): the flag says the count is exact (kept for callers that print it)."""

    frame_indices = list(frame_indices) if frame_indices is not None else [0, 17, 33, 50, 66, 83, 100, 124]
    msgs = build_messages(frame_indices, _sample_truth())
    tokenizer = tokenizer if tokenizer is not None else real_processor().tokenizer
    text = tokenizer.apply_chat_template(msgs, tokenize=False, chat_template=QWEN2VL_CHAT_TEMPLATE)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")  # one placeholder per frame: its 144 are the visual tokens
    return sum(1 for i in ids if i != pad), True


def _sample_truth() -> dict:
    return {"dominant_operation": "Attach Shipping Label", "temporal_segment": {"start_frame": 12, "end_frame": 124},
            "anticipated_next_operation": "Put on Back Table"}


def answer_tokens(tokenizer=None) -> tuple[int, bool]:
    """Trained tokens of one sample (the answer JSON + <|im_end|>): the positions train.answer_only_loss projects
    onto the vocabulary. Exact with the tokenizer, else characters / 3.6 (flagged as an estimate)."""
    text = target_text(_sample_truth())
    if tokenizer is not None:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1, True
    return math.ceil(len(text) / 3.6) + 1, False


def vision_lora_params(config=None, r: int = 16) -> int:
    """LoRA parameters of ``vision_lora`` (loading.VISION_LINEAR_RE): r x (in + out) per adapted linear — each
    block's qkv, proj and MLP linears, and the merger's two."""
    a = arch(config)
    e = a.v_embed
    mlp = [(e, a.v_intermediate), (e, a.v_intermediate), (a.v_intermediate, e)] if a.v_gated else \
        [(e, int(e * a.v_mlp_ratio)), (int(e * a.v_mlp_ratio), e)]
    block = [(e, 3 * e), (e, e)] + mlp
    ctx = e * a.merge**2
    merger = [(ctx, ctx), (ctx, a.v_out)]
    return a.v_depth * sum(r * (i + o) for i, o in block) + sum(r * (i + o) for i, o in merger)


def estimate(config=None, *, batch: int = 2, frames: int = 8, visual_per_frame: int | None = None,
             n_text: int | None = None, lora_r: int = 16, gradient_checkpointing: bool = True,
             answer_logits_only: bool = True, n_answer: int | None = None,
             compute_bytes: int = 2, quantization: str = "4bit", cuda: bool = True, vision_lora: bool = False) -> dict:
    """Memory components (bytes) of one QLoRA training step as model.py/train.py run it.
    ``quantization="none"``: every base weight in the compute dtype (``compute_bytes``: 2 on GPU, 4 on CPU).
    ``vision_lora``: LoRA on the vision tower too — its LoRA states, and the tower's activations kept for the
    backward pass (per block: input, LayerNorms, qkv, attention output, proj, the MLP's hidden and its activation,
    LoRA-dropout copies ~ (10 + 2 x mlp_ratio) x embed per patch; with checkpointing, the transformers blocks are
    checkpointed layers too: one saved input per block plus one recomputed block)."""
    a = arch(config)
    pc = param_counts(config)
    if visual_per_frame is None:
        visual_per_frame = visual_tokens_per_frame()
    if n_text is None:
        n_text, _ = text_tokens()
    seq = n_text + frames * visual_per_frame
    tokens = batch * seq
    blocks = pc["lm_linear"] / 64
    weights_4bit = pc["lm_linear"] * 0.5 + blocks * 1 + blocks / 256 * 4 + 64 * 4  # nf4 + 8-bit absmax + fp32 consts
    full = (pc["embed"] + pc["lm_head"] + pc["lm_other"]) * 4  # upcast to fp32 by prepare_model_for_kbit_training
    if quantization == "none":
        weights_4bit = 0
        full = (pc["embed"] + pc["lm_head"] + pc["lm_other"] + pc["lm_linear"]) * compute_bytes
    vision = pc["vision"] * compute_bytes
    n_lora = lora_params(config, lora_r) + (vision_lora_params(config, lora_r) if vision_lora else 0)
    lora = n_lora * 16  # fp32 weight + grad + AdamW m, v
    h, i, kv = a.hidden, a.intermediate, a.kv_dim
    per_token_layer = (16 * h + 3 * kv + 5 * i) * compute_bytes  # see module docstring; LoRA dropout copies incl.
    layer_full = tokens * per_token_layer
    if gradient_checkpointing:
        acts = a.layers * tokens * h * compute_bytes + layer_full  # saved layer inputs + one recomputed layer
    else:
        acts = a.layers * layer_full
    if n_answer is None:
        n_answer, _ = answer_tokens()
    # train.answer_only_loss projects only the answer positions (TrainConfig.answer_logits_only); else every token
    logit_tokens = batch * n_answer if answer_logits_only else tokens
    logits = logit_tokens * a.vocab * (compute_bytes + 4 + 4)
    patches = batch * frames * visual_per_frame * a.merge**2
    vision_peak = patches * a.v_embed * compute_bytes * (4 + a.v_mlp_ratio)  # one block's transient tensors
    vision_acts = 0
    if vision_lora:
        v_block = patches * a.v_embed * compute_bytes * (10 + 2 * a.v_mlp_ratio)
        vision_acts = (a.v_depth * patches * a.v_embed * compute_bytes + v_block if gradient_checkpointing
                       else a.v_depth * v_block)
    comp = {
        "weights_4bit": weights_4bit,
        "weights_full_precision": full,
        "vision_tower": vision,
        "lora_and_optimizer": lora,
        "activations": acts,
        "logits_and_loss": logits,
        "vision_forward_peak": vision_peak,
        "vision_lora_activations": vision_acts,
        "cuda_overhead": CUDA_OVERHEAD if cuda else 0,
    }
    comp["total"] = sum(comp.values())
    comp["_meta"] = {"logit_tokens": logit_tokens, "answer_logits_only": answer_logits_only,
                     "tokens_per_sample": seq, "text_tokens": n_text, "visual_tokens_per_frame": visual_per_frame,
                     "frames": frames, "batch": batch, "lora_params": n_lora, "vocab": a.vocab, "params": pc,
                     "gradient_checkpointing": gradient_checkpointing, "vision_lora": vision_lora}
    return comp


def model_name(config=None) -> str:
    """A label for the config: "Qwen2-VL-2B" for the default, else its architecture (e.g. Qwen2_5_VL)."""
    if config is None:
        return "Qwen2-VL-2B"
    if isinstance(config, (str, os.PathLike)):
        p = Path(config)
        config = json.loads((p / "config.json" if p.is_dir() else p).read_text())
    if not isinstance(config, dict):
        config = config.to_dict()
    arch_names = config.get("architectures") or [config.get("model_type", "model")]
    return str(arch_names[0]).removesuffix("ForConditionalGeneration")


def vram_table(config=None, *, batch: int = 2, frames: int = 8, visual_per_frame: int | None = None,
               n_text: int | None = None, text_exact: bool | None = None, lora_r: int = 16,
               gpus: tuple[tuple[str, float], ...] = GPUS, vision_lora: bool = False) -> list[dict]:
    """Rows (one per GPU x checkpointing on/off) with the components in GB and whether the total fits."""
    if visual_per_frame is None:
        visual_per_frame = visual_tokens_per_frame()
    if n_text is None:
        n_text, text_exact = text_tokens()
    rows = []
    for gpu, mem in gpus:
        for ckpt in (True, False):
            # T4 has no bf16: fp16 (2 B) either way, so the compute dtype does not change the numbers
            c = estimate(config, batch=batch, frames=frames, visual_per_frame=visual_per_frame, n_text=n_text,
                         lora_r=lora_r, gradient_checkpointing=ckpt, vision_lora=vision_lora)
            row = {"gpu": gpu, "gpu_gb": mem, "gradient_checkpointing": ckpt}
            row.update({k: round(v / GB, 2) for k, v in c.items() if not k.startswith("_")})
            row["fits"] = c["total"] <= mem * GB * 0.95  # 5 % headroom
            row["meta"] = dict(c["_meta"], text_tokens_exact=bool(text_exact), model=model_name(config))
            rows.append(row)
    return rows


def vram_math(rows: list[dict] | None = None, vision_rows: list[dict] | None = None) -> str:
    """The notebook's ``# VRAM MATH`` lines (T4 with checkpointing first, then the other cases; then, given
    ``vision_rows`` from ``vram_table(vision_lora=True)``, the same cases with LoRA on the vision tower too)."""
    rows = rows or vram_table()
    r = rows[0]
    m = r["meta"]
    p = m["params"]
    lines = [
        f"# {m.get('model', 'Qwen2-VL-2B')}: {p['total'] / 1e9:.2f}B params (LM linear {p['lm_linear'] / 1e9:.2f}B in 4-bit, "
        f"embed {p['embed'] / 1e6:.0f}M tied, vision {p['vision'] / 1e6:.0f}M)",
        f"# One sample: {m['frames']} frames x {m['visual_tokens_per_frame']} visual tokens + {m['text_tokens']} text "
        f"tokens{'' if m['text_tokens_exact'] else ' (estimated)'} = {m['tokens_per_sample']} tokens; batch {m['batch']}",
        f"# Model weights (4-bit): {r['weights_4bit']:.2f} GB",
        f"# Embeddings/norms (fp32 after prepare_model_for_kbit_training): {r['weights_full_precision']:.2f} GB",
        f"# Vision tower (frozen, 16-bit): {r['vision_tower']:.2f} GB",
        f"# LoRA params + grads + AdamW states (r=16, {m['lora_params'] / 1e6:.1f}M params): "
        f"{r['lora_and_optimizer']:.2f} GB",
        f"# Activations (batch {m['batch']}, {m['frames']} frames, gradient checkpointing): {r['activations']:.2f} GB",
        f"# Logits + loss ({m['logit_tokens']} {'answer ' if m['answer_logits_only'] else ''}positions x vocab "
        f"{m['vocab']}, fp16 logits + fp32 copy + fp32 log-softmax): {r['logits_and_loss']:.2f} GB",
        f"# Vision forward peak + CUDA overhead: {r['vision_forward_peak'] + r['cuda_overhead']:.2f} GB",
        f"# Total: {r['total']:.2f} GB -> {r['gpu']} {r['gpu_gb']:.0f} GB: {'fits' if r['fits'] else 'does NOT fit'}",
    ]
    for o in rows[1:]:
        lines.append(f"# {o['gpu']} {o['gpu_gb']:.0f} GB, checkpointing {'on' if o['gradient_checkpointing'] else 'off'}:"
                     f" activations {o['activations']:.2f} GB, total {o['total']:.2f} GB -> "
                     f"{'fits' if o['fits'] else 'does NOT fit'}")
    for o in vision_rows or ():
        extra = o["meta"]["lora_params"] - r["meta"]["lora_params"]
        lines.append(f"# + vision LoRA ({extra / 1e6:.1f}M more LoRA params), {o['gpu']} {o['gpu_gb']:.0f} GB, "
                     f"checkpointing {'on' if o['gradient_checkpointing'] else 'off'}: vision activations "
                     f"{o['vision_lora_activations']:.2f} GB, total {o['total']:.2f} GB -> "
                     f"{'fits' if o['fits'] else 'does NOT fit'}")
    return "\n".join(lines)


def build_random_2b(out_dir: Path, tiny_dir: Path, dtype, device: str = "cuda", config_overrides: dict | None = None,
                    vision_overrides: dict | None = None) -> Path:
    """Qwen2-VL-2B architecture with random weights + the tiny tokenizer (its special-token ids wired in)."""
    import torch
    from transformers import AutoProcessor, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    proc = AutoProcessor.from_pretrained(tiny_dir)
    for sub in (proc.image_processor, getattr(proc, "video_processor", None)):
        if sub is None:
            continue
        sub.min_pixels = QWEN2VL_IMAGE_PROCESSOR["min_pixels"]
        sub.max_pixels = QWEN2VL_IMAGE_PROCESSOR["max_pixels"]
        if isinstance(getattr(sub, "size", None), dict):
            sub.size = {"shortest_edge": sub.min_pixels, "longest_edge": sub.max_pixels}
    tiny = json.loads((tiny_dir / "config.json").read_text())
    tok = proc.tokenizer
    ids = {k: tiny[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
    c, v = QWEN2VL_2B_CONFIG, QWEN2VL_2B_CONFIG["vision_config"]
    text_config = dict(
            vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
            num_hidden_layers=c["num_hidden_layers"], num_attention_heads=c["num_attention_heads"],
            num_key_value_heads=c["num_key_value_heads"], max_position_embeddings=c["max_position_embeddings"],
            rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0,
                             "mrope_section": c["rope_scaling"]["mrope_section"]},
            rms_norm_eps=1e-6, tie_word_embeddings=c["tie_word_embeddings"],
            bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"), eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
    )
    text_config.update(config_overrides or {})  # only for a CPU dry run of this script
    config = Qwen2VLConfig(
        text_config=text_config,
        vision_config=dict(dict(depth=v["depth"], embed_dim=v["embed_dim"], hidden_size=v["hidden_size"],
                                num_heads=v["num_heads"], mlp_ratio=v["mlp_ratio"], patch_size=v["patch_size"],
                                spatial_merge_size=v["spatial_merge_size"], temporal_patch_size=v["temporal_patch_size"]),
                           **(vision_overrides or {})),  # overrides: only for a CPU dry run
        tie_word_embeddings=c["tie_word_embeddings"],
        **ids,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2VLForConditionalGeneration(config).to(dtype)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out_dir)
    proc.save_pretrained(out_dir)
    del model
    torch.cuda.empty_cache()
    print(f"gpu_vram_check: random Qwen2-VL-2B architecture, {n / 1e9:.3f}B params, saved to {out_dir}")
    return out_dir


@dataclass
class VramRunConfig:
    """``python -m openpack_vlm.model.vram``'s settings (the flags are generated from these fields)."""

    config: str | None = setting(None, "config.json or model dir (default: Qwen2-VL-2B-Instruct values)")
    batch: int = setting(2, "clips per device step")
    frames: int = setting(8, "frames per clip (K)")


def main(argv=None) -> int:
    parser = build_parser(VramRunConfig, prog="python -m openpack_vlm.model.vram", description=__doc__.split("\n\n")[0])
    a, _ = parse(parser, argv)
    try:
        rows = vram_table(a.config, batch=a.batch, frames=a.frames)
        vision_rows = vram_table(a.config, batch=a.batch, frames=a.frames, vision_lora=True)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: cannot read model config: {e}", file=sys.stderr)
        return 2
    print(vram_math(rows, vision_rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
