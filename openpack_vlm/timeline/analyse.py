"""A whole recording → its operation timeline: windows answered like ``/predict``, merged, cycle times, scores.

``analyse_video`` (a camera file) and ``analyse_windows`` (any window stream, e.g. an OpenPack session's skeleton
frames) run the SAME predictor and run contract as ``/predict`` on every window (``Predictor.predict_clips``: the
contract's sampler, K and JPEG round trip), ``batch_windows`` at a time; ``merge.merge_windows`` turns the
overlapping answers into per-second labels and segments. Progress goes to ``on_window(record, done, total)``;
``cancelled()`` returning True stops the work between batches (``TimelineCancelled``).
"""
from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..cli import setting
from ..data.errors import FrameError
from ..data.keypoint_files import sniff_keypoint_file, track_from_keypoint_file
from ..data.pose_estimate import (
    PoseEstimateConfig,
    estimate_recording,
    parse_roi,
)
from ..data.video import iter_video
from ..io_utils import one_line
from ..labels import ID_TO_NAME, NAME_TO_ID, NULL_ID
from ..metrics import segment_scores
from ..prompt import frame_cells
from ..schema import CLIP_FRAMES, CLIP_SECONDS, FPS
from .merge import NO_WORKER, MergeConfig, mark_no_worker, merge_windows
from .windows import Window, expected_windows, iter_windows, stride_ticks, track_windows, worker_share_per_second

FORMAT = "openpack-vlm-timeline"
VERSION = 1

#: A box's cycle starts with Picking and ends with Attach Shipping Label or Put on Back Table (OpenPack's procedure:
#: Picking → Relocate Item Label → Assemble Box → Insert Items → Close Box → Attach Box Label → Scan Label → Fill out
#: Order → Attach Shipping Label [→ Put on Back Table]).
CYCLE_START = NAME_TO_ID["Picking"]
CYCLE_END = (NAME_TO_ID["Attach Shipping Label"], NAME_TO_ID["Put on Back Table"])


class TimelineError(ValueError):
    """A recording that cannot be analysed as asked (one-line message)."""


class TimelineCancelled(RuntimeError):
    """The caller cancelled the analysis (client gone, DELETE, Ctrl-C)."""


@dataclass
class TimelineConfig:
    """Timeline settings (``python -m openpack_vlm.timeline``'s flags are these fields and the model's)."""

    stride: float = setting(2.5, "seconds between window starts (5-s windows; 2.5 = every second seen by 2 windows)")
    batch_windows: int = setting(4, "windows answered together (one predict_batch)")
    duration_scale: float = setting(1.0, "x the real OpenPack mean operation durations in the HMM prior "
                                         "(the synthetic demo data use 0.5)")
    null_prob: float = setting(0.05, "share of operation changes that pass through Null in the HMM")
    hmm: str = setting("auto", "smooth the per-second votes with the HMM: auto = when the predictor has a grammar "
                               "(without one the votes alone scored better, ARCHITECTURE.md section 5) | on | off",
                       choices=["auto", "on", "off"])
    max_seconds: float | None = setting(None, "refuse recordings longer than this (s); unset = no limit")
    pose_roi: str | None = setting(None, "skeleton runs: where the worker stands, x,y,w,h as shares of the frame; "
                                         "unset = the whole frame (small workers searched in crops)")
    min_worker_share: float = setting(0.5, "skeleton runs: seconds in which fewer keypoint frames show a worker "
                                           "are marked \"no worker\"")

    def __post_init__(self):
        stride_ticks(self.stride)
        if self.batch_windows < 1:
            raise ValueError(f"batch_windows must be >= 1, got {self.batch_windows}")
        if not self.duration_scale > 0:
            raise ValueError(f"duration_scale must be > 0, got {self.duration_scale}")
        if not 0 <= self.null_prob < 1:
            raise ValueError(f"null_prob must be in [0, 1), got {self.null_prob}")
        if self.hmm not in ("auto", "on", "off"):
            raise ValueError(f"hmm must be auto, on or off, got {self.hmm!r}")
        if self.pose_roi is not None:
            parse_roi(self.pose_roi)
        if not 0 <= self.min_worker_share <= 1:
            raise ValueError(f"min_worker_share must be in [0, 1], got {self.min_worker_share}")

    def pose_config(self) -> PoseEstimateConfig:
        return PoseEstimateConfig(min_found_share=self.min_worker_share,
                                  roi=None if self.pose_roi is None else parse_roi(self.pose_roi))

    def merge_config(self, mean_seconds: dict | None = None, grammar: bool = False) -> MergeConfig:
        hmm = self.hmm == "on" or (self.hmm == "auto" and grammar)
        return MergeConfig(duration_scale=self.duration_scale, null_prob=self.null_prob, hmm=hmm,
                           mean_seconds=mean_seconds)


def _rounded(dist: dict | None) -> dict | None:
    return None if dist is None else {k: round(float(v), 4) for k, v in dist.items()}


def window_record(win: Window, result) -> dict:
    """One window's answer, as /predict gives it, placed on the recording's clock."""
    pred = result.prediction
    seg = pred.temporal_segment
    scores = result.scores or {}
    start_s = win.start_tick / FPS
    return {
        "index": win.index,
        "start_s": round(start_s, 3),
        "end_s": round(start_s + (CLIP_FRAMES - win.padded) / FPS, 3),
        "dominant_operation": pred.dominant_operation,
        "temporal_segment": {"start_frame": seg.start_frame, "end_frame": seg.end_frame},
        "span_s": [round(start_s + seg.start_frame / FPS, 3), round(start_s + (seg.end_frame + 1) / FPS, 3)],
        "anticipated_next_operation": pred.anticipated_next_operation,
        "confidence": round(float(pred.confidence), 4),
        "dominant": _rounded(scores.get("dominant")),
        "next": _rounded(scores.get("next_fused") or scores.get("next_model")),
        "frames": _frame_records(start_s, scores),
    }


def _frame_records(start_s: float, scores: dict) -> list[dict] | None:
    """The frame head's reading of each shown frame on the recording's clock: the seconds the frame stands for
    (``prompt.frame_cells``) and its distribution; None without a frame head."""
    frames, idx = scores.get("frames"), scores.get("frame_indices")
    if not frames or not idx:
        return None
    out, t = [], start_s
    for cell, dist in zip(frame_cells(idx), frames):
        out.append({"span_s": [round(t, 3), round(t + cell / FPS, 3)], "p": _rounded(dist)})
        t += cell / FPS
    return out


def box_cycles(segments: list[dict], duration_s: float) -> tuple[list[dict], dict]:
    """Per-box cycle times from merged segments.

    A box opens at a Picking segment when no box is open or the open one has reached its end operation (Attach
    Shipping Label / Put on Back Table); it closes at the end of its last end operation before the next box opens.
    A cycle is ``complete`` when its Picking did not start with the recording (its start was seen) and its end
    operation ended before the recording did (what follows was seen); only complete cycles have ``cycle_s``.
    """
    boxes: list[dict] = []
    cur = None

    def close(box):
        box["complete"] = box["start_seen"] and box["end_s"] is not None and box["end_s"] < duration_s - 1e-6
        box["cycle_s"] = round(box["end_s"] - box["start_s"], 2) if box["complete"] else None
        box["operations"] = {k: round(v, 2) for k, v in box["operations"].items()}
        del box["start_seen"], box["ended"]
        boxes.append(box)

    for seg in segments:
        op = NAME_TO_ID.get(seg["operation"], NULL_ID)  # "no worker" seconds: no operation
        if op == NULL_ID:
            continue
        if op == CYCLE_START and (cur is None or cur["ended"]):
            if cur is not None:
                close(cur)
            cur = {"box": len(boxes) + 1, "start_s": seg["start_s"], "end_s": None, "start_seen": seg["start_s"] > 0,
                   "ended": False, "operations": {}}
        if cur is None:
            continue  # the end of a box whose start came before the recording
        cur["operations"][seg["operation"]] = cur["operations"].get(seg["operation"], 0.0) + seg["end_s"] - seg["start_s"]
        if op in CYCLE_END:
            cur["ended"], cur["end_s"] = True, seg["end_s"]
    if cur is not None:
        close(cur)
    done = [b["cycle_s"] for b in boxes if b["complete"]]
    summary = {"boxes_seen": len(boxes), "complete_cycles": len(done),
               "mean_cycle_s": round(float(np.mean(done)), 2) if done else None,
               "median_cycle_s": round(float(np.median(done)), 2) if done else None}
    return boxes, summary


def per_second_ids(segments: list[dict], n_seconds: int) -> np.ndarray:
    """The operation id at the centre of each second (Null where no segment covers it) — OpenPack's 1 Hz labels."""
    out = np.full(n_seconds, NULL_ID, np.int64)
    for s in segments:
        j0 = max(0, int(math.ceil(float(s["start_s"]) - 0.5)))
        j1 = min(n_seconds, int(math.ceil(float(s["end_s"]) - 0.5)))
        out[j0:j1] = NAME_TO_ID.get(s["operation"], NULL_ID)  # "no worker": no operation
    return out


def score_timeline(pred_seconds: list[str], truth_segments: list[dict]) -> dict:
    """OpenPack's operation-segmentation metric on the 1 Hz labels: openpack-toolkit's
    ``eval_operation_segmentation`` (macro-F1 over the 10 operations, Null ignored), plus per-second accuracy."""
    from openpack_toolkit import OPENPACK_OPERATIONS, ActSet
    from openpack_toolkit.codalab.operation_segmentation import eval_operation_segmentation

    y = np.array([NAME_TO_ID.get(n, NULL_ID) for n in pred_seconds], np.int64)  # "no worker": no operation
    t = per_second_ids(truth_segments, len(y))
    acts = ActSet(OPENPACK_OPERATIONS)
    with warnings.catch_warnings():  # a second predicted Null where the truth is an operation is simply wrong; the
        # toolkit scores it so and warns that Null is not among the scored classes
        warnings.filterwarnings("ignore", message="y_id includes unknown class IDs")
        df = eval_operation_segmentation(t, y, classes=acts.to_tuple(), ignore_class_id=acts.get_ignore_class_id(),
                                         mode=None)
    keep = t != NULL_ID
    per_class = {str(name): round(float(row["f1"]), 4) for name, row in df.iterrows()
                 if not str(name).startswith("avg/") and int(row["id"]) != NULL_ID}
    present = [ID_TO_NAME[i] for i in sorted(set(t[keep].tolist()))]
    seg = segment_scores(y.tolist(), t.tolist(), background=[NULL_ID])  # Null = background, as OpenPack ignores it
    return {"macro_f1": round(float(df.loc["avg/macro", "f1"]), 4), **seg,
            "weighted_f1": round(float(df.loc["avg/weighted", "f1"]), 4),
            "accuracy_1hz": round(float(np.mean(y[keep] == t[keep])), 4) if keep.any() else None,
            "macro_f1_present_classes": round(float(np.mean([per_class[n] for n in present])), 4) if present else None,
            "per_class_f1": per_class, "seconds_scored": int(keep.sum()),
            "metric": "openpack_toolkit.codalab.operation_segmentation.eval_operation_segmentation, 1 Hz, "
                      "Null ignored; macro over the 10 operations (absent ones count as F1 0); edit and F1@k: "
                      "segmental edit score and segment F1 at IoU 0.1/0.25/0.5 over the 1 Hz segments (MS-TCN), "
                      "Null as background"}


def analyse_windows(predictor, windows: Iterable[Window], cfg: TimelineConfig | None = None, *, source: str = "",
                    total_windows: int | None = None, on_window: Callable[[dict, int, int | None], None] | None = None,
                    cancelled: Callable[[], bool] | None = None, truth: list[dict] | None = None,
                    mean_seconds: dict | None = None, worker_share: np.ndarray | None = None,
                    min_worker_share: float = 0.5) -> dict:
    """The timeline of a window stream (see the module docstring). ``truth`` (segments with start_s, end_s,
    operation) adds ``truth`` and ``metrics``; ``mean_seconds`` ({op id: s}) is the HMM's duration prior (default: the
    grammar's ``meta["mean_seconds"]``, fitted on the training timelines with it; else the real U0209 means).
    ``worker_share`` (skeleton runs: per second, the share of keypoint frames showing a worker) marks the seconds
    below ``min_worker_share`` "no worker" (``merge.mark_no_worker``)."""
    cfg = cfg or TimelineConfig()
    t0 = time.perf_counter()
    records: list[dict] = []
    model_s = 0.0
    duration_ticks = 0
    batch: list[Window] = []

    def flush():
        nonlocal model_s
        if cancelled is not None and cancelled():
            raise TimelineCancelled("timeline cancelled")
        ids = [f"{source or 'video'}@{w.start_tick / FPS:.2f}s" for w in batch]
        t = time.perf_counter()
        results = predictor.predict_clips([w.frames for w in batch], ids, motions=[w.motion for w in batch])
        model_s += time.perf_counter() - t
        for w, r in zip(batch, results):
            rec = window_record(w, r)
            records.append(rec)
            if on_window is not None:
                on_window(rec, len(records), total_windows)
        batch.clear()

    for win in windows:
        duration_ticks = max(duration_ticks, win.start_tick + CLIP_FRAMES - win.padded)
        if cfg.max_seconds is not None and duration_ticks / FPS > cfg.max_seconds + CLIP_SECONDS:
            raise TimelineError(f"recording is longer than max_seconds={cfg.max_seconds:g} s")
        batch.append(win)
        if len(batch) >= cfg.batch_windows:
            flush()
    if batch:
        flush()
    if not records:
        raise TimelineError("no window to analyse (empty recording)")
    duration_s = duration_ticks / FPS
    if cfg.max_seconds is not None and duration_s > cfg.max_seconds + 0.5 / FPS:
        raise TimelineError(f"recording is {duration_s:.1f} s long, over max_seconds={cfg.max_seconds:g} s")
    grammar = getattr(predictor, "grammar", None)
    if mean_seconds is None and grammar is not None and grammar.meta.get("mean_seconds"):
        # the durations fitted with the grammar on the training timelines (data_pipeline.py), carried by the run
        mean_seconds = {int(k): float(v) for k, v in grammar.meta["mean_seconds"].items()}
    mcfg = cfg.merge_config(mean_seconds, grammar=grammar is not None)
    merged = merge_windows(records, duration_s, grammar, mcfg)
    if worker_share is not None:
        merged = mark_no_worker(merged, worker_share, min_worker_share)
    cycles, cycle_summary = box_cycles(merged["segments"], duration_s)
    last = records[-1]
    nxt = last["next"] or {}
    out = {
        "format": FORMAT, "version": VERSION, "source": source, "duration_s": round(duration_s, 3), "fps": FPS,
        "window_s": CLIP_SECONDS, "stride_s": stride_ticks(cfg.stride) / FPS, "n_windows": len(records),
        "segments": merged["segments"], "seconds": merged["seconds"],
        "anticipated_next_operation": {"operation": last["anticipated_next_operation"],
                                       "probability": nxt.get(last["anticipated_next_operation"]),
                                       "after": last["dominant_operation"], "from_window": last["index"]},
        "cycles": cycles, "cycle_summary": cycle_summary,
        "merge": {"rule": "per-second mean of the covering windows' distributions"
                          + (", grammar HMM (Viterbi)" if mcfg.hmm else "") + "; ARCHITECTURE.md section 5", "grammar": grammar is not None, **asdict(mcfg)},
        "windows": records,
        "timing": {"wall_s": round(time.perf_counter() - t0, 2), "model_s": round(model_s, 2),
                   "model_s_per_window": round(model_s / len(records), 3)},
        "model": {k: v for k, v in (getattr(predictor, "info", None) or {}).items() if k != "run"},
    }
    if worker_share is not None:
        out["no_worker_seconds"] = int(sum(x == NO_WORKER for x in merged["seconds"]))
    if truth is not None:
        out["truth"] = truth
        out["metrics"] = score_timeline(merged["seconds"], truth)
    return out


def probe_seconds(path: str | Path) -> float | None:
    """The container's stated duration (s), or None; TimelineError (one line) for a file that is no video."""
    import av

    path = Path(path)
    if not path.is_file():
        raise TimelineError(f"video file not found: {path}")
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise TimelineError(f"{path.name}: no video stream")
            st = c.streams.video[0]
            if st.duration is not None and st.time_base is not None:
                return float(st.duration * st.time_base)
            return None if c.duration is None else c.duration / 1_000_000
    except (av.FFmpegError, UnicodeDecodeError, ValueError, OSError) as e:
        raise TimelineError(f"{path.name} is not a readable video ({one_line(e, 200)})") from None


def analyse_video(predictor, path: str | Path, cfg: TimelineConfig | None = None, **kw) -> dict:
    """The timeline of a camera file, decoded one window at a time (``video.iter_video``)."""

    cfg = cfg or TimelineConfig()
    path = Path(path)
    pose = getattr(predictor, "input_frames", "rgb") == "pose"
    if path.is_file() and sniff_keypoint_file(path):  # an OpenPack keypoint file: skeleton runs only
        if not pose:
            raise TimelineError(f"{path.name} is a keypoint file; the model was trained on camera frames")
        try:
            track, truth = track_from_keypoint_file(path)
        except FrameError as e:
            raise TimelineError(f"{path.name}: {e}") from None
        if cfg.max_seconds is not None and track.ts_ms[-1] / 1000 > cfg.max_seconds:
            raise TimelineError(f"{path.name} spans {track.ts_ms[-1] / 1000:.1f} s, over max_seconds={cfg.max_seconds:g} s")
        kw["truth"] = kw.get("truth") or truth  # a labelled Zenodo CSV scores itself
        out = analyse_windows(predictor, track_windows(track, stride_ticks(cfg.stride), predictor.input_render), cfg,
                              source=kw.pop("source", path.name), worker_share=worker_share_per_second(track),
                              min_worker_share=cfg.min_worker_share, **kw)
        out["pose"] = track.summary()
        return out
    stated = probe_seconds(path)
    if stated is not None and cfg.max_seconds is not None and stated > cfg.max_seconds + 0.5 / FPS:
        raise TimelineError(f"{path.name} is {stated:.1f} s long, over max_seconds={cfg.max_seconds:g} s")
    stride = stride_ticks(cfg.stride)
    total = expected_windows(int(round(stated * FPS)), stride) if stated else None
    if pose:  # a skeleton run: the video's keypoints first, then its windows
        track = estimate_recording(path, cfg.pose_config())
        out = analyse_windows(predictor, track_windows(track, stride, predictor.input_render), cfg,
                              source=kw.pop("source", path.name), total_windows=total,
                              worker_share=worker_share_per_second(track),
                              min_worker_share=cfg.min_worker_share, **kw)
        out["pose"] = track.summary() | track.stats
        return out
    return analyse_windows(predictor, iter_windows(iter_video(path), stride), cfg,
                           source=kw.pop("source", path.name), total_windows=total, **kw)


__all__ = ["TimelineConfig", "TimelineError", "TimelineCancelled", "analyse_video", "analyse_windows", "box_cycles",
           "score_timeline", "per_second_ids", "window_record", "probe_seconds"]
