"""Does a confidence of 0.8 mean right 80 % of the time? Expected calibration error and reliability diagrams of the
dominant-operation confidence (and of the anticipation probability), and the temperature, fitted on the validation
clips, that the run contract carries to serving (``EvaluationSection.temperature``; ``Predictor`` reports
``confidence`` = the tempered probability of the chosen operation — the answer itself never changes).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io_utils import save_figure
from ..labels import NAME_TO_ID, OPERATION_NAMES
from ..metrics import ECE_BINS, fit_temperature, reliability, temper


def dominant_probs(result) -> list[float]:
    """A PredictResult's dominant-operation distribution (untempered), in OPERATION_NAMES order."""
    d = result.scores["dominant"]
    return [float(d[n]) for n in OPERATION_NAMES]


def _rel(probs: np.ndarray, truth_idx: list[int]) -> dict:
    return reliability(probs.max(axis=1), probs.argmax(axis=1) == np.asarray(truth_idx))


def calibration_report(val_probs: list[list[float]], val_ops: list[int], test: dict[str, list[list[float]]],
                       test_ops: list[int], anticipation: dict[str, tuple[list[float], list[bool]]],
                       png: Path | None, val_split: str) -> dict:
    """``val_probs``/``test[name]``: dominant distributions (OPERATION_NAMES order) of the validation clips (fine-
    tuned model) and of the test clips per system; ``*_ops``: the true operation ids; ``anticipation``: per system
    (confidence of the chosen next operation, whether it was right)."""
    to_idx = {NAME_TO_ID[n]: i for i, n in enumerate(OPERATION_NAMES)}
    temperature = fit_temperature(val_probs, [to_idx[o] for o in val_ops]) if val_probs else None
    y = [to_idx[o] for o in test_ops]
    dominant = {name: _rel(np.asarray(p), y) for name, p in test.items()}
    if temperature is not None:
        dominant["finetuned_model_tempered"] = _rel(temper(np.asarray(test["finetuned_model"]), temperature), y)
    out = {
        "temperature": temperature,
        "fitted_on": f"{val_split}: {len(val_probs)} clips (fine-tuned model, NLL on a log grid 0.05-20)"
        if temperature is not None else "not fitted (no validation clips)",
        "bins": ECE_BINS,
        "dominant": dominant,
        "anticipation": {name: reliability(c, ok) for name, (c, ok) in anticipation.items()},
    }
    if png is not None:  # the dominant-operation confidence, then the anticipation probability
        plot_reliability(png, {**{f"dominant: {k}": v for k, v in dominant.items()},
                               **{f"next: {k}": v for k, v in out["anticipation"].items()}})
        out["png"] = png.name
    return out


def plot_reliability(path: Path, systems: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(systems))
    rows = -(-len(systems) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(systems):]:
        ax.axis("off")
    for ax, (name, rel) in zip(axes.flat, systems.items()):
        ax.plot([0, 1], [0, 1], color="#999", lw=1, ls="--", label="calibrated")
        for b in rel["bins"]:
            lo, hi = b["bin"]
            ax.bar(lo, b["accuracy"], width=hi - lo, align="edge", color="#1f6feb", alpha=0.75, edgecolor="white")
            ax.plot((lo + hi) / 2, b["confidence"], "o", color="#b42318", ms=3)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (bin)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{name}\nECE {rel['ece']:.3f}, {rel['n']} clips", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
