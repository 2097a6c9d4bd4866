"""What training reads: the shuffled, reader-split stream of (record, frames) over a split's shards, and the
collator that turns clips into a model batch whose labels are the assistant's answer only (plus the frame head's
per-frame targets)."""
from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

from ..data.shards import ClipRecord, decode_sample
from ..prompt import DEFAULT_SPAN, build_messages, check_span_format
from .frame_head import op_index

IGNORE_INDEX = -100  # label value the loss skips


class TrainError(RuntimeError):
    """A training run cannot start as asked (one-line message)."""


def reader_identity(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(index, count) of this reader among all (process, dataloader worker) pairs."""
    import torch.utils.data as tud

    if rank is None:
        rank = int(os.environ.get("RANK", 0))
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", 1))
    info = tud.get_worker_info()
    wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * nw + wid, world_size * nw


def read_shards(paths: list[Path]) -> Iterator[dict]:
    """The raw samples (bytes per member, JPEGs undecoded) of exactly these shards, in order. Unlike
    ``shards.iter_samples`` (webdataset defaults), no node/worker splitting happens here: ``single_node_only`` raises
    under DDP and ``split_by_worker`` would split an already split list again; ``ShardStream`` decides who reads
    what."""
    import webdataset as wds

    yield from wds.WebDataset([str(p) for p in paths], shardshuffle=False, empty_check=False, nodesplitter=None,
                              workersplitter=None)


class ShardStream:
    """Infinite shuffled stream of (ClipRecord, frames) over a split's shards (a torch IterableDataset).

    Split across readers (processes x workers): by shard when there are at least as many shards as readers, else by
    sample (every reader walks all shards and keeps every n-th sample). Each pass reshuffles the shard order and
    uses a shuffle buffer of ``buffer`` samples; a pass that yields nothing raises instead of spinning. The buffer
    holds samples as their JPEG bytes and a sample's frames are decoded only when it leaves the buffer, so a reader
    decodes only the samples it yields (not the other readers' share, not a full buffer before the first batch) and
    the buffer costs ~0.2 MB a clip instead of ~2.7 MB of decoded 336x336 frames.
    Kept instead of webdataset's ``split_by_node`` / ``split_by_worker`` / ``shuffle`` / ``repeat``: those split the
    shard LIST, so with fewer shards than readers (the demo has 1 train shard; Kaggle runs 2 GPUs x 2 workers) a
    reader gets nothing, and ``repeat`` replays one shard order; here a reader falls back to every n-th sample and
    each pass draws a new, seeded order (``make results`` is reproducible because of that seed).
    """

    def __init__(self, paths: list[Path], buffer: int = 256, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None, passes: int | None = None):
        self.paths = [Path(p) for p in paths]
        self.buffer = max(1, buffer)
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.passes = passes  # None = forever (training is bounded by max_steps)

    def _one_pass(self, epoch: int, reader: int, readers: int) -> Iterator[dict]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        paths = list(self.paths)
        rng.shuffle(paths)
        by_shard = len(paths) >= readers
        mine = paths[reader::readers] if by_shard else paths
        for j, sample in enumerate(read_shards(mine)):
            if by_shard or j % readers == reader:
                yield sample

    def __iter__(self):
        reader, readers = reader_identity(self.rank, self.world_size)
        rng = random.Random(self.seed * 7919 + reader)
        buf: list = []
        epoch = 0
        while self.passes is None or epoch < self.passes:
            n = 0
            for sample in self._one_pass(epoch, reader, readers):
                n += 1
                if len(buf) < self.buffer:
                    buf.append(sample)
                    continue
                k = rng.randrange(len(buf))
                buf[k], sample = sample, buf[k]
                yield decode_sample(sample)
            if n == 0:
                raise TrainError(f"reader {reader}/{readers} got no samples from {len(self.paths)} shard(s)")
            epoch += 1
        rng.shuffle(buf)
        yield from map(decode_sample, buf)


def make_stream(paths: list[Path], **kw):
    """``ShardStream`` as a ``torch.utils.data.IterableDataset`` (kept importable without torch for the class)."""
    import torch.utils.data as tud

    class _TorchShardStream(ShardStream, tud.IterableDataset):
        pass

    return _TorchShardStream(paths, **kw)


def shuffled_rows(data: Path, seed: int) -> dict[str, dict]:
    """clip_id -> the manifest row of another clip of the train split (a seeded permutation of the manifest, so the
    class frequencies stay those of the split): the shuffled-label control trains each clip on that row's answer
    (``truth``) and per-frame operations (``frame_ops``)."""
    path = data / "train" / "manifest.jsonl"
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        raise TrainError(f"--shuffle_labels needs the train split's manifest ({path}): {e}") from None
    rows.sort(key=lambda r: r["clip_id"])
    others = list(rows)
    random.Random(seed).shuffle(others)
    return {r["clip_id"]: o for r, o in zip(rows, others)}


def shuffled_truths(data: Path, seed: int) -> dict[str, dict]:
    """clip_id -> the answer of another clip (``shuffled_rows``)."""
    return {c: o["truth"] for c, o in shuffled_rows(data, seed).items()}


class Collator:
    """(record, frames) list -> model batch. Labels: only the assistant's JSON answer and its ``<|im_end|>``.
    ``truth_of``: clip_id -> the answer to train instead of the record's own (the shuffled-label control); ``span``:
    how the answer's span is written (the data contract's ``answer_span``)."""

    def __init__(self, processor, truth_of: dict[str, dict] | None = None, span: str = DEFAULT_SPAN,
                 frame_targets: bool = False, frame_ops_of: dict[str, list[int] | None] | None = None):
        self.processor = processor
        self.truth_of = truth_of
        self.frame_ops_of = frame_ops_of  # clip_id -> the frame labels to train instead of the record's own
        self.span = check_span_format(span)
        self.frame_targets = frame_targets  # also (B, K) "frame_targets": each shown frame's operation row
        tok = processor.tokenizer
        self.im_start = tok.convert_tokens_to_ids("<|im_start|>")
        self.im_end = tok.convert_tokens_to_ids("<|im_end|>")
        self.header = [self.im_start] + tok("assistant\n", add_special_tokens=False)["input_ids"]

    def texts(self, records: list[ClipRecord]) -> list[str]:
        return [
            self.processor.apply_chat_template(
                build_messages(r.frame_indices, self.truth_of[r.clip_id] if self.truth_of else r.truth,
                               span=self.span),
                tokenize=False)
            for r in records
        ]

    def __call__(self, examples: list[tuple[ClipRecord, list]]) -> dict:
        records = [r for r, _ in examples]
        images = [im for _, frames in examples for im in frames]
        batch = self.processor(text=self.texts(records), images=images, padding=True, return_tensors="pt")
        batch["labels"] = self.labels(batch["input_ids"], batch["attention_mask"], [r.clip_id for r in records])
        if self.frame_targets:
            batch["frame_targets"] = self.frame_rows(records)
        return dict(batch)

    def frame_rows(self, records: list[ClipRecord]):
        """(B, K) operation rows of each clip's shown frames (-100 = padding): the frame head's targets (for the
        shuffled-label control, another clip's, as its answer is)."""
        import torch

        k = max(len(r.frame_indices) for r in records)
        out = torch.full((len(records), k), IGNORE_INDEX, dtype=torch.long)
        for row, r in enumerate(records):
            ops = self.frame_ops_of[r.clip_id] if self.frame_ops_of is not None else r.frame_ops
            if ops is None or len(ops) != len(r.frame_indices):
                raise TrainError(f"{r.clip_id}: no per-frame operations for its {len(r.frame_indices)} frames in the "
                                 "shards (data written before the frame head existed): rerun data_pipeline.py, or "
                                 "train with --frame_loss_weight 0")
            out[row, :len(ops)] = torch.tensor([op_index(o) for o in ops])
        return out

    def labels(self, input_ids, attention_mask, clip_ids: list[str]):
        labels = input_ids.clone().fill_(IGNORE_INDEX)
        h = len(self.header)
        for row, ids in enumerate(input_ids.tolist()):
            start = None
            for i in range(len(ids) - h, -1, -1):  # the LAST assistant header (the answer being trained)
                if ids[i : i + h] == self.header:
                    start = i + h
                    break
            if start is None:
                raise TrainError(f"{clip_ids[row]}: no assistant turn in the templated text")
            try:
                end = ids.index(self.im_end, start)
            except ValueError:
                raise TrainError(f"{clip_ids[row]}: assistant answer has no <|im_end|> (truncated?)") from None
            labels[row, start : end + 1] = input_ids[row, start : end + 1]
        labels[attention_mask == 0] = IGNORE_INDEX
        return labels
