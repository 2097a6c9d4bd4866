"""The web page as a person uses it: headless Chromium (Debian's, driven by Selenium) against ``python serve.py``
with the tiny model — upload a real camera file and see the answer, the frames and the JSON; upload garbage and see
the API's message; analyse a recording and watch the timeline chart fill in."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from browser import chrome, missing, serve, upload

pytestmark = pytest.mark.slow
REAL_VIDEOS = Path(__file__).parent / "data" / "videos"
OPERATIONS = {"Picking", "Relocate Item Label", "Assemble Box", "Insert Items", "Close Box", "Attach Box Label",
              "Scan Label", "Attach Shipping Label", "Put on Back Table", "Fill out Order", "Null"}


@pytest.fixture(scope="module")
def page(tiny_model_dir, repo_root, tmp_path_factory):
    why = missing()
    assert why is None, why  # scripts/install.sh installs the browser; a missing one is a failure, not a skip
    log = tmp_path_factory.mktemp("browser") / "server.log"
    env = {"MODEL_ID": str(tiny_model_dir), "QUANTIZATION": "none", "DEVICE": "cpu", "OMP_NUM_THREADS": "1",
           "LOG_LEVEL": "info"}
    with serve(repo_root, env, log) as (base, _), chrome() as driver:
        driver.get(base + "/")
        yield driver, base, log


def _wait(driver, cond, timeout=120):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(cond)


def test_upload_a_real_clip_and_see_the_answer(page):
    from selenium.webdriver.common.by import By

    driver, base, _ = page
    _wait(driver, lambda d: "model:" in d.find_element(By.ID, "model").text and "checking" not in
          d.find_element(By.ID, "model").text)
    upload(driver, REAL_VIDEOS / "box.mp4", "clip")
    _wait(driver, lambda d: d.find_element(By.ID, "clip-result").is_displayed())
    answer = json.loads(driver.find_element(By.ID, "json").text)
    assert set(answer) == {"clip_id", "dominant_operation", "temporal_segment", "anticipated_next_operation",
                           "confidence"} and answer["clip_id"] == "box"
    assert driver.find_element(By.ID, "dominant").text == answer["dominant_operation"] in OPERATIONS
    seg = answer["temporal_segment"]
    assert driver.find_element(By.ID, "span").text.startswith(f"frames {seg['start_frame']}–{seg['end_frame']}")
    imgs = driver.find_elements(By.CSS_SELECTOR, "#frames img")
    caps = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "#frames figcaption")]
    assert len(imgs) >= 4 and len(caps) == len(imgs) and caps[0].startswith("frame 0 · 0.00 s")
    assert all(d.get_property("naturalWidth") == 336 for d in imgs)  # the images decoded in the browser
    assert not driver.find_element(By.ID, "error").is_displayed()


def test_upload_garbage_and_see_the_apis_message(page, tmp_path):
    from selenium.webdriver.common.by import By

    driver, _, _ = page
    bad = tmp_path / "holiday.mp4"
    bad.write_bytes(np.random.default_rng(0).bytes(20_000))
    upload(driver, bad, "clip")
    err = _wait(driver, lambda d: d.find_element(By.ID, "error") if d.find_element(By.ID, "error").is_displayed() else None)
    assert "415 not_a_video" in err.text and "no video container recognised in the 20000 bytes" in err.text
    assert not driver.find_element(By.ID, "clip-result").is_displayed()


def test_a_recording_fills_the_timeline_chart(page):
    from selenium.webdriver.common.by import By

    driver, _, log = page
    upload(driver, REAL_VIDEOS / "cup.mp4", "timeline", stride=2)
    _wait(driver, lambda d: d.find_element(By.ID, "status").text.startswith("done in"), timeout=180)
    windows = driver.find_elements(By.CSS_SELECTOR, "#timeline-svg rect.seg-windows")
    segments = driver.find_elements(By.CSS_SELECTOR, "#timeline-svg rect.seg-prediction")
    rows = driver.find_elements(By.CSS_SELECTOR, "#segments tbody tr")
    assert len(windows) == 3 and len(segments) == len(rows) >= 1  # 8.1 s at a 2-s stride: windows at 0, 2, 3.08 s
    assert " in 8.1 s from 3 windows" in driver.find_element(By.ID, "tl-summary").text
    driver.save_screenshot(str(Path(log).with_name("timeline.png")))
    assert driver.find_element(By.ID, "progress").get_property("value") == 1
    assert "timeline" in log.read_text() and not driver.find_element(By.ID, "error").is_displayed()


def test_closing_the_event_stream_cancels_the_job_and_health_answers_meanwhile(page, tmp_path):
    """The real server: POST /timeline streaming events, /health answers while the job runs, and closing the
    stream (the client going away) cancels the job it started."""
    import time

    import httpx2 as httpx

    from openpack_vlm.testing.synthetic import write_session_video

    _, base, log = page
    video = tmp_path / "s60.mp4"
    truth = write_session_video(video, 60, seed=4, size=(160, 90))
    with open(video, "rb") as fh, httpx.Client(timeout=60) as client:
        with client.stream("POST", base + "/timeline", files={"file": ("s60.mp4", fh, "video/mp4")},
                           headers={"Accept": "text/event-stream"}) as resp:
            assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
            job_id = resp.headers["x-job-id"]
            windows = 0
            for line in resp.iter_lines():
                if line == "event: window":
                    windows += 1
                    t0 = time.perf_counter()
                    assert httpx.get(base + "/health", timeout=5).json() == {"status": "ok"}
                    assert time.perf_counter() - t0 < 1.0
                if windows == 2:
                    break  # the client goes away mid-job
    for _ in range(100):
        st = httpx.get(f"{base}/timeline/{job_id}", timeout=5).json()
        if st["state"] != "running":
            break
        time.sleep(0.1)
    assert st["state"] == "cancelled" and "closed the event stream" in st["error"]["detail"], st
    from openpack_vlm.timeline.windows import expected_windows

    total = expected_windows(int(round(truth["seconds"] * 25)), 62)
    assert st["progress"]["windows_done"] < st["progress"]["windows_total"] == total
    assert f"timeline {job_id}: client disconnected, cancelled" in log.read_text()


def test_a_server_with_an_api_key_asks_for_it_once_and_then_answers(tiny_model_dir, repo_root, tmp_path):
    """API_KEY set: the page shell loads without it, its first API call gets 401, the page asks for the key, and with
    it the upload is answered; the page's CSP allows its script (a file) and nothing inline."""
    from selenium.webdriver.common.by import By

    key = "browser-test-key-0123456789"
    env = {"MODEL_ID": str(tiny_model_dir), "QUANTIZATION": "none", "DEVICE": "cpu", "OMP_NUM_THREADS": "1",
           "API_KEY": key}
    with serve(repo_root, env, tmp_path / "server.log") as (base, _), chrome() as driver:
        driver.get(base + "/")
        alert = _wait(driver, lambda d: _alert(d), timeout=30)  # /ready said 401: the page asks
        assert "API key" in alert.text
        alert.send_keys(key)
        alert.accept()
        _wait(driver, lambda d: d.find_element(By.ID, "model").text.startswith("model: ") and
              str(tiny_model_dir) in d.find_element(By.ID, "model").text)
        upload(driver, REAL_VIDEOS / "box.mp4", "clip")
        _wait(driver, lambda d: d.find_element(By.ID, "clip-result").is_displayed())
        assert json.loads(driver.find_element(By.ID, "json").text)["clip_id"] == "box"
        assert not driver.find_element(By.ID, "error").is_displayed()


def _alert(driver):
    from selenium.common.exceptions import NoAlertPresentException

    try:
        return driver.switch_to.alert
    except NoAlertPresentException:
        return False
