"""Latency of POST /predict: the server's own overhead per clip (upload → frames → sampler → response) and, apart
from it, the model's time, for a 5-s 640x480 H.264 clip, with the server pinned to one CPU core.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python scripts/bench_serve.py                  # tiny model, 30 requests
    python scripts/bench_serve.py --requests 50 --out out/bench_serve.json
    python scripts/bench_serve.py --model Qwen/Qwen2-VL-2B-Instruct --adapter runs/r1/adapter --core -1   # real model

It starts ``serve.py`` as a subprocess on 127.0.0.1 (a free port, CPU affinity = one core, OMP_NUM_THREADS=1,
DECODE_WORKERS=1), waits for /ready, sends ``--warmup`` then ``--requests`` sequential uploads of the same clip, and
reads each answer's ``Server-Timing`` header. overhead = client round trip − model time (the Predictor's own timing of
its model calls); it includes the upload over loopback, temp file, probe, decode to 25 fps / 336² + to_clip (in a
decoder process), the hand-over through shared memory, the motion sampler, JSON and HTTP. Prints p50/p95 of
overhead, model and each stage, the CPU seconds per request of the server process (model included) and of its
decoder processes (wall times grow when other jobs share the core; CPU seconds do not), and p50 overhead / target.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


@dataclass
class BenchConfig:
    """Benchmark settings; defaults = the reported run."""

    model: str = "tiny"  # MODEL_ID of the server; "tiny" isolates server overhead from a real model's time
    adapter: str | None = None
    quantization: str = "none"  # the tiny model runs in full precision
    requests: int = 30  # timed uploads (sequential: latency, not throughput)
    warmup: int = 3  # untimed first uploads (lazy imports, allocator warm-up)
    seconds: float = 5.0  # clip length: one model clip
    width: int = 640  # 640x480: a common camera size; the server letterboxes it to 336x336
    height: int = 480
    fps: int = 25
    texture: str = "noise"  # "noise": ~1 Mbit/s like camera footage | "flat": gradient, ~85 kbit/s (decodes faster)
    crf: int = 23  # libx264 quality (23 = its default); lower = higher bitrate = more decoding work
    core: int = 0  # CPU core the server is pinned to; -1 = no pinning
    target_p50_s: float = 0.2  # overhead budget per clip (s)
    timeout_s: float = 300.0  # server start + ready limit


def write_clip(path: Path, cfg: BenchConfig, seed: int = 0) -> Path:
    """A moving scene encoded with libx264 at quality ``cfg.crf``. ``texture="noise"`` (blocky noise + grain) makes
    the decoder work about as hard as on camera footage; ``"flat"`` (a gradient) is the easy case."""
    import av

    rng = np.random.default_rng(seed)
    w, h = cfg.width, cfg.height
    if cfg.texture == "noise":
        bg = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    else:
        yy, xx = np.mgrid[0:h, 0:w]
        bg = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 90)], -1).astype(np.uint8)
    n = int(round(cfg.seconds * cfg.fps))
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=cfg.fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(cfg.crf)}
        for i in range(n):
            img = np.roll(bg, i * 2, axis=1).copy()
            if cfg.texture == "noise":
                img = np.clip(img.astype(np.int16) + rng.integers(-12, 12, img.shape), 0, 255).astype(np.uint8)
            x = (i * 9) % (w - 96)
            img[h // 3 : h // 3 + 96, x : x + 96] = (230, 200, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) so far of the server process and of its decoder processes: the work a request
    costs, which other load on the machine does not inflate the way it inflates wall time."""
    import psutil

    server = psutil.Process(pid)
    main = sum(server.cpu_times()[:2])
    children = 0.0
    for child in server.children(recursive=True):
        try:
            children += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return main, children


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q))


def _timings(header: str) -> dict[str, float]:
    """``Server-Timing: save;dur=1.2, decode;dur=80.0, ...`` → {stage: seconds}."""
    out = {}
    for item in header.split(","):
        name, _, dur = item.strip().partition(";dur=")
        if dur:
            out[name] = float(dur) / 1000.0
    return out


def run(cfg: BenchConfig, log=print) -> dict:
    import httpx2 as httpx
    from tqdm import tqdm

    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        tmp = Path(tmp)
        clip = write_clip(tmp / "clip_640x480_5s.mp4", cfg)
        port = _free_port()
        env = dict(os.environ, MODEL_ID=cfg.model, QUANTIZATION=cfg.quantization, OMP_NUM_THREADS="1",
                   MKL_NUM_THREADS="1", DECODE_WORKERS="1", UPLOAD_DIR=str(tmp), LOG_LEVEL="warning",
                   MAX_CLIP_SECONDS=str(max(30.0, cfg.seconds + 1)))
        if cfg.adapter:
            env["ADAPTER_PATH"] = cfg.adapter
        if cfg.model == "tiny":
            env.setdefault("HF_HUB_OFFLINE", "1")
        pin = None if cfg.core < 0 else {cfg.core}
        server_log = tmp / "server.log"
        with open(server_log, "wb") as fh:
            proc = subprocess.Popen(
                [sys.executable, str(REPO / "serve.py"), "--host", "127.0.0.1", "--port", str(port)],
                cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
                preexec_fn=(lambda: os.sched_setaffinity(0, pin)) if pin else None)
        base = f"http://127.0.0.1:{port}"
        try:
            t0 = time.time()
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited ({proc.returncode}): {server_log.read_text()[-500:]}")
                if time.time() - t0 > cfg.timeout_s:
                    raise RuntimeError(f"server not ready after {cfg.timeout_s:.0f} s")
                try:
                    if httpx.get(base + "/ready", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            data = clip.read_bytes()
            rows = []
            with httpx.Client(base_url=base, timeout=120) as client:
                for i in tqdm(range(cfg.warmup + cfg.requests), desc="bench /predict", unit="req"):
                    cpu0 = _cpu(proc.pid)
                    t = time.perf_counter()
                    r = client.post("/predict", files={"file": ("bench.mp4", data, "video/mp4")})
                    rt = time.perf_counter() - t
                    cpu1 = _cpu(proc.pid)
                    if r.status_code != 200:
                        raise RuntimeError(f"/predict answered {r.status_code}: {r.text[:200]}")
                    if i >= cfg.warmup:
                        st = _timings(r.headers.get("server-timing", ""))
                        rows.append({"roundtrip": rt, "overhead": rt - st.get("model", 0.0), **st,
                                     "cpu_server": cpu1[0] - cpu0[0], "cpu_decoder": cpu1[1] - cpu0[1]})
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    stages = [k for k in ("roundtrip", "overhead", "model", "save", "decode", "ipc", "sample", "queue", "total",
                          "cpu_server", "cpu_decoder") if k in rows[0]]
    summary = {
        "config": asdict(cfg),
        "clip": {"bytes": len(data), "seconds": cfg.seconds, "size": f"{cfg.width}x{cfg.height}", "codec": "h264",
                 "texture": cfg.texture, "crf": cfg.crf, "kbit_per_s": round(len(data) * 8 / 1000 / cfg.seconds)},
        "cpu": {"server_cores": "all" if pin is None else sorted(pin), "machine_cores": os.cpu_count()},
        "p50_s": {k: round(_pct([r[k] for r in rows], 50), 4) for k in stages},
        "p95_s": {k: round(_pct([r[k] for r in rows], 95), 4) for k in stages},
    }
    summary["overhead_p50_over_target"] = round(summary["p50_s"]["overhead"] / cfg.target_p50_s, 3)
    return summary


def main(argv: list[str] | None = None) -> int:
    d = BenchConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=d.model)
    p.add_argument("--adapter", default=d.adapter)
    p.add_argument("--quantization", default=d.quantization, choices=["none", "4bit", "auto"])
    p.add_argument("--requests", type=int, default=d.requests)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--seconds", type=float, default=d.seconds)
    p.add_argument("--width", type=int, default=d.width)
    p.add_argument("--height", type=int, default=d.height)
    p.add_argument("--texture", choices=["noise", "flat"], default=d.texture)
    p.add_argument("--crf", type=int, default=d.crf, help="libx264 quality of the clip (lower = higher bitrate)")
    p.add_argument("--core", type=int, default=d.core, help="pin the server to this core; -1 = no pinning")
    p.add_argument("--out", help="also write the summary JSON here")
    a = p.parse_args(argv)
    if a.requests < 1 or a.warmup < 0 or a.seconds <= 0 or a.width < 16 or a.height < 16 or not 0 <= a.crf <= 51:
        print("bench_serve.py: --requests >= 1, --warmup >= 0, --seconds > 0, --width/--height >= 16, --crf 0..51",
              file=sys.stderr)
        return 2
    if a.core >= 0 and a.core not in os.sched_getaffinity(0):
        print(f"bench_serve.py: core {a.core} is not available (have {sorted(os.sched_getaffinity(0))})",
              file=sys.stderr)
        return 2
    cfg = BenchConfig(model=a.model, adapter=a.adapter, quantization=a.quantization, requests=a.requests,
                      warmup=a.warmup, seconds=a.seconds, width=a.width, height=a.height, texture=a.texture, crf=a.crf,
                      core=a.core)
    try:
        summary = run(cfg)
    except (RuntimeError, OSError) as exc:
        print(f"bench_serve.py: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    p50, p95 = summary["p50_s"], summary["p95_s"]
    print(f"clip {summary['clip']['size']} {cfg.seconds:g} s h264 {cfg.texture} crf {cfg.crf} "
          f"({summary['clip']['bytes']} bytes, {summary['clip']['kbit_per_s']} kbit/s), "
          f"server on core(s) {summary['cpu']['server_cores']}, {cfg.requests} requests, model {cfg.model}")
    for k in p50:
        print(f"  {k:<9} p50 {p50[k] * 1000:8.1f} ms   p95 {p95[k] * 1000:8.1f} ms")
    print(f"server overhead p50 / target {cfg.target_p50_s:g} s = {summary['overhead_p50_over_target']:.2f}"
          f" ({'within' if summary['overhead_p50_over_target'] <= 1 else 'OVER'} target)")
    if a.out:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2))
        os.replace(tmp, out)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
