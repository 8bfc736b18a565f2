"""What an operator watches: `/metrics` in Prometheus' text format.

Each app has a registry of its own (two services in one process, as in the tests, never
share counters). Request counts and latencies come from an ASGI middleware that labels them
by route template (`/users/{user_id}/recommendations`, never the user's id); the model, the
queues and the memory are read when Prometheus scrapes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: F401 (re-exported)
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

# Request latencies from sub-millisecond stored reads to multi-second inserts.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServiceMetrics:
    """The service's instruments; `observe_*` are called where the work happens."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # resident memory, CPU seconds, open files
        self.requests = Counter(
            "tailor_requests", "HTTP requests answered.", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "tailor_request_seconds",
            "Time from a request's start to its response's end.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge(
            "tailor_model_version_info",
            "The model version served (1 on its label).",
            ["version"],
            registry=r,
        )
        self.swaps = Counter("tailor_model_swaps", "Model versions swapped in.", registry=r)
        self.retired_alive = Gauge(
            "tailor_retired_models_alive",
            "Swapped-out models still in memory (0 once requests on them end; more is a leak).",
            registry=r,
        )
        self.loaded_at = Gauge(
            "tailor_model_loaded_timestamp_seconds",
            "When the served model was loaded.",
            registry=r,
        )
        self.encoder_queue = Gauge(
            "tailor_encoder_queue_texts", "Texts waiting for the language model.", registry=r
        )
        self.users_in_memory = Gauge(
            "tailor_users_in_memory", "Users whose history is held in memory.", registry=r
        )
        self.live_users = Gauge(
            "tailor_live_users",
            "Users first seen live (not in the data) held in memory.",
            registry=r,
        )
        self.live_items = Gauge(
            "tailor_live_items",
            "Items added to the served model since it was trained.",
            registry=r,
        )
        self.evicted = Gauge(
            "tailor_evicted_users",
            "Live users dropped from memory (rebuilt on return).",
            registry=r,
        )
        self.livelog_commit = Histogram(
            "tailor_livelog_commit_seconds",
            "Durable commits to the live log.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.store_read = Histogram(
            "tailor_store_read_seconds",
            "Reads of the published recommendation lists.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._version: str | None = None

    def model_loaded(self, version: str, swapped: bool) -> None:
        if self._version is not None:
            self.model_info.remove(self._version)
        self.model_info.labels(version).set(1)
        self._version = version
        self.loaded_at.set(time.time())
        if swapped:
            self.swaps.inc()

    def render(self, refresh: Callable[[ServiceMetrics], None] | None = None) -> bytes:
        """The text Prometheus scrapes; `refresh` sets the gauges read at scrape time."""
        if refresh is not None:
            refresh(self)
        return generate_latest(self.registry)


class RequestMetrics:
    """ASGI middleware: every HTTP request counted and timed by its route template."""

    def __init__(self, app, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def tracked(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        finally:
            route = scope.get("route")
            # The template, never the path itself: ids would make one series per user.
            name = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(name, scope.get("method", ""), str(status[0])).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - started)
