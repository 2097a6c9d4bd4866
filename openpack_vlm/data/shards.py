"""WebDataset shards of sampled clips: the one on-disk format between the data pipeline and training/evaluation.

One sample per clip, key = clip_id:
  ``{clip_id}.json``     metadata (see ``ClipRecord``): truth, sampled frame indices, source, times
  ``{clip_id}.f00.jpg`` … ``f{K-1}.jpg``  the K sampled frames, 336×336 JPEG, in frame order
Shards are written under a temporary name (io_utils.AtomicPath) and renamed to ``shard-%06d.tar`` only when complete, so a
``.tar`` on disk is never half-written.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from ..io_utils import AtomicPath

SHARD_PATTERN = "shard-%06d.tar"


@dataclass
class ClipRecord:
    """Metadata of one clip as stored in the shard's ``.json`` member and in the split's manifest."""

    clip_id: str
    user: str
    session: str
    t0_ms: int  # unixtime (ms) of clip frame 0
    source: str  # frame source actually used: "rgb" | "video" | "pose"
    frame_indices: list[int]  # sampled frames, sorted, in 0..124 (25-fps clip)
    truth: dict  # ClipTruth as dict
    kind: str = "boundary"  # "boundary" (an operation boundary near the centre) | "within"
    boundary_frame: int | None = None  # clip frame of the first boundary after frame 0, if any
    sampler: str = "motion"
    split: str = ""
    extra: dict = field(default_factory=dict)
    frame_ops: list[int] | None = None  # operation id at each sampled frame (frame_indices order): the frame head's
    #                                     targets; None in data written before it existed

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "ClipRecord":
        return cls(**d)


def frame_member(i: int) -> str:
    return f"f{i:02d}.jpg"


def encode_jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_jpeg(data: bytes) -> Image.Image:
    """A stored frame as training and evaluation see it (PIL, RGB)."""
    return Image.open(io.BytesIO(data)).convert("RGB")


def jpeg_round_trip(frame, quality: int) -> Image.Image:
    """A (H,W,3) uint8 frame or PIL image through the shards' JPEG encode/decode: what the model was trained on."""
    img = frame if isinstance(frame, Image.Image) else Image.fromarray(frame)
    return decode_jpeg(encode_jpeg(img, quality))


class ShardWriter:
    """Writes samples into size-bounded tar shards; each shard appears under its final name only when complete."""

    def __init__(self, out_dir: str | os.PathLike, max_bytes: int = 256 * 1024**2, start_index: int = 0):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.index = start_index
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._bytes = 0

    def _open(self) -> None:
        self._tmp = AtomicPath(self.out_dir / (SHARD_PATTERN % self.index))
        self._tar = tarfile.open(self._tmp.tmp, "w")
        self._bytes = 0

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0  # deterministic archives
        info.mode = 0o644
        self._tar.addfile(info, io.BytesIO(data))
        self._bytes += len(data) + 1024

    def write(self, record: ClipRecord, jpegs: list[bytes]) -> None:
        if len(jpegs) != len(record.frame_indices):
            raise ValueError(f"{record.clip_id}: {len(jpegs)} frames for {len(record.frame_indices)} indices")
        if self._tar is None:
            self._open()
        key = record.clip_id
        if "." in key:
            raise ValueError(f"clip_id {key!r} must not contain '.' (WebDataset splits keys at dots)")
        self._add(f"{key}.json", json.dumps(record.to_json(), sort_keys=True).encode())
        for i, data in enumerate(jpegs):
            self._add(f"{key}.{frame_member(i)}", data)
        if self._bytes >= self.max_bytes:
            self.close_shard()

    def close_shard(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        self._tmp.commit()
        self._tar, self._tmp = None, None
        self.index += 1

    def abort(self) -> None:
        """Drop the shard in progress (its temp file) without publishing it."""
        if self._tar is not None:
            self._tar.close()
            self._tmp.abort()
            self._tar, self._tmp = None, None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close_shard()
        else:
            self.abort()


def shard_paths(split_dir: str | os.PathLike) -> list[Path]:
    """Finished shards of a split directory, in order (temp files are ignored)."""
    paths = sorted(Path(split_dir).glob("shard-*.tar"))
    if not paths:
        raise FileNotFoundError(f"no shards (shard-*.tar) in {split_dir}")
    return paths


def iter_raw_samples(paths: Iterable[str | os.PathLike]) -> Iterator[dict]:
    """Stream raw webdataset samples (bytes per member) from shards, in order; one sample in memory at a time."""
    import webdataset as wds

    yield from wds.WebDataset([str(p) for p in paths], shardshuffle=False, empty_check=False)


def sample_jpegs(sample: dict) -> tuple[ClipRecord, list[bytes]]:
    """A raw sample → (ClipRecord, its K frames' JPEG bytes in order, undecoded). KeyError names a missing member."""
    record = ClipRecord.from_json(json.loads(sample["json"]))
    jpegs = []
    for i in range(len(record.frame_indices)):
        data = sample.get(frame_member(i))
        if data is None:
            raise KeyError(f"{record.clip_id}: frame member {frame_member(i)} missing from shard")
        jpegs.append(data)
    return record, jpegs


def iter_samples(paths: Iterable[str | os.PathLike]) -> Iterator[tuple[ClipRecord, list[Image.Image]]]:
    """Stream (record, frames) from shards with webdataset; only one sample is held in memory at a time."""
    for sample in iter_raw_samples(paths):
        yield decode_sample(sample)


def decode_sample(sample: dict) -> tuple[ClipRecord, list[Image.Image]]:
    """A raw webdataset sample (bytes per member) → (ClipRecord, PIL frames in order)."""
    record, jpegs = sample_jpegs(sample)
    return record, [decode_jpeg(data) for data in jpegs]
