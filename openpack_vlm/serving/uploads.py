"""Uploads: the temp file under a size cap, recognition by bytes (never by name or declared type), decoding.

One upload's way: multipart ``file`` → streamed into a temp file under a size cap (413, ``save_upload``) →
recognised by its bytes (``probe_upload``: 415 not a video, 422 empty / damaged / too long / too large frames) →
decoded to 25 fps, 336×336 (``video.decode_video``) → normalised to the 125-frame clip (``video.to_clip``).
A skeleton run (run contract ``data.frames == "pose"``) takes the other branch of ``decode_clip``: keypoints
estimated at 15 Hz (``data.pose_estimate``; 422 ``no_worker`` when too few frames show one) as a
``skeleton.SkeletonClip`` (``KeypointTrack.source`` = ``sources.PoseFrameSource``): the predictor samples it on the
joints' motion and draws the frames it keeps as the data pipeline renders OpenPack's.
Every refusal is an ``UploadError`` (status, stable code, one-line detail) that the app turns into a JSON body.
"""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ..data.errors import FrameError
from ..data.keypoint_files import sniff_keypoint_file, track_from_keypoint_file
from ..data.pose_estimate import (
    KEYPOINT_HZ,
    NoWorkerError,
    PoseUnavailableError,
    estimate_video,
)
from ..data.skeleton import PoseRender
from ..data.video import MIN_CLIP_FRAMES, decode_video, to_clip
from ..io_utils import one_line
from ..schema import CLIP_FRAMES, CLIP_SECONDS, FPS
from .settings import MIB, ServeConfig

COPY_CHUNK = MIB  # bytes per read when moving the upload to its temp file


class ErrorBody(BaseModel):
    """Body of every non-2xx answer."""

    error: str  # stable machine-readable code, e.g. "not_a_video"
    detail: str  # one line naming the problem
    request_id: str  # this request's id (also the X-Request-ID header): the one the server's log names


class UploadError(Exception):
    """A request the service refuses, with its HTTP status and a one-line reason."""

    def __init__(self, status: int, error: str, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers

    def __reduce__(self):  # crosses the decoder-process boundary intact
        return (UploadError, (self.status, self.error, self.detail, self.headers))


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


def too_long(what: str, max_clip_seconds: float, route: str = "/predict") -> str:
    """The too-long answer says what to do: /predict judges one clip (its first 5 s); /timeline has its own cap."""
    if route == "/timeline":
        return (f"{what}; /timeline takes recordings of up to MAX_TIMELINE_SECONDS={max_clip_seconds:g} s: cut it "
                "(e.g. ffmpeg -ss START -t SECONDS -i IN OUT.mp4) or raise MAX_TIMELINE_SECONDS")
    return (f"{what}; /predict takes clips of up to MAX_CLIP_SECONDS={max_clip_seconds:g} s and judges their first "
            f"{CLIP_SECONDS:g} s: cut the clip you mean (e.g. ffmpeg -ss START -t {CLIP_SECONDS:g} -i IN OUT.mp4) or "
            "raise MAX_CLIP_SECONDS")


def probe_upload(path: Path, max_clip_seconds: float, max_frame_pixels: int, route: str = "/predict") -> UploadInfo:
    """Recognise a video by its bytes (libav probing, not the name): metadata checks before any frame is decoded.

    422 empty file / damaged container / frames too large / longer than ``max_clip_seconds`` (``route``'s cap);
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
            why = getattr(exc, "strerror", None) or one_line(exc)  # strerror: without the temp file's path
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
            raise UploadError(422, "too_long", too_long(f"video is {duration:.1f} s long", max_clip_seconds, route))
        return UploadInfo(fmt, ctx.name, width, height, duration)
    finally:
        container.close()


@dataclass
class DecodedClip:
    """What the model gets from one upload: the 125-frame clip it samples from, and for skeleton runs the motion the
    sampler uses (keypoint speed, as in training) and the pose stage's report."""

    clip: Any  # (125, 336, 336, 3) uint8; skeletons: a SkeletonClip (keypoints, drawn where indexed or sampled)
    info: UploadInfo
    n_frames: int  # frames decoded (25 fps for camera frames, 15 Hz keypoint frames for skeletons)
    frames: str = "rgb"  # what the clip shows: "rgb" camera frames | "pose" rendered skeletons
    motion: Any = None  # (125,) per-frame motion for the sampler, None = from the pixels
    pose: dict | None = None  # KeypointTrack.summary() + timing


def probe_input(path: Path, cfg: ServeConfig, frames: str = "rgb", route: str = "/predict"
                ) -> tuple[UploadInfo, Any, list | None]:
    """Recognise an upload by its bytes for a run shown ``frames``: a video (``probe_upload``) -> (info, None, None),
    or, for skeleton runs, an OpenPack keypoint file (mmpose JSON / Zenodo CSV, or a time slice of one) -> (info,
    its KeypointTrack, its true timeline when the CSV has one). A keypoint file for a camera-frame run: 415; a bad
    keypoint file: 422 ``bad_keypoints``; a file over the route's length cap: 422 ``too_long``."""

    cap = cfg.max_timeline_seconds if route == "/timeline" else cfg.max_clip_seconds
    try:
        kind = sniff_keypoint_file(path)
    except OSError as exc:
        raise UploadError(422, "undecodable", f"the upload cannot be read ({type(exc).__name__})") from None
    if kind is None:
        return probe_upload(path, cap, cfg.max_frame_pixels, route), None, None
    if frames != "pose":
        raise UploadError(415, "not_a_video", f"a keypoint file ({kind}): the served run was trained on camera "
                          "frames (/ready: input.frames = rgb); keypoint files are for skeleton runs")
    try:
        track, truth = track_from_keypoint_file(path)
    except FrameError as exc:
        raise UploadError(422, "bad_keypoints", f"{kind}: {one_line(exc)}") from None
    seconds = (int(track.ts_ms[-1]) + 1000 / KEYPOINT_HZ) / 1000
    if seconds > cap + 0.5 / FPS:
        setting = "MAX_TIMELINE_SECONDS" if route == "/timeline" else "MAX_CLIP_SECONDS"
        raise UploadError(422, "too_long", f"the keypoint file spans {seconds:.1f} s; {route} takes up to "
                          f"{setting}={cap:g} s: send a time slice of it (rows of the CSV, frames of the JSON) or "
                          f"raise {setting}")
    return UploadInfo(kind, "keypoints", track.frame_w, track.frame_h, seconds), track, truth


def decode_clip(path: Path, cfg: ServeConfig, frames: str = "rgb", render: dict | None = None) -> DecodedClip:
    """The clip a run's model must see: camera frames (``decode_upload``) or, for ``frames="pose"``, the skeleton
    frames of the keypoints estimated from the video, or read from an uploaded OpenPack keypoint file
    (``probe_input``), rendered as the run contract's ``render`` (PoseRender fields) says. Same refusals as
    ``decode_upload``, plus 422 ``no_worker`` / ``bad_keypoints`` and 503 ``pose_unavailable``."""
    if frames not in ("rgb", "pose"):
        raise ValueError(f"unknown frames kind {frames!r} (rgb | pose)")
    info, track, _ = probe_input(path, cfg, frames)
    if frames == "rgb":
        clip, info, n = decode_upload(path, cfg, info)
        return DecodedClip(clip, info, n)
    # deferred: a module-level import would shadow a local name or form a cycle
    from ..data.errors import FrameError, VideoDecodeError

    pose_cfg = cfg.pose_config()
    if track is None:
        limit = CLIP_SECONDS if info.duration_s is not None else cfg.max_clip_seconds + 1.0 / FPS
        try:
            track = estimate_video(path, pose_cfg, max_seconds=limit, size=(info.width, info.height))
        except PoseUnavailableError as exc:
            raise UploadError(503, "pose_unavailable", one_line(exc)) from None
        except VideoDecodeError as exc:
            why = one_line(exc).replace(str(path), "upload").replace(path.name, "upload")
            raise UploadError(422, "undecodable", f"{info.codec} video could not be decoded: {why}") from None
    else:  # a keypoint file: its first 5 s, as to_clip keeps a video's
        keep = track.ts_ms < CLIP_SECONDS * 1000
        track.kpts, track.ts_ms = track.kpts[keep], track.ts_ms[keep]
    n = len(track.kpts)
    if n == 0:
        raise UploadError(422, "no_frames", f"no frame could be decoded from the {info.codec} stream")
    seconds = n / KEYPOINT_HZ
    if info.duration_s is None and seconds > cfg.max_clip_seconds + 1.0 / KEYPOINT_HZ:
        raise UploadError(422, "too_long", too_long("video is longer than that", cfg.max_clip_seconds))
    if seconds * FPS < MIN_CLIP_FRAMES:
        raise UploadError(422, "too_short", f"clip too short: {seconds:.2f} s; need at least "
                          f"{MIN_CLIP_FRAMES / FPS:.1f} s")
    share = track.found_share
    if share < pose_cfg.min_found_share:
        where = "" if track.roi is None else f" (searched crop {', '.join(f'{v:.2f}' for v in track.roi)})"
        raise UploadError(422, "no_worker", one_line(NoWorkerError(
            f"no worker in view: a person was found in {share:.0%} of the {n} keypoint frames{where}, fewer than "
            f"MIN_WORKER_SHARE={pose_cfg.min_found_share:g}; this model was trained on skeletons of a packing "
            "worker and does not guess without one")))
    src = track.source(PoseRender.from_json(render) if render is not None else PoseRender())
    try:  # not drawn here: the predictor samples on the joints' motion and draws the K frames it keeps
        clip = src.skeleton_clip(0, hold_last=True)
    except FrameError as exc:
        raise UploadError(422, "undecodable", one_line(exc)) from None
    return DecodedClip(clip, info, n, "pose", clip.motion, track.summary() | track.stats)


def decode_upload(path: Path, cfg: ServeConfig, info: UploadInfo | None = None) -> tuple[Any, UploadInfo, int]:
    """Probe, decode (25 fps, 336², letterboxed) and normalise to the 125-frame clip (``video.to_clip``).

    Returns (clip (125,336,336,3) uint8, probe info, frames decoded). Only the first ``CLIP_SECONDS`` are decoded
    when the container states its duration (``to_clip`` keeps the first 5 s); otherwise up to ``max_clip_seconds``
    plus one frame, to tell a too-long upload from one exactly at the cap.
    """
    # deferred: a module-level import would shadow a local name or form a cycle
    from ..data.errors import FrameError, VideoDecodeError

    info = info or probe_upload(path, cfg.max_clip_seconds, cfg.max_frame_pixels)
    limit = CLIP_SECONDS if info.duration_s is not None else cfg.max_clip_seconds + 1.0 / FPS
    try:
        frames = decode_video(path, fps=FPS, size=336, max_seconds=limit)
    except VideoDecodeError as exc:
        why = one_line(exc).replace(str(path), "upload").replace(path.name, "upload")  # no temp paths in answers
        raise UploadError(422, "undecodable", f"{info.codec} video could not be decoded: {why}") from None
    except (MemoryError, OverflowError, RuntimeError) as exc:
        raise UploadError(422, "undecodable", f"{info.codec} video could not be decoded: {one_line(exc)}") from None
    if frames is None or len(frames) == 0:
        raise UploadError(422, "no_frames", f"no frame could be decoded from the {info.codec} stream")
    if info.duration_s is None and len(frames) > int(round(cfg.max_clip_seconds * FPS)):
        raise UploadError(422, "too_long", too_long("video is longer than that", cfg.max_clip_seconds))
    try:
        clip = to_clip(frames, CLIP_FRAMES)
    except FrameError as exc:
        raise UploadError(422, "too_short", one_line(exc)) from None
    return clip, info, len(frames)
