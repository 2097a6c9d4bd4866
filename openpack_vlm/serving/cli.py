"""The command line of the API server (``serve.py``, the ``openpack-serve`` command): one flag per ``ServeConfig``
field, ``--healthcheck`` for Docker, then uvicorn with the tested settings."""
from __future__ import annotations

import argparse
import logging
import sys

from ..platform_check import Platform
from .settings import ServeConfig


def build_parser() -> argparse.ArgumentParser:
    """One flag per ServeConfig field (``--model_id`` / ``--model-id``, help from the field's description); a flag
    given overrides the environment variable of the same name."""
    p = argparse.ArgumentParser(description="Serve POST /predict (video clip -> operation JSON) with uvicorn.")
    for name, f in ServeConfig.model_fields.items():
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        flags += {"model_id": ["--model"], "adapter_path": ["--adapter"]}.get(name, [])
        p.add_argument(*flags, dest=name, default=None, help=f"{name.upper()}: {f.description}")
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

    platform = Platform.detect()
    problem = platform.problem()
    if problem and cfg.device != "cpu":  # a GPU torch cannot use: say so now, not as a CPU server minutes later
        print(f"serve.py: {problem} (DEVICE=cpu serves on the CPU anyway)", file=sys.stderr)
        return 1
    # deferred: the app's routes load torch, fastapi and the frame code (~1 s); Docker's HEALTHCHECK runs
    # `serve.py --healthcheck` every 30 s beside the model, and a refused start should not pay for them either
    from .app import create_app

    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(f"serve.py: {platform.summary()}", flush=True)
    print(f"serve.py: model {cfg.model_id} adapter={cfg.adapter_path} on http://{cfg.host}:{cfg.port} "
          f"(docs at /docs, ready at /ready)", flush=True)
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not cfg.api_keys:
        print(f"serve.py: listening on {cfg.host} with no API_KEY: anyone who reaches the port can run the model "
              "(set API_KEY, or put a proxy with authentication in front; docs/reverse_proxy.md)", flush=True)
    # limit_concurrency: connections beyond it get 503 before their request is read; timeout_keep_alive: idle
    # connections are closed (s); no "server: uvicorn" header; h11 (the tested parser): a request it cannot parse,
    # e.g. a malformed Content-Length, gets a 400 and the connection closes (httptools, if installed, would reset it)
    uvicorn.run(create_app(cfg), host=cfg.host, port=cfg.port, log_level=cfg.log_level, timeout_graceful_shutdown=10,
                limit_concurrency=cfg.limit_concurrency, timeout_keep_alive=cfg.timeout_keep_alive_s,
                server_header=False, http="h11")
    return 0

