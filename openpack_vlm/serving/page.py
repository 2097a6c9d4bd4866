"""The web page at ``/``: one self-contained HTML file (static/index.html: plain HTML, CSS and JavaScript, no CDN,
no build step) with the server's limits and the timeline's operation colours filled in."""
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


def page_html(cfg: ServeConfig) -> str:
    values = {
        "__OPERATION_COLORS__": json.dumps(OPERATION_COLORS),
        "__MAX_CLIP_SECONDS__": f"{cfg.max_clip_seconds:g}",
        "__MAX_TIMELINE_SECONDS__": f"{cfg.max_timeline_seconds:g}",
        "__MAX_UPLOAD_MB__": f"{cfg.max_upload_mb:g}",
        "__MAX_TIMELINE_UPLOAD_MB__": f"{cfg.max_timeline_upload_mb:g}",
        "__STRIDE_S__": f"{cfg.timeline_stride_s:g}",
        "__FPS__": str(FPS),
        "__CLIP_FRAMES__": str(CLIP_FRAMES),
        "__VERSION__": __import__("openpack_vlm").__version__,
    }
    html = _template()
    for key, value in values.items():
        html = html.replace(key, value)
    return html
