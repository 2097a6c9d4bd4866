"""Prometheus metrics at ``/metrics`` (behind the API key when one is set).

HTTP requests and their latency come from prometheus-fastapi-instrumentator (``http_requests_total``,
``http_request_duration_seconds``, by route template and status class); the service adds what only it knows: uploads
in flight per route (the ``MAX_PENDING`` queue), running timeline jobs, whether the model is loaded, and histograms of
the model's own time and of the wait for it per ``/predict`` request. Each app has its own registry, so several apps
in one process (tests) never collide.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_fastapi_instrumentator import Instrumentator

# seconds: a 2B clip takes ~0.2-2 s of model time on a GPU, a queued request waits up to a timeline batch
MODEL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)


class _ServiceCollector:
    """Gauges read from the app's state at scrape time."""

    def __init__(self, app):
        self.app = app

    def collect(self):
        state = self.app.state
        uploads = GaugeMetricFamily("openpack_uploads_in_flight", "uploads being received or answered (MAX_PENDING "
                                    "bounds their sum)", labels=["route"])
        for route, n in getattr(state, "uploads", {}).items():
            uploads.add_metric([route], n)
        yield uploads
        jobs = getattr(state, "timeline", None)
        yield GaugeMetricFamily("openpack_timeline_jobs_active", "timeline jobs running (MAX_TIMELINE_JOBS)",
                                value=jobs.active() if jobs is not None else 0)
        model = getattr(state, "model", None)
        yield GaugeMetricFamily("openpack_model_ready", "1 once the model is loaded",
                                value=1 if model is not None and model.ready else 0)


class ServiceMetrics:
    def __init__(self, app):
        self.registry = CollectorRegistry()
        self.model_seconds = Histogram("openpack_model_seconds", "model time per /predict request (s)",
                                       buckets=MODEL_BUCKETS, registry=self.registry)
        self.queue_seconds = Histogram("openpack_queue_seconds", "wait for the model per /predict request (s)",
                                       buckets=MODEL_BUCKETS, registry=self.registry)
        self.registry.register(_ServiceCollector(app))
        Instrumentator(registry=self.registry, excluded_handlers=["/metrics"]).instrument(app).expose(
            app, endpoint="/metrics", include_in_schema=False)
