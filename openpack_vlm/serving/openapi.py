"""What the API says about itself in its OpenAPI page (``/docs``): the description, quoting ``video.to_clip``'s own rule,
and the error responses every route and the upload routes document."""
from __future__ import annotations

from ..data.video import to_clip
from ..schema import CLIP_FRAMES, CLIP_SECONDS, FPS
from .uploads import ErrorBody

API_DESCRIPTION = f"""
Operation understanding for 5-second clips of an OpenPack packaging worker, by a (QLoRA-tuned) Qwen2-VL.
Whole recordings: **POST /timeline** (below). A web page to try both: **GET /**.

**POST /predict** takes one video as multipart field `file` (optional form field `clip_id`; default: the file name
without extension, reduced to letters, digits, `_` and `-`). The video is recognised by its bytes, not by its name or
declared type: any container/codec libav decodes (MP4/H.264, AVI/MJPEG, WebM/VP9, MKV, ...), any frame size or
frame rate.

Normalisation (the same as training): frames are taken at {FPS} fps by their timestamps and resized to 336×336 (whole
frame, letterboxed); the clip is then made exactly {CLIP_FRAMES} frames ({CLIP_SECONDS:g} s) by `video.to_clip`
(n = {CLIP_FRAMES}):

{{to_clip_rule}}

**Skeleton runs** (the served run's `data.frames` is `pose`, shown by `/ready` as `input.frames`): the model was
trained on skeleton frames rendered from OpenPack's 2D keypoints, so it is never shown camera pixels. The video's
frames are taken at 15 Hz (the Kinect keypoint rate), one person's COCO-17 keypoints are estimated on them (MediaPipe
Pose; `POSE_ROI` says where the worker stands, else a worker too small for the detector is searched in crops), and
the skeleton clip is rendered and sampled exactly as in training (the keypoints' motion picks the frames). A clip in
which fewer than `MIN_WORKER_SHARE` of the keypoint frames show a worker (a shoulder and 4 upper-body joints) gets
**422 `no_worker`** instead of an answer; the `X-Pose` header reports the share, the mean joint score, the crop and
whether it was searched. `include_frames` then returns the skeleton frames the model saw.

`temporal_segment` counts frames of this normalised clip (0–{CLIP_FRAMES - 1} at {FPS} fps), so frame *f* is at
*f*/{FPS} s of the clip. The frame sampler (K and its parameters), the JPEG round trip of the sampled frames, the
prompt, the grammar and its tuned fusion weight are the ones of the served run's contract (`run.json`, shown by
`/ready`).

Errors, always JSON `{{"error": code, "detail": message, "request_id": id}}` (the id is also the `X-Request-ID`
header, and the server's log line of the request names it): 401 no valid key when `API_KEY` is set; 403 a write from
another site; 408 a body that stopped arriving; 413 file over `MAX_UPLOAD_MB`; 415 not a video
(unrecognised bytes, a still image, no video stream); 422 empty file, damaged/truncated video, no decodable frame,
shorter than the rule above allows, longer than `MAX_CLIP_SECONDS`, frames over `MAX_FRAME_PIXELS`, a decoder that
crashed, ran past `DECODE_TIMEOUT_S` or out of `DECODE_MEMORY_MB`, a missing `file` field, or `no_worker`; 503 model still
loading, failed to load, or too many requests in flight (`Retry-After`). The `Server-Timing` header gives the server's
time per stage (save, decode, ipc, queue, sample, model, total) in ms; `X-Frame-Indices` the frames of the
normalised clip the model was shown.
"""


def to_clip_rule() -> str:
    """video.to_clip's own statement of the rule, quoted: the API docs cannot drift from the code."""

    doc = (to_clip.__doc__ or "").strip()
    return "\n".join("> " + line.strip() for line in doc.splitlines() if line.strip())


COMMON_RESPONSES = {  # every route but /health and the page (guard.RequestGuard, the app's handlers)
    401: {"model": ErrorBody, "description": "API_KEY is set and the request has no valid key"},
    422: {"model": ErrorBody, "description": "a parameter or form field out of range or of the wrong type"},
    500: {"model": ErrorBody, "description": "a server fault; the detail is in the server's log under request_id"},
}
ERROR_RESPONSES = {  # the upload routes
    400: {"model": ErrorBody, "description": "malformed multipart body (no boundary, too many fields or parts)"},
    403: {"model": ErrorBody, "description": "a write from another site (Origin / Sec-Fetch-Site), not in "
                                             "CORS_ORIGINS"},
    408: {"model": ErrorBody, "description": "the body stopped arriving for BODY_TIMEOUT_S"},
    413: {"model": ErrorBody, "description": "upload larger than MAX_UPLOAD_MB"},
    415: {"model": ErrorBody, "description": "not a video (unrecognised bytes, still image, no video stream)"},
    422: {"model": ErrorBody, "description": "empty, damaged, too long, frames too large, bad form field, no "
                                             "`file` field, or (skeleton runs) `no_worker`: too few frames show a "
                                             "worker"},
    503: {"model": ErrorBody, "description": "model not ready, too many uploads / jobs in flight (Retry-After), or "
                                             "(skeleton runs) `pose_unavailable`: the pose estimator is missing"},
}


SSE_RESPONSE = {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                "description": "server-sent events: `job`, then `window` per answered window, then `done`, "
                               "`error` or `cancelled` (each `data:` line is JSON)"}
