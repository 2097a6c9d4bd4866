"""The run contract: one typed, versioned ``run.json`` that travels with the artefacts, so what is served is what was
trained and evaluated.

Who writes what (each phase copies the record it was given and adds its own section):
  data_pipeline.py  D/run.json  ``data``: what shapes a sample — source, fps, clip length, K, frame size, spatial rule,
                                JPEG quality, sampler and its parameters, class list, split users, clip settings,
                                and the grammar file (name + sha256)
  training          R/run.json  + ``training``: base model, quantization, LoRA and optimiser settings (grammar.json
                                copied beside it)
  evaluate.py       E/run.json  + ``evaluation``: the fusion weight tuned on val and its mode; R/run.json is updated
                    (and R/run.json) with the same section, so serving the adapter serves the tuned weight
Readers: ``Predictor.from_pretrained`` and serve.py (``find_run`` beside the adapter) apply it — same K, sampler
parameters, frame size, JPEG round trip of the sampled frames, grammar and tuned weight — and ``/ready`` reports it.
A setting that disagrees with the record is a ``ContractError`` at load time naming both values. A run without the
record (made before it existed) loads with a warning saying what is assumed (``assumed_contract``).
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .io_utils import read_json, write_json
from .labels import ID_TO_NAME
from .prompt import SPAN_FORMATS
from .schema import CLIP_FRAMES, FPS

VERSION = 1
RUN_FILE = "run.json"
# data settings that must agree between the data answered and the data the adapter was trained on
SAMPLE_SHAPING = ("k", "frame_size", "spatial", "jpeg_quality", "sampler", "fps", "clip_frames", "classes",
                  "pose_render")
SPATIAL_RULE = "letterbox"  # data/letterbox.py: whole frame scaled to fit, black bars (the only rule implemented)

log = logging.getLogger("openpack_vlm.contract")


class ContractError(ValueError):
    """A run record that is missing, malformed or disagrees with a setting (one-line message)."""


def class_list() -> list[list]:
    """The OpenPack classes as [[id, name], ...] (labels.py), the form the contract records."""
    return [[int(i), n] for i, n in ID_TO_NAME.items()]


def file_sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class SamplingConfig:
    """The motion-adaptive sampler's settings (data/sampling.py), recorded in ``data.sampler.params``."""

    k: int = 8  # frames shown to the model per clip (8 x 144 visual tokens at 336 px)
    floor: float = 0.25  # added weight per frame, as a fraction of the clip's mean motion (0 = pure motion)
    bin_frames: int = FPS  # coverage bins of one second (25 frames): each gets >= 1 sample when K allows
    diff_stride: int = 8  # pixel stride of the grey copy used for differencing (336/8 = 42 px)
    smooth: int = 3  # moving-average window (frames) over the motion signal; 1 = none
    anchor_ends: bool = True  # always show the first and last frame (the clip's edges bound the answer's segment)


@dataclass
class DataSection:
    """What shapes a sample; written by the data pipeline."""

    source: str  # requested frame source: auto | rgb | pose (per-clip sources in the manifests)
    k: int  # sampled frames per clip
    jpeg_quality: int  # quality of the stored frames; serving round-trips its sampled frames through it
    sampler: dict  # {"name": "motion", "params": sampling.SamplingConfig fields, "pose_motion": ...}
    splits: dict  # split name -> users
    seed: int = 0
    within_share: float = 0.2
    null_boundaries: bool = False
    sessions: list | None = None
    max_clips_per_session: int | None = None
    fps: int = FPS
    clip_frames: int = CLIP_FRAMES
    frame_size: int = 336
    spatial: str = SPATIAL_RULE
    classes: list = field(default_factory=class_list)
    grammar: dict | None = None  # {"file": "grammar.json", "sha256": ...}; None until the train split is fitted
    pose_render: dict | None = None  # skeleton.PoseRender fields for pose clips; None = the first (whole-frame)
    #                                  renderer, which runs made before this field used
    answer_span: str = "clip"  # how the answer's span is written (prompt.SPAN_FORMATS): "shown" = the first/last
    #                            sampled frame inside it; "clip" = exact clip frames, what runs before this field wrote
    time_bar: bool = False  # sampled frames carry the time bar (data/timebar.py); runs before this field: none
    frames: str | None = None  # what the clips showed, from their sources: "pose" (rendered skeletons) | "rgb"
    #                            (camera frames or video) | "mixed"; None = runs before this field (read from source)

    def settings(self) -> dict:
        """The fields a resumed pipeline run must match (everything but what the run produces: grammar, frames)."""
        d = asdict(self)
        d.pop("grammar")
        d.pop("frames")
        return d

    def served_frames(self) -> str:
        """What a served model must be shown: "pose" (keypoints estimated from the video, rendered as in training)
        or "rgb" (the camera frames). ContractError for a run that trained on both, which no single input suits."""
        kind = self.frames
        if kind is None:  # runs before the field: what was asked for ("auto" took camera frames where they existed)
            kind = "pose" if self.source == "pose" else "rgb"
        if kind not in ("pose", "rgb"):
            raise ContractError(f"the run's clips mixed skeleton and camera frames (data.frames={kind!r}): serving "
                                "cannot show it both; rebuild the data with --source pose or --source rgb")
        return kind


@dataclass
class TrainingSection:
    """What shaped the weights; written by training."""

    model_id: str
    quantization: str
    settings: dict  # TrainConfig as JSON (LoRA r/alpha/dropout, steps, LR, batch, ...)
    data_dir: str | None = None
    vision_lora: bool = False  # the adapter also changes the vision tower + merger (loading.VISION_LINEAR_RE): a
    #                            server that merges or swaps adapters must apply it to the tower too
    frame_head: bool = False  # the adapter carries a frame head (model/frame_head.py): the predictor reads the span
    #                           and weighs the dominant operation from it; a server without it answers from text only


@dataclass
class EvaluationSection:
    """How answers are fused; written by evaluate.py."""

    fuse_weight: float | None  # grammar weight in [0, 1]; None = no grammar fusion
    fuse_mode: str = "linear"
    tuned_on: str = ""  # e.g. "val: first 30 clips" or "given (--fuse-weight)"
    eval_dir: str | None = None
    temperature: float | None = None  # of the dominant-operation confidence, fitted on val (evaluation/calibration.py);
    #                                   None = 1 (runs evaluated before it existed)


def _section(cls, d: Any, where: str):
    if d is None:
        return None
    if not isinstance(d, dict):
        raise ContractError(f"{where}: section {cls.__name__} is not an object")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ContractError(f"{where}: unknown key(s) {', '.join(unknown)} in {cls.__name__} (written by a newer "
                            f"openpack-vlm?)")
    try:
        return cls(**d)
    except TypeError as e:
        raise ContractError(f"{where}: {cls.__name__} is incomplete ({e})") from None


@dataclass
class RunContract:
    data: DataSection
    training: TrainingSection | None = None
    evaluation: EvaluationSection | None = None
    version: int = VERSION
    path: Path | None = field(default=None, repr=False, compare=False)  # the file it was loaded from (not saved)

    # ------------------------------------------------------------------------------------------- persistence
    def to_json(self) -> dict:
        return {"version": self.version, "data": asdict(self.data),
                "training": None if self.training is None else asdict(self.training),
                "evaluation": None if self.evaluation is None else asdict(self.evaluation)}

    def save(self, directory_or_file: str | os.PathLike) -> Path:
        p = Path(directory_or_file)
        path = p if p.suffix == ".json" else p / RUN_FILE
        return write_json(path, self.to_json())

    @classmethod
    def from_json(cls, d: Any, where: str = RUN_FILE) -> "RunContract":
        if not isinstance(d, dict) or "data" not in d:
            raise ContractError(f"{where} is not a run contract (no \"data\" section)")
        if d.get("version") != VERSION:
            raise ContractError(f"{where}: run contract version {d.get('version')!r} is not supported "
                                f"(this openpack-vlm reads version {VERSION})")
        return cls(data=_section(DataSection, d["data"], where),
                   training=_section(TrainingSection, d.get("training"), where),
                   evaluation=_section(EvaluationSection, d.get("evaluation"), where))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RunContract":
        p = Path(path)
        p = p / RUN_FILE if p.is_dir() else p
        c = cls.from_json(read_json(p, "run contract", ContractError), str(p))
        c.path = p
        return c

    # ------------------------------------------------------------------------------------------- applying it
    def sampling_config(self):
        """The serving-side sampler: the pipeline's parameters with the run's K."""
        params = dict(self.data.sampler.get("params") or {})
        names = {f.name for f in fields(SamplingConfig)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise ContractError(f"{self.where}: sampler parameter(s) {', '.join(unknown)} unknown to this code")
        return SamplingConfig(**{**params, "k": self.data.k})

    @property
    def where(self) -> str:
        return str(self.path) if self.path else RUN_FILE

    def grammar_path(self) -> Path | None:
        g = self.data.grammar
        if not g:
            return None
        base = self.path.parent if self.path else Path(".")
        return base / g["file"]

    def check(self, frame_size: int, frames_per_clip: int | None = None) -> None:
        """Raise ContractError (one line, both values) where this code or a setting disagrees with the record."""
        d = self.data
        if d.fps != FPS or d.clip_frames != CLIP_FRAMES:
            raise ContractError(f"{self.where}: clips of {d.clip_frames} frames at {d.fps} fps, but this code makes "
                                f"{CLIP_FRAMES} at {FPS} fps")
        if d.frame_size != frame_size:
            raise ContractError(f"{self.where}: frame size {d.frame_size} px, but this server renders {frame_size} px")
        if d.spatial != SPATIAL_RULE:
            raise ContractError(f"{self.where}: spatial rule {d.spatial!r}, but this code implements {SPATIAL_RULE!r}")
        if [list(c) for c in d.classes] != class_list():
            raise ContractError(f"{self.where}: class list {[c[1] for c in d.classes]} differs from this code's "
                                f"{[c[1] for c in class_list()]}")
        if d.answer_span not in SPAN_FORMATS:
            raise ContractError(f"{self.where}: answer span format {d.answer_span!r} is not one this code reads "
                                f"({', '.join(SPAN_FORMATS)})")
        if frames_per_clip is not None and frames_per_clip != d.k:
            raise ContractError(f"FRAMES_PER_CLIP={frames_per_clip} but the run was trained on K={d.k} frames per "
                                f"clip ({self.where})")
        if self.evaluation is not None and self.evaluation.fuse_weight is not None:
            w = self.evaluation.fuse_weight
            if not 0.0 <= w <= 1.0:
                raise ContractError(f"{self.where}: fuse_weight {w} is outside [0, 1]")
        t = self.evaluation.temperature if self.evaluation is not None else None
        if t is not None and not (isinstance(t, (int, float)) and 0 < t < float("inf")):
            raise ContractError(f"{self.where}: temperature {t!r} is not a positive number")

    def check_same_samples(self, data: "RunContract") -> None:
        """The data to be answered (its D/run.json) was shaped as this run's training data: a model trained on K=16
        frames is not scored on K=8 clips. ContractError names the first setting that differs and both values."""
        for key in SAMPLE_SHAPING:
            mine, theirs = getattr(self.data, key), getattr(data.data, key)
            if mine != theirs:
                raise ContractError(f"{key} differs: the adapter's run ({self.where}) has {mine!r}, the data to "
                                    f"evaluate ({data.where}) {theirs!r}")

    def check_grammar(self, grammar_file: Path) -> None:
        """The grammar file is the one the run recorded (same bytes), and it names only this code's classes."""
        g = self.data.grammar
        if g and g.get("sha256") and file_sha256(grammar_file) != g["sha256"]:
            raise ContractError(f"{grammar_file} is not the grammar recorded in {self.where} "
                                f"(sha256 {file_sha256(grammar_file)[:12]}… vs {g['sha256'][:12]}…)")

    def summary(self) -> dict:
        """What /ready and logs report."""
        e = self.evaluation
        return {"path": self.where, "version": self.version, "k": self.data.k, "source": self.data.source,
                "frames": self.data.frames,
                "frame_size": self.data.frame_size, "jpeg_quality": self.data.jpeg_quality,
                "sampler": self.data.sampler.get("name"), "answer_span": self.data.answer_span,
                "time_bar": self.data.time_bar,
                "model_id": self.training.model_id if self.training else None,
                "vision_lora": self.training.vision_lora if self.training else None,
                "frame_head": self.training.frame_head if self.training else None,
                "fuse_weight": e.fuse_weight if e else None, "fuse_mode": e.fuse_mode if e else None,
                "temperature": e.temperature if e else None,
                "tuned_on": e.tuned_on if e else None}


def find_run(adapter: str | os.PathLike | None) -> Path | None:
    """The run contract of an adapter: ``{adapter}/run.json``, else the run dir's ``{adapter}/../run.json``
    (training writes R/adapter and R/run.json); a run dir R itself is accepted too."""
    if adapter is None:
        return None
    a = Path(adapter)
    for p in (a / RUN_FILE, a.parent / RUN_FILE):
        if p.is_file():
            return p
    return None


def assumed_contract(where: str) -> RunContract:
    """The record an old run (made before run.json existed) is served by: the pipeline's defaults. Logged."""
    s = SamplingConfig()
    c = RunContract(data=DataSection(source="auto", k=s.k, jpeg_quality=90, sampler={"name": "motion", "params": asdict(s)},
                                     splits={}))
    log.warning("%s has no %s (made before run contracts existed): assuming K=%d, motion sampler, %d px letterbox, "
                "JPEG q90 round trip, grammar.json beside it with the weight in its meta", where, RUN_FILE, s.k, 336)
    return c
