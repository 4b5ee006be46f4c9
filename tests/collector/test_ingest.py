"""Ingest against a real broker and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

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

from meterhub import wire

pytestmark = pytest.mark.integration


async def test_batch_is_stored_with_meters_and_sequence(db_url, mqtt, site, pub):
    topic = wire.topic(site, "gw1", "readings")
    readings = [reading(f"m{i}", T0 + minutes(1), 100.0 + i, voltage_a=230.0) for i in range(5)]
    async with running(config(db_url, mqtt, site)) as col:
        await subscribed(col)
        pub.publish(topic, batch_payload(site, "gw1", 7, readings))
        await wait_until(lambda: col.stats.readings_stored == 5, what="5 readings stored")
    assert col.stats.values_stored == 10
    assert col.stats.messages == 1
    assert scalar(db_url, "SELECT count(*) FROM readings") == 5  # one row per reading
    assert scalar(db_url, "SELECT count(*) FROM reading_values") == 10
    with psycopg.connect(db_url) as conn:
        m = conn.execute("SELECT gateway, site, first_seen, last_seen FROM meters "
                         "WHERE meter_id='m3'").fetchone()
        assert m == ("gw1", site, T0 + minutes(1), T0 + minutes(1))
        r = conn.execute(
            "SELECT v.value, v.unit, b.gateway, b.seq FROM reading_values v"
            " JOIN readings r ON r.meter = v.meter AND r.ts = v.ts"
            " JOIN gateway_batches b ON b.batch_id = r.batch"
            " WHERE v.meter_id='m3' AND v.quantity='energy_import_total'").fetchone()
        assert r == (103.0, "kWh", "gw1", 7)
        # the register as an exact integer of the meter's resolution (0.01 kWh by default)
        assert conn.execute("SELECT r.energy_import, r.voltage_a FROM readings r JOIN meters m"
                            " ON m.meter_key = r.meter WHERE m.meter_id = 'm3'"
                            ).fetchone() == (10300, 230.0)
        g = conn.execute("SELECT site, max_seq, batches FROM gateways WHERE gateway='gw1'"
                         ).fetchone()
        assert g == (site, 7, 1)


async def test_redelivered_batch_is_stored_once(db_url, mqtt, site, pub):
    topic = wire.topic(site, "gw1", "readings")
    payload = batch_payload(site, "gw1", 1, [reading("m1", T0, 5.0), reading("m2", T0, 6.0)])
    async with running(config(db_url, mqtt, site)) as col:
        await subscribed(col)
        pub.publish(topic, payload)
        pub.publish(topic, payload)
        await wait_until(lambda: col.stats.messages == 2, what="both messages committed")
    assert col.stats.readings_stored == 2
    assert col.stats.readings_received == 4
    assert col.stats.duplicate_batches == 1
    assert scalar(db_url, "SELECT count(*) FROM readings") == 2
    assert scalar(db_url, "SELECT count(*) FROM gateway_events WHERE kind='duplicate_batch'") == 1
    assert scalar(db_url, "SELECT duplicate_batches FROM gateways WHERE gateway='gw1'") == 1


async def test_malformed_messages_go_to_dead_letters_and_good_readings_stay(
    db_url, mqtt, site, pub
):
    topic = wire.topic(site, "gw1", "readings")
    good = wire.encode_readings(wire.ReadingsBatch("gw1", site, 3, T0, (reading("ok1", T0, 1.0),)))
    mixed = json.loads(rows_payload(site, "gw1", 4, [reading("ok2", T0, 2.0)]))
    mixed["readings"] += [
        {"meter": "bad-unit", "taken_at": wire.utc_iso(T0),
         "values": {"energy_import_total": {"value": 1, "unit": "Wh"}}},
        {"meter": "future", "taken_at": wire.utc_iso(datetime.now(UTC) + timedelta(hours=1)),
         "values": {"energy_import_total": {"value": 1, "unit": "kWh"}}},
        {"meter": "epoch", "taken_at": "2000-01-01T00:00:00Z",
         "values": {"energy_import_total": {"value": 1, "unit": "kWh"}}},
        {"meter": "negative", "taken_at": wire.utc_iso(T0),
         "values": {"energy_import_total": {"value": -4, "unit": "kWh"}}},
        {"meter": "volts", "taken_at": wire.utc_iso(T0),
         "values": {"voltage_a": {"value": 5000, "unit": "V"}}},
        {"meter": "nowhen", "values": {"voltage_a": {"value": 230, "unit": "V"}}},
        {"meter": "what", "taken_at": wire.utc_iso(T0),
         "values": {"flux_capacitance": {"value": 1.21, "unit": "GW"}}},
        "not even an object",
    ]
    wrong_schema = json.loads(good)
    wrong_schema["schema"] = 99
    async with running(config(db_url, mqtt, site)) as col:
        await subscribed(col)
        pub.publish(topic, b"{not json")
        pub.publish(topic, json.dumps(wrong_schema).encode())
        pub.publish(topic, json.dumps(mixed).encode())
        pub.publish(wire.topic(site, "gw-other", "readings"), good)  # topic/payload mismatch
        pub.publish(topic, good)
        await wait_until(lambda: col.stats.messages == 5, what="all five messages")
    assert scalar(db_url, "SELECT count(*) FROM readings") == 2  # ok1 and ok2
    assert col.stats.readings_stored == 2
    with psycopg.connect(db_url) as conn:
        reasons = [r for (r,) in conn.execute("SELECT reason FROM dead_letters ORDER BY id")]
        payloads = [bytes(p) for (p,) in conn.execute("SELECT payload FROM dead_letters")]
    assert len(reasons) == 11 == col.stats.dead_letters
    text = "\n".join(reasons)
    for expected in ("not valid JSON", "schema 99", "unit 'Wh'", "in the future", "negative",
                     "outside the possible", "taken_at", "unknown quantity", "expected an object",
                     "days old",
                     "do not match the topic"):
        assert expected in text, expected
    assert b"{not json" in payloads


async def test_sequence_gaps_and_status_and_events(db_url, mqtt, site, pub):
    topic = wire.topic(site, "gw9", "readings")
    cfg = config(db_url, mqtt, site)
    async with running(cfg) as col:
        await subscribed(col)
        for seq in (1, 2, 5, 6, 9):
            pub.publish(topic, batch_payload(site, "gw9", seq, [reading("m", T0 + minutes(seq),
                                                                        float(seq))]))
        pub.publish(wire.topic(site, "gw9", "status"), wire.encode_status(
            wire.Status("gw9", site, "online", T0, {"buffer_depth": 3})), retain=True)
        pub.publish(wire.topic(site, "gw9", "events"), wire.encode_events(
            "gw9", [wire.Event("comm_error", T0, "m", "no answer", {"tries": 3})]))
        await wait_until(lambda: col.stats.messages == 7, what="seven messages")
    with psycopg.connect(db_url) as conn:
        gaps = conn.execute("SELECT from_seq, to_seq FROM seq_gaps WHERE gateway='gw9' "
                            "ORDER BY from_seq").fetchall()
        assert gaps == [(3, 4), (7, 8)]
        state, health = conn.execute("SELECT state, health FROM gateways WHERE gateway='gw9'"
                                     ).fetchone()
        assert (state, health) == ("online", {"buffer_depth": 3})
        ev = conn.execute("SELECT kind, meter_id, detail, data FROM gateway_events "
                          "WHERE source='gateway'").fetchall()
        assert ev == [("comm_error", "m", "no answer", {"tries": 3})]
    # A late batch fills a gap (same collector, restarted).
    async with running(cfg) as col:
        await subscribed(col)
        pub.publish(topic, batch_payload(site, "gw9", 3, [reading("m", T0 + minutes(3), 3.0)]))
        pub.publish(topic, batch_payload(site, "gw9", 4, [reading("m", T0 + minutes(4), 4.0)]))
        await wait_until(
            lambda: scalar(db_url, "SELECT count(*) FROM gateway_batches") == 7, what="late"
        )
    with psycopg.connect(db_url) as conn:
        gaps = conn.execute("SELECT from_seq, to_seq FROM seq_gaps WHERE gateway='gw9'").fetchall()
        late = conn.execute("SELECT data->>'seq' FROM gateway_events "
                            "WHERE kind = 'out_of_order_batch' ORDER BY 1").fetchall()
    assert gaps == [(7, 8)]
    assert late == [("3",), ("4",)]


async def test_older_status_does_not_overwrite_newer(db_url, mqtt, site, pub):
    st = wire.topic(site, "gw2", "status")
    async with running(config(db_url, mqtt, site)) as col:
        await subscribed(col)
        pub.publish(st, wire.encode_status(wire.Status("gw2", site, "offline", T0 + minutes(5))))
        pub.publish(st, wire.encode_status(wire.Status("gw2", site, "online", T0)))
        await wait_until(lambda: col.stats.messages == 2, what="two statuses")
    assert scalar(db_url, "SELECT state FROM gateways WHERE gateway='gw2'") == "offline"


async def test_known_meters_only_dead_letters_strangers(db_url, mqtt, site, pub):
    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO meters (meter_id) VALUES ('known')")
    topic = wire.topic(site, "gw1", "readings")
    async with running(config(db_url, mqtt, site, known_meters_only=True)) as col:
        await subscribed(col)
        pub.publish(topic, batch_payload(site, "gw1", 1, [reading("known", T0, 1.0),
                                                          reading("stranger", T0, 2.0)]))
        await wait_until(lambda: col.stats.messages == 1, what="message")
    assert col.stats.readings_stored == 1
    assert scalar(db_url, "SELECT DISTINCT meter_id FROM reading_values") == "known"
    assert "unknown meter 'stranger'" in str(scalar(db_url, "SELECT reason FROM dead_letters"))


async def test_text_the_database_cannot_store_is_refused_at_the_wire(db_url, mqtt, site, pub):
    """A status whose health JSON holds a NUL (jsonb refuses it) is dead-lettered by the wire
    checks, alone; the database-refusal path itself is tested in test_poison.py."""
    async with running(config(db_url, mqtt, site, batch_max_delay_s=0.5,
                              batch_linger_s=0.5)) as col:
        await subscribed(col)
        pub.publish(wire.topic(site, "gw3", "status"),
                    wire.encode_status(wire.Status("gw3", site, "online", T0, {"x": "a\x00b"})))
        pub.publish(wire.topic(site, "gw3", "readings"),
                    batch_payload(site, "gw3", 1, [reading("m", T0, 1.0)]))
        await wait_until(lambda: col.stats.messages == 2, what="both messages")
    assert scalar(db_url, "SELECT count(*) FROM readings") == 1
    assert scalar(db_url, "SELECT code FROM dead_letters") == "bad_text"


async def test_two_collectors_split_one_shared_subscription(db_url, mqtt, site, pub):
    topic = wire.topic(site, "gw1", "readings")
    n = 60
    async with running(config(db_url, mqtt, site)) as a, \
            running(config(db_url, mqtt, site)) as b:
        await subscribed(a)
        await subscribed(b)
        for seq in range(n):
            pub.publish(topic, batch_payload(site, "gw1", seq,
                                             [reading(f"m{k}", T0 + minutes(seq), seq + k)
                                              for k in range(10)]))
        await wait_until(lambda: a.stats.messages + b.stats.messages == n, what="all messages")
        await asyncio.sleep(0.2)
    assert a.stats.readings_stored > 0 and b.stats.readings_stored > 0
    assert a.stats.readings_stored + b.stats.readings_stored == n * 10
    assert scalar(db_url, "SELECT count(*) FROM readings") == n * 10


async def test_odd_meter_ids_are_refused_and_plain_ones_stored_verbatim(db_url, mqtt, site,
                                                                         pub):
    """Ids are at most 64 characters of [A-Za-z0-9._:-] (wire.ID_PATTERN): anything else is
    a dead letter (bad_id), the allowed punctuation is stored as sent."""
    odd = ["tab\there", "back\\slash", "new\nline", "\\.", "dollar$'quote\"", "电表-01",
           "x" * 65]
    plain = ["a.b", "c:d", "e-f", "g_h", "X" * 64]
    topic = wire.topic(site, "gw1", "readings")
    async with running(config(db_url, mqtt, site)) as col:
        await subscribed(col)
        payload = batch_payload(site, "gw1", 1, [reading(m, T0, 1.0) for m in odd + plain])
        pub.publish(topic, payload)
        pub.publish(topic, payload)
        await wait_until(lambda: col.stats.messages == 2, what="both (the second redelivered)")
    with psycopg.connect(db_url) as conn:
        stored = sorted(r[0] for r in conn.execute("SELECT DISTINCT meter_id FROM reading_values"))
        codes = [r[0] for r in conn.execute("SELECT code FROM dead_letters")]
    assert stored == sorted(plain)
    assert codes == ["bad_id"] * len(odd) * 2
    assert col.stats.readings_stored == len(plain)


async def test_a_backfill_is_one_late_arrival_per_run_of_batches(db_url, mqtt, site, pub):
    """A gateway replaying old batches: one `late_batches` row with the seq range and delay,
    no anomaly per interval (issue 14 item 4); a fresh batch beside them is not late."""
    topic = wire.topic(site, "gw1", "readings")
    now = datetime.now(UTC).replace(microsecond=0)
    old = now - timedelta(days=1)
    async with running(config(db_url, mqtt, site, batch_linger_s=0.5)) as col:
        await subscribed(col)
        for seq in range(10, 13):  # three consecutive late batches, then a gap, then one more
            pub.publish(topic, batch_payload(site, "gw1", seq,
                                             [reading("m1", old + minutes(seq), seq)]))
        pub.publish(topic, batch_payload(site, "gw1", 20, [reading("m1", old, 1.0),
                                                           reading("m2", old, 2.0)]))
        pub.publish(topic, batch_payload(site, "gw1", 21, [reading("m3", now, 3.0)]))
        await wait_until(lambda: col.stats.messages == 5, what="five messages")
    with psycopg.connect(db_url) as conn:
        late = conn.execute("SELECT seq_from, seq_to, readings, delay_s FROM late_batches"
                            " WHERE gateway = 'gw1' ORDER BY seq_from").fetchall()
        anomalies = conn.execute("SELECT count(*) FROM anomalies").fetchone()
    runs = [(a, b, n) for a, b, n, _ in late]
    # how the messages fall into commits decides how runs join (one commit: one run of
    # 10-12); never across the gap, never with the fresh batch 21
    assert sorted(s for a, b, _ in runs for s in range(a, b + 1)) == [10, 11, 12, 20]
    assert (20, 20, 2) in runs and sum(n for *_, n in runs) == 5
    assert all(85000 < d < 87000 for *_, d in late)
    assert anomalies == (0,)
