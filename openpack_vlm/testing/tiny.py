"""The tiny offline models the tests and the CPU demo run on (no hub, no download): real transformers classes with
tiny layers, built in code, cached, and loaded with ``from_pretrained`` like the real ones.

``tiny``       a random Qwen2-VL with a 512-token BPE trained in code on the project's prompt (4 visual tokens per
               frame): cheap, for everything where the tokenizer does not matter;
``tiny-real``  the same layers with the REAL Qwen2-VL-2B-Instruct tokenizer, chat template and processor settings
               (vendored in ``assets/``; vocabulary 151936, 144 visual tokens per 336x336 frame);
``tiny-pretrained``  ``tiny-real`` with its vision tower pre-trained on a separate synthetic corpus (``pretrain.py``):
               the tiny base that already sees, which the CPU demo fine-tunes;
``build_tiny_model(family="qwen2_5_vl", base_config=...)``  a tiny Qwen2.5-VL scaled down from a real config.json.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from ..io_utils import atomic_path
from ..labels import OPERATION_NAMES
from ..prompt import USER_PREFIX, USER_SUFFIX, frame_label, system_prompt, target_text
from ..schema import CLIP_FRAMES

TINY_MODEL_ID = "tiny"
TINY_DIRNAME = "tiny-qwen2vl"
TINY_REAL_ID = "tiny-real"  # tiny random layers + the real Qwen2-VL-2B-Instruct tokenizer, template and processor
TINY_REAL_DIRNAME = "tiny-real-qwen2vl"
REAL_FILES = Path(__file__).parents[1] / "model" / "assets" / "qwen2-vl-2b-instruct"  # vendored hub files (PROVENANCE.md there)
TINY_PRETRAINED_ID = "tiny-pretrained"  # tiny-real + a vision tower pre-trained on its own corpus (pretrain.py)
TINY_VERSION = 1  # bump when the tiny recipe changes: the cache is rebuilt

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


def cache_dir() -> Path:
    return Path(os.environ.get("OPENPACK_VLM_CACHE") or Path.home() / ".cache" / "openpack-vlm")


def _tokenizer_corpus(seed: int) -> list[str]:
    """Text the tiny BPE is trained on: the real prompt, chat-template words, class names, digits and target JSON."""
    import random

    rng = random.Random(seed)
    # the "clip" wording, the corpus the cached tiny tokenizers were built from (a new word costs a few byte tokens)
    lines = [system_prompt("clip"), USER_PREFIX, USER_SUFFIX, "system", "user", "assistant", "You are a helpful assistant."]
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


def cached_build(dirname: str, is_current, build) -> Path:
    """``cache_dir()/dirname``, built by ``build(tmp_dir)`` unless ``is_current(meta)`` holds for the
    ``openpack_tiny.json`` already there (file lock + temp dir + one rename; concurrent callers wait)."""
    import fcntl

    base = cache_dir()
    base.mkdir(parents=True, exist_ok=True)
    final = base / dirname

    def ok() -> bool:
        try:
            return bool(is_current(json.loads((final / "openpack_tiny.json").read_text())))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False

    if ok():
        return final
    with open(base / f"{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ok():
            return final
        with atomic_path(final, directory=True) as tmp:  # replaces a stale version in one rename
            build(tmp)
    return final


def tiny_cached(seed: int = 0, tokenizer: str = "tiny") -> Path:
    """Build the tiny model once into the cache."""
    return cached_build(TINY_REAL_DIRNAME if tokenizer == "real" else TINY_DIRNAME,
                        lambda meta: meta.get("version") == TINY_VERSION,
                        lambda tmp: build_tiny_model(tmp, seed=seed, tokenizer=tokenizer))


def is_tiny(model_id: str) -> bool:
    """Whether ``model_id`` ("tiny", "tiny-real" or a directory) is a tiny random model built by ``build_tiny_model``."""
    if model_id in (TINY_MODEL_ID, TINY_REAL_ID, TINY_PRETRAINED_ID):
        return True
    return (Path(model_id) / "openpack_tiny.json").is_file()
