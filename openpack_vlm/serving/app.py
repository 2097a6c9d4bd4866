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
import json
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
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..data.pose_estimate import require_estimator, warm_tracker
from ..io_utils import one_line
from ..schema import CLIP_FRAMES, CLIP_SECONDS, FPS, Prediction
from .decoders import DecoderPool
from .guard import REQUEST_ID, RequestGuard, not_ready
from .metrics import ServiceMetrics
from .guard import error as guard_error
from .settings import ServeConfig
from .timeline_jobs import TimelineJobs
from .uploads import ErrorBody, UploadError, probe_input, sanitize_clip_id, save_upload

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
            self.decoders = DecoderPool(cfg.decode_workers, cfg.decode_timeout_s, cfg.decode_memory_mb).start()
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


# --------------------------------------------------------------------------------------------------- dependencies
def get_settings(request: Request) -> ServeConfig:
    return request.app.state.cfg


def get_model(request: Request) -> ModelState:
    """The loaded model state; 503 (with Retry-After) while it loads or when loading failed."""
    model: ModelState | None = getattr(request.app.state, "model", None)
    why = not_ready(model, request.app.state.cfg.model_id)
    if why is not None:
        raise UploadError(503, *why, {"Retry-After": "5"})
    return model


class FramePreview(BaseModel):
    index: int  # frame of the normalised clip (0-124)
    t_s: float  # its time in the clip (s)
    jpeg: str  # data:image/jpeg;base64,...
    operation: str | None = None  # the frame head's reading of this frame (model/frame_head.py); None without one
    operation_p: float | None = None  # its probability


class PredictionWithFrames(Prediction):
    """/predict's answer with ``include_frames=true`` (the web page): the Prediction plus the frames the model saw."""

    frames: list[FramePreview]


SSE_RESPONSE = {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                "description": "server-sent events: `job`, then `window` per answered window, then `done`, "
                               "`error` or `cancelled` (each `data:` line is JSON)"}

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
API_DESCRIPTION = f"""
Operation understanding for 5-second clips of an OpenPack packaging worker, by a (QLoRA-tuned) Qwen2-VL.
Whole recordings: **POST /timeline** (below). A web page to try both: **GET /**.

**POST /predict** takes one video as multipart field `file` (optional form field `clip_id`; default: the file name
without extension, reduced to letters, digits, `_` and `-`). The video is recognised by its bytes, not by its name or
declared type: any container/codec libav decodes (MP4/H.264, AVI/MJPEG, WebM/VP9, MKV, ...), any frame size or
frame rate.

Normalisation (the same as training): frames are taken at {FPS} fps by their timestamps and resized to 336×336 (whole
frame, letterboxed); the clip is then made exactly {CLIP_FRAMES} frames ({CLIP_SECONDS:g} s) by `video.to_clip`
(n = {CLIP_FRAMES}):

{{to_clip_rule}}

**Skeleton runs** (the served run's `data.frames` is `pose`, shown by `/ready` as `input.frames`): the model was
trained on skeleton frames rendered from OpenPack's 2D keypoints, so it is never shown camera pixels. The video's
frames are taken at 15 Hz (the Kinect keypoint rate), one person's COCO-17 keypoints are estimated on them (MediaPipe
Pose; `POSE_ROI` says where the worker stands, else a worker too small for the detector is searched in crops), and
the skeleton clip is rendered and sampled exactly as in training (the keypoints' motion picks the frames). A clip in
which fewer than `MIN_WORKER_SHARE` of the keypoint frames show a worker (a shoulder and 4 upper-body joints) gets
**422 `no_worker`** instead of an answer; the `X-Pose` header reports the share, the mean joint score, the crop and
whether it was searched. `include_frames` then returns the skeleton frames the model saw.

`temporal_segment` counts frames of this normalised clip (0–{CLIP_FRAMES - 1} at {FPS} fps), so frame *f* is at
*f*/{FPS} s of the clip. The frame sampler (K and its parameters), the JPEG round trip of the sampled frames, the
prompt, the grammar and its tuned fusion weight are the ones of the served run's contract (`run.json`, shown by
`/ready`).

Errors, always JSON `{{"error": code, "detail": message, "request_id": id}}` (the id is also the `X-Request-ID`
header, and the server's log line of the request names it): 401 no valid key when `API_KEY` is set; 403 a write from
another site; 408 a body that stopped arriving; 413 file over `MAX_UPLOAD_MB`; 415 not a video
(unrecognised bytes, a still image, no video stream); 422 empty file, damaged/truncated video, no decodable frame,
shorter than the rule above allows, longer than `MAX_CLIP_SECONDS`, frames over `MAX_FRAME_PIXELS`, a decoder that
crashed, ran past `DECODE_TIMEOUT_S` or out of `DECODE_MEMORY_MB`, a missing `file` field, or `no_worker`; 503 model still
loading, failed to load, or too many requests in flight (`Retry-After`). The `Server-Timing` header gives the server's
time per stage (save, decode, ipc, queue, sample, model, total) in ms; `X-Frame-Indices` the frames of the
normalised clip the model was shown.
"""


def _to_clip_rule() -> str:
    """video.to_clip's own statement of the rule, quoted: the API docs cannot drift from the code."""
    from ..data.video import to_clip

    doc = (to_clip.__doc__ or "").strip()
    return "\n".join("> " + line.strip() for line in doc.splitlines() if line.strip())


COMMON_RESPONSES = {  # every route but /health and the page (guard.RequestGuard, the app's handlers)
    401: {"model": ErrorBody, "description": "API_KEY is set and the request has no valid key"},
    422: {"model": ErrorBody, "description": "a parameter or form field out of range or of the wrong type"},
    500: {"model": ErrorBody, "description": "a server fault; the detail is in the server's log under request_id"},
}
ERROR_RESPONSES = {  # the upload routes
    400: {"model": ErrorBody, "description": "malformed multipart body (no boundary, too many fields or parts)"},
    403: {"model": ErrorBody, "description": "a write from another site (Origin / Sec-Fetch-Site), not in "
                                             "CORS_ORIGINS"},
    408: {"model": ErrorBody, "description": "the body stopped arriving for BODY_TIMEOUT_S"},
    413: {"model": ErrorBody, "description": "upload larger than MAX_UPLOAD_MB"},
    415: {"model": ErrorBody, "description": "not a video (unrecognised bytes, still image, no video stream)"},
    422: {"model": ErrorBody, "description": "empty, damaged, too long, frames too large, bad form field, no "
                                             "`file` field, or (skeleton runs) `no_worker`: too few frames show a "
                                             "worker"},
    503: {"model": ErrorBody, "description": "model not ready, too many uploads / jobs in flight (Retry-After), or "
                                             "(skeleton runs) `pose_unavailable`: the pose estimator is missing"},
}

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
        timing["sample"] = call - model_s  # frame choice + JPEG round trip + image conversion (predict_clip)
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


# --------------------------------------------------------------------------------------------------- timeline
def _probe_timeline(path: Path, cfg: ServeConfig, frames: str) -> None:
    """In a decoder process: /timeline's upload recognised (a video, or a keypoint file for skeleton runs)."""
    probe_input(path, cfg, frames, route="/timeline")


def get_jobs(request: Request) -> TimelineJobs:
    return request.app.state.timeline


def _sse(event: str, data) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


SSE_PING_S = 10.0  # a comment line this often keeps proxies from closing a quiet stream (s)


async def job_events(job, owner: bool):
    """Server-sent events of a job: ``job`` (its status, first), ``window`` per answered window (with progress),
    then ``done`` (status with the result), ``error`` or ``cancelled``. ``owner``: this stream started the job, and
    its client's disconnect cancels it."""
    sent = 0
    last = time.monotonic()
    try:
        yield _sse("job", job.status())
        while True:
            job.touch()
            final = not job.active  # read before the windows: every window of a finished job is sent first
            while sent < len(job.windows):
                sent += 1
                yield _sse("window", {"window": job.windows[sent - 1], "progress": job.progress()})
                last = time.monotonic()
            if final:
                if job.state == "done":
                    yield _sse("done", job.status())
                else:
                    yield _sse("error" if job.state == "failed" else "cancelled", job.error)
                return
            if time.monotonic() - last > SSE_PING_S:
                yield b": ping\n\n"
                last = time.monotonic()
            await asyncio.sleep(0.2)
    finally:
        if owner and job.active:
            job.cancel("the client closed the event stream")
            log.info("timeline %s: client disconnected, cancelled", job.id)


TIMELINE_DESCRIPTION = """A whole recording (up to `MAX_TIMELINE_SECONDS`) → its operation timeline: sliding 5-s
windows (every `stride` s, default `TIMELINE_STRIDE_S`), each answered like `/predict`, merged into segments
(`{start_s, end_s, operation, confidence}`: per-second votes of the overlapping windows smoothed by the grammar HMM),
per-box cycle times and the operation expected next. The job runs in the background: the answer is `202` with
`job_id` and `status_url` (poll `GET /timeline/{job_id}`; `?since=N` adds the windows from N on) — or, with
`Accept: text/event-stream`, this response streams the job's events (`job`, `window`..., then `done`/`error`/
`cancelled`) and closing it cancels the job. `DELETE /timeline/{job_id}` cancels; `GET /timeline/{job_id}/plot.png`
draws the finished timeline."""


@router.post("/timeline", status_code=202, summary="Start the operation timeline of a long recording",
             description=TIMELINE_DESCRIPTION,
             responses={**ERROR_RESPONSES, 202: {
                 "description": "the job's status (JSON), or with `Accept: text/event-stream` its events",
                 "content": {"application/json": {"schema": {"type": "object"}}, **SSE_RESPONSE["content"]}}},
             form_limits={"max_files": 1, "max_fields": 4, "max_part_size": 4096})
async def timeline(
    request: Request,
    file: UploadFile = File(..., description="the recording (any container/codec libav reads)"),
    stride: float = Form(None, ge=0.04, le=5, allow_inf_nan=False,
                                description="seconds between window starts (0.04-5); default TIMELINE_STRIDE_S"),
    model: ModelState = Depends(get_model),
    cfg: ServeConfig = Depends(get_settings),
    jobs: TimelineJobs = Depends(get_jobs),
):
    # a free job slot (MAX_TIMELINE_JOBS, counting uploads in flight) was checked by guard.RequestGuard before the
    # body was read; jobs.submit checks again once the upload is here
    streamed = "text/event-stream" in request.headers.get("accept", "")
    name = sanitize_clip_id(None, file.filename)
    try:
        path = await anyio.to_thread.run_sync(save_upload, file.file, cfg.upload_dir, cfg.max_timeline_upload_bytes)
    finally:
        await file.close()
    try:  # recognised (415/422) now, in a decoder process, so a bad upload gets its HTTP error, not a failed job
        await anyio.to_thread.run_sync(model.decoders.run, _probe_timeline, path, cfg, model.frames)
        job = jobs.submit(path, name, cfg.timeline_stride_s if stride is None else stride, streamed)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    log.info("timeline %s [%s]: %s (%.1f MB) submitted%s", job.id, REQUEST_ID.get(), name,
             path.stat().st_size / 1e6 if path.exists() else 0,
             " (streamed)" if streamed else "")
    if streamed:
        return StreamingResponse(job_events(job, owner=True), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Job-Id": job.id})
    return JSONResponse(job.status(), status_code=202, headers={"Location": f"/timeline/{job.id}"})


@router.get("/timeline/{job_id}", summary="A timeline job's state, progress, and its result when done",
            responses={404: {"model": ErrorBody, "description": "unknown or expired job"}})
async def timeline_status(job_id: str, since: int | None = None, jobs: TimelineJobs = Depends(get_jobs)):
    return jobs.get(job_id).status(since=None if since is None else max(0, since))


@router.get("/timeline/{job_id}/events", summary="A timeline job's server-sent events (watching does not own it)",
            response_class=StreamingResponse,
            responses={200: SSE_RESPONSE, 404: {"model": ErrorBody, "description": "unknown or expired job"}})
async def timeline_events(job_id: str, jobs: TimelineJobs = Depends(get_jobs)):
    job = jobs.get(job_id)
    return StreamingResponse(job_events(job, owner=False), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


@router.delete("/timeline/{job_id}", summary="Cancel a timeline job",
               responses={404: {"model": ErrorBody, "description": "unknown or expired job"}})
async def timeline_cancel(job_id: str, jobs: TimelineJobs = Depends(get_jobs)):
    job = jobs.get(job_id)
    job.cancel("cancelled by DELETE")
    for _ in range(100):  # the job thread stops between batches; wait briefly so the answer shows the final state
        if not job.active:
            break
        await asyncio.sleep(0.1)
    return job.status()


@router.get("/timeline/{job_id}/plot.png", summary="The finished timeline as a Gantt chart (PNG)",
            response_class=Response, responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}})
async def timeline_plot(job_id: str, jobs: TimelineJobs = Depends(get_jobs)):
    job = jobs.get(job_id)
    if job.state != "done":
        raise UploadError(409, "not_done", f"timeline job {job_id} is {job.state}; the chart exists once it is done")
    from ..timeline.plot import plot_timeline

    png = await anyio.to_thread.run_sync(plot_timeline, job.result, None)
    return Response(png, media_type="image/png")


@open_router.get("/", include_in_schema=False)
async def page(cfg: ServeConfig = Depends(get_settings)):
    """The web page: upload a clip or a recording, see the answer, the frames, the timeline (no CDN, no build)."""
    from .page import page_html

    return HTMLResponse(page_html(cfg))


@open_router.get("/static/page.js", include_in_schema=False)
async def page_script():
    """The page's script (a file: the page's Content-Security-Policy allows no inline script)."""
    from .page import page_js

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
        description=API_DESCRIPTION.replace("{to_clip_rule}", _to_clip_rule()),
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
    return app
