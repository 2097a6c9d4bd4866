"""Isolated decoding: every upload — a /predict clip, a /timeline recording — is decoded in one of the server's decoder
processes, so no upload can take the server down.

One pool, two kinds of lease: ``DECODE_WORKERS`` processes for /predict (and /timeline's probe), each answering one
upload at a time, started with the server; and up to ``MAX_TIMELINE_JOBS`` processes a timeline job holds while it
streams its windows, started on the first job and kept. A process that crashes (hostile or broken file), hangs past
its timeout or runs out of its memory cap is killed and replaced, and only its own request gets a 422 — one mapping of
decoder failures to HTTP errors (``_failure``) for both routes. Frames come back through shared memory (no 42 MB
pickle): one block per /predict process, two per streaming process (it fills one while the model reads the other).
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from pathlib import Path

import numpy as np

from ..data.errors import FrameError
from ..io_utils import one_line
from ..schema import CLIP_FRAMES
from .settings import MIB
from .uploads import DecodedClip, UploadError, decode_clip

log = logging.getLogger("openpack_vlm.serving")

CLIP_SHAPE = (CLIP_FRAMES, 336, 336, 3)  # what decode_upload hands the predictor
CLIP_BYTES = int(np.prod(CLIP_SHAPE))  # 42.3 MB per clip
STREAM_BLOCKS = 2  # shared-memory windows of a streaming process: it fills one while the model reads the other
POLL_S = 0.25  # how often a waiting caller checks its process is alive and whether it was cancelled (s)
START_S = 120.0  # a new process's imports and first reply (s)


class Cancelled(Exception):
    """The caller's ``stop()`` said stop while it waited for its decoder."""


def worker_init(memory_mb: int) -> None:
    """Decoder process setup: capped address space (a decompression bomb gets MemoryError, not the OOM killer), one
    thread per library, and no reaction to the server's Ctrl-C (the server shuts its workers down itself)."""
    import resource
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    if memory_mb > 0:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = memory_mb * MIB
        resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    from ..data import video  # noqa: F401  (deferred on purpose: the codecs load in each decoder process now)


# ------------------------------------------------------------------------------------------- in the decoder process
class WorkerIO:
    """What a task running in a decoder process gets besides its arguments: the process's shared-memory blocks, a way
    to send messages before its result (a stream's windows), and the free-block queue (None = the caller stopped)."""

    def __init__(self, blocks: list, out, free):
        self.blocks, self._out, self._free = blocks, out, free

    def emit(self, *message) -> None:
        self._out.put(("message", message))

    def take_block(self) -> int | None:
        return self._free.get()

    def frames_in(self, block: int) -> np.ndarray:
        return np.ndarray(CLIP_SHAPE, np.uint8, buffer=self.blocks[block].buf)


def _describe(exc: BaseException) -> tuple:
    """A task's exception as it crosses back: an UploadError intact, anything else by kind and one line."""

    if isinstance(exc, UploadError):
        return ("upload", exc)
    if isinstance(exc, MemoryError):
        return ("memory",)
    if isinstance(exc, FrameError):
        return ("frames", one_line(exc))
    return ("other", type(exc).__name__, one_line(exc))


def _worker_main(tasks, out, free, shm_names: list[str], memory_mb: int) -> None:
    """A decoder process: run tasks one at a time until told to stop (None); each ends with ("done", result) or
    ("failed", description)."""
    worker_init(memory_mb)
    from multiprocessing import shared_memory

    # attaching registers the names again with the resource tracker this spawned process shares with the server (a
    # set: no-op); the server unlinks the blocks when it closes the pool
    blocks = [shared_memory.SharedMemory(name=n) for n in shm_names]
    io = WorkerIO(blocks, out, free)
    try:
        while True:
            task = tasks.get()
            if task is None:
                return
            fn, args, wants_io = task
            try:
                out.put(("done", fn(*args, io=io) if wants_io else fn(*args)))
            except BaseException as exc:  # noqa: BLE001 - every failure is the upload's, reported to the caller
                out.put(("failed", _describe(exc)))
    finally:
        for b in blocks:
            b.close()


def _decode_into(path: str, cfg, frames: str = "rgb", render: dict | None = None, *, io: WorkerIO
                 ) -> tuple[DecodedClip, float]:
    """``decode_clip`` (camera frames, or skeletons from estimated keypoints). Camera frames are written into the
    process's shared memory and come back as a DecodedClip without its clip; a skeleton clip travels whole, as its
    keypoints (~20 KB, drawn in the server where sampled, instead of 42 MB of frames). Returns (it, seconds spent)."""
    t0 = time.perf_counter()
    got = decode_clip(Path(path), cfg, frames, render)
    seconds = time.perf_counter() - t0
    if isinstance(got.clip, np.ndarray):
        io.frames_in(0)[...] = got.clip
        got.clip = None
    return got, seconds


def _ping() -> int:
    return os.getpid()


# ------------------------------------------------------------------------------------------------- in the server
def _failure(description: tuple, timeout_s: float, memory_mb: int, path: str | None = None) -> UploadError:
    """The one mapping of a decoder failure to the upload's HTTP error (both routes)."""
    kind = description[0]
    if kind == "upload":
        return description[1]
    if kind == "memory":
        return UploadError(422, "decode_memory", f"decoding needs more than DECODE_MEMORY_MB={memory_mb} MB")
    if kind == "frames":
        return UploadError(422, "too_short", description[1])
    if kind == "dead":
        return UploadError(422, "decoder_crashed", "the decoder process crashed on this upload "
                           f"(exit code {description[1]}; damaged or hostile file)")
    if kind == "timeout":
        return UploadError(422, "decode_timeout", f"decoding took longer than DECODE_TIMEOUT_S={timeout_s:g} s")
    why = description[2]
    if path:  # never the server's temp path in an answer
        why = why.replace(str(path), "upload").replace(Path(path).name, "upload")
    return UploadError(422, "undecodable", f"video could not be decoded ({description[1]}: {why})")


REPLACED_ON = ("dead", "timeout", "memory")  # failures after which a process is not trusted with the next upload


class _Worker:
    """One decoder process, spawned once and reused: a task queue in, a message queue out, a free-block queue (streams)
    and its shared-memory blocks."""

    def __init__(self, memory_mb: int, blocks: int):
        from multiprocessing import shared_memory

        self.memory_mb = memory_mb
        self.shm = [shared_memory.SharedMemory(create=True, size=CLIP_BYTES) for _ in range(blocks)]
        self.proc = None
        self._spawn()

    def _spawn(self) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # a fresh interpreter: the server process has model threads; forking is unsafe
        self.tasks, self.out, self.free = ctx.Queue(), ctx.Queue(), ctx.Queue()
        self.proc = ctx.Process(target=_worker_main, name="decoder", daemon=True,
                                args=(self.tasks, self.out, self.free, [b.name for b in self.shm], self.memory_mb))
        self.proc.start()

    def submit(self, fn, args: tuple, wants_io: bool = False) -> None:
        self.tasks.put((fn, args, wants_io))

    def next(self, timeout: float, stop=None) -> tuple:
        """The process's next message: ("done", result), ("failed", description), ("message", payload), or
        ("failed", ("dead", exit code)) when it died, ("failed", ("timeout",)) after ``timeout`` s. ``stop()`` is
        asked every POLL_S s (raises Cancelled)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.out.get(timeout=max(0.01, min(POLL_S, deadline - time.monotonic())))
            except queue.Empty:
                pass
            if stop is not None and stop():
                raise Cancelled()
            if not self.proc.is_alive():
                try:
                    return self.out.get(timeout=1.0)  # a message sent just before it exited
                except queue.Empty:
                    return ("failed", ("dead", self.proc.exitcode))
            if time.monotonic() > deadline:
                return ("failed", ("timeout",))

    def _stop_process(self, timeout: float) -> None:
        proc = self.proc
        if proc.is_alive():
            self.tasks.put(None)
            proc.join(timeout)
        if proc.is_alive():
            log.warning("decoder process %s did not stop in %.0f s: killed", proc.pid, timeout)
            proc.kill()
            proc.join(5)
        for q in (self.tasks, self.out, self.free):
            q.cancel_join_thread()
            q.close()

    def restart(self) -> None:
        """Kill the process (crashed, hung, out of memory, or left mid-task) and start a new one."""
        self.proc.kill()
        self._stop_process(5.0)
        self._spawn()
        self.submit(_ping, ())
        if self.next(START_S)[0] != "done":  # the next upload's DECODE_TIMEOUT_S is not spent on its imports
            log.error("decoder process restart failed")

    def failed(self, description: tuple, timeout_s: float, path: str | None = None) -> UploadError:
        """A task's failure as the upload's error; a crashed, hung or out-of-memory process is replaced first."""
        if description[0] in REPLACED_ON:
            self.restart()
        return _failure(description, timeout_s, self.memory_mb, path)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the process: it gets ``timeout`` s to finish its current file, then it is killed, so a hung decode
        can never hold up the server's shutdown."""
        self._stop_process(timeout)
        for b in self.shm:
            b.close()
            b.unlink()


class DecoderPool:
    """The server's decoder processes (see the module docstring). ``workers`` processes for single uploads (callers
    block for a free one); ``stream_workers`` for timeline jobs (``stream``), started when first needed."""

    def __init__(self, workers: int = 2, timeout_s: float = 60.0, memory_mb: int = 4096, stream_workers: int = 0):
        self.workers, self.timeout_s, self.memory_mb = workers, timeout_s, memory_mb
        self.stream_workers = stream_workers
        self._free: queue.Queue[_Worker] = queue.Queue()
        self._idle_streams: list[_Worker] = []
        self._stream_leases = threading.BoundedSemaphore(max(1, stream_workers))
        self._all: list[_Worker] = []  # every process, upload and stream
        self._uploads: list[_Worker] = []
        self._lock = threading.Lock()
        self._warm: list[tuple] = []  # start-up work every process runs (a stream process too, when it starts)

    def start(self, timeout: float = START_S) -> "DecoderPool":
        need = (self.workers + self.stream_workers * STREAM_BLOCKS) * CLIP_BYTES
        if os.path.isdir("/dev/shm"):  # Docker's default is 64 MB: writing past it kills the decoder with SIGBUS
            st = os.statvfs("/dev/shm")
            if st.f_bavail * st.f_frsize < need:
                raise RuntimeError(f"/dev/shm has {st.f_bavail * st.f_frsize / MIB:.0f} MB free, the decoder "
                                   f"processes need {need / MIB:.0f} MB: give the container --shm-size=512m")
        try:
            for _ in range(self.workers):
                w = _Worker(self.memory_mb, blocks=1)
                self._all.append(w)
                self._uploads.append(w)
                self._free.put(w)
            for w in list(self._all):  # the processes start now (imports take ~2 s), not on the first upload
                self._call(w, _ping, (), timeout)
        except BaseException:
            self.close()
            raise
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Stop every process; each gets ``timeout`` s to finish its current file, then it is killed."""
        with self._lock:
            workers, self._all = list(self._all), []
        for w in workers:
            w.close(timeout)

    def _call(self, worker: _Worker, fn, args: tuple, timeout: float | None = None, wants_io: bool = False,
              path: str | None = None):
        """``fn(*args)`` in ``worker``'s process; its failure → UploadError (crash, timeout and memory: the process
        is replaced first)."""
        worker.submit(fn, args, wants_io)
        kind, payload = worker.next(self.timeout_s if timeout is None else timeout)
        if kind == "done":
            return payload
        raise worker.failed(payload, self.timeout_s, path)

    def run(self, fn, *args):
        """``fn(*args)`` in a decoder process (blocking for a free one)."""
        worker = self._free.get()
        try:
            return self._call(worker, fn, args)
        finally:
            self._free.put(worker)

    def warm(self, fn, *args) -> None:
        """``fn(*args)`` once in every decoder process, now and in each stream process when it starts (start-up work
        the first upload would otherwise wait for)."""
        self._warm.append((fn, args))
        for worker in list(self._uploads) + list(self._idle_streams):  # at start-up: no upload holds one yet
            self._call(worker, fn, args, START_S)

    def decode(self, path: Path, cfg, timing: dict | None = None, frames: str = "rgb",
               render: dict | None = None) -> DecodedClip:
        """``decode_clip`` in a decoder process; the (125, 336, 336, 3) camera clip comes back through shared memory
        (a skeleton clip as its keypoints).
        ``timing`` (optional) gets "decode" (in the decoder process; for skeletons "pose" of it is the estimator's)
        and "ipc" (wait for a process, hand-over, copy) seconds."""
        t0 = time.perf_counter()
        worker = self._free.get()
        try:
            out, seconds = self._call(worker, _decode_into, (str(path), cfg, frames, render), wants_io=True,
                                      path=str(path))
            if out.clip is None:
                out.clip = np.ndarray(CLIP_SHAPE, dtype=np.uint8, buffer=worker.shm[0].buf).copy()
        finally:
            self._free.put(worker)
        if timing is not None:
            timing["decode"] = seconds
            if out.pose:
                timing["pose"] = out.pose.get("pose_s", 0.0)
            timing["ipc"] = time.perf_counter() - t0 - seconds
        return out

    def stream(self, fn, args: tuple, stop, path: str | None = None) -> "Stream":
        """A timeline job's lease: a stream process (waiting for one while ``stop()`` allows) running
        ``fn(*args, io=WorkerIO)``, whose messages the caller reads with ``Stream.next``."""
        while not self._stream_leases.acquire(timeout=POLL_S):
            if stop():
                raise Cancelled()
        try:
            with self._lock:
                worker = self._idle_streams.pop() if self._idle_streams else None
            if worker is None:
                worker = _Worker(self.memory_mb, blocks=STREAM_BLOCKS)
                with self._lock:
                    self._all.append(worker)
                for fn_warm, args_warm in [(_ping, ())] + self._warm:
                    self._call(worker, fn_warm, args_warm, START_S)
            for i in range(STREAM_BLOCKS):
                worker.free.put(i)
            worker.submit(fn, args, wants_io=True)
        except BaseException:
            self._stream_leases.release()
            raise
        return Stream(self, worker, stop, path)

    def _give_back(self, worker: _Worker, finished: bool) -> None:
        """A stream process back to the pool: idle again when its task ended, else stopped first (its task is told
        to stop; a process that does not end its task within 5 s is replaced)."""
        try:
            if not finished:
                worker.free.put(None)  # a task waiting for a free block returns
                deadline = time.monotonic() + 5.0
                while True:
                    kind, payload = worker.next(max(0.01, deadline - time.monotonic()))
                    if kind != "message":
                        break
                if kind == "failed" and payload[0] in REPLACED_ON:
                    worker.restart()
            while True:  # leftover free-block tokens of this stream
                try:
                    worker.free.get_nowait()
                except queue.Empty:
                    break
            with self._lock:
                if worker in self._all:
                    self._idle_streams.append(worker)
        finally:
            self._stream_leases.release()


class Stream:
    """A timeline job's decoder process while it streams: ``next()`` gives its messages, ``frames(block)`` a window
    it wrote, ``release(block)`` hands the block back; ``close()`` returns the process to the pool."""

    def __init__(self, pool: DecoderPool, worker: _Worker, stop, path: str | None):
        self.pool, self.worker, self.stop, self.path = pool, worker, stop, path
        self.finished = False

    def next(self, timeout: float) -> tuple | None:
        """The task's next message (a tuple it emitted), None when it finished; its failure → UploadError."""
        kind, payload = self.worker.next(timeout, self.stop)
        if kind == "message":
            return payload
        self.finished = True
        if kind == "done":
            return None
        raise self.worker.failed(payload, self.pool.timeout_s, self.path)

    def frames(self, block: int) -> np.ndarray:
        return np.ndarray(CLIP_SHAPE, np.uint8, buffer=self.worker.shm[block].buf).copy()

    def release(self, block: int) -> None:
        self.worker.free.put(block)

    def close(self) -> None:
        self.pool._give_back(self.worker, self.finished)
