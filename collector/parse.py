"""Turn decoded MQTT messages into what the store writes: pure functions, no I/O, so every
rejection is easy to test.

:mod:`meterhub.wire` decodes (the one decoder of the contract); this module adds what only the
collector knows (known quantities and units, possible ranges, how far in the future or past a
reading may be) and lays good readings out as columns (:mod:`collector.columns`). A readings
message is checked in two layers: the envelope (JSON, schema version, gateway, seq) and then
each reading on its own, so one bad reading goes to the dead-letter list while the good
readings beside it are kept. Nothing here raises for bad input: rejections are data.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from collector.columns import EXTRA_CODES, SLOT, WIDTH, Block, Columns, pg_micros
from meterhub import wire
from meterhub.quantities import QUANTITIES

# Values no working meter can report; anything outside is dead-lettered, not stored.
_BOUNDS: dict[str, tuple[float, float]] = {
    "V": (0.0, 1000.0),
    "A": (0.0, 10_000.0),
    "kW": (-100_000.0, 100_000.0),
    "kvar": (-100_000.0, 100_000.0),
    "Hz": (40.0, 70.0),
    "": (-1.0001, 1.0001),  # power factor
}


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A refused message (``whole_message``) or one refused reading of a message. ``code`` is
    the short reason dead-letter counts group by (a WireError's code, or the collector's own:
    ``out_of_range``, ``topic_mismatch``, ``not_owner``, ``pending_meter``, ``db_refused``,
    ``decoder_crash``, ``not_collected``)."""

    topic: str
    payload: bytes
    reason: str
    gateway: str | None
    code: str = "refused"
    whole_message: bool = True


def refused(topic: str, payload: bytes, exc: Exception, code: str | None = None) -> DeadLetter:
    """The dead letter for a whole message, named by the gateway of its topic if it has one."""
    gateway = None
    with contextlib.suppress(wire.WireError):
        gateway = wire.parse_topic(topic)[1]
    return DeadLetter(topic, payload, str(exc), gateway,
                      str(code or getattr(exc, "code", None) or "refused"))


@dataclass(frozen=True, slots=True)
class BatchSeen:
    """One readings message's envelope: feeds sequence tracking."""

    gateway: str
    site: str
    seq: int
    sent_at: datetime
    readings: int
    received_at: datetime | None = None
    oldest: datetime | None = None  # of its good readings: lateness is judged per batch
    newest: datetime | None = None


@dataclass(frozen=True, slots=True)
class RelaySeen:
    """A relay state a reading carried (the meter's first and last times come from the
    readings themselves: :func:`collector.columns.spans`)."""

    meter: str
    gateway: str
    relay: str
    at: datetime


@dataclass(slots=True)
class Parsed:
    """What one readings message contributes to a batch."""

    # Good readings as columns, built here in one pass (origin 0: this message).
    cols: Columns = field(default_factory=Columns)
    readings: int = 0  # good readings (meter, taken_at) in the message
    months: set[tuple[int, int]] = field(default_factory=set)  # (year, month) of their times
    relays: list[RelaySeen] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    batch: BatchSeen | None = None
    clocks: list[ClockSeen] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ClockSeen:
    """A clock check carried by a reading (see :class:`meterhub.wire.ClockCheck`)."""

    meter: str
    gateway: str
    check: wire.ClockCheck


# quantity -> (unit, cumulative, bounds of a non-cumulative value or None)
_SPEC: dict[str, tuple[str, bool, tuple[float, float] | None]] = {
    q.name: (q.unit, q.cumulative, None if q.cumulative else _BOUNDS.get(q.unit))
    for q in QUANTITIES.values()
}


def _storable(values: list[tuple[str, float, str]]) -> bool:
    """Whether every value is a known quantity in its unit and within what a meter can
    report (the hot path: no words; :func:`_problems` words a refusal)."""
    for name, value, unit in values:
        spec = _SPEC.get(name)
        if spec is None or unit != spec[0]:
            return False
        if spec[1]:
            if value < 0:
                return False
        elif spec[2] is not None and not spec[2][0] <= value <= spec[2][1]:
            return False
    return True


def _problems(values: list[tuple[str, float, str]]) -> list[str]:
    """Why each value cannot be stored."""
    out = []
    for name, value, unit in values:
        spec = QUANTITIES.get(name)
        if spec is None:
            out.append(f"unknown quantity {name!r}")
        elif unit != spec.unit:
            out.append(f"{name}: unit {unit!r}, expected {spec.unit!r}")
        elif spec.cumulative:
            if value < 0:
                out.append(f"{name}: cumulative register {value} is negative")
        elif (bounds := _BOUNDS.get(spec.unit)) and not bounds[0] <= value <= bounds[1]:
            out.append(f"{name}: {value} {unit} is outside the possible "
                       f"{bounds[0]}..{bounds[1]}")
    return out


def _reading_payload(raw: Any) -> bytes:
    try:
        return json.dumps(raw, separators=(",", ":"), default=str).encode()
    except (TypeError, ValueError):
        return repr(raw).encode()


def parse_readings(
    topic: str, payload: bytes, received_at: datetime, *, max_future_s: float,
    max_age_s: float = 400 * 86400.0, limits: wire.Limits = wire.DEFAULT_LIMITS,
) -> Parsed:
    """One readings message: its good readings as a block of columns, a dead letter per bad
    one (or one for the message when its envelope is bad), the relay states and clock checks
    it carried, and what it says of the gateway's sequence."""
    out = Parsed()
    try:
        topic_site, topic_gateway, _kind = wire.parse_topic(topic)
        env = wire.decode_readings_envelope(payload, limits)
        # The topic is what the broker authenticated (its ACL lets a gateway publish only on
        # its own topics); a payload naming another gateway is not believed.
        if env.gateway != topic_gateway or env.site != topic_site:
            raise wire.WireError(
                f"readings.gateway/site {env.gateway!r}/{env.site!r} do not match the topic's "
                f"{topic_gateway!r}/{topic_site!r}", "topic_mismatch",
            )
    except wire.WireError as exc:
        out.dead.append(refused(topic, payload, exc))
        return out
    horizon = received_at + timedelta(seconds=max_future_s)
    oldest = received_at - timedelta(seconds=max_age_s)
    times = None
    if env.columns is not None:
        times = _all_good_columns(out, env, horizon, oldest, received_at)
    if times is None:
        times = _each_reading(out, topic, env, horizon, oldest, received_at)
    out.batch = BatchSeen(env.gateway, env.site, env.seq, env.sent_at, out.readings,
                          received_at, min(times, default=None), max(times, default=None))
    return out


def _each_reading(out: Parsed, topic: str, env: wire.BatchEnvelope, horizon: datetime,
                  oldest: datetime, received_at: datetime) -> Iterable[datetime]:
    """Check and take the readings one by one: a bad one becomes a dead letter of its own.
    Returns the times of the good ones."""
    times: dict[str, datetime] = {}
    stamps: dict[datetime, int] = {}
    cols = out.cols
    for i, raw in enumerate(env.rows()):
        where = f"readings.readings[{i}]"
        try:
            meter, ts, values, relay = wire.decode_reading_fields(raw, where, times)
            if ts > horizon:
                raise wire.WireError(
                    f"{where}.taken_at {wire.utc_iso(ts)} is more than "
                    f"{(horizon - received_at).total_seconds():.0f} s in the future "
                    f"(received {wire.utc_iso(received_at)})", "bad_time",
                )
            if ts < oldest:
                raise wire.WireError(
                    f"{where}.taken_at {wire.utc_iso(ts)} is more than "
                    f"{(received_at - oldest).total_seconds() / 86400:.0f} days old: a gateway "
                    "clock that fell back?", "bad_time",
                )
            if not _storable(values):
                raise wire.WireError(f"{where} (meter {meter}): " + "; ".join(_problems(values)),
                                     "out_of_range")
            if "clock" in raw:
                _clock(out, topic, raw, meter, env.gateway, where, received_at)
        except wire.WireError as exc:
            out.dead.append(DeadLetter(topic, _reading_payload(raw), str(exc), env.gateway,
                                       exc.code, whole_message=False))
            continue
        t = stamps.get(ts)
        if t is None:
            t = stamps[ts] = pg_micros(ts)
            out.months.add((ts.year, ts.month))
        cols.add(meter, t, values)
        out.readings += 1
        if relay is not None:
            out.relays.append(RelaySeen(meter, env.gateway, relay, ts))
    cols.seal()
    return stamps.keys()


_NUMBER_TYPES = frozenset({float, int, type(None)})  # not bool: type(True) is bool
_RELAYS = frozenset({None, *wire.RELAY_STATES})


def _all_good_columns(out: Parsed, env: wire.BatchEnvelope, horizon: datetime,
                      oldest: datetime, received_at: datetime
                      ) -> Iterable[datetime] | None:
    """A schema-2 message whose every reading is good, taken whole: its checks run once per
    distinct meter, time and column, with numpy over the values; returns the readings'
    times. None (and ``out`` untouched) when any reading fails a check: then
    :func:`_each_reading` sorts them one by one, with the same rules and the words for each
    refusal."""
    body = env.columns
    assert body is not None
    n = len(body)
    try:  # a list or an object where an id, a time or a relay state belongs: unhashable
        meters, stamps = set(body.meter), set(body.taken_at)
        if body.relay is not None and not set(body.relay) <= _RELAYS:
            return None
    except TypeError:
        return None
    if not all(map(wire.is_id, meters)):
        return None
    times: dict[str, datetime] = {}
    for stamp in stamps:
        try:
            ts = wire.parse_stamp(stamp, "taken_at")
        except wire.WireError:
            return None
        if not oldest <= ts <= horizon:
            return None
        times[stamp] = ts
    values = np.full((n, WIDTH), np.nan)
    present = np.zeros(n, dtype=bool)
    extras: list[tuple[int, int, float]] = []
    count = 0
    for column in body.columns:
        spec = _SPEC.get(column.quantity)
        if spec is None or column.unit != spec[0]:
            return None
        raw = column.values
        if not set(map(type, raw)) <= _NUMBER_TYPES:
            return None
        try:
            numbers = np.array(raw, dtype=np.float64)
        except OverflowError:
            return None
        absent = np.isnan(numbers)
        nulls = raw.count(None)
        if int(np.count_nonzero(absent)) != nulls:  # a NaN sent as a number
            return None
        given = numbers[~absent]
        if not np.isfinite(given).all():
            return None
        if spec[1]:
            if (given < 0).any():
                return None
        elif spec[2] is not None and ((given < spec[2][0]) | (given > spec[2][1])).any():
            return None
        present |= ~absent
        count += n - nulls
        slot = SLOT.get(column.quantity)
        if slot is not None:
            values[:, slot] = numbers
        else:
            code = EXTRA_CODES[column.quantity]
            extras.extend((r, code, numbers[r].item()) for r in np.flatnonzero(~absent).tolist())
    if not present.all():  # a reading without a value
        return None
    clocks: list[ClockSeen] = []
    if body.clock is not None:
        for i, raw_clock in enumerate(body.clock):
            if raw_clock is not None:
                try:
                    check = wire.decode_clock(raw_clock, "clock", received_at)
                except wire.WireError:
                    return None
                clocks.append(ClockSeen(body.meter[i], env.gateway, check))
    micros = {stamp: pg_micros(ts) for stamp, ts in times.items()}
    out.cols.add_block(Block(list(body.meter), np.fromiter(
        map(micros.__getitem__, body.taken_at), dtype=np.int64, count=n), values, extras), count)
    out.readings = n
    out.months = {(ts.year, ts.month) for ts in times.values()}
    out.clocks = clocks
    if body.relay is not None:
        out.relays = [RelaySeen(m, env.gateway, r, times[t]) for m, t, r
                      in zip(body.meter, body.taken_at, body.relay, strict=True) if r is not None]
    return times.values()


def _clock(out: Parsed, topic: str, raw: dict[str, Any], meter: str, gateway: str,
           where: str, received_at: datetime) -> None:
    """The reading's clock check, or a dead letter for it alone: a malformed clock must not
    cost the energy values beside it."""
    try:
        check = wire.decode_clock(raw["clock"], f"{where}.clock", received_at)
    except wire.WireError as exc:
        out.dead.append(DeadLetter(topic, _reading_payload(raw), str(exc), gateway, exc.code,
                                   whole_message=False))
        return
    out.clocks.append(ClockSeen(meter, gateway, check))


def parse_status(topic: str, payload: bytes,
                 limits: wire.Limits = wire.DEFAULT_LIMITS) -> wire.Status | DeadLetter:
    try:
        _site, gateway, _ = wire.parse_topic(topic)
        status = wire.decode_status(payload, limits)
        if status.gateway != gateway:
            raise wire.WireError(f"status.gateway {status.gateway!r} does not match the topic",
                                 "topic_mismatch")
        return status
    except wire.WireError as exc:
        return refused(topic, payload, exc)


def parse_events(topic: str, payload: bytes, limits: wire.Limits = wire.DEFAULT_LIMITS,
                 ) -> tuple[str, str, list[wire.Event]] | DeadLetter:
    try:
        site, gateway, _ = wire.parse_topic(topic)
        claimed, events = wire.decode_events(payload, limits)
        if claimed != gateway:
            raise wire.WireError(f"events.gateway {claimed!r} does not match the topic",
                                 "topic_mismatch")
        return site, gateway, events
    except wire.WireError as exc:
        return refused(topic, payload, exc)
