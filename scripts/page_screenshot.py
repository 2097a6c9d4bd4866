"""Screenshots of the web page with real results, for README: a clip answered (/predict) and a recording's timeline
(/timeline), in Debian's headless Chromium against ``python serve.py`` (the browser test's helpers, tests/browser.py).

    python scripts/page_screenshot.py [--model tiny-real] [--adapter out/demo/run/adapter] \
        [--clip tests/data/videos/box.mp4] [--recording tests/data/videos/vtest.avi] [--out docs/figures]

Writes OUT/page_clip.png and OUT/page_timeline.png and prints what the page showed.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from browser import chrome, serve, upload  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny-real")
    ap.add_argument("--adapter", default=None)
    ap.add_argument("--clip", default=str(REPO / "tests/data/videos/box.mp4"))
    ap.add_argument("--recording", default=str(REPO / "tests/data/videos/vtest.avi"))
    ap.add_argument("--stride", type=float, default=2.5)
    ap.add_argument("--out", default="docs/figures")
    args = ap.parse_args(argv)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {"MODEL_ID": args.model, "QUANTIZATION": "none", "DEVICE": "cpu", "LOG_LEVEL": "warning"}
    if args.adapter:
        env["ADAPTER_PATH"] = str(Path(args.adapter).resolve())
    log = Path(tempfile.mkdtemp()) / "server.log"
    with serve(REPO, env, log) as (base, _), chrome() as driver:
        driver.get(base + "/")
        wait = WebDriverWait(driver, 600, poll_frequency=0.3)
        upload(driver, Path(args.clip), "clip")
        wait.until(lambda d: d.find_element(By.ID, "clip-result").is_displayed())
        driver.save_screenshot(str(out / "page_clip.png"))
        print("clip:", driver.find_element(By.ID, "json").text.replace("\n", " "))
        upload(driver, Path(args.recording), "timeline", stride=args.stride)
        wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("done in"))
        driver.save_screenshot(str(out / "page_timeline.png"))
        print("timeline:", driver.find_element(By.ID, "tl-summary").text)
    print(f"wrote {out / 'page_clip.png'} and {out / 'page_timeline.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
