"""The web service's Prometheus metrics: requests by route template and status, and latency.

Served on a listener of its own (``meterhub web --metrics HOST:PORT``), not on the operators'
port: the figures are for the site's monitoring, not for whoever can reach the page.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from prometheus_client import Counter, Histogram

from meterhub.metrics import LATENCY_BUCKETS_S, metrics_endpoint, registry_of

P = "meterhub_web_"


class WebMetrics:
    """Counters fed by :meth:`middleware`; ``registry`` and ``refresh`` for serving."""

    def __init__(self) -> None:
        self.requests = Counter(
            P + "requests",
            "HTTP requests by route and status",
            ("method", "route", "status"),
            registry=None,
        )
        self.latency = Histogram(
            P + "request_seconds",
            "HTTP request handling time by route",
            ("route",),
            buckets=LATENCY_BUCKETS_S,
            registry=None,
        )
        self.registry = registry_of(self.requests.collect, self.latency.collect)

    async def refresh(self) -> None:
        return None

    @web.middleware
    async def middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            # the route's template, never the raw path: ids in paths would explode the series
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            self.requests.labels(request.method, route, str(status)).inc()
            self.latency.labels(route).observe(time.perf_counter() - started)


METRICS_KEY = web.AppKey("metrics", WebMetrics)


def install(app: web.Application, listen: str) -> None:
    """Count every request of ``app`` and serve the figures on ``listen`` while it runs."""
    metrics = app[METRICS_KEY] = WebMetrics()
    app.middlewares.insert(0, metrics.middleware)

    async def serving(_app: web.Application) -> AsyncIterator[None]:
        async with metrics_endpoint(listen, lambda: metrics):
            yield

    app.cleanup_ctx.append(serving)
