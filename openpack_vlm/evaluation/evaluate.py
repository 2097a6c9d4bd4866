"""Evaluation: base vs fine-tuned (vs fine-tuned + grammar) on the held-out test split → results.json and friends.

Clips: the test split's manifest (U0108 by default), sorted by clip_id, the first ``n_clips`` (30) unless ``all``.
Systems (one model load: the base model is the fine-tuned model with its LoRA disabled, i.e. exactly the base):
  base_model         base Qwen2-VL, no grammar
  finetuned_model    base + LoRA adapter, the model's own next-operation answer
  finetuned_grammar  the same answers with the next operation fused with the procedural grammar; the fusion weight
                     is tuned on the val split's first ``val_clips`` clips (or given)
  *_free_text        each model's free greedy answer read as is (predict.parse_raw_text): invalid JSON, unknown
                     names and bad spans count as misses, so here the span valid rate means something
  finetuned_answer_only  (an adapter with a frame head) the same adapter answering from its text alone: dominant
                     operation and span scored as the answer's tokens, the frame head unread — what the head adds
Baselines (no model): majority class of the train split (dominant and next op, whole-clip span), grammar-only next op
given the fine-tuned model's dominant op and given the TRUE dominant op, whole-clip span [0, 124].
Outputs in ``out``: results.json (the assignment's shape + extras), predictions.jsonl (per clip: truth, each system's
prediction, confidence, raw model text and its repair), confusion.json / confusion.png, failure_modes.json, and
grammar.json (the grammar used) and run.json (the run contract with its evaluation section: the tuned fusion
weight and mode; the adapter's R/run.json gets the same section, so serving the adapter serves the tuned weight).
Provenance says whether the data are real OpenPack or synthetic and whether the model is the tiny random one;
synthetic/tiny numbers are flagged and never OpenPack results.
"""
from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import gc
import logging
import json
import subprocess
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from ..cli import build_parser, parse, setting
from ..contract import RUN_FILE, ContractError, EvaluationSection, RunContract, file_sha256
from ..grammar import GrammarError, argmax_id, tune_fuse_weight
from ..io_utils import one_line, save_figure, write_atomic, write_json, write_jsonl
from ..labels import ID_TO_NAME, NAME_TO_ID, OPERATION_IDS, to_id
from .calibration import calibration_report, dominant_probs
from ..metrics import (confusion_dict, confusion_matrix, evaluate_predictions, majority_class, most_confused_pair,
                       per_class_scores, span_iou)
from ..model.loading import ModelLoadError, adapter_dir, resolve_adapter
from ..model.answers import parse_raw_text
from ..model.predict import PredictConfig, Predictor
from ..schema import CLIP_FRAMES

log = logging.getLogger("openpack_vlm.evaluation")

HEADLINE = ("OCA", "tIoU@0.5", "AA@1")
SYSTEMS = ("base_model", "finetuned_model", "finetuned_grammar")
FREE_TEXT_SYSTEMS = ("base_model_free_text", "finetuned_model_free_text")


class EvalError(RuntimeError):
    """Evaluation cannot run as asked (one-line message)."""


@dataclass
class EvalConfig:
    """Evaluation settings (evaluate.py's flags are generated from these fields). Defaults = the real run
    (Qwen2-VL-2B + QLoRA adapter on U0108)."""

    data: str = setting(help="data_pipeline.py output dir D (D/test, D/val, D/summary.json, D/run.json)")
    out: str = setting(help="output dir E")
    adapter: str = setting(help="LoRA adapter dir (R/adapter) or run dir R")
    model_id: str = setting("Qwen/Qwen2-VL-2B-Instruct", 'base model: hub id, local dir or "tiny"',
                            aliases=["--model"])
    quantization: str = setting("4bit", "as trained (QLoRA); none on CPU", choices=["4bit", "none"])
    device: str = setting("auto", "auto | cpu | cuda")
    split: str = setting("test", "split to evaluate (test = the held-out user U0108)")
    n_clips: int = setting(30, "first N clips sorted by clip_id (~3 min per system for 2B on a T4)")
    all_clips: bool = setting(False, "every clip of the split instead of the first n_clips", aliases=["--all"])
    val_split: str = setting("val", "split used to tune the grammar fusion weight")
    val_clips: int = setting(30, "val clips used to tune the grammar fusion weight")
    grammar: str | None = setting(None, "grammar JSON; unset = the run's grammar.json, else D/grammar.json")
    fuse_weight: float | None = setting(None, "grammar weight in [0, 1]; unset = tuned on val")
    fuse_mode: str = setting("linear", "how model and grammar are mixed (grammar.fuse)", choices=["linear", "loglinear"])
    free_text: bool = setting(True, "also record each model's free (greedy) answer (up to 128 more model calls per "
                                    "batch of clips); --no_free_text is faster")
    batch_clips: int = setting(4, "clips answered together (one prefill of their padded prompts, one call per "
                                  "closed set); the same answers as 1, faster on a GPU")
    keypoint_baseline: bool = setting(True, "also train and score the keypoint baseline (evaluation/keypoint_baseline.py; "
                                            "needs the OpenPack root named in D/summary.json; ~1 min on a CPU)")
    timeline: bool = setting(True, "also analyse whole sessions of the split as timelines (sliding windows, merged) and "
                                   "score them with OpenPack's segmentation metric (macro-F1 at 1 Hz); needs the "
                                   "OpenPack root named in D/summary.json")
    timeline_stride: float = setting(2.5, "timeline mode: seconds between 5-s window starts")
    timeline_sessions: int = setting(1, "timeline mode: the first N sessions of the split")
    timeline_max_seconds: float | None = setting(600.0, "timeline mode: at most this many seconds of each session "
                                                        "from its first operation (a real session is ~20-30 min: "
                                                        "~500-700 windows per system); unset = whole sessions")
    n_boot: int = setting(1000, "bootstrap resamples for the 95 % intervals")
    seed: int = setting(0, "bootstrap seed")


# -------------------------------------------------------------------------------------------------------- data
def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise EvalError(f"{path}: line {n} is not JSON ({e.msg})") from None
    return rows


def select_clips(data: Path, split: str, n: int | None) -> list[dict]:
    """Manifest rows of a split sorted by clip_id; the first ``n`` (all when n is None)."""
    path = data / split / "manifest.jsonl"
    if not path.is_file():
        raise EvalError(f"no manifest for split {split!r}: {path} (run data_pipeline.py --out {data})")
    rows = sorted(_read_jsonl(path), key=lambda r: r["clip_id"])
    if not rows:
        raise EvalError(f"split {split!r} has no clips ({path} is empty)")
    return rows if n is None else rows[:n]


def iter_clips(data: Path, split: str, rows: list[dict]):
    """Stream (record, PIL frames) of the chosen clips in shard order; only one clip's frames in memory at a time.
    Raises EvalError at the end if a manifest clip was not found in the shards."""
    from ..data.shards import iter_samples, shard_paths

    want = {r["clip_id"] for r in rows}
    try:
        paths = shard_paths(data / split)
    except FileNotFoundError as e:
        raise EvalError(str(e)) from None
    seen: set[str] = set()
    for rec, frames in iter_samples(paths):
        if rec.clip_id in want and rec.clip_id not in seen:
            seen.add(rec.clip_id)
            yield rec, frames
            if len(seen) == len(want):
                return
    missing = sorted(want - seen)
    raise EvalError(f"{len(missing)} manifest clips not found in {data / split} shards, e.g. {missing[0]}")


def load_clips(data: Path, split: str, rows: list[dict]):
    """(record, PIL frames) for the chosen clips, in the order of ``rows`` (all held in memory: small selections)."""
    got = {rec.clip_id: (rec, frames) for rec, frames in iter_clips(data, split, rows)}
    return [got[r["clip_id"]] for r in rows]


def batches(items, n: int):
    """Consecutive lists of ``n`` items (the last one shorter) from any iterable, consumed lazily."""
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _truth(rec) -> dict:
    t = rec.truth
    seg = t["temporal_segment"]
    return {"op": to_id(t["dominant_operation"]), "span": (int(seg["start_frame"]), int(seg["end_frame"])),
            "next": to_id(t["anticipated_next_operation"])}


def _torch_threads() -> int:
    """torch's intra-op thread count: float reductions are split by thread, so results are bit-identical only at the
    same count (scripts/demo.sh fixes it at 2)."""
    import torch

    return torch.get_num_threads()


def data_provenance(data: Path) -> dict:
    """Where the data came from: D/summary.json's root; synthetic if that root carries synthetic_config.json."""
    summary_path = data / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    root = summary.get("root")
    kind = "unknown"
    if root and Path(root).is_dir():
        kind = "synthetic" if (Path(root) / "synthetic_config.json").is_file() else "real"
    return {"data": kind, "data_dir": str(data), "openpack_root": root, "summary": bool(summary),
            "data_settings": summary.get("settings")}


def git_provenance() -> dict:
    """The checkout a measurement ran on: commit and whether the tree had uncommitted changes."""
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=repo,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit, "git_dirty": dirty}


def _majority_from_train(data: Path) -> tuple[int, int, str]:
    """Majority dominant op and majority next op of the train split (ties → lower id)."""
    path = data / "train" / "manifest.jsonl"
    if not path.is_file():
        raise EvalError(f"majority baseline needs the train manifest: {path} not found")
    rows = _read_jsonl(path)
    if not rows:
        raise EvalError(f"train manifest {path} is empty")
    return (majority_class([r["truth"]["dominant_operation"] for r in rows]),
            majority_class([r["truth"]["anticipated_next_operation"] for r in rows]), str(path))


def record_evaluation(contract: RunContract, out: Path, grammar_path: Path | None, weight: float | None,
                      cfg: EvalConfig, tuning: dict, temperature: float | None = None) -> dict:
    """Add the evaluation section (tuned fusion weight and mode) to the run contract: E/run.json (with the grammar
    used copied beside it, byte for byte) and, when that grammar is the run's own, R/run.json — so serving the
    adapter fuses with the tuned weight. Returns where it was written."""
    section = EvaluationSection(fuse_weight=weight, fuse_mode=cfg.fuse_mode, eval_dir=str(out),
                                tuned_on=(f"{tuning['tuned_on']}: {tuning.get('val_clips')} clips" if
                                          tuning.get("tuned_on") else "given (--fuse_weight)" if weight is not None
                                          else "no grammar"), temperature=temperature)
    e_contract = copy.deepcopy(contract)
    e_contract.evaluation = section
    if grammar_path is not None:
        write_atomic(out / "grammar.json", Path(grammar_path).read_bytes())
        e_contract.data.grammar = {"file": "grammar.json", "sha256": file_sha256(out / "grammar.json")}
    e_contract.save(out)
    written = {"eval": str(out / RUN_FILE), "run": None}
    own = contract.grammar_path()
    same_grammar = grammar_path is None or (own is not None and own.is_file()
                                            and file_sha256(own) == file_sha256(grammar_path))
    if contract.path is not None and same_grammar:
        contract.evaluation = section
        contract.save(contract.path)
        written["run"] = str(contract.path)
    elif contract.path is not None:
        log.warning("grammar %s is not the run's own: the tuned weight is recorded in %s only (serve with "
                    "RUN_CONFIG=%s)", grammar_path, out / RUN_FILE, out / RUN_FILE)
    return written


# ------------------------------------------------------------------------------------------------------ running
def _ids_dist(names_to_p: dict) -> dict[int, float]:
    return {NAME_TO_ID[k]: float(v) for k, v in names_to_p.items()}


def _record(truth: dict, pred_op: int, span, pred_next: int) -> dict:
    return {"true_op": truth["op"], "pred_op": pred_op, "true_span": truth["span"], "pred_span": span,
            "true_next": truth["next"], "pred_next": pred_next}


def _headline(m: dict) -> dict:
    return {k: m[k] for k in HEADLINE}


def _plot_confusions(path: Path, cms: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [ID_TO_NAME[i] for i in OPERATION_IDS]
    fig, axes = plt.subplots(1, len(cms), figsize=(7.5 * len(cms), 7), squeeze=False)
    for ax, (title, cm) in zip(axes[0], cms.items()):
        ax.imshow(cm, cmap="Blues")
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def evaluate(cfg: EvalConfig) -> dict:
    """Run the evaluation; writes the files in cfg.out and returns results.json's content."""
    data, out = Path(cfg.data), Path(cfg.out)
    if not data.is_dir():
        raise EvalError(f"data dir not found: {data}")
    if not 0 < cfg.n_clips and not cfg.all_clips:
        raise EvalError(f"n_clips must be > 0, got {cfg.n_clips}")
    if cfg.batch_clips < 1:
        raise EvalError(f"batch_clips must be >= 1, got {cfg.batch_clips}")
    try:
        cfg = dataclasses.replace(cfg, adapter=str(resolve_adapter(cfg.adapter)))  # a Hub id → its snapshot
        adapter_dir(cfg.adapter)  # fail before minutes of model loading
    except ModelLoadError as e:
        raise EvalError(str(e)) from None
    rows = select_clips(data, cfg.split, None if cfg.all_clips else cfg.n_clips)
    maj_op, maj_next, maj_src = _majority_from_train(data)

    # temperature 1: the raw confidences, which the calibration below measures and fits a temperature to; fuse off:
    # the answers' next op is the model's own, and the grammar is fused below with the weight tuned on val
    pcfg = PredictConfig(free_text=cfg.free_text, fuse_mode=cfg.fuse_mode, temperature=1.0, fuse=False)
    try:  # run contract (checked against the data's), grammar: resolved by the predictor, before the model loads
        predictor = Predictor.from_pretrained(cfg.model_id, adapter=cfg.adapter, quantization=cfg.quantization,
                                              device=cfg.device, grammar=cfg.grammar or "auto", config=pcfg,
                                              data=data)
    except (ContractError, GrammarError) as e:
        raise EvalError(str(e)) from None
    contract, grammar, grammar_path = predictor.contract, predictor.grammar, predictor.grammar_path
    if grammar is None and cfg.fuse_weight is not None:
        raise EvalError("--fuse-weight given but no grammar found (pass --grammar)")
    if not hasattr(predictor.model, "disable_adapter"):
        raise EvalError("the fine-tuned model has no LoRA adapter attached (need a PeftModel)")
    out.mkdir(parents=True, exist_ok=True)
    # base = the same weights with the LoRA switched off: one load, and exactly the base model
    # ... asked in the run's span format, as the fine-tuned model is
    # ... and never reading a frame head (with the LoRA off, its weights are the untrained ones)
    pcfg = dataclasses.replace(pcfg, span=predictor.config.span)
    base = Predictor(predictor.model, predictor.processor, grammar=None,
                     config=dataclasses.replace(pcfg, span_from="answer"))
    answer_only = Predictor(predictor.model, predictor.processor, grammar=None,
                            config=dataclasses.replace(pcfg, span_from="answer", free_text=False)
                            ) if predictor.has_frame_head else None
    done: dict[str, tuple] = {}
    with tqdm(total=len(rows), desc=f"{cfg.split} clips (base + fine-tuned)", unit="clip") as bar:
        for batch in batches(iter_clips(data, cfg.split, rows), cfg.batch_clips):
            items = [(frames, rec.frame_indices, rec.clip_id) for rec, frames in batch]
            with predictor.model.disable_adapter():
                bs = base.predict_batch(items)
            fs = predictor.predict_batch(items)
            fa = answer_only.predict_batch(items) if answer_only else [None] * len(items)
            for (rec, _), b, f, a in zip(batch, bs, fs, fa):
                done[rec.clip_id] = (rec, {"clip_id": rec.clip_id, "result": b}, {"clip_id": rec.clip_id, "result": f},
                                     {"clip_id": rec.clip_id, "result": a})
            bar.update(len(batch))
    recs = [done[r["clip_id"]][0] for r in rows]  # clip_id order
    base_runs = [done[r["clip_id"]][1] for r in rows]
    ft_runs = [done[r["clip_id"]][2] for r in rows]
    ao_runs = [done[r["clip_id"]][3] for r in rows] if answer_only else []
    truths = [_truth(rec) for rec in recs]

    # the fine-tuned model on val clips: the grammar fusion weight (unless given) and the confidence temperature
    tuning: dict = {"grammar": str(grammar_path) if grammar_path else None}
    weight = None
    md, gd, vt, vdom, vop = [], [], [], [], []
    if (data / cfg.val_split / "manifest.jsonl").is_file():
        vrows = select_clips(data, cfg.val_split, cfg.val_clips)
        scorer = Predictor(predictor.model, predictor.processor, grammar=grammar,
                           config=dataclasses.replace(pcfg, free_text=False))
        with tqdm(total=len(vrows), desc=f"{cfg.val_split} clips (fusion weight, temperature)", unit="clip") as bar:
            for batch in batches(iter_clips(data, cfg.val_split, vrows), cfg.batch_clips):
                got = scorer.predict_batch([(frames, rec.frame_indices, rec.clip_id) for rec, frames in batch])
                for (rec, _), r in zip(batch, got):
                    md.append(_ids_dist(r.scores["next_model"]))
                    gd.append(_ids_dist(r.scores["next_grammar"]) if grammar is not None else None)
                    vt.append(_truth(rec)["next"])
                    vdom.append(dominant_probs(r))
                    vop.append(_truth(rec)["op"])
                bar.update(len(batch))
    if grammar is not None:
        if cfg.fuse_weight is not None:
            weight = float(cfg.fuse_weight)
            tuning.update(fuse_weight=weight, tuned_on=None)
        elif not vt:
            raise EvalError(f"no {cfg.val_split} clips to tune the grammar weight on (give --fuse_weight)")
        else:
            weight, acc = tune_fuse_weight(md, gd, vt, mode=cfg.fuse_mode)
            tuning.update(fuse_weight=weight, tuned_on=cfg.val_split, val_clips=len(vt),
                          val_AA1_by_weight={str(k): v for k, v in acc.items()}, mode=cfg.fuse_mode)

    # per-system records
    systems: dict[str, list[dict]] = {s: [] for s in SYSTEMS + (FREE_TEXT_SYSTEMS if cfg.free_text else ())}
    for t, a in zip(truths, ao_runs):
        p = a["result"].prediction
        systems.setdefault("finetuned_answer_only", []).append(_record(
            t, NAME_TO_ID[p.dominant_operation], (p.temporal_segment.start_frame, p.temporal_segment.end_frame),
            NAME_TO_ID[p.anticipated_next_operation]))
    anticipation: dict[str, tuple[list, list]] = {"finetuned_model": ([], []), "finetuned_grammar": ([], [])}
    per_clip = []
    for t, b, f in zip(truths, base_runs, ft_runs):
        row = {"clip_id": b["clip_id"], "truth": {"dominant_operation": ID_TO_NAME[t["op"]],
                                                   "temporal_segment": list(t["span"]),
                                                   "anticipated_next_operation": ID_TO_NAME[t["next"]]},
               "frame_indices": list(f["result"].scores["frame_indices"]),
               "span_format": f["result"].scores["span_format"]}  # how raw_text's span reads (predict.parse_raw_text)
        for name, run in (("base_model", b), ("finetuned_model", f)):
            p = run["result"].prediction
            span = (p.temporal_segment.start_frame, p.temporal_segment.end_frame)
            systems[name].append(_record(t, NAME_TO_ID[p.dominant_operation], span,
                                         NAME_TO_ID[p.anticipated_next_operation]))
            row[name] = {"prediction": p.model_dump(), "raw_text": run["result"].raw_text,
                         "repair": run["result"].repair, "seconds": run["result"].scores["seconds"]}
            if cfg.free_text:
                sc = run["result"].scores
                free = parse_raw_text(run["result"].raw_text,
                                      sc["frame_indices"] if sc["span_format"] == "shown" else None)
                systems[f"{name}_free_text"].append(_record(t, free["op"], free["span"], free["next"]))
        p = f["result"].prediction
        span = (p.temporal_segment.start_frame, p.temporal_segment.end_frame)
        nm = _ids_dist(f["result"].scores["next_model"])
        anticipation["finetuned_model"][0].append(max(nm.values()))
        anticipation["finetuned_model"][1].append(argmax_id(nm) == t["next"])
        if grammar is not None:
            fused = predictor.fuse_next(f["result"].scores, weight, cfg.fuse_mode)
            g_next = argmax_id(fused)
            anticipation["finetuned_grammar"][0].append(max(fused.values()))
            anticipation["finetuned_grammar"][1].append(g_next == t["next"])
            systems["finetuned_grammar"].append(_record(t, NAME_TO_ID[p.dominant_operation], span, g_next))
            row["finetuned_grammar"] = {"anticipated_next_operation": ID_TO_NAME[g_next], "fuse_weight": weight}
        per_clip.append(row)
    if grammar is None:
        del systems["finetuned_grammar"]
        del anticipation["finetuned_grammar"]
    calibration = calibration_report(
        vdom, vop, {"base_model": [dominant_probs(r["result"]) for r in base_runs],
                    "finetuned_model": [dominant_probs(r["result"]) for r in ft_runs]},
        [t["op"] for t in truths], anticipation, out / "reliability.png", cfg.val_split)
    per_class = {name: per_class_scores([r["true_op"] for r in systems[name]], [r["pred_op"] for r in systems[name]])
                 for name in ("base_model", "finetuned_model")}

    metrics = {name: evaluate_predictions(recs, n_boot=cfg.n_boot, seed=cfg.seed) for name, recs in systems.items()}
    for name, runs in (("base_model", base_runs), ("finetuned_model", ft_runs), ("finetuned_answer_only", ao_runs)):
        if not runs:
            continue
        metrics[name]["free_text_valid_rate"] = (sum(r["result"].repair is None for r in runs) / len(runs)
                                                 if cfg.free_text and name != "finetuned_answer_only" else None)
        metrics[name]["mean_confidence"] = sum(r["result"].prediction.confidence for r in runs) / len(runs)
        metrics[name]["seconds_per_clip"] = sum(r["result"].scores["seconds"] for r in runs) / len(runs)
        metrics[name]["model_calls_per_clip"] = sum(r["result"].scores["model_calls"] for r in runs) / len(runs)

    # baselines
    whole = (0, CLIP_FRAMES - 1)
    baselines = {
        "majority_class": _headline(evaluate_predictions(
            [_record(t, maj_op, whole, maj_next) for t in truths], n_boot=0)) | {
            "dominant_operation": ID_TO_NAME[maj_op], "anticipated_next_operation": ID_TO_NAME[maj_next],
            "temporal_segment": list(whole), "fitted_on": maj_src},
        "whole_clip_span": {k: v for k, v in evaluate_predictions(
            [_record(t, t["op"], whole, t["next"]) for t in truths], n_boot=0).items()
            if k in ("tIoU@0.5", "mean_tIoU")},
    }
    if grammar is not None:
        ft_ops = [r["pred_op"] for r in systems["finetuned_model"]]
        baselines["grammar_given_predicted_op"] = {"AA@1": sum(
            grammar.predict_next(o) == t["next"] for o, t in zip(ft_ops, truths)) / len(truths)}
        baselines["grammar_given_true_op"] = {"AA@1": sum(
            grammar.predict_next(t["op"]) == t["next"] for t in truths) / len(truths)}

    # confusion + failure modes
    cms = {name: confusion_matrix([r["true_op"] for r in systems[name]], [r["pred_op"] for r in systems[name]])
           for name in ("base_model", "finetuned_model")}
    write_json(out / "confusion.json", {name: confusion_dict(cm) for name, cm in cms.items()})
    _plot_confusions(out / "confusion.png", cms)
    failure = _failure_modes(cms["finetuned_model"], systems["finetuned_model"], per_clip)
    write_json(out / "failure_modes.json", failure)
    tuning["run_contract"] = record_evaluation(contract, out, grammar_path, weight if grammar is not None else None,
                                               cfg, tuning, temperature=calibration["temperature"])

    prov = data_provenance(data)
    from ..model.loading import tiny_pretrain_meta
    from ..testing.tiny import is_tiny

    tiny = is_tiny(cfg.model_id)
    pretraining = tiny_pretrain_meta(cfg.model_id) if tiny else None  # the tiny base's pre-training record
    frame_sources = dict(Counter(rec.source for rec in recs))
    synthetic = prov["data"] != "real" or tiny
    from ..platform_check import peak_memory

    memory = peak_memory()
    log.info("peak memory: %s %.3f GB", memory["kind"], memory["bytes"] / 1e9)
    provenance = prov | {"frame_sources": frame_sources, "model_id": cfg.model_id, "tiny_random_model": tiny,
                         "tiny_pretraining": pretraining,
                         "adapter": str(cfg.adapter), "quantization": cfg.quantization, "batch_clips": cfg.batch_clips,
                         "memory": memory, "torch_threads": _torch_threads(),
                         "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")} | git_provenance()
    note = ("SYNTHETIC / TINY-MODEL RESULT: " + ("synthetic data" if prov["data"] == "synthetic" else
                                                  f"data provenance {prov['data']!r}") +
            ((", tiny model (random LM; vision tower pre-trained on a separate synthetic corpus)" if pretraining
              else ", tiny randomly initialised model") if tiny else "") +
            ". Checks the pipeline end to end; these are NOT OpenPack results.") if synthetic else (
        f"Real OpenPack data ({', '.join(f'{k}: {v}' for k, v in frame_sources.items())} frames), "
        f"held-out {cfg.split} split, {len(recs)} clips.")
    kp = None
    if cfg.keypoint_baseline:
        from .keypoint_baseline import BaselineConfig, BaselineError, run as run_baseline

        try:
            kp = run_baseline(BaselineConfig(data=str(data), split=cfg.split, n_clips=cfg.n_clips,
                                             all_clips=cfg.all_clips, n_boot=cfg.n_boot, seed=cfg.seed))
        except BaselineError as e:
            log.warning("keypoint baseline skipped: %s", e)
            kp = {"skipped": str(e)}
    timeline = None
    if cfg.timeline:
        from .keypoint_baseline import BaselineError, openpack_root
        from .timeline_eval import evaluate_timelines

        try:
            root = openpack_root(data)
        except BaselineError as e:
            log.warning("timeline mode skipped: %s", e)
            timeline = {"skipped": str(e)}
        else:
            tl_cfg = dataclasses.replace(predictor.config, free_text=False, fuse=True)  # the windows answer as served
            ft_tl = Predictor(predictor.model, predictor.processor, grammar=grammar, fuse_weight=weight, config=tl_cfg)
            base_tl = Predictor(predictor.model, predictor.processor, grammar=None,
                                config=dataclasses.replace(tl_cfg, span_from="answer"))
            timeline = evaluate_timelines(cfg, data, contract, {"base_model": (base_tl, predictor.model.disable_adapter),
                                                                "finetuned_model": (ft_tl, None)},
                                          root, out, rows=select_clips(data, cfg.split, None))
            timeline["note"] = note
    results = {
        "base_model": _headline(metrics["base_model"]),
        "finetuned_model": _headline(metrics["finetuned_model"]),
        "variants": metrics,
        "baselines": baselines,
        "keypoint_baseline": kp,
        "timeline": timeline,
        "calibration": calibration,
        "per_class": per_class,
        "intervals": {name: m["intervals"] for name, m in metrics.items()},
        "n_clips": len(recs),
        "selection": {"split": cfg.split, "users": sorted({rec.user for rec in recs}),
                      "rule": "all clips" if cfg.all_clips else f"first {cfg.n_clips} clips sorted by clip_id"},
        "grammar_fusion": tuning,
        "synthetic": synthetic,
        "note": note,
        "definitions": {
            "OCA": "share of clips whose dominant operation is right",
            "tIoU@0.5": "share of ALL clips whose predicted inclusive frame span has IoU >= 0.5 with the truth "
                        "(missing/invalid spans count as misses); *_valid_only: over valid spans only",
            "AA@1": "share of clips whose anticipated next operation is right",
            "intervals": f"95% percentile bootstrap over clips, {cfg.n_boot} resamples, seed {cfg.seed}",
            "finetuned_model": "base + LoRA adapter, next operation from the model alone; finetuned_grammar "
                               "fuses it with the procedural grammar (weight in grammar_fusion)",
            "timeline": "whole sessions: sliding 5-s windows (every timeline_stride s) rendered like training "
                        "clips, answered by each system, merged per second (votes + grammar HMM), scored against the "
                        "annotation at 1 Hz with openpack-toolkit's eval_operation_segmentation (macro-F1 over the 10 "
                        "operations, Null ignored)",
            "calibration": "ECE: |accuracy - mean confidence| over 10 equal-width confidence bins, weighted by their "
                           "share of clips; temperature fitted on val (NLL) and carried to serving in run.json; "
                           "finetuned_model_tempered = the confidence /predict reports",
            "per_class": "precision / recall / F1 of the dominant operation per true class (test clips)",
            "edit, F1@k (timeline)": "segmental edit score and segment F1 at IoU 0.1/0.25/0.5 over the 1 Hz "
                                     "segments (MS-TCN's definitions), Null as background",
            "keypoint_baseline": "no VLM: a temporal conv net on the clip's normalised 2D keypoints, trained on the "
                                 "train split, the same test clips and metrics (evaluation/keypoint_baseline.py)",
        },
        "provenance": provenance,
        "config": asdict(cfg),
    }
    write_jsonl(out / "predictions.jsonl", per_clip)
    write_json(out / "results.json", results)
    gc.collect()
    return results


def _failure_modes(cm, recs: list[dict], per_clip: list[dict]) -> dict:
    """Most confused class pair of the fine-tuned model with its clip ids, plus the clips whose span missed worst."""
    pair = most_confused_pair(cm)
    out: dict = {"system": "finetuned_model", "most_confused_pair": None}
    if pair is not None:
        t, p, n = pair
        ids = [row["clip_id"] for row, r in zip(per_clip, recs) if r["true_op"] == t and r["pred_op"] == p]
        back = [row["clip_id"] for row, r in zip(per_clip, recs) if r["true_op"] == p and r["pred_op"] == t]
        out["most_confused_pair"] = {"true": ID_TO_NAME[t], "predicted": ID_TO_NAME[p], "count": n, "clip_ids": ids,
                                     "reverse_count": len(back), "reverse_clip_ids": back}
    off = [(int(cm[i, j]), ID_TO_NAME[OPERATION_IDS[i]], ID_TO_NAME[OPERATION_IDS[j]])
           for i in range(cm.shape[0]) for j in range(cm.shape[1]) if i != j and cm[i, j]]
    out["confusions"] = [{"true": t, "predicted": p, "count": n} for n, t, p in sorted(off, key=lambda x: -x[0])]
    ious = [(span_iou(r["pred_span"], r["true_span"]) or 0.0, row["clip_id"]) for row, r in zip(per_clip, recs)]
    out["worst_spans"] = [{"clip_id": c, "tIoU": v} for v, c in sorted(ious)[:5]]
    out["next_op_misses"] = [row["clip_id"] for row, r in zip(per_clip, recs) if r["pred_next"] != r["true_next"]]
    return out


def format_table(results: dict) -> str:
    """Base vs fine-tuned (and + grammar) table with 95 % intervals, plus the baselines."""
    w = max(len(n) for n in list(results["variants"]) + list(results["baselines"])) + 2
    lines = [f"{'system':<{w}}" + "".join(f"{k:>22}" for k in HEADLINE)]
    for name, m in results["variants"].items():
        cells = []
        for k in HEADLINE:
            lo, hi = m["intervals"][k]
            cells.append(f"{m[k]:.3f} [{lo:.2f},{hi:.2f}]".rjust(22))
        lines.append(f"{name:<{w}}" + "".join(cells))
    for name, m in results["baselines"].items():
        lines.append(f"{name:<{w}}" + "".join(f"{m[k]:.3f}".rjust(22) if k in m else " " * 22 for k in HEADLINE))
    kp = results.get("keypoint_baseline")
    if kp and "skipped" not in kp:
        lines.append(f"{'keypoint_baseline':<{w}}" + "".join(
            f"{kp[k]:.3f} [{kp['intervals'][k][0]:.2f},{kp['intervals'][k][1]:.2f}]".rjust(22) for k in HEADLINE))
    tl = results.get("timeline")
    if tl and "skipped" not in tl:
        sess = ", ".join(f"{e['user']}/{e['session']} {e['seconds']:g} s" for e in tl["sessions"])
        lines.append(f"timeline ({sess}, 1 Hz, openpack-toolkit): " + "; ".join(
            f"{name} macro-F1 {tl[name]['macro_f1']:.3f} (present classes {tl[name]['macro_f1_present_classes']:.3f}, "
            f"accuracy {tl[name]['accuracy_1hz']:.3f}, edit {tl[name]['edit']:.3f}, F1@10/25/50 "
            f"{tl[name]['F1@10']:.3f}/{tl[name]['F1@25']:.3f}/{tl[name]['F1@50']:.3f})"
            for name in ("base_model", "finetuned_model")))
    cal = results.get("calibration")
    if cal:
        d = cal["dominant"]
        lines.append("confidence calibration (ECE, 10 bins): " + ", ".join(
            f"{name} {r['ece']:.3f} (mean confidence {r['mean_confidence']:.2f}, accuracy {r['accuracy']:.2f})"
            for name, r in d.items()) + f"; temperature {cal['temperature']} ({cal['fitted_on']})")
    pc = (results.get("per_class") or {}).get("finetuned_model")
    if pc:
        lines.append(f"per class, finetuned_model:  {'class':<24}{'precision':>10}{'recall':>8}{'F1':>7}{'n':>5}")
        for name, s in pc.items():
            lines.append(f"{'':<29}{name:<24}{s['precision']:>10.3f}{s['recall']:>8.3f}{s['f1']:>7.3f}"
                         f"{s['support']:>5}")
    lines.append(f"n_clips={results['n_clips']}  {results['note']}")
    return "\n".join(lines)


__all__ = ["EvalConfig", "EvalError", "evaluate", "format_table", "select_clips", "load_clips", "data_provenance",
           "GrammarError"]


def main(argv=None) -> int:
    parser = build_parser(EvalConfig, description="Evaluate base vs fine-tuned Qwen2-VL on the held-out test split → results.json (evaluate.py, openpack-evaluate)")
    cfg, _ = parse(parser, argv)
    try:
        results = evaluate(cfg)
    except Exception as e:  # the CLI prints one line, never a traceback
        print(f"error: {one_line(e, with_type=True)}", file=sys.stderr)
        return 1
    print(format_table(results))
    mem = results["provenance"]["memory"]
    print(f"batch_clips={cfg.batch_clips}  peak memory: {mem['kind']} {mem['bytes'] / 1e9:.3f} GB")
    print(f"wrote {cfg.out}/results.json, predictions.jsonl, confusion.json, confusion.png, failure_modes.json, "
          "run.json")
    return 0

