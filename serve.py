"""FastAPI service: POST a video clip, get the dominant operation, its frame span and the next operation as JSON.

    python serve.py                                   # real model, settings from the environment, 0.0.0.0:8000
    MODEL_ID=tiny QUANTIZATION=none python serve.py --port 8000          # offline smoke test, tiny random model
    MODEL_ID=Qwen/Qwen2-VL-2B-Instruct ADAPTER_PATH=runs/r1/adapter python serve.py
    uvicorn serve:app --host 0.0.0.0 --port 8000       # the same app under uvicorn's own CLI

    curl -F file=@clip.mp4 http://127.0.0.1:8000/predict
    curl http://127.0.0.1:8000/health ; curl http://127.0.0.1:8000/ready ; open http://127.0.0.1:8000/docs

Settings (environment; see openpack_vlm.service.ServeConfig): MODEL_ID, ADAPTER_PATH, QUANTIZATION (auto|4bit|none),
DEVICE, MAX_UPLOAD_MB, MAX_CLIP_SECONDS, MAX_FRAME_PIXELS, MAX_PENDING, DECODE_WORKERS, DECODE_TIMEOUT_S,
DECODE_MEMORY_MB, UPLOAD_DIR, HOST, PORT, LOG_LEVEL. Command-line options override the environment. The model loads
after the server starts (``/ready`` is 503 until then); importing this module loads nothing.
"""
from __future__ import annotations

import argparse
import logging
import sys

from openpack_vlm.service import ServeConfig, create_app

_APP = None


def __getattr__(name: str):
    """``serve.app`` for ``uvicorn serve:app``: built on first access from the environment (model loads in lifespan)."""
    global _APP
    if name != "app":
        raise AttributeError(f"module 'serve' has no attribute {name!r}")
    if _APP is None:
        try:
            _APP = create_app(ServeConfig.from_env())
        except ValueError as exc:  # bad setting: one line, no traceback
            raise SystemExit(f"serve.py: {exc}") from None
    return _APP


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Serve POST /predict (video clip -> operation JSON) with uvicorn.")
    p.add_argument("--host", help="bind address (env HOST, default 0.0.0.0)")
    p.add_argument("--port", type=int, help="port (env PORT, default 8000)")
    p.add_argument("--model", dest="model_id", help="MODEL_ID: hub id, local dir or 'tiny'")
    p.add_argument("--adapter", dest="adapter_path", help="ADAPTER_PATH: LoRA adapter dir (a training run's adapter/)")
    p.add_argument("--quantization", choices=["auto", "4bit", "none"], help="QUANTIZATION (default auto)")
    p.add_argument("--device", help="DEVICE: auto | cuda | cpu")
    p.add_argument("--log-level", dest="log_level", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--healthcheck", action="store_true",
                   help="GET http://127.0.0.1:PORT/health once; exit 0 if it answers 200 (Docker HEALTHCHECK)")
    return p


def healthcheck(port: int, timeout: float = 4.0) -> int:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=timeout) as r:
            ok = r.status == 200
    except OSError as exc:
        print(f"serve.py: /health on port {port} did not answer: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None and k != "healthcheck"}
    try:
        cfg = ServeConfig.from_env(**overrides)
    except (ValueError, TypeError) as exc:
        print(f"serve.py: {exc}", file=sys.stderr)
        return 2
    if args.healthcheck:
        return healthcheck(cfg.port)
    import uvicorn

    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(f"serve.py: model {cfg.model_id} adapter={cfg.adapter_path} on http://{cfg.host}:{cfg.port} "
          f"(docs at /docs, ready at /ready)", flush=True)
    uvicorn.run(create_app(cfg), host=cfg.host, port=cfg.port, log_level=cfg.log_level, timeout_graceful_shutdown=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
