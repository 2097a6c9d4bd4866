"""Measure the real QLoRA memory of Qwen2-VL-2B's architecture on a GPU and set it beside the VRAM budget.

    python scripts/gpu_vram_check.py [--steps 3] [--dtype fp16] [--json vram_check.json]

No download is needed (GPU machines here have no network): the script builds a RANDOMLY initialised model with
Qwen2-VL-2B-Instruct's exact architecture (config values from openpack_vlm.model.vram.QWEN2VL_2B_CONFIG, real image-
processor settings, so a 336x336 frame costs the real 144 visual tokens), saves it with save_pretrained, and then
trains it through the project's own path: model.load_model (4-bit NF4, double quant, vision tower + lm_head
unquantised, prepare_model_for_kbit_training, LoRA) and train.train (Trainer, batch 2, 8 frames per clip, gradient
checkpointing on and off; and with ``vision_lora`` — LoRA on the vision tower and merger too — checkpointing on,
beside the same run without it). Random weights occupy the same memory as the real ones, so the measured
torch.cuda.max_memory_allocated is the number the VRAM MATH cell must predict. The tokenizer is the tiny model's
(a smaller BPE than Qwen's), so the text-token count of a sample is measured with it and fed to the estimate.
Prints, per run: measured peak, estimate, their ratio (target: within 15 %) and seconds per step.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_one(model_dir: Path, data_dir: Path, work: Path, dtype: str, ckpt: bool, steps: int, tag: str = "",
            answer_only: bool = True, vision_lora: bool = False) -> dict:
    import torch

    from openpack_vlm.model import vram
    from openpack_vlm.model.train import TrainConfig, train

    out = work / (f"run-{dtype}-{'ckpt' if ckpt else 'nockpt'}-{'answer' if answer_only else 'full'}"
                  f"{'-vision' if vision_lora else ''}{tag}")
    cfg = TrainConfig(data=str(data_dir), out=str(out), model_id=str(model_dir), quantization="4bit", dtype=dtype,
                      max_steps=steps, save_steps=steps, per_device_train_batch_size=2, gradient_accumulation_steps=1,
                      gradient_checkpointing=ckpt, full_logits=not answer_only, vision_lora=vision_lora, logging_steps=1,
                      num_workers=0, shuffle_buffer=8, report_to=("none",))
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    train(cfg)
    secs = time.time() - t0
    summ = json.loads((out / "train_summary.json").read_text())
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(model_dir)
    vis = vram.visual_tokens_per_frame(proc.image_processor)
    n_text, _ = vram.text_tokens(tokenizer=proc.tokenizer)
    n_answer, _ = vram.answer_tokens(tokenizer=proc.tokenizer)
    est = vram.estimate(str(model_dir / "config.json"), batch=2, frames=8, visual_per_frame=vis, n_text=n_text,
                        gradient_checkpointing=ckpt, answer_logits_only=answer_only, n_answer=n_answer,
                        vision_lora=vision_lora)
    measured = summ["peak_memory"]["bytes"]
    return {"dtype": dtype, "gradient_checkpointing": ckpt, "answer_logits_only": answer_only,
            "vision_lora": vision_lora, "steps": summ["global_step"], "train_s": round(secs, 1),
            "s_per_step": round(summ["runtime_s"] / max(summ["global_step"], 1), 3),
            "trainable_params": summ["params"]["trainable"],
            "visual_tokens_per_frame": vis, "text_tokens": n_text, "measured_peak_bytes": measured,
            "measured_reserved_bytes": summ["peak_memory"].get("reserved_bytes"),
            "estimate_bytes": int(est["total"]), "ratio_estimate_to_measured": round(est["total"] / measured, 3),
            "estimate_components_gb": {k: round(v / 1e9, 3) for k, v in est.items() if not k.startswith("_")},
            "loss": [summ.get("first_logged_loss"), summ.get("last_logged_loss")]}


def main(argv=None) -> int:
    from openpack_vlm.model.vram import build_random_2b

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--dtype", default="fp16", choices=["fp16", "bf16"])
    p.add_argument("--json", default=None)
    p.add_argument("--t4-cap-gb", type=float, default=15.0,
                   help="also train (checkpointing on) with the process capped at this many GB of GPU memory, as on a "
                        "T4 (16 GB card, ~15 GB usable); 0 = skip")
    a = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_vram_check: needs a CUDA GPU", file=sys.stderr)
        return 2
    from openpack_vlm.testing.smoke import write_smoke_shards

    from openpack_vlm.testing.tiny import build_tiny_model

    dt = {"fp16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
    gpu = torch.cuda.get_device_name(0)
    reports = []
    with tempfile.TemporaryDirectory(prefix="vram_check_") as tmp:
        work = Path(tmp)
        tiny = build_tiny_model(work / "tiny", seed=0)
        model_dir = build_random_2b(work / "qwen2vl-2b-random", tiny, dt)
        data_dir = write_smoke_shards(work / "data", n=16)
        total = torch.cuda.get_device_properties(0).total_memory
        # (checkpointing, answer-only logits, memory cap, vision LoRA): the default run, the two things it saves, the
        # T4 cap, and the 2B's option for skeleton frames (LoRA on the vision tower too), uncapped and under the T4 cap
        runs = [(True, True, None, False), (True, False, None, False), (False, True, None, False),
                (True, True, None, True)] + (
            [(True, True, a.t4_cap_gb, False), (True, True, a.t4_cap_gb, True)] if a.t4_cap_gb > 0 else [])
        for ckpt, answer_only, cap, vision_lora in runs:
            if cap:
                torch.cuda.empty_cache()
                torch.cuda.set_per_process_memory_fraction(min(1.0, cap * 1e9 / total))
            try:
                r = run_one(model_dir, data_dir, work, a.dtype, ckpt, a.steps, tag=f"-cap{cap:g}" if cap else "",
                            answer_only=answer_only, vision_lora=vision_lora)
            except Exception as e:
                r = {"dtype": a.dtype, "gradient_checkpointing": ckpt, "answer_logits_only": answer_only,
                     "vision_lora": vision_lora, "error": f"{type(e).__name__}: {e}"[:500]}
            finally:
                if cap:
                    torch.cuda.set_per_process_memory_fraction(1.0)
            r["memory_cap_gb"] = cap
            reports.append(r)
            label = (f"checkpointing={ckpt}, logits={'answer' if answer_only else 'full'}"
                     + (", vision LoRA" if vision_lora else "") + (f", capped at {cap:g} GB (T4)" if cap else ""))
            if "error" in r:
                print(f"  {label}: FAIL {r['error']}")
            else:
                print(f"  {label}: measured peak {r['measured_peak_bytes'] / 1e9:.2f} GB "
                      f"(reserved {r['measured_reserved_bytes'] / 1e9:.2f} GB), estimate {r['estimate_bytes'] / 1e9:.2f}"
                      f" GB, estimate/measured = {r['ratio_estimate_to_measured']:.2f}; tokens/sample "
                      f"{r['text_tokens']} text + 8x{r['visual_tokens_per_frame']} visual; {r['s_per_step']} s/step, "
                      f"{r['trainable_params'] / 1e6:.1f}M trainable")
    report = {"gpu": gpu, "torch": torch.__version__, "dtype": a.dtype, "model": "Qwen2-VL-2B architecture, random "
              "weights", "batch": 2, "frames": 8, "reports": reports}
    if a.json:
        from openpack_vlm.io_utils import write_json

        write_json(a.json, report, indent=2)
    ok = all("error" not in r for r in reports)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
