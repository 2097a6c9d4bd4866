"""Serving: settings, uploads, isolated decoding, the FastAPI app (serve.py is its CLI)."""
