"""The data pipeline: OpenPack root -> clips -> 25-fps 336x336 frames -> K sampled frames -> WebDataset shards.

Per split, per session: timeline (openpack.load_timeline) -> clips (clips.make_clips) -> 125 frames
(frames.open_source) -> K motion-adaptive indices (sampling.sample_clip) -> JPEGs -> shards (shards.ShardWriter).
Outputs under ``out``:
  {split}/shard-%06d.tar      WebDataset shards (see shards.py), finished shards only
  {split}/progress.jsonl      one line per finished shard: its name and the ClipRecords in it (resume log)
  {split}/manifest.jsonl      one ClipRecord per line (extra: shard name, label-change frames)
  {split}/pairs.jsonl         chat-format training pairs; image items name their shard member
  summary.json                counts, skipped items with reasons, sources used, timing of this run
  grammar.json                Grammar fitted on the train split's timelines
  run.json                    the run contract's data section (contract.py): what shapes a sample, the grammar's
                              sha256; a rerun with other settings is refused

Resume: a shard is logged in progress.jsonl right after it is renamed from ``.tmp``; a rerun keeps the logged shards,
deletes unlogged ``shard-*.tar``/``.tmp`` files, and processes only clips not yet in a logged shard. Sessions run in
parallel worker processes (``workers``); one writer in the main process writes their results in a fixed order, so
the output does not depend on the number of workers. Bad inputs (missing/corrupt frames, empty timeline, session
shorter than a clip, no frame stream) skip the session or clip with a warning and are counted in summary.json.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import re
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from ..cli import build_parser, parse, setting
from ..contract import RUN_FILE, ContractError, DataSection, RunContract, file_sha256
from ..grammar import Grammar, mean_durations
from ..io_utils import one_line, write_json, write_jsonl
from ..prompt import DEFAULT_SPAN, SPAN_FORMATS, check_span_format
from . import clips as clipsmod
from . import openpack
from .download import DownloadConfig, DownloadError, download
from .export import ExportError, export_llava
from .letterbox import SIZE
from .samples import export_samples, pair_for, spread
from .sampling import SamplingConfig
from .sessions import LoggedShardWriter, SessionTask, process_session, read_progress
from .skeleton import PoseRender
from .sources import SOURCE_KINDS

log = logging.getLogger("openpack_vlm.pipeline")

DEFAULT_SPLITS = ("train=U0101-U0106", "val=U0107", "test=U0108")


class PipelineError(RuntimeError):
    """A problem that stops the whole run (message is one line)."""


@dataclass
class PipelineConfig:
    """The data pipeline's settings (data_pipeline.py's flags are generated from these fields)."""

    out: str = setting("out/data", "output directory D")
    root: str | None = setting(None, "OpenPack root (default: $OPENPACK_ROOT, or --download's folder)")
    download: str | None = setting(None, "first download OpenPack's preprocessed keypoint CSVs from Zenodo into this "
                                         "folder (data/download.py; nothing is fetched twice), then build from it")
    zenodo_url: str | None = setting(None, "Zenodo base URL for --download (unset = $OPENPACK_ZENODO_URL or zenodo.org)")
    source: str = setting("auto", "frames from RGB (frames or video) or rendered 2D keypoints; auto = rgb where "
                          "present", choices=SOURCE_KINDS)
    pose_render: str = setting("person", "skeleton frames: person = a window following the worker, with motion "
                               "trails (skeleton.PoseRender); frame = the whole 1280x720 Kinect frame (first renderer)",
                               choices=["person", "frame"])
    workers: int = setting(1, "sessions processed in parallel (processes)")
    shard_mb: int = setting(256, "shard size target in MB (WebDataset recommends 100-500 MB)")
    k: int = setting(8, "sampled frames per clip (8 x 144 visual tokens at 336 px)")
    seed: int = setting(0, "clip jitter and within-clip placement")
    splits: list[str] = setting(default_factory=lambda: list(DEFAULT_SPLITS),
                                help="NAME=USERS items, e.g. train=U0101-U0106 val=U0107 test=U0108")
    sessions: list[str] | None = setting(None, "only these sessions, e.g. S0100 S0500 (default: all)")
    within_share: float = setting(0.2, "share of clips inside one operation (clips.ClipConfig)")
    null_boundaries: bool = setting(False, "also clips at boundaries with Null on one side (clips.ClipConfig)")
    jpeg_quality: int = setting(90, "JPEG quality of the stored frames (serving round-trips through it too)")
    answer_span: str = setting(DEFAULT_SPAN, "how the answer's span is written: shown = the first/last sampled frame "
                               "inside the operation (numbers the prompt shows); clip = exact clip frames 0-124",
                               choices=list(SPAN_FORMATS))
    time_bar: bool = setting(False, "draw each sampled frame's time into it (data/timebar.py: a bar along the "
                                    "bottom edge, filled to the frame's share of the clip); off by default: on the "
                                    "tiny demo model it did not move the span (ARCHITECTURE.md §3)")
    max_clips_per_session: int | None = setting(None, "cap, evenly spread over the session, for quick runs")
    samples_out: str | None = setting(None, "also export n_samples examples (frames + pair JSON) here")
    n_samples: int = setting(20, "examples exported to samples_out")
    export_llava: str | None = setting(None, "also write every pair for 2U1/Qwen2-VL-Finetune (LLaVA JSON) and "
                                             "LLaMA-Factory (sharegpt + dataset_info.json) here (data/export.py)")
    overwrite: bool = setting(False, "replace data in out made with other settings")

    def __post_init__(self):
        if self.source not in SOURCE_KINDS:
            raise PipelineError(f"unknown --source {self.source!r}; choose one of {', '.join(SOURCE_KINDS)}")
        try:
            check_span_format(self.answer_span)
        except ValueError as e:
            raise PipelineError(f"--answer_span: {e}") from None
        if self.k < 1 or self.shard_mb < 1 or self.workers < 1:
            raise PipelineError("--k, --shard_mb and --workers must be >= 1")
        if not 0 <= self.within_share < 1:
            raise PipelineError(f"--within_share must be in [0, 1), got {self.within_share}")
        if not 1 <= self.jpeg_quality <= 100:
            raise PipelineError(f"--jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        if isinstance(self.splits, dict):  # {split: [users]} from Python callers
            self.splits = [f"{k}={','.join(v)}" for k, v in self.splits.items()]
        self.split_users = parse_splits(self.splits)

    def contract(self) -> RunContract:
        """The data section of the run contract: what shapes a sample (a resumed run must match it)."""
        sampling = SamplingConfig(k=self.k)
        return RunContract(data=DataSection(
            source=self.source, k=self.k, jpeg_quality=self.jpeg_quality, frame_size=SIZE,
            sampler={"name": "motion", "params": asdict(sampling),
                     "pose_motion": "keypoint speed (sampling.motion_from_keypoints) for pose clips"},
            splits=self.split_users, seed=self.seed, within_share=self.within_share,
            null_boundaries=self.null_boundaries, sessions=self.sessions,
            max_clips_per_session=self.max_clips_per_session, pose_render=self.render().to_json(),
            answer_span=self.answer_span, time_bar=self.time_bar))

    def render(self) -> PoseRender:
        return PoseRender(mode=self.pose_render)


# ------------------------------------------------------------------------------------------------------ the run
def _plan(cfg: PipelineConfig, root: Path, skipped: list[dict]) -> tuple[dict[str, list], list[list[int]]]:
    """Clip specs per split and session (cheap: timelines only) and the train split's op sequences."""

    users_in_root = set(openpack.list_users(root))
    ccfg = clipsmod.ClipConfig(within_share=cfg.within_share, null_boundaries=cfg.null_boundaries, seed=cfg.seed)
    plan: dict[str, list] = {}
    train_timelines: list[list] = []
    for split, users in cfg.split_users.items():
        plan[split] = []
        for user in users:
            if user not in users_in_root:
                skipped.append({"split": split, "user": user, "reason": f"user {user} not found under {root}"})
                continue
            sessions = openpack.list_sessions(root, user)
            if cfg.sessions is not None:
                sessions = [s for s in sessions if s in cfg.sessions]
            for session in sessions:
                where = {"split": split, "user": user, "session": session}
                try:
                    timeline = openpack.load_timeline(root, user, session)
                except (openpack.OpenPackError, OSError, ValueError) as e:
                    skipped.append({**where, "reason": f"no usable timeline ({one_line(e, with_type=True)})"})
                    continue
                if not timeline:
                    skipped.append({**where, "reason": "empty timeline"})
                    continue
                if timeline[-1].end_ms - timeline[0].start_ms < clipsmod.CLIP_MS:
                    skipped.append({**where, "reason": "session shorter than one 5-s clip"})
                    continue
                if split == "train":
                    train_timelines.append(timeline)
                clip_skips: list[dict] = []
                specs = clipsmod.make_clips(timeline, user, session, ccfg, skipped=clip_skips)
                skipped.extend({"split": split, **s} for s in clip_skips)
                specs = spread(specs, cfg.max_clips_per_session)
                if not specs:
                    skipped.append({**where, "reason": "no clip fits the timeline"})
                    continue
                plan[split].append((user, session, specs))
    return plan, train_timelines


def _check_settings(out: Path, cfg: PipelineConfig) -> RunContract:
    """D/run.json = this run's contract; data made with other settings is refused (or removed with overwrite)."""
    contract = cfg.contract()
    path = out / RUN_FILE
    if path.exists():
        try:
            old = RunContract.load(path).data.settings()
        except ContractError:  # data made before run contracts existed (or a damaged record)
            old = {"run.json": "not a version-%d run contract" % contract.version}
        new = contract.data.settings()
        if old != new:
            if not cfg.overwrite:
                diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise PipelineError(f"{out} holds data made with other settings ({', '.join(diff)}); "
                                    "use a new --out or pass --overwrite")
            for split in set(old.get("splits") or {}) | set(new["splits"]):
                if (out / split).is_dir():
                    shutil.rmtree(out / split)
    contract.save(out)
    return contract


def run(cfg: PipelineConfig) -> dict:
    """Run the pipeline; returns the summary (also written to out/summary.json)."""

    t_start = time.perf_counter()
    if cfg.download:
        try:
            download(DownloadConfig(out=cfg.download, zenodo_url=cfg.zenodo_url))
        except DownloadError as e:
            raise PipelineError(str(e)) from None
    try:
        root = openpack.resolve_root(cfg.root or cfg.download)
    except openpack.OpenPackError as e:
        raise PipelineError(str(e)) from None
    out = Path(cfg.out)
    contract = _check_settings(out, cfg)

    skipped: list[dict] = []
    try:
        plan, train_timelines = _plan(cfg, root, skipped)
    except openpack.OpenPackError as e:
        raise PipelineError(str(e)) from None
    if not any(plan.values()):
        raise PipelineError(f"no session under {root} yields clips for splits {sorted(cfg.split_users)} "
                            f"({len(skipped)} skipped; first: {skipped[0]['reason'] if skipped else 'none'})")

    # resume: clips already in logged shards are not redone
    done: dict[str, list[dict]] = {}
    tasks: list[SessionTask] = []
    for split, sessions in plan.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        done[split] = read_progress(out / split)
        done_ids = {r["clip_id"] for e in done[split] for r in e["records"]}
        for user, session, specs in sessions:
            todo = [s for s in specs if s.clip_id not in done_ids]
            if todo:
                tasks.append(SessionTask(split, str(root), user, session, todo, cfg.source, cfg.k, cfg.jpeg_quality,
                                         cfg.render().to_json(), cfg.time_bar))

    seconds = Counter()
    sources = Counter()
    n_new = 0
    writers: dict[str, LoggedShardWriter] = {}
    total = sum(len(t.specs) for t in tasks)
    pool = mp.get_context("fork").Pool(cfg.workers) if cfg.workers > 1 and len(tasks) > 1 else None
    try:
        results = pool.imap(process_session, tasks) if pool else map(process_session, tasks)
        with tqdm(total=total, desc="clips", unit="clip", disable=None) as bar:
            for res in results:
                for s in res.skipped:
                    log.warning("skipped %s: %s", s.get("clip_id", f"{res.user}/{res.session}"), s["reason"])
                skipped.extend({"split": res.split, **s} for s in res.skipped)
                seconds.update(res.seconds)
                for split, other in writers.items():
                    if split != res.split:
                        other.close_shard()  # tasks come split by split: log a finished split's last shard now
                if res.items:
                    w = writers.get(res.split)
                    if w is None:
                        start = max((int(re.findall(r"\d+", e["shard"])[0]) + 1 for e in done[res.split]), default=0)
                        w = writers[res.split] = LoggedShardWriter(
                            out / res.split, cfg.shard_mb * 1024**2, start, out / res.split / "progress.jsonl")
                    for rec, jpegs in res.items:
                        w.write_item(rec, jpegs)
                    sources[res.source] += len(res.items)
                    n_new += len(res.items)
                bar.update(len(res.items) + sum(1 if "clip_id" in s else s.get("clips", 0) for s in res.skipped))
                bar.set_postfix_str(f"{res.user}/{res.session}")
        for w in writers.values():
            w.close_shard()
    except BaseException:
        for w in writers.values():
            w.abort()  # never leave a half-written shard
        raise
    finally:
        if pool:
            pool.terminate()
            pool.join()

    # manifests, pairs, grammar, summary
    counts: dict[str, dict] = {}
    for split in plan:
        entries = read_progress(out / split)
        records = [r for e in entries for r in e["records"]]
        write_jsonl(out / split / "manifest.jsonl", records)
        write_jsonl(out / split / "pairs.jsonl", [pair_for(r, cfg.answer_span) for r in records])
        counts[split] = {
            "clips": len(records),
            "shards": len(entries),
            "sessions": len({(r["user"], r["session"]) for r in records}),
            "kinds": dict(Counter(r["kind"] for r in records)),
            "sources": dict(Counter(r["source"] for r in records)),
            "dominant_operation": dict(sorted(Counter(r["truth"]["dominant_operation"] for r in records).items())),
        }
    kinds = {"pose" if src == "pose" else "rgb" for c in counts.values() for src in c["sources"]}
    contract.data.frames = kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else None)
    if train_timelines:
        grammar = Grammar.fit([[int(s.op_id) for s in tl] for tl in train_timelines])
        # the procedure's other half: how long each operation lasts, for the timeline's HMM (timeline/merge.py)
        grammar.meta["mean_seconds"] = {str(k): v for k, v in mean_durations(train_timelines).items()}
        grammar.save(out / "grammar.json")
        contract.data.grammar = {"file": "grammar.json", "sha256": file_sha256(out / "grammar.json")}
    else:
        log.warning("no train sessions: grammar.json not written")
    contract.save(out)

    wall = time.perf_counter() - t_start
    work = sum(seconds[k] for k in ("frames", "sampling", "encode"))
    summary = {
        "root": str(root),
        "settings": contract.data.settings(),
        "splits": counts,
        "skipped": skipped,
        "skipped_by_reason": dict(Counter(re.sub(r"\d{6,}", "N", s["reason"]) for s in skipped)),
        "sources_used_this_run": dict(sources),
        "grammar": "grammar.json" if train_timelines else None,
        "timing": {
            "wall_s": round(wall, 3),
            "workers": cfg.workers,
            "clips_this_run": n_new,
            "clips_per_s": round(n_new / wall, 3) if wall > 0 else None,
            "cpu_s": {k: round(v, 3) for k, v in sorted(seconds.items())},
            "sampling_share": round(seconds["sampling"] / work, 4) if work > 0 else None,
        },
    }
    write_json(out / "summary.json", summary)
    if not any(c["clips"] for c in counts.values()):
        whole = [x for x in skipped if "t0_ms" not in x and "clip_id" not in x]  # sessions/users skipped entirely
        first = (f"{whole[0].get('user', '')}/{whole[0].get('session', '')}: {whole[0]['reason']}" if whole
                 else skipped[0]["reason"] if skipped else "none")
        raise PipelineError(f"no clips written: {len(skipped)} items skipped (first: {first}); "
                            f"see {out / 'summary.json'}")
    if cfg.samples_out:
        flags = " ".join(([f"--source {cfg.source}"] if cfg.source != "auto" else []) +
                         ([f"--pose-render {cfg.pose_render}"] if cfg.pose_render != "person" else []) +
                         ([f"--answer-span {cfg.answer_span}"] if cfg.answer_span != DEFAULT_SPAN else []) +
                         (["--time_bar"] if cfg.time_bar else []))
        export_samples(out, Path(cfg.samples_out), cfg.n_samples, list(plan), root, flags, span=cfg.answer_span)
    if cfg.export_llava:
        try:
            summary["export_llava"] = export_llava(out, cfg.export_llava)
        except ExportError as e:
            raise PipelineError(f"--export_llava: {e}") from None
    return summary


def parse_splits(items: list[str]) -> dict[str, list[str]]:
    """``["train=U0101-U0106", "val=U0107", "test=U0108,U0109"]`` -> {split: [users]} (ranges by user number)."""
    splits: dict[str, list[str]] = {}
    for item in items:
        if "=" not in item:
            raise PipelineError(f"bad --splits item {item!r}; expected NAME=USERS, e.g. train=U0101-U0106")
        name, spec = item.split("=", 1)
        users: list[str] = []
        for part in filter(None, spec.split(",")):
            m = re.fullmatch(r"U(\d{4})-U?(\d{4})", part)
            if m:
                a, b = int(m.group(1)), int(m.group(2))
                if a > b:
                    raise PipelineError(f"bad user range {part!r} in --splits")
                users.extend(f"U{i:04d}" for i in range(a, b + 1))
            elif re.fullmatch(r"U\d{4}", part):
                users.append(part)
            else:
                raise PipelineError(f"bad user {part!r} in --splits; expected U0101 or U0101-U0106")
        if not name or not users:
            raise PipelineError(f"bad --splits item {item!r}")
        splits[name] = users
    return splits


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(PipelineConfig, description="OpenPack -> boundary clips -> frames -> WebDataset shards + chat pairs + the run contract (data_pipeline.py, openpack-data)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        cfg, _ = parse(parser, argv)
        summary = run(cfg)
    except (PipelineError, OSError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a bug, not bad input: one line here, the traceback with --debug
        if debug:
            raise
        print(f"error: unexpected {type(e).__name__}: {one_line(e)} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1
    for split, c in summary["splits"].items():
        print(f"{split}: {c['clips']} clips in {c['shards']} shards from {c['sessions']} sessions "
              f"-> {cfg.out}/{split}/")
    print(f"skipped: {len(summary['skipped'])} ({summary['skipped_by_reason'] or 'none'})")
    print(f"wrote {cfg.out}/summary.json, run.json" + (", grammar.json" if summary["grammar"] else ""))
    if cfg.samples_out:
        print(f"wrote {cfg.n_samples} samples to {cfg.samples_out}/")
    if cfg.export_llava:
        print(f"wrote the pairs for 2U1 ({cfg.export_llava}/{{split}}.llava.json) and LLaMA-Factory "
              f"({cfg.export_llava}/dataset_info.json)")
    return 0

