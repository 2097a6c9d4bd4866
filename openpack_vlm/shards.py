"""WebDataset shards of sampled clips: the one on-disk format between the data pipeline and training/evaluation.

One sample per clip, key = clip_id:
  ``{clip_id}.json``     metadata (see ``ClipRecord``): truth, sampled frame indices, source, times
  ``{clip_id}.f00.jpg`` … ``f{K-1}.jpg``  the K sampled frames, 336×336 JPEG, in frame order
Shards are written as ``shard-%06d.tar.tmp`` and renamed to ``shard-%06d.tar`` only when complete, so a
``.tar`` on disk is never half-written.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

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


class ShardWriter:
    """Writes samples into size-bounded tar shards; each shard appears under its final name only when complete."""

    def __init__(self, out_dir: str | os.PathLike, max_bytes: int = 256 * 1024**2, start_index: int = 0):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.index = start_index
        self.written: list[Path] = []
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._bytes = 0

    def _open(self) -> None:
        final = self.out_dir / (SHARD_PATTERN % self.index)
        self._tmp = final.with_name(final.name + ".tmp")
        self._tar = tarfile.open(self._tmp, "w")
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
        final = self._tmp.with_name(self._tmp.name[: -len(".tmp")])
        os.replace(self._tmp, final)
        self.written.append(final)
        self._tar, self._tmp = None, None
        self.index += 1

    def abort(self) -> None:
        """Drop the shard in progress (its temp file) without publishing it."""
        if self._tar is not None:
            self._tar.close()
            self._tmp.unlink(missing_ok=True)
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


def iter_samples(paths: Iterable[str | os.PathLike]) -> Iterator[tuple[ClipRecord, list[Image.Image]]]:
    """Stream (record, frames) from shards with webdataset; only one sample is held in memory at a time."""
    import webdataset as wds

    urls = [str(p) for p in paths]
    ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
    for sample in ds:
        yield decode_sample(sample)


def decode_sample(sample: dict) -> tuple[ClipRecord, list[Image.Image]]:
    """A raw webdataset sample (bytes per member) → (ClipRecord, PIL frames in order)."""
    record = ClipRecord.from_json(json.loads(sample["json"]))
    frames = []
    for i in range(len(record.frame_indices)):
        data = sample.get(frame_member(i))
        if data is None:
            raise KeyError(f"{record.clip_id}: frame member {frame_member(i)} missing from shard")
        frames.append(Image.open(io.BytesIO(data)).convert("RGB"))
    return record, frames


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
