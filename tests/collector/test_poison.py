"""Poison input never stops the collector (issue 12 items 1-2): every bad message is
dead-lettered and acknowledged, database refusals are sorted by SQLSTATE (data: dead letter,
go on; outage: keep unacked, back off, resume). Real broker, real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import uuid

import psycopg
import pytest
from collector_helpers import (
    T0,
    batch_payload,
    config,
    minutes,
    reading,
    rows_payload,
    running,
    scalar,
    subscribed,
    wait_until,
)

from meterhub import dbfaults, wire

pytestmark = pytest.mark.integration


def _poison(site: str) -> list[bytes]:
    good = json.loads(rows_payload(site, "gw1", 1, [reading("m1", T0, 1.0)]))
    stamp = wire.utc_iso(T0)

    def with_reading(**over: object) -> bytes:
        r = {"meter": "mx", "taken_at": stamp,
             "values": {"energy_import_total": {"value": 1.0, "unit": "kWh"}}, **over}
        return json.dumps({**good, "readings": [r]}, separators=(",", ":")).encode()

    return [
        b"[" * 4000 + b"]" * 4000,  # deep nesting: RecursionError in json.loads
        with_reading().replace(b'"seq":1', b'"seq":' + b"7" * 5000),  # int max-digits
        with_reading().replace(b'"value":1.0', b'"value":1e400'),  # inf
        with_reading(meter="\ud800"),  # lone surrogate, escaped by json.dumps
        with_reading(meter="m" * 2700),  # would overflow the primary-key index
        with_reading(taken_at="0001-01-01T00:00:00+01:00"),
        b"x" * 20_000,  # over this test's max_payload_bytes
    ]


async def test_poison_messages_are_dead_lettered_acked_and_good_traffic_flows(
    db_url, mqtt, site, pub
):
    client_id = f"poison-{uuid.uuid4().hex[:8]}"
    status_topic = wire.topic(site, "gw1", "status")
    # a retained poison status: every collector that starts later receives it first
    pub.publish(status_topic, b'{"schema":1,"gateway":"gw1","site":"x","health":'
                + b"[" * 3000 + b"]" * 3000 + b"}", retain=True)
    cfg = config(db_url, mqtt, site, client_id=client_id, leave_on_stop=False,
                 max_payload_bytes=10_000)
    topic = wire.topic(site, "gw1", "readings")
    try:
        async with running(cfg) as col:
            await subscribed(col)
            for p in _poison(site):
                pub.publish(topic, p)
            pub.publish(topic, batch_payload(site, "gw1", 2, [reading("good", T0, 3.0)]))
            await wait_until(lambda: col.stats.readings_stored == 1, what="the good reading")
            await wait_until(lambda: col.stats.dead_letters == 8, what="eight dead letters")
        with psycopg.connect(db_url) as conn:
            codes = sorted(c for (c,) in conn.execute("SELECT code FROM dead_letters"))
        assert codes == sorted(["too_deep", "bad_number", "bad_number", "bad_id", "bad_id",
                                "bad_time", "too_large", "too_deep"])
        assert col.stats.dead_letters_by_code["bad_number"] == 2
        # acknowledged: the same session, restarted, is not handed any of them again (the
        # retained status comes again, as retained messages do on every subscribe)
        async with running(cfg) as again:
            await subscribed(again)
            pub.publish(topic, batch_payload(site, "gw1", 3, [reading("good", T0 + minutes(1),
                                                                      4.0)]))
            await wait_until(lambda: again.stats.readings_stored == 1, what="next reading")
            await asyncio.sleep(0.5)
        assert again.stats.dead_letters == 1
        assert again.stats.dead_letters_by_code == {"too_deep": 1}
    finally:
        pub.publish(status_topic, b"", retain=True)  # clear the retained message


# Data the database refuses, emulated by a trigger raising exactly that SQLSTATE for one
# meter's rows: the message carrying it is dead-lettered, its neighbours are stored.
_REFUSE = """
CREATE FUNCTION refuse_evil() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    IF NEW.meter_id = 'evil' THEN
        RAISE EXCEPTION 'refused for the test' USING ERRCODE = '{code}';
    END IF;
    RETURN NEW;
END $f$;
CREATE TRIGGER refuse_evil BEFORE INSERT OR UPDATE ON meters
    FOR EACH ROW EXECUTE FUNCTION refuse_evil();
"""


@pytest.mark.parametrize("code", ["22023", "23514", "42804", "54000"])
async def test_data_errors_dead_letter_the_message_and_go_on(db_url, mqtt, site, pub, code):
    with psycopg.connect(db_url) as conn:
        conn.execute(_REFUSE.replace("{code}", code))
    topic = wire.topic(site, "gw1", "readings")
    cfg = config(db_url, mqtt, site, batch_max_delay_s=0.3, batch_linger_s=0.3)
    async with running(cfg) as col:
        await subscribed(col)
        pub.publish(topic, batch_payload(site, "gw1", 1, [reading("a", T0, 1.0)]))
        pub.publish(topic, batch_payload(site, "gw1", 2, [reading("evil", T0, 1.0)]))
        pub.publish(topic, batch_payload(site, "gw1", 3, [reading("b", T0, 1.0)]))
        await wait_until(lambda: col.stats.messages == 3, what="all three acked")
    assert sorted(r for (r,) in psycopg.connect(db_url).execute(
        "SELECT DISTINCT meter_id FROM reading_values")) == ["a", "b"]
    assert scalar(db_url, "SELECT code FROM dead_letters") == "db_refused"
    assert f"SQLSTATE {code}" in str(scalar(db_url, "SELECT reason FROM dead_letters"))
    assert col.stats.db_data_errors >= 1


@pytest.mark.parametrize("code", ["53300", "57P03", "08006"])
async def test_outage_errors_keep_messages_unacked_until_the_database_is_back(
    db_url, mqtt, site, pub, code
):
    """Resources (53), operator intervention (57P), connection (08): nothing dead-lettered,
    nothing acked, retried with backoff; stored once the condition is gone."""
    with psycopg.connect(db_url) as conn:
        conn.execute(_REFUSE.replace("{code}", code).replace("NEW.meter_id = 'evil'", "true"))
    topic = wire.topic(site, "gw1", "readings")
    async with running(config(db_url, mqtt, site, db_retry_max_s=0.3)) as col:
        await subscribed(col)
        pub.publish(topic, batch_payload(site, "gw1", 1, [reading("a", T0, 1.0)]))
        await wait_until(lambda: col.stats.db_errors >= 3, what="retries")
        assert col.stats.messages == 0 and col.stats.db_data_errors == 0
        with psycopg.connect(db_url) as conn:
            conn.execute("DROP TRIGGER refuse_evil ON meters")
        await wait_until(lambda: col.stats.messages == 1, what="stored after the outage")
    assert scalar(db_url, "SELECT count(*) FROM readings") == 1
    assert scalar(db_url, "SELECT count(*) FROM dead_letters") == 0


async def test_terminated_backend_is_an_outage_not_a_dead_letter(db_url, mqtt, site, pub):
    topic = wire.topic(site, "gw1", "readings")
    async with running(config(db_url, mqtt, site, db_retry_max_s=0.3)) as col:
        await subscribed(col)
        pub.publish(topic, batch_payload(site, "gw1", 1, [reading("a", T0, 1.0)]))
        await wait_until(lambda: col.stats.messages == 1, what="first message")
        killed = scalar(db_url, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        assert killed == 1
        pub.publish(topic, batch_payload(site, "gw1", 2, [reading("a", T0 + minutes(1), 2.0)]))
        await wait_until(lambda: col.stats.messages == 2, what="stored on a new connection")
    assert col.stats.db_errors >= 1 and col.stats.db_data_errors == 0
    assert scalar(db_url, "SELECT count(*) FROM readings") == 2
    assert scalar(db_url, "SELECT count(*) FROM dead_letters") == 0


async def test_unreachable_database_acks_nothing(db_url, mqtt, site, pub):
    from launcher.embedded import free_port

    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    async with running(config(dead, mqtt, site, db_retry_max_s=0.2)) as col:
        await subscribed(col)
        pub.publish(wire.topic(site, "gw1", "readings"),
                    batch_payload(site, "gw1", 1, [reading("a", T0, 1.0)]))
        await wait_until(lambda: col.stats.db_errors >= 2, what="retries")
    assert col.stats.messages == 0 and col.stats.db_data_errors == 0


def test_sqlstate_classes() -> None:
    for code in ("22003", "22P02", "23505", "42804", "54000", "54001", "P0001"):
        assert dbfaults.is_data_error(psycopg.errors.lookup(code)("x")), code
    for code in ("08006", "57P01", "57P03", "53300", "53100", "40001"):
        assert not dbfaults.is_data_error(psycopg.errors.lookup(code)("x")), code
    assert not dbfaults.is_data_error(RuntimeError("a bug"))
