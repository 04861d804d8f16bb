"""Prometheus metrics of one server app, in the app's own registry (so that several apps in
one process, as in tests, never clash)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "channelmind_http_requests",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "channelmind_http_request_duration_seconds",
            "HTTP request latency by method and route template",
            ["method", "route"],
            registry=self.registry,
        )
        self.episodes_added = Counter(
            "channelmind_episodes_added", "Episodes stored", ["api"], registry=self.registry
        )
        self.searches = Counter(
            "channelmind_searches", "Memory searches", ["api"], registry=self.registry
        )
        self.set_aside = Gauge(
            "channelmind_records_set_aside",
            "Records stored but set aside: unreadable or unembeddable (see the server log)",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


def route_label(scope: Scope, root_path: str) -> str:
    """The route template a finished request matched (bounded label values): routing records
    the route in the scope, and a mount extends ``root_path``."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return "unmatched"
    prefix = str(scope.get("root_path", ""))[len(root_path) :]
    return f"{prefix}{path}" or "/"


class MetricsMiddleware:
    """Counts requests and measures their latency."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        root_path = str(scope.get("root_path", ""))
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = route_label(scope, root_path)
            method = str(scope.get("method", ""))
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)
