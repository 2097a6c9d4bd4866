"""The Gradio app of the Hugging Face Space (space/app.py): the same predictor and checks as the HTTP API.

    python space/app.py                 # http://127.0.0.1:7860 ; settings from the serving environment variables
    MODEL_ID=tiny-real QUANTIZATION=none python space/app.py          # offline, on CPU, with the tiny test model

Two tabs, each one Gradio API endpoint (``gradio_client``: ``/predict``, ``/timeline``):
- **Clip**: a video → the /predict answer (``Prediction`` JSON) and the K frames the model saw.
- **Recording**: a long video → the operation timeline (Gantt PNG, segments, cycle times, the next operation).

The model is loaded once, at start, by ``app.load_predictor`` (run contract, grammar, tuned fusion weight and
temperature, ``ADAPTER_PATH`` as a folder or a Hub id). Uploads go through ``uploads.probe_upload`` /
``decode_clip``, so a file the API refuses gets the same one-line reason here (``gr.Error``). On ZeroGPU the model
calls run inside ``@spaces.GPU`` functions (the ``spaces`` package exists only there); elsewhere they run as they are.
"""
from __future__ import annotations

import io
import logging
import os
from pathlib import Path

from ..schema import FPS
from ..timeline.analyse import TimelineConfig, TimelineError, analyse_video
from ..timeline.plot import plot_timeline
from .settings import ServeConfig
from .uploads import UploadError, decode_clip, probe_upload, sanitize_clip_id

log = logging.getLogger("openpack_vlm.space")

CLIP_GPU_S = 60  # ZeroGPU duration budget of one clip (s): 5 model calls of the 2B take ~1 s on an A100-class slice
TIMELINE_GPU_S = 300  # ... of one recording: ~0.25 s per window, 10 min at stride 2.5 s = 240 windows


def on_gpu(duration: int):
    """``spaces.GPU(duration=...)`` where the ``spaces`` package is installed (ZeroGPU Spaces), else no-op."""
    try:
        import spaces
    except ImportError:
        return lambda fn: fn
    return spaces.GPU(duration=duration)


def _frames_seen(clip, indices) -> list[tuple]:
    from PIL import Image

    return [(Image.fromarray(clip[int(i)]), f"frame {int(i)} (t={int(i) / FPS:.2f}s)") for i in indices]


def build_demo(cfg: ServeConfig | None = None, predictor=None):
    """The gr.Blocks app; ``predictor``: an already loaded one (tests), else ``load_predictor(cfg)``."""
    import gradio as gr

    from .state import load_predictor  # deferred: would load fastapi on import

    cfg = cfg or ServeConfig.from_env()
    predictor = predictor if predictor is not None else load_predictor(cfg)
    run = (predictor.info or {}).get("run") or {}

    def _path(upload) -> Path:
        if upload is None:
            raise gr.Error("no video: upload a file first")
        return Path(upload if isinstance(upload, (str, os.PathLike)) else upload.name)

    @on_gpu(CLIP_GPU_S)
    def _answer(clip, cid, motion=None):
        return predictor.predict_clip(clip, cid, motion)

    def predict_clip(video, clip_id: str | None = None):
        """One clip → (Prediction JSON, the frames the model saw)."""
        path = _path(video)
        try:  # what the run's model must see: camera frames, or skeletons of the keypoints (run contract)
            got = decode_clip(path, cfg, getattr(predictor, "input_frames", "rgb"),
                              getattr(predictor, "input_render", None))
        except UploadError as e:
            raise gr.Error(f"{e.error}: {e.detail}") from None
        cid = sanitize_clip_id(clip_id or None, path.name)
        result = _answer(got.clip, cid, got.motion)
        return result.prediction.model_dump(), _frames_seen(got.clip, result.scores["frame_indices"])

    @on_gpu(TIMELINE_GPU_S)
    def _timeline(path, tcfg, on_window):
        return analyse_video(predictor, path, tcfg, on_window=on_window)

    def timeline(video, stride: float = 2.5, progress=gr.Progress()):
        """A recording → (Gantt PNG, segments table, summary JSON)."""
        path = _path(video)
        try:
            probe_upload(path, cfg.max_timeline_seconds, cfg.max_frame_pixels, route="/timeline")
            tcfg = TimelineConfig(stride=float(stride), max_seconds=cfg.max_timeline_seconds, pose_roi=cfg.pose_roi,
                                  min_worker_share=cfg.min_worker_share)
        except UploadError as e:
            raise gr.Error(f"{e.error}: {e.detail}") from None
        except ValueError as e:
            raise gr.Error(f"bad stride: {e}") from None

        def on_window(rec, n, total):
            progress((n, total) if total else n, desc="windows answered", unit="window")

        try:
            result = _timeline(path, tcfg, on_window)
        except TimelineError as e:
            raise gr.Error(str(e)) from None
        from PIL import Image

        png = Image.open(io.BytesIO(plot_timeline(result, None, title=path.name)))
        rows = [[s["operation"], round(s["start_s"], 2), round(s["end_s"], 2), round(s["end_s"] - s["start_s"], 2)]
                for s in result["segments"]]
        summary = {k: result[k] for k in ("duration_s", "n_windows", "stride_s", "anticipated_next_operation",
                                          "cycle_summary", "timing")}
        return png, rows, summary

    header = (f"### OpenPack operation understanding\nModel `{(predictor.info or {}).get('model_id')}`"
              + (f" + adapter `{predictor.info.get('adapter')}`" if (predictor.info or {}).get("adapter") else "")
              + (f"; frames: `{run.get('source')}`, K = {run.get('k')}" if run else "")
              + ". A 5-s clip gets the dominant operation, its frame span (0-124 at 25 fps) and the next operation;"
                " a recording gets its timeline.")
    with gr.Blocks(title="openpack-vlm") as demo:
        gr.Markdown(header)
        with gr.Tab("Clip"):
            with gr.Row():
                with gr.Column():
                    video = gr.File(label="video clip (any container libav reads; the first 5 s are used)",
                                    type="filepath")  # any name: the bytes decide, as in the API
                    cid = gr.Textbox(label="clip id (optional)", max_lines=1)
                    go = gr.Button("Analyse clip", variant="primary")
                with gr.Column():
                    answer = gr.JSON(label="answer (the /predict schema)")
            seen = gr.Gallery(label="the frames the model saw", columns=8, height="auto")
            go.click(predict_clip, [video, cid], [answer, seen], api_name="predict")
        with gr.Tab("Recording"):
            with gr.Row():
                with gr.Column():
                    rec = gr.File(label=f"recording (up to {cfg.max_timeline_seconds:g} s)",
                                  type="filepath")
                    stride = gr.Slider(0.5, 5.0, value=2.5, step=0.5, label="seconds between 5-s windows")
                    go2 = gr.Button("Build timeline", variant="primary")
                with gr.Column():
                    summary = gr.JSON(label="summary")
            gantt = gr.Image(label="timeline", type="pil")
            segments = gr.Dataframe(headers=["operation", "start (s)", "end (s)", "duration (s)"], label="segments")
            go2.click(timeline, [rec, stride], [gantt, segments, summary], api_name="timeline")
    return demo


def main() -> None:
    """``python space/app.py``: serve on GRADIO_SERVER_NAME/PORT (Gradio's own variables; 127.0.0.1:7860)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from an offline machine
    build_demo().queue(default_concurrency_limit=1).launch()


__all__ = ["build_demo", "main", "on_gpu"]
