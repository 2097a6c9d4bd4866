"""Predictor speed, the reference path (``scorer="rows"``) vs the trie scorer, one clip at a time and batched, in
one run; with the FLOPs per clip of the real 2B model and the evaluation time they imply on a T4 / A100.

    OMP_NUM_THREADS=2 python scripts/bench_predict.py --out docs/figures/bench_predict_cpu.json   # CPU, tiny-real
    python scripts/bench_predict.py --model 2b --device cuda --quantization 4bit --out docs/gpu/bench_predict.json
    ... --frame-head      the path of an adapter with a frame head (span from the prefill: 3 calls per clip)

``--model tiny-real`` (default): tiny layers with the real Qwen2-VL-2B-Instruct tokenizer and processor (151,936-wide
output head, 144 visual tokens per frame, one token per digit), so the call structure and the candidate token counts
are the real ones. ``--model 2b``: the Qwen2-VL-2B architecture with random weights (``vram.build_random_2b`` with
the real tokenizer; no download), meant for a GPU. Clips are random 336x336 frames at K sampled indices; every path
answers the same clips after one warm-up clip, without free text (``--free-text`` adds it). Printed per path: model
calls per clip, ms per clip, clips/s, peak memory, whether its answers equal the reference path's, and the ratio to
the reference. The FLOPs per clip are counted from the 2B config (``vram.param_counts``) and this run's prompt and
candidate-tree sizes; the T4 / A100 times derived from them are ESTIMATES at a stated share of the chips' fp16
tensor peak, and are labelled so.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


PEAK_TFLOPS = {"T4 (fp16)": 65.0, "A100 (bf16)": 312.0}  # dense tensor-core peaks from the data sheets
UTILISATION = (0.15, 0.4)  # assumed share of peak for a 4-bit (dequantise + matmul) prefill: a range, not measured
U0108_CLIPS = 2900  # clips of the held-out split by a public run of this split (README), for the --all estimate


def make_clips(n: int, k: int, seed: int = 0) -> list:
    rng = np.random.RandomState(seed)
    clips = []
    for c in range(n):
        idx = sorted(rng.choice(125, k, replace=False).tolist())
        clips.append(([rng.randint(0, 255, (336, 336, 3), dtype=np.uint8) for _ in idx], idx, f"bench{c:03d}"))
    return clips


def load(model: str, device: str, quantization: str, work: Path, with_frame_head: bool = False):
    import torch

    from openpack_vlm.model.predict import PredictConfig, Predictor
    from openpack_vlm.model.loading import resolve_model_id
    from openpack_vlm.testing.tiny import TINY_REAL_ID

    if model == "2b":
        from openpack_vlm.model.vram import build_random_2b

        dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        model_dir = build_random_2b(work / "qwen2vl-2b-random", Path(resolve_model_id(TINY_REAL_ID)), dtype,
                                    device="cpu")
    else:
        model_dir = resolve_model_id(model)
    predictor = Predictor.from_pretrained(str(model_dir), quantization=quantization, device=device, run=None,
                                          grammar=None, config=PredictConfig(free_text=False))
    if with_frame_head:  # the served path of an adapter trained with one: span from the prefill, 2 calls fewer
        from openpack_vlm.model import frame_head

        head = frame_head.attach(predictor.model)
        torch.nn.init.normal_(head.weight, std=0.02)  # untrained but not uniform: the span decoder sees real choices
        predictor.has_frame_head = True
    return predictor


def run_path(predictor, clips, scorer: str, batch: int, free_text: bool) -> dict:
    import dataclasses

    import torch

    from openpack_vlm.platform_check import peak_memory

    predictor.config = dataclasses.replace(predictor.config, scorer=scorer, free_text=free_text)
    warm, clips = clips[:1], clips[1:]
    predictor.predict_batch(warm)  # warm-up: lazy inits, allocator
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    calls0 = predictor.model_calls
    t0 = time.perf_counter()
    answers = []
    for i in range(0, len(clips), batch):
        answers += predictor.predict_batch(clips[i:i + batch])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    mem = peak_memory()
    return {"scorer": scorer, "batch_clips": batch, "clips": len(clips),
            "model_calls_per_clip": (predictor.model_calls - calls0) / len(clips),
            "ms_per_clip": 1000 * wall / len(clips), "clips_per_s": len(clips) / wall,
            "peak_memory_gib": round(mem["bytes"] / 2**30, 3), "peak_memory_kind": mem["kind"],
            "answers": [a.prediction.model_dump() for a in answers]}


def same_answers(a: list[dict], b: list[dict]) -> int:
    return sum({**x, "confidence": 0} == {**y, "confidence": 0} and abs(x["confidence"] - y["confidence"]) < 1e-4
               for x, y in zip(a, b))


def real_token_counts(clip, answer: dict) -> dict:
    """With the real Qwen2-VL-2B-Instruct processor (whatever model ran): the clip's prompt tokens and vision patches,
    and per path the tokens fed and output-head positions of the 4 candidate sets behind ``answer``. Trie: the
    merged tree, head on inner nodes; rows: every candidate row feeds its whole text, head on every position after
    the shared prefix (``logits_to_keep``)."""
    from openpack_vlm.model.answers import dominant_candidates, end_candidates, next_candidates, start_candidates
    from openpack_vlm.model.scorer import Trie, common_prefix
    from openpack_vlm.testing.tiny import real_processor
    from openpack_vlm.prompt import build_messages

    proc = real_processor()
    images, idx, _ = clip
    text = proc.apply_chat_template(build_messages(idx), add_generation_prompt=True, tokenize=False)
    inputs = proc(text=[text], images=list(images), return_tensors="pt")
    d, s, e = answer["dominant_operation"], answer["temporal_segment"]["start_frame"], answer["temporal_segment"][
        "end_frame"]
    n = {"prompt_tokens": int(inputs["input_ids"].shape[1]), "patches": int(inputs["image_grid_thw"].prod(-1).sum()),
         "trie_fed": 0, "trie_head": 0, "rows_fed": 0, "rows_head": 0}
    for texts in (dominant_candidates(), start_candidates(d), end_candidates(d, s), next_candidates(d, s, e)):
        toks = proc.tokenizer(texts, add_special_tokens=False)["input_ids"]
        trie, first = Trie.build(toks), max(common_prefix(toks), 1)
        n["trie_fed"] += len(trie.tokens)
        n["trie_head"] += len(trie.inner_nodes(first))
        width = max(len(t) for t in toks)
        n["rows_fed"] += len(toks) * width
        n["rows_head"] += len(toks) * (width - first + 1)
    return n


def flops_2b(n: dict, frames: int) -> dict:
    """Forward FLOPs of one clip on the Qwen2-VL-2B config (2 per multiply-add), trie path vs rows path, from the
    token counts of ``real_token_counts``."""
    from openpack_vlm.model.vram import arch, param_counts

    a, pc = arch(), param_counts()
    prompt_tokens, patches = n["prompt_tokens"], n["patches"]
    vision = 2 * pc["vision"] * patches + a.v_depth * 4 * (patches / frames) ** 2 * a.v_embed * frames
    layer_attn = lambda q, kv: a.layers * 4 * q * kv * a.hidden  # noqa: E731  QK^T and AV
    prefill = vision + 2 * pc["lm_linear"] * prompt_tokens + layer_attn(prompt_tokens, prompt_tokens) / 2
    head_flops = 2 * a.hidden * a.vocab
    trie = 2 * pc["lm_linear"] * n["trie_fed"] + layer_attn(n["trie_fed"], prompt_tokens) + head_flops * n["trie_head"]
    rows = 2 * pc["lm_linear"] * n["rows_fed"] + layer_attn(n["rows_fed"], prompt_tokens) + head_flops * n["rows_head"]
    return {"prefill": prefill, "trie_steps": trie, "rows_steps": rows, "trie_total": prefill + trie + head_flops,
            "rows_total": prefill + rows + head_flops}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny-real", help='"tiny-real" | "tiny" | "2b" (random 2B, for a GPU)')
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quantization", default="none", choices=["none", "4bit"])
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--k", type=int, default=8, help="frames per clip")
    ap.add_argument("--batches", default="4,8", help="batch sizes of the batched trie runs")
    ap.add_argument("--free-text", action="store_true")
    ap.add_argument("--frame-head", action="store_true", help="time the frame-head path (an adapter trained with "
                    "--frame_loss_weight): a random head attached, the span read from the prefill, 3 calls a clip")
    ap.add_argument("--out", default=None, help="JSON report")
    ap.add_argument("--commit", default=None, help="the commit measured, recorded in the report (a device machine's "
                                                   "copy of the tree may hold a stale .git)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    with tempfile.TemporaryDirectory() as work:
        predictor = load(args.model, args.device, args.quantization, Path(work), args.frame_head)
        clips = make_clips(args.clips + 1, args.k)  # the first one warms up each path
        runs = [run_path(predictor, clips, "rows", 1, args.free_text)]
        runs.append(run_path(predictor, clips, "trie", 1, args.free_text))
        for b in [int(x) for x in args.batches.split(",") if x]:
            runs.append(run_path(predictor, clips, "trie", b, args.free_text))
        prompt_tokens = int(predictor._encode_prompt(clips[1][0], clips[1][1], device=False)["input_ids"].shape[1])
        counts = real_token_counts(clips[1], runs[1]["answers"][0])
    ref = runs[0]
    for r in runs:
        r["same_answers_as_rows"] = same_answers(r["answers"], ref["answers"])
        r["speedup_vs_rows"] = ref["ms_per_clip"] / r["ms_per_clip"]
    flops = flops_2b(counts, args.k)
    estimates = {}
    for chip, peak in PEAK_TFLOPS.items():
        lo, hi = (flops["trie_total"] / (peak * 1e12 * u) for u in reversed(UTILISATION))
        per_eval_clip = 2  # base + fine-tuned per test clip; the 30 val clips once
        estimates[chip] = {"s_per_prediction": [round(lo, 3), round(hi, 3)],
                           "first_30_clips_s": [round((30 * per_eval_clip + 30) * x) for x in (lo, hi)],
                           "all_U0108_h": [round((U0108_CLIPS * per_eval_clip + 30) * x / 3600, 2) for x in (lo, hi)]}
    report = {
        "model": args.model, "device": args.device, "quantization": args.quantization, "k": args.k,
        "free_text": args.free_text, "frame_head": args.frame_head, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__, "prompt_tokens": prompt_tokens, "real_2b_token_counts": counts,
        "runs": [{k: v for k, v in r.items() if k != "answers"} for r in runs],
        "flops_2b_per_clip": flops,
        "estimates": {"note": f"ESTIMATE, not measured: Qwen2-VL-2B FLOPs per prediction (trie path) / (fp16 tensor "
                              f"peak x {UTILISATION[0]:.0%}-{UTILISATION[1]:.0%}); without free text; evaluation = "
                              f"2 predictions per test clip + 30 val clips; --all = {U0108_CLIPS} clips",
                      **estimates},
    }
    print(f"{args.model} on {report['gpu'] or report['cpu']} ({report['threads']} threads), K={args.k}, "
          f"{args.clips} clips, free_text={args.free_text}, frame_head={args.frame_head}, prompt {prompt_tokens} "
          "tokens")
    print(f"{'path':<18}{'calls/clip':>11}{'ms/clip':>10}{'clips/s':>9}{'peak GiB':>10}{'same':>7}{'x rows':>8}")
    for r in runs:
        name = f"{r['scorer']} b={r['batch_clips']}"
        print(f"{name:<18}{r['model_calls_per_clip']:>11.2f}{r['ms_per_clip']:>10.0f}{r['clips_per_s']:>9.2f}"
              f"{r['peak_memory_gib']:>10.2f}{r['same_answers_as_rows']:>4}/{r['clips']:<2}{r['speedup_vs_rows']:>8.2f}")
    print(f"2B FLOPs per clip: prefill {flops['prefill'] / 1e12:.2f} T, candidate steps trie "
          f"{flops['trie_steps'] / 1e12:.3f} T vs rows {flops['rows_steps'] / 1e12:.3f} T "
          f"(ratio {flops['rows_steps'] / flops['trie_steps']:.1f})")
    for chip, est in estimates.items():
        print(f"ESTIMATE {chip}: {est['s_per_prediction'][0]}-{est['s_per_prediction'][1]} s per prediction; "
              f"evaluate first 30 clips {est['first_30_clips_s'][0]}-{est['first_30_clips_s'][1]} s; "
              f"--all U0108 {est['all_U0108_h'][0]}-{est['all_U0108_h'][1]} h")
    if args.out:
        from openpack_vlm.evaluation.report import git_provenance
        from openpack_vlm.io_utils import write_json

        provenance = git_provenance() if args.commit is None else {"git_commit": args.commit, "git_dirty": None}
        write_json(Path(args.out), report | provenance)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
