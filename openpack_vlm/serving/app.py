"""The FastAPI app behind ``serve.py``: /health, /ready, /predict and the page on APIRouters (the timeline routes:
timeline_routes.py; the model state and dependencies: state.py; the OpenAPI text: openapi.py), request-size middleware,
the error handlers.

A request's way: ``UploadSizeLimit`` (413 while the body streams in) → ``POST /predict`` → ``uploads.save_upload`` →
``DecoderPool.decode`` (a decoder process: probe, decode, normalise to 125 frames) → ``Predictor.predict_clip`` (the
run contract's sampler and K, JPEG round trip, prompt, grammar + tuned weight) → ``schema.Prediction``. The model is
loaded once, in a background thread started by the lifespan handler (never at import), so ``/health`` answers at once
and ``/ready`` says 503 until the model is there; the model runs one call at a time behind a lock in a worker thread,
so the event loop never waits for it. Every error is a JSON body ``{"error": code, "detail": one line}``.
"""
from __future__ import annotations

import json
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from fastapi import APIRouter, Depends, FastAPI, File, Form, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..io_utils import one_line
from ..schema import FPS, Prediction
from .guard import REQUEST_ID, RequestGuard
from .guard import error as guard_error
from .metrics import ServiceMetrics
from .openapi import API_DESCRIPTION, COMMON_RESPONSES, ERROR_RESPONSES, to_clip_rule
from .page import page_html, page_js
from .settings import ServeConfig
from .state import ModelState, PredictorFactory, get_model, get_settings, load_predictor
from .timeline_jobs import TimelineJobs
from .timeline_routes import router as timeline_router
from .uploads import ErrorBody, UploadError, sanitize_clip_id, save_upload

log = logging.getLogger("openpack_vlm.serving")

MULTIPART_SLACK = 64 * 1024  # bytes of multipart framing + the clip_id field allowed on top of the file cap


def error_response(status: int, error: str, detail: str, headers: dict | None = None) -> JSONResponse:
    """Every error body: ``{"error": code, "detail": one line, "request_id": ...}`` (guard.error)."""
    return guard_error(status, error, detail, headers)


class UploadSizeLimit:
    """ASGI middleware: a request body to a path of ``limits`` ({path: max bytes}) over its cap gets 413 while it
    streams in.

    A declared Content-Length over the cap is refused before any byte is read; a chunked body is counted as it
    arrives. The 413 is raised from ``receive`` as an HTTPException, which FastAPI passes through its body parsing to
    the app's exception handler (JSON body), so nothing over the cap is ever buffered or spooled.
    """

    def __init__(self, app, limits: dict[str, int]):
        self.app, self.limits = app, dict(limits)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in self.limits:
            return await self.app(scope, receive, send)
        max_bytes = self.limits[scope["path"]]
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
            if declared is not None and declared > max_bytes:
                raise StarletteHTTPException(413)
            message = await receive()
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > max_bytes:
                    raise StarletteHTTPException(413)
            return message

        await self.app(scope, limited_receive, send)


class FramePreview(BaseModel):
    index: int  # frame of the normalised clip (0-124)
    t_s: float  # its time in the clip (s)
    jpeg: str  # data:image/jpeg;base64,...
    operation: str | None = None  # the frame head's reading of this frame (model/frame_head.py); None without one
    operation_p: float | None = None  # its probability


class PredictionWithFrames(Prediction):
    """/predict's answer with ``include_frames=true`` (the web page): the Prediction plus the frames the model saw."""

    frames: list[FramePreview]


PREVIEW_QUALITY = 80  # JPEG quality of the frames /predict returns with include_frames (~15 KB each at 336x336)


def frame_previews(clip, indices, readings: list[dict] | None = None) -> list[dict]:
    """The frames the model saw, for the page: ``{index, t_s, jpeg}`` (a data URL), with ``operation`` /
    ``operation_p`` from the frame head's ``readings`` ({name: p} per frame) when the adapter has one."""
    import base64
    import io

    from PIL import Image

    out = []
    for i in indices:
        buf = io.BytesIO()
        Image.fromarray(clip[int(i)]).save(buf, format="JPEG", quality=PREVIEW_QUALITY)
        out.append({"index": int(i), "t_s": round(int(i) / FPS, 2),
                    "jpeg": "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode(),
                    "operation": None, "operation_p": None})
    for f, dist in zip(out, readings or ()):
        f["operation"] = max(dist, key=dist.get)
        f["operation_p"] = round(float(dist[f["operation"]]), 4)
    return out


# --------------------------------------------------------------------------------------------------- routes
router = APIRouter(responses=COMMON_RESPONSES)
open_router = APIRouter()  # guard.OPEN_PATHS: no key, nothing that can fail


@open_router.get("/health", summary="Liveness: the process answers (no API key needed)")
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
            "input": {"frames": model.frames, "pose_estimator": None if model.estimator is None else
                      f"mediapipe {model.estimator}", "pose_roi": cfg.pose_roi, "min_worker_share":
                      cfg.min_worker_share if model.frames == "pose" else None},
            "load_seconds": round(model.load_seconds or 0.0, 2)}


@router.post(
    "/predict",
    response_model=Prediction | PredictionWithFrames,
    summary="Dominant operation, its frame span and the next operation for one video clip",
    responses=ERROR_RESPONSES,
    form_limits={"max_files": 1, "max_fields": 4, "max_part_size": 4096},
)
async def predict(
    request: Request,
    response: Response,
    file: UploadFile = File(..., description="the video (any container/codec libav reads)"),
    clip_id: str | None = Form(None, description="id echoed in the answer; default: the file name"),
    include_frames: bool = Form(False, description="also return the frames the model saw (`frames`: index, time, "
                                "JPEG data URL, and the frame head's reading of each frame when the adapter has "
                                "one) — for the web page; off: the answer is exactly the Prediction"),
    model: ModelState = Depends(get_model),
    cfg: ServeConfig = Depends(get_settings),
):
    # capacity (MAX_PENDING uploads of both routes) was checked by guard.RequestGuard before the body was read
    model.pending += 1
    cid = sanitize_clip_id(clip_id, file.filename)
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    path: Path | None = None
    try:
        path = await anyio.to_thread.run_sync(save_upload, file.file, cfg.upload_dir, cfg.max_upload_bytes)
        t1 = time.perf_counter()
        timing["save"] = t1 - t0
        got = await anyio.to_thread.run_sync(model.decoders.decode, path, cfg, timing, model.frames, model.render)
        clip, info, n_frames = got.clip, got.info, got.n_frames
        path.unlink(missing_ok=True)  # decoded: the upload is not needed while the request waits for the model
        path = None
        t2 = time.perf_counter()
        async with model.lock:
            t3 = time.perf_counter()
            timing["queue"] = t3 - t2
            result = await anyio.to_thread.run_sync(model.predictor.predict_clip, clip, cid, got.motion)
        call = time.perf_counter() - t3
        model_s = float(result.scores.get("seconds", call))  # the Predictor times its own model calls
        request.app.state.metrics.model_seconds.observe(model_s)
        request.app.state.metrics.queue_seconds.observe(timing["queue"])
        timing["sample"] = call - model_s  # frame choice (+ drawing them, for skeletons) + JPEG round trip + image
        # conversion (predict_clip)
        timing["model"] = model_s
        pred = result.prediction
        if pred.clip_id != cid:
            pred = pred.model_copy(update={"clip_id": cid})
        timing["total"] = time.perf_counter() - t0
        log.info("predict %s [%s]: %s %dx%d %d frames -> %s [%s]", cid, REQUEST_ID.get(), info.codec, info.width,
                 info.height, n_frames, pred.dominant_operation, " ".join(f"{k}={v * 1000:.0f}ms" for k, v in timing.items()))
        response.headers["Server-Timing"] = ", ".join(f"{k};dur={v * 1000:.1f}" for k, v in timing.items())
        if got.pose is not None:  # skeleton runs: how much of the clip showed a worker, and where it was tracked
            response.headers["X-Pose"] = json.dumps({k: got.pose[k] for k in ("worker_share",
                                                     "mean_upper_body_score", "roi", "crop_search", "mirrored")}, separators=(",", ":"))
        response.headers["X-Frame-Indices"] = ",".join(str(i) for i in result.scores["frame_indices"])  # what the
        # model saw (frames of the normalised clip), chosen by the run contract's sampler
        if getattr(result, "repair", None):  # the model's text needed repair to fit the schema (predict.py)
            response.headers["X-Output-Repair"] = one_line(Exception(result.repair), 200)
        if include_frames:
            previews = await anyio.to_thread.run_sync(frame_previews, clip, result.scores["frame_indices"],
                                                      result.scores.get("frames"))
            body = pred.model_dump() | {"frames": previews}
            return JSONResponse(body, headers=dict(response.headers))
        return pred
    except UploadError as exc:
        log.info("predict %s: %d %s: %s", cid, exc.status, exc.error, exc.detail)
        raise
    finally:
        model.pending -= 1
        if path is not None:
            path.unlink(missing_ok=True)
        await file.close()


@open_router.get("/", include_in_schema=False)
async def page(cfg: ServeConfig = Depends(get_settings)):
    """The web page: upload a clip or a recording, see the answer, the frames, the timeline (no CDN, no build)."""

    return HTMLResponse(page_html(cfg))


@open_router.get("/static/page.js", include_in_schema=False)
async def page_script():
    """The page's script (a file: the page's Content-Security-Policy allows no inline script)."""

    return Response(page_js(), media_type="text/javascript", headers={"Cache-Control": "no-cache"})


# --------------------------------------------------------------------------------------------------- the app
def allowed_methods(app, scope) -> list[str]:
    """Every method some route answers on the scope's path."""
    from starlette.routing import Match

    methods: set[str] = set()
    for route in app.routes:
        if getattr(route, "methods", None) and route.matches(scope)[0] != Match.NONE:
            methods |= set(route.methods)
    return sorted(methods)


def create_app(cfg: ServeConfig | None = None, predictor_factory: PredictorFactory | None = None) -> FastAPI:
    """The FastAPI app. Nothing heavy happens here: the model loads in the lifespan handler's background thread."""
    cfg = cfg or ServeConfig.from_env()
    factory = predictor_factory or load_predictor

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        model = ModelState(cfg, factory)
        app.state.model = model
        app.state.timeline = TimelineJobs(cfg, model)
        model.start()
        yield
        app.state.model = None
        await anyio.to_thread.run_sync(app.state.timeline.close)
        await anyio.to_thread.run_sync(model.close)

    app = FastAPI(
        title="openpack-vlm",
        version=__import__("openpack_vlm").__version__,
        description=API_DESCRIPTION.replace("{to_clip_rule}", to_clip_rule()),
        lifespan=lifespan,
        docs_url="/docs" if cfg.docs else None,
        redoc_url=None,
    )
    app.state.cfg = cfg
    app.state.uploads = {"/predict": 0, "/timeline": 0}  # uploads in flight per route (guard.RequestGuard)
    # added first = innermost: sizes are capped after the guard let a request in
    app.add_middleware(UploadSizeLimit, limits={"/predict": cfg.max_upload_bytes + MULTIPART_SLACK,
                                                "/timeline": cfg.max_timeline_upload_bytes + MULTIPART_SLACK})
    if cfg.allowed_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cfg.allowed_origins, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "X-API-Key", "X-Request-ID", "Accept"],
                           expose_headers=["X-Request-ID", "X-Frame-Indices", "Server-Timing", "X-Output-Repair",
                                           "X-Job-Id", "Location"])
    app.add_middleware(RequestGuard, cfg=cfg)  # request id, key, origin, capacity, body timeout
    app.state.metrics = ServiceMetrics(app)  # outermost: counts every answer, the guard's refusals included

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, exc: UploadError):
        return error_response(exc.status, exc.error, exc.detail, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 405:  # Allow: the methods of EVERY route on this path (Starlette names one route's)
            allowed = allowed_methods(request.app, request.scope)
            return error_response(405, "method_not_allowed", f"{request.method} is not allowed on {request.url.path}; "
                                  f"allowed: {', '.join(allowed)}", {"Allow": ", ".join(allowed)})
        if exc.status_code == 408:
            return error_response(408, "body_timeout", str(exc.detail), {"Connection": "close"})
        if exc.status_code == 413:
            if request.url.path == "/timeline":
                return error_response(413, "too_large",
                                      f"upload exceeds MAX_TIMELINE_UPLOAD_MB={cfg.max_timeline_upload_mb:g} MB")
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
    # an unexpected exception is answered by guard.RequestGuard: 500, generic body with the request id, detail logged

    app.include_router(open_router)
    app.include_router(router)
    app.include_router(timeline_router)
    return app
