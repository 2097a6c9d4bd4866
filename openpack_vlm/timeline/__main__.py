"""The timeline of a whole recording: sliding 5-s windows answered like /predict, merged into segments.

    python -m openpack_vlm.timeline VIDEO --out T.json [--plot T.png] [--stride 2.5] [--truth VIDEO.truth.json] \
        [--model Qwen/Qwen2-VL-2B-Instruct --adapter R/adapter --quantization 4bit]
    python -m openpack_vlm.timeline U0108-S0100.csv --adapter R/adapter --out T.json   # skeleton run, Zenodo CSV
    python -m openpack_vlm.testing.synthetic --video /tmp/s.mp4 --seconds 600      # a 10-min video with a known timeline
    python -m openpack_vlm.timeline /tmp/s.mp4 --truth /tmp/s.truth.json --model tiny-real --quantization none \
        --out /tmp/s.timeline.json --plot /tmp/s.png

Writes T.json (segments, per-second labels, per-window answers, cycle times, the anticipated next operation and,
with --truth, OpenPack's macro-F1) and the Gantt PNG; prints progress and the segments. Every flag but VIDEO is a
field of TimelineRunConfig / TimelineConfig (``--help``).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..cli import build_parser, parse, setting
from ..data.keypoint_files import sniff_keypoint_file
from ..io_utils import one_line, read_json, write_json
from ..platform_check import peak_memory
from .analyse import TimelineConfig, TimelineError, analyse_video, probe_seconds
from .plot import plot_timeline


@dataclass
class TimelineRunConfig(TimelineConfig):
    """The timeline CLI's settings: the analysis (TimelineConfig) and the model that answers the windows."""

    out: str = setting(None, "timeline JSON to write")
    plot: str | None = setting(None, "Gantt chart PNG to write")
    truth: str | None = setting(None, "true timeline JSON ({segments: [{start_s, end_s, operation}]}) to score "
                                      "against (written by openpack_vlm.testing.synthetic --video)")
    model_id: str = setting("Qwen/Qwen2-VL-2B-Instruct", 'base model: hub id, local dir, "tiny" or "tiny-real"',
                            aliases=["--model"])
    adapter: str | None = setting(None, "LoRA adapter dir (R/adapter); its run.json sets K, sampler, grammar")
    quantization: str = setting("4bit", "4bit (GPU) | none (CPU)", choices=["4bit", "none"])
    device: str = setting("auto", "auto | cpu | cuda")

    def __post_init__(self):
        super().__post_init__()
        if not self.out:
            raise ValueError("--out T.json is required")


def main(argv=None) -> int:
    parser = build_parser(TimelineRunConfig, prog="python -m openpack_vlm.timeline", description=__doc__.split("\n")[0])
    parser.add_argument("video", help="the recording (any container/codec libav reads), or for a skeleton run an "
                                      "OpenPack keypoint file (mmpose JSON, Zenodo CSV: with labels it scores itself)")
    try:
        cfg, extra = parse(parser, argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from tqdm import tqdm

    from ..model.predict import Predictor  # deferred: would load PIL on import

    try:
        truth = None
        if cfg.truth:
            truth = read_json(cfg.truth, "truth timeline", TimelineError).get("segments")
            if not isinstance(truth, list):
                raise TimelineError(f"{cfg.truth}: no 'segments' list")
        if not (Path(extra.video).is_file() and sniff_keypoint_file(extra.video)):
            probe_seconds(extra.video)  # a file that is no video fails now, not after the model has loaded
        t0 = time.perf_counter()
        predictor = Predictor.from_pretrained(cfg.model_id, adapter=cfg.adapter, quantization=cfg.quantization,
                                              device=cfg.device)
        print(f"model {cfg.model_id} loaded in {time.perf_counter() - t0:.1f} s", flush=True)
        bar = tqdm(unit="window", desc=f"timeline {extra.video}")

        def progress(rec, done, total):
            bar.total = total
            bar.update(1)
            bar.set_postfix_str(f"{rec['start_s']:.0f}s {rec['dominant_operation']}")

        try:
            result = analyse_video(predictor, extra.video, cfg, on_window=progress, truth=truth)
        finally:
            bar.close()
        import resource

        # host peak RSS (KiB on Linux) whatever the device: what "memory stays flat with video length" is about
        result["memory"] = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                            "device": peak_memory()}
        write_json(cfg.out, result)
        if cfg.plot:
            plot_timeline(result, cfg.plot)
    except KeyboardInterrupt:
        print("error: interrupted; nothing written", file=sys.stderr)
        return 130
    except Exception as e:  # the CLI prints one line, never a traceback
        print(f"error: {one_line(e, with_type=True)}", file=sys.stderr)
        return 1
    for s in result["segments"]:
        conf = "-" if s["confidence"] is None else f"{s['confidence']:.2f}"  # "no worker" seconds: no answer
        print(f"{s['start_s']:8.1f} {s['end_s']:8.1f}  {s['operation']:<22} {conf}")
    cs = result["cycle_summary"]
    print(f"{result['duration_s']:.1f} s, {result['n_windows']} windows, {len(result['segments'])} segments; "
          f"{cs['complete_cycles']} complete box cycles (median {cs['median_cycle_s']} s); next: "
          f"{result['anticipated_next_operation']['operation']}")
    if "metrics" in result:
        m = result["metrics"]
        print(f"macro-F1 {m['macro_f1']:.3f} (present classes {m['macro_f1_present_classes']}), "
              f"1 Hz accuracy {m['accuracy_1hz']}, edit {m['edit']:.3f}, "
              f"F1@10/25/50 {m['F1@10']:.3f}/{m['F1@25']:.3f}/{m['F1@50']:.3f} (segments, Null as background)")
    print(f"peak RSS {result['memory']['peak_rss_bytes'] / 1e9:.2f} GB; wrote {cfg.out}"
          + (f" and {cfg.plot}" if cfg.plot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
