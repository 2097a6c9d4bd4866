"""An oracle predictor for timeline tests: it reads each frame's operation from the synthetic camera video's colour
panel (data/synthetic.write_session_video) and answers like the Predictor, so the windowing, the merge rule and
the cycle times are tested against a known truth without a trained model."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from openpack_vlm.testing.worker import BOX_CYCLE, OP_COLORS, PANEL_BOX
from openpack_vlm.labels import ID_TO_NAME, NULL_ID, OPERATION_NAMES
from openpack_vlm.schema import Prediction

_IDS = list(OP_COLORS)
_RGB = np.array([OP_COLORS[i] for i in _IDS], np.float64)


def frame_ops(frames: np.ndarray, aspect: float = 16 / 9) -> np.ndarray:
    """The operation id each letterboxed 336x336 frame shows (nearest panel colour at the panel's top-left)."""
    size = frames.shape[1]
    h = size / aspect
    x = int(size * (PANEL_BOX[0] + 0.03))
    y = int((size - h) / 2 + h * (PANEL_BOX[1] + 0.03))
    px = frames[:, y - 1:y + 2, x - 1:x + 2].reshape(len(frames), -1, 3).mean(1)
    d = ((px[:, None, :] - _RGB[None]) ** 2).sum(-1)
    return np.array(_IDS)[np.argmin(d, 1)]


@dataclass
class OracleResult:
    prediction: Prediction
    scores: dict = field(default_factory=dict)


class OraclePredictor:
    grammar = None
    info = {"model_id": "oracle"}

    def __init__(self):
        self.calls = 0

    def answer(self, frames: np.ndarray, clip_id: str) -> OracleResult:
        ops = frame_ops(frames)
        dom = Counter(ops.tolist()).most_common(1)[0][0]
        best, run_start, i = (0, 0, -1), None, 0
        for i, o in enumerate(ops.tolist() + [None]):
            if o == dom and run_start is None:
                run_start = i
            elif o != dom and run_start is not None:
                best = max(best, (i - run_start, run_start, i - 1))
                run_start = None
        _, s, e = best
        after = [o for o in ops[e + 1:].tolist() if o not in (dom, NULL_ID)]
        nxt = after[0] if after else BOX_CYCLE[(BOX_CYCLE.index(dom) + 1) % len(BOX_CYCLE)] if dom in BOX_CYCLE else 100
        dist = {n: 0.01 for n in OPERATION_NAMES}
        dist[ID_TO_NAME[dom]] = 0.9
        nd = {n: 0.01 for n in OPERATION_NAMES}
        nd[ID_TO_NAME[nxt]] = 0.9
        pred = Prediction(clip_id=clip_id, dominant_operation=ID_TO_NAME[dom],
                          temporal_segment={"start_frame": s, "end_frame": e},
                          anticipated_next_operation=ID_TO_NAME[nxt], confidence=0.9)
        return OracleResult(pred, {"dominant": dist, "next_model": nd, "frame_indices": list(range(0, 125, 16))})

    def predict_clips(self, clips, clip_ids, motions=None):
        self.calls += 1
        return [self.answer(c, i) for c, i in zip(clips, clip_ids)]

    def predict_clip(self, clip, clip_id, motion=None):
        return self.predict_clips([clip], [clip_id])[0]
