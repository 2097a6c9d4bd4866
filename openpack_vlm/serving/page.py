"""The web page at ``/``: static/index.html (plain HTML and CSS, the server's limits and the timeline's operation
colours filled in) and its script static/page.js (served as a file, so the page's CSP allows no inline script; no
CDN, no build step)."""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

from ..schema import CLIP_FRAMES, FPS
from ..timeline.plot import OPERATION_COLORS
from .settings import ServeConfig


@lru_cache(maxsize=1)
def _template() -> str:
    return resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def page_js() -> str:
    return resources.files(__package__).joinpath("static/page.js").read_text(encoding="utf-8")


def page_html(cfg: ServeConfig) -> str:
    # the script's settings travel as a JSON data block (not executed: the page's CSP allows no inline script);
    # "<" escaped so no value can close the block
    config = json.dumps({"colors": OPERATION_COLORS, "fps": FPS, "clip_frames": CLIP_FRAMES}).replace("<", "\\u003c")
    values = {
        "__PAGE_CONFIG__": config,
        "__MAX_CLIP_SECONDS__": f"{cfg.max_clip_seconds:g}",
        "__MAX_TIMELINE_SECONDS__": f"{cfg.max_timeline_seconds:g}",
        "__MAX_UPLOAD_MB__": f"{cfg.max_upload_mb:g}",
        "__MAX_TIMELINE_UPLOAD_MB__": f"{cfg.max_timeline_upload_mb:g}",
        "__STRIDE_S__": f"{cfg.timeline_stride_s:g}",
        "__VERSION__": __import__("openpack_vlm").__version__,
    }
    html = _template()
    for key, value in values.items():
        html = html.replace(key, value)
    return html
