"""The engine end to end over a real broker and a real PostgreSQL, with a gateway peer
that answers commands over MQTT."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from billing_helpers import (
    T0,
    BillingKey,
    billing_events,
    config,
    engines,
    put_intervals,
    put_meter,
    q,
    until,
)
from fake_gateway import FakeGateway, running

from billing import (
    CreditSettings,
    balance,
    create_account,
    manual_relay,
    release_manual_hold,
    topup,
)
from billing.lifecycle import audit_trail
from billing.manual import hold_trail
from billing.tariffs import load_tariffs
from launcher.embedded import amqtt_broker, free_port, mosquitto_broker
from meterhub.settings import MqttSettings

D = Decimal
FAST = CreditSettings(alert_thresholds=(D("0.50"), D(0)), warning_to_final_s=0.3,
                      final_to_cutoff_s=0.3)
TARIFFS = load_tariffs()


@pytest.mark.integration
async def test_cutoff_and_restore_end_to_end(db_url: str, mqtt: MqttSettings, site: str,
                                             billing_key: BillingKey) -> None:
    with psycopg.connect(db_url, autocommit=True) as c:
        put_meter(c, "m1", site, "gw1")
        create_account(c, "A1", meters=["m1"], tariff="residential-flat", credit=FAST,
                       opening_balance="1.00", charge_from=T0, tariffs=TARIFFS)
    gw = FakeGateway(mqtt, site, billing_key.keyring)
    async with billing_events(mqtt, site) as events, running(gw), engines(
            config(db_url, mqtt, billing_key)) as (eng,):
        with psycopg.connect(db_url, autocommit=True) as c:
            put_intervals(c, "m1", ["1.0000", "1.0000"])  # 2 kWh x 0.56 = 1.12 > 1.00
        await until(lambda: eng.stats.cutoffs_acked == 1)
        assert gw.relay["m1"] == "open"
        with psycopg.connect(db_url, autocommit=True) as c:
            assert balance(c, "A1") == D("-0.12")
            topup(c, "A1", D("10.00"), "wechat", "WX-42")
        await until(lambda: eng.stats.restores_acked == 1)
        assert gw.relay["m1"] == "closed"
        await until(lambda: {"restored"} <= {e["kind"] for e in events})
    kinds = [e["kind"] for e in events]
    assert kinds == ["low_balance", "low_balance", "warning", "final_warning", "cutoff",
                     "restored"]
    assert events[0]["data"]["account"] == "A1"
    cmds = q(db_url, "SELECT command_id, action, state, purpose FROM billing_commands "
                     "ORDER BY created_at")
    assert [(a, s, p) for _, a, s, p in cmds] == [("relay_open", "verified", "cutoff"),
                                                   ("relay_close", "verified", "restore")]
    with psycopg.connect(db_url, autocommit=True) as c:
        trail = [(f, t) for _, f, t, _, _ in audit_trail(c, cmds[0][0])]
    assert trail == [(None, "queued"), ("queued", "sent"), ("sent", "accepted"),
                     ("accepted", "confirmed"), ("confirmed", "verified")]
    assert q(db_url, "SELECT relay_wanted, relay_reported FROM billing_meters") == [
        ("closed", "closed")]
    assert q(db_url, "SELECT phase FROM billing_accounts") == [("normal",)]


@pytest.mark.integration
async def test_lost_command_is_retried_with_the_same_id(db_url: str, mqtt: MqttSettings,
                                                        site: str, billing_key: BillingKey) -> None:
    with psycopg.connect(db_url, autocommit=True) as c:
        put_meter(c, "m1", site, "gw1")
        create_account(c, "A1", meters=["m1"], tariff="residential-flat", credit=FAST,
                       charge_from=T0, tariffs=TARIFFS)
    gw = FakeGateway(mqtt, site, billing_key.keyring, silent_first=1)
    async with running(gw), engines(config(db_url, mqtt, billing_key, ack_timeout_s=0.5)) as (eng,):
        with psycopg.connect(db_url, autocommit=True) as c:
            put_intervals(c, "m1", ["1"])
        await until(lambda: eng.stats.cutoffs_acked == 1)
    assert [c.attempt for c in gw.received] == [1, 2]
    assert len({c.command_id for c in gw.received}) == 1
    states = [t for _, _, t, _, _ in audit_trail(
        psycopg.connect(db_url, autocommit=True), gw.received[0].command_id)]
    assert states == ["queued", "sent", "timed_out", "queued", "sent", "accepted",
                      "confirmed", "verified"]


@pytest.mark.integration
async def test_payment_before_retry_cancels_the_cutoff(db_url: str, mqtt: MqttSettings,
                                                       site: str, billing_key: BillingKey) -> None:
    with psycopg.connect(db_url, autocommit=True) as c:
        put_meter(c, "m1", site, "gw1")
        create_account(c, "A1", meters=["m1"], tariff="residential-flat", credit=FAST,
                       charge_from=T0, tariffs=TARIFFS)
    gw = FakeGateway(mqtt, site, billing_key.keyring, silent_first=100)  # the gateway never answers
    async with running(gw), engines(config(db_url, mqtt, billing_key, ack_timeout_s=1.0)) as (eng,):
        with psycopg.connect(db_url, autocommit=True) as c:
            put_intervals(c, "m1", ["1"])
        await until(lambda: len(gw.received) >= 1)
        with psycopg.connect(db_url, autocommit=True) as c:
            topup(c, "A1", "5", "counter", "C-1")
        await until(lambda: q(db_url, "SELECT state FROM billing_commands WHERE action = "
                                      "'relay_open'") == [("cancelled",)])
    assert eng.stats.cutoffs_acked == 0
    assert q(db_url, "SELECT phase FROM billing_accounts") == [("normal",)]


def _shared_backlog(db_url: str, site: str, n: int, *, intervals: int) -> None:
    """``n`` accounts of one meter each, all about to run dry: the backlog several billing
    engines race for."""
    with psycopg.connect(db_url, autocommit=True) as c:
        for i in range(n):
            put_meter(c, f"m{i}", site, "gw1")
            create_account(c, f"A{i}", meters=[f"m{i}"], tariff="residential-tou-tiered",
                           credit=FAST, opening_balance="0.50", charge_from=T0,
                           tariffs=TARIFFS)
            put_intervals(c, f"m{i}", ["0.25"] * intervals)


@pytest.mark.integration
async def test_two_engines_send_each_cutoff_once(db_url: str, mqtt: MqttSettings,
                                                 site: str, billing_key: BillingKey) -> None:
    n = 12
    _shared_backlog(db_url, site, n, intervals=12)
    gw = FakeGateway(mqtt, site, billing_key.keyring)
    async with running(gw), engines(config(db_url, mqtt, billing_key, batch_accounts=2),
                                    config(db_url, mqtt, billing_key, batch_accounts=2)) as engs:
        await until(lambda: sum(e.stats.cutoffs_acked for e in engs) == n, 30)
        await asyncio.sleep(1.0)  # time for any duplicate to show up
    opens = Counter(c.meter for c in gw.received if c.action == "relay_open")
    assert opens == {f"m{i}": 1 for i in range(n)}
    assert sum(e.stats.intervals_charged for e in engs) == n * 12
    assert q(db_url, "SELECT count(*), count(DISTINCT idempotency_key) FROM billing_ledger "
                     "WHERE kind = 'charge'") == [(n * 12, n * 12)]


@pytest.mark.integration
async def test_close_permitted_waits_for_the_customer(db_url: str, mqtt: MqttSettings,
                                                      site: str, billing_key: BillingKey) -> None:
    with psycopg.connect(db_url, autocommit=True) as c:
        put_meter(c, "m1", site, "gw1")
        create_account(c, "A1", meters=["m1"], tariff="residential-flat", credit=FAST,
                       restore_mode="close_permitted", charge_from=T0, tariffs=TARIFFS)
    gw = FakeGateway(mqtt, site, billing_key.keyring)
    async with running(gw), engines(config(db_url, mqtt, billing_key, reconcile_interval_s=0.5,
                                           reconcile_grace_s=0.2)) as (eng,):
        with psycopg.connect(db_url, autocommit=True) as c:
            put_intervals(c, "m1", ["1"])
        await until(lambda: eng.stats.cutoffs_acked == 1)
        with psycopg.connect(db_url, autocommit=True) as c:
            topup(c, "A1", "5", "alipay", "A-1")
        await until(lambda: eng.stats.restores_acked == 1)
        assert q(db_url, "SELECT customer_action_needed FROM billing_meters") == [(True,)]
        gw.press_button = True  # the customer presses; reconciliation notices
        await until(lambda: q(db_url, "SELECT customer_action_needed, relay_reported "
                                      "FROM billing_meters") == [(False, "closed")])
    assert any(c.action == "relay_status" for c in gw.received)


@pytest.mark.integration
async def test_reconciliation_repairs_drift(db_url: str, mqtt: MqttSettings, site: str,
                                            billing_key: BillingKey) -> None:
    with psycopg.connect(db_url, autocommit=True) as c:
        put_meter(c, "m1", site, "gw1")
        create_account(c, "A1", meters=["m1"], tariff="residential-flat", credit=FAST,
                       charge_from=T0, tariffs=TARIFFS)
        put_intervals(c, "m1", ["1"])
    gw = FakeGateway(mqtt, site, billing_key.keyring)
    async with running(gw), engines(config(db_url, mqtt, billing_key, reconcile_interval_s=0.3,
                                           reconcile_grace_s=0.3)) as (eng,):
        await until(lambda: eng.stats.cutoffs_acked == 1)
        gw.relay["m1"] = "closed"  # someone bypassed the relay on site
        with psycopg.connect(db_url, autocommit=True) as c:  # a reading reported it
            c.execute("UPDATE meters SET relay = 'closed', relay_at = now() "
                      "WHERE meter_id = 'm1'")
        await until(lambda: eng.stats.cutoffs_acked == 2)
    purposes = q(db_url, "SELECT purpose, state FROM billing_commands ORDER BY created_at")
    assert purposes == [("cutoff", "verified"), ("reconcile", "verified")]
    assert gw.relay["m1"] == "open"
    assert eng.stats.tampers == 1  # closed while cut off, and no command closed it
    assert q(db_url, "SELECT meter_id FROM billing_alerts WHERE kind = 'tamper'") == [("m1",)]


@pytest.mark.integration
async def test_a_relay_opened_without_a_command_is_tamper_and_restored(
    db_url: str, mqtt: MqttSettings, site: str, billing_key: BillingKey
) -> None:
    """A paying household's relay reads open and billing never sent a cut-off: a tamper
    alert (stored and published, naming the meter) and the supply restored."""
    with psycopg.connect(db_url, autocommit=True) as c:
        put_meter(c, "m0", site, "gw1")
        put_meter(c, "m1", site, "gw1")
        create_account(c, "A1", meters=["m0", "m1"], tariff="residential-flat", credit=FAST,
                       opening_balance="100.00", charge_from=T0, tariffs=TARIFFS)
    gw = FakeGateway(mqtt, site, billing_key.keyring)
    gw.relay["m1"] = "open"  # opened on site by someone other than billing
    async with billing_events(mqtt, site) as events, running(gw), engines(
            config(db_url, mqtt, billing_key, reconcile_interval_s=0.3,
                   reconcile_grace_s=0.3)) as (eng,):
        with psycopg.connect(db_url, autocommit=True) as c:  # a reading reported it
            c.execute("UPDATE meters SET relay = 'open', relay_at = now() WHERE meter_id = 'm1'")
        await until(lambda: eng.stats.restores_acked == 1)
        await until(lambda: any(e["kind"] == "tamper" for e in events))
    assert gw.relay["m1"] == "closed" and eng.stats.tampers == 1
    [tamper] = [e for e in events if e["kind"] == "tamper"]
    assert tamper["meter"] == "m1" and "relay reported open" in tamper["detail"]
    assert q(db_url, "SELECT action, purpose, state FROM billing_commands") == [
        ("relay_close", "reconcile", "verified")]




@pytest.mark.integration
async def test_billing_keeps_charging_through_a_broker_outage(
    db_url: str, site: str, tmp_path: Path, billing_key: BillingKey) -> None:
    """No broker at first: charging and the policy go on, the cut-off waits queued; when a
    broker appears on that address the command goes out and is verified."""
    port = free_port()
    mqtt = MqttSettings("127.0.0.1", port)
    with psycopg.connect(db_url, autocommit=True) as c:
        put_meter(c, "m1", site, "gw1")
        create_account(c, "A1", meters=["m1"], tariff="residential-flat", credit=FAST,
                       charge_from=T0, tariffs=TARIFFS)
    async with engines(config(db_url, mqtt, billing_key)) as (eng,):
        with psycopg.connect(db_url, autocommit=True) as c:
            put_intervals(c, "m1", ["1"])
        await until(lambda: q(db_url, "SELECT state FROM billing_commands") == [("queued",)])
        assert eng.stats.intervals_charged == 1 and not eng.stats.mqtt_connected
        binary = shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()
        broker = mosquitto_broker(tmp_path, port) if binary else amqtt_broker(port)
        with broker:
            async with running(FakeGateway(mqtt, site, billing_key.keyring)):
                await until(lambda: eng.stats.cutoffs_acked == 1, 40)


@pytest.mark.integration
async def test_two_billing_processes_send_each_cutoff_once(
    db_url: str, mqtt: MqttSettings, site: str, billing_key: BillingKey
) -> None:
    """Two ``meterhub billing run`` processes on one database and one backlog."""
    n = 10
    _shared_backlog(db_url, site, n, intervals=24)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    argv = [sys.executable, "-m", "launcher.cli", "billing", "--database-url", db_url, "run",
            "--mqtt-url", mqtt.url, "--poll", "0.2", "--signing-key", str(billing_key.path)]
    gw = FakeGateway(mqtt, site, billing_key.keyring)
    async with running(gw):
        procs = [await asyncio.create_subprocess_exec(
            *argv, cwd=root, env=env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE) for _ in range(2)]
        try:
            await until(lambda: q(db_url, "SELECT count(*) FROM billing_commands "
                                          "WHERE state = 'verified'") == [(n,)], 60)
            await asyncio.sleep(1.0)  # time for any duplicate to show up
        finally:
            for p in procs:
                if p.returncode is None:
                    p.send_signal(signal.SIGTERM)
            outs = [await asyncio.wait_for(p.communicate(), 20) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1].decode()[-2000:] for o in outs]
    stats = [json.loads(o[0].decode().strip().splitlines()[-1]) for o in outs]
    assert sum(s["cutoffs_acked"] for s in stats) == n
    assert sum(s["intervals_charged"] for s in stats) == n * 24
    opens = Counter(c.meter for c in gw.received if c.action == "relay_open")
    assert opens == {f"m{i}": 1 for i in range(n)}


@pytest.mark.integration
async def test_manual_cutoff_of_a_paying_account_holds_through_reconciliation(
    db_url: str, mqtt: MqttSettings, site: str, billing_key: BillingKey) -> None:
    """An operator cuts off a paying account; payments, charges and reconciliation passes
    leave it open (and repair drift towards it) until the operator releases the hold."""
    with psycopg.connect(db_url, autocommit=True) as c:
        put_meter(c, "m1", site, "gw1")
        create_account(c, "A1", meters=["m1"], tariff="residential-flat", credit=FAST,
                       opening_balance="100.00", charge_from=T0, tariffs=TARIFFS)
    gw = FakeGateway(mqtt, site, billing_key.keyring)
    async with running(gw), engines(config(db_url, mqtt, billing_key, reconcile_interval_s=0.2,
                                           reconcile_grace_s=0.2)) as (eng,):
        with psycopg.connect(db_url, autocommit=True) as c:
            cid = manual_relay(c, "m1", "open", by="op:alice", reason="tampered seal")
        await until(lambda: eng.stats.cutoffs_acked == 1)
        assert gw.relay["m1"] == "open"
        with psycopg.connect(db_url, autocommit=True) as c:
            topup(c, "A1", D("20.00"), "wechat", "WX-1")
            put_intervals(c, "m1", ["0.5", "0.5"])
        await until(lambda: eng.stats.intervals_charged == 2)
        ticks = eng.stats.ticks
        await asyncio.sleep(1.5)  # several policy and reconciliation passes
        assert eng.stats.ticks > ticks + 5 and gw.relay["m1"] == "open"
        # closed on site, seen in a reading: reconciliation re-opens it (the hold's way)
        gw.relay["m1"] = "closed"
        with psycopg.connect(db_url, autocommit=True) as c:
            c.execute("UPDATE meters SET relay = 'closed', relay_at = now() "
                      "WHERE meter_id = 'm1'")
        await until(lambda: eng.stats.cutoffs_acked == 2)
        assert gw.relay["m1"] == "open" and eng.stats.restores_acked == 0
        assert eng.stats.tampers == 1  # closed against the operator's hold, by no command
        with psycopg.connect(db_url, autocommit=True) as c:
            assert release_manual_hold(c, "m1", by="op:alice")
        await until(lambda: eng.stats.restores_acked == 1)
        assert gw.relay["m1"] == "closed"
    cmds = q(db_url, "SELECT action, purpose, state FROM billing_commands ORDER BY created_at")
    assert cmds == [("relay_open", "cutoff", "verified"), ("relay_open", "reconcile", "verified"),
                    ("relay_close", "restore", "verified")]
    with psycopg.connect(db_url, autocommit=True) as c:
        trail = audit_trail(c, cid)
        assert trail[0][3] == "op:alice" and "tampered seal" in trail[0][4]
        assert [(h["event"], h["actor"]) for h in hold_trail(c, "m1")] == [
            ("set", "op:alice"), ("released", "op:alice")]
    assert q(db_url, "SELECT phase, balance_fen > 0 FROM billing_accounts") == [("normal", True)]


@pytest.mark.integration
async def test_manual_restore_of_a_negative_account_holds_until_it_expires(
    db_url: str, mqtt: MqttSettings, site: str, billing_key: BillingKey) -> None:
    """The policy cut an account off; an operator restores it for a while. Policy passes
    (new charges keep the account dirty) leave it on; when the hold ends the cut-off resumes."""
    with psycopg.connect(db_url, autocommit=True) as c:
        put_meter(c, "m1", site, "gw1")
        create_account(c, "A1", meters=["m1"], tariff="residential-flat", credit=FAST,
                       opening_balance="1.00", charge_from=T0, tariffs=TARIFFS)
    gw = FakeGateway(mqtt, site, billing_key.keyring)
    async with running(gw), engines(config(db_url, mqtt, billing_key, reconcile_interval_s=0.2,
                                           reconcile_grace_s=0.2)) as (eng,):
        with psycopg.connect(db_url, autocommit=True) as c:
            put_intervals(c, "m1", ["1.0000", "1.0000"])
        await until(lambda: eng.stats.cutoffs_acked == 1)
        until_at = datetime.now(UTC) + timedelta(seconds=4)
        with psycopg.connect(db_url, autocommit=True) as c:
            cid = manual_relay(c, "m1", "closed", by="op:bob", reason="oxygen concentrator",
                               hold_until=until_at)
        await until(lambda: eng.stats.restores_acked == 1)
        assert gw.relay["m1"] == "closed"
        with psycopg.connect(db_url, autocommit=True) as c:
            put_intervals(c, "m1", ["0.5"] * 4, start=T0 + timedelta(hours=1))
        await until(lambda: eng.stats.intervals_charged == 6)
        while datetime.now(UTC) < until_at - timedelta(seconds=0.5):
            assert gw.relay["m1"] == "closed" and eng.stats.cutoffs_queued == 1
            await asyncio.sleep(0.1)
        await until(lambda: eng.stats.cutoffs_acked == 2)
        assert gw.relay["m1"] == "open" and eng.stats.holds_ended == 1
    opens = q(db_url, "SELECT created_at FROM billing_commands WHERE action = 'relay_open' "
                      "ORDER BY created_at")
    assert len(opens) == 2 and opens[1][0] >= until_at
    with psycopg.connect(db_url, autocommit=True) as c:
        assert audit_trail(c, cid)[0][3] == "op:bob"
        assert [(h["event"], h["actor"]) for h in hold_trail(c, "m1")] == [
            ("set", "op:bob"), ("expired", eng.config.engine_id)]
    assert q(db_url, "SELECT phase, relay_wanted, relay_reported, manual_hold "
                     "FROM billing_accounts JOIN billing_meters USING (account_id)") == [
        ("cut", "open", "open", None)]


@pytest.mark.integration
async def test_engine_charges_on_two_connections(db_url: str, mqtt: MqttSettings,
                                                 site: str, billing_key: BillingKey) -> None:
    with psycopg.connect(db_url, autocommit=True) as c:
        for i in range(8):
            put_meter(c, f"m{i}", site, "gw1")
            create_account(c, f"A{i}", meters=[f"m{i}"], tariff="residential-tou-tiered",
                           credit=FAST, opening_balance="100.00", charge_from=T0,
                           tariffs=TARIFFS)
            put_intervals(c, f"m{i}", ["0.25"] * 24)
    async with engines(config(db_url, mqtt, billing_key, charge_connections=2,
                              batch_accounts=2)) as (eng,):
        await until(lambda: eng.stats.intervals_charged == 8 * 24)
        assert len(eng._charge_conns) == 1
    assert q(db_url, "SELECT count(*), count(DISTINCT idempotency_key) FROM billing_ledger "
                     "WHERE kind = 'charge'") == [(192, 192)]
    assert q(db_url, "SELECT count(*) FROM billing_accounts a WHERE balance_fen <> (SELECT "
                     "sum(amount_fen) FROM billing_ledger l WHERE l.account_id = a.account_id)"
             ) == [(0,)]
