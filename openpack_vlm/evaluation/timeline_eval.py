"""evaluate.py's timeline mode: whole test sessions scored with OpenPack's operation-segmentation metric.

For each session of the split (the first ``timeline_sessions``, at most ``timeline_max_seconds`` of each from its
first annotated operation), the session's frames are cut into sliding 5-s windows exactly as the data pipeline
renders a training clip (``timeline.session_windows``: same frame source, skeleton renderer and keypoint-motion
sampler), every window is answered by the base model and by the fine-tuned one (with the grammar and its tuned
weight), the answers are merged into per-second labels (``timeline.merge``; the HMM's grammar and duration prior
are the run's grammar.json, fitted on the TRAIN split's timelines by data_pipeline.py — what serving uses), and the labels are scored against the session's annotation at 1 Hz by
openpack-toolkit's ``eval_operation_segmentation`` (macro-F1, Null ignored).
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..contract import RunContract
from ..data import openpack
from ..io_utils import write_json
from ..labels import ID_TO_NAME
from ..metrics import SEGMENT_OVERLAPS
from ..schema import FPS

SEGMENT_KEYS = ("edit", *(f"F1@{round(k * 100)}" for k in SEGMENT_OVERLAPS))

log = logging.getLogger("openpack_vlm.evaluate")


def _relative(segments, t0_ms: int, t1_ms: int) -> list[dict]:
    out = []
    for s in segments:
        a, b = max(s.start_ms, t0_ms), min(s.end_ms, t1_ms)
        if b > a:
            out.append({"start_s": round((a - t0_ms) / 1000, 3), "end_s": round((b - t0_ms) / 1000, 3),
                        "operation": ID_TO_NAME[s.op_id]})
    return out


def evaluate_timelines(cfg, data: Path, contract: RunContract, systems: dict, root: Path, out: Path,
                       rows: list[dict]) -> dict:
    """``systems``: {name: (predictor, context manager factory or None)} answered on the same windows.
    ``rows``: manifest rows of the evaluated split (their sessions)."""
    from ..data.skeleton import PoseRender  # deferred: would load cv2 on import
    from ..data.sources import open_source  # deferred: would load cv2 on import
    from ..timeline import TimelineConfig, analyse_windows, session_windows  # deferred: would load cv2 on import
    from ..timeline.plot import plot_timeline  # deferred: would load cv2 on import
    from ..timeline.windows import stride_ticks  # deferred: would load cv2 on import

    sessions = sorted({(r["user"], r["session"]) for r in rows})[: cfg.timeline_sessions]
    tcfg = TimelineConfig(stride=cfg.timeline_stride, batch_windows=cfg.batch_clips)
    stride = stride_ticks(cfg.timeline_stride)
    render = PoseRender.from_json(contract.data.pose_render)
    out_dir = out / "timeline"
    per_session = []
    for user, session in sessions:
        segs = openpack.load_timeline(root, user, session)
        real = [s for s in segs if s.op_id != openpack.NULL_ID] or segs
        t0 = real[0].start_ms
        t1 = real[-1].end_ms
        if cfg.timeline_max_seconds:
            t1 = min(t1, t0 + int(cfg.timeline_max_seconds * 1000))
        truth = _relative(segs, t0, t1)
        src = open_source(root, user, session, contract.data.source, render)
        entry = {"user": user, "session": session, "frame_source": src.name,
                 "seconds": round((t1 - t0) / 1000, 1)}
        for name, (predictor, context) in systems.items():
            windows = session_windows(src, t0, t1, stride)
            if context is not None:
                with context():
                    res = analyse_windows(predictor, windows, tcfg, source=f"{user}-{session}", truth=truth)
            else:
                res = analyse_windows(predictor, windows, tcfg, source=f"{user}-{session}", truth=truth)
            stem = f"{user}-{session}.{name}"
            write_json(out_dir / f"{stem}.json", res)
            plot_timeline(res, out_dir / f"{stem}.png",
                          title=f"{user}/{session} {name}: macro-F1 {res['metrics']['macro_f1']:.3f} (1 Hz)")
            entry[name] = {k: res["metrics"][k] for k in ("macro_f1", "macro_f1_present_classes", "accuracy_1hz",
                                                          "weighted_f1", *SEGMENT_KEYS, "per_class_f1")}
            entry[name]["segments"] = len(res["segments"])
            entry[name]["true_segments"] = len(truth)
            entry[name]["cycles"] = res["cycle_summary"]
            entry["n_windows"] = res["n_windows"]
            log.info("timeline %s/%s %s: macro-F1 %.3f over %.0f s", user, session, name, res["metrics"]["macro_f1"],
                     entry["seconds"])
        per_session.append(entry)
    summary = {}
    for name in systems:
        vals = [e[name] for e in per_session]
        summary[name] = {k: round(sum(v[k] for v in vals) / len(vals), 4) for k in
                         ("macro_f1", "macro_f1_present_classes", "accuracy_1hz", *SEGMENT_KEYS)}
    return {
        **summary,
        "sessions": per_session,
        "stride_s": stride / FPS,
        "hmm_prior": "the run's grammar.json (transitions and mean durations of the train split's timelines); "
                     "the HMM smooths only systems that carry it (hmm=auto)",
        "files": str(out_dir),
        "rule": "sliding 5-s windows rendered like training clips, per-second votes + grammar HMM, scored at 1 Hz by "
                "openpack_toolkit eval_operation_segmentation (macro over the 10 operations, Null ignored; "
                "macro_f1_present_classes averages only the classes in the session)",
    }
