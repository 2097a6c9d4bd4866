"""OpenPack keypoint files as inputs: an mmpose JSON or a Zenodo ``kinect-2d-kpt-with-operation-action-labels`` CSV,
recognised by content (``sniff_keypoint_file``) and read into the ``KeypointTrack`` a camera video would have given
(``track_from_keypoint_file``; a labelled CSV brings its true timeline too). What /predict, /timeline and the timeline
CLI accept besides a video."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..labels import ID_TO_NAME
from .errors import FrameError
from .letterbox import KINECT_H, KINECT_W
from .pose_estimate import KeypointTrack

KEYPOINT_FILE_MAX_GAP_MS = 500  # a keypoint file with a hole longer than this between frames is refused


def sniff_keypoint_file(path: str | os.PathLike) -> str | None:
    """"mmpose-json" / "zenodo-csv" when the file's first bytes are an OpenPack keypoint file, else None (then it may
    be a video). By content, never by name."""
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head[:1] in (b"{", b"["):
        return "mmpose-json"
    first = head.split(b"\n", 1)[0].decode("ascii", "replace")
    if first.startswith("timestamp,") and "J00_D0" in first:
        return "zenodo-csv"
    return None


def track_from_keypoint_file(path: str | os.PathLike) -> tuple[KeypointTrack, list[dict] | None]:
    """An OpenPack keypoint file -> its ``KeypointTrack`` (times from its first frame: 0 ms) and, for a Zenodo CSV
    with its ``operation`` column, the true timeline as segments ``{start_s, end_s, operation}`` (else None).
    Accepts a time slice of either. ``FrameError`` (one line) naming the problem for anything else."""
    # deferred: would load pandas (~0.2 s) in every decoder process that imports this
    from .openpack import (
        OpenPackError,
        keypoints_from_json,
        keypoints_from_preprocessed_csv,
        timeline_from_preprocessed_csv,
    )

    path = Path(os.fspath(path))
    kind = sniff_keypoint_file(path)
    truth = None
    try:
        if kind == "mmpose-json":
            ts, kpts = keypoints_from_json(path)
        elif kind == "zenodo-csv":
            ts, kpts = keypoints_from_preprocessed_csv(path)
            segs = timeline_from_preprocessed_csv(path)
            truth = [{"start_s": (sg.start_ms - int(ts[0])) / 1000, "end_s": (sg.end_ms - int(ts[0])) / 1000,
                      "operation": ID_TO_NAME[int(sg.op_id)]} for sg in segs]
        else:
            raise FrameError("not an OpenPack keypoint file (mmpose JSON or a Zenodo "
                             "kinect-2d-kpt-with-operation-action-labels CSV)")
    except OpenPackError as e:
        raise FrameError(str(e).replace(str(path), "keypoint file")) from None
    if len(ts) == 0:
        raise FrameError("the keypoint file holds no frame")
    gaps = np.diff(ts)
    if len(gaps) and gaps.max() > KEYPOINT_FILE_MAX_GAP_MS:
        i = int(gaps.argmax())
        raise FrameError(f"the keypoint file has a {gaps[i] / 1000:.1f}-s hole after frame {i} (unixtime "
                         f"{int(ts[i])} ms): cut it into continuous stretches")
    rel = (ts - ts[0]).astype(np.int64)
    return KeypointTrack(np.asarray(kpts, np.float32), rel, KINECT_W, KINECT_H), truth
