"""The frame head: which operation each SHOWN frame belongs to, read off the language model's own hidden states.

Why: the answer's span (which sampled frames lie inside the dominant operation) asks the language model to tie a
frame's content to its place in the sequence and copy that place's number; the CPU demo's tiny LM never learned it
(the span stayed the whole clip in every recipe: ARCHITECTURE.md §3 "The span, measured"), and the 2B has never been
measured on it. Reading each frame where it stands needs no such copy: the final hidden states of a frame's own visual
tokens (the ``<|image_pad|>`` run between its ``<|vision_start|>`` and ``<|vision_end|>``), averaged, go through one
linear layer onto the 11 operations. Trained beside the answer (``--frame_loss_weight``; targets = the operation at
each sampled frame, ``ClipRecord.frame_ops``), saved with the LoRA adapter (a ``modules_to_save`` module, 11 x hidden
weights: 17k on the 2B), and read by the predictor from the prompt's prefill it runs anyway — no extra model call.

``frame_shares`` turns the per-frame distributions into each operation's expected share of the clip (each shown frame
stands for the clip frames nearer to it than to its neighbours): the dominant operation is the one filling most of
the clip, so the predictor weighs the answer's own distribution by these shares (``fuse_dominant``).
``frame_segment`` turns them into the answer's span: the run of consecutive shown frames that is most likely to be
exactly the dominant operation's (every frame inside it that operation, every frame outside it not), which
``prompt.clip_span`` maps back to clip frames.
"""
from __future__ import annotations

import contextlib
import math

from ..labels import OPERATION_IDS
from ..prompt import clip_span, frame_cells
from ..schema import CLIP_FRAMES

FRAME_HEAD = "frame_head"  # module name on the base model (and in the adapter's modules_to_save)
N_OPS = len(OPERATION_IDS)


def op_index(op_id: int) -> int:
    """Row of an OpenPack operation id in the head's output (OPERATION_IDS order, as OPERATION_NAMES)."""
    return OPERATION_IDS.index(int(op_id))


def _base(model):
    """The transformers model under DDP and a PeftModel (or the bare one)."""
    import torch

    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def hidden_size(model) -> int:
    cfg = _base(model).config
    return int(getattr(getattr(cfg, "text_config", None), "hidden_size", None) or cfg.hidden_size)


def attach(model):
    """Add an untrained head (zero weights: every frame starts uniform) to a base model that has none; returns it."""
    import torch

    base = _base(model)
    if not hasattr(base, FRAME_HEAD):
        ref = base.get_input_embeddings().weight
        head = torch.nn.Linear(hidden_size(base), N_OPS, dtype=torch.float32, device=ref.device)
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
        base.add_module(FRAME_HEAD, head)
    return getattr(base, FRAME_HEAD)


def has_head(model) -> bool:
    return hasattr(_base(model), FRAME_HEAD)


def adapter_has_head(adapter_config: dict) -> bool:
    """Whether a saved adapter (its adapter_config.json) carries a trained frame head."""
    return FRAME_HEAD in (adapter_config.get("modules_to_save") or [])


def _final_norm(model):
    base = _base(model)
    core = getattr(base, "model", base)
    lm = getattr(core, "language_model", None)
    norm = getattr(lm, "norm", None)
    if norm is None:
        raise RuntimeError(f"{type(base).__name__} has no language_model.norm: not a Qwen2-VL-style model")
    return norm


@contextlib.contextmanager
def final_hidden(model):
    """Capture the language model's final (normed) hidden states of the next forward: yields a list that holds the
    (B, T, H) tensor afterwards. The output head may project only a few positions (``logits_to_keep``); this sees
    all of them."""
    got: list = []

    def hook(_module, _inputs, output):
        got.append(output)

    handle = _final_norm(model).register_forward_hook(hook)
    try:
        yield got
    finally:
        handle.remove()


def frame_token_spans(ids: list[int], vision_start: int, vision_end: int) -> list[tuple[int, int]]:
    """(first, last) positions of each image's visual tokens in one row of input ids, in prompt order."""
    spans, start = [], None
    for p, t in enumerate(ids):
        if t == vision_start:
            start = p + 1
        elif t == vision_end and start is not None:
            if p > start:
                spans.append((start, p - 1))
            start = None
    return spans


def frame_features(hidden, input_ids, vision_start: int, vision_end: int) -> list:
    """Per row, a (K, H) tensor: the mean final hidden state of each frame's visual tokens."""
    import torch

    rows = []
    for r, ids in enumerate(input_ids.tolist()):
        spans = frame_token_spans(ids, vision_start, vision_end)
        rows.append(torch.stack([hidden[r, a:b + 1].mean(0) for a, b in spans]) if spans
                    else hidden.new_zeros((0, hidden.shape[-1])))
    return rows


def frame_logits(model, hidden, input_ids, vision_start: int, vision_end: int) -> list:
    """Per row, (K, 11) logits of the head over the row's frames (fp32)."""
    head = getattr(_base(model), FRAME_HEAD)  # under PEFT a wrapper that forwards to the adapter's trained copy
    dtype = next(head.parameters()).dtype
    return [head(f.to(dtype)).float() for f in frame_features(hidden, input_ids, vision_start, vision_end)]


def frame_loss(model, hidden, input_ids, targets, vision_start: int, vision_end: int):
    """Mean cross-entropy of the head over every labelled frame of the batch (``targets``: (B, Kmax) op rows, -100 =
    none). The frames found in a row must match its number of targets (else the prompt and the record disagree)."""
    import torch
    import torch.nn.functional as F

    logits = frame_logits(model, hidden, input_ids, vision_start, vision_end)
    xs, ys = [], []
    for r, lg in enumerate(logits):
        t = targets[r]
        n = int((t != -100).sum())
        if lg.shape[0] != n:
            raise ValueError(f"row {r}: {lg.shape[0]} frames in the prompt but {n} frame labels")
        xs.append(lg)
        ys.append(t[:n].to(lg.device))
    x, y = torch.cat(xs), torch.cat(ys)
    return F.cross_entropy(x, y), (x.argmax(-1) == y).float().mean()


def frame_segment(probs: list[list[float]], k: int) -> tuple[int, int, float]:
    """The run [a, b] of consecutive frames most likely to be exactly operation ``k``'s: maximises
    sum_{a<=i<=b} log p_i(k) + sum_{i outside} log(1 - p_i(k)) over every a <= b (K <= 32: all pairs). Returns
    (a, b, that log-likelihood). Ties: the longer run, then the earlier one."""
    eps = 1e-6
    ins = [math.log(max(p[k], eps)) for p in probs]
    out = [math.log(max(1.0 - p[k], eps)) for p in probs]
    total_out = sum(out)
    best = None
    for a in range(len(probs)):
        acc = total_out
        for b in range(a, len(probs)):
            acc += ins[b] - out[b]
            key = (acc, b - a, -a)
            if best is None or key > best[0]:
                best = (key, a, b)
    if best is None:
        raise ValueError("no frames")
    return best[1], best[2], best[0][0]


def frame_shares(probs: list[list[float]], frame_indices: list[int]) -> list[float]:
    """Each operation's expected share of the clip's 125 frames under the frame head (sums to 1)."""
    cells = frame_cells(frame_indices)
    if len(cells) != len(probs):
        raise ValueError(f"{len(probs)} frame distributions for {len(cells)} shown frames")
    return [sum(c * p[k] for c, p in zip(cells, probs)) / CLIP_FRAMES for k in range(N_OPS)]


def fuse_dominant(answer_p: list[float], shares: list[float]) -> list[float]:
    """The dominant operation's distribution from both of the model's readings: the answer's probability times the
    frame head's share of the clip, renormalised (a product of experts: an operation must be both named and seen
    filling the clip). Measured on the CPU demo: ARCHITECTURE.md §3 "The frame head"."""
    w = [a * max(s, 1e-9) for a, s in zip(answer_p, shares)]
    z = sum(w)
    if not z > 0:
        return list(answer_p)
    return [x / z for x in w]


def frame_span(probs: list[list[float]], k: int, frame_indices: list[int], span_format: str = "shown"
               ) -> tuple[int, int, float]:
    """(start, end, log-likelihood) of operation ``k``'s run of shown frames (``frame_segment``), written as the run's
    answer writes spans, so the next operation is scored after the prefix it was trained on: shown frame numbers
    ("shown"), or clip frames (``clip_span``) for a "clip" run."""
    a, b, ll = frame_segment(probs, k)
    s, e = frame_indices[a], frame_indices[b]
    if span_format != "shown":
        s, e = clip_span(s, e, frame_indices)
    return s, e, ll
