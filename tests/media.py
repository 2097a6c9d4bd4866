"""Test media, written in one place: real video files encoded with PyAV, a JPEG, a truncated copy.

Every test that needs a video builds it here (``write_video`` from frames, ``make_video`` for a moving scene), so a
codec option or container quirk is fixed once.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np


def write_video(path: Path, frames: Iterable[np.ndarray], fps: int = 25, codec: str = "libx264",
                container: str | None = None, options: dict | None = None) -> Path:
    """Encode (H, W, 3) uint8 RGB frames. libx264 with ``options={"qp": "0"}`` is lossless (a frame decodes to the
    same pixels in any file it is written to); mjpeg uses the full-range yuvj420p."""
    import av

    frames = iter(frames)
    first = next(frames)
    h, w = first.shape[:2]
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if options:
            stream.options = dict(options)
        elif codec == "libx264":
            stream.options = {"preset": "ultrafast"}
        elif codec.startswith("libvpx"):
            stream.options = {"deadline": "realtime", "cpu-used": "8"}
        for img in (first, *frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return Path(path)


def make_video(path: Path, seconds: float = 2.0, fps: int = 25, size: tuple[int, int] = (160, 120),
               codec: str = "libx264", container: str | None = None, seed: int = 0) -> Path:
    """A small real video: a gradient with a moving square (so the motion sampler has motion to find)."""
    w, h = size
    n = int(round(seconds * fps))
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, int(rng.integers(0, 255)))], -1).astype(np.uint8)
    side = max(8, min(w, h) // 6)

    def frame(i: int) -> np.ndarray:
        img = base.copy()
        x0 = (i * 3) % max(w - side, 1)
        img[h // 3 : h // 3 + side, x0 : x0 + side] = 255
        return img

    return write_video(path, (frame(i) for i in range(n)), fps, codec, container)


def grey_video(path: Path, n: int, fps: int, size=(160, 96)) -> Path:
    """Frame i is flat grey 20 + 3i (near-lossless H.264), so a decoded grey level names its source frame."""
    return write_video(path, (np.full((size[1], size[0], 3), 20 + 3 * i, np.uint8) for i in range(n)), fps,
                       options={"qp": "0"})


def make_jpeg(path: Path, size: tuple[int, int] = (160, 120)) -> Path:
    from PIL import Image

    Image.fromarray(np.random.default_rng(1).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
        path, format="JPEG")
    return Path(path)


def make_truncated(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst
