"""5-second clips (125 frames at 25 fps) cut from a session's operation timeline, with their ground truth.

Placement (``make_clips``):
* one "boundary" clip per operation boundary: the clip is centred on the boundary plus a seeded jitter of at most
  +-0.5 s, so it starts inside one operation and ends inside the next. Boundaries with Null (8100) on either side are
  left out by default (``ClipConfig.null_boundaries``): Null marks gaps in the annotation, not work the model should
  name; Null can still fill part of a clip and, rarely, dominate it.
* a share of "within" clips (``within_share`` of all clips) lying entirely inside one operation at least 5 s long,
  placed at seeded random offsets in operations drawn by length.
* clips that do not fit inside the annotated timeline are dropped; clips whose dominant operation has no next
  operation (end of the session) are dropped and reported.

Truth (``clip_truth``), per output frame i at time t0 + 40*i ms (the frame's timestamp decides its label):
* dominant_operation = the operation with the most frames (tie: the one with the longer run, then the earlier);
* temporal_segment   = first and last frame (0-124) of that operation's longest run in the clip (tie: the first);
* anticipated_next_operation = the first operation after that run in the session timeline that is neither Null nor
  the dominant operation itself (the grammar's notion of "next": Null skipped, repeats merged).
clip_id = ``{user}_{session}_t{start_s:04d}`` with start_s = whole seconds from the session's first annotation to
the clip's first frame; ids that collide within a session (two clips starting in the same second) get ``_1``,
``_2``, ... in start-time order, so ids are unique within a split and stable across runs.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from ..labels import NULL_ID, to_name
from ..schema import CLIP_FRAMES, FPS, ClipTruth
from .timegrid import at_or_before, tick_times

CLIP_MS = CLIP_FRAMES * 1000 // FPS  # 5000 ms


class ClipError(ValueError):
    """A clip that cannot be given a ground truth (message is one line)."""


@dataclass
class ClipConfig:
    jitter_ms: int = 500  # boundary lies within +-0.5 s of the clip centre
    within_share: float = 0.2  # share of all clips placed inside one operation (no boundary)
    null_boundaries: bool = False  # also cut clips at boundaries with Null on one side
    seed: int = 0


@dataclass
class ClipSpec:
    clip_id: str
    user: str
    session: str
    t0_ms: int  # unixtime (ms) of clip frame 0
    truth: ClipTruth
    kind: str  # "boundary" | "within"
    boundary_frame: int | None  # first clip frame whose label differs from frame 0's, if any
    labels: list[int] = field(repr=False, default_factory=list)  # op id per clip frame (125)

    @property
    def boundaries(self) -> list[int]:
        """Clip frames at which the label changes (frame i differs from frame i-1)."""
        return [i for i in range(1, len(self.labels)) if self.labels[i] != self.labels[i - 1]]


def _check_timeline(timeline) -> None:
    if not timeline:
        raise ClipError("empty timeline")
    for a, b in zip(timeline, timeline[1:]):
        if b.start_ms < a.end_ms:
            raise ClipError(f"timeline segments overlap or are unsorted at {b.start_ms} ms")


def frame_labels(timeline, t0_ms: int, n: int = CLIP_FRAMES, fps: int = FPS) -> tuple[list[int], list[int]]:
    """Op id and timeline-segment index of each clip frame (frame i at t0 + round(1000*i/fps) ms).

    Raises ClipError if a frame falls outside the timeline or in a gap between segments.
    """
    starts = np.array([s.start_ms for s in timeline], dtype=np.int64)
    ends = np.array([s.end_ms for s in timeline], dtype=np.int64)
    ticks = tick_times(t0_ms, n, fps)
    seg = at_or_before(starts, ticks, clip=False)
    bad = (seg < 0) | (ticks >= ends[np.clip(seg, 0, len(ends) - 1)])
    if bad.any():
        t = int(ticks[np.argmax(bad)])
        raise ClipError(f"clip frame at t={t} ms lies outside the annotated timeline "
                        f"[{int(starts[0])}, {int(ends[-1])}) ms")
    return [int(timeline[s].op_id) for s in seg], [int(s) for s in seg]


def _runs(labels: list[int]) -> list[tuple[int, int, int]]:
    """(op, first, last) for each run of equal labels."""
    runs, start = [], 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            runs.append((labels[start], start, i - 1))
            start = i
    return runs


def next_operation(timeline, seg_index: int, op_id: int) -> int | None:
    """First op after timeline[seg_index] that is neither Null nor ``op_id``; None at the end of the session."""
    for s in timeline[seg_index + 1 :]:
        if s.op_id != NULL_ID and s.op_id != op_id:
            return int(s.op_id)
    return None


def truth_from_labels(timeline, labels: list[int], segs: list[int]) -> ClipTruth:
    """Ground truth from per-frame op ids and segment indices (see module doc for the rules)."""
    runs = _runs(labels)
    counts: dict[int, int] = {}
    for op in labels:
        counts[op] = counts.get(op, 0) + 1
    longest: dict[int, tuple[int, int]] = {}
    for op, a, b in runs:
        if op not in longest or (b - a) > (longest[op][1] - longest[op][0]):
            longest[op] = (a, b)
    first_seen = {op: a for op, a, _ in reversed(runs)}
    dominant = min(counts, key=lambda op: (-counts[op], -(longest[op][1] - longest[op][0]), first_seen[op]))
    a, b = longest[dominant]
    nxt = next_operation(timeline, segs[b], dominant)
    if nxt is None:
        raise ClipError(f"no operation follows {to_name(dominant)} in the session (end of timeline)")
    return ClipTruth(
        dominant_operation=to_name(dominant),
        temporal_segment={"start_frame": a, "end_frame": b},
        anticipated_next_operation=to_name(nxt),
    )


def clip_truth(timeline, t0_ms: int) -> ClipTruth:
    """Ground truth of the 5-s clip whose frame 0 is at unixtime ``t0_ms`` (ms)."""
    _check_timeline(timeline)
    labels, segs = frame_labels(timeline, t0_ms)
    return truth_from_labels(timeline, labels, segs)


def clip_id_for(user: str, session: str, t0_ms: int, session_start_ms: int) -> str:
    start_s = max(0, (int(t0_ms) - int(session_start_ms)) // 1000)
    return f"{user}_{session}_t{start_s:04d}"


def session_rng(seed: int, user: str, session: str) -> np.random.Generator:
    """A generator that depends only on (seed, user, session): clips do not change when other sessions do."""
    h = int.from_bytes(hashlib.sha256(f"{seed}/{user}/{session}".encode()).digest()[:8], "little")
    return np.random.default_rng(h)


def make_clips(timeline, user: str, session: str, cfg: ClipConfig | None = None,
               skipped: list[dict] | None = None) -> list[ClipSpec]:
    """Boundary and within-operation clips of one session, sorted by start time, with unique ids.

    ``skipped`` (optional) receives one dict per dropped clip: {"user", "session", "t0_ms", "reason"}.
    """
    cfg = cfg or ClipConfig()
    _check_timeline(timeline)
    rng = session_rng(cfg.seed, user, session)
    t_start, t_end = int(timeline[0].start_ms), int(timeline[-1].end_ms)
    half = CLIP_MS // 2
    placed: list[tuple[int, str]] = []

    # boundary clips: centre = boundary + jitter, clamped to the timeline while the boundary stays within jitter
    for prev, nxt in zip(timeline, timeline[1:]):
        if prev.op_id == nxt.op_id:
            continue  # not a boundary (unmerged timeline)
        if not cfg.null_boundaries and NULL_ID in (prev.op_id, nxt.op_id):
            continue
        b = int(nxt.start_ms)
        jitter = int(rng.integers(-cfg.jitter_ms, cfg.jitter_ms + 1))
        lo, hi = max(t_start, b - half - cfg.jitter_ms), min(t_end - CLIP_MS, b - half + cfg.jitter_ms)
        if lo > hi:
            if skipped is not None:
                skipped.append({"user": user, "session": session, "t0_ms": b - half,
                                "reason": "boundary too close to the start/end of the timeline for a 5-s clip"})
            continue
        placed.append((int(min(max(b - half + jitter, lo), hi)), "boundary"))

    # within-operation clips, drawn from operations >= 5 s long with probability proportional to spare length
    n_boundary = len(placed)
    n_within = int(round(cfg.within_share / (1 - cfg.within_share) * n_boundary)) if cfg.within_share < 1 else 0
    long_segs = [s for s in timeline if s.op_id != NULL_ID and s.end_ms - s.start_ms >= CLIP_MS]
    if n_within and long_segs:
        spare = np.array([s.end_ms - s.start_ms - CLIP_MS + 1 for s in long_segs], dtype=np.float64)
        picks = rng.choice(len(long_segs), size=n_within, p=spare / spare.sum())
        for k in picks:
            s = long_segs[int(k)]
            placed.append((int(s.start_ms + rng.integers(0, s.end_ms - s.start_ms - CLIP_MS + 1)), "within"))

    placed.sort()
    specs: list[ClipSpec] = []
    seen: dict[str, int] = {}
    for t0, kind in placed:
        try:
            labels, segs = frame_labels(timeline, t0)
            truth = truth_from_labels(timeline, labels, segs)
        except ClipError as e:
            if skipped is not None:
                skipped.append({"user": user, "session": session, "t0_ms": t0, "reason": str(e)})
            continue
        base = clip_id_for(user, session, t0, t_start)
        n = seen.get(base, 0)
        seen[base] = n + 1
        cid = base if n == 0 else f"{base}_{n}"
        changes = [i for i in range(1, len(labels)) if labels[i] != labels[i - 1]]
        specs.append(ClipSpec(cid, user, session, t0, truth, kind, changes[0] if changes else None, labels))
    return specs
