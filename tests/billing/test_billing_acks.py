"""Acks over the real broker: only the gateway a command went to can settle it, and no ack,
however malformed, stops the engine's ack task (issues 11 and 12)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aiomqtt
import psycopg
import pytest
from billing_helpers import BillingKey, config, engines, put_meter, q, until

from billing import BillingEngine, create_account, lifecycle, manual_relay
from meterhub import wire
from meterhub.dbfaults import is_data_error, is_outage
from meterhub.settings import MqttSettings


@contextlib.asynccontextmanager
async def peer(mqtt: MqttSettings, site: str) -> AsyncIterator[aiomqtt.Client]:
    """An MQTT client that hears gw1's commands and may publish on any gateway's topics
    (the test broker has no ACL: this is the outsider the ack checks must stop)."""
    async with aiomqtt.Client(mqtt.host, mqtt.port) as client:
        await client.subscribe(wire.topic(site, "gw1", "cmd"), qos=1)
        yield client


async def next_command(client: aiomqtt.Client, key: BillingKey) -> wire.Command:
    async for msg in client.messages:
        signed = wire.decode_command(msg.payload, key.keyring,  # type: ignore[arg-type]
                                     gateway="gw1", now=datetime.now(UTC))
        return signed.command
    raise AssertionError("no command")


def ack(command_id: str, *, gateway: str = "gw1", meter: str = "m1", stage: str = "done",
        outcome: str | None = "ok", relay: str | None = "open") -> dict[str, Any]:
    return json.loads(wire.encode_ack(wire.Ack(
        command_id, gateway, meter, stage, datetime.now(UTC), outcome, relay)))  # type: ignore[arg-type]


async def publish(client: aiomqtt.Client, site: str, topic_gateway: str,
                  payload: dict[str, Any] | bytes) -> None:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    await client.publish(wire.topic(site, topic_gateway, "cmd/ack"), raw, qos=1)


def manual_cutoff(db_url: str, site: str) -> None:
    """A paying household, cut off by an operator: the command goes out at once."""
    with psycopg.connect(db_url, autocommit=True) as c:
        put_meter(c, "m1", site, "gw1")
        put_meter(c, "m2", site, "gw2")
        create_account(c, "A1", meters=["m1"], tariff="residential-flat",
                       opening_balance="100.00")
        manual_relay(c, "m1", "open", by="op:test", reason="ack test")


@contextlib.asynccontextmanager
async def cut_off_sent(
    db_url: str, mqtt: MqttSettings, site: str, key: BillingKey
) -> AsyncIterator[tuple[aiomqtt.Client, BillingEngine, str]]:
    """An engine that has sent an operator's cut-off to gw1 (no retry for a minute), the
    outsider's client and the command id."""
    manual_cutoff(db_url, site)
    async with peer(mqtt, site) as gw, engines(
            config(db_url, mqtt, key, ack_timeout_s=60)) as (eng,):
        yield gw, eng, (await next_command(gw, key)).command_id


def state(db_url: str) -> str:
    return q(db_url, "SELECT state FROM billing_commands")[0][0]


@pytest.mark.integration
async def test_forged_and_misaddressed_acks_are_ignored(
    db_url: str, mqtt: MqttSettings, site: str, billing_key: BillingKey
) -> None:
    async with cut_off_sent(db_url, mqtt, site, billing_key) as (gw, eng, cid):
        forged = [
            ("gw2", ack(cid, gateway="gw2")),  # another gateway answers for gw1's meter
            ("gw2", ack(cid)),  # ... claiming in the payload to be gw1
            ("gw1", ack(cid, meter="m2")),  # the right gateway, the wrong meter
            ("gw1", ack(cid, relay="closed")),  # "done ok" but the relay did not open
            ("gw1", ack("0" * 32)),  # no such command
        ]
        for topic_gateway, payload in forged:
            await publish(gw, site, topic_gateway, payload)
        await until(lambda: sum(eng.stats.acks_refused.values()) == len(forged))
        assert eng.stats.acks_refused == {"wrong_gateway": 1, "topic_mismatch": 1,
                                          "wrong_meter": 1, "inconsistent": 1,
                                          "unknown_command": 1}
        assert state(db_url) == "sent" and eng.stats.cutoffs_acked == 0
        assert q(db_url, "SELECT relay_reported FROM billing_meters") == [("unknown",)]
        # the real gateway's acks settle it
        await publish(gw, site, "gw1", ack(cid, stage="accepted", outcome=None, relay=None))
        await publish(gw, site, "gw1", ack(cid))
        await until(lambda: eng.stats.cutoffs_acked == 1)
    assert state(db_url) == "verified"
    assert eng.stats.task_restarts == {}
    with psycopg.connect(db_url, autocommit=True) as c:
        actors = {a for _, _, _, a, _ in lifecycle.audit_trail(c, cid)}
    assert "gateway:gw2" not in actors  # a refused ack writes nothing


def poison_acks(cid: str) -> dict[str, bytes]:
    good = ack(cid)

    def variant(**kw: Any) -> bytes:
        return json.dumps({**good, **kw}).encode()  # ensure_ascii: "\ud800" stays escaped

    def raw_value(field: str, literal: str) -> bytes:
        return json.dumps({**good, field: "@@"}).replace('"@@"', literal).encode()

    return {
        "lone surrogate in the command id": variant(command_id="\ud800"),
        "lone surrogate in the meter": variant(meter="m1\ud800"),
        "lone surrogate in the reason": variant(reason="x\udfff"),
        "NUL in the reason": variant(reason="a\x00b"),
        "1e400": raw_value("at", "1e400"),
        "5000-digit integer": raw_value("stage", "1" * 5000),
        "deep nesting": raw_value("relay", "[" * 20_000 + "]" * 20_000),
        "over 64 KiB": variant(reason="x" * 70_000),
        "2,700-byte id": variant(command_id="c" * 2700),
        "2,700-byte meter": variant(meter="m" * 2700),
        "not UTF-8": b"\xff\xfe{",
        "not an object": b"[1, 2]",
    }


@pytest.mark.integration
async def test_poison_acks_do_not_stop_the_ack_task(
    db_url: str, mqtt: MqttSettings, site: str, billing_key: BillingKey
) -> None:
    async with cut_off_sent(db_url, mqtt, site, billing_key) as (gw, eng, cid):
        poisons = poison_acks(cid)
        for payload in poisons.values():
            await publish(gw, site, "gw1", payload)
        await until(lambda: sum(eng.stats.acks_refused.values()) == len(poisons))
        assert state(db_url) == "sent"
        await publish(gw, site, "gw1", ack(cid))  # then a good one: still applied
        await until(lambda: eng.stats.cutoffs_acked == 1)
    assert state(db_url) == "verified"
    assert eng.stats.task_restarts == {} and eng.stats.mqtt_connected is False
    # the wire decoder refuses surrogates, NUL and bad ids itself (malformed); billing's own
    # field checks see the rest
    assert eng.stats.acks_refused == {"malformed": 9, "bad_field": 2, "too_large": 1}


@pytest.mark.integration
async def test_a_failing_ack_task_is_restarted(
    db_url: str, mqtt: MqttSettings, site: str, billing_key: BillingKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A data error an ack causes in the database drops that ack; a bug ends the ack task,
    which its supervisor restarts; the next ack is applied."""
    real = lifecycle.apply_ack

    def data_error(conn: psycopg.Connection[Any]) -> None:
        conn.execute("SELECT 1 / 0")  # SQLSTATE 22012, as if the ack's values caused it

    def bug(conn: psycopg.Connection[Any]) -> None:
        raise RuntimeError("injected")

    faults: list[Callable[[psycopg.Connection[Any]], None]] = [data_error, bug]

    def apply_ack(conn: psycopg.Connection[Any], a: wire.Ack, actor: str, **kw: Any) -> Any:
        if faults:
            faults.pop(0)(conn)
        return real(conn, a, actor, **kw)

    monkeypatch.setattr(lifecycle, "apply_ack", apply_ack)
    async with cut_off_sent(db_url, mqtt, site, billing_key) as (gw, eng, cid):
        await publish(gw, site, "gw1", ack(cid))
        await until(lambda: eng.stats.acks_refused == {"db_data_error": 1})
        assert eng.stats.task_restarts == {}
        await publish(gw, site, "gw1", ack(cid))
        await until(lambda: eng.stats.task_restarts == {"acks": 1} and eng.stats.mqtt_connected)
        assert "RuntimeError: injected" in eng.stats.task_errors["acks"]
        assert state(db_url) == "sent"
        await publish(gw, site, "gw1", ack(cid))
        await until(lambda: eng.stats.cutoffs_acked == 1)
    assert state(db_url) == "verified"


def test_database_errors_are_classified_by_sqlstate(db_url: str) -> None:
    """22/23/42 and psycopg's own refusals: the message's fault. 08/57P: an outage."""
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("CREATE TEMP TABLE t (k text PRIMARY KEY)")
        c.execute("INSERT INTO t VALUES ('a')")
        for sql, args in [("SELECT 1 / 0", ()), ("INSERT INTO t VALUES ('a')", ()),
                          ("SELEC 1", ()), ("SELECT %s::text", ("a\x00b",)),
                          ("SELECT %s::text", ("\ud800",))]:
            with pytest.raises(Exception) as err:
                c.execute(sql, args)  # type: ignore[arg-type]
            assert is_data_error(err.value) and not is_outage(err.value), sql
        with psycopg.connect(db_url, autocommit=True) as victim:
            pid = victim.info.backend_pid
            c.execute("SELECT pg_terminate_backend(%s)", (pid,))
            with pytest.raises(psycopg.Error) as err:
                victim.execute("SELECT 1")
        assert is_outage(err.value) and not is_data_error(err.value)
    with pytest.raises(psycopg.Error) as err:
        psycopg.connect("postgresql://postgres@127.0.0.1:1/x", connect_timeout=2)
    assert is_outage(err.value) and not is_data_error(err.value)
    assert not is_data_error(RuntimeError("a bug")) and not is_outage(RuntimeError("a bug"))
