"""Dead letters are bounded (prefix, length, sha256; retention by age and size), counted by
reason, and can be listed, exported and replayed after a fix (issue 12 item 6)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json

import psycopg
import pytest
from collector_helpers import (
    T0,
    batch_payload,
    config,
    reading,
    running,
    scalar,
    subscribed,
    wait_until,
)

from collector import dead_letters, read_model
from launcher.cli import main as meterhub
from meterhub import wire

pytestmark = pytest.mark.integration


async def test_big_payloads_keep_a_prefix_small_ones_are_whole(db_url, mqtt, site, pub):
    topic = wire.topic(site, "gw1", "readings")
    big = b"{" + b"x" * 9000
    async with running(config(db_url, mqtt, site, dead_letter_keep_bytes=8000,
                              dead_letter_prefix_bytes=100)) as col:
        await subscribed(col)
        pub.publish(topic, big)
        pub.publish(topic, b"{small")
        await wait_until(lambda: col.stats.dead_letters == 2, what="two dead letters")
    with psycopg.connect(db_url) as conn:
        got = conn.execute("SELECT length(payload), payload_length, payload_sha256, complete "
                           "FROM dead_letters ORDER BY id").fetchall()
    assert got[0] == (100, len(big), hashlib.sha256(big).digest(), False)
    assert got[1][0] == got[1][1] == 6 and got[1][3] is True
    assert col.stats.dead_letters_by_code == {"bad_json": 2}


def test_prune_by_age_and_total_size(db_url):
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO dead_letters (topic, payload, reason, received_at, code) "
            "SELECT 't', repeat('x', 1000)::bytea, 'r', now() - make_interval(days => d), 'c' "
            "FROM generate_series(0, 9) d ORDER BY d DESC")  # ids: oldest first
        assert dead_letters.prune(conn, max_age_s=5.5 * 86400, max_total_bytes=10**9) == 4
        # six left, ~1200 bytes each by the prune's measure: 3000 keeps the newest two
        assert dead_letters.prune(conn, max_age_s=10**9, max_total_bytes=3000) == 4
        ages = [r[0] for r in conn.execute(
            "SELECT extract(day FROM now() - received_at)::int FROM dead_letters ORDER BY id")]
    assert ages == [1, 0]


async def test_list_export_and_replay_after_a_fix(db_url, mqtt, site, pub, capsys, tmp_path):
    with psycopg.connect(db_url) as conn:  # a database refusal we can "fix" afterwards
        conn.execute("""
            CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $f$
            BEGIN RAISE EXCEPTION 'not yet' USING ERRCODE = '23514'; END $f$;
            CREATE TRIGGER refuse BEFORE INSERT ON meters FOR EACH ROW
                WHEN (NEW.meter_id = 'late') EXECUTE FUNCTION refuse();""")
    topic = wire.topic(site, "gw1", "readings")
    payload = batch_payload(site, "gw1", 5, [reading("late", T0, 1.0)])
    async with running(config(db_url, mqtt, site)) as col:
        await subscribed(col)
        pub.publish(topic, payload)
        pub.publish(topic, b"not json")
        await wait_until(lambda: col.stats.dead_letters == 2, what="two dead letters")
    url = ["--database-url", db_url]
    assert meterhub(["collector", "dead-letters", "list", *url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert json.loads(out[0]) == {"by_code": {"bad_json": 1, "db_refused": 1}, "total": 2}
    assert "db_refused gw1" in out[1] and "replayable" in out[1]
    target = tmp_path / "dl.jsonl"
    assert meterhub(["collector", "dead-letters", "export", *url, "--code", "db_refused",
                     "--out", str(target)]) == 0
    [record] = [json.loads(line) for line in target.read_text().splitlines()]
    assert base64.b64decode(record["payload_b64"]) == payload
    assert record["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    with psycopg.connect(db_url) as conn:
        conn.execute("DROP TRIGGER refuse ON meters")
    replay = ["collector", "dead-letters", "replay", *url]
    # the replaying collector registers unknown meters only for a commissioning gateway
    assert meterhub(["collector", "commissioning", "gw1", "--minutes", "5", *url]) == 0
    assert "commissioning until" in capsys.readouterr().out
    assert await asyncio.to_thread(meterhub, [*replay, "--code", "db_refused"]) == 0
    replayed = capsys.readouterr().out
    assert json.loads(replayed)["readings_stored"] == 1, scalar(
        db_url, "SELECT string_agg(reason, ' | ') FROM dead_letters")
    assert scalar(db_url, "SELECT DISTINCT meter_id FROM reading_values") == "late"
    assert scalar(db_url, "SELECT replayed_at IS NOT NULL FROM dead_letters "
                  "WHERE code = 'db_refused'") is True
    # replayed once: a second replay finds nothing new (unless --again)
    assert await asyncio.to_thread(meterhub, [*replay, "--code", "db_refused"]) == 0
    assert "nothing to replay" in capsys.readouterr().out
    # what is still poison comes back as a new dead letter
    assert await asyncio.to_thread(meterhub, [*replay, "--code", "bad_json"]) == 0
    assert json.loads(capsys.readouterr().out)["dead_letters"] == 1


async def test_a_failing_task_is_restarted_and_counted(db_url, mqtt, site, pub, monkeypatch):
    """Supervision (issue 12 item 3): the prune task dies once; it is logged, counted and
    started again, and ingest goes on meanwhile."""
    calls = []

    def flaky(conn, max_age_s, max_total_bytes):
        calls.append(max_age_s)
        if len(calls) == 1:
            raise RuntimeError("prune bug")
        return 0

    monkeypatch.setattr(dead_letters, "prune", flaky)
    async with running(config(db_url, mqtt, site, dead_letter_prune_every_s=0.2)) as col:
        await subscribed(col)
        await wait_until(lambda: len(calls) >= 2, what="prune started again")
        pub.publish(wire.topic(site, "gw1", "readings"),
                    batch_payload(site, "gw1", 1, [reading("m", T0, 1.0)]))
        await wait_until(lambda: col.stats.messages == 1, what="ingest goes on")
    assert col.stats.task_restarts == {"dead_letter_prune": 1}
    assert col.stats.task_last_error["dead_letter_prune"] == "RuntimeError: prune bug"
    with psycopg.connect(db_url) as conn:
        assert read_model.dead_letter_counts(conn) == {}
