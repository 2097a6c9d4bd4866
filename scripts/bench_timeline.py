"""Timeline memory and speed vs recording length: peak RSS of ``python -m openpack_vlm.timeline`` on synthetic
session videos of 1, 5 and 10 minutes (and the real vtest.avi), each in a fresh process, with ratios to the
1-minute run and to what holding the whole decoded recording would take.

    python scripts/bench_timeline.py [--minutes 1 5 10] [--model tiny-real] [--out docs/figures/bench_timeline.json]

The videos are written by ``openpack_vlm.testing.synthetic --video`` (15 fps, 640x360 H.264; cached in --work).
Prints one line per run and the ratios; writes the JSON and, for the longest video, its Gantt chart PNG.
``--server``: also each video through ``POST /timeline`` of a fresh ``serve.py`` (the same model), sampling the
resident memory of the server and its decoder processes every 0.2 s while the job runs (psutil).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
FRAME_BYTES = 336 * 336 * 3  # one decoded 25-fps frame as the windows hold it


def run_cli(video: Path, out: Path, model: str, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "openpack_vlm.timeline", str(video), "--model", model, "--quantization", "none",
           "--device", "cpu", "--out", str(out), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1"))
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"timeline failed on {video.name}: {proc.stderr.strip().splitlines()[-1:]}")
    res = json.loads(out.read_text())
    return {"video": video.name, "seconds": res["duration_s"], "windows": res["n_windows"],
            "segments": len(res["segments"]), "peak_rss_bytes": res["memory"]["peak_rss_bytes"],
            "process_wall_s": round(wall, 1), "model_s_per_window": res["timing"]["model_s_per_window"],
            "whole_decode_bytes": int(round(res["duration_s"] * 25)) * FRAME_BYTES}


def run_server(video: Path, model: str) -> dict:
    """One fresh server per video: POST /timeline, poll to the end, the peak summed RSS of the server process tree."""
    import httpx2 as httpx
    import psutil

    sys.path.insert(0, str(REPO / "tests"))
    from browser import serve

    log = Path(tempfile.mkdtemp()) / "server.log"
    env = {"MODEL_ID": model, "QUANTIZATION": "none", "DEVICE": "cpu", "LOG_LEVEL": "warning",
           "MAX_TIMELINE_SECONDS": "3600"}
    with serve(REPO, env, log) as (base, proc):
        root = psutil.Process(proc.pid)

        def tree_rss() -> tuple[int, int]:
            procs = [root] + root.children(recursive=True)
            rss = []
            for p in procs:
                try:
                    rss.append(p.memory_info().rss)
                except psutil.Error:
                    pass
            return sum(rss), len(rss)

        idle, n_idle = tree_rss()
        with open(video, "rb") as fh:
            job = httpx.post(base + "/timeline", files={"file": (video.name, fh, "video/mp4")}, timeout=120).json()
        peak, n_peak, t0 = idle, n_idle, time.perf_counter()
        while True:
            rss, n = tree_rss()
            if rss > peak:
                peak, n_peak = rss, n
            st = httpx.get(f"{base}/timeline/{job['job_id']}", timeout=30).json()
            if st["state"] not in ("queued", "running"):
                break
            time.sleep(0.2)
        if st["state"] != "done":
            raise SystemExit(f"server job on {video.name} ended {st['state']}: {st['error']}")
        return {"video": video.name, "seconds": st["result"]["duration_s"], "windows": st["result"]["n_windows"],
                "idle_tree_rss_bytes": idle, "peak_tree_rss_bytes": peak, "processes_at_peak": n_peak,
                "job_wall_s": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[1, 5, 10])
    ap.add_argument("--model", default="tiny-real")
    ap.add_argument("--work", default="out/bench_timeline", help="where the videos and timelines go")
    ap.add_argument("--out", default="docs/figures/bench_timeline.json")
    ap.add_argument("--plot", default="docs/figures/timeline_synthetic_10min.png")
    ap.add_argument("--vtest", default=str(REPO / "tests/data/videos/vtest.avi"))
    ap.add_argument("--server", action="store_true", help="also measure POST /timeline of serve.py (see above)")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    runs = []
    longest = max(args.minutes)
    for m in args.minutes:
        video = work / f"synthetic_{m:g}min.mp4"
        if not video.is_file():
            subprocess.run([sys.executable, "-m", "openpack_vlm.testing.synthetic", "--video", str(video),
                            "--seconds", str(m * 60), "--seed", "3"], cwd=REPO, check=True, capture_output=True)
        extra = ["--truth", str(video.with_suffix(".truth.json"))]
        if m == longest and args.plot:
            extra += ["--plot", args.plot]
        r = run_cli(video, work / f"timeline_{m:g}min.json", args.model, extra)
        runs.append(r)
        print(f"{m:>5g} min: {r['windows']:4d} windows, peak RSS {r['peak_rss_bytes'] / 1e9:.3f} GB "
              f"(whole decoded video would be {r['whole_decode_bytes'] / 1e9:.2f} GB), {r['process_wall_s']:.0f} s",
              flush=True)
    if args.vtest:
        r = run_cli(Path(args.vtest), work / "timeline_vtest.json", args.model, [])
        runs.append(r)
        print(f"vtest.avi ({r['seconds']:.1f} s): {r['windows']} windows, peak RSS {r['peak_rss_bytes'] / 1e9:.3f} GB, "
              f"{r['segments']} segments", flush=True)
    base = runs[0]
    ratios = {f"{m:g}min_vs_{args.minutes[0]:g}min": round(r["peak_rss_bytes"] / base["peak_rss_bytes"], 3)
              for m, r in zip(args.minutes, runs)}
    length = {f"{m:g}min_vs_{args.minutes[0]:g}min": round(r["seconds"] / base["seconds"], 2)
              for m, r in zip(args.minutes, runs)}
    print("peak RSS ratio vs the shortest:", ratios, "| length ratio:", length)
    server = []
    if args.server:
        for m in args.minutes:
            r = run_server(work / f"synthetic_{m:g}min.mp4", args.model)
            server.append(r)
            print(f"{m:>5g} min via POST /timeline: peak RSS of server + decoders {r['peak_tree_rss_bytes'] / 1e9:.3f} GB "
                  f"(idle {r['idle_tree_rss_bytes'] / 1e9:.3f} GB, {r['processes_at_peak']} processes), "
                  f"{r['job_wall_s']:.0f} s", flush=True)
        server_ratio = {f"{m:g}min_vs_{args.minutes[0]:g}min":
                        round(r["peak_tree_rss_bytes"] / server[0]["peak_tree_rss_bytes"], 3)
                        for m, r in zip(args.minutes, server)}
        print("server peak RSS ratio vs the shortest:", server_ratio)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    from openpack_vlm.io_utils import write_json

    extra = {"server_runs": server, "server_peak_rss_ratio": server_ratio} if server else {}
    write_json(args.out, {"runs": runs, "peak_rss_ratio": ratios, "length_ratio": length, "model": args.model, **extra,
                          "command": "python scripts/bench_timeline.py " + " ".join(argv or sys.argv[1:]),
                          "commit": git, "machine": f"{platform.processor() or platform.machine()}, "
                          f"{os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
                          "videos": "synthetic session videos (openpack_vlm.testing.synthetic --video, seed 3, 15 fps "
                                    "640x360 H.264) and the real tests/data/videos/vtest.avi (79.5 s, 10 fps)"})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
