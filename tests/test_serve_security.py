"""The API on a network (issue #24): refusals before the body is read, stalled clients, API keys, cross-site writes,
security headers, request ids, and inputs that once gave a 500.

A stand-in predictor (no model) where the model's answer does not matter; raw sockets where what matters is how
many bytes the server read before it answered.
"""
from __future__ import annotations

import socket
import threading
import time
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from browser import free_port
from media import make_video
from openpack_vlm.serving.app import create_app
from openpack_vlm.serving.settings import ServeConfig

KEY = "k" * 20 + "-test-key"


class _Boom:
    """A loaded "model" whose every answer fails (a bug): the client must get a generic 500, the log the detail."""

    info = {"model_id": "stand-in"}
    device = "cpu"

    def predict_clip(self, clip, clip_id, motion=None):
        raise RuntimeError("secret internal detail /srv/weights.bin")


def _cfg(tmp_path, **kw) -> ServeConfig:
    base = dict(model_id="stand-in", quantization="none", device="cpu", decode_workers=1, upload_dir=str(tmp_path),
                max_upload_mb=1, max_timeline_upload_mb=400)
    base.update(kw)
    return ServeConfig(**base)


def _client(cfg) -> TestClient:
    return TestClient(create_app(cfg, predictor_factory=lambda c: _Boom()))


def _ready(c: TestClient, headers: dict | None = None) -> None:
    for _ in range(2400):  # up to ~2 min on a loaded CI machine (the decoder process starts first)
        if c.get("/ready", headers=headers or {}).status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError("stand-in model never ready")


def _err(resp, status: int, code: str, *words: str) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert set(body) == {"error", "detail", "request_id"} and body["error"] == code, body
    assert body["request_id"] == resp.headers["x-request-id"]
    for w in words:
        assert w.lower() in body["detail"].lower(), (w, body)
    return body


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """One app with the default settings and a 3-s clip, for the tests that need nothing else (a server per test
    costs a decoder process and the model's load each)."""
    d = tmp_path_factory.mktemp("plain")
    video = make_video(d / "v.mp4", seconds=3.0).read_bytes()
    (d / "uploads").mkdir()
    with _client(_cfg(d / "uploads")) as c:
        _ready(c)
        yield c, video
    assert list((d / "uploads").iterdir()) == []  # every upload was removed, refused or answered


# ------------------------------------------------------------------------------------------------ input → 4xx
@pytest.mark.parametrize("stride", ["inf", "-inf", "1e400", "nan", "0", "6", "abc"])
def test_timeline_stride_out_of_range_is_422_not_500(plain, stride):
    c, video = plain
    r = c.post("/timeline", files={"file": ("v.mp4", video, "video/mp4")}, data={"stride": stride})
    _err(r, 422, "bad_request", "stride")


def test_an_internal_error_is_a_generic_500_with_a_request_id(plain, caplog):
    c, video = plain
    r = c.post("/predict", files={"file": ("v.mp4", video, "video/mp4")}, headers={"X-Request-ID": "abc-123"})
    body = _err(r, 500, "internal", "abc-123")
    assert "secret" not in r.text and "RuntimeError" not in r.text  # the detail is in the log only
    assert "secret internal detail" in caplog.text and "abc-123" in caplog.text


# ------------------------------------------------------------------------------------------------ keys, origins
def test_api_key_protects_every_route_but_health_and_the_page_shell(tmp_path):
    with _client(_cfg(tmp_path, api_key=KEY)) as c:
        assert c.get("/health").status_code == 200
        page = c.get("/")
        assert page.status_code == 200 and c.get("/static/page.js").status_code == 200
        for method, path in (("GET", "/ready"), ("GET", "/openapi.json"), ("GET", "/docs"), ("POST", "/predict"),
                             ("POST", "/timeline"), ("GET", "/timeline/abc"), ("DELETE", "/timeline/abc"),
                             ("GET", "/timeline/abc/events"), ("GET", "/timeline/abc/plot.png")):
            r = c.request(method, path)
            _err(r, 401, "unauthorized", "api key")
            assert r.headers["www-authenticate"] == "Bearer"
            _err(c.request(method, path, headers={"Authorization": "Bearer wrong-key-of-some-length"}), 401,
                 "unauthorized")
        _ready(c, {"Authorization": f"Bearer {KEY}"})
        assert c.get("/ready", headers={"X-API-Key": KEY}).status_code == 200
        assert c.get("/openapi.json", headers={"X-API-Key": KEY}).status_code == 200
        assert c.get("/timeline/abc", headers={"X-API-Key": KEY}).status_code == 404  # past the key: a real answer


def test_metrics_count_requests_and_model_time_behind_the_key(tmp_path):
    with _client(_cfg(tmp_path, api_key=KEY)) as c:
        _err(c.get("/metrics"), 401, "unauthorized")
        _ready(c, {"X-API-Key": KEY})
        c.get("/health")
        _err(c.get("/timeline/nope", headers={"X-API-Key": KEY}), 404, "no_such_job")
        text = c.get("/metrics", headers={"X-API-Key": KEY}).text
    assert 'http_requests_total{handler="/health",method="GET",status="2xx"} 1.0' in text
    assert 'http_requests_total{handler="/timeline/{job_id}",method="GET",status="4xx"} 1.0' in text
    assert 'openpack_uploads_in_flight{route="/predict"} 0.0' in text and "openpack_model_ready 1.0" in text
    assert "openpack_model_seconds_count 0.0" in text and "openpack_timeline_jobs_active 0.0" in text


def test_api_keys_file_and_bad_key_settings(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# operators\n" + "a" * 24 + "\n\n" + "b" * 24 + "\n")
    cfg = _cfg(tmp_path, api_keys_file=str(keys), api_key=KEY)
    assert cfg.api_keys == {"a" * 24, "b" * 24, KEY}
    with _client(cfg) as c:
        assert c.get("/timeline/x", headers={"X-API-Key": "b" * 24}).status_code == 404
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(ValueError, match="holds no key"):
        ServeConfig.from_env({"API_KEYS_FILE": str(tmp_path / "empty")})
    with pytest.raises(ValueError, match=r"API_KEY must be at least 16 characters.*<5 characters>"):
        ServeConfig.from_env({"API_KEY": "short"})


def test_cross_site_posts_are_refused_same_origin_and_listed_origins_pass(tmp_path):
    video = make_video(tmp_path / "v.mp4", seconds=3.0).read_bytes()
    files = {"file": ("v.mp4", video, "video/mp4")}
    with _client(_cfg(tmp_path, cors_origins="https://ops.example.com")) as c:
        _ready(c)
        _err(c.post("/predict", files=files, headers={"Origin": "http://evil.example"}), 403, "cross_site",
             "evil.example")
        _err(c.post("/predict", files=files, headers={"Sec-Fetch-Site": "cross-site"}), 403, "cross_site")
        _err(c.delete("/timeline/abc", headers={"Origin": "http://evil.example"}), 403, "cross_site")
        # the page's own origin, a listed origin, and clients that send no Origin (curl) get through to the model
        for headers in ({"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},
                        {"Origin": "https://ops.example.com"}, {}):
            _err(c.post("/predict", files=files, headers=headers), 500, "internal")
        pre = c.options("/predict", headers={"Origin": "https://ops.example.com",
                                             "Access-Control-Request-Method": "POST"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://ops.example.com"


def test_page_has_security_headers_and_no_inline_script(tmp_path):
    import re

    with _client(_cfg(tmp_path, docs=False)) as c:
        r = c.get("/")
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
        for tag in re.findall(r"<script[^>]*>", r.text):  # only external scripts or JSON data blocks
            assert 'src="/static/' in tag or 'type="application/json"' in tag, tag
        assert "server" not in {k.lower() for k in c.get("/health").headers}
        assert c.get("/docs").status_code == 404 and c.get("/openapi.json").status_code == 200  # DOCS=false


# ------------------------------------------------------------------------------------------------ real sockets
@pytest.fixture
def live(tmp_path):
    """uvicorn in a thread on a free port with the stand-in model; yields (port, app)."""
    import uvicorn

    cfg = _cfg(tmp_path, max_timeline_jobs=1, body_timeout_s=1.0)
    app = create_app(cfg, predictor_factory=lambda c: _Boom())
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           server_header=False, timeout_keep_alive=2, http="h11"))  # as serve.py
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    for _ in range(2400):  # up to ~2 min on a loaded CI machine (the decoder process starts first)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if b" 200 " in s.recv(200):
                    break
        except OSError:
            pass
        time.sleep(0.05)
    yield port, app
    server.should_exit = True
    t.join(20)


def _headers(path: str, length: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=XyZ\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def _read_response(s: socket.socket, timeout: float) -> bytes:
    s.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except (TimeoutError, socket.timeout, ConnectionResetError):
        pass
    return data


def test_busy_timeline_refuses_a_300_mb_upload_before_reading_it(live):
    port, app = live
    part = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp4\"\r\n\r\n"
    first = socket.create_connection(("127.0.0.1", port))
    try:
        first.sendall(_headers("/timeline", 300 * 1024 * 1024) + part + b"\0" * 65536)  # a slow upload holds the slot
        for _ in range(100):
            if app.state.uploads["/timeline"] == 1:
                break
            time.sleep(0.05)
        assert app.state.uploads["/timeline"] == 1
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", port)) as second:
            second.sendall(_headers("/timeline", 300 * 1024 * 1024))  # headers only: not one byte of the body
            answer = _read_response(second, 5)
        assert time.monotonic() - t0 < 3
        assert answer.startswith(b"HTTP/1.1 503") and b'"busy"' in answer and b"MAX_TIMELINE_JOBS" in answer
        assert b"retry-after: 10" in answer.lower()
    finally:
        first.close()


def test_a_malformed_content_length_gets_a_400_not_a_reset(live):
    port, _ = live
    for value in (b"abc", b"-5", b"1e3"):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: " + value + b"\r\n\r\n")
            assert _read_response(s, 5).startswith(b"HTTP/1.1 400 "), value


def test_a_stalled_upload_is_dropped_after_the_body_timeout(live):
    port, app = live
    with socket.create_connection(("127.0.0.1", port)) as s:
        t0 = time.monotonic()
        s.sendall(_headers("/predict", 100_000) + b"--XyZ\r\n")  # 7 of 100,000 bytes, then nothing
        answer = _read_response(s, 10)
        took = time.monotonic() - t0
    assert answer.startswith(b"HTTP/1.1 408") and b"body_timeout" in answer and b"BODY_TIMEOUT_S" in answer
    assert 0.9 < took < 5, took  # BODY_TIMEOUT_S=1 here
    for _ in range(50):  # and the slot it held is free again
        if app.state.uploads["/predict"] == 0:
            break
        time.sleep(0.05)
    assert app.state.uploads == {"/predict": 0, "/timeline": 0}
