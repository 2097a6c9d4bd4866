"""Timeline jobs behind ``POST /timeline``: a long recording analysed in the background, watched, cancelled.

A job's way: the upload is saved (``save_upload``, its own size cap) → a job thread leases a stream process of the
server's decoder pool (``decoders.DecoderPool.stream``: up to ``MAX_TIMELINE_JOBS`` of them, started on the first job
and kept) that probes the file (415/422 as for /predict, ``MAX_TIMELINE_SECONDS``) and decodes it one window at a time
(``timeline.windows.iter_windows`` over ``video.iter_video``); each 125-frame window comes back through one of the
process's two shared-memory blocks (it waits for a free one, so at most two windows are in flight; a skeleton window
holds its block as a token and travels as its keypoints, drawn in the server where the sampler looks) → the job thread
answers ``TIMELINE_BATCH_WINDOWS`` windows at a time with the shared Predictor (thread-safe; a /predict request waits
for at most one batch) → ``timeline.analyse`` merges them. Memory per job: two slots + one batch of windows, whatever
the video's length. The process has /predict's limits (address-space cap, per-window timeout) and the same mapping of
its failures to errors; its crash is the job's 422, never the server's.

A job is cancelled by ``DELETE /timeline/{id}``, by the disconnect of the client that streams it (``POST`` with
``Accept: text/event-stream``), or when nobody has asked about it for ``TIMELINE_ABANDON_S`` (a polling client that
went away). Finished jobs are kept ``TIMELINE_KEEP_S`` for their result.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from ..data.pose_estimate import KEYPOINT_HZ, PoseUnavailableError, estimate_recording
from ..data.skeleton import SkeletonClip
from ..data.video import iter_video
from ..io_utils import one_line
from ..schema import CLIP_FRAMES, FPS
from ..timeline import TimelineCancelled
from ..timeline.windows import (
    Window,
    expected_windows,
    iter_windows,
    stride_ticks,
    track_windows,
    worker_share_per_second,
)
from .decoders import START_S, Cancelled, DecoderPool, WorkerIO
from .settings import ServeConfig
from .uploads import UploadError, probe_input

log = logging.getLogger("openpack_vlm.serving")

# ------------------------------------------------------------------------------------------------ decoder process
def _stream_windows(path: str, stride: int, cfg: ServeConfig, frames: str = "rgb", render: dict | None = None, *,
                    io: WorkerIO) -> None:
    """In a decoder process of the pool: probe, then decode window by window into the process's two shared blocks
    (waiting for a free one; None = the job stopped). Skeleton runs (``frames="pose"``): the recording's keypoints
    first (progress messages per chunk), the seconds' worker shares, then the skeleton windows with their motion.
    Failures are raised: the pool maps them to the upload's error (``decoders._failure``)."""

    max_seconds, pose_cfg = cfg.max_timeline_seconds, cfg.pose_config()
    info, track, truth = probe_input(Path(path), cfg, frames, route="/timeline")
    total = expected_windows(int(round(info.duration_s * FPS)), stride) if info.duration_s else None
    io.emit("info", info.codec, info.width, info.height, info.duration_s, total)
    limit = int(round(max_seconds * FPS))
    if frames == "pose":
        if track is None:  # a video: its keypoints first (an uploaded keypoint file brings its own)
            try:
                track = estimate_recording(path, pose_cfg, size=(info.width, info.height),
                                           on_chunk=lambda s: io.emit("pose_progress", s))
            except PoseUnavailableError as e:
                raise UploadError(503, "pose_unavailable", one_line(e)) from None
            if len(track.kpts) / KEYPOINT_HZ > max_seconds + 1 / KEYPOINT_HZ:
                raise UploadError(422, "too_long", f"video is longer than MAX_TIMELINE_SECONDS={max_seconds:g} s")
        io.emit("pose", worker_share_per_second(track).tolist(), track.summary() | track.stats, truth)
        wins = track_windows(track, stride, render)
    else:
        wins = iter_windows(iter_video(path), stride)
    for win in wins:
        if win.start_tick + CLIP_FRAMES - win.padded > limit + 1:
            raise UploadError(422, "too_long", f"video is longer than MAX_TIMELINE_SECONDS={max_seconds:g} s")
        block = io.take_block()  # also for a skeleton window: the two blocks bound the windows in flight
        if block is None:  # the job was cancelled
            return
        sketch = win.frames if isinstance(win.frames, SkeletonClip) else None  # sent as keypoints, drawn where sampled
        if sketch is None:
            io.frames_in(block)[...] = win.frames
        io.emit("window", win.index, win.start_tick, win.padded, block, win.motion, sketch)


class WindowStream:
    """The windows of one upload, decoded by a stream process of the server's decoder pool (see the module
    docstring)."""

    def __init__(self, pool: DecoderPool, path: Path, cfg: ServeConfig, stride: int, stop, frames: str = "rgb",
                 render: dict | None = None):
        self.cfg = cfg
        self.info: tuple | None = None
        self.pose: dict | None = None  # skeleton runs: the track's summary, per-second worker shares, progress
        self.stream = self._cancellable(pool.stream, _stream_windows, (str(path), stride, cfg, frames, render), stop,
                                        str(path))

    @staticmethod
    def _cancellable(fn, *args):
        try:
            return fn(*args)
        except Cancelled:
            raise TimelineCancelled("timeline cancelled") from None

    def _next(self) -> tuple | None:
        """The decoder's next message (None: it is done); a window slower than DECODE_TIMEOUT_S fails the job (the
        probe, and a new process's imports, get START_S more on the first message)."""
        return self._cancellable(self.stream.next, self.cfg.decode_timeout_s + (START_S if self.info is None else 0.0))

    def start(self) -> tuple:
        """Wait for the probe: (codec, width, height, stated duration s or None, expected windows or None)."""
        msg = self._next()
        if msg is None or msg[0] != "info":
            raise UploadError(422, "undecodable", "video could not be decoded (no stream information)")
        self.info = msg[1:]
        return self.info

    def windows(self):
        while True:
            msg = self._next()
            if msg is None:
                return
            if msg[0] == "pose_progress":
                self.pose = {**(self.pose or {}), "seconds_done": round(msg[1], 2)}
                continue
            if msg[0] == "pose":
                self.pose = {**(self.pose or {}), "worker_share": msg[1], "summary": msg[2], "truth": msg[3]}
                continue
            _, index, start_tick, padded, block, motion, sketch = msg
            frames = self.stream.frames(block) if sketch is None else sketch
            self.stream.release(block)
            yield Window(index, start_tick, frames, padded, motion=motion)

    def close(self) -> None:
        self.stream.close()


# ------------------------------------------------------------------------------------------------------- jobs
class TimelineJob:
    """One timeline analysis: state, progress, per-window answers so far, the result or the error."""

    def __init__(self, filename: str, streamed: bool):
        self.id = uuid.uuid4().hex[:16]
        self.filename = filename
        self.state = "queued"  # queued → running → done | failed | cancelled
        self.created = time.time()
        self.started: float | None = None
        self.finished: float | None = None
        self.windows: list[dict] = []
        self.total: int | None = None
        self.video: dict | None = None
        self.result: dict | None = None
        self.error: dict | None = None
        self.streamed = streamed  # a client holds the event stream open: its disconnect cancels the job
        self.last_seen = time.monotonic()
        self.cancel_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.stream: WindowStream | None = None

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")

    def touch(self) -> None:
        self.last_seen = time.monotonic()

    def cancel(self, why: str = "cancelled by the client") -> None:
        if self.active:
            self.cancel_event.set()
            self.error = self.error or {"error": "cancelled", "detail": why}

    def progress(self) -> dict:
        done = len(self.windows)
        last = self.windows[-1]["end_s"] if self.windows else 0.0
        out = {"windows_done": done, "windows_total": self.total, "seconds_done": last,
               "duration_s": (self.video or {}).get("duration_s"),
               "fraction": round(min(1.0, done / self.total), 4) if self.total else None}
        pose = None if self.stream is None else self.stream.pose
        if pose is not None:  # skeleton runs: keypoints are estimated over the recording before the first window
            out["pose_seconds_done"] = pose.get("seconds_done")
        return out

    def status(self, since: int | None = None) -> dict:
        out = {"job_id": self.id, "state": self.state, "file": self.filename, "progress": self.progress(),
               "video": self.video, "error": self.error,
               "status_url": f"/timeline/{self.id}", "events_url": f"/timeline/{self.id}/events",
               "plot_url": f"/timeline/{self.id}/plot.png" if self.state == "done" else None,
               "elapsed_s": round((self.finished or time.time()) - (self.started or self.created), 2)}
        if since is not None:
            out["windows"] = self.windows[since:]
        if self.state == "done":
            out["result"] = self.result
        return out


class TimelineJobs:
    """The server's timeline jobs: at most ``MAX_TIMELINE_JOBS`` active at once (more → 503), each in its thread."""

    def __init__(self, cfg: ServeConfig, model):
        self.cfg, self.model = cfg, model
        self.jobs: dict[str, TimelineJob] = {}
        self._lock = threading.Lock()
        self._closing = False

    def get(self, job_id: str) -> TimelineJob:
        self.reap()
        job = self.jobs.get(job_id)
        if job is None:
            raise UploadError(404, "no_such_job", f"no timeline job {job_id!r} (finished jobs are kept "
                              f"TIMELINE_KEEP_S={self.cfg.timeline_keep_s:g} s)")
        job.touch()
        return job

    def active(self) -> int:
        return sum(j.active for j in self.jobs.values())

    def submit(self, path: Path, filename: str, stride_s: float, streamed: bool) -> TimelineJob:
        try:
            stride = stride_ticks(stride_s)
        except (ValueError, OverflowError) as e:  # inf / nan reach here only from Python callers (the form refuses)
            raise UploadError(422, "bad_request", f"stride: {e}") from None
        self.reap()
        with self._lock:
            if self._closing:
                raise UploadError(503, "shutting_down", "the server is shutting down")
            if self.active() >= self.cfg.max_timeline_jobs:
                raise UploadError(503, "busy", f"{self.active()} timeline jobs running "
                                  f"(MAX_TIMELINE_JOBS={self.cfg.max_timeline_jobs})", {"Retry-After": "10"})
            job = TimelineJob(filename, streamed)
            self.jobs[job.id] = job
        job.thread = threading.Thread(target=self._run, args=(job, path, stride, stride_s), name=f"timeline-{job.id}",
                                      daemon=True)
        job.thread.start()
        return job

    def _stop(self, job: TimelineJob) -> bool:
        if not job.streamed and time.monotonic() - job.last_seen > self.cfg.timeline_abandon_s:
            job.cancel(f"nobody asked about the job for TIMELINE_ABANDON_S={self.cfg.timeline_abandon_s:g} s")
        return job.cancel_event.is_set()

    def _run(self, job: TimelineJob, path: Path, stride: int, stride_s: float) -> None:
        # deferred: a module-level import would shadow a local name or form a cycle
        from ..timeline import TimelineCancelled, TimelineConfig, TimelineError, analyse_windows

        stream = None
        job.started = time.time()
        job.state = "running"
        try:
            stop = lambda: self._stop(job)  # noqa: E731
            frames = getattr(self.model, "frames", "rgb")
            stream = WindowStream(self.model.decoders, path, self.cfg, stride, stop, frames,
                                  getattr(self.model, "render", None))
            codec, width, height, duration, total = stream.start()
            job.video = {"codec": codec, "width": width, "height": height, "duration_s": duration}
            job.total = total
            job.stream = stream
            tcfg = TimelineConfig(stride=stride_s, batch_windows=self.cfg.timeline_batch_windows,
                                  max_seconds=self.cfg.max_timeline_seconds, min_worker_share=self.cfg.min_worker_share)
            windows = stream.windows()
            if frames == "pose":  # the keypoints come first: their per-second worker shares mark "no worker"
                first = next(windows, None)
                windows = itertools.chain([] if first is None else [first], windows)
            share = None if stream.pose is None else np.asarray(stream.pose["worker_share"])
            truth = None if stream.pose is None else stream.pose["truth"]  # a labelled Zenodo CSV scores itself
            result = analyse_windows(self.model.predictor, windows, tcfg, source=job.filename, truth=truth,
                                     total_windows=total, cancelled=stop, worker_share=share,
                                     min_worker_share=self.cfg.min_worker_share,
                                     on_window=lambda rec, done, tot: job.windows.append(rec))
            if stream.pose is not None:
                result["pose"] = stream.pose["summary"]
            job.result = result
            job.total = result["n_windows"]
            job.state = "done"
            log.info("timeline %s (%s): %.1f s, %d windows, %d segments in %.1f s", job.id, job.filename,
                     result["duration_s"], result["n_windows"], len(result["segments"]), time.time() - job.started)
        except TimelineCancelled:
            job.state = "cancelled"
            log.info("timeline %s cancelled after %d windows: %s", job.id, len(job.windows),
                     (job.error or {}).get("detail"))
        except UploadError as e:
            job.error, job.state = {"error": e.error, "detail": e.detail, "status": e.status}, "failed"
            log.info("timeline %s failed: %s %s", job.id, e.error, e.detail)
        except TimelineError as e:
            job.error, job.state = {"error": "too_long", "detail": one_line(e), "status": 422}, "failed"
        except Exception as e:  # noqa: BLE001 - reported in the job, never kills the server
            log.exception("timeline %s: internal error", job.id)
            job.error, job.state = {"error": "internal", "detail": one_line(e, with_type=True), "status": 500}, "failed"
        finally:
            job.finished = time.time()
            if stream is not None:
                stream.close()
            path.unlink(missing_ok=True)

    def reap(self) -> None:
        """Forget finished jobs older than TIMELINE_KEEP_S."""
        now = time.time()
        with self._lock:
            for jid in [j.id for j in self.jobs.values()
                        if not j.active and j.finished and now - j.finished > self.cfg.timeline_keep_s]:
                del self.jobs[jid]

    def close(self, timeout: float = 15.0) -> None:
        with self._lock:
            self._closing = True
        for job in list(self.jobs.values()):
            job.cancel("the server is shutting down")
        for job in list(self.jobs.values()):
            if job.thread is not None:
                job.thread.join(timeout)
