"""The scorer under the predictor: a Qwen2-VL prompt run once into a static KV cache, closed candidate sets scored
as one prefix tree per model call (the "trie" scorer), bounded greedy generation after the same cache.

``CachedScorer`` holds the model plumbing; ``predict.Predictor`` builds answers on it (see predict.py's docstring for
the scheme: 5 calls per clip, 3 with a frame head, several clips per batch, 3-D M-RoPE positions passed explicitly).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from ..labels import OPERATION_NAMES
from ..prompt import build_messages
from ..schema import CLIP_FRAMES
from . import frame_head
from .answers import PredictError, dominant_candidates, end_candidates, next_candidates, start_candidates


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


def _core_model(model):
    """The Qwen2-VL model that owns ``get_rope_index`` (under a PeftModel, or the bare one)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    core = getattr(base, "model", base)
    if not hasattr(core, "get_rope_index"):
        raise PredictError(f"{type(base).__name__} has no get_rope_index: not a Qwen2-VL-style model")
    return core



@dataclass
class _Batch:
    """Prompt state of a batch of clips for the trie scorer."""

    cache: object  # transformers StaticCache: prompt in slots [0, prompt_len), later steps after it, rolled back
    valid: object  # (B, prompt_len) bool: False at left padding
    next_pos: object  # (B,) M-RoPE position of the first token after each row's prompt
    last_logp: object  # (B, V) log-probs of the first answer token
    prompt_len: int
    room: int  # cache slots after the prompt
    frame_p: list | None = None  # per row, per shown frame, the frame head's 11 probabilities (None: no head)


class CachedScorer:
    """Model, processor and the cached scoring / generation calls (``config``: a ``predict.PredictConfig``)."""

    def __init__(self, model, processor, config):
        import torch

        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.config = config
        self._core = _core_model(model)
        self._device = next(model.parameters()).device
        self._torch = torch
        eos = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self._stop_ids = {i for i in (eos, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id) if i is not None}
        self._pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self._dom_cands = dominant_candidates()
        self._room: int | None = None  # cache slots after the prompt (the largest candidate tree; see _cache_room)
        self.model_calls = 0  # forwards so far (benchmarks and tests read it)
        self.has_frame_head = frame_head.has_head(model)  # an adapter trained with one (model/frame_head.py)
        self._vision_ids = [self.tokenizer.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>")]

    def _reads_frames(self) -> bool:
        """Whether answers read the frame head (the predictor's ``span_from``); here: whenever there is one."""
        return True

    @property
    def device(self):
        """The torch device the model's inputs go to (cuda:0, cpu)."""
        return self._device

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
        out, frame_p = self._prompt_call(inputs, position_ids=pos, cache=cache, use_cache=True, logits_to_keep=1)
        last = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        next_pos = torch.tensor(lens, device=self._device) + delta.reshape(-1).to(self._device)
        return _Batch(cache=cache, valid=valid, next_pos=next_pos, last_logp=last, prompt_len=p, room=room,
                      frame_p=frame_p)

    def _prompt_call(self, inputs, **kwargs):
        """The prompt's forward → (output, frame probabilities per row or None): with a frame head, each shown frame's
        distribution is read off the same forward's hidden states (no extra call)."""
        if not (self.has_frame_head and self._reads_frames()):
            return self._call(**inputs, **kwargs), None
        with frame_head.final_hidden(self.model) as hidden:
            out = self._call(**inputs, **kwargs)
        logits = frame_head.frame_logits(self.model, hidden[0], inputs["input_ids"], *self._vision_ids)
        return out, [self._torch.softmax(lg, dim=-1).tolist() for lg in logits]

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
        """One forward over the prompt → (cache, last-position log-probs, prompt length, rope delta, frame head
        probabilities or None)."""
        torch = self._torch
        rope_kwargs = {k: inputs[k] for k in ("image_grid_thw", "attention_mask", "mm_token_type_ids") if k in inputs}
        pos, delta = self._core.get_rope_index(inputs["input_ids"], **rope_kwargs)
        out, frame_p = self._prompt_call(inputs, position_ids=pos, use_cache=True, logits_to_keep=1)
        last = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        return (out.cache, last, int(inputs["input_ids"].shape[1]), int(delta.reshape(-1)[0]),
                frame_p[0] if frame_p else None)

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
        cache, last_logp, _, delta, _ = state
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
        cache, last_logp, prompt_len, delta, _ = state
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
