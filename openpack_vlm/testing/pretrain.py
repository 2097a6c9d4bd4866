"""A tiny base that already sees: ``tiny-pretrained``, the ``tiny-real`` layers whose vision tower is pre-trained on a
separate synthetic corpus, as the real 2B's tower was pre-trained before anyone fine-tunes it on OpenPack.

    python -m openpack_vlm.testing.pretrain [--out DIR] [--steps 1200]     # (re)build it
    python -m openpack_vlm.testing.pretrain --cached                       # build into the cache unless it is there
    (any use of the model id "tiny-pretrained" builds it once into the cache, as --cached does)

Why (ARCHITECTURE.md §3, "Does the VLM learn?"): the random, frozen vision tower of ``tiny-real`` keeps where the
arms are mostly in WHICH token is lit — a linear probe on its per-position tokens separates the operations best,
while their mean varies by only ~4 % of its norm from clip to clip — and a 2-layer LM of width 64, whose untrained
attention averages the ~1,150 visual tokens, neither amplifies that nor learns to address positions in a CPU budget:
it answers the majority class. A tower in which EVERY token carries its frame's layout (what the 2B's pre-trained tower gives its LM:
content, not just position) survives that averaging, and the same LoRA recipe learns the task.

The pre-training, once, cached like the tiny models:
  * corpus: a synthetic root of its own (``CORPUS``: users U0201-U0206, seed 1 — never the demo's users or its
    test user U0108), through the real data pipeline (skeleton frames, person renderer, keypoint-motion sampler);
  * objective: every merged visual token of a frame -> one shared linear read-out -> the frame's 12x12 RGB thumbnail
    (mean-centred squared error), so each token learns to carry its frame's layout (measured against a read-out of
    the tokens' mean, which let the tower keep the layout in a few tokens: ARCHITECTURE.md). It reads pixels only:
    no operation label, span or timeline is used, so the fine-tuning still has to learn every answer;
  * trained: patch embedding, vision blocks and merger (the LM and embeddings stay as ``tiny-real`` built them).
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..cli import build_parser, parse, setting
from ..io_utils import atomic_path
from .tiny import TINY_PRETRAINED_ID as PRETRAINED_ID
from .tiny import cache_dir, cached_build, real_processor, tiny_cached

PRETRAINED_DIRNAME = "tiny-pretrained-qwen2vl"
PRETRAIN_VERSION = 2  # bump when the corpus or the objective changes: the cache is rebuilt
#: the pre-training corpus: a synthetic root of its own (other users and seed than the demo's, 180 s a session)
CORPUS = {"users": ("U0201", "U0202", "U0203", "U0204", "U0205", "U0206"), "seed": 1, "seconds": 180.0}
THUMB = 12  # read-out target: 12x12 RGB thumbnail of each 336x336 frame (28 px cells, a merged token's footprint)
BATCH = 32  # frames per pre-training step
STEPS = 1200  # pre-training steps (~6 min on 2 cores; the read-out's R^2 still rises slowly after it)


def corpus_frames(work: Path) -> list:
    """The corpus' training frames (PIL, 336x336 skeleton renders), made by the synthetic root + data pipeline."""
    from ..data.pipeline import PipelineConfig, run  # deferred: would load PIL, cv2 on import
    from ..data.shards import iter_samples, shard_paths  # deferred: would load PIL on import
    from .synthetic import SyntheticConfig, write_synthetic_root  # deferred: would load cv2 on import

    root = write_synthetic_root(work / "root", SyntheticConfig(users=CORPUS["users"], seed=CORPUS["seed"],
                                                               session_seconds=CORPUS["seconds"], rgb=False))
    users = f"{CORPUS['users'][0]}-{CORPUS['users'][-1]}"
    # plain frames (no time bar), whatever the pipeline's default: the corpus the cached tower was trained on
    run(PipelineConfig(out=str(work / "data"), root=str(root), source="pose", splits=[f"train={users}"],
                       time_bar=False))
    return [im for _, frames in iter_samples(shard_paths(work / "data" / "train")) for im in frames]


def pretrain_vision(model, processor, frames: list, steps: int, seed: int = 0, progress: bool = True,
                    objective: str = "token") -> dict:
    """Train ``model.model.visual`` so that every merged token of a frame predicts the frame's thumbnail; returns the
    read-out's R^2 over the last 10 % of steps (share of the thumbnails' variance one token explains).
    ``objective="mean"``: the read-out sees the frame's mean token instead (the first objective; the ablation row)."""
    if objective not in ("token", "mean"):
        raise ValueError(f"unknown pre-training objective {objective!r}: token or mean")
    import numpy as np
    import torch

    torch.manual_seed(seed)
    vis = model.model.visual
    inputs = processor.image_processor(images=frames, return_tensors="pt")
    thw = inputs["image_grid_thw"]
    per = int(thw[0].prod())
    pixels = inputs["pixel_values"].reshape(len(frames), per, -1)
    target = torch.tensor(np.stack([np.asarray(im.convert("RGB").resize((THUMB, THUMB), 2), np.float32).reshape(-1)
                                    for im in frames]) / 255.0)
    target = target - target.mean(0)
    head = torch.nn.Linear(model.config.vision_config.hidden_size, target.shape[1])
    params = list(vis.parameters()) + list(head.parameters())
    for p in vis.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    vis.train()
    tail_err, tail_var, t0 = 0.0, 0.0, time.time()
    for step in range(steps):
        idx = torch.randint(0, len(frames), (BATCH,), generator=gen)
        out = vis(pixels[idx].reshape(BATCH * per, -1), grid_thw=thw[idx])
        tokens = out.pooler_output if getattr(out, "pooler_output", None) is not None else out
        per_token = tokens.reshape(BATCH, -1, tokens.shape[-1])  # (frames, tokens per frame, hidden)
        if objective == "mean":
            per_token = per_token.mean(1, keepdim=True)
        loss = ((head(per_token) - target[idx][:, None, :]) ** 2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step >= steps * 0.9:
            tail_err += float(loss)
            tail_var += float((target[idx] ** 2).mean())
        if progress and (step % 100 == 0 or step == steps - 1):
            print(f"pretrain: step {step + 1}/{steps}, loss {float(loss):.5f}, {time.time() - t0:.0f} s", flush=True)
    vis.eval()
    for p in vis.parameters():
        p.requires_grad_(False)
    return {"r2_last_10pct": round(1 - tail_err / max(tail_var, 1e-12), 3), "seconds": round(time.time() - t0, 1)}


def build_pretrained_tiny(out_dir: str | Path, steps: int = STEPS, seed: int = 0, progress: bool = True,
                          objective: str = "token") -> Path:
    """``tiny-real`` with its vision tower pre-trained on ``CORPUS`` (see the module docstring), saved like the tiny
    models (``from_pretrained``-loadable, ``openpack_tiny.json`` recording the corpus and the read-out's R^2)."""
    import torch
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(seed)
    base = tiny_cached(tokenizer="real")
    model = AutoModelForImageTextToText.from_pretrained(base)
    processor = real_processor()
    out = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="tiny_pretrain_") as tmp:
        frames = corpus_frames(Path(tmp))
        fit = pretrain_vision(model, processor, frames, steps=steps, seed=seed, progress=progress, objective=objective)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    meta = json.loads((base / "openpack_tiny.json").read_text())
    meta.update({"pretrained": {"version": PRETRAIN_VERSION, "corpus": {**CORPUS, "users": list(CORPUS["users"])},
                                "frames": len(frames), "steps": steps, "batch": BATCH, "seed": seed,
                                "objective": ("every merged visual token" if objective == "token" else
                                              "mean merged visual token") + f" -> linear -> its frame's {THUMB}x{THUMB}"
                                             " RGB thumbnail",
                                "trained": "model.visual (patch embed, blocks, merger)", **fit}})
    (out / "openpack_tiny.json").write_text(json.dumps(meta))
    return out


def pretrained_cached() -> Path:
    """Build ``tiny-pretrained`` once into the cache (``tiny.cached_build``: lock, temp dir, one rename)."""

    def build(tmp: Path) -> None:
        print(f"building {PRETRAINED_ID} once into the cache (vision tower pre-trained on its own synthetic corpus, "
              "~7 min on 2 cores)", file=sys.stderr, flush=True)
        build_pretrained_tiny(tmp)

    return cached_build(PRETRAINED_DIRNAME, lambda meta: meta["pretrained"]["version"] == PRETRAIN_VERSION, build)


@dataclass
class PretrainRunConfig:
    """``python -m openpack_vlm.testing.pretrain``'s settings (the flags are generated from these fields)."""

    out: str | None = setting(None, "folder to write (default: the cache, replacing what is there)")
    steps: int = setting(STEPS, "pre-training steps of 32 frames")
    objective: str = setting("token", "read-out from every token (the default base) or from the frame's mean token "
                                      "(ablation)", choices=["token", "mean"])
    cached: bool = setting(False, "only make sure the cached copy exists (what the model id tiny-pretrained loads); "
                                  "prints its folder")


def main(argv=None) -> int:
    a, _ = parse(build_parser(PretrainRunConfig, prog="python -m openpack_vlm.testing.pretrain",
                              description=__doc__.split("\n\n")[0]), argv)
    if a.cached:
        path = pretrained_cached()
        meta = json.loads((path / "openpack_tiny.json").read_text())["pretrained"]
        print(f"{PRETRAINED_ID}: {path} (corpus {meta['frames']} frames, {meta['steps']} steps, read-out R^2 "
              f"{meta['r2_last_10pct']})")
        return 0
    if a.steps <= 0:
        print(f"error: --steps must be > 0 (got {a.steps})", file=sys.stderr)
        return 2
    if a.out is None:
        a.out = str(cache_dir() / PRETRAINED_DIRNAME)
    with atomic_path(Path(a.out), directory=True) as tmp:
        build_pretrained_tiny(tmp, steps=a.steps, objective=a.objective)
    meta = json.loads((Path(a.out) / "openpack_tiny.json").read_text())["pretrained"]
    print(f"wrote {a.out}: {meta['frames']} corpus frames, {meta['steps']} steps, read-out R^2 {meta['r2_last_10pct']}, "
          f"{meta['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
