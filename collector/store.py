"""The store: write one accumulated batch of messages in one transaction (the COPY path).

Layout v2 (migration 0008): the batch's meters are upserted first (their integer keys and
register resolution come back), then its readings batches (their ids come back: gateway, seq
and arrival time live once per batch), then the readings as one binary COPY built by numpy
(:mod:`collector.columns`). COPY is the fast path; a redelivered message makes it fail on the
primary key, and then the rows go through a staging table and INSERT ... ON CONFLICT DO
NOTHING, which stores each reading once. Doing all of it in one transaction with the
sequence, meter, gateway, late-arrival and dead-letter bookkeeping means the broker ack (sent
after commit) covers all of it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from collector import columns
from collector.columns import Columns
from collector.parse import BatchSeen, ClockSeen, DeadLetter, Parsed, RelaySeen
from meterhub import wire

_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS _stage (LIKE readings) ON COMMIT DELETE ROWS
"""

_INSERT = """
WITH ins AS (
    INSERT INTO readings SELECT * FROM _stage ORDER BY meter, ts
    ON CONFLICT DO NOTHING
    RETURNING meter, ts, num_nonnulls(energy_import, energy_export, voltage_a, voltage_b,
        voltage_c, current_a, current_b, current_c, power_active, power_factor, frequency) AS n
), dirty AS (
    INSERT INTO vee_dirty (meter, dirty_from)
    SELECT meter, min(ts) FROM ins GROUP BY meter ORDER BY meter
    ON CONFLICT (meter) DO UPDATE
        SET dirty_from = least(vee_dirty.dirty_from, excluded.dirty_from),
            marked_at = clock_timestamp(), mark = nextval('vee_mark_seq')
)
SELECT count(*), coalesce(sum(n), 0) FROM ins
"""

# Same key, different value: a meter or gateway fault worth an engineer's eye.
_CONFLICTS = """
INSERT INTO gateway_events (gateway, source, kind, meter_id, at, detail, data)
SELECT b.gateway, 'collector', 'conflicting_duplicate', m.meter_id, s.ts,
       format('the reading at %%s arrived again with other values: %%s (stored %%s)', s.ts,
              to_jsonb(s) - 'batch' - 'meter' - 'ts', to_jsonb(r) - 'batch' - 'meter' - 'ts'),
       jsonb_build_object('stored', to_jsonb(r) - 'batch' - 'meter' - 'ts',
                          'received', to_jsonb(s) - 'batch' - 'meter' - 'ts')
FROM _stage s JOIN readings r USING (meter, ts)
JOIN meters m ON m.meter_key = s.meter
JOIN gateway_batches b ON b.batch_id = s.batch
WHERE (to_jsonb(r) - 'batch') <> (to_jsonb(s) - 'batch')
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
RETURNING meter_id, meter_key, energy_decimals
"""

_BATCHES = """
INSERT INTO gateway_batches (gateway, seq, received_at, readings, oldest_ts)
SELECT g, s, %s, n, o FROM unnest(%s::text[], %s::bigint[], %s::int[], %s::timestamptz[])
    AS u(g, s, n, o)
ORDER BY g, s
ON CONFLICT DO NOTHING
RETURNING gateway, seq, batch_id
"""

_LATE = """
INSERT INTO late_batches (gateway, seq_from, seq_to, readings, oldest_ts, newest_ts, delay_s,
                          received_at)
SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::int[], %s::timestamptz[],
                     %s::timestamptz[], %s::int[], %s::timestamptz[])
ON CONFLICT DO NOTHING
"""

_EXTRAS = """
INSERT INTO reading_extras (meter, ts, quantity, counts, value)
SELECT * FROM unnest(%s::int[], %s::timestamptz[], %s::smallint[], %s::bigint[], %s::float8[])
ON CONFLICT DO NOTHING
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

    cols: Columns = field(default_factory=Columns)  # good readings; origin: index in batches
    readings: int = 0
    months: set[tuple[int, int]] = field(default_factory=set)
    relays: list[RelaySeen] = field(default_factory=list)
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
        if parsed.batch is not None:
            self.cols.extend(parsed.cols, len(self.batches))
            self.batches.append(parsed.batch)
            self.months |= parsed.months
        self.readings += parsed.readings
        self.dead.extend(parsed.dead)
        self.clocks.extend(parsed.clocks)
        self.relays.extend(parsed.relays)

    @property
    def values(self) -> int:
        return self.cols.count

    def __len__(self) -> int:
        return self.messages


@dataclass(frozen=True, slots=True)
class WritePolicy:
    """What the collector's config decides about a write (see CollectorConfig)."""

    dead_letter_keep_bytes: int = 64 * 1024
    dead_letter_prefix_bytes: int = 4096
    late_after_s: float = 3600.0  # ValidationConfig.late_after_s


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
        keys: dict[str, tuple[int, int]] = {}
        if len(batch.cols):
            keys = await _upsert_meters(conn, batch)
        if batch.clocks:
            await _store_clocks(conn, batch.clocks)
        ids: list[int] = []
        if batch.batches:
            dup_batches, ids = await _track_sequences(conn, batch.batches, now, policy)
        if len(batch.cols):
            stored, values = await _store_rows(conn, batch, keys, ids)
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


async def _upsert_meters(conn: psycopg.AsyncConnection, batch: Batch
                         ) -> dict[str, tuple[int, int]]:
    """Each meter's first and last reading time, its newest relay state, and its integer key
    and register resolution back (meter id -> (key, energy decimals))."""
    sites = {b.gateway: b.site for b in batch.batches}
    seen: dict[str, list[Any]] = {}  # meter -> [gateway, first, last, relay, relay_at]
    for s in columns.spans(batch.cols, [b.gateway for b in batch.batches]):
        have = seen.get(s.meter)
        if have is None:
            seen[s.meter] = [s.gateway, s.first, s.last, None, None]
        else:  # two gateways claimed it (no ownership sort before): the newest names it
            if s.last >= have[2]:
                have[0], have[2] = s.gateway, s.last
            have[1] = min(have[1], s.first)
    for r in batch.relays:
        have = seen.get(r.meter)
        if have is not None and (have[4] is None or r.at >= have[4]):
            have[3], have[4] = r.relay, r.at
    ms = sorted(seen.items())
    cur = await conn.execute(_METERS, (
        [m for m, _ in ms], [v[0] for _, v in ms], [sites.get(v[0], "") for _, v in ms],
        [v[1] for _, v in ms], [v[2] for _, v in ms], [v[3] for _, v in ms],
        [v[4] for _, v in ms]))
    return {m: (k, d) for m, k, d in await cur.fetchall()}


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


async def _store_rows(conn: psycopg.AsyncConnection, batch: Batch,
                      keys: dict[str, tuple[int, int]], ids: list[int]) -> tuple[int, int]:
    """(readings, values) newly stored.

    Fresh data, the common case, goes straight into `readings` by binary COPY (inside a
    savepoint): the database's fastest path. If any row is already there (a redelivery, a
    replay) the savepoint is rolled back and the rows go through a staging table and
    INSERT ... ON CONFLICT DO NOTHING, which stores each reading once.
    """
    cols = batch.cols
    meters = cols.meters
    key = np.array([keys[m][0] for m in meters], dtype=np.int32)
    decimals = np.array([keys[m][1] for m in meters], dtype=np.int64)
    micros = cols.micros
    data = columns.binary_copy(micros, np.array(ids, dtype=np.int64)[cols.origins], key,
                               cols.values, decimals)
    try:
        async with conn.transaction(), conn.cursor().copy(
            f"COPY readings ({columns.COPY_COLUMNS}) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            await copy.write(data)
    except psycopg.errors.UniqueViolation:
        pass
    else:
        # each meter's oldest new reading: validation looks again from there (the batch's
        # spans, already grouped for the meter upsert)
        firsts: dict[int, datetime] = {}
        for span in columns.spans(cols, [b.gateway for b in batch.batches]):
            k = keys[span.meter][0]
            if k not in firsts or span.first < firsts[k]:
                firsts[k] = span.first
        order = sorted(firsts)
        await conn.execute(_DIRTY, (order, [firsts[k] for k in order]))
        await _store_extras(conn, cols, key, decimals, micros)
        return len(cols), cols.count
    async with conn.cursor().copy(
        f"COPY _stage ({columns.COPY_COLUMNS}) FROM STDIN (FORMAT BINARY)"
    ) as copy:
        await copy.write(data)
    cur = await conn.execute(_INSERT)
    stored, values = (await cur.fetchone()) or (0, 0)
    if stored < len(cols):
        await conn.execute(_CONFLICTS)
    return int(stored), int(values) + await _store_extras(conn, cols, key, decimals, micros)


async def _store_extras(conn: psycopg.AsyncConnection, cols: Columns,
                        key: np.ndarray, decimals: np.ndarray, micros: np.ndarray) -> int:
    """The rare quantities, one row per value (conflict-safe: few rows, no COPY needed);
    returns how many were new."""
    extras = cols.extras
    if not extras:
        return 0
    rows, codes, numbers = zip(*extras, strict=True)
    cumulative = [c in columns.CUMULATIVE_EXTRAS for c in codes]
    counts = [round(v * 10 ** int(decimals[r])) if cum else None
              for r, v, cum in zip(rows, numbers, cumulative, strict=True)]
    cur = await conn.execute(_EXTRAS, (
        [int(key[r]) for r in rows], [columns.from_micros(int(micros[r])) for r in rows],
        list(codes), counts,
        [None if cum else v for v, cum in zip(numbers, cumulative, strict=True)]))
    return cur.rowcount


_DIRTY = """
INSERT INTO vee_dirty (meter, dirty_from)
SELECT * FROM unnest(%s::int[], %s::timestamptz[])
ON CONFLICT (meter) DO UPDATE
    SET dirty_from = least(vee_dirty.dirty_from, excluded.dirty_from),
        marked_at = clock_timestamp(), mark = nextval('vee_mark_seq')
"""


async def _track_sequences(
    conn: psycopg.AsyncConnection, seen: list[BatchSeen], now: datetime, policy: WritePolicy
) -> tuple[int, list[int]]:
    """Record each (gateway, seq); a conflict is a duplicate batch, a new seq below the
    highest already seen is an out-of-order (late) batch: both become events. Returns the
    duplicates and the batch id of each message (in `seen` order)."""
    gateways = sorted({b.gateway for b in seen})
    cur = await conn.execute(
        "SELECT gateway, max_seq FROM gateways WHERE gateway = ANY(%s)", (gateways,)
    )
    highest: dict[str, int] = {g: m for g, m in await cur.fetchall() if m is not None}
    cur = await conn.execute(
        _BATCHES,
        (now, [b.gateway for b in seen], [b.seq for b in seen], [b.readings for b in seen],
         [b.oldest for b in seen]),
    )
    ids = {(g, s): i for g, s, i in await cur.fetchall()}
    fresh = set(ids)
    again = sorted({(b.gateway, b.seq) for b in seen} - fresh)
    if again:
        cur = await conn.execute(
            "SELECT b.gateway, b.seq, b.batch_id FROM gateway_batches b"
            " JOIN unnest(%s::text[], %s::bigint[]) AS u(g, s) ON b.gateway = u.g AND b.seq = u.s",
            ([g for g, _ in again], [s for _, s in again]))
        ids.update({(g, s): i for g, s, i in await cur.fetchall()})
    await _late_batches(conn, [b for b in seen if (b.gateway, b.seq) in fresh], policy)
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
    return len(duplicates), [ids[(b.gateway, b.seq)] for b in seen]


async def _late_batches(conn: psycopg.AsyncConnection, fresh: list[BatchSeen],
                        policy: WritePolicy) -> None:
    """One `late_batches` row per run of consecutive late batches of a gateway: a backfill
    is one event with its seq range and delay, not an anomaly per interval."""
    late: list[tuple[str, int, int, datetime, datetime, datetime]] = sorted(
        (b.gateway, b.seq, b.readings, b.oldest, b.newest, b.received_at) for b in fresh
        if b.oldest is not None and b.newest is not None and b.received_at is not None
        and (b.received_at - b.oldest).total_seconds() > policy.late_after_s)
    runs: list[list[tuple[str, int, int, datetime, datetime, datetime]]] = []
    for b in late:
        if runs and runs[-1][-1][0] == b[0] and runs[-1][-1][1] + 1 == b[1]:
            runs[-1].append(b)
        else:
            runs.append([b])
    if not runs:
        return
    rows = [(r[0][0], r[0][1], r[-1][1], sum(b[2] for b in r), min(b[3] for b in r),
             max(b[4] for b in r), int(max((b[5] - b[3]).total_seconds() for b in r)),
             max(b[5] for b in r)) for r in runs]
    await conn.execute(_LATE, [list(c) for c in zip(*rows, strict=True)])


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
