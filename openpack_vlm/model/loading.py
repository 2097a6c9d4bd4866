"""Model side: the base Qwen2-VL (full precision or 4-bit NF4), LoRA adapters, and a tiny random Qwen2-VL for tests.

The real run loads ``Qwen/Qwen2-VL-2B-Instruct``; tests and the CPU demo load ``"tiny"``: a randomly initialised
``Qwen2VLForConditionalGeneration`` of the real class, with a byte-level BPE tokenizer trained in code and the real
``Qwen2VLProcessor``, saved with ``save_pretrained`` and loaded back through the same ``from_pretrained`` calls as the
real model (``AutoProcessor`` / ``AutoModelForImageTextToText``).

QLoRA recipe (``load_model(ModelConfig(quantization="4bit"), for_training=True)``):
  * language-model linear layers in 4-bit NF4 with double quantisation (bitsandbytes), compute dtype bf16 where the
    GPU supports it, else fp16 (T4);
  * the vision tower (``model.visual``) and ``lm_head`` stay unquantised (``llm_int8_skip_modules`` patterns are
    matched from the start of the module path, so the pattern must be ``model.visual``, not ``visual``);
  * ``prepare_model_for_kbit_training`` (gradient checkpointing, input grads), then LoRA on the language model's
    q/k/v/o/gate/up/down projections only; the vision tower stays frozen.
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ..io_utils import atomic_path, one_line

REAL_MODEL_ID = "Qwen/Qwen2-VL-2B-Instruct"
TINY_MODEL_ID = "tiny"
TINY_DIRNAME = "tiny-qwen2vl"
TINY_REAL_ID = "tiny-real"  # tiny random layers + the real Qwen2-VL-2B-Instruct tokenizer, template and processor
TINY_REAL_DIRNAME = "tiny-real-qwen2vl"
REAL_FILES = Path(__file__).parent / "assets" / "qwen2-vl-2b-instruct"  # vendored hub files (PROVENANCE.md there)
TINY_VERSION = 1  # bump when the tiny recipe changes: the cache is rebuilt

# Language-model projections LoRA adapts. Matched as a regex on the full module path so that only modules under
# the language model are adapted (the vision tower's qkv/proj/fc1/fc2 and the merger stay frozen).
LM_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Modules bitsandbytes must leave in full precision. Patterns match from the start of the module path.
BNB_SKIP_MODULES = ("model.visual", "lm_head")

# Qwen2-VL's chat template (as shipped with Qwen2-VL-*-Instruct): one <|vision_start|><|image_pad|><|vision_end|> per
# image; the processor expands <|image_pad|> to the image's visual tokens.
QWEN2VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2's special tokens, in Qwen's id order (ids 151643.. in the real vocab; 0.. in the tiny one).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Tiny model: frames of 336x336 px are resized to 56x56 px (4 patches of 28 px -> 4 visual tokens per frame after
# the 2x2 merge) so a 8-frame clip costs 32 visual tokens on CPU.
TINY_PIXELS = 56 * 56
TINY_VOCAB = 512


class ModelLoadError(RuntimeError):
    """A model/adapter cannot be loaded as asked (one-line message)."""


@dataclass
class ModelConfig:
    """How to load the base model and which LoRA to put on it. Defaults = the real QLoRA run on Qwen2-VL-2B."""

    model_id: str = REAL_MODEL_ID  # hub id, local dir, or "tiny"
    quantization: str = "4bit"  # "4bit" (NF4 + double quant, needs CUDA) | "none" (full precision)
    dtype: str = "auto"  # "auto" = bf16 if the GPU supports it, fp16 on T4, fp32 on CPU | "bf16" | "fp16" | "fp32"
    attn_implementation: str = "sdpa"  # T4 has no FlashAttention-2; sdpa is fast and memory-efficient on both
    device: str = "auto"  # "auto" = cuda:LOCAL_RANK when CUDA, else cpu | "cpu" | "cuda"
    lora_r: int = 16  # rank 16: ~18M trainable params on 2B, fits T4 with batch 2
    lora_alpha: int = 32  # alpha = 2r, the usual QLoRA scaling
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = LM_LINEAR  # language-model projections only; vision tower frozen
    modules_to_save: tuple[str, ...] = ()  # e.g. ("lm_head",) for the tiny model; never for 2B (233M-param head)
    gradient_checkpointing: bool = True  # recompute layer activations: ~5x less activation memory at batch 2

    def to_json(self) -> dict:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        d["modules_to_save"] = list(self.modules_to_save)
        return d


# ----------------------------------------------------------------------------------------------------------- tiny model
def cache_dir() -> Path:
    return Path(os.environ.get("OPENPACK_VLM_CACHE") or Path.home() / ".cache" / "openpack-vlm")


def _tokenizer_corpus(seed: int) -> list[str]:
    """Text the tiny BPE is trained on: the real prompt, chat-template words, class names, digits and target JSON."""
    import random

    from ..labels import OPERATION_NAMES
    from ..prompt import SYSTEM_PROMPT, USER_PREFIX, USER_SUFFIX, frame_label, target_text
    from ..schema import CLIP_FRAMES

    rng = random.Random(seed)
    lines = [SYSTEM_PROMPT, USER_PREFIX, USER_SUFFIX, "system", "user", "assistant", "You are a helpful assistant."]
    lines += list(OPERATION_NAMES) + [str(i) for i in range(CLIP_FRAMES)]
    for _ in range(400):
        a, b = sorted(rng.sample(range(CLIP_FRAMES), 2))
        lines.append(
            target_text(
                {
                    "dominant_operation": rng.choice(OPERATION_NAMES),
                    "temporal_segment": {"start_frame": a, "end_frame": b},
                    "anticipated_next_operation": rng.choice(OPERATION_NAMES),
                }
            )
        )
        idx = sorted(rng.sample(range(CLIP_FRAMES), 8))
        lines.append(" ".join(frame_label(i) for i in idx))
    return lines


def _build_tokenizer(seed: int):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from tokenizers import Regex
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tokenizer_corpus(seed), trainer=trainer)
    spec = json.loads(tok.to_str())["model"]
    vocab: dict[str, int] = spec["vocab"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in spec["merges"]]
    qtok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
    )
    qtok.chat_template = QWEN2VL_CHAT_TEMPLATE
    return qtok


# The real Qwen2.5-VL-3B-Instruct config.json (tests/data) scaled down: same keys, window attention in the vision tower
# (full attention in blocks 1 and 3 of 4, as the real one has in 7/15/23/31 of 32), gated vision MLP.
QWEN25VL_TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=4096, max_window_layers=2,
                          rope_scaling={"type": "mrope", "mrope_section": [4, 2, 2]})
QWEN25VL_TINY_VISION = dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                            fullatt_block_indexes=[1, 3])


@functools.lru_cache(maxsize=1)
def real_processor():
    """The real Qwen2-VL-2B-Instruct processor (tokenizer, chat template, image processor settings), offline; loaded
    once per process (~0.4 s)."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(REAL_FILES)


def build_tiny_model(out_dir: str | os.PathLike, seed: int = 0, family: str = "qwen2_vl",
                     base_config: str | os.PathLike | None = None, tokenizer: str = "tiny") -> Path:
    """Write a tiny random Qwen2-VL (real classes: config, model, Qwen2Tokenizer, Qwen2VLProcessor) to ``out_dir``.

    ~0.25M parameters; 336x336 frames become 56x56 (4 visual tokens each). Loadable offline with
    ``AutoProcessor.from_pretrained(out_dir)`` / ``AutoModelForImageTextToText.from_pretrained(out_dir)``.
    ``family="qwen2_5_vl"``: a tiny Qwen2.5-VL instead, made from a real Qwen2.5-VL ``config.json`` (``base_config``)
    with only its sizes scaled down (``QWEN25VL_TINY_*``), and a Qwen2_5_VLProcessor.
    ``tokenizer="real"`` (the ``tiny-real`` model): the real Qwen2-VL-2B-Instruct tokenizer (vocabulary 151936,
    special ids 151643-151656), chat template and processor settings (144 visual tokens per 336x336 frame) from
    ``REAL_FILES``, with the same tiny layers; its embeddings are tied to the output head, as in the real 2B.
    """
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    if family not in ("qwen2_vl", "qwen2_5_vl"):
        raise ValueError(f"unknown tiny model family {family!r}: qwen2_vl or qwen2_5_vl")
    if tokenizer not in ("tiny", "real"):
        raise ValueError(f"unknown tokenizer {tokenizer!r}: tiny or real")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    real_proc = real_processor() if tokenizer == "real" else None
    tok_name = tokenizer
    tokenizer = real_proc.tokenizer if real_proc is not None else _build_tokenizer(seed)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    vocab = json.loads((REAL_FILES / "config.json").read_text())["vocab_size"] if real_proc else len(tokenizer)
    tied = real_proc is not None
    special = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                   vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    if family == "qwen2_5_vl":
        if base_config is None:
            raise ValueError("a tiny Qwen2.5-VL is scaled down from a real config.json: pass base_config")
        real = json.loads(Path(base_config).read_text())
        cfg = {**real, **QWEN25VL_TINY_TEXT, **special, "vocab_size": vocab,
               "vision_token_id": ids["<|vision_pad|>"], "bos_token_id": ids["<|endoftext|>"],
               "eos_token_id": ids["<|im_end|>"], "tie_word_embeddings": tied,
               "vision_config": {**real["vision_config"], **QWEN25VL_TINY_VISION}}
        config, model_cls, processor_cls = Qwen2_5_VLConfig(**cfg), Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    else:
        config = Qwen2VLConfig(
            text_config=dict(
                vocab_size=vocab,
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=4096,
                rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [4, 2, 2]},
                bos_token_id=ids["<|endoftext|>"],
                eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"],
                tie_word_embeddings=tied,
            ),
            vision_config=dict(
                depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14, spatial_merge_size=2,
                temporal_patch_size=2,
            ),
            tie_word_embeddings=tied,
            **special,
        )
        model_cls, processor_cls = Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = ids["<|endoftext|>"]
    if real_proc is not None and family == "qwen2_vl":
        processor = real_proc  # the real processor as it is
    else:
        pixel_kw = dict(min_pixels=TINY_PIXELS, max_pixels=TINY_PIXELS)
        processor = processor_cls(
            image_processor=Qwen2VLImageProcessor(**(pixel_kw if real_proc is None else {})),
            tokenizer=tokenizer,
            video_processor=Qwen2VLVideoProcessor(**(pixel_kw if real_proc is None else {})),
            chat_template=QWEN2VL_CHAT_TEMPLATE,
        )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "openpack_tiny.json").write_text(json.dumps({"version": TINY_VERSION, "seed": seed, "family": family,
                                                        "tokenizer": tok_name}))
    return out


def _tiny_cached(seed: int = 0, tokenizer: str = "tiny") -> Path:
    """Build the tiny model once into the cache (file lock + temp dir + rename; concurrent callers wait)."""
    import fcntl

    base = cache_dir()
    base.mkdir(parents=True, exist_ok=True)
    final = base / (TINY_REAL_DIRNAME if tokenizer == "real" else TINY_DIRNAME)

    def ok() -> bool:
        try:
            return json.loads((final / "openpack_tiny.json").read_text()).get("version") == TINY_VERSION
        except (OSError, ValueError):
            return False

    if ok():
        return final
    with open(base / f"{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ok():
            return final
        with atomic_path(final, directory=True) as tmp:  # replaces a stale version in one rename
            build_tiny_model(tmp, seed=seed, tokenizer=tokenizer)
    return final


def resolve_model_id(model_id: str) -> str:
    """``"tiny"`` / ``"tiny-real"`` -> local dir of that tiny model (built on first use); anything else unchanged."""
    if model_id == TINY_MODEL_ID:
        return str(_tiny_cached())
    if model_id == TINY_REAL_ID:
        return str(_tiny_cached(tokenizer="real"))
    return model_id


def is_tiny(model_id: str) -> bool:
    """Whether ``model_id`` ("tiny", "tiny-real" or a directory) is a tiny random model built by ``build_tiny_model``."""
    if model_id in (TINY_MODEL_ID, TINY_REAL_ID):
        return True
    return (Path(model_id) / "openpack_tiny.json").is_file()


# -------------------------------------------------------------------------------------------------------------- loading
def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} asked for but CUDA is not available")
    return device


def pick_dtype(dtype: str = "auto", device: str = "cpu"):
    """Compute dtype: bf16 on GPUs that support it (A100/H100), fp16 on T4 (no bf16), fp32 on CPU."""
    import torch

    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if dtype in table:
        return table[dtype]
    if dtype != "auto":
        raise ModelLoadError(f"unknown dtype {dtype!r}; use auto, bf16, fp16 or fp32")
    if device.startswith("cuda"):
        # native bf16 only (compute capability >= 8: A100/H100); the default also counts T4's slow emulation
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return torch.float32


def bnb_config(compute_dtype):
    """4-bit NF4 + double quantisation; vision tower and lm_head kept in full precision."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",  # NF4: information-optimal for normally distributed weights (QLoRA paper)
        bnb_4bit_use_double_quant=True,  # quantise the quantisation constants too: ~0.37 bit/param saved
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=list(BNB_SKIP_MODULES),
    )


def load_processor(model_id: str):
    from transformers import AutoProcessor

    path = resolve_model_id(model_id)
    try:
        return AutoProcessor.from_pretrained(path)
    except OSError as e:
        raise ModelLoadError(f"cannot load processor for {model_id!r} ({path}): {one_line(e)}") from None


def lora_config(cfg: ModelConfig):
    from peft import LoraConfig

    # regex on the full module path: only language-model projections (vision blocks use qkv/proj/fc1/fc2 anyway)
    target = r".*language_model.*\.(" + "|".join(cfg.target_modules) + r")$"
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=target,
        modules_to_save=list(cfg.modules_to_save) or None,
        bias="none",
        task_type="CAUSAL_LM",
    )


def load_model(cfg: ModelConfig, adapter: str | os.PathLike | None = None, for_training: bool = False):
    """Load (model, processor). ``for_training``: a new trainable LoRA (or ``adapter`` made trainable);
    otherwise the base model, with ``adapter`` (a saved LoRA dir) attached for inference when given."""
    import torch
    from transformers import AutoModelForImageTextToText

    if cfg.quantization not in ("4bit", "none"):
        raise ModelLoadError(f"unknown quantization {cfg.quantization!r}; use 4bit or none")
    device = pick_device(cfg.device)
    if cfg.quantization == "4bit" and cfg.device == "auto" and not device.startswith("cuda"):
        raise ModelLoadError("4-bit needs CUDA; use --quantization none")
    dtype = pick_dtype(cfg.dtype, device)
    path = resolve_model_id(cfg.model_id)
    processor = load_processor(cfg.model_id)
    kwargs: dict = dict(dtype=dtype, attn_implementation=cfg.attn_implementation, device_map={"": device})
    if cfg.quantization == "4bit":
        kwargs["quantization_config"] = bnb_config(dtype)
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    except OSError as e:
        raise ModelLoadError(f"cannot load model {cfg.model_id!r} ({path}): {one_line(e)}") from None

    if for_training:
        from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

        gc_kwargs = {"use_reentrant": False}  # non-reentrant checkpointing works with frozen inputs and DDP
        if cfg.quantization == "4bit":
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=cfg.gradient_checkpointing, gradient_checkpointing_kwargs=gc_kwargs
            )
            # prepare_model_for_kbit_training upcasts every non-4-bit weight to fp32; the frozen vision tower needs
            # no fp32 master weights (no grads flow into it), so keep it in the compute dtype: -1.3 GB on 2B.
            model.model.visual.to(dtype)
            # bitsandbytes' Linear4bit.forward casts its bias in place to the compute dtype at the first step; do it
            # now, so the frozen base weights stay bit-identical during training (checked by scripts/gpu_smoke.py).
            import bitsandbytes as bnb

            for m in model.modules():
                if isinstance(m, bnb.nn.Linear4bit) and m.bias is not None and m.bias.dtype != dtype:
                    m.bias.data = m.bias.data.to(dtype)
        else:
            for p in model.parameters():
                p.requires_grad_(False)
            if cfg.gradient_checkpointing:
                if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x name
                    model.activation_checkpointing_enable(activation_checkpointing_kwargs=gc_kwargs)
                else:
                    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
        if adapter is not None:
            model = PeftModel.from_pretrained(model, str(adapter_dir(adapter)), is_trainable=True)
        else:
            model = get_peft_model(model, lora_config(cfg))
        for p in model.parameters():  # trainable weights in fp32: AMP's grad scaler refuses fp16 grads
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
    elif adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir(adapter)))
        model.eval()
    else:
        model.eval()
    return model, processor


def adapter_dir(adapter: str | os.PathLike) -> Path:
    """The LoRA adapter folder of ``adapter`` (a training run dir R resolves to R/adapter); ModelLoadError if none."""
    p = Path(adapter)
    if (p / "adapter" / "adapter_config.json").is_file():  # a training run dir R -> R/adapter
        p = p / "adapter"
    if not (p / "adapter_config.json").is_file():
        raise ModelLoadError(f"no LoRA adapter at {p} (expected {p / 'adapter_config.json'})")
    return p


def trainable_summary(model) -> dict:
    """Trainable / total parameter counts (4-bit params counted as stored elements x 2)."""
    total = trainable = 0
    for p in model.parameters():
        n = p.numel() * (2 if p.__class__.__name__ == "Params4bit" else 1)
        total += n
        trainable += n if p.requires_grad else 0
    return {"trainable": trainable, "total": total, "fraction": trainable / max(total, 1)}


def quantized_modules(model) -> list[str]:
    """Names of modules that bitsandbytes replaced by 4-bit layers."""
    try:
        import bitsandbytes as bnb
    except ImportError:  # no bitsandbytes: nothing can be quantised
        return []
    return [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]  # not peft's LoRA wrapper


__all__ = [
    "REAL_MODEL_ID",
    "TINY_MODEL_ID",
    "ModelConfig",
    "ModelLoadError",
    "build_tiny_model",
    "resolve_model_id",
    "is_tiny",
    "load_processor",
    "load_model",
    "bnb_config",
    "lora_config",
    "pick_device",
    "pick_dtype",
    "trainable_summary",
    "quantized_modules",
]
