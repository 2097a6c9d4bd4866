"""The timeline routes: ``POST /timeline`` (a whole recording → a background job), its status, server-sent events,
cancellation and Gantt chart. The jobs themselves live in ``timeline_jobs.py``."""
from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import anyio
from fastapi import APIRouter, Depends, File, Form, Request, Response, UploadFile
from fastapi.responses import JSONResponse, StreamingResponse

from ..timeline.plot import plot_timeline
from .guard import REQUEST_ID
from .openapi import COMMON_RESPONSES, ERROR_RESPONSES, SSE_RESPONSE
from .settings import ServeConfig
from .state import ModelState, get_jobs, get_model, get_settings
from .timeline_jobs import TimelineJobs
from .uploads import ErrorBody, UploadError, probe_input, sanitize_clip_id, save_upload

log = logging.getLogger("openpack_vlm.serving")

router = APIRouter(responses=COMMON_RESPONSES)


def _probe_timeline(path: Path, cfg: ServeConfig, frames: str) -> None:
    """In a decoder process: /timeline's upload recognised (a video, or a keypoint file for skeleton runs)."""
    probe_input(path, cfg, frames, route="/timeline")


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

    png = await anyio.to_thread.run_sync(plot_timeline, job.result, None)
    return Response(png, media_type="image/png")
