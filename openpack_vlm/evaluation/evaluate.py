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
import gc
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from ..cli import build_parser, parse, setting
from ..contract import RUN_FILE, ContractError, EvaluationSection, RunContract, file_sha256
from ..grammar import GrammarError, argmax_id, tune_fuse_weight
from ..io_utils import one_line, write_atomic, write_json, write_jsonl
from ..labels import ID_TO_NAME, NAME_TO_ID
from ..metrics import confusion_dict, confusion_matrix, evaluate_predictions, per_class_scores
from ..model.answers import parse_raw_text
from ..model.loading import ModelLoadError, adapter_dir, resolve_adapter
from ..model.predict import PredictConfig, Predictor
from ..schema import CLIP_FRAMES
from .calibration import calibration_report, dominant_probs
from .keypoint_baseline import BaselineConfig, BaselineError
from .keypoint_baseline import run as run_baseline
from .report import HEADLINE, definitions, failure_modes, format_table, plot_confusions, provenance
from .selection import EvalError, batches, iter_clips, select_clips, train_majority, truth_ids
from .timeline_eval import evaluate_timelines

log = logging.getLogger("openpack_vlm.evaluation")

SYSTEMS = ("base_model", "finetuned_model", "finetuned_grammar")
FREE_TEXT_SYSTEMS = ("base_model_free_text", "finetuned_model_free_text")


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
    keypoint_epochs: int = setting(80, "keypoint baseline: passes over the train split (its --epochs)")
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


def _load(cfg: EvalConfig, data: Path) -> tuple[Predictor, Predictor, Predictor | None, PredictConfig]:
    """(fine-tuned, base, answer-only or None, the answers' settings): one model load; the run contract and the
    grammar are resolved by ``Predictor.from_pretrained`` (checked against the data's) before the model loads."""
    # temperature 1: the raw confidences, which the calibration measures and fits a temperature to; fuse off: the
    # answers' next op is the model's own, and the grammar is fused in _systems with the weight tuned on val
    pcfg = PredictConfig(free_text=cfg.free_text, fuse_mode=cfg.fuse_mode, temperature=1.0, fuse=False)
    try:
        predictor = Predictor.from_pretrained(cfg.model_id, adapter=cfg.adapter, quantization=cfg.quantization,
                                              device=cfg.device, grammar=cfg.grammar or "auto", config=pcfg,
                                              data=data)
    except (ContractError, GrammarError) as e:
        raise EvalError(str(e)) from None
    if predictor.grammar is None and cfg.fuse_weight is not None:
        raise EvalError("--fuse-weight given but no grammar found (pass --grammar)")
    if not hasattr(predictor.model, "disable_adapter"):
        raise EvalError("the fine-tuned model has no LoRA adapter attached (need a PeftModel)")
    # base = the same weights with the LoRA switched off: one load, and exactly the base model
    # ... asked in the run's span format, as the fine-tuned model is
    # ... and never reading a frame head (with the LoRA off, its weights are the untrained ones)
    pcfg = dataclasses.replace(pcfg, span=predictor.config.span)
    base = Predictor(predictor.model, predictor.processor, grammar=None,
                     config=dataclasses.replace(pcfg, span_from="answer"))
    answer_only = Predictor(predictor.model, predictor.processor, grammar=None,
                            config=dataclasses.replace(pcfg, span_from="answer", free_text=False)
                            ) if predictor.has_frame_head else None
    return predictor, base, answer_only, pcfg


def _answer_split(cfg: EvalConfig, data: Path, rows: list[dict], predictor: Predictor, base: Predictor,
                  answer_only: Predictor | None) -> tuple[list, dict[str, list]]:
    """(records, {system: [PredictResult] in clip_id order}) of the chosen test clips, streamed in batches."""
    done: dict[str, tuple] = {}
    with tqdm(total=len(rows), desc=f"{cfg.split} clips (base + fine-tuned)", unit="clip") as bar:
        for batch in batches(iter_clips(data, cfg.split, rows), cfg.batch_clips):
            items = [(frames, rec.frame_indices, rec.clip_id) for rec, frames in batch]
            with predictor.model.disable_adapter():
                bs = base.predict_batch(items)
            fs = predictor.predict_batch(items)
            fa = answer_only.predict_batch(items) if answer_only else [None] * len(items)
            for (rec, _), b, f, a in zip(batch, bs, fs, fa):
                done[rec.clip_id] = (rec, b, f, a)
            bar.update(len(batch))
    order = [done[r["clip_id"]] for r in rows]  # clip_id order
    runs = {"base_model": [o[1] for o in order], "finetuned_model": [o[2] for o in order],
            "finetuned_answer_only": [o[3] for o in order] if answer_only else []}
    return [o[0] for o in order], runs


def _tune_on_val(cfg: EvalConfig, data: Path, predictor: Predictor, pcfg: PredictConfig
                 ) -> tuple[float | None, dict, tuple[list, list]]:
    """The fine-tuned model on val clips: (grammar fusion weight or None, the tuning record, (val dominant
    distributions, val true ops) for the confidence temperature)."""
    grammar, grammar_path = predictor.grammar, predictor.grammar_path
    tuning: dict = {"grammar": str(grammar_path) if grammar_path else None}
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
                    vt.append(truth_ids(rec)["next"])
                    vdom.append(dominant_probs(r))
                    vop.append(truth_ids(rec)["op"])
                bar.update(len(batch))
    weight = None
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
    return weight, tuning, (vdom, vop)


def _span(p) -> tuple[int, int]:
    return p.temporal_segment.start_frame, p.temporal_segment.end_frame


def _systems(cfg: EvalConfig, recs: list, truths: list[dict], runs: dict[str, list], predictor: Predictor,
             weight: float | None) -> tuple[dict[str, list[dict]], dict, list[dict]]:
    """Per-system scoring records, the anticipation confidences (for calibration) and predictions.jsonl's rows; the
    grammar system fuses the fine-tuned model's next-op distribution through ``Predictor.fuse_next`` (the one
    fusion)."""
    grammar = predictor.grammar
    systems: dict[str, list[dict]] = {s: [] for s in SYSTEMS + (FREE_TEXT_SYSTEMS if cfg.free_text else ())}
    for t, a in zip(truths, runs["finetuned_answer_only"]):
        p = a.prediction
        systems.setdefault("finetuned_answer_only", []).append(_record(
            t, NAME_TO_ID[p.dominant_operation], _span(p), NAME_TO_ID[p.anticipated_next_operation]))
    anticipation: dict[str, tuple[list, list]] = {"finetuned_model": ([], []), "finetuned_grammar": ([], [])}
    per_clip = []
    for rec, t, b, f in zip(recs, truths, runs["base_model"], runs["finetuned_model"]):
        row = {"clip_id": rec.clip_id, "truth": {"dominant_operation": ID_TO_NAME[t["op"]],
                                               "temporal_segment": list(t["span"]),
                                               "anticipated_next_operation": ID_TO_NAME[t["next"]]},
               "frame_indices": list(f.scores["frame_indices"]),
               "span_format": f.scores["span_format"]}  # how raw_text's span reads (answers.parse_raw_text)
        for name, res in (("base_model", b), ("finetuned_model", f)):
            p = res.prediction
            systems[name].append(_record(t, NAME_TO_ID[p.dominant_operation], _span(p),
                                         NAME_TO_ID[p.anticipated_next_operation]))
            row[name] = {"prediction": p.model_dump(), "raw_text": res.raw_text, "repair": res.repair,
                         "seconds": res.scores["seconds"]}
            if cfg.free_text:
                sc = res.scores
                free = parse_raw_text(res.raw_text, sc["frame_indices"] if sc["span_format"] == "shown" else None)
                systems[f"{name}_free_text"].append(_record(t, free["op"], free["span"], free["next"]))
        p = f.prediction
        nm = _ids_dist(f.scores["next_model"])
        anticipation["finetuned_model"][0].append(max(nm.values()))
        anticipation["finetuned_model"][1].append(argmax_id(nm) == t["next"])
        if grammar is not None:
            fused = predictor.fuse_next(f.scores, weight, cfg.fuse_mode)
            g_next = argmax_id(fused)
            anticipation["finetuned_grammar"][0].append(max(fused.values()))
            anticipation["finetuned_grammar"][1].append(g_next == t["next"])
            systems["finetuned_grammar"].append(_record(t, NAME_TO_ID[p.dominant_operation], _span(p), g_next))
            row["finetuned_grammar"] = {"anticipated_next_operation": ID_TO_NAME[g_next], "fuse_weight": weight}
        per_clip.append(row)
    if grammar is None:
        del systems["finetuned_grammar"]
        del anticipation["finetuned_grammar"]
    return systems, anticipation, per_clip


def _metrics(cfg: EvalConfig, systems: dict[str, list[dict]], runs: dict[str, list]) -> dict:
    """Each system's metrics with bootstrap intervals, plus the model runs' confidence, speed and calls per clip."""
    metrics = {name: evaluate_predictions(recs, n_boot=cfg.n_boot, seed=cfg.seed) for name, recs in systems.items()}
    for name, rs in runs.items():
        if not rs:
            continue
        metrics[name]["free_text_valid_rate"] = (sum(r.repair is None for r in rs) / len(rs)
                                                 if cfg.free_text and name != "finetuned_answer_only" else None)
        metrics[name]["mean_confidence"] = sum(r.prediction.confidence for r in rs) / len(rs)
        metrics[name]["seconds_per_clip"] = sum(r.scores["seconds"] for r in rs) / len(rs)
        metrics[name]["model_calls_per_clip"] = sum(r.scores["model_calls"] for r in rs) / len(rs)
    return metrics


def _baselines(majority: tuple[int, int, str], truths: list[dict], systems: dict[str, list[dict]], grammar) -> dict:
    """No-model baselines on the same clips: the train split's majority class with the whole-clip span, the
    whole-clip span alone, and the grammar's next op given the fine-tuned / the true dominant op."""
    maj_op, maj_next, maj_src = majority
    whole = (0, CLIP_FRAMES - 1)
    out = {
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
        out["grammar_given_predicted_op"] = {"AA@1": sum(
            grammar.predict_next(o) == t["next"] for o, t in zip(ft_ops, truths)) / len(truths)}
        out["grammar_given_true_op"] = {"AA@1": sum(
            grammar.predict_next(t["op"]) == t["next"] for t in truths) / len(truths)}
    return out


def _keypoint_baseline(cfg: EvalConfig, data: Path) -> dict:
    try:
        return run_baseline(BaselineConfig(data=str(data), split=cfg.split, n_clips=cfg.n_clips,
                                           all_clips=cfg.all_clips, epochs=cfg.keypoint_epochs, n_boot=cfg.n_boot,
                                           seed=cfg.seed))
    except BaselineError as e:
        log.warning("keypoint baseline skipped: %s", e)
        return {"skipped": str(e)}


def _timeline(cfg: EvalConfig, data: Path, out: Path, predictor: Predictor, weight: float | None) -> dict:
    """Whole sessions of the split as timelines, answered as served (grammar fused with the tuned weight)."""
    # deferred: a module-level import would shadow a local name or form a cycle
    from .keypoint_baseline import BaselineError, openpack_root

    try:
        root = openpack_root(data)
    except BaselineError as e:
        log.warning("timeline mode skipped: %s", e)
        return {"skipped": str(e)}
    tl_cfg = dataclasses.replace(predictor.config, free_text=False, fuse=True)  # the windows answer as served
    ft_tl = Predictor(predictor.model, predictor.processor, grammar=predictor.grammar, fuse_weight=weight,
                      config=tl_cfg)
    base_tl = Predictor(predictor.model, predictor.processor, grammar=None,
                        config=dataclasses.replace(tl_cfg, span_from="answer"))
    return evaluate_timelines(cfg, data, predictor.contract, {"base_model": (base_tl, predictor.model.disable_adapter),
                                                              "finetuned_model": (ft_tl, None)},
                              root, out, rows=select_clips(data, cfg.split, None))


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
    majority = train_majority(data)  # read before the model loads: a missing train manifest fails fast
    predictor, base, answer_only, pcfg = _load(cfg, data)
    out.mkdir(parents=True, exist_ok=True)
    recs, runs = _answer_split(cfg, data, rows, predictor, base, answer_only)
    truths = [truth_ids(rec) for rec in recs]
    weight, tuning, (vdom, vop) = _tune_on_val(cfg, data, predictor, pcfg)
    systems, anticipation, per_clip = _systems(cfg, recs, truths, runs, predictor, weight)
    calibration = calibration_report(
        vdom, vop, {name: [dominant_probs(r) for r in runs[name]] for name in ("base_model", "finetuned_model")},
        [t["op"] for t in truths], anticipation, out / "reliability.png", cfg.val_split)
    per_class = {name: per_class_scores([r["true_op"] for r in systems[name]], [r["pred_op"] for r in systems[name]])
                 for name in ("base_model", "finetuned_model")}
    metrics = _metrics(cfg, systems, runs)
    baselines = _baselines(majority, truths, systems, predictor.grammar)

    cms = {name: confusion_matrix([r["true_op"] for r in systems[name]], [r["pred_op"] for r in systems[name]])
           for name in ("base_model", "finetuned_model")}
    write_json(out / "confusion.json", {name: confusion_dict(cm) for name, cm in cms.items()})
    plot_confusions(out / "confusion.png", cms)
    write_json(out / "failure_modes.json", failure_modes(cms["finetuned_model"], systems["finetuned_model"], per_clip))
    tuning["run_contract"] = record_evaluation(predictor.contract, out, predictor.grammar_path,
                                               weight if predictor.grammar is not None else None, cfg, tuning,
                                               temperature=calibration["temperature"])

    prov, note, synthetic = provenance(cfg, data, recs)
    log.info("peak memory: %s %.3f GB", prov["memory"]["kind"], prov["memory"]["bytes"] / 1e9)
    kp = _keypoint_baseline(cfg, data) if cfg.keypoint_baseline else None
    timeline = None
    if cfg.timeline:
        timeline = _timeline(cfg, data, out, predictor, weight)
        if "skipped" not in timeline:
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
        "definitions": definitions(cfg.n_boot, cfg.seed),
        "provenance": prov,
        "config": asdict(cfg),
    }
    write_jsonl(out / "predictions.jsonl", per_clip)
    write_json(out / "results.json", results)
    gc.collect()
    return results


__all__ = ["EvalConfig", "EvalError", "evaluate", "GrammarError"]


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

