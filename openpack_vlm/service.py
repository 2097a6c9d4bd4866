"""The HTTP service behind ``serve.py``: settings from the environment, hardened upload handling, the FastAPI app.

One request's way: multipart ``file`` → streamed into a temp file under a size cap (413) → recognised by its bytes,
never by its name or declared type (``probe_upload``: 415 not a video, 422 empty / damaged / too long / too large
frames) → decoded to 25 fps, 336×336 (``frames.decode_video``) → normalised to the 125-frame clip
(``frames.to_clip``) → ``Predictor.predict_clip`` (same motion-adaptive sampler and prompt as training) →
``schema.Prediction``. The model is loaded once, in a background thread started by the lifespan handler (never at
import), so ``/health`` answers at once and ``/ready`` says 503 until the model is there.

Robustness: decoding runs in separate decoder processes (``DecoderPool``: capped memory, a timeout, replaced when
they crash; the clip comes back through shared memory), the model one call at a time behind a lock in a worker
thread, so the event loop (``/health``) never waits for either and no upload can take the server down; at most
``max_pending`` requests are in flight, more get 503. Every error is a JSON body ``{"error": code, "detail": one
line}``; temp files are removed on every path.
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from fastapi import FastAPI, File, Form, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from .schema import CLIP_FRAMES, CLIP_SECONDS, FPS, Prediction

log = logging.getLogger("openpack_vlm.service")

MIB = 1024 * 1024
MULTIPART_SLACK = 64 * 1024  # bytes of multipart framing + the clip_id field allowed on top of the file cap
COPY_CHUNK = MIB  # bytes per read when moving the upload to its temp file


# --------------------------------------------------------------------------------------------------- settings
@dataclass
class ServeConfig:
    """Service settings; each field is read from the environment variable named in its comment (``from_env``)."""

    model_id: str = "Qwen/Qwen2-VL-2B-Instruct"  # MODEL_ID: hub id, local dir, or "tiny" (offline random model)
    adapter_path: str | None = None  # ADAPTER_PATH: a training run's adapter/ dir (R/adapter); unset = base model
    quantization: str = "auto"  # QUANTIZATION: "4bit" | "none" | "auto" (4bit on a GPU, none on CPU)
    device: str = "auto"  # DEVICE: "auto" | "cuda" | "cpu" (torch device of the model)
    max_upload_mb: float = 64.0  # MAX_UPLOAD_MB: file cap; 5 s of 1080p H.264 is ~5-10 MB, so 64 leaves room
    max_clip_seconds: float = 30.0  # MAX_CLIP_SECONDS: longer uploads get 422 (decode time grows with length)
    max_frame_pixels: int = 3840 * 2160  # MAX_FRAME_PIXELS: bigger frames get 422 (a 4K frame is ~25 MB decoded)
    max_pending: int = 32  # MAX_PENDING: requests in flight at once; more get 503 (each holds a ~42 MB clip)
    decode_workers: int = 2  # DECODE_WORKERS: decoder processes = uploads decoded at once (one per core here)
    decode_timeout_s: float = 60.0  # DECODE_TIMEOUT_S: a decode running longer is killed → 422 (5 s clip: < 1 s)
    decode_memory_mb: int = 4096  # DECODE_MEMORY_MB: address-space cap of a decoder process (imports use ~1.4 GB)
    upload_dir: str | None = None  # UPLOAD_DIR: where upload temp files live; unset = the system temp dir
    free_text: bool = False  # FREE_TEXT: also let the model write its free answer, to report in the X-Output-Repair
    # header whether it fit the schema; off by default: the JSON never uses it and it costs up to 128 decode steps
    # (seconds per request on a GPU: docs/gpu/gpu_serve_check_h100*.json)
    host: str = "0.0.0.0"  # HOST: uvicorn bind address (0.0.0.0 inside a container)
    port: int = 8000  # PORT
    log_level: str = "info"  # LOG_LEVEL

    ENV = {
        "model_id": "MODEL_ID",
        "adapter_path": "ADAPTER_PATH",
        "quantization": "QUANTIZATION",
        "device": "DEVICE",
        "max_upload_mb": "MAX_UPLOAD_MB",
        "max_clip_seconds": "MAX_CLIP_SECONDS",
        "max_frame_pixels": "MAX_FRAME_PIXELS",
        "max_pending": "MAX_PENDING",
        "decode_workers": "DECODE_WORKERS",
        "decode_timeout_s": "DECODE_TIMEOUT_S",
        "decode_memory_mb": "DECODE_MEMORY_MB",
        "upload_dir": "UPLOAD_DIR",
        "free_text": "FREE_TEXT",
        "host": "HOST",
        "port": "PORT",
        "log_level": "LOG_LEVEL",
    }

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "ServeConfig":
        """Settings from ``env`` (default ``os.environ``); empty variables count as unset. Bad values → ValueError."""
        env = os.environ if env is None else env
        kwargs: dict[str, Any] = {}
        types = {f.name: f.type for f in fields(cls)}
        for name, var in cls.ENV.items():
            raw = env.get(var, "").strip()
            if not raw:
                continue
            kind = types[name]
            if kind == "bool":
                flag = {"1": True, "true": True, "yes": True, "on": True,
                        "0": False, "false": False, "no": False, "off": False}.get(raw.lower())
                if flag is None:
                    raise ValueError(f"{var} must be 1/0, true/false, yes/no or on/off, got {raw!r}")
                kwargs[name] = flag
                continue
            try:
                if kind == "int":
                    kwargs[name] = int(raw)
                elif kind == "float":
                    kwargs[name] = float(raw)
                else:
                    kwargs[name] = raw
            except ValueError:
                raise ValueError(f"{var} must be {'an integer' if kind == 'int' else 'a number'}, got {raw!r}") from None
        kwargs.update(overrides)
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.quantization not in ("auto", "4bit", "none"):
            raise ValueError(f"QUANTIZATION must be auto, 4bit or none, got {self.quantization!r}")
        for name in ("max_upload_mb", "max_clip_seconds", "max_frame_pixels", "max_pending", "decode_workers",
                     "decode_timeout_s", "decode_memory_mb"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{self.ENV[name]} must be > 0, got {getattr(self, name)!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"PORT must be in 1..65535, got {self.port}")
        if self.adapter_path and not Path(self.adapter_path).is_dir():
            raise ValueError(f"ADAPTER_PATH {self.adapter_path} is not a directory (expected a training run's adapter/)")
        if self.upload_dir and not Path(self.upload_dir).is_dir():
            raise ValueError(f"UPLOAD_DIR {self.upload_dir} is not a directory")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MIB)


# --------------------------------------------------------------------------------------------------- errors
class ErrorBody(BaseModel):
    """Body of every non-2xx answer."""

    error: str  # stable machine-readable code, e.g. "not_a_video"
    detail: str  # one line naming the problem


class UploadError(Exception):
    """A request the service refuses, with its HTTP status and a one-line reason."""

    def __init__(self, status: int, error: str, detail: str):
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail

    def __reduce__(self):  # crosses the decoder-process boundary intact
        return (UploadError, (self.status, self.error, self.detail))


def _error(status: int, error: str, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


# --------------------------------------------------------------------------------------------------- uploads
_CLIP_ID_BAD = re.compile(r"[^A-Za-z0-9_-]+")


def sanitize_clip_id(value: str | None, filename: str | None = None) -> str:
    """A safe clip id: the ``clip_id`` form field, else the upload's file name without extension.

    Anything but letters, digits, '_' and '-' becomes '_' (no dots: WebDataset keys split at dots; no path parts),
    at most 64 characters; ``"clip"`` when nothing usable is left.
    """
    raw = (value or "").strip()
    if not raw and filename:
        raw = Path(str(filename).replace("\\", "/")).name  # drop any client-side directories
        raw = raw.rsplit(".", 1)[0] if "." in raw.lstrip(".") else raw
    cid = _CLIP_ID_BAD.sub("_", raw).strip("_-")[:64].strip("_-")
    return cid or "clip"


def save_upload(src, dst_dir: str | None, max_bytes: int) -> Path:
    """Copy an upload's file object into a new temp file (removed again on any error); > ``max_bytes`` → 413."""
    fd, name = tempfile.mkstemp(prefix="openpack-upload-", suffix=".bin", dir=dst_dir)
    path = Path(name)
    try:
        total = 0
        with os.fdopen(fd, "wb") as out:
            while chunk := src.read(COPY_CHUNK):
                total += len(chunk)
                if total > max_bytes:
                    raise UploadError(413, "too_large", f"upload exceeds MAX_UPLOAD_MB={max_bytes / MIB:g} MB")
                out.write(chunk)
        return path
    except BaseException:
        path.unlink(missing_ok=True)
        raise


# Containers recognised from their first bytes, to tell a damaged video (422) from something that is no video (415).
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (4, b"ftyp", "MP4/QuickTime"),
    (4, b"moov", "QuickTime"),
    (4, b"mdat", "QuickTime"),
    (0, b"\x1a\x45\xdf\xa3", "Matroska/WebM"),
    (0, b"FLV", "FLV"),
    (0, b"OggS", "Ogg"),
    (0, b"\x00\x00\x01\xba", "MPEG-PS"),
    (0, b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", "ASF/WMV"),
)


def _sniff_container(head: bytes) -> str | None:
    for offset, magic, name in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "AVI"
    if len(head) >= 189 and head[0] == 0x47 and head[188] == 0x47:
        return "MPEG-TS"
    return None


@dataclass
class UploadInfo:
    container: str  # libav demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    codec: str
    width: int
    height: int
    duration_s: float | None  # from the container, when it says


def probe_upload(path: Path, max_clip_seconds: float, max_frame_pixels: int) -> UploadInfo:
    """Recognise a video by its bytes (libav probing, not the name): metadata checks before any frame is decoded.

    422 empty file / damaged container / frames too large / longer than ``max_clip_seconds``;
    415 no recognised container, no video stream, or a still image.
    """
    import av

    size = path.stat().st_size
    if size == 0:
        raise UploadError(422, "empty", "the upload is empty (0 bytes)")
    with open(path, "rb") as fh:
        head = fh.read(512)
    try:
        container = av.open(str(path), mode="r", metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError, ValueError, OSError) as exc:
        kind = _sniff_container(head)
        if kind:
            why = getattr(exc, "strerror", None) or _one_line(exc)  # strerror: without the temp file's path
            raise UploadError(422, "undecodable", f"{kind} file is damaged or truncated ({why})") from None
        raise UploadError(415, "not_a_video", f"not a video: no video container recognised in the {size} bytes") from None
    try:
        fmt = container.format.name
        if fmt == "image2" or fmt.endswith("_pipe"):
            raise UploadError(415, "not_a_video", f"not a video: a still image ({fmt.removesuffix('_pipe')})")
        if not container.streams.video:
            raise UploadError(415, "not_a_video", f"not a video: the {fmt} container has no video stream")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        width, height = int(ctx.width or 0), int(ctx.height or 0)
        if width <= 0 or height <= 0:
            raise UploadError(422, "undecodable", f"video stream ({ctx.name}) has no frame size: damaged or truncated")
        if width * height > max_frame_pixels:
            raise UploadError(422, "frame_too_large",
                              f"frames of {width}x{height} exceed MAX_FRAME_PIXELS={max_frame_pixels}")
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000  # AV_TIME_BASE µs
        if duration is not None and duration > max_clip_seconds + 0.5 / FPS:
            raise UploadError(422, "too_long", f"video is {duration:.1f} s long; MAX_CLIP_SECONDS={max_clip_seconds:g}")
        return UploadInfo(fmt, ctx.name, width, height, duration)
    finally:
        container.close()


def decode_upload(path: Path, cfg: ServeConfig) -> tuple[Any, UploadInfo, int]:
    """Probe, decode (25 fps, 336², letterboxed) and normalise to the 125-frame clip (``frames.to_clip``).

    Returns (clip (125,336,336,3) uint8, probe info, frames decoded). Only the first ``CLIP_SECONDS`` are decoded
    when the container states its duration (``to_clip`` keeps the first 5 s); otherwise up to ``max_clip_seconds``
    plus one frame, to tell a too-long upload from one exactly at the cap.
    """
    from .frames import FrameError, VideoDecodeError, decode_video, to_clip

    info = probe_upload(path, cfg.max_clip_seconds, cfg.max_frame_pixels)
    limit = CLIP_SECONDS if info.duration_s is not None else cfg.max_clip_seconds + 1.0 / FPS
    try:
        frames = decode_video(path, fps=FPS, size=336, max_seconds=limit)
    except VideoDecodeError as exc:
        why = _one_line(exc).replace(str(path), "upload").replace(path.name, "upload")  # no temp paths in answers
        raise UploadError(422, "undecodable", f"{info.codec} video could not be decoded: {why}") from None
    except (MemoryError, OverflowError, RuntimeError) as exc:
        raise UploadError(422, "undecodable", f"{info.codec} video could not be decoded: {_one_line(exc)}") from None
    if frames is None or len(frames) == 0:
        raise UploadError(422, "no_frames", f"no frame could be decoded from the {info.codec} stream")
    if info.duration_s is None and len(frames) > int(round(cfg.max_clip_seconds * FPS)):
        raise UploadError(422, "too_long", f"video is longer than MAX_CLIP_SECONDS={cfg.max_clip_seconds:g}")
    try:
        clip = to_clip(frames, CLIP_FRAMES)
    except FrameError as exc:
        raise UploadError(422, "too_short", _one_line(exc)) from None
    return clip, info, len(frames)


# --------------------------------------------------------------------------------------------------- decoder processes
CLIP_SHAPE = (CLIP_FRAMES, 336, 336, 3)  # what decode_upload hands the predictor
CLIP_BYTES = int(np.prod(CLIP_SHAPE))  # 42.3 MB per clip


def _worker_init(memory_mb: int) -> None:
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
    from . import frames  # noqa: F401  (import cv2/decord/av now, not on the first upload)


def _worker_ping() -> int:
    return os.getpid()


_ATTACHED: dict = {}  # decoder process: shared-memory blocks by name, mapped once (re-mapping faults in 42 MB each time)


def _decode_into(path: str, cfg: ServeConfig, shm_name: str) -> tuple[UploadInfo, int, float]:
    """In a decoder process: decode_upload, the clip written into the slot's shared memory (no 42 MB pickle).
    Returns (probe info, frames decoded, seconds spent in decode_upload)."""
    from multiprocessing import shared_memory

    shm = _ATTACHED.get(shm_name)
    if shm is None:
        # attaching registers the name again with the resource tracker this spawned process shares with the server
        # (a set: no-op); the server unlinks the block when it closes the pool
        shm = _ATTACHED[shm_name] = shared_memory.SharedMemory(name=shm_name)
    t0 = time.perf_counter()
    clip, info, n = decode_upload(Path(path), cfg)
    seconds = time.perf_counter() - t0
    np.ndarray(CLIP_SHAPE, dtype=np.uint8, buffer=shm.buf)[...] = clip
    return info, n, seconds


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
                                                    initializer=_worker_init, initargs=(memory_mb,))
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
            log.error("decoder process restart failed: %s", _one_line(exc))

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
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
                                  f"video could not be decoded ({type(exc).__name__}: {_one_line(exc)})") from None
        finally:
            if own:
                self._free.put(slot)

    def decode(self, path: Path, cfg: ServeConfig, timing: dict | None = None) -> tuple[np.ndarray, UploadInfo, int]:
        """``decode_upload`` in a decoder process; the (125, 336, 336, 3) clip comes back through shared memory.
        ``timing`` (optional) gets "decode" (in the decoder process) and "ipc" (slot wait, hand-over, copy) seconds."""
        t0 = time.perf_counter()
        slot = self._free.get()
        try:
            info, n, seconds = self.run(_decode_into, str(path), cfg, slot.shm.name, slot=slot)
            clip = np.ndarray(CLIP_SHAPE, dtype=np.uint8, buffer=slot.shm.buf).copy()
        finally:
            self._free.put(slot)
        if timing is not None:
            timing["decode"] = seconds
            timing["ipc"] = time.perf_counter() - t0 - seconds
        return clip, info, n


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
    """The shared Predictor (openpack_vlm.predict) for the configured base model (+ adapter)."""
    from .predict import PredictConfig, Predictor

    return Predictor.from_pretrained(cfg.model_id, adapter=cfg.adapter_path,
                                     quantization=resolve_quantization(cfg.quantization), device=cfg.device,
                                     config=PredictConfig(free_text=cfg.free_text))


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
            self.error = f"{type(exc).__name__}: {_one_line(exc)}"
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


# --------------------------------------------------------------------------------------------------- the app
API_DESCRIPTION = f"""
Operation understanding for 5-second clips of an OpenPack packaging worker, by a (QLoRA-tuned) Qwen2-VL.

**POST /predict** takes one video as multipart field `file` (optional form field `clip_id`; default: the file name
without extension, reduced to letters, digits, `_` and `-`). The video is recognised by its bytes, not by its name or
declared type: any container/codec libav decodes (MP4/H.264, AVI/MJPEG, WebM/VP9, MKV, ...), any frame size or
frame rate.

Normalisation (the same as training): frames are taken at {FPS} fps by their timestamps and resized to 336×336 (whole
frame, letterboxed); the clip is then made exactly {CLIP_FRAMES} frames ({CLIP_SECONDS:g} s) by `frames.to_clip`
(n = {CLIP_FRAMES}):

{{to_clip_rule}}

`temporal_segment` counts frames of this normalised clip (0–{CLIP_FRAMES - 1} at {FPS} fps), so frame *f* is at
*f*/{FPS} s of the clip. The motion-adaptive frame sampler and the prompt are the training ones.

Errors, always JSON `{{"error": code, "detail": message}}`: 413 file over `MAX_UPLOAD_MB`; 415 not a video
(unrecognised bytes, a still image, no video stream); 422 empty file, damaged/truncated video, no decodable frame,
shorter than the rule above allows, longer than `MAX_CLIP_SECONDS`, frames over `MAX_FRAME_PIXELS`, a decoder that
crashed, ran past `DECODE_TIMEOUT_S` or out of `DECODE_MEMORY_MB`, or a missing `file` field; 503 model still
loading, failed to load, or too many requests in flight (`Retry-After`). The `Server-Timing` header gives the server's
time per stage (save, decode, ipc, queue, sample, model, total) in ms.
"""


def _to_clip_rule() -> str:
    """frames.to_clip's own statement of the rule, quoted: the API docs cannot drift from the code."""
    from .frames import to_clip

    doc = (to_clip.__doc__ or "").strip()
    return "\n".join("> " + line.strip() for line in doc.splitlines() if line.strip())


ERROR_RESPONSES = {
    413: {"model": ErrorBody, "description": "upload larger than MAX_UPLOAD_MB"},
    415: {"model": ErrorBody, "description": "not a video (unrecognised bytes, still image, no video stream)"},
    422: {"model": ErrorBody, "description": "empty, damaged, too long, frames too large, or no `file` field"},
    503: {"model": ErrorBody, "description": "model not ready, or too many requests in flight"},
}


def create_app(cfg: ServeConfig | None = None, predictor_factory: PredictorFactory | None = None) -> FastAPI:
    """The FastAPI app. Nothing heavy happens here: the model loads in the lifespan handler's background thread."""
    cfg = cfg or ServeConfig.from_env()
    factory = predictor_factory or load_predictor
    state: dict[str, Any] = {"pending": 0}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        model = ModelState(cfg, factory)
        app.state.model = model
        app.state.model_lock = asyncio.Lock()  # one model call at a time
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
        return _error(exc.status, exc.error, exc.detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 413:
            return _error(413, "too_large", f"upload exceeds MAX_UPLOAD_MB={cfg.max_upload_mb:g} MB")
        return _error(exc.status_code, f"http_{exc.status_code}", _one_line(Exception(exc.detail)), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        parts = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            parts.append(f"{loc or 'request'}: {err.get('msg', 'invalid')}")
        detail = "; ".join(parts) or "invalid request"
        if any(tuple(e.get("loc", ()))[-1:] == ("file",) for e in exc.errors()):
            detail = "send the video as multipart/form-data field 'file' (" + detail + ")"
        return _error(422, "bad_request", detail)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        log.exception("internal error")
        return _error(500, "internal", f"{type(exc).__name__}: {_one_line(exc)}")

    @app.get("/health", summary="Liveness: the process answers")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: the model is loaded (503 until then)",
             responses={503: {"model": ErrorBody, "description": "loading or failed"}})
    async def ready(request: Request):
        model: ModelState | None = getattr(request.app.state, "model", None)
        if model is None or not model.ready:
            if model is not None and model.error:
                return _error(503, "model_error", model.error)
            return _error(503, "loading", f"model {cfg.model_id} is loading")
        info = dict(getattr(model.predictor, "info", None) or {})  # what was actually loaded, for operators
        device = getattr(model.predictor, "device", None)
        return {"status": "ready", "model_id": cfg.model_id, "adapter": cfg.adapter_path,
                "quantization": info.get("quantization"), "device": None if device is None else str(device),
                "grammar": info.get("grammar"), "load_seconds": round(model.load_seconds or 0.0, 2)}

    @app.post(
        "/predict",
        response_model=Prediction,
        summary="Dominant operation, its frame span and the next operation for one video clip",
        responses=ERROR_RESPONSES,
        form_limits={"max_files": 1, "max_fields": 4, "max_part_size": 4096},
    )
    async def predict(
        request: Request,
        response: Response,
        file: UploadFile = File(..., description="the video (any container/codec libav reads)"),
        clip_id: str | None = Form(None, description="id echoed in the answer; default: the file name"),
    ):
        model: ModelState | None = getattr(request.app.state, "model", None)
        if model is None or not model.ready:
            detail = model.error if model is not None and model.error else f"model {cfg.model_id} is loading"
            return _error(503, "model_error" if model is not None and model.error else "loading", detail,
                          {"Retry-After": "5"})
        if state["pending"] >= cfg.max_pending:
            return _error(503, "busy", f"{state['pending']} requests in flight (MAX_PENDING={cfg.max_pending})",
                          {"Retry-After": "1"})
        state["pending"] += 1
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
            async with request.app.state.model_lock:
                t3 = time.perf_counter()
                timing["queue"] = t3 - t2
                result = await anyio.to_thread.run_sync(model.predictor.predict_clip, clip, cid)
            call = time.perf_counter() - t3
            model_s = float(result.scores.get("seconds", call))  # the Predictor times its own model calls
            timing["sample"] = call - model_s  # motion-adaptive frame choice + image conversion (predict_clip)
            timing["model"] = model_s
            pred = result.prediction
            if pred.clip_id != cid:
                pred = pred.model_copy(update={"clip_id": cid})
            timing["total"] = time.perf_counter() - t0
            log.info("predict %s: %s %dx%d %d frames -> %s [%s]", cid, info.codec, info.width, info.height, n_frames,
                     pred.dominant_operation, " ".join(f"{k}={v * 1000:.0f}ms" for k, v in timing.items()))
            response.headers["Server-Timing"] = ", ".join(f"{k};dur={v * 1000:.1f}" for k, v in timing.items())
            if getattr(result, "repair", None):  # the model's text needed repair to fit the schema (predict.py)
                response.headers["X-Output-Repair"] = _one_line(Exception(result.repair))[:200]
            return pred
        except UploadError as exc:
            log.info("predict %s: %d %s: %s", cid, exc.status, exc.error, exc.detail)
            return _error(exc.status, exc.error, exc.detail)
        finally:
            state["pending"] -= 1
            if path is not None:
                path.unlink(missing_ok=True)
            await file.close()

    return app
