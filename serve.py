"""FastAPI service: POST a video clip, get the dominant operation, its frame span and the next operation as JSON.

    python serve.py                                   # real model, settings from the environment, 127.0.0.1:8000
    MODEL_ID=tiny QUANTIZATION=none python serve.py --port 8000          # offline smoke test, tiny random model
    MODEL_ID=Qwen/Qwen2-VL-2B-Instruct ADAPTER_PATH=runs/r1/adapter python serve.py
    uvicorn serve:app --host 0.0.0.0 --port 8000       # the same app under uvicorn's own CLI

    curl -F file=@clip.mp4 http://127.0.0.1:8000/predict
    curl http://127.0.0.1:8000/health ; curl http://127.0.0.1:8000/ready ; open http://127.0.0.1:8000/docs

Settings: the environment variables of openpack_vlm.serving.settings.ServeConfig (docs/serving.md lists them,
generated from it); each has a flag of the same name (``--max_upload_mb`` / ``--max-upload-mb``) that overrides the environment. The
run contract (RUN_CONFIG, else run.json beside ADAPTER_PATH) sets K, the sampler, the JPEG round trip, the grammar and
its tuned weight. The model loads
after the server starts (``/ready`` is 503 until then); importing this module loads nothing.
"""
from __future__ import annotations

import sys

from openpack_vlm.serving.cli import build_parser, healthcheck, main  # noqa: F401 - the CLI (also `openpack-serve`)
from openpack_vlm.serving.settings import ServeConfig

_APP = None


def __getattr__(name: str):
    """``serve.app`` for ``uvicorn serve:app``: built on first access from the environment (model loads in lifespan)."""
    global _APP
    if name != "app":
        raise AttributeError(f"module 'serve' has no attribute {name!r}")
    if _APP is None:
        from openpack_vlm.serving.app import create_app  # here: `serve.py --healthcheck` (Docker) imports no app

        try:
            _APP = create_app(ServeConfig.from_env())
        except ValueError as exc:  # bad setting: one line, no traceback
            raise SystemExit(f"serve.py: {exc}") from None
    return _APP


if __name__ == "__main__":
    sys.exit(main())
