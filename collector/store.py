"""The store: write one accumulated batch of messages in one transaction (the COPY path).

Rows go through COPY into a per-connection temporary staging table and from there into
`readings` with ON CONFLICT DO NOTHING: COPY is the fast path, the conflict clause makes a
redelivered message harmless, and doing both in one transaction with the sequence, meter,
gateway and dead-letter bookkeeping means the broker ack (sent after commit) covers all of it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from collector._copy import with_column
from collector.parse import BatchSeen, ClockSeen, DeadLetter, MeterSeen, Parsed
from meterhub import wire

_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS _stage (
    meter_id text, quantity text, ts timestamptz, value double precision, unit text,
    gateway text, seq bigint
) ON COMMIT DELETE ROWS
"""

_INSERT = """
WITH ins AS (
    INSERT INTO readings (meter_id, quantity, ts, value, unit, gateway, seq, received_at)
    SELECT meter_id, quantity, ts, value, unit, gateway, seq, %(now)s FROM _stage
    ORDER BY meter_id, quantity, ts
    ON CONFLICT DO NOTHING
    RETURNING meter_id, quantity, ts
), dirty AS (
    INSERT INTO vee_dirty (meter_id, dirty_from)
    SELECT meter_id, min(ts) FROM ins GROUP BY meter_id ORDER BY meter_id
    ON CONFLICT (meter_id) DO UPDATE
        SET dirty_from = least(vee_dirty.dirty_from, excluded.dirty_from),
            marked_at = clock_timestamp(), mark = nextval('vee_mark_seq')
)
SELECT (SELECT count(*) FROM (SELECT DISTINCT meter_id, ts FROM ins) r), (SELECT count(*) FROM ins)
"""

# Same key, different value: a meter or gateway fault worth an engineer's eye.
_CONFLICTS = """
INSERT INTO gateway_events (gateway, source, kind, meter_id, at, detail, data)
SELECT s.gateway, 'collector', 'conflicting_duplicate', s.meter_id, s.ts,
       format('%%s at %%s arrived again with %%s (stored %%s)', s.quantity, s.ts, s.value, r.value),
       jsonb_build_object('quantity', s.quantity, 'stored', r.value, 'received', s.value)
FROM _stage s JOIN readings r USING (meter_id, quantity, ts)
WHERE r.value <> s.value
"""

# gateway and site are set when a meter is registered (collector/ownership.py), never here:
# ingest does not re-home a meter.
_METERS = """
INSERT INTO meters AS m (meter_id, gateway, site, first_seen, last_seen, relay, relay_at)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[],
                     %s::text[], %s::timestamptz[])
ON CONFLICT (meter_id) DO UPDATE SET
    first_seen = least(m.first_seen, excluded.first_seen),
    last_seen = greatest(m.last_seen, excluded.last_seen),
    relay = CASE WHEN excluded.relay_at IS NOT NULL
                  AND (m.relay_at IS NULL OR excluded.relay_at >= m.relay_at)
                 THEN excluded.relay ELSE m.relay END,
    relay_at = greatest(m.relay_at, excluded.relay_at)
"""

_BATCHES = """
INSERT INTO gateway_batches (gateway, seq, received_at, readings)
SELECT g, s, %s, n FROM unnest(%s::text[], %s::bigint[], %s::int[]) AS u(g, s, n)
ORDER BY g, s
ON CONFLICT DO NOTHING
RETURNING gateway, seq
"""

_GATEWAY_SEEN = """
INSERT INTO gateways AS g (gateway, site, last_seen, max_seq, batches, duplicate_batches,
                           clock_offset_s)
SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::bigint[], %s::bigint[],
                     %s::bigint[], %s::float8[])
ON CONFLICT (gateway) DO UPDATE SET
    site = excluded.site,
    last_seen = greatest(g.last_seen, excluded.last_seen),
    max_seq = greatest(g.max_seq, excluded.max_seq),
    batches = g.batches + excluded.batches,
    duplicate_batches = g.duplicate_batches + excluded.duplicate_batches,
    clock_offset_s = excluded.clock_offset_s
"""

_STATUS = """
INSERT INTO gateways AS g (gateway, site, state, health, status_at, last_seen)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (gateway) DO UPDATE SET
    site = excluded.site, state = excluded.state, health = excluded.health,
    status_at = excluded.status_at, last_seen = greatest(g.last_seen, excluded.last_seen)
WHERE g.status_at IS NULL OR excluded.status_at >= g.status_at
"""


@dataclass(slots=True)
class Batch:
    """Messages accumulated since the last commit, with the broker ids to ack after it."""

    chunks: list[str] = field(default_factory=list)  # COPY text, one chunk per reading
    keys: list[tuple[str, datetime]] = field(default_factory=list)  # (meter, ts) per chunk
    origins: list[str] = field(default_factory=list)  # sending gateway (topic's) per chunk
    values: int = 0
    readings: int = 0
    meters: dict[str, MeterSeen] = field(default_factory=dict)
    dead: list[DeadLetter] = field(default_factory=list)
    clocks: list[ClockSeen] = field(default_factory=list)
    batches: list[BatchSeen] = field(default_factory=list)
    statuses: list[wire.Status] = field(default_factory=list)
    events: list[tuple[str, str, wire.Event]] = field(default_factory=list)
    acks: list[tuple[int, int]] = field(default_factory=list)  # (mid, qos)
    items: list[Any] = field(default_factory=list)  # the raw messages, to split on refusal
    messages: int = 0
    first_at: float = 0.0  # monotonic time the first message joined
    publish_times: list[float] = field(default_factory=list)
    rejected: bool = False  # already turned into dead letters after the database refused it

    def add_readings(self, parsed: Parsed) -> None:
        self.chunks.extend(parsed.chunks)
        self.keys.extend(parsed.keys)
        if parsed.batch is not None:
            self.origins.extend([parsed.batch.gateway] * len(parsed.chunks))
        self.values += parsed.values
        self.readings += parsed.readings
        self.dead.extend(parsed.dead)
        self.clocks.extend(parsed.clocks)
        if parsed.batch is not None:
            self.batches.append(parsed.batch)
        for meter, seen in parsed.meters.items():
            have = self.meters.get(meter)
            if have is None:
                self.meters[meter] = seen
                continue
            have.first = min(have.first, seen.first)
            if seen.last >= have.last:
                have.gateway, have.site, have.last = seen.gateway, seen.site, seen.last
            newer = have.relay_at is None or (seen.relay_at and seen.relay_at >= have.relay_at)
            if seen.relay_at is not None and newer:
                have.relay, have.relay_at = seen.relay, seen.relay_at

    def __len__(self) -> int:
        return self.messages


@dataclass(frozen=True, slots=True)
class WritePolicy:
    """What the collector's config decides about a write (see CollectorConfig)."""

    dead_letter_keep_bytes: int = 64 * 1024
    dead_letter_prefix_bytes: int = 4096


def dead_letter_row(d: DeadLetter, now: datetime, policy: WritePolicy) -> tuple[Any, ...]:
    """A dead letter as stored: the payload whole when small enough to replay, else its
    first bytes; always its length and sha256; the reason cut to a line a person reads."""
    payload = d.payload
    complete = len(payload) <= policy.dead_letter_keep_bytes
    kept = payload if complete else payload[: policy.dead_letter_prefix_bytes]
    return (_text(d.topic), kept, _text(d.reason[:1000]), d.gateway, now, d.code,
            len(payload), hashlib.sha256(payload).digest(), complete, d.whole_message)


def _text(value: str) -> str:
    """Text PostgreSQL accepts whatever arrived: no NUL, no lone surrogate."""
    return value.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode()


@dataclass(frozen=True, slots=True)
class WriteResult:
    readings_stored: int
    values_stored: int
    duplicate_batches: int
    dead_letters: int


async def prepare(conn: psycopg.AsyncConnection) -> None:
    await conn.execute(_STAGE)


async def ensure_partitions(conn: psycopg.AsyncConnection, lo: datetime, hi: datetime) -> None:
    await conn.execute("SELECT collector_ensure_partitions(%s, %s)", (lo, hi))


async def unknown_meters(conn: psycopg.AsyncConnection, meters: list[str]) -> set[str]:
    cur = await conn.execute(
        "SELECT m FROM unnest(%s::text[]) m WHERE NOT EXISTS "
        "(SELECT 1 FROM meters WHERE meter_id = m)",
        (meters,),
    )
    return {r[0] for r in await cur.fetchall()}


async def write(conn: psycopg.AsyncConnection, batch: Batch, now: datetime,
                policy: WritePolicy | None = None) -> WriteResult:
    """Everything in `batch`, one transaction; the caller commits nothing else around it."""
    policy = policy or WritePolicy()
    stored = values = dup_batches = 0
    async with conn.transaction():
        if batch.chunks:
            stored, values = await _store_rows(conn, batch, now)
        if batch.meters:
            ms = sorted(batch.meters.items())
            await conn.execute(
                _METERS,
                (
                    [m for m, _ in ms], [s.gateway for _, s in ms], [s.site for _, s in ms],
                    [s.first for _, s in ms], [s.last for _, s in ms],
                    [s.relay for _, s in ms], [s.relay_at for _, s in ms],
                ),
            )
        if batch.clocks:
            await _store_clocks(conn, batch.clocks)
        if batch.batches:
            dup_batches = await _track_sequences(conn, batch.batches, now)
        for status in batch.statuses:
            await conn.execute(
                _STATUS,
                (status.gateway, status.site, status.state, Jsonb(dict(status.health)),
                 status.at, now),
            )
        if batch.events:
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO gateway_events (gateway, site, kind, meter_id, at, detail, data)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    [(gw, site, e.kind, e.meter, e.at, e.detail, Jsonb(dict(e.data)))
                     for site, gw, e in batch.events],
                )
        if batch.dead:
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO dead_letters (topic, payload, reason, gateway, received_at,"
                    " code, payload_length, payload_sha256, complete, whole_message)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [dead_letter_row(d, now, policy) for d in batch.dead],
                )
    return WriteResult(stored, values, dup_batches, len(batch.dead))


# Clock checks of meters the sending gateway owns (ownership was sorted before the write; a
# check from any other gateway is not believed); the same check twice is one row.
_CLOCKS = """
INSERT INTO clock_checks (meter_id, read_at, meter_clock, drift_s, gateway)
SELECT c.m, c.r, c.mc, c.d, c.g
FROM unnest(%s::text[], %s::timestamptz[], %s::timestamptz[], %s::float8[], %s::text[])
     AS c(m, r, mc, d, g)
JOIN meters mt ON mt.meter_id = c.m AND mt.gateway = c.g
ORDER BY c.m, c.r
ON CONFLICT DO NOTHING
"""


async def _store_clocks(conn: psycopg.AsyncConnection, clocks: list[ClockSeen]) -> None:
    await conn.execute(_CLOCKS, ([c.meter for c in clocks], [c.check.read_at for c in clocks],
                                 [c.check.meter_clock for c in clocks],
                                 [c.check.drift_s for c in clocks],
                                 [c.gateway for c in clocks]))


async def _store_rows(conn: psycopg.AsyncConnection, batch: Batch, now: datetime
                      ) -> tuple[int, int]:
    """(readings, values) newly stored.

    Fresh data, the common case, goes straight into `readings` by COPY (inside a savepoint):
    that is the database's fastest path. If any row is already there (a redelivery, a replay)
    the savepoint is rolled back and the rows go through a staging table and
    INSERT ... ON CONFLICT DO NOTHING, which stores each reading once.
    """
    text = "".join(batch.chunks).encode()
    try:
        async with conn.transaction(), conn.cursor().copy(
            "COPY readings (meter_id, quantity, ts, value, unit, gateway, seq, received_at) "
            "FROM STDIN"
        ) as copy:
            await copy.write(with_column(text, now.isoformat()))
    except psycopg.errors.UniqueViolation:
        pass
    else:
        meters = sorted((m, s.first) for m, s in batch.meters.items())
        await conn.execute(_DIRTY, ([m for m, _ in meters], [f for _, f in meters]))
        return len(set(batch.keys)), batch.values
    async with conn.cursor().copy(
        "COPY _stage (meter_id, quantity, ts, value, unit, gateway, seq) FROM STDIN"
    ) as copy:
        await copy.write(text)
    cur = await conn.execute(_INSERT, {"now": now})
    stored, values = (await cur.fetchone()) or (0, 0)
    if values < batch.values:
        await conn.execute(_CONFLICTS)
    return stored, values


_DIRTY = """
INSERT INTO vee_dirty (meter_id, dirty_from)
SELECT * FROM unnest(%s::text[], %s::timestamptz[])
ON CONFLICT (meter_id) DO UPDATE
    SET dirty_from = least(vee_dirty.dirty_from, excluded.dirty_from),
        marked_at = clock_timestamp(), mark = nextval('vee_mark_seq')
"""


async def _track_sequences(
    conn: psycopg.AsyncConnection, seen: list[BatchSeen], now: datetime
) -> int:
    """Record each (gateway, seq); a conflict is a duplicate batch, a new seq below the
    highest already seen is an out-of-order (late) batch: both become events."""
    gateways = sorted({b.gateway for b in seen})
    cur = await conn.execute(
        "SELECT gateway, max_seq FROM gateways WHERE gateway = ANY(%s)", (gateways,)
    )
    highest: dict[str, int] = {g: m for g, m in await cur.fetchall() if m is not None}
    cur = await conn.execute(
        _BATCHES,
        (now, [b.gateway for b in seen], [b.seq for b in seen], [b.readings for b in seen]),
    )
    fresh = {(g, s) for g, s in await cur.fetchall()}
    per_gateway: dict[str, list[BatchSeen]] = {}
    duplicates: list[BatchSeen] = []
    counted: set[tuple[str, int]] = set()
    late: list[tuple[BatchSeen, int]] = []
    for b in seen:
        per_gateway.setdefault(b.gateway, []).append(b)
        key = (b.gateway, b.seq)
        if key not in fresh or key in counted:
            duplicates.append(b)
        elif b.seq < highest.get(b.gateway, -1):
            late.append((b, highest[b.gateway]))
        counted.add(key)
        highest[b.gateway] = max(highest.get(b.gateway, -1), b.seq)
    await _batch_events(conn, "out_of_order_batch", [
        (b.gateway, b.site, now,
         f"readings batch seq {b.seq} arrived after seq {top} (a gateway replay or "
         "a redelivery): stored, and validation looks at its readings again",
         Jsonb({"seq": b.seq, "after": top})) for b, top in late])
    await _batch_events(conn, "duplicate_batch", [
        (b.gateway, b.site, now,
         f"readings batch seq {b.seq} arrived again (at-least-once redelivery "
         "or a gateway replay); stored once",
         Jsonb({"seq": b.seq})) for b in duplicates])
    gws = sorted(per_gateway)
    dup_count = {g: sum(1 for b in duplicates if b.gateway == g) for g in gws}
    await conn.execute(
        _GATEWAY_SEEN,
        (
            gws,
            [per_gateway[g][-1].site for g in gws],
            [now for _ in gws],
            [max(b.seq for b in per_gateway[g]) for g in gws],
            [len(per_gateway[g]) for g in gws],
            [dup_count[g] for g in gws],
            [(now - max(per_gateway[g], key=lambda b: b.seq).sent_at).total_seconds()
             for g in gws],
        ),
    )
    return len(duplicates)


async def _batch_events(conn: psycopg.AsyncConnection, kind: str,
                        rows: list[tuple[str, str, datetime, str, Jsonb]]) -> None:
    """Collector events about readings batches: (gateway, site, at, detail, data) each."""
    if rows:
        async with conn.cursor() as c:
            await c.executemany(
                "INSERT INTO gateway_events (gateway, site, source, kind, at, detail, data)"
                " VALUES (%s, %s, 'collector', %s, %s, %s, %s)",
                [(gateway, site, kind, *rest) for gateway, site, *rest in rows],
            )
