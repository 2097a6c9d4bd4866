"""Output contract of the whole project: the API response, the evaluation record and the training target.

``Prediction`` is the JSON that ``POST /predict`` returns. ``ClipTruth`` is the ground truth a data-pipeline clip
carries; its model-visible part (``target_dict``) is the assistant's answer during training.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .labels import OPERATION_NAMES, to_name

CLIP_SECONDS = 5.0  # every clip is 5 s ...
FPS = 25  # ... normalised to 25 fps ...
CLIP_FRAMES = int(CLIP_SECONDS * FPS)  # ... so 125 frames, indices 0..124

OperationName = Literal[OPERATION_NAMES]  # type: ignore[valid-type]


class TemporalSegment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start_frame: int = Field(ge=0, le=CLIP_FRAMES - 1, description="first frame of the dominant operation (0-124)")
    end_frame: int = Field(ge=0, le=CLIP_FRAMES - 1, description="last frame of the dominant operation (0-124)")

    @model_validator(mode="after")
    def _ordered(self) -> "TemporalSegment":
        if self.start_frame > self.end_frame:
            raise ValueError(f"start_frame {self.start_frame} > end_frame {self.end_frame}")
        return self


class _OpFields(BaseModel):
    @field_validator("dominant_operation", "anticipated_next_operation", mode="before", check_fields=False)
    @classmethod
    def _canonical(cls, v):
        # accept IDs and assignment aliases, store the canonical OpenPack name
        return to_name(v)


class Prediction(_OpFields):
    """The API's answer for one clip."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "clip_id": "U0108_S0500_t0035",
                "dominant_operation": "Insert Items",
                "temporal_segment": {"start_frame": 0, "end_frame": 87},
                "anticipated_next_operation": "Close Box",
                "confidence": 0.83,
            }
        },
    )
    clip_id: str
    dominant_operation: OperationName
    temporal_segment: TemporalSegment
    anticipated_next_operation: OperationName
    confidence: float = Field(ge=0.0, le=1.0, description="model probability of dominant_operation")


class RawAnswer(BaseModel):
    """What the model is trained to write, read strictly: exact OpenPack names (no IDs or aliases), integer frames,
    an ordered span inside the clip (``TemporalSegment``). Other keys are ignored (``model.answers.check_raw_text``)."""

    model_config = ConfigDict(strict=True)
    dominant_operation: OperationName
    temporal_segment: TemporalSegment
    anticipated_next_operation: OperationName


class ClipTruth(_OpFields):
    """Ground truth of one clip (frame indices in the 25-fps clip, 0..124)."""

    model_config = ConfigDict(extra="forbid")
    dominant_operation: OperationName
    temporal_segment: TemporalSegment
    anticipated_next_operation: OperationName

    def target_dict(self) -> dict:
        """What the model is trained to write (clip_id is known to the caller; confidence is computed, not written)."""
        return {
            "dominant_operation": self.dominant_operation,
            "temporal_segment": self.temporal_segment.model_dump(),
            "anticipated_next_operation": self.anticipated_next_operation,
        }
