"""A keypoint baseline users would pick instead of the VLM: a small temporal convolution network over each clip's
normalised 2D keypoints, trained on the same train split and scored with the same metrics as evaluate.py.

    python -m openpack_vlm.evaluation.keypoint_baseline --data D [--split test --n_clips 30 | --all] [--epochs 80]

Input per clip: the keypoint frame shown at each of the 125 ticks (the pose source's own mapping,
``sources.PoseFrameSource.source_indices``), centred on the clip's mean hip centre and divided by its median torso
length (so the body's size and place in the frame do not matter), x/y/score of the 17 joints plus their
frame-to-frame velocity: (125, 102). Network: 3 dilated 1-D convolutions (kernel 5, 64 channels) → per-frame
operation logits (125 x 11) and, from their mean and max over time, the dominant operation and the next operation.
Loss: the three cross-entropies. Answer: dominant = argmax; span = the longest run of frames whose per-frame argmax is
that operation (whole clip when there is none); next = argmax without Null (the truth never names Null).
Trains in seconds to about a minute on a CPU (~180 synthetic clips; OpenPack's train split is ~10x larger).
For scale: OpenPack's own ST-GCN keypoint baseline reaches macro-F1 0.70 on operation segmentation.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..cli import run_command, setting
from ..data import openpack
from ..data.clips import frame_labels
from ..labels import NAME_TO_ID, NULL_ID, OPERATION_IDS
from ..metrics import evaluate_predictions
from ..schema import CLIP_FRAMES

log = logging.getLogger("openpack_vlm.keypoint_baseline")
N_OPS = len(OPERATION_IDS)
_INDEX = {op: i for i, op in enumerate(OPERATION_IDS)}


class BaselineError(RuntimeError):
    """The baseline cannot run on these data (one-line message)."""


@dataclass
class BaselineConfig:
    """Keypoint baseline settings (its CLI flags are generated from these fields)."""

    data: str = setting(help="data_pipeline.py output dir D (manifests; D/summary.json names the OpenPack root)")
    split: str = setting("test", "split to score (test = the held-out user U0108)")
    n_clips: int = setting(30, "first N clips sorted by clip_id, as evaluate.py selects them")
    all_clips: bool = setting(False, "every clip of the split", aliases=["--all"])
    epochs: int = setting(80, "passes over the train split")
    hidden: int = setting(64, "channels of the temporal convolutions")
    lr: float = setting(3e-3, "Adam learning rate")
    seed: int = setting(0, "initialisation and shuffling")
    n_boot: int = setting(1000, "bootstrap resamples for the 95 % intervals")


# ----------------------------------------------------------------------------------------------------------- data
def _manifest(data: Path, split: str) -> list[dict]:
    path = data / split / "manifest.jsonl"
    if not path.is_file():
        raise BaselineError(f"no manifest for split {split!r}: {path}")
    return sorted((json.loads(line) for line in path.read_text().splitlines() if line.strip()),
                  key=lambda r: r["clip_id"])


def openpack_root(data: Path) -> Path:
    summary = data / "summary.json"
    root = json.loads(summary.read_text()).get("root") if summary.is_file() else None
    if not root or not Path(root).is_dir():
        raise BaselineError(f"{summary} names no OpenPack root on this machine ({root!r}): the baseline reads the "
                            "keypoints from it")
    return Path(root)


def features(kpts: np.ndarray) -> np.ndarray:
    """(T,17,3) keypoints → (T,102) float32: joints centred on the clip's mean hip centre, divided by its median
    torso length, with scores, plus frame-to-frame velocities."""
    k = np.asarray(kpts, dtype=np.float64)
    hip = (k[:, 11, :2] + k[:, 12, :2]) / 2
    neck = (k[:, 5, :2] + k[:, 6, :2]) / 2
    torso = float(np.median(np.linalg.norm(neck - hip, axis=-1))) or 1.0
    xy = (k[..., :2] - hip.mean(0)) / max(torso, 1.0)
    pos = np.concatenate([xy, k[..., 2:3]], -1).reshape(len(k), -1)
    vel = np.diff(pos, axis=0, prepend=pos[:1])
    return np.concatenate([pos, vel], -1).astype(np.float32)


class ClipKeypoints:
    """Keypoints of manifest clips at their 125 ticks, one keypoint stream per session loaded once."""

    def __init__(self, root: Path):
        self.root = root
        self._sources: dict = {}
        self._timelines: dict = {}

    def __call__(self, rec: dict) -> tuple[np.ndarray, np.ndarray]:
        """(125,17,3) keypoints and (125,) per-frame operation indices of a manifest record."""
        from ..data.sources import PoseFrameSource  # deferred: would load cv2 on import

        key = (rec["user"], rec["session"])
        if key not in self._sources:
            try:
                ts, k = openpack.load_keypoints(self.root, *key)
                self._timelines[key] = openpack.load_timeline(self.root, *key)
            except openpack.OpenPackError as e:
                raise BaselineError(str(e)) from None
            self._sources[key] = PoseFrameSource(ts, k)
        src = self._sources[key]
        idx = src.source_indices(int(rec["t0_ms"]))
        labels, _ = frame_labels(self._timelines[key], int(rec["t0_ms"]))
        return src.kpts[idx], np.array([_INDEX.get(int(x), _INDEX[NULL_ID]) for x in labels])


def _arrays(recs: list[dict], clips: ClipKeypoints):
    x, frame_y, dom_y, next_y = [], [], [], []
    for r in recs:
        k, lab = clips(r)
        x.append(features(k))
        frame_y.append(lab)
        dom_y.append(_INDEX[NAME_TO_ID[r["truth"]["dominant_operation"]]])
        next_y.append(_INDEX[NAME_TO_ID[r["truth"]["anticipated_next_operation"]]])
    return np.stack(x), np.stack(frame_y), np.array(dom_y), np.array(next_y)


# ---------------------------------------------------------------------------------------------------------- model
def build_net(n_in: int, hidden: int):
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            layers, c = [], n_in
            for d in (1, 2, 4):
                layers += [nn.Conv1d(c, hidden, 5, padding=2 * d, dilation=d), nn.GELU()]
                c = hidden
            self.body = nn.Sequential(*layers)
            self.frame = nn.Conv1d(hidden, N_OPS, 1)
            self.dom = nn.Linear(2 * hidden, N_OPS)
            self.next = nn.Linear(2 * hidden, N_OPS)

        def forward(self, x):  # x: (B, T, F)
            h = self.body(x.transpose(1, 2))  # (B, H, T)
            pooled = torch.cat([h.mean(-1), h.amax(-1)], -1)
            return self.frame(h).transpose(1, 2), self.dom(pooled), self.next(pooled)

    return Net()


def train_net(x, frame_y, dom_y, next_y, cfg: BaselineConfig):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(cfg.seed)
    net = build_net(x.shape[-1], cfg.hidden)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    X, FY, DY, NY = (torch.as_tensor(a) for a in (x, frame_y, dom_y, next_y))
    g = torch.Generator().manual_seed(cfg.seed)
    net.train()
    for _ in range(cfg.epochs):
        for batch in torch.randperm(len(X), generator=g).split(16):
            f, d, n = net(X[batch])
            loss = (F.cross_entropy(f.reshape(-1, N_OPS), FY[batch].reshape(-1)) + F.cross_entropy(d, DY[batch])
                    + F.cross_entropy(n, NY[batch]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    return net


def predict(net, x: np.ndarray) -> list[dict]:
    """Answers {op, span, next} (OpenPack ids, inclusive frame span) for feature arrays (N, T, F)."""
    import torch

    with torch.no_grad():
        f, d, n = net(torch.as_tensor(x))
    n[:, _INDEX[NULL_ID]] = -float("inf")
    out = []
    for frames, dom, nxt in zip(f.argmax(-1).numpy(), d.argmax(-1).numpy(), n.argmax(-1).numpy()):
        best, run_start, span = 0, None, (0, CLIP_FRAMES - 1)
        for t in range(len(frames) + 1):
            inside = t < len(frames) and frames[t] == dom
            if inside and run_start is None:
                run_start = t
            if not inside and run_start is not None:
                if t - run_start > best:
                    best, span = t - run_start, (run_start, t - 1)
                run_start = None
        out.append({"op": OPERATION_IDS[int(dom)], "span": span, "next": OPERATION_IDS[int(nxt)]})
    return out


def run(cfg: BaselineConfig) -> dict:
    """Train on the train split, answer the chosen clips of ``cfg.split``, score them like evaluate.py."""
    data = Path(cfg.data)
    t0 = time.perf_counter()
    clips = ClipKeypoints(openpack_root(data))
    train = _manifest(data, "train")
    if not train:
        raise BaselineError(f"{data / 'train'} has no clips")
    test = _manifest(data, cfg.split)
    test = test if cfg.all_clips else test[:cfg.n_clips]
    net = train_net(*_arrays(train, clips), cfg)
    t_train = time.perf_counter() - t0
    x, _, _, _ = _arrays(test, clips)
    answers = predict(net, x)
    records = []
    for r, a in zip(test, answers):
        t = r["truth"]
        seg = t["temporal_segment"]
        records.append({"true_op": NAME_TO_ID[t["dominant_operation"]], "pred_op": a["op"],
                        "true_span": (int(seg["start_frame"]), int(seg["end_frame"])), "pred_span": a["span"],
                        "true_next": NAME_TO_ID[t["anticipated_next_operation"]], "pred_next": a["next"]})
    m = evaluate_predictions(records, n_boot=cfg.n_boot, seed=cfg.seed)
    return {"OCA": m["OCA"], "tIoU@0.5": m["tIoU@0.5"], "AA@1": m["AA@1"], "intervals": m["intervals"],
            "n_clips": len(records), "train_clips": len(train), "train_seconds": round(t_train, 1),
            "model": f"temporal conv net over normalised 2D keypoints (3 dilated conv layers, {cfg.hidden} channels, "
                     f"{cfg.epochs} epochs)", "config": asdict(cfg)}


def main(argv=None) -> int:
    cfg, r = run_command(BaselineConfig, argv, run, (BaselineError, OSError, ValueError),
                         prog="python -m openpack_vlm.evaluation.keypoint_baseline", description=__doc__.split("\n")[0])
    if r is None:
        return 1
    iv = r["intervals"]
    print(f"keypoint baseline on {r['n_clips']} {cfg.split} clips (trained on {r['train_clips']} clips in "
          f"{r['train_seconds']} s): " + "  ".join(f"{k} {r[k]:.3f} [{iv[k][0]:.2f},{iv[k][1]:.2f}]"
                                                  for k in ("OCA", "tIoU@0.5", "AA@1")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
