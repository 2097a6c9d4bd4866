"""The timeline as a Gantt-style PNG: one colour per operation; rows for the merged prediction, the raw window
answers (each window's predicted span in its dominant operation's colour) and the truth when it is known."""
from __future__ import annotations

from pathlib import Path

from ..io_utils import save_figure
from ..labels import OPERATION_NAMES
from .merge import NO_WORKER

#: One colour per OpenPack class (matplotlib's tab10 + grey for Null); the web page uses the same (serving/page.py).
OPERATION_COLORS: dict[str, str] = dict(zip(OPERATION_NAMES, (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#7f7f7f",
    "#d9d9d9")))
OPERATION_COLORS[NO_WORKER] = "#000000"  # skeleton runs: seconds without a worker in view


def _bars(ax, y: float, segments: list[dict], height: float = 0.8) -> None:
    for s in segments:
        ax.broken_barh([(s["start_s"], s["end_s"] - s["start_s"])], (y - height / 2, height),
                       facecolors=OPERATION_COLORS[s["operation"]], edgecolor="white", linewidth=0.3)


def plot_timeline(result: dict, path: str | Path | None, title: str | None = None) -> Path | bytes:
    """The Gantt chart of a timeline result (``analyse.analyse_windows``): written to ``path`` (PNG, atomic), or
    returned as PNG bytes when ``path`` is None (the server's /timeline/{id}/plot.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = [("prediction", result["segments"])]
    windows = result.get("windows") or []
    rows.append(("windows", [{"start_s": w["span_s"][0], "end_s": w["span_s"][1], "operation": w["dominant_operation"]}
                             for w in windows]))
    if result.get("truth"):
        rows.append(("truth", result["truth"]))
    duration = float(result["duration_s"])
    fig, ax = plt.subplots(figsize=(max(8.0, min(24.0, duration / 15)), 1.2 + 0.7 * len(rows)))
    for i, (_, segs) in enumerate(rows):
        _bars(ax, len(rows) - 1 - i, segs, 0.8 if i != 1 else 0.45)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([name for name, _ in reversed(rows)])
    ax.set_xlim(0, duration)
    ax.set_xlabel("time in the recording (s)")
    used = [n for n in (*OPERATION_NAMES, NO_WORKER) if any(s["operation"] == n for _, segs in rows for s in segs)]
    ax.legend(handles=[Patch(color=OPERATION_COLORS[n], label=n) for n in used], loc="upper center",
              bbox_to_anchor=(0.5, -0.35 - 0.05 * len(rows)), ncol=min(6, max(1, len(used))), fontsize=7, frameon=False)
    metrics = result.get("metrics")
    sub = f"{result.get('source', '')}: {duration:.1f} s, {result['n_windows']} windows every {result['stride_s']:g} s"
    if metrics:
        sub += f"; macro-F1 {metrics['macro_f1']:.3f} (1 Hz, openpack-toolkit)"
    ax.set_title(title or sub, fontsize=9)
    fig.tight_layout()
    if path is None:
        import io

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        return buf.getvalue()
    return save_figure(fig, path)
