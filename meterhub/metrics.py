"""Prometheus exposition shared by every long-running part.

Each part keeps its counters where its code already keeps them (``GatewayStats``,
``CollectorStats``, the database) and describes them to Prometheus with a small collector
that reads them at scrape time, so the hot paths do not carry a metrics library. The one
thing a scrape cannot reconstruct, a latency distribution, is observed where it happens into
a :class:`prometheus_client.Histogram` created with ``registry=None`` and yielded by that
part's collector.

``/metrics`` is served by aiohttp on the part's own event loop: a collector reads the part's
state on the same thread that changes it, and an asynchronous ``refresh`` (a database query)
runs before each scrape.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

__all__ = [
    "LATENCY_BUCKETS_S",
    "Collector",
    "CounterMetricFamily",
    "Exporter",
    "GaugeMetricFamily",
    "Metric",
    "add_metrics_option",
    "counter",
    "counters",
    "gauge",
    "labelled",
    "metrics_endpoint",
    "parse_listen",
    "registry_of",
    "serve_metrics",
    "task_restarts",
]

# from a fast local round trip to a slow serial poll behind a backlog
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)

Refresh = Callable[[], Awaitable[None]]


def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    """One unlabelled counter (``name`` without ``_total``: the library appends it)."""
    return CounterMetricFamily(name, doc, value=value)


def counters(prefix: str, rows: Iterable[tuple[str, str, float]]) -> Iterator[CounterMetricFamily]:
    """Unlabelled counters named ``prefix + name``, one per (name, doc, value)."""
    for name, doc, value in rows:
        yield counter(prefix + name, doc, value)


def task_restarts(prefix: str, restarts: Mapping[str, int]) -> Metric:
    """Restarts of a part's supervised tasks, by task: every part reports them alike."""
    return labelled(
        CounterMetricFamily,
        prefix + "task_restarts",
        "Supervised task restarts",
        ("task",),
        sorted(((task,), n) for task, n in restarts.items()),
    )


def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def labelled(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    doc: str,
    labels: tuple[str, ...],
    rows: Iterable[tuple[tuple[str, ...], float]],
) -> Metric:
    """A family with one sample per label tuple."""
    family = kind(name, doc, labels=list(labels))
    for values, value in rows:
        family.add_metric(list(values), value)
    return family


def parse_listen(text: str, *, key: str = "metrics.listen") -> tuple[str, int]:
    """``"127.0.0.1:9101"`` or ``"[::1]:9101"`` -> (host, port), naming ``key`` on error."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"{key}: expected HOST:PORT, got {text!r}")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ValueError(f"{key}: {host!r} is not an IP address (or localhost)") from None
    if not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ValueError(f"{key}: port must be 0-65535 (0: any free port), got {port_text!r}")
    return host, int(port_text)


class _Once(Collector):
    """Adapts a generator function to the registry's Collector interface."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Metric]:
        return iter(self._collect())


def registry_of(*collects: Callable[[], Iterable[Metric]]) -> CollectorRegistry:
    """A registry of its own (not the process-global one: tests run several parts)."""
    registry = CollectorRegistry(auto_describe=False)
    for collect in collects:
        registry.register(_Once(collect))
    return registry


@contextlib.asynccontextmanager
async def serve_metrics(
    registry: CollectorRegistry, listen: str, *, refresh: Refresh | None = None
) -> AsyncIterator[tuple[str, int]]:
    """Serve ``GET /metrics`` on ``listen`` while the block runs; yields the bound address
    (port 0 picks a free one)."""
    host, port = parse_listen(listen)

    async def metrics(_request: web.Request) -> web.Response:
        if refresh is not None:
            try:
                await refresh()
            except Exception as exc:
                log.warning("metrics refresh failed: %s", type(exc).__name__)
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
        server: Any = site._server  # aiohttp keeps the asyncio Server there
        sockets = server.sockets if server else []
        bound = sockets[0].getsockname()[:2] if sockets else (host, port)
        log.info("metrics on http://%s:%d/metrics", bound[0], bound[1])
        yield bound[0], bound[1]
    finally:
        await runner.cleanup()


class Exporter(Protocol):
    """What a part hands to :func:`metrics_endpoint`."""

    registry: CollectorRegistry

    async def refresh(self) -> None: ...


def add_metrics_option(parser: Any) -> None:
    """The same ``--metrics HOST:PORT`` flag on every long-running command."""
    parser.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        type=_listen_arg,
        help="serve Prometheus metrics at http://HOST:PORT/metrics",
    )


def _listen_arg(text: str) -> str:
    import argparse

    try:
        parse_listen(text, key="--metrics")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


@contextlib.asynccontextmanager
async def metrics_endpoint(
    listen: str | None, exporter: Callable[[], Exporter]
) -> AsyncIterator[tuple[str, int] | None]:
    """``/metrics`` while the block runs when ``listen`` is set; nothing otherwise."""
    if listen is None:
        yield None
        return
    made = exporter()
    async with serve_metrics(made.registry, listen, refresh=made.refresh) as bound:
        yield bound
