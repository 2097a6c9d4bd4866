"""The one predictor used by evaluation and serving: sampled frames → a schema-valid ``Prediction``.

How an answer is made (the model never gets to write an invalid one):
1. The prompt (``prompt.build_messages(frame_indices)`` + generation prompt, images) is run ONCE; its KV cache is
   reused by every later step (copied and batch-expanded per batch of candidates; 3-D M-RoPE positions passed
   explicitly, so nothing depends on the model's stored ``rope_deltas``).
2. dominant operation: each of the 11 OpenPack names is scored as the continuation of the exact training-target
   prefix ``{"dominant_operation": "`` (summed token log-probs of the name and its closing ``",``); softmax over the
   11 sums → the chosen name and ``confidence`` = its probability.
3. span: every start frame 0..124 is scored after the prefix built from the chosen name, then every end frame
   start..124 after the chosen start (candidate scoring = exact argmax over the closed set of integers, always
   0 ≤ start ≤ end ≤ 124).
4. next operation: the 11 names scored after the prefix built from the chosen values; with a ``Grammar`` the
   model's distribution is fused with P(next | chosen dominant op) (``grammar.fuse``).
5. ``raw_text``: free greedy generation (bounded tokens, reusing the cache), kept for the record; ``repair`` says
   why it could not be used as an answer as is (invalid JSON, unknown name, bad span), None when it could.
Candidates are tokenised as complete target strings, exactly as in training, so BPE merges across the value
boundary are the ones the model learned.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..grammar import Grammar, argmax_id, fuse
from ..labels import ID_TO_NAME, NAME_TO_ID, NULL_NAME, OPERATION_IDS, OPERATION_NAMES
from ..prompt import build_messages, target_text
from ..schema import CLIP_FRAMES, Prediction
from ..contract import RunContract, assumed_contract, find_run
from ..data.sampling import SamplingConfig, sample_clip
from ..data.shards import jpeg_round_trip

DEFAULT_FUSE_WEIGHT = 0.3  # used only when no tuned weight is given or stored in the grammar's meta


class PredictError(ValueError):
    """Input the predictor cannot answer for (one-line message)."""


@dataclass
class PredictConfig:
    """Inference settings. Defaults = the real run."""

    fuse_weight: float | None = None  # grammar weight in [0,1]; None → grammar meta "fuse_weight", else 0.3
    fuse_mode: str = "linear"  # "linear" | "loglinear" (see grammar.fuse)
    free_text: bool = True  # also generate the free answer (raw_text); False saves ~40-120 decode steps per clip
    max_new_tokens: int = 128  # target JSON is ~45 tokens with Qwen's tokenizer, up to ~110 with the tiny BPE
    score_batch: int = 32  # candidates per forward: the prompt cache is copied per row (2B, 1.6k tokens: ~46 MB/row)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # predict_clip's frame choice, as in training
    jpeg_quality: int | None = 90  # predict_clip round-trips the sampled frames through the shards' JPEG (training
    #                                saw decoded JPEGs); None = raw frames. Set from the run contract.


@dataclass
class PredictResult:
    prediction: Prediction
    raw_text: str  # the model's free (greedy) answer, "" when free_text is off
    repair: str | None  # why raw_text was not a valid answer as is; None when it was (or free_text is off)
    scores: dict  # distributions and timings behind the prediction (see Predictor.predict)


# ------------------------------------------------------------------------------------------------ target-text pieces
_DUMMY = OPERATION_NAMES[0]


def _target(dom: str, start: int, end: int, nxt: str) -> str:
    return target_text({"dominant_operation": dom, "temporal_segment": {"start_frame": start, "end_frame": end},
                        "anticipated_next_operation": nxt})


def _cut_after_value(text: str, key: str, value: str) -> str:
    """``text`` up to and including ``"key": <value>`` and the punctuation glued to it (``",`` / ``},`` / ``"}``), i.e.
    up to the next space: the BPE pre-tokenizer boundary, so a candidate's tokens are those of the full target."""
    k = text.index(f'"{key}": ')
    v = k + len(f'"{key}": ')
    if text[v] == '"':
        v += 1
    if not text.startswith(value, v):
        raise AssertionError(f"target format changed: {value!r} not found after {key!r} in {text!r}")
    j = v + len(value)
    while j < len(text) and text[j] != " ":
        j += 1
    return text[:j]


def dominant_candidates() -> list[str]:
    return [_cut_after_value(_target(n, 0, 0, _DUMMY), "dominant_operation", n) for n in OPERATION_NAMES]


def start_candidates(dom: str) -> list[str]:
    return [_cut_after_value(_target(dom, s, s, _DUMMY), "start_frame", str(s)) for s in range(CLIP_FRAMES)]


def end_candidates(dom: str, start: int) -> list[str]:
    return [_cut_after_value(_target(dom, start, e, _DUMMY), "end_frame", str(e)) for e in range(start, CLIP_FRAMES)]


def next_candidates(dom: str, start: int, end: int) -> list[str]:
    return [_cut_after_value(_target(dom, start, end, n), "anticipated_next_operation", n) for n in OPERATION_NAMES]


def _softmax(logps: list[float]) -> list[float]:
    m = max(logps)
    ex = [math.exp(v - m) for v in logps]
    z = sum(ex)
    return [v / z for v in ex]


def check_raw_text(text: str) -> str | None:
    """None when the free answer is a valid target (JSON, the 3 keys, OpenPack names, a valid span), else why not."""
    s = text.strip()
    if s.startswith("```"):  # a fenced answer is still a repair
        return "wrapped in a code fence"
    try:
        d = json.loads(s)
    except json.JSONDecodeError as e:
        return f"invalid JSON ({e.msg})"
    if not isinstance(d, dict):
        return "JSON is not an object"
    for key in ("dominant_operation", "temporal_segment", "anticipated_next_operation"):
        if key not in d:
            return f"missing key {key}"
    for key in ("dominant_operation", "anticipated_next_operation"):
        if d[key] not in NAME_TO_ID:
            return f"unknown operation name {str(d[key])[:40]!r} in {key}"
    seg = d["temporal_segment"]
    if not isinstance(seg, dict) or set(seg) != {"start_frame", "end_frame"}:
        return "temporal_segment is not {start_frame, end_frame}"
    s0, e0 = seg["start_frame"], seg["end_frame"]
    if not (isinstance(s0, int) and isinstance(e0, int) and 0 <= s0 <= e0 <= CLIP_FRAMES - 1):
        return f"invalid span {s0!r}..{e0!r}"
    return None


def parse_raw_text(text: str) -> dict:
    """What the free answer says, read leniently (surrounding text/code fences ignored, aliases accepted):
    {"op": id|None, "span": (start, end)|None, "next": id|None}; a part that is missing or invalid is None.
    Scores the model as if its free text were trusted (evaluation's *_free_text systems)."""
    from ..evaluation.metrics import as_span, pred_id

    s = text.strip()
    d = None
    for cand in (s, s[s.find("{"): s.rfind("}") + 1]):
        try:
            d = json.loads(cand)
            break
        except (json.JSONDecodeError, ValueError):
            continue
    if not isinstance(d, dict):
        return {"op": None, "span": None, "next": None}
    return {"op": pred_id(d.get("dominant_operation")), "span": as_span(d.get("temporal_segment")),
            "next": pred_id(d.get("anticipated_next_operation"))}


# ------------------------------------------------------------------------------------------------------- predictor
def _core_model(model):
    """The Qwen2-VL model that owns ``get_rope_index`` (under a PeftModel, or the bare one)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    core = getattr(base, "model", base)
    if not hasattr(core, "get_rope_index"):
        raise PredictError(f"{type(base).__name__} has no get_rope_index: not a Qwen2-VL-style model")
    return core


def grammar_next(grammar: Grammar, scores: dict) -> dict[int, float]:
    """The grammar's next-op distribution for one answer: P(next | current) averaged over the model's dominant-op
    probabilities (``scores["dominant"]``). Used by the predictor and evaluation."""
    return grammar.expected_next_distribution({NAME_TO_ID[n]: p for n, p in scores["dominant"].items()})


def find_grammar(adapter: str | os.PathLike | None) -> Path | None:
    """Default grammar of an adapter: ``{adapter}/grammar.json``, else the run dir's ``{adapter}/../grammar.json``
    (training writes R/adapter and R/grammar.json); a run dir R itself is accepted too."""
    if adapter is None:
        return None
    a = Path(adapter)
    for p in (a / "grammar.json", a.parent / "grammar.json"):
        if p.is_file():
            return p
    return None


class Predictor:
    """Frames → ``PredictResult``. Thread-safe (one lock around model calls)."""

    def __init__(self, model, processor, grammar: Grammar | None = None, fuse_weight: float | None = None,
                 config: PredictConfig | None = None, info: dict | None = None):
        import torch

        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.grammar = grammar
        self.config = config or PredictConfig()
        w = fuse_weight if fuse_weight is not None else self.config.fuse_weight
        if w is None and grammar is not None:
            w = grammar.meta.get("fuse_weight")
        self.fuse_weight = float(DEFAULT_FUSE_WEIGHT if w is None else w)
        if not 0.0 <= self.fuse_weight <= 1.0:
            raise PredictError(f"fuse_weight must be in [0, 1], got {self.fuse_weight}")
        self.info = dict(info or {})
        self._lock = threading.Lock()
        self._core = _core_model(model)
        self._device = next(model.parameters()).device
        self._torch = torch
        eos = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self._stop_ids = {i for i in (eos, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id) if i is not None}
        self._pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self._dom_cands = dominant_candidates()

    @property
    def device(self):
        """The torch device the model's inputs go to (cuda:0, cpu)."""
        return self._device

    @classmethod
    def from_pretrained(cls, model_id: str, adapter: str | os.PathLike | None = None, quantization: str = "none",
                        device: str = "auto", grammar: str | os.PathLike | Grammar | None = "auto",
                        fuse_weight: float | None = None, config: PredictConfig | None = None,
                        run: str | os.PathLike | RunContract | None = "auto",
                        frames_per_clip: int | None = None) -> "Predictor":
        """Load through ``model.load_model`` and apply the run contract (contract.py).

        ``run="auto"``: the adapter's run.json (``find_run``); a path or a RunContract: that one; None: no contract
        (the code's defaults). With a contract, its K and sampler parameters, JPEG round trip, grammar (checked
        against the recorded sha256) and tuned fusion weight are used, and ``frames_per_clip`` (if given) must equal
        its K. An adapter without run.json loads with a warning naming the assumed values. ``grammar="auto"``: the
        contract's grammar, else the adapter's grammar.json (``find_grammar``); None: no grammar; a path or a
        Grammar: that one. ``fuse_weight`` overrides the contract's."""
        from ..data.letterbox import SIZE
        from .loading import ModelConfig, load_model

        contract = None
        if isinstance(run, RunContract):
            contract = run
        elif run == "auto":
            found = find_run(adapter)
            if found is not None:
                contract = RunContract.load(found)
            elif adapter is not None:
                contract = assumed_contract(str(adapter))
        elif run is not None:
            contract = RunContract.load(run)
        if contract is not None:
            contract.check(frame_size=SIZE, frames_per_clip=frames_per_clip)

        grammar_path = None
        if isinstance(grammar, str) and grammar == "auto":
            grammar_path = (contract.grammar_path() if contract is not None and contract.path else None)
            grammar_path = grammar_path or find_grammar(adapter)
            if grammar_path and contract is not None and contract.path is not None:
                contract.check_grammar(grammar_path)  # the tuned weight belongs to the recorded grammar
            g = Grammar.load(grammar_path) if grammar_path else None
        elif grammar is None or isinstance(grammar, Grammar):
            g = grammar
        else:
            grammar_path = Path(grammar)
            g = Grammar.load(grammar_path)

        config = copy.copy(config) if config is not None else PredictConfig()
        if contract is not None:
            config.sampling = contract.sampling_config()
            config.jpeg_quality = contract.data.jpeg_quality
            ev = contract.evaluation
            if ev is not None and ev.fuse_weight is not None and fuse_weight is None and config.fuse_weight is None:
                fuse_weight, config.fuse_mode = ev.fuse_weight, ev.fuse_mode  # the tuned pair, as evaluated
        elif frames_per_clip is not None:
            config.sampling = dataclasses.replace(config.sampling, k=frames_per_clip)

        model, processor = load_model(ModelConfig(model_id=model_id, quantization=quantization, device=device),
                                      adapter=adapter)
        info = {"model_id": model_id, "adapter": str(adapter) if adapter else None, "quantization": quantization,
                "grammar": str(grammar_path) if grammar_path else ("given" if g is not None else None),
                "run": contract.summary() if contract is not None else None}
        predictor = cls(model, processor, grammar=g, fuse_weight=fuse_weight, config=config, info=info)
        predictor.info["fuse_weight"] = predictor.fuse_weight if g is not None else None
        return predictor

    # -------------------------------------------------------------------------------------------- model plumbing
    def _encode_prompt(self, images, frame_indices):
        text = self.processor.apply_chat_template(build_messages(frame_indices), add_generation_prompt=True,
                                                  tokenize=False)
        inputs = self.processor(text=[text], images=list(images), return_tensors="pt")
        return {k: v.to(self._device) for k, v in inputs.items()}

    def _prefill(self, inputs):
        """One forward over the prompt → (cache, last-position log-probs, prompt length, rope delta)."""
        torch = self._torch
        rope_kwargs = {k: inputs[k] for k in ("image_grid_thw", "attention_mask", "mm_token_type_ids") if k in inputs}
        pos, delta = self._core.get_rope_index(inputs["input_ids"], **rope_kwargs)
        out = self.model(**inputs, position_ids=pos, use_cache=True, logits_to_keep=1)
        last = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        return out.cache, last, int(inputs["input_ids"].shape[1]), int(delta.reshape(-1)[0])

    def _forward_cached(self, cache, ids, delta, keep: int = 0):
        """Run (B, L) token ids after a copy of the prompt cache → fp32 logits of the last ``keep`` positions (all
        when 0): (B, keep, V). Keeping only the scored positions bounds memory (V = 151k for Qwen2-VL)."""
        torch = self._torch
        b, length = ids.shape
        c = copy.deepcopy(cache)
        if b > 1:
            c.batch_repeat_interleave(b)
        start = c.get_seq_length()
        pos = (torch.arange(start, start + length, device=self._device) + delta).view(1, 1, -1).expand(3, b, -1)
        mask = torch.ones(b, start + length, dtype=torch.long, device=self._device)
        out = self.model(input_ids=ids, cache=c, position_ids=pos, attention_mask=mask, use_cache=True,
                         logits_to_keep=keep)
        return out.logits.float()

    def score_texts(self, state, texts: list[str]) -> list[float]:
        """Summed log-prob of each assistant text's tokens after their common token prefix (the prefix is fed but
        not scored: it is the same for all candidates)."""
        torch = self._torch
        cache, last_logp, _, delta = state
        toks = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        cp = 0
        while all(len(t) > cp for t in toks) and len({t[cp] for t in toks}) == 1:
            cp += 1
        first = max(cp, 1)  # first token index scored from this forward (token 0 comes from the prompt's logits)
        scores: list[float] = []
        bs = max(1, int(self.config.score_batch))
        for i in range(0, len(toks), bs):
            chunk = toks[i:i + bs]
            width = max(len(t) for t in chunk)
            ids = torch.full((len(chunk), width), self._pad_id, dtype=torch.long, device=self._device)
            lens = torch.tensor([len(t) for t in chunk], device=self._device)
            for r, t in enumerate(chunk):  # right padding: causal attention keeps pads out of real positions
                ids[r, :len(t)] = torch.tensor(t, dtype=torch.long)
            total = torch.zeros(len(chunk), device=self._device)
            if cp == 0:
                total += last_logp[ids[:, 0]]
            if width > first:
                # token j is predicted at position j-1: keep positions first-1 .. width-1 (the last one is unused)
                logp = torch.log_softmax(self._forward_cached(cache, ids, delta, keep=width - first + 1), dim=-1)
                tgt = ids[:, first:]
                got = logp[:, :-1].gather(-1, tgt.unsqueeze(-1)).squeeze(-1)  # (B, width-first)
                j = torch.arange(first, width, device=self._device)
                total += torch.where(j.unsqueeze(0) < lens.unsqueeze(1), got, torch.zeros_like(got)).sum(-1)
            scores.extend(float(v) for v in total.cpu())
        return scores

    def _generate(self, state) -> str:
        """Greedy free answer from the prompt cache, stopping at <|im_end|> or max_new_tokens."""
        torch = self._torch
        cache, last_logp, prompt_len, delta = state
        c = copy.deepcopy(cache)
        out_ids: list[int] = []
        nxt = int(torch.argmax(last_logp))
        for _ in range(self.config.max_new_tokens):
            if nxt in self._stop_ids:
                break
            out_ids.append(nxt)
            start = c.get_seq_length()
            pos = torch.full((3, 1, 1), start + delta, dtype=torch.long, device=self._device)
            mask = torch.ones(1, start + 1, dtype=torch.long, device=self._device)
            ids = torch.tensor([[nxt]], dtype=torch.long, device=self._device)
            out = self.model(input_ids=ids, cache=c, position_ids=pos, attention_mask=mask, use_cache=True)
            c = out.cache
            nxt = int(torch.argmax(out.logits[0, -1]))
        return self.tokenizer.decode(out_ids, skip_special_tokens=True)

    # ------------------------------------------------------------------------------------------------ public API
    def predict(self, images: list, frame_indices: list[int], clip_id: str) -> PredictResult:
        """Answer for one clip's sampled frames (PIL images or HxWx3 uint8 arrays, in frame order).

        ``scores``: ``dominant`` / ``next_model`` / ``next_grammar`` / ``next_fused`` ({name: prob}),
        ``fuse_weight``, ``span_logprob`` (start + end), ``frame_indices``, ``seconds``.
        """
        from PIL import Image

        idx = [int(i) for i in frame_indices]
        if not idx:
            raise PredictError("no frames given")
        if len(images) != len(idx):
            raise PredictError(f"{len(images)} images for {len(idx)} frame indices")
        if idx != sorted(set(idx)) or idx[0] < 0 or idx[-1] > CLIP_FRAMES - 1:
            raise PredictError(f"frame indices must be sorted, unique, in 0..{CLIP_FRAMES - 1}: {idx}")
        imgs = [im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im, dtype=np.uint8))
                for im in images]
        imgs = [im.convert("RGB") for im in imgs]
        t0 = time.perf_counter()
        with self._lock, self._torch.inference_mode():
            state = self._prefill(self._encode_prompt(imgs, idx))
            dom_lp = self.score_texts(state, self._dom_cands)
            dom_p = _softmax(dom_lp)
            k = max(range(len(dom_p)), key=lambda i: (dom_p[i], -i))
            dom = OPERATION_NAMES[k]
            st_lp = self.score_texts(state, start_candidates(dom))
            start = max(range(CLIP_FRAMES), key=lambda s: (st_lp[s], -s))
            en_lp = self.score_texts(state, end_candidates(dom, start))
            j = max(range(len(en_lp)), key=lambda i: (en_lp[i], i))  # ties → the longer span
            end = start + j
            nx_lp = self.score_texts(state, next_candidates(dom, start, end))
            # the truth never names Null as the next operation (clips.py skips it): not a candidate. The dominant op
            # stays one: when the model names the clip's second operation as dominant (boundary clips), its "next"
            # guess of that same name is often the true next one (measured on the demo: masking it cost AA@1 0.14)
            nx_p = _softmax([lp if n != NULL_NAME else -math.inf for n, lp in zip(OPERATION_NAMES, nx_lp)])
            raw = self._generate(state) if self.config.free_text else ""
        next_model = {OPERATION_IDS[i]: p for i, p in enumerate(nx_p)}
        scores = {
            "dominant": {OPERATION_NAMES[i]: p for i, p in enumerate(dom_p)},
            "next_model": {ID_TO_NAME[i]: p for i, p in next_model.items()},
            "next_grammar": None,
            "next_fused": None,
            "fuse_weight": None,
            "span_logprob": st_lp[start] + en_lp[j],
            "frame_indices": idx,
        }
        nxt_id = argmax_id(next_model)
        if self.grammar is not None:
            g = grammar_next(self.grammar, scores)
            fused = fuse(next_model, g, self.fuse_weight, self.config.fuse_mode)
            nxt_id = argmax_id(fused)
            scores.update(next_grammar={ID_TO_NAME[i]: p for i, p in g.items()},
                          next_fused={ID_TO_NAME[i]: p for i, p in fused.items()}, fuse_weight=self.fuse_weight)
        scores["seconds"] = time.perf_counter() - t0
        pred = Prediction(clip_id=str(clip_id), dominant_operation=dom,
                          temporal_segment={"start_frame": start, "end_frame": end},
                          anticipated_next_operation=ID_TO_NAME[nxt_id],
                          confidence=min(1.0, max(0.0, float(dom_p[k]))))
        return PredictResult(prediction=pred, raw_text=raw,
                             repair=check_raw_text(raw) if self.config.free_text else None, scores=scores)

    def predict_clip(self, frames: np.ndarray, clip_id: str) -> PredictResult:
        """Answer for a whole (125, H, W, 3) uint8 clip: frames chosen by ``sampling.sample_clip`` as in training
        (the run contract's K and parameters), then through the shards' JPEG encode/decode at the run's quality, so
        the model sees what it was trained on."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[0] != CLIP_FRAMES or frames.shape[-1] != 3:
            raise PredictError(f"clip must be ({CLIP_FRAMES}, H, W, 3) frames, got shape {frames.shape}")
        if frames.dtype != np.uint8:
            raise PredictError(f"clip frames must be uint8, got {frames.dtype}")
        idx = sample_clip(frames, self.config.sampling)
        q = self.config.jpeg_quality
        images = [frames[i] if q is None else jpeg_round_trip(frames[i], q) for i in idx]
        return self.predict(images, idx, clip_id)
