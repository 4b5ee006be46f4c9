"""The HTTP endpoint payment providers notify: ``POST /payments/<provider>``.

It is billing's own small server (``meterhub billing payments serve``), not the operators'
web: a provider authenticates by its signature, not by a session, and the endpoint does one
thing. Answers: 200 ``{"status": "applied" | "duplicate" | "waiting" | "ignored"}``
(providers stop retrying), 401 forged or replayed, 400 malformed, 409 transaction id reused
with other content, 422 refused (currency, amount, unknown account; recorded for staff),
404 unknown provider, 503 database unreachable (providers retry later). Refusals are logged
with the reason, never with the secret or the body.
"""

from __future__ import annotations

import asyncio
import logging
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from aiohttp import web
from psycopg_pool import ConnectionPool

from billing.errors import BillingError
from billing.ledger import CHANNELS
from billing.money import DEFAULT_MAX_TOPUP, MoneyError, parse_amount
from billing.payment_channels import MAX_BODY, SignatureError, WebhookProvider
from billing.payments import (
    CURRENCY,
    PROVIDER_NAME,
    PaymentConflict,
    PaymentError,
    PaymentRules,
    apply_payment,
)
from meterhub.security.secrets import SecretError, load_secret

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PaymentsConfig:
    """The providers that may notify, and what the site accepts."""

    providers: Mapping[str, WebhookProvider] = field(default_factory=dict)
    rules: PaymentRules = field(default_factory=PaymentRules)

    @classmethod
    def load(cls, path: Path) -> PaymentsConfig:
        """Read the TOML file; every problem names its key.

        ``currency = "CNY"``, ``max_amount = "100000"``, and one table per provider:
        ``[providers.acmepay] channel = "wechat", secret = {file = "acmepay.secret"},
        tolerance_s = 300``.
        """
        try:
            doc = tomllib.loads(path.read_text("utf-8"))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise BillingError(f"{path}: {exc}") from None
        return cls.from_dict(doc, base_dir=path.parent, source=str(path))

    @classmethod
    def from_dict(
        cls, doc: Mapping[str, Any], *, base_dir: Path | None = None, source: str = "payments"
    ) -> PaymentsConfig:
        problems: list[str] = []
        currency = doc.get("currency", CURRENCY)
        if not isinstance(currency, str) or len(currency) != 3 or not currency.isupper():
            problems.append(f"{source}: currency: a 3-letter ISO code like CNY")
        try:
            max_amount = parse_amount(
                str(doc.get("max_amount", DEFAULT_MAX_TOPUP)), what=f"{source}: max_amount"
            )
        except MoneyError as exc:
            problems.append(str(exc))
            max_amount = DEFAULT_MAX_TOPUP
        providers: dict[str, WebhookProvider] = {}
        tables = doc.get("providers", {})
        if not isinstance(tables, Mapping):
            problems.append(f"{source}: providers: must be a table")
            tables = {}
        for name, spec in tables.items():
            key = f"{source}: providers.{name}"
            try:
                providers[name] = _provider(name, spec, key, base_dir)
            except (BillingError, SecretError) as exc:
                problems.append(str(exc))
        unknown = set(doc) - {"currency", "max_amount", "providers"}
        problems += [f"{source}: {k}: unknown key" for k in sorted(unknown)]
        if problems:
            raise BillingError("; ".join(problems))
        return cls(providers, PaymentRules(str(currency), max_amount))


def _provider(name: str, spec: Any, key: str, base_dir: Path | None) -> WebhookProvider:
    if not isinstance(spec, Mapping):
        raise BillingError(f"{key}: must be a table")
    channel = spec.get("channel")
    if channel not in CHANNELS:
        raise BillingError(f"{key}.channel: one of {', '.join(CHANNELS)}")
    if "secret" not in spec:
        raise BillingError(f"{key}.secret: required ({{file = ...}} or {{env = ...}})")
    secret = load_secret(f"{key}.secret", spec["secret"], base_dir=base_dir)
    if secret.inline:
        raise BillingError(f"{key}.secret: give it as {{file = ...}} or {{env = ...}}, not inline")
    tolerance = spec.get("tolerance_s", 300)
    if (
        isinstance(tolerance, bool)
        or not isinstance(tolerance, int | float)
        or not (0 < tolerance <= 3600)
    ):
        raise BillingError(f"{key}.tolerance_s: seconds between 1 and 3600")
    if not PROVIDER_NAME.fullmatch(name):
        raise BillingError(
            f"{key}: a provider name is lowercase letters, digits, _ or -, "
            "at most 32, starting with a letter"
        )
    return WebhookProvider(name, secret, channel, float(tolerance))


_POOL = web.AppKey("pool", ConnectionPool)
_CONFIG = web.AppKey("config", PaymentsConfig)


def create_app(database_url: str, config: PaymentsConfig) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[_CONFIG] = config
    app[_POOL] = ConnectionPool(
        database_url, min_size=1, max_size=4, open=False, kwargs={"autocommit": True}
    )
    app.router.add_post("/payments/{provider}", _notify)
    app.on_startup.append(_open)
    app.on_cleanup.append(_close)
    return app


async def _open(app: web.Application) -> None:
    await asyncio.to_thread(app[_POOL].open, wait=True, timeout=15)


async def _close(app: web.Application) -> None:
    await asyncio.to_thread(app[_POOL].close)


def _answer(http_status: int, **body: Any) -> web.Response:
    return web.json_response(body, status=http_status)


async def _notify(request: web.Request) -> web.Response:
    config = request.app[_CONFIG]
    name = request.match_info["provider"]
    provider = config.providers.get(name)
    if provider is None:
        return _answer(404, error=f"no payment provider {name[:32]!r} is configured")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _answer(413, error=f"body over {MAX_BODY} bytes")
    try:
        notice = provider.parse(request.headers, body, now=datetime.now(UTC))
    except SignatureError as exc:
        log.warning(
            "payment notification refused",
            extra={"provider": name, "why": str(exc), "peer": request.remote},
        )
        return _answer(401, error=str(exc))
    except PaymentError as exc:
        log.warning("malformed payment notification", extra={"provider": name, "why": str(exc)})
        return _answer(400, error=str(exc))
    if notice is None:
        return _answer(200, status="ignored")

    def work() -> Any:
        with request.app[_POOL].connection() as conn:
            return apply_payment(conn, notice, channel=provider.channel, rules=config.rules)

    try:
        outcome = await asyncio.to_thread(work)
    except PaymentConflict as exc:
        log.warning("payment notification conflicts", extra={"provider": name, "why": str(exc)})
        return _answer(409, error=str(exc))
    except PaymentError as exc:
        return _answer(400, error=str(exc))
    except psycopg.OperationalError:
        log.exception("database unavailable for a payment notification")
        return _answer(503, error="try again later")
    if outcome.status == "refused":
        log.warning(
            "payment refused", extra={"provider": name, "txn": notice.txn_id, "why": outcome.reason}
        )
        return _answer(422, status="refused", error=outcome.reason)
    return _answer(200, status=outcome.status, reason=outcome.reason)


async def serve(
    database_url: str, config: PaymentsConfig, host: str, port: int, stop: asyncio.Event
) -> None:
    """Run the endpoint until ``stop`` is set."""
    runner = web.AppRunner(create_app(database_url, config))
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.warning(
        "payment notifications accepted",
        extra={"host": host, "port": port, "providers": sorted(config.providers)},
    )
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
