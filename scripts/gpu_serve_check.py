"""Serve Qwen2-VL-2B's architecture (random weights) + a LoRA adapter + grammar.json with serve.py on a GPU, as the
README's GPU instructions do, and time POST /predict.

    python scripts/gpu_serve_check.py --json docs/gpu/gpu_serve_check_h100.json      # on a CUDA machine
    python scripts/gpu_serve_check.py --cpu-dry-run                                  # same path, small config, CPU

No download is needed (GPU machines here have no network): the model is built by gpu_vram_check.build_random_2b
(the real architecture and image-processor settings, random weights, the tiny model's tokenizer), a LoRA adapter of
the real run's settings (model.lora_config, lora_B perturbed so the adapter changes the output) is saved the way
train.py saves one, with grammar.json fitted on the real U0209 annotations beside it. Then ``serve.py`` runs with
MODEL_ID=<that dir>, ADAPTER_PATH=<adapter>, QUANTIZATION=auto (4-bit NF4 on CUDA), and scripts/bench_serve.py's
client sends ``--requests`` uploads of a 5-s 640x480 H.264 clip (~1 Mbit/s). Checks: /ready names the adapter and
the grammar, every answer validates against schema.Prediction, the predictor used the GPU in 4-bit. Reports the model
load time, p50/p95 of round trip, model time and server overhead, and the GPU's peak memory in use (nvidia-smi).
Random weights make the answers meaningless but cost the same compute and memory as the real ones.
Exit 0 = all checks passed, 1 = a check failed, 2 = no CUDA (without --cpu-dry-run).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# --cpu-dry-run: a few-MB model of the same classes (the 2B vision tower alone is too slow for CPU over 8 frames)
DRY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0,
                                                        "mrope_section": [4, 6, 6]})
DRY_VISION = dict(depth=2, embed_dim=64, num_heads=2, hidden_size=64)


def make_adapter(model_dir: Path, out: Path, quantization: str, device: str) -> Path:
    """A LoRA of the real run's settings on ``model_dir``, saved as train.py saves one (adapter/ + grammar.json + run.json)."""
    import torch

    from openpack_vlm.contract import TrainingSection, file_sha256
    from openpack_vlm.data.openpack import load_timeline
    from openpack_vlm.data.pipeline import PipelineConfig
    from openpack_vlm.grammar import Grammar, op_sequence
    from openpack_vlm.model.loading import ModelConfig, load_model

    model, _ = load_model(ModelConfig(model_id=str(model_dir), quantization=quantization, device=device),
                          for_training=True)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # B = 0 at init would make the adapter a no-op
                p.copy_((torch.randn(p.shape, generator=g) * 0.02).to(p.device, p.dtype))
    adapter = out / "adapter"
    model.save_pretrained(adapter)
    u0209 = load_timeline(REAL_ANNOTATIONS, "U0209", "S0500")  # the real annotation, vendored under tests/data
    Grammar.fit([op_sequence(seg.op_id for seg in u0209)]).save(out / "grammar.json")
    contract = PipelineConfig().contract()  # the run contract train.py writes: the pipeline's default data settings
    contract.data.grammar = {"file": "grammar.json", "sha256": file_sha256(out / "grammar.json")}
    contract.training = TrainingSection(model_id=str(model_dir), quantization=quantization,
                                        settings={"lora_r": 16, "note": "random LoRA B, not trained"})
    contract.save(out)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return adapter


REAL_ANNOTATIONS = Path(__file__).resolve().parents[1] / "tests" / "data" / "openpack" / "v1.0.0"


class GpuMemoryPoller:
    """Peak 'memory.used' of GPU 0 (MiB) from nvidia-smi every 0.25 s: the server is another process."""

    def __init__(self):
        self.peak_mib, self._stop = None, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                      "-i", "0"], capture_output=True, text=True, timeout=5).stdout.strip()
                self.peak_mib = max(self.peak_mib or 0, int(out.splitlines()[0]))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                pass
            self._stop.wait(0.25)

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)


def run(requests: int, dry: bool, work: Path, free_text: bool = False) -> dict:
    import httpx2 as httpx
    import torch

    if str(Path(__file__).resolve().parent) not in sys.path:  # bench_serve lives beside this script, however it runs
        sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_serve as bs
    from openpack_vlm.model.vram import build_random_2b
    from openpack_vlm.testing.tiny import build_tiny_model
    from openpack_vlm.schema import Prediction

    device = "cpu" if dry else "cuda"
    quantization = "none" if dry else "4bit"
    t0 = time.time()
    tiny = build_tiny_model(work / "tiny", seed=0)
    dtype = torch.float32 if dry else (torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False)
                                       else torch.float16)
    dry_text = {**DRY_TEXT, "vocab_size": json.loads((tiny / "config.json").read_text())["text_config"]["vocab_size"]}
    model_dir = build_random_2b(work / "qwen2vl-2b-random", tiny, dtype, device=device,
                                config_overrides=dry_text if dry else None, vision_overrides=DRY_VISION if dry else None)
    adapter = make_adapter(model_dir, work / "run", quantization, device)
    build_s = time.time() - t0

    cfg = bs.BenchConfig(model=str(model_dir), adapter=str(adapter), quantization="none" if dry else "auto",
                         requests=requests, warmup=2, core=-1, texture="noise", crf=23)
    clip = bs.write_clip(work / "clip.mp4", cfg)
    report: dict = {"model": "Qwen2-VL-2B architecture, random weights" + (" (CPU dry-run size)" if dry else ""),
                    "quantization_env": cfg.quantization, "device": device, "free_text": free_text,
                    "build_s": round(build_s, 1),
                    "clip": {"bytes": clip.stat().st_size, "size": f"{cfg.width}x{cfg.height}", "seconds": cfg.seconds}}
    if not dry:
        report["gpu"] = torch.cuda.get_device_name(0)
    checks: dict[str, bool] = {}
    with GpuMemoryPoller() as mem:
        proc, base, log = bs._start_server(cfg, work, cfg.seconds,
                                           extra_env={"DEVICE": device, "FREE_TEXT": "1" if free_text else "0"})
        try:
            t1 = time.time()
            bs._wait_ready(httpx, proc, base, log, timeout_s=600)
            report["load_s"] = round(time.time() - t1, 1)
            ready = httpx.get(base + "/ready", timeout=10).json()
            report["ready"] = ready
            checks["ready names the adapter"] = ready.get("adapter") == str(adapter)
            checks["ready names the grammar"] = "grammar.json" in json.dumps(ready)
            with httpx.Client(base_url=base, timeout=300) as client:
                rows = bs._bench_clip(client, proc, clip.read_bytes(), cfg)
                answers = []
                for _ in range(2):
                    r = client.post("/predict", files={"file": ("clip.mp4", clip.read_bytes(), "video/mp4")},
                                    data={"clip_id": "gpu_serve_check"})
                    answers.append(r.json())
                    Prediction.model_validate(r.json())  # raises = the check fails
            checks["answers are schema-valid"] = True
            checks["answers are deterministic"] = answers[0] == answers[1]
            report["answer"] = answers[0]
            report["timing"] = bs._summary(rows, cfg, clip.stat().st_size)
        finally:
            proc.send_signal(2)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        server_log = log.read_text(errors="replace")
    report["gpu_peak_used_mib"] = mem.peak_mib
    if not dry:
        checks["model loaded in 4-bit on CUDA"] = "4bit" in json.dumps(report["ready"]) and "cuda" in json.dumps(
            report["ready"])
    report["checks"] = checks
    report["server_log_tail"] = server_log[-1500:]
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--cpu-dry-run", action="store_true", help="small config on CPU, no quantization: the same code")
    p.add_argument("--json", default=None, help="write the report here")
    p.add_argument("--free-text", action="store_true", help="serve with FREE_TEXT=1 (the model also writes its "
                   "free answer; the default server does not)")
    p.add_argument("--commit", default=None, help="the commit measured, recorded in the report (the GPU machine "
                   "gets a copy of the tree without .git)")
    a = p.parse_args(argv)
    import torch

    if not a.cpu_dry_run and not torch.cuda.is_available():
        print("gpu_serve_check: needs a CUDA GPU (or --cpu-dry-run)", file=sys.stderr)
        return 2
    if a.requests < 1:
        print("gpu_serve_check: --requests >= 1", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="serve_check_") as tmp:
        try:
            report = run(a.requests, a.cpu_dry_run, Path(tmp), free_text=a.free_text)
            report["commit"] = a.commit
        except Exception as e:  # noqa: BLE001 - a failed check is reported in one line, with the report so far
            print(f"gpu_serve_check: FAIL {type(e).__name__}: {' '.join(str(e).split())[:400]}", file=sys.stderr)
            return 1
    t = report["timing"]
    print(f"gpu_serve_check: {report.get('gpu', 'CPU dry run')}, {report['model']}, load {report['load_s']} s")
    for k in ("roundtrip", "model", "overhead", "decode"):
        print(f"  {k:<9} p50 {t['p50_s'][k] * 1000:8.1f} ms   p95 {t['p95_s'][k] * 1000:8.1f} ms")
    if report["gpu_peak_used_mib"] is not None:
        print(f"  GPU memory in use, peak (nvidia-smi): {report['gpu_peak_used_mib']} MiB")
    print(f"  answer: {json.dumps(report['answer'])}")
    for name, ok in report["checks"].items():
        print(f"  {name}: {'ok' if ok else 'FAIL'}")
    if a.json:
        from openpack_vlm.io_utils import write_atomic

        write_atomic(Path(a.json), json.dumps(report, indent=2) + "\n")
    ok = all(report["checks"].values())
    print(f"gpu_serve_check: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
