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
   With a frame head (an adapter trained with ``--frame_loss_weight``; model/frame_head.py), read off step 1's
   forward: step 2's distribution is weighted by each operation's share of the clip under the head
   (``frame_head.fuse_dominant``), and the span is the run of shown frames the head most likely puts in the chosen
   operation (``frame_head.frame_segment``), mapped by ``clip_span`` the same way: no start/end calls (3 calls per
   clip, ``span_from``).
4. next operation: the 11 names scored after the prefix built from the chosen values; with a ``Grammar`` the
   model's distribution is fused with P(next | chosen dominant op) (``grammar.fuse``).
5. ``raw_text``: free greedy generation (bounded tokens, after the prompt in the same cache), kept for the record;
   ``repair`` says why it could not be used as an answer as is (invalid JSON, unknown name, bad span), None when it
   could.
Each closed set is scored in ONE model call (the "trie" scorer): the candidates' token sequences are merged into a
prefix tree, flattened into one sequence after the prompt, and each node attends to the prompt and its own ancestors
only (a 4-D attention mask), at the M-RoPE position of its depth; only the tree's inner nodes go through the output
head. A clip costs 5 calls (prefill + 4 sets; 3 with a frame head) and several clips are answered together (``predict_batch``: left-padded
prompts, per-clip M-RoPE offsets). The scores are the same full-vocabulary log-probs as scoring each candidate on
its own (``PredictConfig.scorer="rows"`` keeps that reference path: a copy of the prompt cache per batch of
candidates, 11 calls per clip; tests and ``scripts/bench_predict.py`` compare the two).
Candidates are tokenised as complete target strings, exactly as in training, so BPE merges across the value
boundary are the ones the model learned.

Three modules: ``answers.py`` (the candidate sets, reading the free text), ``scorer.py`` (``CachedScorer``: the
static cache, the trie scorer, generation) and this one (settings; ``from_pretrained``, the one place that resolves
run contract, grammar and fusion; ``Predictor``, which turns scores into the answer).
"""

import copy
import dataclasses
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..contract import RUN_FILE, RunContract, assumed_contract, find_run
from ..data.letterbox import SIZE
from ..data.sampling import SamplingConfig, sample_clip
from ..data.shards import jpeg_round_trip
from ..data.skeleton import SkeletonClip
from ..data.timebar import draw_time_bar
from ..grammar import Grammar, argmax_id, fuse
from ..labels import ID_TO_NAME, NAME_TO_ID, NULL_NAME, OPERATION_IDS, OPERATION_NAMES
from ..metrics import temper  # the one formula, shared with the calibration that fits T
from ..prompt import DEFAULT_SPAN, check_span_format, clip_span
from ..schema import CLIP_FRAMES, Prediction
from .answers import PredictError, best, check_raw_text, end_candidates, next_candidates, softmax, start_candidates
from .frame_head import frame_shares, frame_span, fuse_dominant
from .loading import ModelConfig, load_model, resolve_adapter
from .scorer import CachedScorer

DEFAULT_FUSE_WEIGHT = 0.3  # used only when no tuned weight is given or stored in the grammar's meta


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
    span_from: str = "auto"  # "frames": the span is the run of shown frames the frame head puts in the dominant
    #                          operation (frame_head.frame_segment; no extra call, 2 calls fewer) | "answer": the
    #                          answer's frame numbers, scored as closed sets | "auto": frames when the adapter has a
    #                          frame head, else the answer
    time_bar: bool = False  # predict_clip draws the time bar into the sampled frames (data/timebar.py), as the run's
    #                         data pipeline did; set from the run contract


@dataclass
class PredictResult:
    prediction: Prediction
    raw_text: str  # the model's free (greedy) answer, "" when free_text is off
    repair: str | None  # why raw_text was not a valid answer as is; None when it was (or free_text is off)
    scores: dict  # distributions and timings behind the prediction (see Predictor.predict)


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


class Predictor(CachedScorer):
    """Frames → ``PredictResult``. Thread-safe (one lock around model calls)."""

    def __init__(self, model, processor, grammar: Grammar | None = None, fuse_weight: float | None = None,
                 config: PredictConfig | None = None, info: dict | None = None):
        super().__init__(model, processor, config or PredictConfig())
        self.grammar = grammar
        w = fuse_weight if fuse_weight is not None else self.config.fuse_weight
        if w is None and grammar is not None:
            w = grammar.meta.get("fuse_weight")
        self.fuse_weight = float(DEFAULT_FUSE_WEIGHT if w is None else w)
        if not 0.0 <= self.fuse_weight <= 1.0:
            raise PredictError(f"fuse_weight must be in [0, 1], got {self.fuse_weight}")
        self.info = dict(info or {})
        self._lock = threading.Lock()
        check_span_format(self.config.span)
        self.contract: RunContract | None = None  # set by from_pretrained: what it resolved
        self.grammar_path: Path | None = None

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

        ``scores``: ``dominant`` / ``next_model`` / ``next_grammar`` / ``next_fused`` ({name: prob}; ``dominant`` is
        the answer's own (``dominant_answer``) fused with the frame head's shares when the adapter has one),
        ``fuse_weight``, ``span_logprob`` (start + end, or the frame head's run log-likelihood), ``span_format`` and
        ``span_answered`` (the pair chosen, before ``clip_span``), ``span_source`` ("frames" | "answer"),
        ``frame_indices``, ``frames`` (the frame head's {name: p} per shown frame; None without a head),
        ``seconds``, ``model_calls``, ``batch_size``.
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
            answer_p = [softmax(lp) for lp in self._score_sets(st, [self._dom_cands] * b)]
            dom_p = [self._dominant(answer_p[r], st.frame_p[r] if st.frame_p else None, checked[r][1])
                     for r in range(b)]
            ks = [max(range(len(p)), key=lambda i: (p[i], -i)) for p in dom_p]
            doms = [OPERATION_NAMES[k] for k in ks]
            if self._span_from_frames():
                spans = [frame_span(st.frame_p[r], ks[r], checked[r][1], self.config.span) for r in range(b)]
            else:
                svals = [self._start_values(idx) for _, idx, _ in checked]
                st_lp = self._score_sets(st, [start_candidates(d, v) for d, v in zip(doms, svals)])
                starts = [v[best(lp, later=False)] for v, lp in zip(svals, st_lp)]
                evals = [[x for x in v if x >= s] for v, s in zip(svals, starts)]
                en_lp = self._score_sets(st, [end_candidates(d, s, v) for d, s, v in zip(doms, starts, evals)])
                spans = [(s, v[best(lp)], max(a) + max(lp)) for s, v, a, lp in zip(starts, evals, st_lp, en_lp)]
            nx_lp = self._score_sets(st, [next_candidates(d, s, e) for d, (s, e, _) in zip(doms, spans)])
            raws = self._generate_batch(st) if self.config.free_text else [""] * b
            calls = self.model_calls - calls0
        per_clip = (time.perf_counter() - t0) / b
        return [self._finish(dom_p[r], ks[r], spans[r][2], spans[r][:2], nx_lp[r], raws[r], checked[r][1],
                             checked[r][2], frame_p=st.frame_p[r] if st.frame_p else None, answer_p=answer_p[r],
                             seconds=per_clip, model_calls=calls / b, batch_size=b)
                for r in range(b)]

    def _dominant(self, answer_p: list[float], frame_p: list[list[float]] | None, idx: list[int]) -> list[float]:
        """The dominant operation's distribution: the answer's, fused with the frame head's shares of the clip when
        the head was read (``frame_p``; only when the span comes from the frames too: ``span_from``)."""
        if frame_p is None:
            return answer_p
        return fuse_dominant(answer_p, frame_shares(frame_p, idx))

    def _reads_frames(self) -> bool:
        return self._span_from_frames()

    def _span_from_frames(self) -> bool:
        how = self.config.span_from
        if how not in ("auto", "frames", "answer"):
            raise PredictError(f"unknown span_from {how!r} (auto | frames | answer)")
        if how == "frames" and not self.has_frame_head:
            raise PredictError("span_from='frames' needs an adapter trained with a frame head (--frame_loss_weight)")
        return self.has_frame_head and how != "answer"

    def _start_values(self, idx: list[int]) -> list[int]:
        """The start frames a clip's answer may name: its sampled frames ("shown") or every clip frame ("clip")."""
        return list(idx) if self.config.span == "shown" else list(range(CLIP_FRAMES))

    def _predict_rows(self, imgs: list, idx: list[int], clip_id: str) -> PredictResult:
        """The reference path: each closed set scored in batches of candidate rows over copies of the prompt cache."""
        t0 = time.perf_counter()
        with self._lock, self._torch.inference_mode():
            calls0 = self.model_calls
            state = self._prefill(self._encode_prompt(imgs, idx))
            frame_p = state[4]
            answer_p = softmax(self.score_texts(state, self._dom_cands))
            dom_p = self._dominant(answer_p, frame_p, idx)
            k = max(range(len(dom_p)), key=lambda i: (dom_p[i], -i))
            dom = OPERATION_NAMES[k]
            if self._span_from_frames():
                start, end, span_lp = frame_span(frame_p, k, idx, self.config.span)
            else:
                svals = self._start_values(idx)
                st_lp = self.score_texts(state, start_candidates(dom, svals))
                start = svals[best(st_lp, later=False)]
                evals = [x for x in svals if x >= start]
                en_lp = self.score_texts(state, end_candidates(dom, start, evals))
                end = evals[best(en_lp)]
                span_lp = max(st_lp) + max(en_lp)
            nx_lp = self.score_texts(state, next_candidates(dom, start, end))
            raw = self._generate(state) if self.config.free_text else ""
            calls = self.model_calls - calls0
        return self._finish(dom_p, k, span_lp, (start, end), nx_lp, raw, idx, clip_id, frame_p=frame_p,
                            answer_p=answer_p, seconds=time.perf_counter() - t0, model_calls=calls, batch_size=1)

    def _finish(self, dom_p, k, span_lp, answered, nx_lp, raw, idx, clip_id, frame_p=None, answer_p=None,
                **timing) -> PredictResult:
        """``answered``: the (start, end) chosen, in the run's span format; ``span_lp``: its log-prob (the answer's
        frame numbers) or log-likelihood (the frame head's run); ``frame_p``: the frame head's distributions."""
        dom = OPERATION_NAMES[k]
        # the truth never names Null as the next operation (clips.py skips it): not a candidate. The dominant op
        # stays one: when the model names the clip's second operation as dominant (boundary clips), its "next"
        # guess of that same name is often the true next one (measured on the demo: masking it cost AA@1 0.14)
        nx_p = softmax([lp if n != NULL_NAME else -math.inf for n, lp in zip(OPERATION_NAMES, nx_lp)])
        next_model = {OPERATION_IDS[i]: p for i, p in enumerate(nx_p)}
        scores = {
            "dominant": {OPERATION_NAMES[i]: p for i, p in enumerate(dom_p)},
            "dominant_answer": {OPERATION_NAMES[i]: p for i, p in enumerate(answer_p if answer_p else dom_p)},
            "next_model": {ID_TO_NAME[i]: p for i, p in next_model.items()},
            "next_grammar": None,
            "next_fused": None,
            "fuse_weight": None,
            "temperature": self.config.temperature,  # of ``confidence`` only; "dominant" stays untempered
            "span_logprob": span_lp,
            "span_format": self.config.span,
            "span_answered": list(answered),
            "span_source": "frames" if self._span_from_frames() else "answer",
            "frame_indices": idx,
            "frames": None if frame_p is None else [{n: p for n, p in zip(OPERATION_NAMES, row)} for row in frame_p],
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

    def predict_clip(self, frames: np.ndarray, clip_id: str, motion: np.ndarray | None = None) -> PredictResult:
        """Answer for a whole (125, H, W, 3) uint8 clip: frames chosen by ``sampling.sample_clip`` as in training
        (the run contract's K and parameters; ``motion`` = the keypoints' for skeleton clips, as in training), then
        through the shards' JPEG encode/decode at the run's quality, so the model sees what it was trained on."""
        return self.predict_clips([frames], [clip_id], [motion])[0]

    @property
    def input_frames(self) -> str:
        """What this model must be shown: "pose" (skeleton frames rendered from keypoints) or "rgb" (camera frames),
        from the run contract (``DataSection.served_frames``); no contract (a base model): camera frames."""
        return "rgb" if self.contract is None else self.contract.data.served_frames()

    @property
    def input_render(self) -> dict | None:
        """How skeleton frames are drawn for this model (the run contract's ``data.pose_render``); None for camera."""
        return self.contract.data.pose_render if self.input_frames == "pose" else None

    def sampled_frames(self, frames: np.ndarray | SkeletonClip, motion: np.ndarray | None = None
                       ) -> tuple[list, list[int]]:
        """The frames the model sees of a (125, H, W, 3) uint8 clip, and their indices (``predict_clip``'s choice;
        ``motion``: the clip's per-frame motion when it is known from elsewhere — keypoints, as the data pipeline
        samples skeleton clips — instead of pixel differences). A ``SkeletonClip`` (a skeleton upload or timeline
        window) is sampled on its joints' motion and only the chosen frames are drawn, as in the data pipeline."""
        if isinstance(frames, SkeletonClip):
            if len(frames) != CLIP_FRAMES:
                raise PredictError(f"clip must be {CLIP_FRAMES} frames, got {len(frames)}")
            chosen, idx = frames.sampled(self.config.sampling, motion)
        else:
            frames = np.asarray(frames)
            if frames.ndim != 4 or frames.shape[0] != CLIP_FRAMES or frames.shape[-1] != 3:
                raise PredictError(f"clip must be ({CLIP_FRAMES}, H, W, 3) frames, got shape {frames.shape}")
            if frames.dtype != np.uint8:
                raise PredictError(f"clip frames must be uint8, got {frames.dtype}")
            idx = sample_clip(frames, self.config.sampling, motion=motion)
            chosen = [frames[i] for i in idx]
        shown = [draw_time_bar(f, i) if self.config.time_bar else f for f, i in zip(chosen, idx)]
        q = self.config.jpeg_quality
        return [f if q is None else jpeg_round_trip(f, q) for f in shown], idx

    def predict_clips(self, clips: list[np.ndarray], clip_ids: list[str],
                      motions: list[np.ndarray | None] | None = None) -> list[PredictResult]:
        """``predict_clip`` for several clips at once (one ``predict_batch``): the timeline's windows."""
        motions = motions or [None] * len(clips)
        if not len(clips) == len(clip_ids) == len(motions):
            raise PredictError(f"{len(clips)} clips for {len(clip_ids)} clip ids and {len(motions)} motions")
        return self.predict_batch([(*self.sampled_frames(c, m), cid) for c, cid, m in zip(clips, clip_ids, motions)])
