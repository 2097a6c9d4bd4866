"""The one predictor used by evaluation and serving: sampled frames → a schema-valid ``Prediction``.

How an answer is made (the model never gets to write an invalid one):
1. The prompt (``prompt.build_messages(frame_indices)`` + generation prompt, images) is run ONCE into a preallocated
   (static) KV cache; every later step appends its tokens after the prompt and is rolled back afterwards (the cache's
   fill counter moves back; nothing is copied). 3-D M-RoPE positions are passed explicitly.
2. dominant operation: each of the 11 OpenPack names is scored as the continuation of the exact training-target
   prefix ``{"dominant_operation": "`` (summed token log-probs of the name and its closing ``",``); softmax over the
   11 sums → the chosen name and ``confidence`` = its probability.
3. span: in the run's answer format (``PredictConfig.span``, from the contract; prompt.py): "shown" scores the
   clip's K sampled frame numbers as start after the prefix built from the chosen name, then the sampled frames
   from the chosen start on as end, and turns the pair into clip frames (``prompt.clip_span``: each boundary
   half-way to the neighbouring sampled frame); "clip" scores every start frame 0..124, then every end frame
   start..124. Candidate scoring = exact argmax over a closed set of integers, so always 0 ≤ start ≤ end ≤ 124.
4. next operation: the 11 names scored after the prefix built from the chosen values; with a ``Grammar`` the
   model's distribution is fused with P(next | chosen dominant op) (``grammar.fuse``).
5. ``raw_text``: free greedy generation (bounded tokens, after the prompt in the same cache), kept for the record;
   ``repair`` says why it could not be used as an answer as is (invalid JSON, unknown name, bad span), None when it
   could.
Each closed set is scored in ONE model call (the "trie" scorer): the candidates' token sequences are merged into a
prefix tree, flattened into one sequence after the prompt, and each node attends to the prompt and its own ancestors
only (a 4-D attention mask), at the M-RoPE position of its depth; only the tree's inner nodes go through the output
head. A clip costs 5 calls (prefill + 4 sets) and several clips are answered together (``predict_batch``: left-padded
prompts, per-clip M-RoPE offsets). The scores are the same full-vocabulary log-probs as scoring each candidate on
its own (``PredictConfig.scorer="rows"`` keeps that reference path: a copy of the prompt cache per batch of
candidates, 11 calls per clip; tests and ``scripts/bench_predict.py`` compare the two).
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
from ..metrics import as_span, pred_id, temper  # temper: the one formula, shared with the calibration that fits T
from ..prompt import DEFAULT_SPAN, build_messages, check_span_format, clip_span, target_text
from ..schema import CLIP_FRAMES, Prediction
from ..contract import RUN_FILE, RunContract, assumed_contract, find_run
from ..data.sampling import SamplingConfig, sample_clip
from ..data.shards import jpeg_round_trip
from ..data.timebar import draw_time_bar

DEFAULT_FUSE_WEIGHT = 0.3  # used only when no tuned weight is given or stored in the grammar's meta


class PredictError(ValueError):
    """Input the predictor cannot answer for (one-line message)."""


@dataclass
class PredictConfig:
    """Inference settings. Defaults = the real run."""

    fuse_weight: float | None = None  # grammar weight in [0,1]; None → grammar meta "fuse_weight", else 0.3
    fuse_mode: str = "linear"  # "linear" | "loglinear" (see grammar.fuse)
    fuse: bool = True  # the answer's next operation fuses the model with the grammar (when there is one); False =
    #                    the model's own (scores still carry "next_grammar"; evaluation fuses with ``fuse_next`` after
    #                    tuning the weight on val)
    free_text: bool = True  # also generate the free answer (raw_text); False saves ~40-120 decode steps per clip
    max_new_tokens: int = 128  # target JSON is ~45 tokens with Qwen's tokenizer, up to ~110 with the tiny BPE
    scorer: str = "trie"  # "trie": one call per closed set, no cache copy | "rows": the reference path (a copy of
    #                       the prompt cache per batch of candidates; 11 calls per clip), kept for tests and benchmarks
    score_batch: int = 32  # "rows" only: candidates per forward (2B, 1.6k prompt tokens: ~46 MB of cache per row)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # predict_clip's frame choice, as in training
    jpeg_quality: int | None = 90  # predict_clip round-trips the sampled frames through the shards' JPEG (training
    #                                saw decoded JPEGs); None = raw frames. Set from the run contract.
    span: str = DEFAULT_SPAN  # how the model writes the span (prompt.SPAN_FORMATS); set from the run contract
    temperature: float | None = None  # of the reported confidence (softmax(log p / T) of the chosen operation; the
    #                                   answer never changes); None = the run contract's (evaluate.py fits it), else 1
    time_bar: bool = False  # predict_clip draws the time bar into the sampled frames (data/timebar.py), as the run's
    #                         data pipeline did; set from the run contract


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


def start_candidates(dom: str, values: list[int] | None = None) -> list[str]:
    """The target prefixes ending in each start frame of ``values`` (default: every clip frame 0..124)."""
    values = range(CLIP_FRAMES) if values is None else values
    return [_cut_after_value(_target(dom, s, s, _DUMMY), "start_frame", str(s)) for s in values]


def end_candidates(dom: str, start: int, values: list[int] | None = None) -> list[str]:
    """The target prefixes ending in each end frame of ``values`` (default: start..124)."""
    values = range(start, CLIP_FRAMES) if values is None else values
    return [_cut_after_value(_target(dom, start, e, _DUMMY), "end_frame", str(e)) for e in values]


def next_candidates(dom: str, start: int, end: int) -> list[str]:
    return [_cut_after_value(_target(dom, start, end, n), "anticipated_next_operation", n) for n in OPERATION_NAMES]


@dataclass
class Trie:
    """Candidate token sequences merged into a prefix tree. Nodes are numbered in insertion order, so a parent always
    comes before its children; the flattened tree is one model input, each node seeing only its ancestors."""

    tokens: list[int]
    parent: list[int]  # -1: the node follows the prompt directly
    depth: list[int]  # 0 for a first token: M-RoPE position = the prompt's next position + depth
    paths: list[list[int]]  # each candidate's node ids, one per token

    @classmethod
    def build(cls, seqs: list[list[int]]) -> "Trie":
        tokens: list[int] = []
        parent: list[int] = []
        depth: list[int] = []
        paths: list[list[int]] = []
        index: dict[tuple[int, int], int] = {}
        for seq in seqs:
            p, path = -1, []
            for t in seq:
                n = index.get((p, t))
                if n is None:
                    n = index[(p, t)] = len(tokens)
                    tokens.append(int(t))
                    parent.append(p)
                    depth.append(0 if p < 0 else depth[p] + 1)
                path.append(n)
                p = n
            paths.append(path)
        return cls(tokens, parent, depth, paths)

    def inner_nodes(self, first: int) -> list[int]:
        """Nodes whose output scores a candidate token at index >= ``first`` (token j is scored at its parent's
        position): the only positions that go through the output head."""
        return sorted({path[j - 1] for path in self.paths for j in range(max(first, 1), len(path))})

    def ancestors(self) -> np.ndarray:
        """(n, n) bool: row i is True at i and at each of its ancestors (what node i may attend to)."""
        n = len(self.tokens)
        a = np.zeros((n, n), dtype=bool)
        for i, p in enumerate(self.parent):
            if p >= 0:
                a[i] = a[p]
            a[i, i] = True
        return a


def common_prefix(seqs: list[list[int]]) -> int:
    """Number of leading tokens all sequences share (fed, not scored: the same for every candidate)."""
    cp = 0
    while all(len(t) > cp for t in seqs) and len({t[cp] for t in seqs}) == 1:
        cp += 1
    return cp


def _softmax(logps: list[float]) -> list[float]:
    m = max(logps)
    ex = [math.exp(v - m) for v in logps]
    z = sum(ex)
    return [v / z for v in ex]


def _best(logps: list[float], later: bool = True) -> int:
    """Index of the highest log-prob; ties → the later candidate (``later``; end frames) or the earlier one (start
    frames): either way the longer span."""
    return max(range(len(logps)), key=lambda i: (logps[i], i if later else -i))


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


def parse_raw_text(text: str, frame_indices: list[int] | None = None) -> dict:
    """What the free answer says, read leniently (surrounding text/code fences ignored, aliases accepted):
    {"op": id|None, "span": (start, end)|None, "next": id|None}; a part that is missing or invalid is None.
    Scores the model as if its free text were trusted (evaluation's *_free_text systems). ``frame_indices``: the
    clip's sampled frames when the answer is in the "shown" format; its span is then turned into clip frames
    (``prompt.clip_span``), as the scored answer's is."""
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
    span = as_span(d.get("temporal_segment"))
    if span is not None and frame_indices is not None:
        span = clip_span(span[0], span[1], frame_indices)
    return {"op": pred_id(d.get("dominant_operation")), "span": span,
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


def resolve_contract(adapter, run, data=None) -> RunContract | None:
    """The run contract a predictor applies (see ``Predictor.from_pretrained``): ``run`` "auto" = the adapter's
    run.json, assumed (with a warning) for an adapter made before contracts; checked against ``data``'s run.json
    when both exist."""
    contract = None
    found = None
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
    if contract is not None and contract.path is not None and data is not None and (Path(data) / RUN_FILE).is_file():
        contract.check_same_samples(RunContract.load(data))  # an assumed record (old run) has nothing to compare
    return contract


def resolve_grammar(grammar, contract: RunContract | None, adapter, data=None) -> tuple[Path | None, Grammar | None]:
    """(path, Grammar) a predictor fuses with (see ``Predictor.from_pretrained``)."""
    if grammar is None or isinstance(grammar, Grammar):
        return None, grammar
    if not (isinstance(grammar, str) and grammar == "auto"):
        return Path(grammar), Grammar.load(grammar)
    path = contract.grammar_path() if contract is not None and contract.path else None
    if path is not None and not path.is_file():
        path = None
    path = path or find_grammar(adapter)
    if path is None and data is not None and (Path(data) / "grammar.json").is_file():
        path = Path(data) / "grammar.json"
    if path is not None and contract is not None and contract.path is not None:
        contract.check_grammar(path)  # the tuned weight belongs to the recorded grammar
    return path, (Grammar.load(path) if path is not None else None)


@dataclass
class _Batch:
    """Prompt state of a batch of clips for the trie scorer."""

    cache: object  # transformers StaticCache: prompt in slots [0, prompt_len), later steps after it, rolled back
    valid: object  # (B, prompt_len) bool: False at left padding
    next_pos: object  # (B,) M-RoPE position of the first token after each row's prompt
    last_logp: object  # (B, V) log-probs of the first answer token
    prompt_len: int
    room: int  # cache slots after the prompt


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
        check_span_format(self.config.span)
        self._room: int | None = None  # cache slots after the prompt (the largest candidate tree; see _cache_room)
        self.model_calls = 0  # forwards so far (benchmarks and tests read it)

    @property
    def device(self):
        """The torch device the model's inputs go to (cuda:0, cpu)."""
        return self._device

    @classmethod
    def from_pretrained(cls, model_id: str, adapter: str | os.PathLike | None = None, quantization: str = "none",
                        device: str = "auto", grammar: str | os.PathLike | Grammar | None = "auto",
                        fuse_weight: float | None = None, config: PredictConfig | None = None,
                        run: str | os.PathLike | RunContract | None = "auto",
                        frames_per_clip: int | None = None, data: str | os.PathLike | None = None) -> "Predictor":
        """Load through ``model.load_model`` and apply the run contract (contract.py): the one place where the
        contract, the grammar, the fusion weight and mode are resolved (evaluation and serving read them here:
        ``predictor.contract``, ``.grammar``, ``.grammar_path``, ``.fuse_weight``).

        ``run="auto"``: the adapter's run.json (``find_run``); a path or a RunContract: that one; None: no contract
        (the code's defaults). With a contract, its K and sampler parameters, JPEG round trip, grammar (checked
        against the recorded sha256) and tuned fusion weight are used, and ``frames_per_clip`` (if given) must equal
        its K. An adapter without run.json loads with a warning naming the assumed values. ``data``: a data dir the
        predictor will answer (evaluation): its D/run.json must have shaped samples as the run's did
        (``RunContract.check_same_samples``), and its D/grammar.json is the last grammar fallback.
        ``grammar="auto"``: the contract's grammar, else the adapter's grammar.json (``find_grammar``), else the data
        dir's; None: no grammar; a path or a Grammar: that one. ``fuse_weight`` overrides the contract's.
        ``adapter`` may be a Hub id (``USER/NAME[@REV]``, fetched once into the HF cache: loading.resolve_adapter)."""
        from ..data.letterbox import SIZE
        from .loading import ModelConfig, load_model, resolve_adapter

        adapter = resolve_adapter(adapter)
        contract = resolve_contract(adapter, run, data)
        if contract is not None:
            contract.check(frame_size=SIZE, frames_per_clip=frames_per_clip)
        grammar_path, g = resolve_grammar(grammar, contract, adapter, data)

        config = copy.copy(config) if config is not None else PredictConfig()
        if contract is not None:
            config.sampling = contract.sampling_config()
            config.jpeg_quality = contract.data.jpeg_quality
            config.span = contract.data.answer_span
            config.time_bar = contract.data.time_bar
            if config.temperature is None and contract.evaluation is not None:
                config.temperature = contract.evaluation.temperature
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
        predictor.contract, predictor.grammar_path = contract, grammar_path
        return predictor

    # -------------------------------------------------------------------------------------------- model plumbing
    def _call(self, **kwargs):
        self.model_calls += 1
        return self.model(**kwargs)

    def _encode_prompt(self, images, frame_indices, device=True):
        text = self.processor.apply_chat_template(build_messages(frame_indices, span=self.config.span),
                                                  add_generation_prompt=True, tokenize=False)
        inputs = self.processor(text=[text], images=list(images), return_tensors="pt")
        return {k: v.to(self._device) for k, v in inputs.items()} if device else dict(inputs)

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def _cache_room(self) -> int:
        """Cache slots needed after the prompt by the largest candidate tree (any dominant op; end frames after
        start 0; next op after 3-digit frames), plus slack for a longer shared prefix. Computed once (~3k strings)."""
        if self._room is None:
            sets = [self._dom_cands]
            for n in OPERATION_NAMES:
                sets += [start_candidates(n), end_candidates(n, 0), next_candidates(n, CLIP_FRAMES - 1, CLIP_FRAMES - 1)]
            self._room = max(len(Trie.build(self._tokenize(s)).tokens) for s in sets) + 16
        return self._room

    def _mask(self, keys: "torch.Tensor"):
        """(B, Q, L) bool "may attend" → the additive 4-D mask (B, 1, Q, L) in the model's compute dtype."""
        torch = self._torch
        dtype = self.model.get_input_embeddings().weight.dtype
        zero = torch.zeros((), dtype=dtype, device=self._device)
        return torch.where(keys.to(self._device), zero, torch.finfo(dtype).min)[:, None]

    def _prefill_batch(self, items) -> "_Batch":
        """Left-padded prompts of several clips in one forward into a static cache sized for the longest later step."""
        from transformers import StaticCache

        torch = self._torch
        encs = [self._encode_prompt(imgs, idx, device=False) for imgs, idx, _ in items]
        lens = [int(e["input_ids"].shape[1]) for e in encs]
        b, p = len(encs), max(lens)
        ids = torch.full((b, p), self._pad_id, dtype=torch.long)
        valid = torch.zeros((b, p), dtype=torch.bool)
        mm = torch.zeros((b, p), dtype=torch.long) if "mm_token_type_ids" in encs[0] else None
        for r, (e, n) in enumerate(zip(encs, lens)):  # left padding: every row's last position is its own last token
            ids[r, p - n:] = e["input_ids"][0]
            valid[r, p - n:] = True
            if mm is not None:
                mm[r, p - n:] = e["mm_token_type_ids"][0]
        inputs = {"input_ids": ids, "attention_mask": valid.long(),
                  "pixel_values": torch.cat([e["pixel_values"] for e in encs]),
                  "image_grid_thw": torch.cat([e["image_grid_thw"] for e in encs])}
        if mm is not None:
            inputs["mm_token_type_ids"] = mm
        inputs = {k: v.to(self._device) for k, v in inputs.items()}
        rope_kwargs = {k: inputs[k] for k in ("image_grid_thw", "attention_mask", "mm_token_type_ids") if k in inputs}
        pos, delta = self._core.get_rope_index(inputs["input_ids"], **rope_kwargs)
        room = max(self._cache_room(), self.config.max_new_tokens if self.config.free_text else 0)
        cache = StaticCache(config=self.model.config, max_cache_len=p + room)
        # causal over each row's own tokens; a pad position sees only itself (finite values, never seen by real ones)
        keys = torch.zeros((b, p, p + room), dtype=torch.bool)
        keys[:, :, :p] = torch.tril(torch.ones(p, p, dtype=torch.bool)) & valid[:, None, :]
        keys[:, :, :p] |= torch.eye(p, dtype=torch.bool)
        inputs["attention_mask"] = self._mask(keys)
        out = self._call(**inputs, position_ids=pos, cache=cache, use_cache=True, logits_to_keep=1)
        last = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        next_pos = torch.tensor(lens, device=self._device) + delta.reshape(-1).to(self._device)
        return _Batch(cache=cache, valid=valid, next_pos=next_pos, last_logp=last, prompt_len=p, room=room)

    def _score_sets(self, st: "_Batch", sets: list[list[str]]) -> list[list[float]]:
        """Summed log-prob of every candidate of each row's closed set (row r: ``sets[r]``), all rows in ONE call:
        each row's candidates as a flattened prefix tree after its prompt (``Trie``); only inner nodes reach the
        output head. Equal to ``score_texts`` per row (same tokens, positions and attended keys)."""
        torch = self._torch
        b, p = len(sets), st.prompt_len
        rows = []
        for texts in sets:
            toks = self._tokenize(texts)
            cp = common_prefix(toks)
            trie = Trie.build(toks)
            first = max(cp, 1)  # token 0 of a candidate is scored from the prompt's logits
            need = trie.inner_nodes(first)
            rows.append((toks, cp, trie, need))
        t = max(len(r[2].tokens) for r in rows)
        m = max(1, max(len(r[3]) for r in rows))
        if t > st.room:
            raise RuntimeError(f"candidate tree of {t} tokens exceeds the {st.room} cache slots reserved after the "
                               "prompt (Predictor._cache_room)")
        ids = torch.full((b, t), self._pad_id, dtype=torch.long)
        depth = torch.zeros((b, t), dtype=torch.long)
        keep = torch.zeros((b, m), dtype=torch.long)
        keys = torch.zeros((b, t, p + st.room), dtype=torch.bool)
        keys[:, :, :p] = st.valid[:, None, :]
        for r, (_, _, trie, need) in enumerate(rows):
            n = len(trie.tokens)
            ids[r, :n] = torch.tensor(trie.tokens)
            depth[r, :n] = torch.tensor(trie.depth)
            keys[r, :n, p:p + n] = torch.from_numpy(trie.ancestors())
            keys[r, n:, :] = False  # padding nodes: only themselves
            keys[r, n:, p + n:p + t] = torch.eye(t - n, dtype=torch.bool)
            keep[r, :len(need)] = torch.tensor(need, dtype=torch.long)
        pos = (st.next_pos[:, None] + depth.to(self._device)).unsqueeze(0).expand(3, b, t)
        out = self._call(input_ids=ids.to(self._device), position_ids=pos, attention_mask=self._mask(keys),
                         cache=st.cache, use_cache=True, logits_to_keep=keep.to(self._device))
        st.cache.crop(-t)  # roll back: the next step writes over these slots
        results = []
        for r, (toks, cp, trie, need) in enumerate(rows):
            where = {node: i for i, node in enumerate(need)}
            cand, mi, tok = [], [], []
            for c, (path, seq) in enumerate(zip(trie.paths, toks)):
                for j in range(max(cp, 1), len(seq)):
                    cand.append(c)
                    mi.append(where[path[j - 1]])
                    tok.append(seq[j])
            total = torch.zeros(len(toks), dtype=torch.float32, device=self._device)
            if cand:
                logits = out.logits[r, :len(need)].float()
                lse = torch.logsumexp(logits, dim=-1)
                mi_t = torch.tensor(mi, device=self._device)
                vals = logits[mi_t, torch.tensor(tok, device=self._device)] - lse[mi_t]
                total.index_add_(0, torch.tensor(cand, device=self._device), vals)
            if cp == 0:
                total += st.last_logp[r, torch.tensor([s[0] for s in toks], device=self._device)]
            results.append([float(v) for v in total.cpu()])
        return results

    def _generate_batch(self, st: "_Batch") -> list[str]:
        """Greedy free answers of all rows, one token per row per call, after the prompt; rolled back after."""
        torch = self._torch
        b, p = st.valid.shape
        nxt = torch.argmax(st.last_logp, dim=-1).tolist()
        outs: list[list[int]] = [[] for _ in range(b)]
        done = [False] * b
        steps = 0
        keys = torch.zeros((b, 1, p + st.room), dtype=torch.bool)
        keys[:, 0, :p] = st.valid
        for step in range(self.config.max_new_tokens):
            for r in range(b):
                if not done[r]:
                    if nxt[r] in self._stop_ids:
                        done[r] = True
                    else:
                        outs[r].append(nxt[r])
            if all(done):
                break
            ids = torch.tensor([[self._pad_id if d else v] for v, d in zip(nxt, done)], device=self._device)
            keys[:, 0, p + step] = True
            pos = (st.next_pos + step).view(1, b, 1).expand(3, b, 1)
            out = self._call(input_ids=ids, position_ids=pos, attention_mask=self._mask(keys), cache=st.cache,
                             use_cache=True, logits_to_keep=1)
            steps += 1
            nxt = torch.argmax(out.logits[:, -1], dim=-1).tolist()
        if steps:
            st.cache.crop(-steps)
        return [self.tokenizer.decode(o, skip_special_tokens=True) for o in outs]

    def _prefill(self, inputs):
        """One forward over the prompt → (cache, last-position log-probs, prompt length, rope delta)."""
        torch = self._torch
        rope_kwargs = {k: inputs[k] for k in ("image_grid_thw", "attention_mask", "mm_token_type_ids") if k in inputs}
        pos, delta = self._core.get_rope_index(inputs["input_ids"], **rope_kwargs)
        out = self._call(**inputs, position_ids=pos, use_cache=True, logits_to_keep=1)
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
        out = self._call(input_ids=ids, cache=c, position_ids=pos, attention_mask=mask, use_cache=True,
                         logits_to_keep=keep)
        return out.logits.float()

    def score_texts(self, state, texts: list[str]) -> list[float]:
        """Summed log-prob of each assistant text's tokens after their common token prefix (the prefix is fed but
        not scored: it is the same for all candidates)."""
        torch = self._torch
        cache, last_logp, _, delta = state
        toks = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        cp = common_prefix(toks)
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
            out = self._call(input_ids=ids, cache=c, position_ids=pos, attention_mask=mask, use_cache=True)
            c = out.cache
            nxt = int(torch.argmax(out.logits[0, -1]))
        return self.tokenizer.decode(out_ids, skip_special_tokens=True)

    # ------------------------------------------------------------------------------------------------ public API
    @staticmethod
    def _checked(images: list, frame_indices: list[int]) -> tuple[list, list[int]]:
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
        return [im.convert("RGB") for im in imgs], idx

    def predict(self, images: list, frame_indices: list[int], clip_id: str) -> PredictResult:
        """Answer for one clip's sampled frames (PIL images or HxWx3 uint8 arrays, in frame order).

        ``scores``: ``dominant`` / ``next_model`` / ``next_grammar`` / ``next_fused`` ({name: prob}),
        ``fuse_weight``, ``span_logprob`` (start + end), ``span_format`` and ``span_answered`` (the pair the model
        chose, before ``clip_span``), ``frame_indices``, ``seconds``, ``model_calls``,
        ``batch_size``.
        """
        return self.predict_batch([(images, frame_indices, clip_id)])[0]

    def predict_batch(self, items: list[tuple[list, list[int], str]]) -> list[PredictResult]:
        """Answers for several clips ``(images, frame_indices, clip_id)`` computed together: one prefill of the
        left-padded prompts, then one call per closed set for all of them (the same answers as one by one; a
        clip's ``seconds`` and ``model_calls`` are the batch's divided by its size)."""
        if not items:
            return []
        checked = [(*self._checked(images, idx), str(cid)) for images, idx, cid in items]
        if self.config.scorer == "rows":
            return [self._predict_rows(imgs, idx, cid) for imgs, idx, cid in checked]
        if self.config.scorer != "trie":
            raise PredictError(f"unknown scorer {self.config.scorer!r} (trie | rows)")
        b = len(checked)
        t0 = time.perf_counter()
        with self._lock, self._torch.inference_mode():
            calls0 = self.model_calls
            st = self._prefill_batch(checked)
            dom_p = [_softmax(lp) for lp in self._score_sets(st, [self._dom_cands] * b)]
            ks = [max(range(len(p)), key=lambda i: (p[i], -i)) for p in dom_p]
            doms = [OPERATION_NAMES[k] for k in ks]
            svals = [self._start_values(idx) for _, idx, _ in checked]
            st_lp = self._score_sets(st, [start_candidates(d, v) for d, v in zip(doms, svals)])
            starts = [v[_best(lp, later=False)] for v, lp in zip(svals, st_lp)]
            evals = [[x for x in v if x >= s] for v, s in zip(svals, starts)]
            en_lp = self._score_sets(st, [end_candidates(d, s, v) for d, s, v in zip(doms, starts, evals)])
            ends = [v[_best(lp)] for v, lp in zip(evals, en_lp)]
            nx_lp = self._score_sets(st, [next_candidates(d, s, e) for d, s, e in zip(doms, starts, ends)])
            raws = self._generate_batch(st) if self.config.free_text else [""] * b
            calls = self.model_calls - calls0
        per_clip = (time.perf_counter() - t0) / b
        return [self._finish(dom_p[r], ks[r], max(st_lp[r]) + max(en_lp[r]), (starts[r], ends[r]), nx_lp[r], raws[r],
                             checked[r][1], checked[r][2], seconds=per_clip, model_calls=calls / b, batch_size=b)
                for r in range(b)]

    def _start_values(self, idx: list[int]) -> list[int]:
        """The start frames a clip's answer may name: its sampled frames ("shown") or every clip frame ("clip")."""
        return list(idx) if self.config.span == "shown" else list(range(CLIP_FRAMES))

    def _predict_rows(self, imgs: list, idx: list[int], clip_id: str) -> PredictResult:
        """The reference path: each closed set scored in batches of candidate rows over copies of the prompt cache."""
        t0 = time.perf_counter()
        with self._lock, self._torch.inference_mode():
            calls0 = self.model_calls
            state = self._prefill(self._encode_prompt(imgs, idx))
            dom_p = _softmax(self.score_texts(state, self._dom_cands))
            k = max(range(len(dom_p)), key=lambda i: (dom_p[i], -i))
            dom = OPERATION_NAMES[k]
            svals = self._start_values(idx)
            st_lp = self.score_texts(state, start_candidates(dom, svals))
            start = svals[_best(st_lp, later=False)]
            evals = [x for x in svals if x >= start]
            en_lp = self.score_texts(state, end_candidates(dom, start, evals))
            end = evals[_best(en_lp)]
            nx_lp = self.score_texts(state, next_candidates(dom, start, end))
            raw = self._generate(state) if self.config.free_text else ""
            calls = self.model_calls - calls0
        return self._finish(dom_p, k, max(st_lp) + max(en_lp), (start, end), nx_lp, raw, idx, clip_id,
                            seconds=time.perf_counter() - t0, model_calls=calls, batch_size=1)

    def _finish(self, dom_p, k, span_lp, answered, nx_lp, raw, idx, clip_id, **timing) -> PredictResult:
        """``answered``: the (start, end) the model chose, in the run's span format; ``span_lp``: its log-prob."""
        dom = OPERATION_NAMES[k]
        # the truth never names Null as the next operation (clips.py skips it): not a candidate. The dominant op
        # stays one: when the model names the clip's second operation as dominant (boundary clips), its "next"
        # guess of that same name is often the true next one (measured on the demo: masking it cost AA@1 0.14)
        nx_p = _softmax([lp if n != NULL_NAME else -math.inf for n, lp in zip(OPERATION_NAMES, nx_lp)])
        next_model = {OPERATION_IDS[i]: p for i, p in enumerate(nx_p)}
        scores = {
            "dominant": {OPERATION_NAMES[i]: p for i, p in enumerate(dom_p)},
            "next_model": {ID_TO_NAME[i]: p for i, p in next_model.items()},
            "next_grammar": None,
            "next_fused": None,
            "fuse_weight": None,
            "temperature": self.config.temperature,  # of ``confidence`` only; "dominant" stays untempered
            "span_logprob": span_lp,
            "span_format": self.config.span,
            "span_answered": list(answered),
            "frame_indices": idx,
        }
        nxt_id = argmax_id(next_model)
        if self.grammar is not None:
            g = grammar_next(self.grammar, scores)
            scores["next_grammar"] = {ID_TO_NAME[i]: p for i, p in g.items()}
            if self.config.fuse:
                fused = self.fuse_next(scores)
                nxt_id = argmax_id(fused)
                scores.update(next_fused={ID_TO_NAME[i]: p for i, p in fused.items()}, fuse_weight=self.fuse_weight)
        scores.update(timing)
        span = clip_span(*answered, idx) if self.config.span == "shown" else answered
        pred = Prediction(clip_id=str(clip_id), dominant_operation=dom,
                          temporal_segment=dict(zip(("start_frame", "end_frame"), span)),
                          anticipated_next_operation=ID_TO_NAME[nxt_id],
                          confidence=min(1.0, max(0.0, float(self._calibrated(dom_p)[k]))))
        return PredictResult(prediction=pred, raw_text=raw,
                             repair=check_raw_text(raw) if self.config.free_text else None, scores=scores)

    def fuse_next(self, scores: dict, weight: float | None = None, mode: str | None = None) -> dict[int, float]:
        """The next-operation distribution {op id: p} of one answer's ``scores``: the model's (``next_model``) fused
        with the grammar's (``next_grammar``) at ``weight`` (default: this predictor's) in ``mode`` (default: its
        config's). The one place fusion happens: the answer uses it, evaluation calls it with the weight it tuned."""
        if self.grammar is None or scores.get("next_grammar") is None:
            raise PredictError("no grammar to fuse with")
        return fuse({NAME_TO_ID[n]: p for n, p in scores["next_model"].items()},
                    {NAME_TO_ID[n]: p for n, p in scores["next_grammar"].items()},
                    self.fuse_weight if weight is None else weight, mode or self.config.fuse_mode)

    def _calibrated(self, dom_p: list[float]) -> list[float]:
        """The dominant distribution with the run's temperature (softmax(log p / T)); as is without one."""

        t = self.config.temperature
        if t is None or t == 1.0:
            return dom_p
        return temper(np.asarray(dom_p), t).tolist()

    def predict_clip(self, frames: np.ndarray, clip_id: str) -> PredictResult:
        """Answer for a whole (125, H, W, 3) uint8 clip: frames chosen by ``sampling.sample_clip`` as in training
        (the run contract's K and parameters), then through the shards' JPEG encode/decode at the run's quality, so
        the model sees what it was trained on."""
        return self.predict_clips([frames], [clip_id])[0]

    def sampled_frames(self, frames: np.ndarray, motion: np.ndarray | None = None) -> tuple[list, list[int]]:
        """The frames the model sees of a (125, H, W, 3) uint8 clip, and their indices (``predict_clip``'s choice;
        ``motion``: the clip's per-frame motion when it is known from elsewhere — keypoints, as the data pipeline
        samples skeleton clips — instead of pixel differences)."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[0] != CLIP_FRAMES or frames.shape[-1] != 3:
            raise PredictError(f"clip must be ({CLIP_FRAMES}, H, W, 3) frames, got shape {frames.shape}")
        if frames.dtype != np.uint8:
            raise PredictError(f"clip frames must be uint8, got {frames.dtype}")
        idx = sample_clip(frames, self.config.sampling, motion=motion)
        shown = [draw_time_bar(frames[i], i) if self.config.time_bar else frames[i] for i in idx]
        q = self.config.jpeg_quality
        return [f if q is None else jpeg_round_trip(f, q) for f in shown], idx

    def predict_clips(self, clips: list[np.ndarray], clip_ids: list[str],
                      motions: list[np.ndarray | None] | None = None) -> list[PredictResult]:
        """``predict_clip`` for several clips at once (one ``predict_batch``): the timeline's windows."""
        motions = motions or [None] * len(clips)
        if not len(clips) == len(clip_ids) == len(motions):
            raise PredictError(f"{len(clips)} clips for {len(clip_ids)} clip ids and {len(motions)} motions")
        return self.predict_batch([(*self.sampled_frames(c, m), cid) for c, cid, m in zip(clips, clip_ids, motions)])
