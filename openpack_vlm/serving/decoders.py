"""Isolated decoding: uploads are decoded in separate processes, so no upload can take the server down.

A decoder that crashes (hostile or broken file), hangs past its timeout or runs out of its memory cap is killed and
replaced, and only its own request gets a 422; the decoded clip comes back through shared memory (no 42 MB pickle).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from ..io_utils import one_line
from ..schema import CLIP_FRAMES
from .settings import MIB, ServeConfig
from .uploads import DecodedClip, UploadError, decode_clip

log = logging.getLogger("openpack_vlm.serving")

CLIP_SHAPE = (CLIP_FRAMES, 336, 336, 3)  # what decode_upload hands the predictor
CLIP_BYTES = int(np.prod(CLIP_SHAPE))  # 42.3 MB per clip


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
    from ..data import video  # noqa: F401  (import cv2/decord/av now, not on the first upload)


def _worker_ping() -> int:
    return os.getpid()


_ATTACHED: dict = {}  # decoder process: shared-memory blocks by name, mapped once (re-mapping faults in 42 MB each time)


def _decode_into(path: str, cfg: ServeConfig, shm_name: str, frames: str = "rgb", render: dict | None = None
                 ) -> tuple[DecodedClip, float]:
    """In a decoder process: ``decode_clip`` (camera frames, or skeletons from estimated keypoints), the clip written
    into the slot's shared memory (no 42 MB pickle). Returns (the DecodedClip without its clip, seconds spent)."""
    from multiprocessing import shared_memory

    shm = _ATTACHED.get(shm_name)
    if shm is None:
        # attaching registers the name again with the resource tracker this spawned process shares with the server
        # (a set: no-op); the server unlinks the block when it closes the pool
        shm = _ATTACHED[shm_name] = shared_memory.SharedMemory(name=shm_name)
    t0 = time.perf_counter()
    out = decode_clip(Path(path), cfg, frames, render)
    seconds = time.perf_counter() - t0
    np.ndarray(CLIP_SHAPE, dtype=np.uint8, buffer=shm.buf)[...] = out.clip
    out.clip = None
    return out, seconds


class _Slot:
    """One decoder process and the shared-memory block its clips come back in."""

    def __init__(self, memory_mb: int):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import shared_memory

        self.memory_mb = memory_mb
        self.shm = shared_memory.SharedMemory(create=True, size=CLIP_BYTES)
        # spawn: a fresh interpreter (the server process has model threads; forking it is unsafe)
        self._factory = lambda: ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"),
                                                    initializer=worker_init, initargs=(memory_mb,))
        self.executor = self._factory()

    def restart(self) -> None:
        """Kill the decoder process (crashed, hung or out of memory) and start a new one."""
        procs = list(getattr(self.executor, "_processes", {}).values())
        for proc in procs:
            if proc.is_alive():
                proc.kill()
        self.executor.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            proc.join(10)
        self.executor = self._factory()
        try:  # wait for the new process here, so the next upload's DECODE_TIMEOUT_S is not spent on its imports
            self.executor.submit(_worker_ping).result(120)
        except Exception as exc:  # noqa: BLE001 - the next call sees the broken pool and restarts again
            log.error("decoder process restart failed: %s", one_line(exc))

    def close(self, timeout: float = 10.0) -> None:
        """Stop the decoder process: it gets ``timeout`` s to finish its current file, then it is killed, so a
        hung decode can never hold up the server's shutdown."""
        procs = list(getattr(self.executor, "_processes", {}).values())
        self.executor.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + timeout
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.warning("decoder process %s did not stop in %.0f s: killed", proc.pid, timeout)
                proc.kill()
                proc.join(5)
        self.shm.close()
        self.shm.unlink()


class DecoderPool:
    """Uploads are decoded in separate processes, so no upload can take the server down: a decoder that crashes
    (hostile or broken file), hangs past ``timeout_s`` or runs out of its ``memory_mb`` is killed and replaced, and
    only its own request gets a 422. ``workers`` slots = that many uploads decoded at once; callers block for a slot.
    """

    def __init__(self, workers: int = 2, timeout_s: float = 60.0, memory_mb: int = 4096):
        import queue

        self.workers, self.timeout_s, self.memory_mb = workers, timeout_s, memory_mb
        self._free: queue.Queue[_Slot] = queue.Queue()
        self._slots: list[_Slot] = []

    def start(self, timeout: float = 120.0) -> "DecoderPool":
        need = self.workers * CLIP_BYTES
        if os.path.isdir("/dev/shm"):  # Docker's default is 64 MB: writing past it kills the decoder with SIGBUS
            st = os.statvfs("/dev/shm")
            if st.f_bavail * st.f_frsize < need:
                raise RuntimeError(f"/dev/shm has {st.f_bavail * st.f_frsize / MIB:.0f} MB free, {self.workers} decoder "
                                   f"slots need {need / MIB:.0f} MB: give the container --shm-size=512m")
        try:
            for _ in range(self.workers):
                slot = _Slot(self.memory_mb)
                self._slots.append(slot)
                self._free.put(slot)
            for slot in self._slots:  # start the processes now (imports take ~2 s), not on the first upload
                slot.executor.submit(_worker_ping).result(timeout)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for slot in self._slots:
            slot.close()
        self._slots.clear()

    def run(self, fn, *args, slot: _Slot | None = None):
        """``fn(*args)`` in a decoder process (blocking). Crash / timeout / MemoryError → UploadError 422."""
        from concurrent.futures import TimeoutError as FutureTimeout
        from concurrent.futures.process import BrokenProcessPool

        own = slot is None
        slot = self._free.get() if own else slot
        try:
            future = slot.executor.submit(fn, *args)
            try:
                return future.result(self.timeout_s)
            except FutureTimeout:
                slot.restart()
                raise UploadError(422, "decode_timeout",
                                  f"decoding took longer than DECODE_TIMEOUT_S={self.timeout_s:g} s") from None
            except BrokenProcessPool:
                slot.restart()
                raise UploadError(422, "decoder_crashed",
                                  "the decoder process crashed on this upload (damaged or hostile file)") from None
            except MemoryError:
                slot.restart()
                raise UploadError(422, "decode_memory",
                                  f"decoding needs more than DECODE_MEMORY_MB={self.memory_mb} MB") from None
            except UploadError:
                raise
            except Exception as exc:  # any other decoder failure is the upload's: 422, never a 500
                raise UploadError(422, "undecodable",
                                  f"video could not be decoded ({type(exc).__name__}: {one_line(exc)})") from None
        finally:
            if own:
                self._free.put(slot)

    def warm(self, fn, *args) -> None:
        """``fn(*args)`` once in every decoder process (start-up work the first upload would otherwise wait for)."""
        for slot in list(self._slots):
            self.run(fn, *args, slot=slot)

    def decode(self, path: Path, cfg: ServeConfig, timing: dict | None = None, frames: str = "rgb",
               render: dict | None = None) -> DecodedClip:
        """``decode_clip`` in a decoder process; the (125, 336, 336, 3) clip comes back through shared memory.
        ``timing`` (optional) gets "decode" (in the decoder process; for skeletons "pose" of it is the estimator's)
        and "ipc" (slot wait, hand-over, copy) seconds."""
        t0 = time.perf_counter()
        slot = self._free.get()
        try:
            out, seconds = self.run(_decode_into, str(path), cfg, slot.shm.name, frames, render, slot=slot)
            out.clip = np.ndarray(CLIP_SHAPE, dtype=np.uint8, buffer=slot.shm.buf).copy()
        finally:
            self._free.put(slot)
        if timing is not None:
            timing["decode"] = seconds
            if out.pose:
                timing["pose"] = out.pose.get("pose_s", 0.0)
            timing["ipc"] = time.perf_counter() - t0 - seconds
        return out
