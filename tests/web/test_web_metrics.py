"""The web service's /metrics: on a listener of its own, requests counted by route template."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from web_helpers import free_port

from web import create_app
from web.metrics import install

P = "meterhub_web_"


async def test_requests_are_counted_by_route_template(db_url: str, scrape: Any) -> None:
    app = create_app(db_url, live_interval_s=0.3)
    port = free_port()
    install(app, f"127.0.0.1:{port}")
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/api/v1/health")).status == 200
        for meter in ("m1", "m2", "../../etc"):  # ids never become label values
            await client.get(f"/api/v1/meters/{meter}")
        await client.get("/no/such/page")
        m = await scrape(("127.0.0.1", port))
        # the operators' port does not serve the figures
        assert (await client.get("/metrics")).status == 404
    assert (
        m[
            (
                P + "requests_total",
                (("method", "GET"), ("route", "/api/v1/health"), ("status", "200")),
            )
        ]
        == 1
    )
    routes = {
        dict(labels)["route"] for (name, labels), _ in m.items() if name == P + "requests_total"
    }
    assert not any("m1" in r or "etc" in r for r in routes), routes
    assert "unmatched" in routes
    assert m[(P + "request_seconds_count", (("route", "/api/v1/health"),))] == 1
