"""What an evaluation run says about itself and shows: provenance (data, model, checkout, machine), the note that
flags synthetic / tiny-model numbers, the metric definitions, the confusion plot, the failure modes and the printed
table. ``evaluate.py`` computes the numbers; this module only describes and shows them."""
from __future__ import annotations

import datetime as _dt
import json
import subprocess
from collections import Counter
from pathlib import Path

from ..io_utils import save_figure
from ..labels import ID_TO_NAME, OPERATION_IDS
from ..metrics import most_confused_pair, span_iou
from ..model.loading import tiny_pretrain_meta
from ..platform_check import peak_memory
from ..testing.tiny import is_tiny

HEADLINE = ("OCA", "tIoU@0.5", "AA@1")


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
    repo = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=repo,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit, "git_dirty": dirty}

def provenance(cfg, data: Path, recs) -> tuple[dict, str, bool]:
    """(provenance block, note, synthetic?) of a run on ``data`` with ``cfg``'s model over the clips ``recs``: the
    note flags synthetic data and tiny models, whose numbers are never OpenPack results."""

    prov = data_provenance(data)
    tiny = is_tiny(cfg.model_id)
    pretraining = tiny_pretrain_meta(cfg.model_id) if tiny else None  # the tiny base's pre-training record
    frame_sources = dict(Counter(rec.source for rec in recs))
    synthetic = prov["data"] != "real" or tiny
    memory = peak_memory()
    out = prov | {"frame_sources": frame_sources, "model_id": cfg.model_id, "tiny_random_model": tiny,
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
    return out, note, synthetic


def definitions(n_boot: int, seed: int) -> dict:
    """results.json's ``definitions``: what each number means."""
    return {
        "OCA": "share of clips whose dominant operation is right",
        "tIoU@0.5": "share of ALL clips whose predicted inclusive frame span has IoU >= 0.5 with the truth "
                    "(missing/invalid spans count as misses); *_valid_only: over valid spans only",
        "AA@1": "share of clips whose anticipated next operation is right",
        "intervals": f"95% percentile bootstrap over clips, {n_boot} resamples, seed {seed}",
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
    }


def plot_confusions(path: Path, cms: dict) -> None:
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



def failure_modes(cm, recs: list[dict], per_clip: list[dict]) -> dict:
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
