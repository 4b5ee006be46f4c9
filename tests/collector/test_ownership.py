"""Meter ownership (issue 11 item 6) against a real broker and a real PostgreSQL: a meter's
readings are stored only from its own gateway; ingest never re-homes it; unknown meters are
registered only by a commissioning gateway, else they wait for an operator."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest
from collector_helpers import (
    T0,
    Publisher,
    batch_payload,
    config,
    minutes,
    reading,
    running,
    scalar,
    subscribed,
    wait_until,
)

from collector import ownership, read_model
from launcher.cli import main as meterhub
from meterhub import wire

pytestmark = pytest.mark.integration


def _send(pub: Publisher, site: str, gateway: str, seq: int, *readings: wire.Reading) -> None:
    pub.publish(wire.topic(site, gateway, "readings"), batch_payload(site, gateway, seq, readings))


async def test_other_gateways_reading_is_dead_lettered_and_meter_not_rehomed(
        db_url, mqtt, site, pub):
    async with running(config(db_url, mqtt, site)) as col:  # commissions unknown meters
        await subscribed(col)
        _send(pub, site, "gwA", 1, reading("m1", T0, 1.0))
        await wait_until(lambda: col.stats.messages == 1, what="owner's batch")
        # gwB claims m1 (beside its own m2), later than gwA's reading
        _send(pub, site, "gwB", 1, reading("m1", T0 + minutes(5), 2.0),
              reading("m2", T0 + minutes(5), 3.0))
        await wait_until(lambda: col.stats.messages == 2, what="intruder's batch")
    assert scalar(db_url, "SELECT gateway FROM meters WHERE meter_id = 'm1'") == "gwA"
    assert scalar(db_url, "SELECT gateway FROM meters WHERE meter_id = 'm2'") == "gwB"
    assert _readings_of(db_url, "m1") == 1
    assert _readings_of(db_url, "m2") == 1
    assert scalar(db_url, "SELECT code FROM dead_letters") == "not_owner"
    reason = str(scalar(db_url, "SELECT reason FROM dead_letters"))
    assert "meter m1 belongs to gateway gwA" in reason
    assert scalar(db_url, "SELECT gateway FROM dead_letters") == "gwB"
    assert scalar(db_url, "SELECT gateway || ' ' || meter_id FROM gateway_events"
                          " WHERE kind = 'ownership_violation'") == "gwB m1"
    assert col.stats.dead_letters_by_code == {"not_owner": 1}
    assert scalar(db_url, "SELECT action || ' ' || to_gateway FROM meter_ownership_audit"
                          " WHERE meter_id = 'm1'") == "commissioned gwA"


async def test_payload_gateway_must_equal_the_topics(db_url, mqtt, site, pub):
    async with running(config(db_url, mqtt, site)) as col:
        await subscribed(col)
        pub.publish(wire.topic(site, "gwB", "readings"),
                    batch_payload(site, "gwA", 1, [reading("m1", T0, 1.0)]))
        await wait_until(lambda: col.stats.messages == 1, what="forged batch")
    assert scalar(db_url, "SELECT count(*) FROM readings") == 0
    assert scalar(db_url, "SELECT count(*) FROM meters") == 0
    assert scalar(db_url, "SELECT code FROM dead_letters") == "topic_mismatch"


async def test_unknown_meter_waits_until_approved(db_url, mqtt, site, pub):
    cfg = config(db_url, mqtt, site, commission_unknown_meters=False)
    async with running(cfg) as col:
        await subscribed(col)
        _send(pub, site, "gwA", 1, reading("new", T0, 1.0), reading("new", T0 + minutes(1), 1.1))
        await wait_until(lambda: col.stats.messages == 1, what="unknown meter's batch")
        assert scalar(db_url, "SELECT count(*) FROM readings") == 0
        assert scalar(db_url, "SELECT count(*) FROM meters") == 0
        assert scalar(db_url, "SELECT code FROM dead_letters") == "pending_meter"
        with psycopg.connect(db_url, autocommit=True) as conn:
            (row,) = read_model.pending_meters(conn)
            assert (row["meter_id"], row["gateway"], row["readings"]) == ("new", "gwA", 2)
        assert meterhub(["collector", "pending", "approve", "new", "--gateway", "gwA",
                         "--by", "op", "--database-url", db_url]) == 0
        _send(pub, site, "gwA", 2, reading("new", T0 + minutes(2), 1.2))
        await wait_until(lambda: col.stats.messages == 2, what="approved meter's batch")
    assert _readings_of(db_url, "new") == 1
    assert scalar(db_url, "SELECT gateway FROM meters WHERE meter_id = 'new'") == "gwA"
    assert scalar(db_url, "SELECT count(*) FROM pending_meters") == 0
    assert scalar(db_url, "SELECT action || ' ' || by FROM meter_ownership_audit") == "approved op"


async def test_rejected_claim_stays_refused(db_url, mqtt, site, pub):
    cfg = config(db_url, mqtt, site, commission_unknown_meters=False)
    async with running(cfg) as col:
        await subscribed(col)
        _send(pub, site, "gwX", 1, reading("rogue", T0, 1.0))
        await wait_until(lambda: col.stats.messages == 1, what="first claim")
        with psycopg.connect(db_url, autocommit=True) as conn:
            ownership.reject(conn, "rogue", "gwX", "op")
            with pytest.raises(ownership.OwnershipError):
                ownership.reject(conn, "rogue", "gwY", "op")
        _send(pub, site, "gwX", 2, reading("rogue", T0 + minutes(1), 1.0))
        await wait_until(lambda: col.stats.messages == 2, what="second claim")
    assert scalar(db_url, "SELECT count(*) FROM readings") == 0
    assert "rejected by an operator" in str(scalar(
        db_url, "SELECT reason FROM dead_letters ORDER BY id DESC LIMIT 1"))
    assert scalar(db_url, "SELECT status FROM pending_meters") == "rejected"


async def test_commissioning_window_registers_then_closes(db_url, mqtt, site, pub):
    cfg = config(db_url, mqtt, site, commission_unknown_meters=False)
    assert meterhub(["collector", "commissioning", "gwC", "--minutes", "10",
                     "--database-url", db_url]) == 0
    async with running(cfg) as col:
        await subscribed(col)
        _send(pub, site, "gwC", 1, reading("c1", T0, 1.0))
        await wait_until(lambda: col.stats.messages == 1, what="commissioning batch")
        with psycopg.connect(db_url, autocommit=True) as conn:
            ownership.commission(conn, "gwC", 0, datetime.now(UTC))
        _send(pub, site, "gwC", 2, reading("c2", T0, 1.0), reading("c1", T0 + minutes(1), 1.1))
        await wait_until(lambda: col.stats.messages == 2, what="batch after the window")
    assert scalar(db_url, "SELECT string_agg(meter_id || '@' || gateway, ',' ORDER BY meter_id)"
                          " FROM meters") == "c1@gwC"
    assert _readings_of(db_url, "c1") == 2
    assert scalar(db_url, "SELECT meter_id FROM pending_meters") == "c2"


async def test_operator_move_is_audited_and_the_old_gateway_refused(db_url, mqtt, site, pub):
    async with running(config(db_url, mqtt, site)) as col:
        await subscribed(col)
        _send(pub, site, "gwA", 1, reading("mv", T0, 1.0))
        await wait_until(lambda: col.stats.messages == 1, what="first owner")
        assert meterhub(["collector", "meters", "move", "mv", "--to", "gwB", "--by", "eng. Li",
                         "--database-url", db_url]) == 0
        _send(pub, site, "gwA", 2, reading("mv", T0 + minutes(1), 1.1))
        _send(pub, site, "gwB", 1, reading("mv", T0 + minutes(2), 1.2))
        await wait_until(lambda: col.stats.messages == 3, what="both gateways")
    assert scalar(db_url, "SELECT gateway FROM meters WHERE meter_id = 'mv'") == "gwB"
    assert scalar(db_url, "SELECT count(*) FROM readings") == 2
    assert "belongs to gateway gwB" in str(scalar(db_url, "SELECT reason FROM dead_letters"))
    assert scalar(db_url, "SELECT from_gateway || '>' || to_gateway || ' ' || by"
                          " FROM meter_ownership_audit WHERE action = 'moved'") == "gwA>gwB eng. Li"


def _readings_of(db_url: str, meter: str) -> object:
    return scalar(db_url, "SELECT count(*) FROM readings r JOIN meters m"
                  " ON m.meter_key = r.meter WHERE m.meter_id = %s", meter)
