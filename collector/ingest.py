"""Turn MQTT messages into rows: pure functions, no I/O, so every rejection is easy to test.

A readings message is checked in two layers: the envelope (JSON, schema version, gateway,
seq) and then each reading on its own, so one bad reading goes to the dead-letter list while
the good readings beside it are kept. Nothing here raises for bad input: rejections are data.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from meterhub import wire
from meterhub.quantities import QUANTITIES

# Derived quantity the collector stores from a reading's optional `meter_clock` field (the
# meter's own clock as the gateway read it): meter clock minus gateway time, in seconds.
CLOCK_SKEW = "clock_skew_s"

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
    topic: str
    payload: bytes
    reason: str
    gateway: str | None


@dataclass(frozen=True, slots=True)
class BatchSeen:
    """One readings message's envelope: feeds sequence tracking."""

    gateway: str
    site: str
    seq: int
    sent_at: datetime
    readings: int


@dataclass(slots=True)
class MeterSeen:
    gateway: str
    site: str
    first: datetime
    last: datetime
    relay: str | None = None
    relay_at: datetime | None = None


# (meter_id, quantity, ts, value, unit, gateway, seq): the shape of a `readings` row
Row = tuple[str, str, datetime, float, str, str, int]

# COPY text escapes for ids (quantities and units are known names, values finite floats)
COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


@dataclass(slots=True)
class Parsed:
    """What one readings message contributes to a batch."""

    # Each good reading as COPY text lines for `readings` (meter, quantity, ts, value, unit,
    # gateway, seq), built here in one pass: formatting rows later from tuples cost as much
    # as parsing. `keys` holds the (meter, taken_at) of each chunk.
    chunks: list[str] = field(default_factory=list)
    keys: list[tuple[str, datetime]] = field(default_factory=list)
    values: int = 0  # rows in the chunks
    readings: int = 0  # good readings (meter, taken_at) in the message
    meters: dict[str, MeterSeen] = field(default_factory=dict)
    dead: list[DeadLetter] = field(default_factory=list)
    batch: BatchSeen | None = None


def _check_value(quantity: str, value: float, unit: str) -> str | None:
    """Why a value cannot be stored, or None."""
    spec = QUANTITIES.get(quantity)
    if spec is None:
        return f"unknown quantity {quantity!r}"
    if unit != spec.unit:
        return f"{quantity}: unit {unit!r}, expected {spec.unit!r}"
    if spec.cumulative:
        if value < 0:
            return f"{quantity}: cumulative register {value} is negative"
        return None
    bounds = _BOUNDS.get(spec.unit)
    if bounds and not bounds[0] <= value <= bounds[1]:
        return f"{quantity}: {value} {unit} is outside the possible {bounds[0]}..{bounds[1]}"
    return None


_SPEC: dict[str, tuple[str, bool, tuple[float, float] | None]] = {
    q.name: (q.unit, q.cumulative, None if q.cumulative else _BOUNDS.get(q.unit))
    for q in QUANTITIES.values()
}

FastReading = tuple[str, datetime, list[tuple[str, float, str]], str | None]


def fast_reading(raw: Any, times: dict[str, datetime], horizon: datetime,
                 oldest: datetime | None = None) -> FastReading | None:
    """The common, well-formed reading, checked with less overhead than the general path.

    It accepts exactly what :func:`wire.decode_reading` plus this module's checks accept, or
    returns None and lets that general path decide (and word the reason). Parsing dominated
    ingest CPU; a property test keeps the two paths in agreement.
    """
    if type(raw) is not dict or "meter_clock" in raw:
        return None
    meter = raw.get("meter")
    if type(meter) is not str or not meter or "\x00" in meter:
        return None
    stamp = raw.get("taken_at")
    if type(stamp) is not str:
        return None
    ts = times.get(stamp)
    if ts is None:
        try:
            ts = wire.parse_time(stamp, "taken_at")
        except wire.WireError:
            return None
        times[stamp] = ts
    if ts > horizon or (oldest is not None and ts < oldest):
        return None
    values = raw.get("values")
    if type(values) is not dict or not values:
        return None
    out: list[tuple[str, float, str]] = []
    for name, item in values.items():
        spec = _SPEC.get(name)
        if spec is None or type(item) is not dict:
            return None
        number: Any = item.get("value")
        kind = type(number)
        if kind is float:
            if not math.isfinite(number):
                return None
        elif kind is int:
            number = float(number)
        else:
            return None
        unit = item.get("unit")
        if unit != spec[0] or type(unit) is not str:
            return None
        if spec[1]:
            if number < 0:
                return None
        elif spec[2] is not None and not spec[2][0] <= number <= spec[2][1]:
            return None
        out.append((name, number, unit))
    relay = raw.get("relay")
    if relay is not None and relay not in wire.RELAY_STATES:
        return None
    return meter, ts, out, relay


def _reading_payload(raw: Any) -> bytes:
    try:
        return json.dumps(raw, separators=(",", ":"), default=str).encode()
    except (TypeError, ValueError):
        return repr(raw).encode()


def parse_readings(
    topic: str, payload: bytes, received_at: datetime, *, max_future_s: float,
    max_age_s: float = 400 * 86400.0,
) -> Parsed:
    out = Parsed()
    try:
        topic_site, topic_gateway, _kind = wire.parse_topic(topic)
        env = wire.decode_readings_envelope(payload)
        if env.gateway != topic_gateway or env.site != topic_site:
            raise wire.WireError(
                f"readings.gateway/site {env.gateway!r}/{env.site!r} do not match the topic's "
                f"{topic_gateway!r}/{topic_site!r}"
            )
    except wire.WireError as exc:
        gateway = None
        with contextlib.suppress(wire.WireError):
            gateway = wire.parse_topic(topic)[1]
        out.dead.append(DeadLetter(topic, payload, str(exc), gateway))
        return out
    horizon = received_at + timedelta(seconds=max_future_s)
    oldest = received_at - timedelta(seconds=max_age_s)
    times: dict[str, datetime] = {}
    stamps: dict[datetime, str] = {}
    escaped: dict[str, str] = {}
    suffix = f"\t{env.gateway.translate(COPY_ESCAPES)}\t{env.seq}\n"
    chunks, keys = out.chunks, out.keys

    def add(meter: str, ts: datetime, values: list[tuple[str, float, str]]) -> None:
        m = escaped.get(meter)
        if m is None:
            m = escaped[meter] = meter.translate(COPY_ESCAPES)
        t = stamps.get(ts)
        if t is None:
            t = stamps[ts] = ts.isoformat()
        chunks.append("".join([f"{m}\t{name}\t{t}\t{number!r}\t{unit}{suffix}"
                               for name, number, unit in values]))
        keys.append((meter, ts))
        out.values += len(values)
        out.readings += 1

    for i, raw in enumerate(env.raw_readings):
        fast = fast_reading(raw, times, horizon, oldest)
        if fast is not None:
            meter, ts, values, relay = fast
            add(meter, ts, values)
            _seen(out, meter, ts, relay, env)
            continue
        where = f"readings.readings[{i}]"
        try:
            reading = wire.decode_reading(raw, where)
            if "\x00" in reading.meter:
                raise wire.WireError(f"{where}.meter: contains a NUL character")
            if reading.taken_at > horizon:
                raise wire.WireError(
                    f"{where}.taken_at {wire.utc_iso(reading.taken_at)} is more than "
                    f"{max_future_s:.0f} s in the future (received {wire.utc_iso(received_at)})"
                )
            if reading.taken_at < oldest:
                raise wire.WireError(
                    f"{where}.taken_at {wire.utc_iso(reading.taken_at)} is more than "
                    f"{max_age_s / 86400:.0f} days old: a gateway clock that fell back?"
                )
            problems = [
                p for name, v in reading.values.items()
                if (p := _check_value(name, v.value, v.unit))
            ]
            if problems:
                raise wire.WireError(f"{where} (meter {reading.meter}): " + "; ".join(problems))
            skew = _clock_skew(raw, reading.taken_at, where)
        except wire.WireError as exc:
            out.dead.append(DeadLetter(topic, _reading_payload(raw), str(exc), env.gateway))
            continue
        meter, ts = reading.meter, reading.taken_at
        values = [(name, v.value, v.unit) for name, v in reading.values.items()]
        if skew is not None:
            values.append((CLOCK_SKEW, skew, "s"))
        add(meter, ts, values)
        _seen(out, meter, ts, reading.relay, env)
    out.batch = BatchSeen(env.gateway, env.site, env.seq, env.sent_at, out.readings)
    return out


def _seen(out: Parsed, meter: str, ts: datetime, relay: str | None,
          env: wire.BatchEnvelope) -> None:
    seen = out.meters.get(meter)
    if seen is None:
        seen = out.meters[meter] = MeterSeen(env.gateway, env.site, ts, ts)
    else:
        if ts < seen.first:
            seen.first = ts
        if ts > seen.last:
            seen.last = ts
    if relay is not None and (seen.relay_at is None or ts >= seen.relay_at):
        seen.relay, seen.relay_at = relay, ts


def _clock_skew(raw: dict[str, Any], taken_at: datetime, where: str) -> float | None:
    """Meter clock minus gateway time, when the gateway sent the meter's clock."""
    value = raw.get("meter_clock")
    if value is None:
        return None
    meter_clock = wire.parse_time(value, f"{where}.meter_clock")
    skew = (meter_clock - taken_at).total_seconds()
    return skew if math.isfinite(skew) else None


def parse_status(topic: str, payload: bytes) -> wire.Status | DeadLetter:
    try:
        _site, gateway, _ = wire.parse_topic(topic)
        status = wire.decode_status(payload)
        if status.gateway != gateway:
            raise wire.WireError(f"status.gateway {status.gateway!r} does not match the topic")
        return status
    except wire.WireError as exc:
        return DeadLetter(topic, payload, str(exc), None)


def parse_events(topic: str, payload: bytes) -> tuple[str, str, list[wire.Event]] | DeadLetter:
    try:
        site, gateway, _ = wire.parse_topic(topic)
        claimed, events = wire.decode_events(payload)
        if claimed != gateway:
            raise wire.WireError(f"events.gateway {claimed!r} does not match the topic")
        return site, gateway, events
    except wire.WireError as exc:
        return DeadLetter(topic, payload, str(exc), None)
