"""POST /timeline and the page at / in the app: jobs, progress, the merged result, cancel, abandon, errors.

The windows are answered by the oracle (tests/oracle.py) that reads each frame's operation from a synthetic camera
video with a known timeline, so the HTTP path's result can be checked against the truth; a slow oracle keeps a job
running while /health and /predict are asked.
"""
from __future__ import annotations

import base64
import io
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from openpack_vlm.testing.synthetic import write_session_video
from openpack_vlm.schema import Prediction
from media import make_video
from oracle import OraclePredictor
from test_serve import assert_error

REAL_VIDEOS = Path(__file__).parent / "data" / "videos"


class SlowOracle(OraclePredictor):
    """The oracle, ``delay`` s per call, so a job is still running while other requests come in."""

    def __init__(self, delay: float):
        super().__init__()
        self.delay = delay
        self.predict_calls = 0

    def predict_clips(self, clips, clip_ids, motions=None):
        time.sleep(self.delay)
        return super().predict_clips(clips, clip_ids, motions)

    def predict_clip(self, clip, clip_id, motion=None):
        self.predict_calls += 1
        return super().predict_clips([clip], [clip_id])[0]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("tl_media")
    truth = write_session_video(d / "s120.mp4", 120, seed=0)
    return {"s120": d / "s120.mp4", "truth": truth, "short": make_video(d / "short.mp4", seconds=3.0),
            "long": write_session_video(d / "s75.mp4", 75, seed=2, size=(64, 36)) and d / "s75.mp4"}


def _client(tmp_path, predictor, **cfg_kw):
    from fastapi.testclient import TestClient

    from openpack_vlm.serving.app import create_app
    from openpack_vlm.serving.settings import ServeConfig

    cfg = ServeConfig(model_id="oracle", quantization="none", device="cpu", upload_dir=str(tmp_path),
                      decode_workers=1, **cfg_kw)
    return TestClient(create_app(cfg, predictor_factory=lambda c: predictor))


def _ready(client):
    for _ in range(600):
        if client.get("/ready").status_code == 200:
            return
        time.sleep(0.1)
    raise AssertionError("not ready")


def _post(client, path: Path, **data):
    with open(path, "rb") as fh:
        return client.post("/timeline", files={"file": (path.name, fh, "video/mp4")}, data=data)


def _wait(client, job_id: str, timeout: float = 240) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout:
        st = client.get(f"/timeline/{job_id}").json()
        if st["state"] not in ("queued", "running"):
            return st
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still running")


def test_timeline_job_result_matches_the_truth(tmp_path, videos):
    with _client(tmp_path, OraclePredictor(), timeline_batch_windows=3) as client:
        _ready(client)
        r = _post(client, videos["s120"])
        assert r.status_code == 202, r.text
        job = r.json()
        assert r.headers["location"] == f"/timeline/{job['job_id']}" and job["state"] in ("queued", "running")
        st = _wait(client, job["job_id"])
        assert st["state"] == "done", st
        res = st["result"]
        assert st["progress"]["windows_done"] == st["progress"]["windows_total"] == res["n_windows"] == 48
        assert st["video"]["codec"] == "h264" and abs(st["video"]["duration_s"] - 119.33) < 0.1
        truth = videos["truth"]["segments"]
        from openpack_vlm.timeline import score_timeline

        m = score_timeline(res["seconds"], truth)
        assert m["accuracy_1hz"] > 0.9, m  # no grammar in this predictor: the votes alone (hmm=auto)
        assert res["merge"]["hmm"] is False
        for s in truth:  # every true segment of >= 3 s is found, its boundaries within 1.5 s
            if s["end_s"] - s["start_s"] >= 3 and s["operation"] != "Null":
                mid = (s["start_s"] + s["end_s"]) / 2
                p = next(q for q in res["segments"] if q["start_s"] <= mid < q["end_s"])
                assert p["operation"] == s["operation"] and abs(p["start_s"] - s["start_s"]) <= 1.5 and \
                    abs(p["end_s"] - s["end_s"]) <= 1.5, (s, p)
        # ?since=N gives the windows from N on; the chart is there once done
        part = client.get(f"/timeline/{job['job_id']}?since=40").json()["windows"]
        assert [w["index"] for w in part] == list(range(40, 48))
        png = client.get(st["plot_url"])
        assert png.status_code == 200 and png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
        # the event stream of a finished job replays every window, then done
        with client.stream("GET", f"/timeline/{job['job_id']}/events") as ev:
            text = "".join(ev.iter_text())
        events = re.findall(r"^event: (\w+)$", text, re.M)
        assert events[0] == "job" and events[-1] == "done" and events.count("window") == 48
    assert list(tmp_path.iterdir()) == []  # the upload is gone


def test_health_and_predict_answer_while_a_job_runs_then_delete_cancels(tmp_path, videos):
    slow = SlowOracle(delay=0.5)
    with _client(tmp_path, slow, timeline_batch_windows=1) as client:
        _ready(client)
        job = _post(client, videos["long"]).json()  # 75 s, 29 windows at 0.5 s each: still running when asked
        for _ in range(100):  # wait until windows are being answered
            if client.get(f"/timeline/{job['job_id']}").json()["progress"]["windows_done"] >= 2:
                break
            time.sleep(0.1)
        t0 = time.perf_counter()
        assert client.get("/health").json() == {"status": "ok"}
        assert time.perf_counter() - t0 < 0.5
        with open(videos["short"], "rb") as fh:
            r = client.post("/predict", files={"file": ("c.mp4", fh, "video/mp4")})
        assert r.status_code == 200 and Prediction.model_validate(r.json())
        assert slow.predict_calls == 1
        running = client.get(f"/timeline/{job['job_id']}").json()
        assert running["state"] == "running" and 0 < running["progress"]["fraction"] < 1
        st = client.delete(f"/timeline/{job['job_id']}").json()
        assert st["state"] == "cancelled" and st["error"]["error"] == "cancelled"
        done = st["progress"]["windows_done"]
        time.sleep(1.5)
        assert client.get(f"/timeline/{job['job_id']}").json()["progress"]["windows_done"] == done  # it stopped
        assert_error(client.get(f"/timeline/{job['job_id']}/plot.png"), 409, "not_done", "cancelled")
    assert list(tmp_path.iterdir()) == []


def test_a_job_nobody_asks_about_is_abandoned(tmp_path, videos):
    with _client(tmp_path, SlowOracle(delay=0.3), timeline_batch_windows=1, timeline_abandon_s=1.0) as client:
        _ready(client)
        job = _post(client, videos["long"]).json()  # 75 s at 64x36: 29 windows, cheap to decode
        time.sleep(3.0)  # nobody polls
        st = client.get(f"/timeline/{job['job_id']}").json()
        assert st["state"] == "cancelled" and "TIMELINE_ABANDON_S=1" in st["error"]["detail"]
        assert st["progress"]["windows_done"] < 20


def test_timeline_errors_are_clear(tmp_path, videos):
    with _client(tmp_path, SlowOracle(delay=0.5), max_timeline_seconds=60, max_timeline_jobs=1,
                 max_timeline_upload_mb=1) as client:
        _ready(client)
        garbage = tmp_path.parent / "garbage.mp4"
        garbage.write_bytes(np.random.default_rng(0).bytes(5000))
        assert_error(_post(client, garbage), 415, "not_a_video", "not a video")
        assert_error(_post(client, videos["long"]), 422, "too_long", "MAX_TIMELINE_SECONDS=60")
        assert_error(_post(client, videos["short"], stride="9"), 422, "bad_request", "stride", "less than or equal to 5")
        big = tmp_path.parent / "big.mp4"
        big.write_bytes(np.random.default_rng(1).bytes(1_200_000))
        assert_error(_post(client, big), 413, "too_large", "MAX_TIMELINE_UPLOAD_MB=1")
        assert_error(client.post("/timeline", data={"stride": "2"}), 422, "bad_request", "file")
        assert_error(client.get("/timeline/nope"), 404, "no_such_job", "nope")
        # a recording shorter than 2 s: the job fails with the decoder's reason
        tiny = make_video(tmp_path.parent / "1s.mp4", seconds=1.0)
        st = _wait(client, _post(client, tiny).json()["job_id"])
        assert st["state"] == "failed" and st["error"]["error"] == "too_short", st
        # one job at a time here: a second gets 503 while the first runs (0.5 s per window, 3 windows)
        first = _post(client, make_video(tmp_path.parent / "12s.mp4", seconds=12.0))
        assert first.status_code == 202
        assert_error(_post(client, videos["short"]), 503, "busy", "MAX_TIMELINE_JOBS=1")
        assert _wait(client, first.json()["job_id"])["state"] == "done"
        assert _post(client, videos["short"]).status_code == 202  # free again
    assert list(tmp_path.iterdir()) == []


def test_predict_include_frames_gives_the_frames_the_model_saw(tmp_path, tiny_model_dir, videos):
    from fastapi.testclient import TestClient

    from openpack_vlm.serving.app import create_app

    from openpack_vlm.serving.state import load_predictor
    from openpack_vlm.serving.settings import ServeConfig

    cfg = ServeConfig(model_id=str(tiny_model_dir), quantization="none", device="cpu", upload_dir=str(tmp_path),
                      decode_workers=1)
    with TestClient(create_app(cfg, predictor_factory=load_predictor)) as client:
        _ready(client)
        with open(videos["short"], "rb") as fh:
            plain = client.post("/predict", files={"file": ("c.mp4", fh, "video/mp4")})
        with open(videos["short"], "rb") as fh:
            rich = client.post("/predict", files={"file": ("c.mp4", fh, "video/mp4")}, data={"include_frames": "true"})
        assert plain.status_code == rich.status_code == 200
        assert set(plain.json()) == set(Prediction.model_fields)  # the contract, exactly, by default
        body = rich.json()
        frames = body.pop("frames")
        assert body == plain.json()
        idx = [int(i) for i in rich.headers["x-frame-indices"].split(",")]
        assert [f["index"] for f in frames] == idx and [f["t_s"] for f in frames] == [round(i / 25, 2) for i in idx]
        from PIL import Image

        img = Image.open(io.BytesIO(base64.b64decode(frames[0]["jpeg"].split(",", 1)[1])))
        assert img.size == (336, 336) and img.format == "JPEG"
        assert all(f["operation"] is None and f["operation_p"] is None for f in frames)  # no frame head here


def test_frame_previews_carry_the_frame_heads_reading():
    """With a frame head the page gets each shown frame's reading: its most probable operation and that
    probability."""
    import numpy as np

    from openpack_vlm.serving.app import FramePreview, frame_previews

    clip = np.zeros((125, 336, 336, 3), np.uint8)
    readings = [{"Picking": 0.7, "Close Box": 0.3}, {"Picking": 0.2, "Close Box": 0.8}]
    got = frame_previews(clip, [0, 100], readings)
    assert [(f["index"], f["operation"], f["operation_p"]) for f in got] == [(0, "Picking", 0.7), (100, "Close Box", 0.8)]
    assert all(FramePreview.model_validate(f) for f in got)


def test_page_is_self_contained(tmp_path):
    with _client(tmp_path, OraclePredictor(), max_clip_seconds=20, max_timeline_seconds=600) as client:
        r = client.get("/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        html = r.text
        assert "up to 20 s" in html and "up to 600 s" in html and "__" not in re.sub(r"<script>.*</script>", "", html, flags=re.S)
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing from a CDN: works offline
        assert '"Picking": "#1f77b4"' in html  # the chart colours are the PNG's
        assert "/docs" in html and "/" not in client.app.openapi()["paths"]  # the page is not an API route
