"""RequestGuard: what every request passes before the app reads a byte of its body.

In order (pure ASGI, outside FastAPI's body parsing, so a refused upload is never read, spooled or parsed):
1. a request id (the client's ``X-Request-ID`` when it is short and plain, else a new one), echoed in the response
   and in the error bodies and log lines of that request (``REQUEST_ID``);
2. the API key, when ``API_KEY`` / ``API_KEYS_FILE`` set one: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` on
   every route but ``OPEN_PATHS`` (liveness and the page shell, whose script asks for the key) → else 401;
3. no cross-site writes: a POST/PUT/PATCH/DELETE whose ``Origin`` is not this server's (nor one of ``CORS_ORIGINS``)
   or whose ``Sec-Fetch-Site`` says ``cross-site`` → 403 — a web page elsewhere cannot make a visitor's browser spend
   this server's GPU (a form POST needs no CORS preflight);
4. capacity, for uploads (POST /predict, /timeline): the model must be loaded (else 503 ``loading``), uploads in
   flight of both routes together stay under ``MAX_PENDING``, and a timeline upload needs a free job slot
   (``MAX_TIMELINE_JOBS``) → else 503 with Retry-After, at once;
5. a body that stops arriving: no message for ``BODY_TIMEOUT_S`` → 408 (the connection closes with it);
then the response gets the security headers (``nosniff``, no framing, no referrer; the page a CSP without inline
scripts). Request sizes are capped next, by ``app.UploadSizeLimit``.
"""
from __future__ import annotations

import asyncio
import contextvars
import hmac
import logging
import re
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

log = logging.getLogger("openpack_vlm.serving")
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
OPEN_PATHS = frozenset({"/health", "/", "/favicon.ico"})  # no key: liveness probes and the page shell
OPEN_PREFIXES = ("/static/",)  # the page's script and style
UPLOAD_PATHS = frozenset({"/predict", "/timeline"})
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SECURITY_HEADERS = {"x-content-type-options": "nosniff", "x-frame-options": "DENY", "referrer-policy": "no-referrer"}
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def error(status: int, code: str, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail, "request_id": REQUEST_ID.get()}, status_code=status,
                        headers=headers)


def not_ready(model, model_id: str) -> tuple[str, str] | None:
    """Why the model cannot answer yet, as (error code, detail), or None when it is loaded (/predict, /timeline,
    /ready and the guard's refusal before the body all answer 503 with it)."""
    if model is not None and model.ready:
        return None
    if model is not None and model.error:
        return "model_error", model.error
    return "loading", f"model {model_id} is loading"


class BodyTimeout(StarletteHTTPException):
    """The client stopped sending its body (raised from ``receive``; the app's handler answers 408)."""

    def __init__(self, seconds: float):
        super().__init__(408, f"no request body arrived for {seconds:g} s (BODY_TIMEOUT_S)")


class RequestGuard:
    def __init__(self, app, cfg):
        self.app, self.cfg = app, cfg
        self.keys = [k.encode() for k in cfg.api_keys]
        self.origins = set(cfg.allowed_origins)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        given = headers.get("x-request-id", "")
        rid = given if _ID_RE.match(given) else uuid.uuid4().hex[:16]
        token = REQUEST_ID.set(rid)
        path = scope["path"]

        started = False

        async def send_with_headers(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                h = MutableHeaders(scope=message)
                h["x-request-id"] = rid
                for k, v in SECURITY_HEADERS.items():
                    h.setdefault(k, v)
                if path == "/":
                    h["content-security-policy"] = PAGE_CSP
            await send(message)

        try:
            refusal = self._refusal(scope, headers)
            if refusal is not None:
                return await refusal(scope, receive, send_with_headers)
            upload = scope["method"] == "POST" and path in UPLOAD_PATHS
            state = scope["app"].state
            if upload:
                state.uploads[path] += 1
            try:
                await self.app(scope, self._timed(receive), send_with_headers)
            except Exception:
                # the detail goes to the log only: the client learns that it failed and which request id to quote
                log.exception("internal error [%s] %s %s", rid, scope["method"], path)
                if started:
                    raise
                await error(500, "internal", f"internal error; quote request id {rid} to the operator")(
                    scope, receive, send_with_headers)
            finally:
                if upload:
                    state.uploads[path] -= 1
        finally:
            REQUEST_ID.reset(token)

    # ------------------------------------------------------------------------------------------------ the checks
    def _refusal(self, scope, headers: Headers) -> JSONResponse | None:
        path, method = scope["path"], scope["method"]
        if self.keys and method != "OPTIONS" and path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES):
            if not self._key_ok(headers):
                return error(401, "unauthorized", "this server needs an API key: send `Authorization: Bearer KEY` "
                             "or `X-API-Key: KEY`", {"WWW-Authenticate": "Bearer"})
        if method in UNSAFE_METHODS:
            why = self._cross_site(scope, headers)
            if why:
                return error(403, "cross_site", why)
        if method == "POST" and path in UPLOAD_PATHS:
            return self._capacity(scope["app"].state, path)
        return None

    def _key_ok(self, headers: Headers) -> bool:
        auth = headers.get("authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get("x-api-key", "").strip()
        if not given:
            return False
        g = given.encode()
        ok = False
        for k in self.keys:  # every key compared in constant time: timing says nothing about which one is close
            ok |= hmac.compare_digest(g, k)
        return ok

    def _cross_site(self, scope, headers: Headers) -> str | None:
        origin = headers.get("origin", "").rstrip("/")
        if origin and origin != "null" and origin in self.origins:
            return None
        if headers.get("sec-fetch-site", "") == "cross-site":
            return "cross-site request refused (Sec-Fetch-Site: cross-site); list the calling site in CORS_ORIGINS"
        if origin:
            own = f"{scope.get('scheme', 'http')}://{headers.get('host', '')}"
            if origin != own:
                return f"request from origin {origin[:80]} refused (this server is {own[:80]}); list it in CORS_ORIGINS"
        return None

    def _capacity(self, state, path: str) -> JSONResponse | None:
        why = not_ready(getattr(state, "model", None), self.cfg.model_id)
        if why is not None:
            return error(503, *why, {"Retry-After": "5"})
        uploads = state.uploads
        busy = sum(uploads.values())
        if busy >= self.cfg.max_pending:
            return error(503, "busy", f"{busy} uploads in flight (MAX_PENDING={self.cfg.max_pending})",
                         {"Retry-After": "1"})
        if path == "/timeline":
            jobs = getattr(state, "timeline", None)
            running = (jobs.active() if jobs is not None else 0) + uploads["/timeline"]
            if running >= self.cfg.max_timeline_jobs:
                return error(503, "busy", f"{running} timeline jobs running or uploading (MAX_TIMELINE_JOBS="
                             f"{self.cfg.max_timeline_jobs})", {"Retry-After": "10"})
        return None

    def _timed(self, receive):
        """``receive`` that raises BodyTimeout when the body stalls; once the body is complete it waits freely (the
        app then only listens for the client's disconnect)."""
        timeout = self.cfg.body_timeout_s
        done = False

        async def timed_receive():
            nonlocal done
            if done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout)
            except asyncio.TimeoutError:
                raise BodyTimeout(timeout) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                done = True
            return message

        return timed_receive
