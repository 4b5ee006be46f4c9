"""Billing wakes on PostgreSQL notifications, not on its poll: a top-up restores supply
with the fallback poll far away, and a notification lost while the listening connection
was down is caught up on when it comes back."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import psycopg
import pytest
from billing_helpers import T0, BillingKey, config, engines, put_intervals, put_meter, until
from fake_gateway import FakeGateway, running
from psycopg.conninfo import make_conninfo

from billing import BillingEngine, CreditSettings, adjust, create_account, topup
from billing.tariffs import load_tariffs
from meterhub import channels
from meterhub.settings import MqttSettings

pytestmark = pytest.mark.integration
FAST = CreditSettings(warning_to_final_s=0.2, final_to_cutoff_s=0.2)
SLOW_POLL_S = 60.0  # far beyond every wait below: a pass that happens was woken


def _account(db_url: str, site: str) -> None:
    """Account A1 with 1.00 yuan and meter m1 on gateway gw1, its ladder timers short."""
    with psycopg.connect(db_url, autocommit=True) as c:
        put_meter(c, "m1", site, "gw1")
        create_account(
            c,
            "A1",
            meters=["m1"],
            tariff="residential-flat",
            credit=FAST,
            opening_balance="1.00",
            charge_from=T0,
            tariffs=load_tariffs(),
        )


async def _cut_off(
    db_url: str, mqtt: MqttSettings, site: str, key: BillingKey, gw: FakeGateway
) -> None:
    """An account whose meter billing has cut off (an engine polling fast for the ladder's
    timers), then that engine stopped."""
    _account(db_url, site)
    async with engines(config(db_url, mqtt, key)) as (eng,):
        with psycopg.connect(db_url, autocommit=True) as c:
            put_intervals(c, "m1", ["1.0000", "1.0000"])
        await until(lambda: eng.stats.cutoffs_acked == 1)
    assert gw.relay["m1"] == "open"


@contextlib.asynccontextmanager
async def _cut_off_then_slow(
    db_url: str, mqtt: MqttSettings, site: str, key: BillingKey
) -> AsyncIterator[tuple[FakeGateway, BillingEngine]]:
    """A cut-off account, and an idle engine whose fallback poll is far away."""
    gw = FakeGateway(mqtt, site, key.keyring)
    async with running(gw):
        await _cut_off(db_url, mqtt, site, key, gw)
        async with engines(config(db_url, mqtt, key, poll_interval_s=SLOW_POLL_S)) as (eng,):
            await _idle(eng)
            yield gw, eng


async def _idle(eng: BillingEngine) -> None:
    """Listening, the start-up pass done, and no pass running for a while."""
    await until(lambda: eng.stats.listening and eng.stats.ticks >= 1)
    while True:
        ticks = eng.stats.ticks
        await asyncio.sleep(0.5)
        if eng.stats.ticks == ticks:
            return


async def test_a_topup_restores_without_waiting_for_the_poll(
    db_url: str, mqtt: MqttSettings, site: str, billing_key: BillingKey
) -> None:
    async with _cut_off_then_slow(db_url, mqtt, site, billing_key) as (gw, eng):
        started = time.monotonic()
        with psycopg.connect(db_url, autocommit=True) as c:
            topup(c, "A1", "10.00", "wechat", "WX-1")
        await until(lambda: eng.stats.restores_acked == 1, timeout=10)
        took = time.monotonic() - started
    assert gw.relay["m1"] == "closed"
    assert eng.stats.wakeups[channels.ACCOUNTS] == 1
    assert eng.stats.wakeups[channels.COMMANDS] == 1  # the restore it queued itself
    assert took < 5.0, took


async def test_a_notification_lost_with_the_listener_is_caught_up_on_reconnect(
    db_url: str, mqtt: MqttSettings, site: str, billing_key: BillingKey
) -> None:
    dbname = psycopg.conninfo.conninfo_to_dict(db_url)["dbname"]
    server = make_conninfo(db_url, dbname="postgres")
    async with _cut_off_then_slow(db_url, mqtt, site, billing_key) as (gw, eng):
        with (
            psycopg.connect(db_url, autocommit=True) as payments,
            psycopg.connect(server, autocommit=True) as admin,
        ):
            # the listener drops and cannot come back while the payment is made
            admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
            try:
                killed = admin.execute(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) "
                    "FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
                    (dbname, eng.listener_name),
                ).fetchone()
                assert killed == (1,)
                await until(lambda: not eng.stats.listening, timeout=10)
                topup(payments, "A1", "10.00", "wechat", "WX-2")
                await asyncio.sleep(2.0)
                assert eng.stats.restores_acked == 0  # nobody heard the payment
            finally:
                admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
        await until(lambda: eng.stats.restores_acked == 1, timeout=20)
    assert gw.relay["m1"] == "closed"
    assert eng.stats.listen_connects == 2
    assert eng.stats.wakeups[channels.ACCOUNTS] == 0  # the catch-up pass found it


async def test_the_ladder_runs_on_its_own_timers_not_the_poll(
    db_url: str, mqtt: MqttSettings, site: str, billing_key: BillingKey
) -> None:
    _account(db_url, site)
    gw = FakeGateway(mqtt, site, billing_key.keyring)
    async with (
        running(gw),
        engines(config(db_url, mqtt, billing_key, poll_interval_s=SLOW_POLL_S)) as (eng,),
    ):
        await _idle(eng)
        started = time.monotonic()
        with psycopg.connect(db_url, autocommit=True) as c:
            adjust(c, "A1", "-5.00", "meter-fee-1", reason="a fee")  # warning, final, cut
        await until(lambda: eng.stats.cutoffs_acked == 1, timeout=10)
        took = time.monotonic() - started
    assert gw.relay["m1"] == "open"
    assert took < 5.0, took  # 0.2 s + 0.2 s of ladder timers, then the command
