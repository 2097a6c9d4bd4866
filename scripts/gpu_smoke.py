"""GPU smoke test of the QLoRA path: a few 4-bit training steps of the tiny Qwen2-VL through openpack_vlm.model.train.

    python scripts/gpu_smoke.py [--steps 4] [--json smoke.json]          # on a CUDA machine: fp16, and bf16 if supported
    python scripts/gpu_smoke.py --device cpu --steps 2                    # same path on bitsandbytes' CPU backend (fp32)

Builds the tiny model offline in a temp dir, writes a few shards in the pipeline's format, then per compute dtype:
loads it in 4-bit NF4 (vision tower and lm_head unquantised), trains LoRA with the real Trainer (fp16 AMP with grad
scaling on fp16, bf16 AMP on bf16), and checks: the loss is finite at every step; only the adapter's weights changed
(LoRA, with lora_B among them, and the frame head); only language-model linears are 4-bit; the vision tower is in the compute dtype; the trained adapter
generates. Prints one line per dtype (peak memory = torch.cuda.max_memory_allocated) and exits 0 only if all pass:
1 = a check failed, 2 = no CUDA (without --device cpu).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _raw(model) -> dict:
    """Parameters as raw bytes (packed 4-bit storage compares exactly; NaN bit patterns cannot fool equality)."""
    import torch

    return {n: p.detach().cpu().contiguous().view(-1).view(torch.uint8).clone() for n, p in model.named_parameters()}


def smoke_one(dtype: str, device: str, steps: int, model_dir: Path, data_dir: Path, work: Path,
              vision_lora: bool = False) -> dict:
    import torch
    from transformers import TrainerCallback

    from openpack_vlm.model.loading import ModelConfig, load_model, quantized_modules
    from openpack_vlm.model.train import TrainConfig, train

    snap = {}

    class Probe(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            snap["before"] = _raw(model)
            snap["trainable"] = {n for n, p in model.named_parameters() if p.requires_grad}
            snap["quantized"] = quantized_modules(model)
            snap["visual_dtypes"] = sorted({str(p.dtype) for n, p in model.named_parameters()
                                            if ".visual." in n and "lora_" not in n})

        def on_train_end(self, args, state, control, model=None, **kw):
            snap["after"] = _raw(model)

    out = work / f"run-{dtype}{'-vision' if vision_lora else ''}"
    cfg = TrainConfig(data=str(data_dir), out=str(out), model_id=str(model_dir), quantization="4bit", dtype=dtype,
                      device=device, max_steps=steps, save_steps=steps, per_device_train_batch_size=2,
                      gradient_accumulation_steps=1, learning_rate=5e-3, warmup_steps=0, lr_scheduler_type="constant",
                      max_grad_norm=1.0, logging_steps=1, num_workers=0, shuffle_buffer=8, report_to=("none",),
                      vision_lora=vision_lora)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    t0 = time.time()
    train(cfg, callbacks=[Probe()])
    secs = time.time() - t0
    summ = json.loads((out / "train_summary.json").read_text())
    state = json.loads((out / f"checkpoint-{steps}" / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    before, after = snap["before"], snap["after"]
    changed = {n for n in after if n not in before or after[n].shape != before[n].shape
               or not torch.equal(after[n], before[n])}
    expect_dtype = {"fp16": "torch.float16", "bf16": "torch.bfloat16", "fp32": "torch.float32"}[dtype]
    checks = {
        "loss_finite": bool(losses) and all(math.isfinite(x) for x in losses),
        "steps_done": summ["global_step"] == steps,
        "only_adapter_trainable": bool(snap["trainable"]) and all(_ours(n) for n in snap["trainable"]),
        "only_adapter_changed": bool(changed) and all(_ours(n) for n in changed),
        "lora_B_changed": any("lora_B" in n for n in changed),
        "frame_head_trained": any("frame_head" in n for n in changed),
        "lm_linears_4bit": bool(snap["quantized"])
        and all(".language_model." in n for n in snap["quantized"]),
        "vision_in_compute_dtype": snap["visual_dtypes"] == [expect_dtype],
        # vision_lora: the tower's own LoRA learned too; without it, nothing of the tower is trainable
        "vision_lora_as_asked": (any(".visual." in n and "lora_B" in n for n in changed) if vision_lora
                                 else not any(".visual." in n for n in snap["trainable"])),
    }
    # inference path: the saved adapter on a fresh 4-bit base generates tokens
    model, proc = load_model(ModelConfig(model_id=str(model_dir), quantization="4bit", dtype=dtype, device=device),
                             adapter=out)
    from openpack_vlm.prompt import build_messages
    from openpack_vlm.data.shards import iter_samples, shard_paths

    rec, frames = next(iter(iter_samples(shard_paths(data_dir / "train"))))
    text = proc.apply_chat_template(build_messages(rec.frame_indices), tokenize=False, add_generation_prompt=True)
    inputs = proc(text=[text], images=frames, return_tensors="pt").to(model.device)
    with torch.no_grad():
        gen = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        logits = model(**inputs).logits
    checks["generates"] = gen.shape[1] > inputs["input_ids"].shape[1]
    checks["inference_logits_finite"] = bool(torch.isfinite(logits).all())
    del model
    gc.collect()
    return {"dtype": dtype, "device": device, "vision_lora": vision_lora, "ok": all(checks.values()), "checks": checks, "losses": losses,
            "peak_memory": summ["peak_memory"], "train_s": round(secs, 1), "changed_tensors": len(changed),
            "changed_non_lora": [f"{n} {tuple(before[n].shape) if n in before else None}->{tuple(after[n].shape)}"
                                 for n in sorted(changed) if not _ours(n)][:12],
            "max_abs_change_non_lora": max((float((after[n] - before[n]).abs().max()) for n in changed
                                            if not _ours(n) and n in before and after[n].shape == before[n].shape),
                                           default=0.0)}


def _ours(name: str) -> bool:
    """A weight the adapter trains: LoRA, or the frame head's trained copy (model/frame_head.py)."""
    return "lora_" in name or "frame_head.modules_to_save" in name


def main(argv=None) -> int:
    from openpack_vlm.testing.smoke import write_smoke_shards

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--device", default="cuda", help='"cuda" (default) or "cpu" (bitsandbytes CPU backend, fp32)')
    p.add_argument("--json", default=None, help="also write the report here")
    a = p.parse_args(argv)

    import torch

    from openpack_vlm.testing.tiny import build_tiny_model

    if a.device.startswith("cuda"):
        if not torch.cuda.is_available():
            print("gpu_smoke: no CUDA device (run on a GPU machine, or pass --device cpu)", file=sys.stderr)
            return 2
        dtypes = ["fp16"] + (["bf16"] if torch.cuda.is_bf16_supported(including_emulation=False) else [])
        where = torch.cuda.get_device_name(0)
    else:
        dtypes, where = ["fp32"], "cpu"
    print(f"gpu_smoke: {where}, torch {torch.__version__}, dtypes {dtypes}, {a.steps} steps each")
    reports = []
    with tempfile.TemporaryDirectory(prefix="gpu_smoke_") as tmp:
        work = Path(tmp)
        model_dir = build_tiny_model(work / "tiny", seed=0)
        data_dir = write_smoke_shards(work / "data")
        for dt, vision_lora in [(d, v) for d in dtypes for v in (False, True)]:
            try:
                r = smoke_one(dt, a.device, a.steps, model_dir, data_dir, work, vision_lora=vision_lora)
            except Exception as e:  # a crash is a failed check, reported in one line
                r = {"dtype": dt, "device": a.device, "ok": False, "error": f"{type(e).__name__}: {e}".splitlines()[0]}
            r["vision_lora"] = vision_lora
            dt = dt + (" + vision LoRA" if vision_lora else "")
            reports.append(r)
            if "error" in r:
                print(f"  {dt}: FAIL  {r['error']}")
            else:
                bad = [k for k, v in r["checks"].items() if not v]
                pm = r["peak_memory"]
                print(f"  {dt}: {'ok  ' if r['ok'] else 'FAIL'} loss {r['losses'][0]:.3f} -> {r['losses'][-1]:.3f}, "
                      f"peak {pm['bytes'] / 2**20:.0f} MiB ({pm['kind']}), {r['train_s']} s, "
                      f"{r['changed_tensors']} tensors changed" + (f"; failed: {bad}" if bad else ""))
                if r["changed_non_lora"]:
                    print(f"    non-LoRA tensors changed (max |delta| {r['max_abs_change_non_lora']:.3g}): "
                          f"{r['changed_non_lora']}")
    if a.json:
        from openpack_vlm.io_utils import write_json

        write_json(a.json, {"device": where, "reports": reports}, indent=2)
    ok = all(r["ok"] for r in reports)
    print("gpu_smoke: PASS" if ok else "gpu_smoke: FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
