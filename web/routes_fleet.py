"""Read endpoints for the fleet: gateways, meters, their history, anomalies, dead letters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from aiohttp import web

from collector import read_model as collector_read
from meterhub.quantities import QUANTITIES
from web import database, inputs, queries
from web._http import API, SETTINGS_KEY, json_response, page, requires
from web.errors import BadRequest, NotFound

routes = web.RouteTableDef()

MAX_SPAN = timedelta(days=400)


def _offline_after(request: web.Request) -> float:
    return request.app[SETTINGS_KEY].offline_after_s


def _range(request: web.Request, default: timedelta) -> tuple[datetime, datetime]:
    end = inputs.query_time(request, "to") or datetime.now(UTC)
    start = inputs.query_time(request, "from") or end - default
    if start > end:
        raise BadRequest("from must not be after to")
    # A longer range is cut to its newest MAX_SPAN; the answer's from/to say what was served.
    return max(start, end - MAX_SPAN), end


@routes.get(f"{API}/gateways")
@requires("viewer")
async def list_gateways(request: web.Request) -> web.Response:
    rows = await database.run(request, collector_read.gateways, _offline_after(request))
    return json_response({"gateways": rows})


@routes.get(API + "/gateways/{gateway}")
@requires("viewer")
async def get_gateway(request: web.Request) -> web.Response:
    name = inputs.path_text(request, "gateway")
    limit = inputs.query_int(request, "events", default=50, lo=0, hi=500)

    def load(conn: psycopg.Connection[Any]) -> dict[str, object] | None:
        gw = collector_read.gateway(conn, name, _offline_after(request))
        if gw is None:
            return None
        return {**gw, "events": collector_read.gateway_events(conn, name, limit),
                "meter_ids": collector_read.gateway_meter_ids(conn, name)}

    gw = await database.run(request, load)
    if gw is None:
        raise NotFound(f"no gateway {name!r} has been heard from")
    return json_response(gw)


@routes.get(f"{API}/meters")
@requires("viewer")
async def list_meters(request: web.Request) -> web.Response:
    gateway = inputs.query_text(request, "gateway")
    search = inputs.query_text(request, "q")
    limit, offset = page(request, 200)
    rows, total = await database.run(request, queries.fleet_meters, gateway, search, limit, offset)
    return json_response({"meters": rows, "total": total, "limit": limit, "offset": offset})


@routes.get(API + "/meters/{meter}")
@requires("viewer")
async def get_meter(request: web.Request) -> web.Response:
    meter_id = inputs.path_text(request, "meter")
    row = await database.run(request, queries.meter_detail, meter_id)
    if row is None:
        raise NotFound(f"no meter {meter_id!r}")
    return json_response(row)


@routes.get(API + "/meters/{meter}/history")
@requires("viewer")
async def meter_history(request: web.Request) -> web.Response:
    """One quantity over a range; the resolution follows the range unless asked for."""
    meter_id = inputs.path_text(request, "meter")
    quantity = inputs.query_text(request, "quantity", default="power_active_total")
    assert quantity is not None
    if quantity not in QUANTITIES:
        raise BadRequest(f"quantity {quantity!r} is unknown; one of {', '.join(QUANTITIES)}")
    start, end = _range(request, timedelta(hours=1))
    resolution = inputs.query_text(
        request, "resolution", choices=("auto", *queries.RESOLUTIONS), default="auto")
    if resolution == "auto" or resolution is None:
        resolution = queries.pick_resolution(end - start)
    if resolution == "raw" and end - start > timedelta(days=2):
        raise BadRequest("raw readings are served for ranges up to 2 days; use a bucket")

    def load(conn: psycopg.Connection[Any]) -> list[collector_read.Point] | None:
        if collector_read.meter(conn, meter_id) is None:
            return None
        return collector_read.history(conn, meter_id, quantity, start, end,
                                      queries.RESOLUTIONS[resolution], queries.MAX_RAW_POINTS)

    points = await database.run(request, load)
    if points is None:
        raise NotFound(f"no meter {meter_id!r}")
    return json_response({
        "meter": meter_id, "quantity": quantity, "unit": QUANTITIES[quantity].unit,
        "from": start, "to": end, "resolution": resolution, "points": points,
    })


@routes.get(API + "/meters/{meter}/intervals")
@requires("viewer")
async def meter_intervals(request: web.Request) -> web.Response:
    """Validated interval consumption with the anomalies in the same range, for the chart."""
    meter_id = inputs.path_text(request, "meter")
    start, end = _range(request, timedelta(hours=24))
    limit = inputs.query_int(request, "limit", default=2000, lo=1, hi=5000)

    def load(conn: psycopg.Connection[Any]) -> dict[str, object] | None:
        if collector_read.meter(conn, meter_id) is None:
            return None
        return {
            "meter": meter_id, "from": start, "to": end,
            "intervals": collector_read.intervals(conn, meter_id, start, end, limit),
            "anomalies": collector_read.anomalies(conn, meter_id, None, start, end, 1000, 0),
        }

    out = await database.run(request, load)
    if out is None:
        raise NotFound(f"no meter {meter_id!r}")
    return json_response(out)


@routes.get(f"{API}/anomalies")
@requires("viewer")
async def list_anomalies(request: web.Request) -> web.Response:
    meter_id = inputs.query_text(request, "meter")
    rule = inputs.query_text(request, "rule")
    start = inputs.query_time(request, "from")
    end = inputs.query_time(request, "to")
    limit, offset = page(request)
    rows = await database.run(request, collector_read.anomalies, meter_id, rule, start, end, limit,
                              offset)
    return json_response({"anomalies": rows, "limit": limit, "offset": offset})


@routes.get(f"{API}/pending-meters")
@requires("viewer")
async def list_pending_meters(request: web.Request) -> web.Response:
    status = inputs.query_text(request, "status", choices=("pending", "rejected"))
    rows = await database.run(request, collector_read.pending_meters, status)
    return json_response({"pending_meters": rows})


@routes.get(f"{API}/dead-letters")
@requires("viewer")
async def list_dead_letters(request: web.Request) -> web.Response:
    gateway = inputs.query_text(request, "gateway")
    limit, offset = page(request)
    rows, total = await database.run(request, collector_read.dead_letters, gateway, limit, offset)
    return json_response({"dead_letters": rows, "total": total, "limit": limit,
                          "offset": offset})
