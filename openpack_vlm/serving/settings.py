"""Serving settings: one pydantic-settings class, read from the environment (names = field names upper-cased).

Each field's ``description`` is its documentation: docs/serving.md's settings table and the docker-compose environment are
generated from / tested against ``ServeConfig.model_fields`` (``settings_table()``), so they cannot drift.
"""
from __future__ import annotations

import contextvars
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from ..data.pose_estimate import PoseEstimateConfig, parse_roi
from ..model.loading import hub_id

MIB = 1024 * 1024

# from_env(env=...) reads this mapping instead of os.environ (tests, callers with their own environment)
_ENV_OVERRIDE: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("serve_env", default=None)


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping instead of ``os.environ``."""

    def __init__(self, settings_cls, mapping: Mapping[str, str]):
        self._mapping = mapping
        super().__init__(settings_cls)

    def _load_env_vars(self):
        return {k.lower(): v for k, v in self._mapping.items() if v.strip()}  # empty = unset, as for os.environ


class ServeConfig(BaseSettings):
    """The service's settings. Environment variable = the field name in capitals (``model_id`` → ``MODEL_ID``)."""

    model_config = SettingsConfigDict(env_ignore_empty=True, extra="forbid", validate_default=True)

    model_id: str = Field("Qwen/Qwen2-VL-2B-Instruct",
                          description='base model: hub id, local dir, or "tiny" (offline random model)')
    adapter_path: str | None = Field(None, description="a training run's adapter/ dir (R/adapter) or a Hub id "
                                                       "USER/NAME[@REV] (model.loading.resolve_adapter); unset = base model")
    run_config: str | None = Field(None, description="run contract (run.json) to serve by; unset = the one beside "
                                   "ADAPTER_PATH (R/run.json, which evaluate.py completes with the tuned fusion weight)")
    frames_per_clip: int | None = Field(None, gt=0, description="frames the model sees per clip; must equal the run "
                                        "contract's K when one is loaded (checked at start-up); unset = the run's K")
    quantization: Literal["auto", "4bit", "none"] = Field(
        "auto", description="4bit | none | auto (4bit on a GPU, none on CPU)")
    device: str = Field("auto", description="torch device of the model: auto | cuda | cpu")
    max_upload_mb: float = Field(64.0, gt=0, description="file cap in MB; 5 s of 1080p H.264 is ~5-10 MB")
    max_clip_seconds: float = Field(30.0, gt=0, description="longer uploads get 422 (decode time grows with length)")
    max_frame_pixels: int = Field(3840 * 2160, gt=0,
                                  description="bigger frames get 422 (a 4K frame is ~25 MB decoded)")
    max_pending: int = Field(32, gt=0, description="requests in flight at once; more get 503 (each holds a 42 MB clip)")
    decode_workers: int = Field(2, gt=0, description="decoder processes = uploads decoded at once (one per core)")
    decode_timeout_s: float = Field(60.0, gt=0, description="a decode running longer is killed → 422 (5-s clip: <1 s)")
    decode_memory_mb: int = Field(4096, gt=0,
                                  description="address-space cap of a decoder process in MB (imports use ~1.4 GB)")
    max_timeline_seconds: float = Field(900.0, gt=0, description="POST /timeline: longer recordings get 422 "
                                         "(15 min = 359 windows at a 2.5-s stride)")
    max_timeline_upload_mb: float = Field(1024.0, gt=0, description="POST /timeline: file cap in MB (15 min of "
                                          "1080p H.264 is ~0.2-1 GB)")
    max_timeline_jobs: int = Field(2, gt=0, description="timeline jobs running at once; more get 503 (each holds "
                                   "a decoder process and ~250 MB of windows)")
    timeline_stride_s: float = Field(2.5, gt=0, le=5, description="default seconds between 5-s window starts "
                                     "(form field stride overrides)")
    timeline_batch_windows: int = Field(2, gt=0, description="windows per model call of a timeline job; a /predict "
                                        "request waits for at most one such batch")
    timeline_keep_s: float = Field(3600.0, gt=0, description="a finished timeline job's result is kept this long (s)")
    timeline_abandon_s: float = Field(60.0, gt=0, description="a job nobody streams or polls for this long (s) is "
                                      "cancelled (its client went away)")
    pose_roi: str | None = Field(None, description="skeleton runs: where the worker stands, as x,y,w,h shares of the "
                                 "frame (e.g. 0.3,0.2,0.4,0.8); unset = the whole frame, searched in crops when the "
                                 "worker is too small for the pose detector")
    pose_facing_camera: bool = Field(True, description="skeleton runs: the worker faces the camera most of a clip "
                                     "(as in OpenPack): a track seen from the back is mirrored left/right to match")
    min_worker_share: float = Field(0.5, ge=0, le=1, description="skeleton runs: share of the 15-Hz frames of a clip "
                                    "that must show a worker (a shoulder and 4 upper-body joints), else 422 no_worker")
    upload_dir: str | None = Field(None, description="where upload temp files live; unset = the system temp dir")
    free_text: bool = Field(False, description="also let the model write its free answer, to report in the "
                            "X-Output-Repair header whether it fit the schema; costs up to 128 decode steps per request")
    openpack_vlm_cache: str | None = Field(None, description='where the "tiny" model is built and cached; '
                                           "unset = ~/.cache/openpack-vlm")
    api_key: SecretStr | None = Field(None, description="when set, every route but /health and the page shell needs "
                                      "`Authorization: Bearer KEY` or `X-API-Key: KEY` (the page asks for it); unset = "
                                      "no authentication (loopback use)")
    api_keys_file: str | None = Field(None, description="a file of accepted keys, one per line (# comments), read at "
                                      "start-up; combines with API_KEY")
    cors_origins: str = Field("", description="comma-separated origins allowed to call the API from a browser (CORS); "
                              "empty = same origin only: a POST or DELETE whose Origin or Sec-Fetch-Site says another "
                              "site gets 403")
    body_timeout_s: float = Field(30.0, gt=0, allow_inf_nan=False, description="a request body that sends nothing "
                                  "for this long (s) gets 408 and its connection is closed (stalled uploads)")
    limit_concurrency: int = Field(64, gt=0, description="uvicorn: connections at once; more get 503 before a byte of "
                                   "their request is read")
    timeout_keep_alive_s: int = Field(5, gt=0, description="uvicorn: an idle keep-alive connection is closed after "
                                      "this many seconds")
    docs: bool = Field(True, description="serve Swagger UI at /docs (its scripts come from a CDN, so it needs the "
                       "internet in the browser); /openapi.json is served either way")
    host: str = Field("127.0.0.1", description="uvicorn bind address: loopback by default; the Docker image sets "
                      "0.0.0.0 (put a key or a proxy in front)")
    port: int = Field(8000, gt=0, lt=65536, description="TCP port, 1..65535")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("info", description="uvicorn log level")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        mapping = _ENV_OVERRIDE.get()
        env = env_settings if mapping is None else _MappingEnvSource(settings_cls, mapping)
        return (init_settings, env)

    @field_validator("api_keys_file")
    @classmethod
    def _keys_file(cls, value: str | None) -> str | None:
        if value is not None and not read_keys(value):
            raise ValueError(f"{value} holds no key (one per line; # starts a comment)")
        return value

    @field_validator("pose_roi")
    @classmethod
    def _roi(cls, value: str | None) -> str | None:
        if value is not None:
            parse_roi(value)
        return value

    def pose_config(self) -> PoseEstimateConfig:
        """How /predict, /timeline and the page estimate keypoints for a skeleton run."""
        return PoseEstimateConfig(min_found_share=self.min_worker_share, facing_camera=self.pose_facing_camera,
                                  roi=None if self.pose_roi is None else parse_roi(self.pose_roi))

    @field_validator("api_key")
    @classmethod
    def _key_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().strip()) < 16:
            raise ValueError("must be at least 16 characters (e.g. `python -c 'import secrets; "
                             "print(secrets.token_urlsafe(32))'`)")
        return value

    @field_validator("adapter_path", "upload_dir", "run_config")
    @classmethod
    def _exists(cls, value: str | None, info) -> str | None:
        if value is None:
            return value
        want_dir = info.field_name != "run_config"
        if info.field_name == "adapter_path" and hub_id(value) is not None:
            return value  # a Hub id: fetched (or read from the HF cache) when the model loads
        ok = Path(value).is_dir() if want_dir else Path(value).is_file()
        if not ok:
            what = {"adapter_path": "a directory (expected a training run's adapter/) or a Hub id USER/NAME",
                    "upload_dir": "a directory", "run_config": "a file (expected a run.json)"}[info.field_name]
            raise ValueError(f"{value} is not {what}")
        return value

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "ServeConfig":
        """Settings from ``env`` (default ``os.environ``) and keyword overrides (CLI flags); empty variables count as
        unset. A bad value → ValueError with one line naming the variable, the rule and the value."""
        token = _ENV_OVERRIDE.set(env)
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise ValueError(describe_error(exc)) from None
        finally:
            _ENV_OVERRIDE.reset(token)

    @property
    def api_keys(self) -> frozenset[str]:
        """Every accepted key (API_KEY and the lines of API_KEYS_FILE); empty = no authentication."""
        keys = set(read_keys(self.api_keys_file)) if self.api_keys_file else set()
        if self.api_key is not None:
            keys.add(self.api_key.get_secret_value().strip())
        return frozenset(keys)

    @property
    def allowed_origins(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MIB)

    @property
    def max_timeline_upload_bytes(self) -> int:
        return int(self.max_timeline_upload_mb * MIB)


def read_keys(path: str) -> list[str]:
    """The keys of an API_KEYS_FILE: one per line, blank lines and # comments skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def describe_error(exc: ValidationError) -> str:
    """The first problem of a ServeConfig ValidationError as one line: ``VAR must be ..., got 'value'``."""
    err = exc.errors()[0]
    var = str(err["loc"][0]).upper() if err.get("loc") else "setting"
    got = err.get("input")
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    if var == "API_KEY":  # never echo a secret, even a rejected one
        got = f"<{len(str(got))} characters>"
    if kind == "bool_parsing":
        rule = "must be 1/0, true/false, yes/no or on/off"
    elif kind in ("float_parsing", "float_type"):
        rule = "must be a number"
    elif kind == "finite_number":
        rule = "must be a finite number"
    elif kind.startswith("int_"):
        rule = "must be an integer"
    elif kind == "greater_than":
        rule = f"must be > {ctx.get('gt')}"
    elif kind == "less_than_equal":
        rule = f"must be <= {ctx.get('le')}"
    elif kind == "less_than":
        rule = f"must be < {ctx.get('lt')} (1..65535 for PORT)" if var == "PORT" else f"must be < {ctx.get('lt')}"
    elif kind == "literal_error":
        rule = f"must be one of {ctx.get('expected')}"
    else:
        rule = " ".join(str(err.get("msg", "invalid")).removeprefix("Value error, ").split())
    return f"{var} {rule}, got {got!r}"


def env_names() -> list[str]:
    """Every environment variable ServeConfig reads, in declaration order."""
    return [name.upper() for name in ServeConfig.model_fields]


def settings_table() -> str:
    """The settings as a Markdown table (docs/serving.md's, checked by tests/test_docs.py)."""
    rows = ["| variable | default | what it does |", "| --- | --- | --- |"]
    for name, f in ServeConfig.model_fields.items():
        default = "unset" if f.default is None else ("empty" if f.default == "" else f"`{f.default}`")
        rows.append(f"| `{name.upper()}` | {default} | {f.description} |")
    return "\n".join(rows)
