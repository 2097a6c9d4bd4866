"""Timeline jobs behind ``POST /timeline``: a long recording analysed in the background, watched, cancelled.

A job's way: the upload is saved (``save_upload``, its own size cap) → a job thread starts a decoder PROCESS that
probes the file (415/422 as for /predict, ``MAX_TIMELINE_SECONDS``) and decodes it one window at a time
(``timeline.windows.iter_windows`` over ``video.iter_video``); each 125-frame window comes back through one of two
shared-memory slots (the decoder waits for a free slot, so at most two windows are in flight) → the job thread
answers ``TIMELINE_BATCH_WINDOWS`` windows at a time with the shared Predictor (thread-safe; a /predict request waits
for at most one batch) → ``timeline.analyse`` merges them. Memory per job: two slots + one batch of windows, whatever
the video's length. The decoder process has /predict's limits (address-space cap, per-window timeout); its crash is
the job's 422, never the server's.

A job is cancelled by ``DELETE /timeline/{id}``, by the disconnect of the client that streams it (``POST`` with
``Accept: text/event-stream``), or when nobody has asked about it for ``TIMELINE_ABANDON_S`` (a polling client that
went away). Finished jobs are kept ``TIMELINE_KEEP_S`` for their result.
"""
from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from ..io_utils import one_line
from ..schema import CLIP_FRAMES, FPS
from .decoders import CLIP_BYTES, CLIP_SHAPE, worker_init
from .settings import ServeConfig
from .uploads import UploadError, probe_input

log = logging.getLogger("openpack_vlm.serving")

SLOTS = 2  # shared-memory windows per job: the decoder fills one while the model reads the other
POLL_S = 0.25  # how often a waiting job thread checks for cancellation (s)


# ------------------------------------------------------------------------------------------------ decoder process
def _stream_worker(path: str, stride: int, cfg: ServeConfig, shm_names: list[str], free_q, out_q,
                   frames: str = "rgb", render: dict | None = None) -> None:
    """In a decoder process: probe, then decode window by window into the shared slots (blocking on a free one).
    Skeleton runs (``frames="pose"``): the recording's keypoints first (progress messages per chunk), the seconds'
    worker shares, then the skeleton windows with their motion."""
    max_seconds, memory_mb, pose_cfg = cfg.max_timeline_seconds, cfg.decode_memory_mb, cfg.pose_config()
    worker_init(memory_mb)
    from multiprocessing import shared_memory

    from ..data.errors import FrameError, VideoDecodeError
    from ..data.video import iter_video
    from ..timeline.windows import expected_windows, iter_windows

    blocks = [shared_memory.SharedMemory(name=n) for n in shm_names]
    try:
        info, track, truth = probe_input(Path(path), cfg, frames, route="/timeline")
        total = expected_windows(int(round(info.duration_s * FPS)), stride) if info.duration_s else None
        out_q.put(("info", info.codec, info.width, info.height, info.duration_s, total))
        limit = int(round(max_seconds * FPS))
        if frames == "pose":
            from ..data.pose_estimate import KEYPOINT_HZ, PoseUnavailableError, estimate_recording
            from ..timeline.windows import track_windows, worker_share_per_second

            if track is None:  # a video: its keypoints first (an uploaded keypoint file brings its own)
                try:
                    track = estimate_recording(path, pose_cfg, size=(info.width, info.height),
                                               on_chunk=lambda s: out_q.put(("pose_progress", s)))
                except PoseUnavailableError as e:
                    raise UploadError(503, "pose_unavailable", one_line(e)) from None
                if len(track.kpts) / KEYPOINT_HZ > max_seconds + 1 / KEYPOINT_HZ:
                    raise UploadError(422, "too_long", f"video is longer than MAX_TIMELINE_SECONDS={max_seconds:g} s")
            out_q.put(("pose", worker_share_per_second(track).tolist(), track.summary() | track.stats, truth))
            wins = track_windows(track, stride, render)
        else:
            wins = iter_windows(iter_video(path), stride)
        for win in wins:
            if win.start_tick + CLIP_FRAMES - win.padded > limit + 1:
                raise UploadError(422, "too_long", f"video is longer than MAX_TIMELINE_SECONDS={max_seconds:g} s")
            slot = free_q.get()
            if slot is None:  # the job was cancelled
                return
            np.ndarray(CLIP_SHAPE, np.uint8, buffer=blocks[slot].buf)[...] = win.frames
            out_q.put(("window", win.index, win.start_tick, win.padded, slot, win.motion))
        out_q.put(("end",))
    except UploadError as e:
        out_q.put(("error", e.status, e.error, e.detail))
    except MemoryError:
        out_q.put(("error", 422, "decode_memory", f"decoding needs more than DECODE_MEMORY_MB={memory_mb} MB"))
    except FrameError as e:
        out_q.put(("error", 422, "too_short", one_line(e)))
    except (VideoDecodeError, Exception) as e:  # noqa: BLE001 - any decoder failure is the upload's 422
        why = one_line(e).replace(str(path), "upload").replace(Path(path).name, "upload")
        out_q.put(("error", 422, "undecodable", f"video could not be decoded: {why}"))
    finally:
        for b in blocks:
            b.close()


class WindowStream:
    """The windows of one upload, decoded in a separate process (see the module docstring)."""

    def __init__(self, path: Path, cfg: ServeConfig, stride: int, frames: str = "rgb", render: dict | None = None):
        import multiprocessing as mp
        from multiprocessing import shared_memory

        self.cfg = cfg
        ctx = mp.get_context("spawn")
        self.blocks = [shared_memory.SharedMemory(create=True, size=CLIP_BYTES) for _ in range(SLOTS)]
        self.free_q, self.out_q = ctx.Queue(), ctx.Queue()
        for i in range(SLOTS):
            self.free_q.put(i)
        self.proc = ctx.Process(target=_stream_worker, name="timeline-decoder", daemon=True,
                                args=(str(path), stride, cfg, [b.name for b in self.blocks], self.free_q,
                                      self.out_q, frames, render))
        self.proc.start()
        self.info: tuple | None = None
        self.pose: dict | None = None  # skeleton runs: the track's summary, per-second worker shares, progress

    def _next(self, stop) -> tuple:
        """The decoder's next message; cancellation, a dead decoder or a window slower than DECODE_TIMEOUT_S end
        the wait (imports and the probe get 120 s more on the first message)."""
        from ..timeline import TimelineCancelled

        deadline = time.monotonic() + self.cfg.decode_timeout_s + (120.0 if self.info is None else 0.0)
        while True:
            try:
                return self.out_q.get(timeout=POLL_S)
            except queue.Empty:
                pass
            if stop():
                raise TimelineCancelled("timeline cancelled")
            if not self.proc.is_alive():
                try:
                    return self.out_q.get(timeout=1.0)  # a message sent just before exiting
                except queue.Empty:
                    raise UploadError(422, "decoder_crashed", "the decoder process crashed on this upload "
                                      f"(exit code {self.proc.exitcode}; damaged or hostile file)") from None
            if time.monotonic() > deadline:
                raise UploadError(422, "decode_timeout",
                                  f"decoding a window took longer than DECODE_TIMEOUT_S={self.cfg.decode_timeout_s:g} s")

    def start(self, stop) -> tuple:
        """Wait for the probe: (codec, width, height, stated duration s or None, expected windows or None)."""
        msg = self._next(stop)
        if msg[0] == "error":
            raise UploadError(*msg[1:])
        self.info = msg[1:]
        return self.info

    def windows(self, stop):
        from ..timeline.windows import Window

        while True:
            msg = self._next(stop)
            if msg[0] == "end":
                return
            if msg[0] == "error":
                raise UploadError(*msg[1:])
            if msg[0] == "pose_progress":
                self.pose = {**(self.pose or {}), "seconds_done": round(msg[1], 2)}
                continue
            if msg[0] == "pose":
                self.pose = {**(self.pose or {}), "worker_share": msg[1], "summary": msg[2], "truth": msg[3]}
                continue
            _, index, start_tick, padded, slot, motion = msg
            frames = np.ndarray(CLIP_SHAPE, np.uint8, buffer=self.blocks[slot].buf).copy()
            self.free_q.put(slot)
            yield Window(index, start_tick, frames, padded, motion=motion)

    def close(self) -> None:
        self.free_q.put(None)  # a decoder waiting for a slot returns
        self.proc.join(2.0)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5.0)
        for q in (self.free_q, self.out_q):
            q.cancel_join_thread()
            q.close()
        for b in self.blocks:
            b.close()
            b.unlink()


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
        from ..timeline.windows import stride_ticks

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
        from ..timeline import TimelineCancelled, TimelineConfig, TimelineError, analyse_windows

        stream = None
        job.started = time.time()
        job.state = "running"
        try:
            stop = lambda: self._stop(job)  # noqa: E731
            frames = getattr(self.model, "frames", "rgb")
            stream = WindowStream(path, self.cfg, stride, frames, getattr(self.model, "render", None))
            codec, width, height, duration, total = stream.start(stop)
            job.video = {"codec": codec, "width": width, "height": height, "duration_s": duration}
            job.total = total
            job.stream = stream
            tcfg = TimelineConfig(stride=stride_s, batch_windows=self.cfg.timeline_batch_windows,
                                  max_seconds=self.cfg.max_timeline_seconds, min_worker_share=self.cfg.min_worker_share)
            windows = stream.windows(stop)
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
