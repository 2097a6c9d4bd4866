"""The served model's state and the routes' dependencies: the decoder processes and the Predictor, loaded once in a
background thread (``/health`` answers meanwhile, ``/ready`` is 503 until it is done), and the settings, the model and
the timeline jobs as FastAPI dependencies."""
from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from fastapi import Request

from ..data.pose_estimate import require_estimator, warm_tracker
from ..io_utils import one_line
from .decoders import DecoderPool
from .guard import not_ready
from .settings import ServeConfig
from .timeline_jobs import TimelineJobs
from .uploads import UploadError

log = logging.getLogger("openpack_vlm.serving")

PredictorFactory = Callable[[ServeConfig], Any]


def resolve_quantization(quantization: str) -> str:
    """"auto" → "4bit" where CUDA is available (QLoRA-style serving), else "none" (bitsandbytes on CPU is slow)."""
    if quantization != "auto":
        return quantization
    import torch

    return "4bit" if torch.cuda.is_available() else "none"


def load_predictor(cfg: ServeConfig):
    """The shared Predictor (openpack_vlm.model.predict) for the configured base model (+ adapter), applying the
    run contract (RUN_CONFIG, else the one beside ADAPTER_PATH); FRAMES_PER_CLIP must agree with it."""
    from ..model.predict import PredictConfig, Predictor  # deferred: would load PIL on import

    if cfg.openpack_vlm_cache:  # model/loading.py builds and caches the "tiny" model there
        os.environ["OPENPACK_VLM_CACHE"] = cfg.openpack_vlm_cache
    return Predictor.from_pretrained(cfg.model_id, adapter=cfg.adapter_path,
                                     quantization=resolve_quantization(cfg.quantization), device=cfg.device,
                                     config=PredictConfig(free_text=cfg.free_text),
                                     run=cfg.run_config or "auto", frames_per_clip=cfg.frames_per_clip)


class ModelState:
    """The decoder processes and the predictor, started once in a background thread (the server answers /health
    meanwhile); readiness and load errors for /ready."""

    def __init__(self, cfg: ServeConfig, factory: PredictorFactory):
        self.cfg, self.factory = cfg, factory
        self.predictor = None
        self.decoders: DecoderPool | None = None
        self.ready = False
        self.error: str | None = None
        self.load_seconds: float | None = None
        self.frames = "rgb"  # what the model is shown: "rgb" camera frames | "pose" skeletons (run contract)
        self.render: dict | None = None  # the run's PoseRender fields, for skeletons
        self.estimator: str | None = None  # the pose estimator's version, for skeletons
        self.pending = 0  # /predict requests in flight (event-loop thread only)
        self.lock = asyncio.Lock()  # one model call at a time
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._load, name="model-loader", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        t0 = time.perf_counter()
        try:
            cfg = self.cfg
            self.decoders = DecoderPool(cfg.decode_workers, cfg.decode_timeout_s, cfg.decode_memory_mb,
                                        stream_workers=cfg.max_timeline_jobs).start()
            log.info("%d decoder processes up; loading model %s (adapter=%s)", cfg.decode_workers, cfg.model_id,
                     cfg.adapter_path)
            self.predictor = self.factory(cfg)
            # what the model must be shown, from its run contract: camera frames, or skeletons of estimated keypoints
            self.frames = getattr(self.predictor, "input_frames", "rgb")
            self.render = getattr(self.predictor, "input_render", None)
            if self.frames == "pose":
                self.estimator = require_estimator()
                self.decoders.warm(warm_tracker, cfg.pose_config())  # the first upload does not build the graph
        except BaseException as exc:  # reported through /ready and /predict, never kills the server
            self.error = one_line(exc, with_type=True)
            log.error("model load failed: %s", self.error)
            return
        self.load_seconds = time.perf_counter() - t0
        self.ready = True
        log.info("model ready in %.1f s", self.load_seconds)

    def wait(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.ready

    def close(self) -> None:
        self.wait(60)
        if self.decoders is not None:
            self.decoders.close()


def get_settings(request: Request) -> ServeConfig:
    return request.app.state.cfg


def get_model(request: Request) -> ModelState:
    """The loaded model state; 503 (with Retry-After) while it loads or when loading failed."""
    model: ModelState | None = getattr(request.app.state, "model", None)
    why = not_ready(model, request.app.state.cfg.model_id)
    if why is not None:
        raise UploadError(503, *why, {"Retry-After": "5"})
    return model


def get_jobs(request: Request) -> TimelineJobs:
    return request.app.state.timeline
