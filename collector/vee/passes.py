"""Validation passes against the database: load reads, run the rules and estimation, write
intervals, anomalies and (through :mod:`collector.vee.review`) work orders.

Ingest marks each meter whose readings changed (``vee_dirty``: earliest changed time and a
growing mark). A pass takes a chunk of marked meters, recomputes their intervals from just
before the earliest change, and writes only what differs. Every write to ``intervals`` puts
the span of what it wrote on billing's change queue (``interval_changes``, by the table's
statement triggers) in the same transaction; passes (and review decisions) hold one advisory
lock until commit, so they never interleave their writes to one meter.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg

from collector.config import ValidationConfig
from collector.vee import estimate, judge, resolution, rules
from collector.vee.review import VEE_LOCK, open_review_items
from meterhub import channels

log = logging.getLogger(__name__)

_CONTEXT_READS = 3  # reads before the window, so the first boundary and glitches are judged


@dataclass(frozen=True, slots=True)
class PassResult:
    meters: int
    intervals_written: int
    anomalies: int
    review_items_opened: int


def run_pending(database_url: str, interval_s: int, cfg: ValidationConfig,
                chunk: int = 500, max_chunks: int = 1000,
                progress: Callable[[int], None] | None = None) -> int:
    """Validate every meter marked dirty; returns how many intervals were written.
    ``progress`` hears the number of meters validated so far after each chunk."""
    written = meters = 0
    with psycopg.connect(database_url, autocommit=True) as conn:
        for _ in range(max_chunks):
            result = validate_chunk(conn, interval_s, cfg, chunk)
            written += result.intervals_written
            meters += result.meters
            if progress is not None:
                progress(meters)
            if result.meters < chunk:
                break
        if cfg.forward_estimate_after_s is not None:
            written += estimate_forward(conn, interval_s, cfg)
    return written


def estimate_forward(conn: psycopg.Connection, interval_s: int, cfg: ValidationConfig,
                     now: datetime | None = None) -> int:
    """Quality E intervals from the last read of each silent meter up to now.

    Only from the like-day profile (no closing read to scale to); an interval without any
    like-day history is left missing. When reads arrive the normal pass writes the span again
    from the register (S or A), and those rows go on billing's change queue again: billing
    re-charges the difference.
    """
    assert cfg.forward_estimate_after_s is not None
    now = now or datetime.now(UTC)
    size = float(interval_s)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (VEE_LOCK,))
        rows = conn.execute(
            """SELECT m.meter_key, extract(epoch FROM lr.ts)::float8
               FROM meters m CROSS JOIN LATERAL (
                   SELECT ts FROM readings
                   WHERE meter = m.meter_key AND energy_import IS NOT NULL
                   ORDER BY ts DESC LIMIT 1) lr
               WHERE m.last_seen < %s AND m.last_seen > %s AND lr.ts < %s
               ORDER BY m.meter_key""",
            (now - timedelta(seconds=cfg.forward_estimate_after_s),
             now - timedelta(seconds=cfg.forward_estimate_max_s),
             now - timedelta(seconds=cfg.forward_estimate_after_s)),
        ).fetchall()
        if not rows:
            return 0
        names: list[int] = [r[0] for r in rows]
        first = np.floor(np.array([r[1] for r in rows]) / size) * size
        end = np.floor(now.timestamp() / size) * size
        counts = np.maximum(((end - first) / size).astype(np.int64), 0)
        meter = np.repeat(np.arange(len(names), dtype=np.int64), counts)
        start = np.repeat(first, counts) + size * (
            np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
        if len(start) == 0:
            return 0
        window = [datetime.fromtimestamp(float(f), UTC) for f in first]
        hm, hs, hk = _load_history(conn, names, window, 7 * cfg.like_day_weeks * 2)
        profile, n_have = estimate.like_day_profile(meter, start, hm, hs, hk, cfg, interval_s)
        ok = ~np.isnan(profile)
        n = int(ok.sum())
        if n == 0:
            return 0
        zeros = np.zeros(n)
        iv = rules.Intervals(
            meter=meter[ok], start=start[ok], kwh=profile[ok], raw_kwh=np.full(n, np.nan),
            quality=np.full(n, "E"),
            method=np.where(n_have[ok] == 1, rules.METHOD_LIKE_DAY, rules.METHOD_AVG_LIKE_DAY),
            flags=np.full(n, rules.MISSING, dtype=np.int64), gap=zeros, gap_from=zeros,
            gap_to=zeros,
        )
        last = {i: datetime.fromtimestamp(float(r[1]), UTC) for i, r in enumerate(rows)}
        anomalies: list[tuple[Any, ...]] = []
        for i in range(n):
            mi = int(iv.meter[i])
            method = int(iv.method[i])
            reason = (f"no reads since {last[mi]:%Y-%m-%d %H:%M}: forward estimate from the "
                      f"like-day profile (method {method}); replaced when reads arrive")
            anomalies.append((names[mi], rules.code(rules.MISSING),
                              datetime.fromtimestamp(float(iv.start[i]), UTC), reason,
                              float(iv.kwh[i]), None, False, i))
        written, _, _ = _write(conn, names, iv, anomalies, interval_s)
    return written


def revalidate(database_url: str, interval_s: int, cfg: ValidationConfig, since: datetime,
               meters: list[str] | None = None,
               progress: Callable[[int, int], None] | None = None) -> int:
    """Mark every meter with readings since `since` (or the given ones) and validate again;
    ``progress`` hears (meters validated, meters marked) as the chunks go."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        marked = conn.execute(
            """INSERT INTO vee_dirty (meter, dirty_from)
               SELECT meter_key, %(since)s FROM meters
               WHERE (%(meters)s::text[] IS NULL OR meter_id = ANY(%(meters)s))
                 AND last_seen >= %(since)s
               ORDER BY meter_key
               ON CONFLICT (meter) DO UPDATE
                 SET dirty_from = least(vee_dirty.dirty_from, excluded.dirty_from),
                     marked_at = clock_timestamp(), mark = nextval('vee_mark_seq')""",
            {"since": since, "meters": meters},
        ).rowcount
    return run_pending(database_url, interval_s, cfg,
                       progress=None if progress is None else lambda n: progress(n, marked))


def drop_old_readings(database_url: str, retention_days: int) -> int:
    """Drop whole monthly partitions of raw readings older than the retention period."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT collector_drop_readings_before(now() - make_interval(days => %s))",
            (retention_days,),
        ).fetchone()
    return int(row[0]) if row else 0


def validate_chunk(conn: psycopg.Connection, interval_s: int, cfg: ValidationConfig,
                   chunk: int) -> PassResult:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (VEE_LOCK,))
        dirty = conn.execute(
            "SELECT meter, dirty_from, mark FROM vee_dirty ORDER BY meter LIMIT %s",
            (chunk,),
        ).fetchall()
        if not dirty:
            return PassResult(0, 0, 0, 0)
        names = [d[0] for d in dirty]
        size = float(interval_s)
        window = [datetime.fromtimestamp(np.floor(d[1].timestamp() / size) * size - size, UTC)
                  for d in dirty]
        result = _validate(conn, names, window, interval_s, cfg)
        # lock in meter order, as ingest does when it marks meters: no deadlock between them
        conn.execute("SELECT 1 FROM vee_dirty WHERE meter = ANY(%s) ORDER BY meter "
                     "FOR UPDATE", (names,))
        conn.execute(
            "DELETE FROM vee_dirty d USING unnest(%s::int[], %s::bigint[]) AS u(m, mark) "
            "WHERE d.meter = u.m AND d.mark <= u.mark",
            (names, [d[2] for d in dirty]),
        )
    return PassResult(len(names), *result)


# ---------------------------------------------------------------------------- loading


def _load_reads(conn: psycopg.Connection, names: list[int], window: list[datetime]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(meter index, epoch s, kWh) of the energy register from each meter's window on, with
    a few reads before it; the register's integer counts become kWh here."""
    rows = conn.execute(
        f"""SELECT u.i, extract(epoch FROM r.ts)::float8,
                   r.energy_import::float8 / (10::float8 ^ m.energy_decimals)
            FROM unnest(%s::int[], %s::timestamptz[]) WITH ORDINALITY AS u(m, w, i)
            JOIN meters m ON m.meter_key = u.m
            CROSS JOIN LATERAL (
                (SELECT ts, energy_import FROM readings
                 WHERE meter = u.m AND ts < u.w AND energy_import IS NOT NULL
                 ORDER BY ts DESC LIMIT {_CONTEXT_READS})
                UNION ALL
                (SELECT ts, energy_import FROM readings
                 WHERE meter = u.m AND ts >= u.w AND energy_import IS NOT NULL)
            ) r
            ORDER BY u.i, r.ts""",
        (names, window),
    ).fetchall()
    arr = np.array(rows, dtype=np.float64).reshape(-1, 3)
    return arr[:, 0].astype(np.int64) - 1, arr[:, 1], arr[:, 2]


def _load_side(conn: psycopg.Connection, names: list[int], lo: list[datetime],
               interval_s: int) -> np.ndarray:
    """Per (meter, interval): max current, min/max voltage."""
    rows = conn.execute(
        """SELECT u.i, extract(epoch FROM date_bin(make_interval(secs => %s), r.ts,
                                                   timestamptz 'epoch'))::float8 AS s,
                  max(greatest(r.current_a, r.current_b, r.current_c)),
                  min(least(r.voltage_a, r.voltage_b, r.voltage_c)),
                  max(greatest(r.voltage_a, r.voltage_b, r.voltage_c))
           FROM unnest(%s::int[], %s::timestamptz[]) WITH ORDINALITY AS u(m, w, i)
           JOIN readings r ON r.meter = u.m AND r.ts >= u.w
           GROUP BY u.i, s ORDER BY u.i, s""",
        (interval_s, names, lo),
    ).fetchall()
    arr = np.array([[np.nan if v is None else v for v in r] for r in rows],
                   dtype=np.float64).reshape(-1, 5)
    arr[:, 0] -= 1
    return arr


def _load_clocks(conn: psycopg.Connection[Any], names: list[int], since: datetime
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clock checks (collector/migrations/0020) of these meters from ``since``: meter index,
    read time (epoch s), drift (s)."""
    rows = conn.execute(
        """SELECT u.i, extract(epoch FROM c.read_at)::float8, c.drift_s
           FROM unnest(%s::int[]) WITH ORDINALITY AS u(m, i)
           JOIN meters m ON m.meter_key = u.m
           JOIN clock_checks c ON c.meter_id = m.meter_id AND c.read_at >= %s""",
        (names, since),
    ).fetchall()
    arr = np.array(rows, dtype=np.float64).reshape(-1, 3)
    return arr[:, 0].astype(np.int64) - 1, arr[:, 1], arr[:, 2]


def _load_history(conn: psycopg.Connection, names: list[int], window: list[datetime],
                  days: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Actual, unflagged intervals before each meter's window: baseline and like-day input."""
    rows = conn.execute(
        """SELECT u.i, extract(epoch FROM iv.interval_start)::float8, iv.kwh_e4 / 10000::float8
           FROM unnest(%s::int[], %s::timestamptz[]) WITH ORDINALITY AS u(m, w, i)
           JOIN intervals iv ON iv.meter = u.m
                AND iv.interval_start >= u.w - make_interval(days => %s)
                AND iv.interval_start < u.w
           WHERE iv.quality = 'A' AND iv.flags & %s = 0""",
        (names, window, days, rules.SURGE | rules.DROP | rules.RESET | rules.REPLACEMENT
         | rules.ZERO_WITH_CURRENT),
    ).fetchall()
    arr = np.array(rows, dtype=np.float64).reshape(-1, 3)
    return arr[:, 0].astype(np.int64) - 1, arr[:, 1], arr[:, 2]


def _expected(conn: psycopg.Connection, names: list[int]) -> np.ndarray:
    rows = conn.execute(
        "SELECT u.i, m.expected_interval_s FROM unnest(%s::int[]) WITH ORDINALITY AS u(m, i)"
        " LEFT JOIN meters m ON m.meter_key = u.m ORDER BY u.i",
        (names,),
    ).fetchall()
    return np.array([np.nan if r[1] is None else float(r[1]) for r in rows])


# ---------------------------------------------------------------------------- the pass


def _validate(conn: psycopg.Connection, names: list[int], window: list[datetime],
              interval_s: int, cfg: ValidationConfig) -> tuple[int, int, int]:
    reads = judge.Reads(*_load_reads(conn, names, window))
    if len(reads.t) == 0:
        return 0, 0, 0
    step = resolution.register_step(reads.meter, reads.e,
                                    resolution.load_declared(conn, names, cfg.register_step_kwh),
                                    cfg.register_step_kwh)
    flat = judge.flat_at_start(reads, step, len(names))
    if flat.any() and cfg.zero_lookback_s > 0:  # measure a run of zeros from its start
        back = timedelta(seconds=cfg.zero_lookback_s)
        reads = judge.replace_meters(reads, flat, judge.Reads(*_load_reads(
            conn, names, [w - back if f else w for w, f in zip(window, flat, strict=True)])))
    meter, t, e = reads.meter, reads.t, reads.e
    expected_cfg = _expected(conn, names)[meter]
    observed = rules.expected_spacing(meter, t)
    expected = np.where(np.isnan(expected_cfg), observed, expected_cfg)
    hist_days = max(cfg.baseline_days, 7 * cfg.like_day_weeks * 2)
    history = judge.History(*_load_history(conn, names, window, hist_days))
    side = _load_side(conn, names, [datetime.fromtimestamp(float(t.min()), UTC)] * len(names),
                      interval_s)
    first = datetime.fromtimestamp(float(t.min()) - cfg.clock_check_valid_s, UTC)
    clocks = judge.Clocks(*_load_clocks(conn, names, first))
    v = judge.judge(reads, side, clocks, history, interval_s, cfg, expected_s=expected,
                    step_kwh=step)
    if v is None:
        return 0, 0, 0
    ctx = _Context(names, v.iv, v.reg, meter, t, e, v.med, v.scale, v.amps, v.vmin, v.vmax,
                   v.skew, cfg, interval_s)
    return _write(conn, names, v.iv, ctx.anomalies(), interval_s)


@dataclass
class _Context:
    """Words for what fired: one reason per (interval, rule), built only for flagged ones."""

    names: list[int]
    iv: rules.Intervals
    reg: rules.Register
    meter: np.ndarray
    t: np.ndarray
    e: np.ndarray
    med: np.ndarray
    scale: np.ndarray
    amps: np.ndarray
    vmin: np.ndarray
    vmax: np.ndarray
    skew: np.ndarray
    cfg: ValidationConfig
    interval_s: int

    def __post_init__(self) -> None:
        self.events: dict[tuple[int, float], list[tuple[int, float, float, float]]] = {}
        size = float(self.interval_s)
        reg, meter, t = self.reg, self.meter, self.t
        for i, rule, before, after in zip(reg.event_index, reg.event_rule, reg.event_before,
                                          reg.event_after, strict=True):
            key = (int(meter[i]), float(np.floor(t[i] / size) * size))
            self.events.setdefault(key, []).append((int(rule), float(t[i]), float(before),
                                                    float(after)))

    def anomalies(self) -> list[tuple[Any, ...]]:
        iv = self.iv
        out: list[tuple[Any, ...]] = []
        for i in np.flatnonzero(iv.flags):
            flags = int(iv.flags[i])
            for bit in rules.RULES:
                if flags & bit:
                    reason, value, expected = self._reason(int(i), bit)
                    out.append((self.names[int(iv.meter[i])], rules.code(bit),
                                datetime.fromtimestamp(float(iv.start[i]), UTC), reason,
                                value, expected, bool(bit & rules.HOLDS), int(i)))
        return out

    def _reason(self, i: int, bit: int) -> tuple[str, float | None, float | None]:
        iv, cfg = self.iv, self.cfg
        kwh = float(iv.kwh[i])
        if bit == rules.MISSING:
            gap = float(iv.gap[i])
            span = (f"{_hm(iv.gap_from[i])}–{_hm(iv.gap_to[i])} ({gap / 60:.0f} min without "
                    "reads)")
            method = int(iv.method[i])
            if method == rules.METHOD_LINEAR:
                how = "linear interpolation of the register (method 17)"
                if gap > cfg.linear_max_s:
                    how += ": no like-day history yet"
            else:
                how = (f"like-day profile ({'average of previous' if method == 15 else 'one'} "
                       f"same-kind days, holidays as Sundays) scaled to the register difference "
                       f"(method {method})")
            return f"missing reads {span}: {how}", kwh, None
        if bit in (rules.SURGE, rules.DROP):
            med, scale = float(self.med[i]), float(self.scale[i])
            word = "above" if bit == rules.SURGE else "below"
            bucket = 86400 / cfg.tod_buckets
            tod = (float(iv.start[i]) % 86400) // bucket * bucket
            spread = (f"{abs(kwh - med) / scale:.1f} robust deviations (MAD-scale {scale:.3f} "
                      f"kWh, threshold {cfg.surge_z if bit == rules.SURGE else cfg.drop_z})"
                      if scale > 0 else f"{abs(kwh - med):.3f} kWh (the baseline is constant)")
            return (f"{kwh:.3f} kWh is {spread} {word} this meter's median {med:.3f} kWh for "
                    f"{_hm(tod)}–{_hm(tod + bucket)}; held for review", kwh, med)
        if bit == rules.ZERO_WITH_CURRENT:
            return (f"{kwh:.4f} kWh while current reached {float(self.amps[i]):.2f} A: meter "
                    "stopped, bypassed or its register stuck? held for review",
                    kwh, float(self.amps[i]))
        if bit == rules.VOLTAGE:
            lo = cfg.nominal_voltage * (1 - cfg.voltage_band)
            hi = cfg.nominal_voltage * (1 + cfg.voltage_band)
            return (f"voltage {float(self.vmin[i]):.1f}–{float(self.vmax[i]):.1f} V outside "
                    f"{lo:.0f}–{hi:.0f} V ({cfg.nominal_voltage:.0f} V ±"
                    f"{cfg.voltage_band:.0%})", float(self.vmax[i]), cfg.nominal_voltage)
        if bit == rules.CLOCK_SKEW:
            s = float(self.skew[i])
            return (f"meter clock {abs(s):.0f} s {'ahead of' if s > 0 else 'behind'} gateway "
                    f"time (limit {cfg.clock_skew_s:.0f} s): time-sync the meter", s, 0.0)
        # register events
        evs = [ev for ev in self.events.get((int(iv.meter[i]), float(iv.start[i])), [])
               if ev[0] == bit]
        _, at, before, after = evs[0] if evs else (bit, float(iv.start[i]), np.nan, np.nan)
        when = _hm(at)
        if bit == rules.ROLLOVER:
            return (f"register rolled over at {when}: {before:.2f} -> {after:.2f} kWh (modulus "
                    f"{cfg.register_modulus_kwh:.0f}); consumption counted across the wrap",
                    after, before)
        if bit == rules.RESET:
            return (f"register reset at {when}: {before:.2f} -> {after:.2f} kWh; counted again "
                    "from zero; held for review", after, before)
        if bit == rules.REPLACEMENT:
            return (f"register went backwards at {when}: {before:.2f} -> {after:.2f} kWh, near "
                    "neither zero nor the maximum (meter replaced?); consumption across the step "
                    "set to 0; held for review", after, before)
        return (f"read of {after:.2f} kWh at {when} out of line with its neighbours (previous "
                f"{before:.2f} kWh): ignored as a glitch", after, before)


def _hm(epoch: float) -> str:
    ts = datetime.fromtimestamp(float(epoch), UTC)
    return ts.strftime("%H:%M") if float(epoch) < 86400 * 2 else ts.strftime("%Y-%m-%d %H:%M")


# ---------------------------------------------------------------------------- writing


_IV_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS _iv (
    meter int, interval_start timestamptz, seconds int, kwh_e4 bigint, quality "char",
    method smallint, raw_kwh_e4 bigint, flags int
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS _an (
    meter int, rule smallint, at timestamptz, reason text, value float8, expected float8,
    holds boolean
) ON COMMIT DELETE ROWS;
"""


def _write(conn: psycopg.Connection, names: list[int], iv: rules.Intervals,
           anomalies: list[tuple[Any, ...]], interval_s: int) -> tuple[int, int, int]:
    conn.execute(_IV_STAGE)
    # kWh as exact counts of 0.0001 kWh (what numeric(16,4) held before)
    kwh_e4 = np.rint(iv.kwh * 10_000).astype(np.int64).tolist()
    raw_e4 = [None if np.isnan(r) else int(r)
              for r in np.rint(iv.raw_kwh * 10_000).tolist()]
    with conn.cursor().copy(
        "COPY _iv (meter, interval_start, seconds, kwh_e4, quality, method, raw_kwh_e4, flags) "
        "FROM STDIN"
    ) as copy:
        for i in range(len(iv)):
            copy.write_row((
                names[int(iv.meter[i])], datetime.fromtimestamp(float(iv.start[i]), UTC),
                interval_s, kwh_e4[i], str(iv.quality[i]), int(iv.method[i]), raw_e4[i],
                int(iv.flags[i]),
            ))
    with conn.cursor().copy(
        "COPY _an (meter, rule, at, reason, value, expected, holds) FROM STDIN"
    ) as copy:
        for a in anomalies:
            copy.write_row([_finite(v) for v in a[:7]])
    # Anomalies of the recomputed span that no longer fire go (unless a person decided them);
    # a review item left with nothing to review is closed by the collector.
    orphaned = conn.execute(
        """WITH span AS (SELECT meter, min(interval_start) lo, max(interval_start) hi
                         FROM _iv GROUP BY meter)
           DELETE FROM anomalies a USING span
           WHERE a.meter = span.meter AND a.at BETWEEN span.lo AND span.hi
             AND NOT EXISTS (SELECT 1 FROM _an n
                             WHERE n.meter = a.meter AND n.rule = a.rule AND n.at = a.at)
             AND (a.review_item_id IS NULL OR EXISTS (
                    SELECT 1 FROM review_items r WHERE r.id = a.review_item_id
                    AND r.status = 'open'))
           RETURNING a.review_item_id"""
    ).fetchall()
    gone = sorted({r[0] for r in orphaned if r[0] is not None})
    if gone:
        conn.execute(
            """UPDATE review_items r SET status = 'dismissed', decided_at = now(),
                      decided_by = 'collector',
                      comment = 'no longer fires after recomputation (late or corrected reads)'
               WHERE r.id = ANY(%s) AND r.status = 'open'
                 AND NOT EXISTS (SELECT 1 FROM anomalies a WHERE a.review_item_id = r.id)""",
            (gone,),
        )
    conn.execute(
        """INSERT INTO anomalies AS a (meter, rule, at, reason, value, expected, holds)
           SELECT meter, rule, at, reason, value, expected, holds FROM _an
           ORDER BY meter, at, rule
           ON CONFLICT (meter, at, rule) DO UPDATE SET
               reason = excluded.reason, value = excluded.value,
               expected = excluded.expected, holds = excluded.holds"""
    )
    opened = open_review_items(conn, interval_s)
    cur = conn.execute(
        """INSERT INTO intervals AS iv (meter, interval_start, seconds, kwh_e4, quality, method,
                                        held, raw_kwh_e4, flags)
           SELECT s.meter, s.interval_start, s.seconds, s.kwh_e4, s.quality, s.method,
                  EXISTS (SELECT 1 FROM anomalies a LEFT JOIN review_items r
                              ON r.id = a.review_item_id
                          WHERE a.meter = s.meter AND a.at = s.interval_start
                            AND a.holds AND (r.id IS NULL OR r.status = 'open')),
                  s.raw_kwh_e4, s.flags
           FROM _iv s ORDER BY s.meter, s.interval_start
           ON CONFLICT (meter, interval_start) DO UPDATE SET
               seconds = excluded.seconds, kwh_e4 = excluded.kwh_e4,
               quality = excluded.quality, method = excluded.method, held = excluded.held,
               raw_kwh_e4 = excluded.raw_kwh_e4, flags = excluded.flags
           WHERE (iv.kwh_e4, iv.quality, iv.method, iv.held, iv.raw_kwh_e4, iv.flags,
                  iv.seconds)
                 IS DISTINCT FROM (excluded.kwh_e4, excluded.quality, excluded.method,
                                   excluded.held, excluded.raw_kwh_e4, excluded.flags,
                                   excluded.seconds)
             -- a person's decision (collector/vee/decisions.py) is never re-derived
             AND NOT EXISTS (SELECT 1 FROM interval_overrides o
                             WHERE o.meter = iv.meter AND o.interval_start = iv.interval_start)"""
    )
    if cur.rowcount:
        channels.notify(conn, channels.INTERVALS)  # billing wakes when this pass commits
    return cur.rowcount, len(anomalies), opened


def _finite(v: Any) -> Any:
    if isinstance(v, float | np.floating) and not np.isfinite(v):
        return None
    if isinstance(v, np.generic):
        return v.item()
    return v
