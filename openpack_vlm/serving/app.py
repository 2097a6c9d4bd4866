"""The FastAPI app behind ``serve.py``: routes on an APIRouter, the model state, request-size middleware.

A request's way: ``UploadSizeLimit`` (413 while the body streams in) → ``POST /predict`` → ``uploads.save_upload`` →
``DecoderPool.decode`` (a decoder process: probe, decode, normalise to 125 frames) → ``Predictor.predict_clip`` (the
run contract's sampler and K, JPEG round trip, prompt, grammar + tuned weight) → ``schema.Prediction``. The model is
loaded once, in a background thread started by the lifespan handler (never at import), so ``/health`` answers at once
and ``/ready`` says 503 until the model is there; the model runs one call at a time behind a lock in a worker thread,
so the event loop never waits for it. Every error is a JSON body ``{"error": code, "detail": one line}``.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, Depends, FastAPI, File, Form, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..io_utils import one_line
from ..schema import CLIP_FRAMES, CLIP_SECONDS, FPS, Prediction
from .decoders import DecoderPool
from .settings import ServeConfig
from .uploads import ErrorBody, UploadError, sanitize_clip_id, save_upload

log = logging.getLogger("openpack_vlm.serving")

MULTIPART_SLACK = 64 * 1024  # bytes of multipart framing + the clip_id field allowed on top of the file cap


def error_response(status: int, error: str, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


class UploadSizeLimit:
    """ASGI middleware: a request body to ``paths`` over ``max_bytes`` gets 413 while it streams in.

    A declared Content-Length over the cap is refused before any byte is read; a chunked body is counted as it
    arrives. The 413 is raised from ``receive`` as an HTTPException, which FastAPI passes through its body parsing to
    the app's exception handler (JSON body), so nothing over the cap is ever buffered or spooled.
    """

    def __init__(self, app, max_bytes: int, paths: tuple[str, ...] = ("/predict",)):
        self.app, self.max_bytes, self.paths = app, max_bytes, paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        declared = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
        total = 0

        async def limited_receive():
            nonlocal total
            if declared is not None and declared > self.max_bytes:
                raise StarletteHTTPException(413)
            message = await receive()
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > self.max_bytes:
                    raise StarletteHTTPException(413)
            return message

        await self.app(scope, limited_receive, send)


# --------------------------------------------------------------------------------------------------- the model
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
    from ..model.predict import PredictConfig, Predictor

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
            self.decoders = DecoderPool(cfg.decode_workers, cfg.decode_timeout_s, cfg.decode_memory_mb).start()
            log.info("%d decoder processes up; loading model %s (adapter=%s)", cfg.decode_workers, cfg.model_id,
                     cfg.adapter_path)
            self.predictor = self.factory(cfg)
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


# --------------------------------------------------------------------------------------------------- dependencies
def get_settings(request: Request) -> ServeConfig:
    return request.app.state.cfg


def get_model(request: Request) -> ModelState:
    """The loaded model state; 503 (with Retry-After) while it loads or when loading failed."""
    model: ModelState | None = getattr(request.app.state, "model", None)
    cfg = request.app.state.cfg
    if model is None or not model.ready:
        if model is not None and model.error:
            raise UploadError(503, "model_error", model.error, {"Retry-After": "5"})
        raise UploadError(503, "loading", f"model {cfg.model_id} is loading", {"Retry-After": "5"})
    return model


# --------------------------------------------------------------------------------------------------- routes
API_DESCRIPTION = f"""
Operation understanding for 5-second clips of an OpenPack packaging worker, by a (QLoRA-tuned) Qwen2-VL.

**POST /predict** takes one video as multipart field `file` (optional form field `clip_id`; default: the file name
without extension, reduced to letters, digits, `_` and `-`). The video is recognised by its bytes, not by its name or
declared type: any container/codec libav decodes (MP4/H.264, AVI/MJPEG, WebM/VP9, MKV, ...), any frame size or
frame rate.

Normalisation (the same as training): frames are taken at {FPS} fps by their timestamps and resized to 336×336 (whole
frame, letterboxed); the clip is then made exactly {CLIP_FRAMES} frames ({CLIP_SECONDS:g} s) by `video.to_clip`
(n = {CLIP_FRAMES}):

{{to_clip_rule}}

`temporal_segment` counts frames of this normalised clip (0–{CLIP_FRAMES - 1} at {FPS} fps), so frame *f* is at
*f*/{FPS} s of the clip. The frame sampler (K and its parameters), the JPEG round trip of the sampled frames, the
prompt, the grammar and its tuned fusion weight are the ones of the served run's contract (`run.json`, shown by
`/ready`).

Errors, always JSON `{{"error": code, "detail": message}}`: 413 file over `MAX_UPLOAD_MB`; 415 not a video
(unrecognised bytes, a still image, no video stream); 422 empty file, damaged/truncated video, no decodable frame,
shorter than the rule above allows, longer than `MAX_CLIP_SECONDS`, frames over `MAX_FRAME_PIXELS`, a decoder that
crashed, ran past `DECODE_TIMEOUT_S` or out of `DECODE_MEMORY_MB`, or a missing `file` field; 503 model still
loading, failed to load, or too many requests in flight (`Retry-After`). The `Server-Timing` header gives the server's
time per stage (save, decode, ipc, queue, sample, model, total) in ms; `X-Frame-Indices` the frames of the
normalised clip the model was shown.
"""


def _to_clip_rule() -> str:
    """video.to_clip's own statement of the rule, quoted: the API docs cannot drift from the code."""
    from ..data.video import to_clip

    doc = (to_clip.__doc__ or "").strip()
    return "\n".join("> " + line.strip() for line in doc.splitlines() if line.strip())


ERROR_RESPONSES = {
    413: {"model": ErrorBody, "description": "upload larger than MAX_UPLOAD_MB"},
    415: {"model": ErrorBody, "description": "not a video (unrecognised bytes, still image, no video stream)"},
    422: {"model": ErrorBody, "description": "empty, damaged, too long, frames too large, or no `file` field"},
    503: {"model": ErrorBody, "description": "model not ready, or too many requests in flight"},
}

router = APIRouter()


@router.get("/health", summary="Liveness: the process answers")
async def health() -> dict:
    return {"status": "ok"}


@router.get("/ready", summary="Readiness: the model is loaded (503 until then), and the run contract it serves by",
            responses={503: {"model": ErrorBody, "description": "loading or failed"}})
async def ready(model: ModelState = Depends(get_model), cfg: ServeConfig = Depends(get_settings)):
    info = dict(getattr(model.predictor, "info", None) or {})  # what was actually loaded, for operators
    device = getattr(model.predictor, "device", None)
    return {"status": "ready", "model_id": cfg.model_id, "adapter": cfg.adapter_path,
            "quantization": info.get("quantization"), "device": None if device is None else str(device),
            "grammar": info.get("grammar"), "fuse_weight": info.get("fuse_weight"), "run": info.get("run"),
            "load_seconds": round(model.load_seconds or 0.0, 2)}


@router.post(
    "/predict",
    response_model=Prediction,
    summary="Dominant operation, its frame span and the next operation for one video clip",
    responses=ERROR_RESPONSES,
    form_limits={"max_files": 1, "max_fields": 4, "max_part_size": 4096},
)
async def predict(
    response: Response,
    file: UploadFile = File(..., description="the video (any container/codec libav reads)"),
    clip_id: str | None = Form(None, description="id echoed in the answer; default: the file name"),
    model: ModelState = Depends(get_model),
    cfg: ServeConfig = Depends(get_settings),
):
    if model.pending >= cfg.max_pending:
        raise UploadError(503, "busy", f"{model.pending} requests in flight (MAX_PENDING={cfg.max_pending})",
                          {"Retry-After": "1"})
    model.pending += 1
    cid = sanitize_clip_id(clip_id, file.filename)
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    path: Path | None = None
    try:
        path = await anyio.to_thread.run_sync(save_upload, file.file, cfg.upload_dir, cfg.max_upload_bytes)
        t1 = time.perf_counter()
        timing["save"] = t1 - t0
        clip, info, n_frames = await anyio.to_thread.run_sync(model.decoders.decode, path, cfg, timing)
        path.unlink(missing_ok=True)  # decoded: the upload is not needed while the request waits for the model
        path = None
        t2 = time.perf_counter()
        async with model.lock:
            t3 = time.perf_counter()
            timing["queue"] = t3 - t2
            result = await anyio.to_thread.run_sync(model.predictor.predict_clip, clip, cid)
        call = time.perf_counter() - t3
        model_s = float(result.scores.get("seconds", call))  # the Predictor times its own model calls
        timing["sample"] = call - model_s  # frame choice + JPEG round trip + image conversion (predict_clip)
        timing["model"] = model_s
        pred = result.prediction
        if pred.clip_id != cid:
            pred = pred.model_copy(update={"clip_id": cid})
        timing["total"] = time.perf_counter() - t0
        log.info("predict %s: %s %dx%d %d frames -> %s [%s]", cid, info.codec, info.width, info.height, n_frames,
                 pred.dominant_operation, " ".join(f"{k}={v * 1000:.0f}ms" for k, v in timing.items()))
        response.headers["Server-Timing"] = ", ".join(f"{k};dur={v * 1000:.1f}" for k, v in timing.items())
        response.headers["X-Frame-Indices"] = ",".join(str(i) for i in result.scores["frame_indices"])  # what the
        # model saw (frames of the normalised clip), chosen by the run contract's sampler
        if getattr(result, "repair", None):  # the model's text needed repair to fit the schema (predict.py)
            response.headers["X-Output-Repair"] = one_line(Exception(result.repair), 200)
        return pred
    except UploadError as exc:
        log.info("predict %s: %d %s: %s", cid, exc.status, exc.error, exc.detail)
        raise
    finally:
        model.pending -= 1
        if path is not None:
            path.unlink(missing_ok=True)
        await file.close()


# --------------------------------------------------------------------------------------------------- the app
def create_app(cfg: ServeConfig | None = None, predictor_factory: PredictorFactory | None = None) -> FastAPI:
    """The FastAPI app. Nothing heavy happens here: the model loads in the lifespan handler's background thread."""
    cfg = cfg or ServeConfig.from_env()
    factory = predictor_factory or load_predictor

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        model = ModelState(cfg, factory)
        app.state.model = model
        model.start()
        yield
        app.state.model = None
        await anyio.to_thread.run_sync(model.close)

    app = FastAPI(
        title="openpack-vlm",
        version=__import__("openpack_vlm").__version__,
        description=API_DESCRIPTION.replace("{to_clip_rule}", _to_clip_rule()),
        lifespan=lifespan,
    )
    app.state.cfg = cfg
    app.add_middleware(UploadSizeLimit, max_bytes=cfg.max_upload_bytes + MULTIPART_SLACK)

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, exc: UploadError):
        return error_response(exc.status, exc.error, exc.detail, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 413:
            return error_response(413, "too_large", f"upload exceeds MAX_UPLOAD_MB={cfg.max_upload_mb:g} MB")
        return error_response(exc.status_code, f"http_{exc.status_code}", one_line(Exception(exc.detail)),
                              exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        parts = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            parts.append(f"{loc or 'request'}: {err.get('msg', 'invalid')}")
        detail = "; ".join(parts) or "invalid request"
        if any(tuple(e.get("loc", ()))[-1:] == ("file",) for e in exc.errors()):
            detail = "send the video as multipart/form-data field 'file' (" + detail + ")"
        return error_response(422, "bad_request", detail)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        log.exception("internal error")
        return error_response(500, "internal", one_line(exc, with_type=True))

    app.include_router(router)
    return app
