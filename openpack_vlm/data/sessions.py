"""The data pipeline's two halves that run per session and per split: ``process_session`` (in a worker process: a
session's clips → frames → the run's sampler → JPEGs) and ``LoggedShardWriter`` (shards written with a progress log,
so an interrupted run resumes where it stopped; ``read_progress``). ``pipeline.py`` plans the run and drives them."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..io_utils import one_line, write_jsonl
from .errors import FrameError, VideoDecodeError
from .openpack import OpenPackError
from .sampling import SamplingConfig, sample_clip
from .shards import SHARD_PATTERN, ClipRecord, ShardWriter, encode_jpeg
from .skeleton import PoseRender
from .sources import PoseFrameSource, open_source
from .timebar import draw_time_bar


@dataclass
class SessionTask:
    split: str
    root: str
    user: str
    session: str
    specs: list  # list[clips.ClipSpec]
    source: str
    k: int
    jpeg_quality: int
    pose_render: dict  # PoseRender fields, as the run contract records them
    time_bar: bool = False  # draw the time bar into the sampled frames (data/timebar.py)


@dataclass
class SessionResult:
    split: str
    user: str
    session: str
    items: list  # list[(ClipRecord dict without shard, list[bytes])]
    skipped: list
    source: str | None
    seconds: dict


def process_session(task: SessionTask) -> SessionResult:
    """Frames, sampling and JPEGs for the clips of one session (runs in a worker process)."""

    secs = {"open": 0.0, "frames": 0.0, "sampling": 0.0, "encode": 0.0}
    skipped: list[dict] = []
    items: list = []
    t = time.perf_counter()
    try:
        src = open_source(task.root, task.user, task.session, task.source, PoseRender.from_json(task.pose_render))
    except (OpenPackError, FrameError, VideoDecodeError, OSError, ValueError) as e:
        reason = f"no usable frame source ({one_line(e, with_type=True)})"
        skipped.append({"user": task.user, "session": task.session, "clips": len(task.specs), "reason": reason})
        return SessionResult(task.split, task.user, task.session, items, skipped, None, secs)
    secs["open"] += time.perf_counter() - t
    scfg = SamplingConfig(k=task.k)
    for spec in task.specs:
        try:
            t = time.perf_counter()
            if isinstance(src, PoseFrameSource):
                # skeleton frames: joint speed finds boundaries better than pixel differences of the rendering
                # (scripts/compare_sampling.py: 3.18 vs 3.80 frames from a boundary to the nearest sampled frame);
                # the sampler needs no pixels, so only the K kept frames are rendered (sampling counts as frames)
                clip = src.skeleton_clip(spec.t0_ms)
                frames, idx = clip.sampled(scfg)
                motion = clip.motion
                t1 = t2 = time.perf_counter()
            else:
                clip, motion = src.clip(spec.t0_ms), None
                t1 = time.perf_counter()
                idx = sample_clip(clip, scfg)
                t2 = time.perf_counter()
                frames = clip[idx]
            shown = [draw_time_bar(f, i) if task.time_bar else f for f, i in zip(frames, idx)]
            jpegs = [encode_jpeg(Image.fromarray(f), task.jpeg_quality) for f in shown]
            t3 = time.perf_counter()
        except (FrameError, VideoDecodeError, OSError, ValueError) as e:
            skipped.append({"user": task.user, "session": task.session, "clip_id": spec.clip_id,
                            "reason": one_line(e, with_type=True)})
            continue
        secs["frames"] += t1 - t
        secs["sampling"] += t2 - t1
        secs["encode"] += t3 - t2
        rec = ClipRecord(
            clip_id=spec.clip_id, user=spec.user, session=spec.session, t0_ms=int(spec.t0_ms), source=src.name,
            frame_indices=[int(i) for i in idx], truth=spec.truth.model_dump(), kind=spec.kind,
            boundary_frame=spec.boundary_frame, sampler="motion_kpt" if motion is not None else "motion",
            split=task.split,
            extra={"boundaries": spec.boundaries},
            frame_ops=[int(spec.labels[i]) for i in idx],
        )
        items.append((rec.to_json(), jpegs))
    return SessionResult(task.split, task.user, task.session, items, skipped, src.name, secs)


# --------------------------------------------------------------------------------------------------- writing
class LoggedShardWriter(ShardWriter):
    """ShardWriter that appends each finished shard (name + records) to progress.jsonl right after its rename."""

    def __init__(self, out_dir: Path, max_bytes: int, start_index: int, progress: Path):
        super().__init__(out_dir, max_bytes=max_bytes, start_index=start_index)
        self.progress = progress
        self.pending: list[dict] = []

    def write_item(self, record: dict, jpegs: list[bytes]) -> dict:
        record = dict(record)
        record["extra"] = {**record.get("extra", {}), "shard": SHARD_PATTERN % self.index}
        self.pending.append(record)  # before write(): write() may close the shard
        self.write(ClipRecord.from_json(record), jpegs)
        return record

    def close_shard(self) -> None:
        if self._tar is None:
            return
        name = SHARD_PATTERN % self.index
        super().close_shard()
        with open(self.progress, "a") as f:
            f.write(json.dumps({"shard": name, "records": self.pending}, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.pending = []

    def abort(self) -> None:
        super().abort()
        self.pending = []


def read_progress(split_dir: Path) -> list[dict]:
    """Logged shards whose .tar exists; unlogged shard files and temp files are deleted (they will be redone)."""
    entries: list[dict] = []
    prog = split_dir / "progress.jsonl"
    if prog.exists():
        for line in prog.read_text().splitlines():
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash: its shard is redone
            if (split_dir / e["shard"]).is_file():
                entries.append(e)
    logged = {e["shard"] for e in entries}
    # temp files of a crashed run: io_utils.AtomicPath's ".shard-*.tmp" (and "shard-*.tar.tmp" of older versions)
    for p in [*split_dir.glob("shard-*.tar"), *split_dir.glob(".shard-*.tmp"), *split_dir.glob("shard-*.tar.tmp")]:
        if p.name not in logged:
            p.unlink()
    write_jsonl(prog, entries)
    return entries


