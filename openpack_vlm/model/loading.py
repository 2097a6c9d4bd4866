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
    q/k/v/o/gate/up/down projections; the vision tower stays frozen unless ``vision_lora`` also puts LoRA on its
    blocks' attention (qkv, proj) and MLP (fc1/fc2; gate/up/down in Qwen2.5-VL) and on the merger's two linears
    (as 2U1's ``--vision_lora``; vLLM serves such adapters since PR #26674). Skeleton renders are far from the photos
    the pretrained tower saw, so the 2B recipe for the pose path can adapt the tower instead of only reading it.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ..io_utils import one_line
from ..platform_check import explain_no_cuda
from ..testing.pretrain import pretrained_cached
from ..testing.tiny import TINY_MODEL_ID, TINY_PRETRAINED_ID, TINY_REAL_ID, tiny_cached
from . import frame_head
from .frame_head import FRAME_HEAD

REAL_MODEL_ID = "Qwen/Qwen2-VL-2B-Instruct"

# Language-model projections LoRA adapts. Matched as a regex on the full module path so that only modules under
# the language model are adapted (the vision tower's qkv/proj/fc1/fc2 and the merger stay frozen).
LM_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Vision-tower linears vision_lora adapts (full module path below ``visual.``): each block's attention and MLP
# (Qwen2-VL fc1/fc2, Qwen2.5-VL gate/up/down) and the merger's two linears (``merger.mlp.0`` / ``.2``). The patch
# embedding (a Conv3d) and the norms stay frozen.
VISION_LINEAR_RE = r"visual\.(blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2|gate_proj|up_proj|down_proj))|merger\.mlp\.(0|2))"
# Modules bitsandbytes must leave in full precision. Patterns match from the start of the module path.
BNB_SKIP_MODULES = ("model.visual", "lm_head")

# Qwen2-VL's chat template (as shipped with Qwen2-VL-*-Instruct): one <|vision_start|><|image_pad|><|vision_end|> per
# image; the processor expands <|image_pad|> to the image's visual tokens.
class ModelLoadError(RuntimeError):
    """A model/adapter cannot be loaded as asked (one-line message)."""


def resolve_model_id(model_id: str) -> str:
    """``"tiny"`` / ``"tiny-real"`` / ``"tiny-pretrained"`` -> local dir of that tiny model (built on first use);
    anything else unchanged."""
    if model_id == TINY_MODEL_ID:
        return str(tiny_cached())
    if model_id == TINY_REAL_ID:
        return str(tiny_cached(tokenizer="real"))
    if model_id == TINY_PRETRAINED_ID:
        return str(pretrained_cached())
    return model_id


def tiny_pretrain_meta(model_id: str) -> dict | None:
    """What ``pretrain.py`` recorded for a pre-trained tiny base (corpus, objective, steps, R^2); None otherwise."""
    try:
        meta = json.loads((Path(resolve_model_id(model_id)) / "openpack_tiny.json").read_text())
    except (OSError, ValueError):
        return None
    return meta.get("pretrained")


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
    target_modules: tuple[str, ...] = LM_LINEAR  # language-model projections
    vision_lora: bool = False  # also LoRA on the vision tower's attention + MLP and the merger (VISION_LINEAR_RE)
    modules_to_save: tuple[str, ...] = ()  # e.g. ("lm_head",) for the tiny model; never for 2B (233M-param head)
    frame_head: bool = False  # train a frame head (frame_head.py) with the adapter: 11 x hidden weights, saved in it
    gradient_checkpointing: bool = True  # recompute layer activations: ~5x less activation memory at batch 2

    def to_json(self) -> dict:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        d["modules_to_save"] = list(self.modules_to_save)
        return d


# -------------------------------------------------------------------------------------------------------------- loading
def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} asked for but CUDA is not available: {explain_no_cuda()}")
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

    # regex on the full module path: language-model projections (vision blocks use qkv/proj/fc1/fc2 anyway), plus
    # the vision tower's linears when asked (full path: the LM's q_proj must not match under visual, nor vice versa)
    target = r".*language_model.*\.(" + "|".join(cfg.target_modules) + r")"
    if cfg.vision_lora:
        target = rf"({target}|.*{VISION_LINEAR_RE})"
    target += "$"
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=target,
        modules_to_save=list(cfg.modules_to_save) + ([FRAME_HEAD] if cfg.frame_head else []) or None,
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
        raise ModelLoadError(f"4-bit needs CUDA: {explain_no_cuda()}; or use --quantization none (CPU)")
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
            _attach_saved_head(model, adapter)
            model = PeftModel.from_pretrained(model, str(adapter_dir(adapter)), is_trainable=True)
        else:
            if cfg.frame_head:
                frame_head.attach(model)
            model = get_peft_model(model, lora_config(cfg))
        for p in model.parameters():  # trainable weights in fp32: AMP's grad scaler refuses fp16 grads
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
    elif adapter is not None:
        from peft import PeftModel

        _attach_saved_head(model, adapter)
        model = PeftModel.from_pretrained(model, str(adapter_dir(adapter)))
        model.eval()
    else:
        model.eval()
    return model, processor


def _attach_saved_head(model, adapter) -> None:
    """An adapter trained with a frame head carries its weights (modules_to_save): the base model needs the module
    before PEFT can load them into it."""
    try:
        conf = json.loads((adapter_dir(adapter) / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return  # PEFT's own loading names the problem
    if frame_head.adapter_has_head(conf):
        frame_head.attach(model)


# a Hub repo id (user or org / name), optionally @revision: letters, digits, - _ . (the Hub's own rule, 96 chars max)
HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})(?:@(?P<rev>[\w./-]+))?$")


def hub_id(value: str | os.PathLike | None) -> tuple[str, str | None] | None:
    """(repo_id, revision) when ``value`` names a Hub repo rather than a local path, else None. A path that exists
    locally always wins, so ``runs/adapter`` is a folder even though it looks like an id."""
    if value is None or Path(value).exists():
        return None
    s = str(value)
    m = HUB_ID.match(s)
    if not m or s.startswith((".", "/", "~")):
        return None
    return m.group("repo"), m.group("rev")


def resolve_adapter(adapter: str | os.PathLike | None) -> str | os.PathLike | None:
    """A local adapter path as given; a Hub id → its snapshot folder in the HF cache (downloaded once)."""
    ident = hub_id(adapter)
    if ident is None:
        return adapter
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo, rev = ident
    try:
        return snapshot_download(repo, revision=rev)
    except LocalEntryNotFoundError:
        raise ModelLoadError(f"adapter {adapter!r} is neither a local folder nor in the HF cache"
                       + (" (HF_HUB_OFFLINE=1: nothing is downloaded)" if os.environ.get("HF_HUB_OFFLINE") == "1"
                          else "")) from None
    except RepositoryNotFoundError:
        raise ModelLoadError(f"adapter {adapter!r}: no such Hub repo (or it is private: set HF_TOKEN)") from None
    except (HfHubHTTPError, OSError) as e:
        raise ModelLoadError(f"adapter {adapter!r} could not be downloaded: {one_line(e, 200)}") from None


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
    "ModelConfig",
    "ModelLoadError",
    "load_processor",
    "load_model",
    "bnb_config",
    "lora_config",
    "pick_device",
    "pick_dtype",
    "trainable_summary",
    "quantized_modules",
]
