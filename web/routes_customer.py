"""The customer's own page: ``/my/...`` answers for the billing customer the login is linked
to (role ``customer``; staff roles are refused here and customers everywhere else)."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from web import customer_views, database, inputs
from web._http import API, current_user, json_response, requires
from web.errors import Forbidden, NotFound

routes = web.RouteTableDef()


async def _customer_id(request: web.Request) -> str:
    user = current_user(request)
    found = await database.run(request, customer_views.customer_of_login, user.id)
    if found is None:
        raise Forbidden(f"{user.name} is not linked to a customer; ask the utility's staff")
    return found


@routes.get(f"{API}/my/accounts")
@requires("customer")
async def my_accounts(request: web.Request) -> web.Response:
    customer = await _customer_id(request)
    return json_response(await database.run(request, customer_views.overview, customer))


@routes.get(f"{API}/my/usage")
@requires("customer")
async def my_usage(request: web.Request) -> web.Response:
    customer = await _customer_id(request)
    account = inputs.query_text(request, "account")
    days = inputs.query_int(request, "days", default=30, lo=1, hi=92)
    found = await database.run(
        request, customer_views.usage, customer, account, days, datetime.now(UTC)
    )
    if found is None:
        raise NotFound(f"no account {account!r} of yours")
    return json_response(found)


@routes.get(f"{API}/my/notices")
@requires("customer")
async def my_notices(request: web.Request) -> web.Response:
    customer = await _customer_id(request)
    limit = inputs.query_int(request, "limit", default=50, lo=1, hi=200)
    rows = await database.run(request, customer_views.notices, customer, limit)
    return json_response({"notices": rows})


@routes.get(f"{API}/my/bills")
@requires("customer")
async def my_bills(request: web.Request) -> web.Response:
    customer = await _customer_id(request)
    limit = inputs.query_int(request, "limit", default=24, lo=1, hi=120)
    rows = await database.run(request, customer_views.bills, customer, limit)
    return json_response({"bills": rows})


@routes.get(API + "/my/bills/{id}")
@requires("customer")
async def my_bill(request: web.Request) -> web.Response:
    customer = await _customer_id(request)
    bill_id = inputs.path_id(request)
    page = await database.run(request, customer_views.bill_page, customer, bill_id)
    if page is None:
        raise NotFound(f"no bill {bill_id} of yours")
    return web.Response(text=page, content_type="text/html")
