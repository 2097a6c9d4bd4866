"""Where the operation is lost: linear probes on a tiny model's visual tokens and on its LM's answer position.

    OMP_NUM_THREADS=2 python scripts/visual_probe.py --data D [--model tiny-real|tiny-pretrained|DIR] [--json OUT]

For every clip of D's train and test splits (data_pipeline.py output), the UNTRAINED model's
  * visual tokens (vision tower + merger output), averaged over the clip's frames, kept per position (144 x hidden):
    is the operation in the tokens at all?
  * the same tokens averaged over positions too (hidden): does it survive the averaging an untrained LM's
    near-uniform attention does?
  * the LM's hidden state at the position that writes the dominant operation (after ``"dominant_operation": "``), per
    layer: does it reach the answer?
A logistic regression (features scaled by one global std, C=10) is fitted on train and scored on test (accuracy),
beside the test split's majority share. Also printed: how LARGE the clip-to-clip variation of the mean visual token is
next to the token itself (std across clips of the mean token / mean token norm): a weak signal that a probe with
scaled features still finds can be too small for a few hundred LoRA steps to amplify.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def features(model, processor, clips) -> tuple[dict, list]:
    import numpy as np
    import torch

    from openpack_vlm.evaluation.selection import truth_ids
    from openpack_vlm.model.train_data import Collator

    col = Collator(processor)
    marker = processor.tokenizer('{"dominant_operation": "', add_special_tokens=False)["input_ids"]
    feats: dict[str, list] = {}
    ys = []
    for rec, frames in clips:
        batch = col([(rec, frames)])
        batch.pop("labels")
        ids = batch["input_ids"][0].tolist()
        pos = max(i for i in range(len(ids) - len(marker)) if ids[i:i + len(marker)] == marker) + len(marker) - 1
        with torch.no_grad():
            vis = model.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"])
            vis = vis.pooler_output if getattr(vis, "pooler_output", None) is not None else vis
            out = model(**batch, output_hidden_states=True)
        per_frame = vis.reshape(len(frames), -1, vis.shape[-1]).mean(0).numpy()  # (positions, hidden)
        feats.setdefault("visual tokens, per position", []).append(per_frame.reshape(-1))
        feats.setdefault("visual tokens, mean", []).append(per_frame.mean(0))
        for layer, h in enumerate(out.hidden_states):
            feats.setdefault(f"LM answer position, layer {layer}", []).append(h[0, pos].numpy())
        ys.append(truth_ids(rec)["op"])
    return {k: np.array(v) for k, v in feats.items()}, ys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default="tiny-real")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    import torch
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoModelForImageTextToText

    from openpack_vlm.evaluation.selection import load_clips, select_clips
    from openpack_vlm.model.loading import load_processor
    from openpack_vlm.model.loading import resolve_model_id

    torch.manual_seed(0)
    data = Path(a.data)
    processor = load_processor(a.model)
    model = AutoModelForImageTextToText.from_pretrained(resolve_model_id(a.model)).eval()
    tr, ytr = features(model, processor, load_clips(data, "train", select_clips(data, "train", None)))
    te, yte = features(model, processor, load_clips(data, "test", select_clips(data, "test", None)))
    import numpy as np

    mean_tok = tr["visual tokens, mean"]
    rel = float(np.linalg.norm(mean_tok.std(0)) / np.linalg.norm(mean_tok, axis=1).mean())
    rows = {"model": a.model, "train_clips": len(ytr), "test_clips": len(yte),
            "test_majority_share": Counter(yte).most_common(1)[0][1] / len(yte),
            "mean_token_variation_over_norm": round(rel, 4), "probes": {}}
    print(f"{'mean visual token: clip-to-clip std / norm':40s} {rel:.4f}")
    for name in tr:
        scale = tr[name].std() + 1e-12  # one scale for all features: the probe sees the same geometry
        clf = LogisticRegression(max_iter=5000, C=10.0).fit(tr[name] / scale, ytr)
        rows["probes"][name] = round(float(clf.score(te[name] / scale, yte)), 3)
        print(f"{name:40s} test accuracy {rows['probes'][name]:.3f}", flush=True)
    print(f"{'majority class of the test split':40s} {rows['test_majority_share']:.3f}")
    if a.json:
        from openpack_vlm.io_utils import write_json

        write_json(a.json, rows, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
