"""Headless Chromium (Debian's chromium + chromium-driver, driven by Selenium) against a real ``serve.py``: the
browser test and scripts/page_screenshot.py use these helpers. Nothing is downloaded: Selenium is given the
system's chromedriver, and Chromium's background networking is off (this machine has no outside network)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-default-apps", "--disable-extensions", "--window-size=1280,1400")


def missing() -> str | None:
    """Why the browser cannot run here (None when it can): what to install."""
    for path, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (Path(path).exists() or shutil.which(path)):
            return f"{path} not found: apt-get install chromium chromium-driver (scripts/install.sh does) [{pkg}]"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium not installed: pip install -r requirements-dev.txt"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_server(proc: subprocess.Popen) -> None:
    """SIGINT (uvicorn's graceful stop), 30 s to exit, then kill."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextmanager
def serve(repo_root: Path, env: dict, log_path: Path, timeout: float = 240.0):
    """``python serve.py`` on a free port until /ready answers 200; yields (base URL, the process); stops it with
    SIGINT."""
    import httpx2 as httpx

    port = free_port()
    full_env = dict(os.environ, HOST="127.0.0.1", PORT=str(port), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                    **env)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, str(repo_root / "serve.py")], cwd=repo_root, env=full_env,
                                stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited ({proc.returncode}): {log_path.read_text()[-3000:]}")
            if time.time() > deadline:
                raise RuntimeError(f"server not ready in {timeout:g} s: {log_path.read_text()[-3000:]}")
            try:
                key = {"X-API-Key": env["API_KEY"]} if env.get("API_KEY") else {}
                if httpx.get(base + "/ready", timeout=2, headers=key).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        yield base, proc
    finally:
        stop_server(proc)


@contextmanager
def chrome():
    """A headless Chromium WebDriver with a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    why = missing()
    if why:
        raise RuntimeError(why)
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which(CHROMIUM) or CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    for flag in CHROMIUM_FLAGS + (f"--user-data-dir={profile}",):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=shutil.which(CHROMEDRIVER) or CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def upload(driver, path: Path, mode: str = "clip", stride: float | None = None) -> None:
    """Choose ``path`` in the page's file input, the mode (clip | timeline), optionally the stride; press Analyse."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "file").send_keys(str(Path(path).resolve()))
    driver.find_element(By.ID, f"mode-{mode}").click()
    if stride is not None:
        box = driver.find_element(By.ID, "stride")
        box.clear()
        box.send_keys(str(stride))
    driver.find_element(By.ID, "run").click()
