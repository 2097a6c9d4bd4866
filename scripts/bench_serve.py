"""Latency of POST /predict: the server's own overhead per clip (upload → frames → sampler → response) and, apart
from it, the model's time, for a 5-s 640x480 H.264 clip, with the server pinned to one CPU core.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python scripts/bench_serve.py                  # tiny model, 30 requests
    python scripts/bench_serve.py --sweep --out docs/figures/serve_latency.json      # 6 clips, 0.1-3.8 Mbit/s + PNG
    python scripts/bench_serve.py --model Qwen/Qwen2-VL-2B-Instruct --adapter runs/r1/adapter --core -1   # real model

It starts ``serve.py`` once as a subprocess on 127.0.0.1 (a free port, CPU affinity = one core, OMP_NUM_THREADS=1,
DECODE_WORKERS=1), waits for /ready, and per clip sends ``--warmup`` then ``--requests`` sequential uploads of it,
reading each answer's ``Server-Timing`` header. overhead = client round trip − model time (the Predictor's own timing
of its model calls); it includes the upload over loopback, temp file, probe, decode to 25 fps / 336² + to_clip (in a
decoder process), the hand-over through shared memory, the motion sampler, JSON and HTTP. Prints p50/p95 of
overhead, model and each stage, the CPU seconds per request of the server process (model included) and of its
decoder processes (wall times grow when other jobs share the core; CPU seconds do not), and p50 overhead / target.
``--sweep`` measures the same scene at six bitrates (decoding time grows with the bitrate) and plots overhead vs
bitrate against the target (PNG beside ``--out``). The JSON records the commit, CPU and library versions.
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


# (texture, crf) of --sweep: the easy gradient, then the noise scene from ~0.1 to ~3.8 Mbit/s
SWEEP: tuple[tuple[str, int], ...] = (("flat", 23), ("noise", 28), ("noise", 23), ("noise", 21), ("noise", 20),
                                      ("noise", 18))
STAGES = ("roundtrip", "overhead", "model", "save", "decode", "ipc", "sample", "queue", "total", "cpu_server",
          "cpu_decoder")


def provenance() -> dict:
    """What the numbers were measured on: commit, date, CPU, decoder library versions."""
    import datetime as dt
    import platform

    import av

    from openpack_vlm.evaluation.report import git_provenance

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cpu": cpu,
            "machine_cores": os.cpu_count(), "python": platform.python_version(), "pyav": av.__version__,
            "libavcodec": ".".join(map(str, av.library_versions.get("libavcodec", ()))), **git_provenance()}


def _start_server(cfg: BenchConfig, tmp: Path, max_seconds: float, extra_env: dict | None = None):
    port = _free_port()
    env = dict(os.environ, MODEL_ID=cfg.model, QUANTIZATION=cfg.quantization, OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", DECODE_WORKERS="1", UPLOAD_DIR=str(tmp), LOG_LEVEL="warning",
               MAX_CLIP_SECONDS=str(max(30.0, max_seconds + 1)), **(extra_env or {}))
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
    return proc, f"http://127.0.0.1:{port}", server_log


def _wait_ready(httpx, proc, base: str, server_log: Path, timeout_s: float) -> None:
    t0 = time.time()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}): {server_log.read_text()[-500:]}")
        if time.time() - t0 > timeout_s:
            raise RuntimeError(f"server not ready after {timeout_s:.0f} s")
        try:
            if httpx.get(base + "/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)


def _bench_clip(client, proc, data: bytes, cfg: BenchConfig) -> list[dict]:
    from tqdm import tqdm

    rows = []
    for i in tqdm(range(cfg.warmup + cfg.requests), desc=f"bench /predict {cfg.texture} crf {cfg.crf}", unit="req"):
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
    return rows


def _summary(rows: list[dict], cfg: BenchConfig, nbytes: int) -> dict:
    stages = [k for k in STAGES if k in rows[0]]
    out = {
        "clip": {"bytes": nbytes, "seconds": cfg.seconds, "size": f"{cfg.width}x{cfg.height}", "codec": "h264",
                 "texture": cfg.texture, "crf": cfg.crf, "kbit_per_s": round(nbytes * 8 / 1000 / cfg.seconds)},
        "requests": len(rows),
        "p50_s": {k: round(_pct([r[k] for r in rows], 50), 4) for k in stages},
        "p95_s": {k: round(_pct([r[k] for r in rows], 95), 4) for k in stages},
    }
    out["overhead_p50_over_target"] = round(out["p50_s"]["overhead"] / cfg.target_p50_s, 3)
    return out


def run(cfg: BenchConfig, clips: tuple[tuple[str, int], ...] | None = None) -> dict:
    """Benchmark each (texture, crf) clip (default: cfg's own) on one server; returns provenance + one summary each."""
    import dataclasses

    import httpx2 as httpx

    clips = clips or ((cfg.texture, cfg.crf),)
    result = {"provenance": provenance(), "config": asdict(cfg),
              "cpu": {"server_cores": "all" if cfg.core < 0 else [cfg.core], "machine_cores": os.cpu_count()},
              "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        tmp = Path(tmp)
        proc, base, server_log = _start_server(cfg, tmp, cfg.seconds)
        try:
            _wait_ready(httpx, proc, base, server_log, cfg.timeout_s)
            with httpx.Client(base_url=base, timeout=120) as client:
                for texture, crf in clips:
                    c = dataclasses.replace(cfg, texture=texture, crf=crf)
                    data = write_clip(tmp / f"clip_{texture}_crf{crf}.mp4", c).read_bytes()
                    result["runs"].append(_summary(_bench_clip(client, proc, data, c), c, len(data)))
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return result


def plot(result: dict, path: Path) -> None:
    """Overhead p50 (p95 as the bar's top) and its decode part vs clip bitrate, with the target line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result["config"]
    runs = sorted(result["runs"], key=lambda r: r["clip"]["kbit_per_s"])
    kbit = [r["clip"]["kbit_per_s"] for r in runs]
    p50 = [r["p50_s"]["overhead"] * 1000 for r in runs]
    p95 = [r["p95_s"]["overhead"] * 1000 for r in runs]
    dec = [r["p50_s"].get("decode", 0) * 1000 for r in runs]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.errorbar(kbit, p50, yerr=[[0] * len(p50), [b - a for a, b in zip(p50, p95)]], fmt="o-", capsize=3,
                label="server overhead p50 (bar to p95)")
    ax.plot(kbit, dec, "s--", label="of which decoding (p50)")
    for r, x, y in zip(runs, kbit, p50):
        ax.annotate(f"{r['clip']['texture']} crf {r['clip']['crf']}", (x, y), textcoords="offset points",
                    xytext=(4, 6), fontsize=7)
    ax.axhline(cfg["target_p50_s"] * 1000, color="red", lw=1, label=f"target p50 {cfg['target_p50_s']:g} s")
    ax.set_xscale("log")
    ax.set_xlabel(f"clip bitrate (kbit/s), {cfg['width']}x{cfg['height']} H.264, {cfg['seconds']:g} s")
    ax.set_ylabel("ms per clip")
    ax.set_ylim(0, max(p95 + [cfg["target_p50_s"] * 1000]) * 1.15)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    prov = result["provenance"]
    ax.set_title(f"POST /predict overhead, model {cfg['model']}, server on core(s) {result['cpu']['server_cores']}"
                 f"\n{prov['cpu']}, commit {str(prov.get('git_commit'))[:7]}", fontsize=8)
    fig.tight_layout()
    from openpack_vlm.io_utils import save_figure

    save_figure(fig, path, dpi=110)


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
    p.add_argument("--sweep", action="store_true", help=f"benchmark the clips {SWEEP} (texture, crf) instead")
    p.add_argument("--core", type=int, default=d.core, help="pin the server to this core; -1 = no pinning")
    p.add_argument("--out", help="also write the JSON here (and, with --sweep, the plot beside it as .png)")
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
        result = run(cfg, SWEEP if a.sweep else None)
    except (RuntimeError, OSError) as exc:
        print(f"bench_serve.py: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print(f"server on core(s) {result['cpu']['server_cores']} of {result['provenance']['cpu']}, model {cfg.model}, "
          f"{cfg.requests} requests per clip, commit {str(result['provenance']['git_commit'])[:7]}"
          f"{' (uncommitted changes)' if result['provenance']['git_dirty'] else ''}")
    for r in result["runs"]:
        c, p50, p95 = r["clip"], r["p50_s"], r["p95_s"]
        print(f"clip {c['size']} {c['seconds']:g} s h264 {c['texture']} crf {c['crf']} ({c['bytes']} bytes, "
              f"{c['kbit_per_s']} kbit/s)")
        for k in p50:
            print(f"  {k:<11} p50 {p50[k] * 1000:8.1f} ms   p95 {p95[k] * 1000:8.1f} ms")
        ratio = r["overhead_p50_over_target"]
        print(f"  server overhead p50 / target {cfg.target_p50_s:g} s = {ratio:.2f} "
              f"({'within' if ratio <= 1 else 'OVER'} target)")
    if a.out:
        from openpack_vlm.io_utils import write_atomic

        out = Path(a.out)
        write_atomic(out, json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
        if a.sweep:
            plot(result, out.with_suffix(".png"))
            print(f"wrote {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
