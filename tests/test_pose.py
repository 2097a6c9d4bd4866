"""The pose stage: camera video -> OpenPack-shaped keypoints -> the skeleton frames a skeleton-trained model saw.

Real data: four face-masked OpenPack Kinect frames (tests/data/openpack-rgb-masked, U0209/S0500, a worker behind the
packing table) made into 5-s videos, at full size and shrunk to a worker of ~22 % of the frame height; the real
camera file box.mp4 (a hand and a box, no person) and a grey video for "no worker".
"""
from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from media import write_video

pytest.importorskip("mediapipe", reason="the pose estimator (requirements-nodeps.txt) is part of the install")

FRAMES = Path(__file__).parent / "data" / "openpack-rgb-masked"
# the worker's upper body on these frames (Kinect px), measured once with MediaPipe on the full frames
WORKER_BOX = (560, 310, 745, 600)  # x0, y0, x1, y1 with a margin of ~20 px


def real_frames() -> list[np.ndarray]:
    import cv2

    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(FRAMES.glob("*.jpg"))]


def shrink(img: np.ndarray, s: float = 0.5) -> np.ndarray:
    """The frame scaled by ``s`` on a grey 1280x720 canvas, a third of the way across: a small, off-centre worker."""
    import cv2

    out = np.full_like(img, 90)
    small = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    h, w = small.shape[:2]
    y0, x0 = (img.shape[0] - h) // 2, (img.shape[1] - w) // 3
    out[y0:y0 + h, x0:x0 + w] = small
    return out


def loop(frames: list[np.ndarray], n: int) -> list[np.ndarray]:
    seq = frames + frames[::-1]
    return [seq[i % len(seq)] for i in range(n)]


def wait_ready(client) -> None:
    for _ in range(600):
        if client.get("/ready").status_code == 200:
            return
        time.sleep(0.2)
    raise AssertionError(client.get("/ready").text)


def wait_job(client, job_id: str) -> dict:
    for _ in range(600):
        st = client.get(f"/timeline/{job_id}").json()
        if st["state"] not in ("queued", "running"):
            return st
        time.sleep(0.2)
    raise AssertionError(st)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pose_videos")
    f = real_frames()
    return {"worker": write_video(d / "worker.mp4", loop(f, 75), fps=15),
            "small": write_video(d / "small.mp4", loop([shrink(x) for x in f], 75), fps=15),
            "grey": write_video(d / "grey.mp4", [np.full((480, 640, 3), 120, np.uint8)] * 75, fps=15)}


@pytest.fixture(scope="module")
def worker_track(videos):
    """The keypoints estimated from the real-frame worker video (5 s): read, never changed, by the tests below."""
    from openpack_vlm.data.pose_estimate import estimate_video

    return estimate_video(videos["worker"], max_seconds=5.0)


def test_estimator_finds_the_worker_on_real_openpack_frames():
    """COCO-17 keypoints in Kinect px: the upper body found with confident scores where the worker stands; COCO
    left/right are the subject's own. The worker faces the camera, but the face mask makes MediaPipe take the view
    for a back view (left shoulder on the image's left); ``face_camera`` mirrors the track, so the left shoulder lies
    on the image's right, as in OpenPack's HRNet keypoints (U0102, median +83 px)."""
    from openpack_vlm.data.pose_estimate import PoseEstimateConfig, face_camera, to_kinect, track_frames, worker_seen

    f = real_frames()
    raw = to_kinect(track_frames(f, PoseEstimateConfig()), 1280, 720)
    assert (raw[:, 5, 0] < raw[:, 6, 0]).all()  # as MediaPipe gives it: seen from the back
    k, mirrored = face_camera(raw)
    assert mirrored and face_camera(k)[1] is False
    np.testing.assert_array_equal(k[:, [9, 10]], raw[:, [10, 9]])
    assert k.shape == (4, 17, 3) and worker_seen(k).all()
    assert (k[:, [5, 6, 7, 8, 9, 10, 11, 12], 2] >= 0.4).all()
    x0, y0, x1, y1 = WORKER_BOX
    upper = k[:, :13]
    assert (upper[..., 0] > x0).all() and (upper[..., 0] < x1).all(), upper[..., 0]
    assert (upper[..., 1] > y0).all() and (upper[..., 1] < y1).all(), upper[..., 1]
    assert (k[:, 5, 0] > k[:, 6, 0]).all()  # left shoulder (COCO 5) right of the right one in the image


def test_to_kinect_letterboxes_any_frame_into_the_kinect_canvas():
    from openpack_vlm.data.pose_estimate import to_kinect

    k = np.array([[[0, 0, 1], [640, 480, 1]] + [[320, 240, 1]] * 15], np.float32)
    out = to_kinect(k, 640, 480)  # 4:3 -> scale 1.5, bars of 160 px left and right
    np.testing.assert_allclose(out[0, 0], [160, 0, 1])
    np.testing.assert_allclose(out[0, 1], [1120, 720, 1])
    np.testing.assert_allclose(to_kinect(k, 1280, 720), k)


def test_small_worker_is_found_by_the_crop_search(videos, worker_track):
    """A worker at ~22 % of the frame height is missed on the whole frame; the crop search finds and tracks it, and
    its keypoints land where the shrunk worker stands."""
    from openpack_vlm.data.pose_estimate import PoseEstimateConfig, estimate_video

    whole = estimate_video(videos["small"], PoseEstimateConfig(min_found_share=0.0), max_seconds=5.0)  # no search
    track = estimate_video(videos["small"], max_seconds=5.0)
    assert not whole.searched and track.searched and track.roi is not None
    assert track.found_share >= 0.9 and whole.found_share < 0.5, (track.found_share, whole.found_share)
    assert track.kpts.shape == (75, 17, 3) and track.ts_ms[1] - track.ts_ms[0] in (66, 67)
    full = worker_track
    seen = full.seen & track.seen
    # the small worker's shoulders = the full-size ones scaled by 0.5 about the canvas' placement of the shrunk frame
    want = full.kpts[seen][:, [5, 6], :2] * 0.5 + np.array([(1280 - 640) // 3, (720 - 360) // 2])
    err = np.abs(track.kpts[seen][:, [5, 6], :2] - want)
    assert np.median(err) < 12, np.median(err)  # Kinect px; the worker's shoulders are ~70 px apart when shrunk


def test_roi_skips_the_search_and_bad_roi_is_refused():
    from openpack_vlm.data.errors import FrameError
    from openpack_vlm.data.pose_estimate import PoseEstimateConfig
    from openpack_vlm.serving.settings import ServeConfig

    assert ServeConfig(pose_roi="0.3,0.2,0.4,0.8").pose_config().roi == (0.3, 0.2, 0.4, 0.8)
    for bad in ("0.9,0.1,0.5,0.8", "1,2,3", "a,b,c,d"):
        with pytest.raises(ValueError, match="pose_roi"):
            ServeConfig(pose_roi=bad)
    with pytest.raises(FrameError, match="min_found_share"):
        PoseEstimateConfig(min_found_share=1.5)


def test_keypoints_render_like_openpack_keypoints(worker_track):
    """Estimated keypoints must give the model the same kind of picture as OpenPack's HRNet keypoints: the share of
    visual tokens the skeleton touches within 0.8-1.25x of the real keypoints' (measured 0.70 vs 0.62), scores
    above the renderer's min_score, and still frames that stay still (no jitter)."""
    from openpack_vlm.data.openpack import keypoints_from_json
    from openpack_vlm.data.skeleton import MIN_SCORE, render_pose_clip, token_coverage

    _, real = keypoints_from_json(Path(__file__).parent / "data" / "openpack-keypoints" /
                                  "U0102-S0100-mmpose-100frames.json")
    track = worker_track
    shown = np.arange(0, 75, 9)
    cov_real = token_coverage(render_pose_clip(real[:75], shown))
    cov_est = token_coverage(render_pose_clip(track.kpts, shown))
    assert 0.8 <= cov_est / cov_real <= 1.25 * 1.2, (cov_est, cov_real)
    upper = track.kpts[track.seen][:, 5:13, 2]
    assert np.median(upper) > 3 * MIN_SCORE
    # the source frames barely move (a worker standing): wrists move < 3 Kinect px per keypoint frame
    step = np.linalg.norm(np.diff(track.kpts[track.seen][:, [9, 10], :2], axis=0), axis=-1)
    assert np.median(step) < 3.0, np.median(step)


def test_no_person_is_no_worker(videos, repo_root):
    """A grey clip and a real hand-and-box video (box.mp4): 422 no_worker, never a skeleton of nobody."""
    from openpack_vlm.serving.settings import ServeConfig
    from openpack_vlm.serving.uploads import UploadError, decode_clip

    cfg = ServeConfig(max_clip_seconds=30)
    for video in (videos["grey"], repo_root / "tests" / "data" / "videos" / "box.mp4"):
        with pytest.raises(UploadError) as ei:
            decode_clip(video, cfg, "pose")
        assert (ei.value.status, ei.value.error) == (422, "no_worker"), ei.value.detail
        assert "0%" in ei.value.detail or "MIN_WORKER_SHARE" in ei.value.detail


def test_decode_clip_renders_the_skeleton_the_pipeline_would(videos, worker_track):
    """Serving's skeleton clip is the data pipeline's rendering of the same keypoints: PoseFrameSource over the
    track, clip at t = 0, with the keypoints' motion for the sampler."""
    from openpack_vlm.data.skeleton import PoseRender
    from openpack_vlm.serving.settings import ServeConfig
    from openpack_vlm.serving.uploads import decode_clip

    got = decode_clip(videos["worker"], ServeConfig(), "pose", PoseRender().to_json())
    assert got.frames == "pose" and got.clip.shape == (125, 336, 336, 3) and got.motion.shape == (125,)
    assert got.pose["worker_share"] >= 0.9 and got.pose["crop_search"] is False
    src = worker_track.source(PoseRender())
    clip, motion = src.clip_and_motion(0, n=125)  # 75 keypoint frames, 0-4933 ms: the last tick (4960 ms) shows 74
    np.testing.assert_array_equal(got.clip, clip)
    np.testing.assert_allclose(got.motion, motion)
    assert (np.asarray(got.clip).mean(axis=(1, 2, 3)) < 60).all()  # skeletons on black, not camera pixels


@pytest.fixture(scope="module")
def pose_run(pose_samples, tiny_model_dir, tmp_path_factory) -> Path:
    """A tiny adapter trained (3 steps) on the skeleton data of ``data_pipeline.py --source pose``: its run.json
    says ``data.frames = "pose"``, written by the pipeline from the clips' sources."""
    from openpack_vlm.model import train

    data = pose_samples.parent
    assert json.loads((data / "run.json").read_text())["data"]["frames"] == "pose"
    out = tmp_path_factory.mktemp("pose_run") / "run"
    rc = train.main(["--data", str(data), "--out", str(out), "--model", str(tiny_model_dir), "--quantization", "none",
                     "--max-steps", "3", "--save-steps", "3", "--batch-size", "2", "--num-workers", "0",
                     "--report-to", "none"])
    assert rc == 0 and json.loads((out / "run.json").read_text())["data"]["frames"] == "pose"
    return out


@pytest.mark.slow  # trains a tiny adapter once (module fixture) and starts servers
def test_skeleton_run_is_served_skeletons_over_http(pose_run, tiny_model_dir, videos, repo_root):
    """A pose-trained adapter served: /ready says what the model is shown; /predict estimates keypoints, renders and
    samples them as in training (the answer equals the predictor's on decode_clip's clip and motion), reports
    X-Pose, returns skeleton frames with include_frames, and answers 422 no_worker for a grey clip and for the real
    hand-and-box video."""
    from fastapi.testclient import TestClient

    from openpack_vlm.serving.app import create_app
    from openpack_vlm.serving.settings import ServeConfig
    from openpack_vlm.serving.uploads import decode_clip

    cfg = ServeConfig(model_id=str(tiny_model_dir), adapter_path=str(pose_run / "adapter"), quantization="none",
                      device="cpu", decode_workers=1)
    with TestClient(create_app(cfg)) as client:
        wait_ready(client)
        ready = client.get("/ready")
        assert ready.json()["input"]["frames"] == "pose"
        assert ready.json()["input"]["pose_estimator"] == "mediapipe 0.10.21"
        r = client.post("/predict", files={"file": ("w.mp4", videos["worker"].read_bytes(), "video/mp4")},
                        data={"include_frames": "true"})
        assert r.status_code == 200, r.text
        pose = json.loads(r.headers["X-Pose"])
        assert pose["worker_share"] >= 0.9 and pose["crop_search"] is False
        body = r.json()
        frames = body.pop("frames")
        predictor = client.app.state.model.predictor
        got = decode_clip(videos["worker"], cfg, "pose", predictor.input_render)
        # the server draws only the frames it samples; the answer is the one on the whole clip drawn
        want = predictor.predict_clip(np.asarray(got.clip), "w", got.motion)
        assert body == want.prediction.model_dump()
        assert [f["index"] for f in frames] == want.scores["frame_indices"]
        for f in frames:  # what the model saw: skeletons on black, not the grey-walled room of the camera frames
            img = np.asarray(Image.open(io.BytesIO(base64.b64decode(f["jpeg"].split(",", 1)[1]))))
            assert img.shape == (336, 336, 3) and np.median(img) < 10 and img.max() > 150
        for name, video in (("g.mp4", videos["grey"]), ("box.mp4", repo_root / "tests" / "data" / "videos" / "box.mp4")):
            r = client.post("/predict", files={"file": (name, video.read_bytes(), "video/mp4")})
            assert r.status_code == 422 and r.json()["error"] == "no_worker", r.text
        assert "no_worker" in json.dumps(client.get("/openapi.json").json()["paths"]["/predict"]["post"]["responses"])


def test_contract_decides_what_is_served():
    from openpack_vlm.contract import ContractError, DataSection

    d = DataSection(source="auto", k=8, jpeg_quality=90, sampler={}, splits={})
    assert d.served_frames() == "rgb"
    assert DataSection(source="pose", k=8, jpeg_quality=90, sampler={}, splits={}).served_frames() == "pose"
    d.frames = "pose"
    assert d.served_frames() == "pose"
    d.frames = "mixed"
    with pytest.raises(ContractError, match="mixed"):
        d.served_frames()


def test_mark_no_worker_rebuilds_segments():
    from openpack_vlm.timeline.merge import NO_WORKER, mark_no_worker

    merged = {"seconds": ["Picking"] * 3 + ["Close Box"] * 3,
              "segments": [{"start_s": 0.0, "end_s": 3.0, "operation": "Picking", "confidence": 0.8},
                           {"start_s": 3.0, "end_s": 5.5, "operation": "Close Box", "confidence": 0.6}]}
    out = mark_no_worker(merged, np.array([1, 1, 0.2, 0.9, 0.0, 0.0]), 0.5)
    assert out["seconds"] == ["Picking", "Picking", NO_WORKER, "Close Box", NO_WORKER, NO_WORKER]
    assert [(s["start_s"], s["end_s"], s["operation"], s["confidence"]) for s in out["segments"]] == [
        (0.0, 2.0, "Picking", 0.8), (2.0, 3.0, NO_WORKER, None), (3.0, 4.0, "Close Box", 0.6),
        (4.0, 5.5, NO_WORKER, None)]


@pytest.mark.slow  # trains a tiny adapter once (module fixture) and starts servers
def test_skeleton_run_timeline_marks_no_worker(pose_run, tiny_model_dir, videos, tmp_path):
    """/timeline of a skeleton run: keypoints over the recording, skeleton windows with their motion, seconds
    without a worker marked "no worker" (a worker clip followed by an empty room); the CLI's analyse_video agrees."""
    from fastapi.testclient import TestClient

    from openpack_vlm.serving.app import create_app
    from openpack_vlm.serving.settings import ServeConfig
    from openpack_vlm.timeline import TimelineConfig, analyse_video
    from openpack_vlm.timeline.merge import NO_WORKER

    f = real_frames()
    video = write_video(tmp_path / "then_empty.mp4", loop(f, 90) + [np.full_like(f[0], 90)] * 90, fps=15)  # 6 + 6 s
    cfg = ServeConfig(model_id=str(tiny_model_dir), adapter_path=str(pose_run / "adapter"), quantization="none",
                      device="cpu", decode_workers=1)
    with TestClient(create_app(cfg)) as client:
        wait_ready(client)
        job = client.post("/timeline", files={"file": ("v.mp4", video.read_bytes(), "video/mp4")},
                          data={"stride": "2.5"}).json()
        st = wait_job(client, job["job_id"])
        assert st["state"] == "done", st
        res = st["result"]
        assert res["pose"]["keypoint_frames"] == 180 and st["progress"]["pose_seconds_done"] == 12.0
        seconds = [NO_WORKER if s == NO_WORKER else "op" for s in
                   [seg["operation"] for seg in res["segments"] for _ in range(round(seg["end_s"] - seg["start_s"]))]]
        assert seconds == ["op"] * 6 + [NO_WORKER] * 6 and res["no_worker_seconds"] == 6
        assert client.get(f"/timeline/{job['job_id']}/plot.png").status_code == 200
        predictor = client.app.state.model.predictor
        local = analyse_video(predictor, video, TimelineConfig(stride=2.5, batch_windows=2))
        assert local["segments"] == res["segments"] and local["pose"]["worker_share"] == res["pose"]["worker_share"]


def csv_slice(src: Path, dst: Path, seconds: float, skip_s: float = 0.0) -> Path:
    """A time slice of a Zenodo kinect-2d-kpt-with-operation-action-labels CSV (header kept)."""
    lines = src.read_text().splitlines()
    t0 = int(lines[1].split(",")[0]) + int(skip_s * 1000)
    keep = [ln for ln in lines[1:] if t0 <= int(ln.split(",")[0]) < t0 + seconds * 1000]
    dst.write_text("\n".join([lines[0], *keep]) + "\n")
    return dst


@pytest.mark.slow  # trains a tiny adapter once (module fixture) and starts servers
def test_keypoint_files_in(pose_run, run_dir, tiny_model_dir, synthetic_root, tmp_path, repo_root):
    """A user with OpenPack's public keypoints runs the served skeleton model on them: real mmpose JSON and a Zenodo
    CSV slice answer on /predict (as the predictor does on the file's own track); a labelled CSV on /timeline scores
    itself; a damaged file is a 422 naming the row; a camera-frame run refuses keypoint files (415)."""
    from fastapi.testclient import TestClient

    from openpack_vlm.data.keypoint_files import track_from_keypoint_file
    from openpack_vlm.serving.app import create_app
    from openpack_vlm.serving.settings import ServeConfig

    mmpose = repo_root / "tests" / "data" / "openpack-keypoints" / "U0102-S0100-mmpose-100frames.json"
    zen = sorted((synthetic_root / "kinect-2d-kpt-with-operation-action-labels").glob("U0108-*.csv"))[0]
    clip_csv = csv_slice(zen, tmp_path / "clip.csv", 5.0, skip_s=10)
    long_csv = csv_slice(zen, tmp_path / "long.csv", 30.0)
    bad = tmp_path / "bad.csv"
    rows = clip_csv.read_text().splitlines()
    rows[3] = ",".join(rows[3].split(",")[:5] + ["oops"] + rows[3].split(",")[6:])
    bad.write_text("\n".join(rows) + "\n")

    def serve(run):
        cfg = ServeConfig(model_id=str(tiny_model_dir), adapter_path=str(run / "adapter"), quantization="none",
                          device="cpu", decode_workers=1)
        client = TestClient(create_app(cfg))
        client.__enter__()
        wait_ready(client)
        return client

    client = serve(pose_run)
    try:
        predictor = client.app.state.model.predictor
        for f in (mmpose, clip_csv):
            r = client.post("/predict", files={"file": (f.name, f.read_bytes(), "application/octet-stream")})
            assert r.status_code == 200, r.text
            assert json.loads(r.headers["X-Pose"])["worker_share"] == 1.0
            track, _ = track_from_keypoint_file(f)
            keep = track.ts_ms < 5000
            track.kpts, track.ts_ms = track.kpts[keep], track.ts_ms[keep]
            clip, motion = track.source().clip_and_motion(0, hold_last=True)
            assert r.json() == predictor.predict_clip(clip, f.stem, motion).prediction.model_dump()
        too_long = csv_slice(zen, tmp_path / "too_long.csv", 40.0)  # over MAX_CLIP_SECONDS=30
        r = client.post("/predict", files={"file": ("too_long.csv", too_long.read_bytes(), "text/csv")})
        assert r.status_code == 422 and r.json()["error"] == "too_long" and "time slice" in r.json()["detail"]
        r = client.post("/predict", files={"file": ("bad.csv", bad.read_bytes(), "text/csv")})
        assert r.status_code == 422 and r.json()["error"] == "bad_keypoints", r.text
        assert "row 4" in r.json()["detail"] and "J00_D2" in r.json()["detail"]
        job = client.post("/timeline", files={"file": ("long.csv", long_csv.read_bytes(), "text/csv")}).json()
        st = wait_job(client, job["job_id"])
        assert st["state"] == "done", st
        assert st["video"]["codec"] == "keypoints" and "metrics" in st["result"] and st["result"]["truth"]
        assert 29 <= st["result"]["duration_s"] <= 30.1
    finally:
        client.__exit__(None, None, None)
    client = serve(run_dir)  # trained on camera frames
    try:
        r = client.post("/predict", files={"file": (mmpose.name, mmpose.read_bytes(), "application/json")})
        assert r.status_code == 415 and "keypoint file" in r.json()["detail"], r.text
    finally:
        client.__exit__(None, None, None)
