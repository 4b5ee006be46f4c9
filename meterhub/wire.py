"""The MQTT wire contract: topics and payloads, imported by both ends.

Topics are versioned and scoped ``meterhub/v1/{site}/{gateway}/{kind}``. Payloads are JSON
a person can read with ``mosquitto_sub``; every payload carries ``schema`` so a consumer can
refuse what it does not understand instead of guessing. Decoders raise :class:`WireError`
with a reason a person can act on; they never return half-checked data.

Delivery is QoS 1 (at least once): consumers must be idempotent. Readings batches carry a
per-gateway ``seq`` that only grows (it survives gateway restarts) so the collector can tell
gaps from duplicates.

Every payload is untrusted. :func:`_load` bounds what any decoder accepts before and while
parsing (:class:`Limits`: size, nesting depth, integer digits, lone surrogates and NUL in
text); the field decoders bound ids (:data:`ID_PATTERN`), counts, numbers and timestamps
(:data:`EARLIEST`, :data:`MAX_AHEAD`). Whatever goes wrong comes out as a :class:`WireError`
with a short ``code`` (dead-letter statistics group by it), never as another exception.
"""

from __future__ import annotations

import array
import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from meterhub.security.signing import (
    DEFAULT_MAX_FUTURE_SKEW,
    CommandSigner,
    Keyring,
    verify,
)

SCHEMA_VERSION = 1
# Readings travel as columns since schema 2 (a meter list, a time list, one value list per
# quantity and unit): a tenth of the decoding work and a quarter of the bytes of schema 1 (an
# object per reading, its unit repeated per value), which is still read: a gateway's buffer
# may hold batches sealed before an upgrade.
READINGS_SCHEMA = 2
READINGS_SCHEMAS = (SCHEMA_VERSION, READINGS_SCHEMA)
TOPIC_ROOT = "meterhub/v1"

Kind = Literal["status", "readings", "events", "cmd", "cmd/ack", "receipt"]
KINDS: tuple[Kind, ...] = ("status", "readings", "events", "cmd", "cmd/ack", "receipt")

RelayState = Literal["open", "closed", "unknown"]
RELAY_STATES: tuple[RelayState, ...] = ("open", "closed", "unknown")

Action = Literal["relay_open", "relay_close", "relay_close_permitted", "relay_status", "time_sync"]
ACTIONS: tuple[Action, ...] = (
    "relay_open",  # trip: DL/T645 0x1C N1=1A
    "relay_close",  # close directly: N1=1C
    "relay_close_permitted",  # close permitted, the customer presses the button: N1=1B
    "relay_status",  # read the relay state only
    "time_sync",
)

# An ack's ``stage``: the gateway says "accepted" when it has the command and "done" when the
# meter has answered (or could not). ``outcome`` is only meaningful with stage "done".
AckStage = Literal["accepted", "done"]
Outcome = Literal["ok", "rejected", "expired", "no_answer", "unknown_meter", "invalid", "failed"]
OUTCOMES: tuple[Outcome, ...] = (
    "ok", "rejected", "expired", "no_answer", "unknown_meter", "invalid", "failed",
)


class WireError(ValueError):
    """A payload or topic that breaks the contract; the message says which field and why,
    ``code`` says what kind of breach in one word (``too_large``, ``too_deep``, ``bad_json``,
    ``bad_schema``, ``bad_id``, ``bad_number``, ``bad_time``, ``bad_text``, ``too_many``,
    ``bad_topic``, ``bad_field``), so refusals can be counted by kind."""

    def __init__(self, message: str, code: str = "bad_field") -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------- limits

# Meter, gateway and site ids: what a topic level, a file name and a log line can all carry.
ID_PATTERN = r"[A-Za-z0-9._:-]{1,64}"
_is_id = re.compile(ID_PATTERN).fullmatch


def is_id(value: Any) -> bool:
    """Whether ``value`` is a meter, gateway or site id (:data:`ID_PATTERN`)."""
    return type(value) is str and _is_id(value) is not None
MAX_INT = 2**63 - 1  # a PostgreSQL bigint
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)  # no reading, status or event is older
MAX_AHEAD = timedelta(days=1)  # ... or further ahead of this clock than this
# A meter's own clock may be far off (that is what a clock check finds), but DL/T645 keeps
# two-digit years: anything outside 2000..2099 is not a clock reading at all.
CLOCK_EARLIEST = EARLIEST
CLOCK_LATEST = datetime(2100, 1, 1, tzinfo=UTC)
CLOCK_DRIFT_SLACK_S = 0.002  # ``drift_s`` may differ from meter_clock - read_at by rounding


@dataclass(frozen=True, slots=True)
class Limits:
    """What one payload may hold, checked before (size, depth) and after parsing."""

    max_bytes: int = 1 << 20
    max_depth: int = 32  # nesting of objects and arrays
    max_items: int = 10_000  # readings in a batch, events in a message
    max_text: int = 1024  # free text (event detail, units, health strings)
    # longest number literal a payload may hold; when set, NaN, Infinity and numbers that
    # overflow to infinity are refused while parsing (a command holds small numbers only)
    max_number_chars: int | None = None


DEFAULT_LIMITS = Limits()
# a command is {..., "params": {...}}: small, shallow, and its numbers are attempt counts
COMMAND_LIMITS = Limits(max_bytes=64 * 1024, max_depth=8, max_number_chars=21)

# Bytes -> nesting steps for the depth scan: opening brackets +1, closing -1, the rest dropped.
_BRACKETS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')
# An escape that may decode to a lone surrogate or NUL (text PostgreSQL cannot store): only
# then are the parsed strings walked. Raw UTF-8 bytes cannot decode to either.
_SUSPECT = re.compile(rb"\\u(?:[dD][89a-fA-F]|0000)")


def _show(value: Any, width: int = 60) -> str:
    """A value for an error message, cut short: reasons are stored and shown."""
    text = repr(value)
    return text if len(text) <= width else text[:width] + "..."


def _depth(raw: bytes) -> int:
    """Deepest nesting of ``raw``, found without parsing (no recursion): count brackets
    outside strings. Brackets inside strings only matter when the quick count over all
    brackets exceeds the caller's limit, so strings are stripped only then."""
    steps = array.array("b", raw.translate(_BRACKETS, _NOT_BRACKETS))
    return max(itertools.accumulate(steps), default=0)


def _check_depth(raw: bytes, what: str, limit: int) -> None:
    if _depth(raw) > limit and _depth(_STRINGS.sub(b"", raw)) > limit:
        raise WireError(f"{what}: nested deeper than {limit} levels", "too_deep")


def _storable(text: str) -> bool:
    """Text PostgreSQL can store and every encoder can write: no NUL, no lone surrogate."""
    return "\x00" not in text and not has_lone_surrogate(text)


def has_lone_surrogate(text: str) -> bool:
    """Whether ``text`` holds a surrogate code point on its own: not UTF-8, so neither
    PostgreSQL nor a file can take it."""
    return any("\ud800" <= c <= "\udfff" for c in text)


def _check_text(obj: Any, where: str) -> None:
    """Refuse strings (keys too) PostgreSQL cannot store: lone surrogates, NUL. Iterative."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                raise WireError(f"{where}: text with a NUL character", "bad_text")
            try:
                item.encode()
            except UnicodeEncodeError:
                raise WireError(f"{where}: text with a lone surrogate {_show(item)}",
                                "bad_text") from None


def check_free(obj: Any, where: str, limits: Limits = DEFAULT_LIMITS) -> None:
    """Bound free-form data (status health, event data) before it is stored as JSON:
    nesting, text length, finite numbers, integers within a bigint. Iterative."""
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > limits.max_depth:
            raise WireError(f"{where}: nested deeper than {limits.max_depth} levels", "too_deep")
        if isinstance(item, dict):
            for key, value in item.items():
                if len(key) > limits.max_text:
                    raise WireError(f"{where}: a key longer than {limits.max_text}", "bad_text")
                stack.append((value, depth + 1))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, str):
            if len(item) > limits.max_text:
                raise WireError(f"{where}: text longer than {limits.max_text}", "bad_text")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise WireError(f"{where}: {item!r} is not finite", "bad_number")
        elif isinstance(item, int) and not isinstance(item, bool) and abs(item) > MAX_INT:
            raise WireError(f"{where}: integer {_show(item)} is out of range", "bad_number")


# ---------------------------------------------------------------------------- topics


def topic(site: str, gateway: str, kind: Kind) -> str:
    for label, part in (("site", site), ("gateway", gateway)):
        if not part or any(c in part for c in "/+#"):
            raise WireError(f"{label} {part!r} must be non-empty and free of '/', '+', '#'")
    return f"{TOPIC_ROOT}/{site}/{gateway}/{kind}"


def subscription(kind: Kind, site: str = "+", gateway: str = "+") -> str:
    """Topic filter for one kind across sites/gateways (wildcards by default)."""
    return f"{TOPIC_ROOT}/{site}/{gateway}/{kind}"


def shared_subscription(group: str, kind: Kind) -> str:
    """MQTT 5 shared subscription so several collectors split the load."""
    return f"$share/{group}/{subscription(kind)}"


def parse_topic(name: str) -> tuple[str, str, Kind]:
    """Split a topic into (site, gateway, kind)."""
    prefix = TOPIC_ROOT + "/"
    if not name.startswith(prefix):
        raise WireError(f"topic {_show(name)} is not under {TOPIC_ROOT}/", "bad_topic")
    parts = name[len(prefix) :].split("/", 2)
    if len(parts) != 3 or parts[2] not in KINDS:
        raise WireError(f"topic {_show(name)} is not {TOPIC_ROOT}/<site>/<gateway>/<kind>",
                        "bad_topic")
    for label, part in (("site", parts[0]), ("gateway", parts[1])):
        if not _is_id(part):
            raise WireError(f"topic {label} {_show(part)} is not an id ({ID_PATTERN})",
                            "bad_topic")
    return parts[0], parts[1], parts[2]  # type: ignore[return-value]


# ---------------------------------------------------------------------------- time helpers


def utc_iso(ts: datetime) -> str:
    if ts.tzinfo is None:
        raise WireError("timestamps on the wire must be timezone-aware")
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: Any, where: str) -> datetime:
    if not isinstance(value, str) or len(value) > 64:
        raise WireError(f"{where}: expected an ISO-8601 timestamp string, got {_show(value)}",
                        "bad_time")
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if ts.tzinfo is None:
            raise WireError(f"{where}: {value!r} has no timezone; send UTC with 'Z'", "bad_time")
        return ts.astimezone(UTC)
    except (ValueError, OverflowError) as exc:  # OverflowError: year 1 at +01:00, in UTC
        if isinstance(exc, WireError):
            raise
        raise WireError(f"{where}: {value!r} is not an ISO-8601 timestamp", "bad_time") from None


def parse_stamp(value: Any, where: str, now: datetime | None = None) -> datetime:
    """:func:`parse_time` for what a device reports: not before :data:`EARLIEST`, not more
    than :data:`MAX_AHEAD` after ``now`` (a clock that ran off, or a poison date)."""
    ts = parse_time(value, where)
    if ts < EARLIEST or ts > (now or datetime.now(UTC)) + MAX_AHEAD:
        raise WireError(f"{where}: {value!r} is outside {EARLIEST.year}..now+"
                        f"{MAX_AHEAD.days}d", "bad_time")
    return ts


# ---------------------------------------------------------------------------- payloads


@dataclass(frozen=True, slots=True)
class Value:
    value: float
    unit: str


@dataclass(frozen=True, slots=True)
class ClockCheck:
    """A meter's own clock as the gateway read it: ``meter_clock`` (what the meter said,
    whole seconds, made UTC from the meters' zone) at ``read_at`` (gateway time, UTC)."""

    meter_clock: datetime
    read_at: datetime

    @property
    def drift_s(self) -> float:
        """Meter clock minus gateway time: positive when the meter runs ahead."""
        return round((self.meter_clock - self.read_at).total_seconds(), 3)


@dataclass(frozen=True, slots=True)
class Reading:
    """One meter read in one poll: every quantity the meter answered, with units, and on
    the polls that check it, the meter's clock (``clock``; optional on the wire)."""

    meter: str
    taken_at: datetime
    values: Mapping[str, Value]
    relay: RelayState | None = None
    clock: ClockCheck | None = None


@dataclass(frozen=True, slots=True)
class ReadingsBatch:
    gateway: str
    site: str
    seq: int
    sent_at: datetime
    readings: tuple[Reading, ...]


@dataclass(frozen=True, slots=True)
class Command:
    command_id: str
    meter: str
    action: Action
    issued_at: datetime
    expires_at: datetime
    attempt: int = 1
    params: Mapping[str, Any] = field(default_factory=dict)

    def expired(self, now: datetime) -> bool:
        return now >= self.expires_at


@dataclass(frozen=True, slots=True)
class Ack:
    command_id: str
    gateway: str
    meter: str
    stage: AckStage
    at: datetime
    outcome: Outcome | None = None
    relay: RelayState | None = None
    reason: str | None = None
    clock: ClockCheck | None = None  # time_sync: the meter's clock read back afterwards


@dataclass(frozen=True, slots=True)
class Status:
    gateway: str
    site: str
    state: Literal["online", "offline"]
    at: datetime
    health: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Event:
    kind: str  # e.g. comm_error, meter_recovered, buffer_dropped, meter_alarm
    at: datetime
    meter: str | None = None
    detail: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- encoding


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def encode_readings(batch: ReadingsBatch) -> bytes:
    """Schema 2 (columns); schema 1 only for a batch that gives one quantity in two units,
    which a column (one unit each) cannot carry."""
    units: dict[str, str] = {}
    for r in batch.readings:
        for name, v in r.values.items():
            if units.setdefault(name, v.unit) != v.unit:
                return encode_reading_rows(batch)
    rs = batch.readings
    doc: dict[str, Any] = {
        "schema": READINGS_SCHEMA,
        "gateway": batch.gateway,
        "site": batch.site,
        "seq": batch.seq,
        "sent_at": utc_iso(batch.sent_at),
        "meter": [r.meter for r in rs],
        "taken_at": [utc_iso(r.taken_at) for r in rs],
        "columns": [
            {"quantity": name, "unit": unit,
             "values": [x.value if (x := r.values.get(name)) is not None else None
                        for r in rs]}
            for name, unit in units.items()
        ],
    }
    if any(r.relay is not None for r in rs):
        doc["relay"] = [r.relay for r in rs]
    if any(r.clock is not None for r in rs):
        doc["clock"] = [None if r.clock is None else encode_clock(r.clock) for r in rs]
    return _dumps(doc)


def encode_reading_rows(batch: ReadingsBatch) -> bytes:
    """Schema 1: an object per reading, as gateways sent before schema 2 (still read)."""
    return _dumps(
        {
            "schema": SCHEMA_VERSION,
            "gateway": batch.gateway,
            "site": batch.site,
            "seq": batch.seq,
            "sent_at": utc_iso(batch.sent_at),
            "readings": [
                {
                    "meter": r.meter,
                    "taken_at": utc_iso(r.taken_at),
                    "values": {k: {"value": v.value, "unit": v.unit} for k, v in r.values.items()},
                    **({"relay": r.relay} if r.relay is not None else {}),
                    **({"clock": encode_clock(r.clock)} if r.clock is not None else {}),
                }
                for r in batch.readings
            ],
        }
    )


def encode_command(
    cmd: Command, gateway: str, signer: CommandSigner, *, nonce: str | None = None
) -> bytes:
    """Sign and encode one command for ``gateway``.

    The signature covers command id, gateway, meter, action, params, issue and expiry times
    and a fresh nonce; ``attempt`` rides outside it (a retry is signed anew with a new nonce).
    """
    envelope = signer.sign(
        command_id=cmd.command_id, gateway=gateway, meter=cmd.meter, action=cmd.action,
        issued_at=cmd.issued_at, expires_at=cmd.expires_at, params=dict(cmd.params),
        nonce=nonce,
    )
    return _dumps({"schema": SCHEMA_VERSION, "attempt": cmd.attempt, **envelope.to_json()})


def encode_ack(ack: Ack) -> bytes:
    return _dumps(
        {
            "schema": SCHEMA_VERSION,
            "command_id": ack.command_id,
            "gateway": ack.gateway,
            "meter": ack.meter,
            "stage": ack.stage,
            "at": utc_iso(ack.at),
            "outcome": ack.outcome,
            "relay": ack.relay,
            "reason": ack.reason,
            **({"clock": encode_clock(ack.clock)} if ack.clock is not None else {}),
        }
    )


def encode_clock(check: ClockCheck) -> dict[str, Any]:
    """``{"meter_clock", "read_at", "drift_s"}``: the drift is written out for people reading
    the topic; decoders check it against the two times."""
    return {"meter_clock": utc_iso(check.meter_clock), "read_at": utc_iso(check.read_at),
            "drift_s": check.drift_s}


def encode_status(status: Status) -> bytes:
    return _dumps(
        {
            "schema": SCHEMA_VERSION,
            "gateway": status.gateway,
            "site": status.site,
            "state": status.state,
            "at": utc_iso(status.at),
            "health": dict(status.health),
        }
    )


def encode_events(gateway: str, events: list[Event]) -> bytes:
    return _dumps(
        {
            "schema": SCHEMA_VERSION,
            "gateway": gateway,
            "events": [
                {
                    "kind": e.kind,
                    "at": utc_iso(e.at),
                    "meter": e.meter,
                    "detail": e.detail,
                    "data": dict(e.data),
                }
                for e in events
            ],
        }
    )


# ---------------------------------------------------------------------------- decoding


def _load(payload: bytes | str, what: str, limits: Limits = DEFAULT_LIMITS,
          check_text: bool = True,
          schemas: tuple[int, ...] = (SCHEMA_VERSION,)) -> dict[str, Any]:
    """Parse one payload within ``limits``: every failure is a WireError, including those
    json raises as RecursionError (deep nesting) or ValueError (an integer of more than
    4,300 digits). ``check_text=False`` leaves lone surrogates and NUL to a decoder that
    checks every string it keeps itself (readings: one bad reading must not cost the
    batch)."""
    if len(payload) > limits.max_bytes:
        raise WireError(f"{what}: {len(payload)} bytes is over the limit of {limits.max_bytes}",
                        "too_large")
    try:
        raw = payload.encode() if isinstance(payload, str) else bytes(payload)
    except UnicodeEncodeError:
        raise WireError(f"{what}: text with a lone surrogate", "bad_text") from None
    _check_depth(raw, what, limits.max_depth)
    try:
        obj = _parse_json(raw, what, limits)
    except WireError:
        raise
    except RecursionError:
        raise WireError(f"{what}: nested too deep to parse", "too_deep") from None
    except UnicodeDecodeError as exc:
        raise WireError(f"{what}: not valid UTF-8 ({exc.reason})", "bad_json") from None
    except ValueError as exc:  # JSONDecodeError, or an integer too long to convert
        code = "bad_number" if "digits" in str(exc) else "bad_json"
        raise WireError(f"{what}: not valid JSON ({_show(str(exc), 120)})", code) from None
    if check_text and _SUSPECT.search(raw):
        _check_text(obj, what)
    if not isinstance(obj, dict):
        raise WireError(f"{what}: expected a JSON object, got {type(obj).__name__}", "bad_json")
    schema = obj.get("schema")
    if type(schema) is not int or schema not in schemas:
        raise WireError(f"{what}: schema {_show(schema)} is not supported "
                        f"(expected {' or '.join(map(str, schemas))})", "bad_schema")
    return obj


def _parse_json(raw: bytes, what: str, limits: Limits) -> Any:
    """json.loads; with ``limits.max_number_chars``, long, non-finite and non-JSON (NaN)
    numbers are refused as they are parsed."""
    longest = limits.max_number_chars
    if longest is None:
        return json.loads(raw)

    def number(token: str) -> int | float:
        if len(token) > longest:
            raise WireError(f"{what}: number {token[:24]}... is too long", "bad_number")
        value = float(token) if any(c in token for c in ".eE") else int(token)
        if not math.isfinite(value):
            raise WireError(f"{what}: number {token} is out of range", "bad_number")
        return value

    def constant(token: str) -> None:
        raise WireError(f"{what}: {token} is not a number JSON allows", "bad_number")

    return json.loads(raw, parse_int=number, parse_float=number, parse_constant=constant)


def _str(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise WireError(f"{where}.{key}: expected a non-empty string, got {_show(value)}")
    return value


def _id(obj: Mapping[str, Any], key: str, where: str) -> str:
    """A meter, gateway or site id: at most 64 characters of :data:`ID_PATTERN`."""
    value = obj.get(key)
    if type(value) is not str or not _is_id(value):
        if not isinstance(value, str) or not value:
            _str(obj, key, where)
        raise WireError(f"{where}.{key}: {_show(value)} is not an id ({ID_PATTERN})", "bad_id")
    return value


def _int(obj: Mapping[str, Any], key: str, where: str, minimum: int = 0) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_INT:
        raise WireError(f"{where}.{key}: expected an integer >= {minimum}, got {_show(value)}",
                        "bad_number")
    return value


def _choice(obj: Mapping[str, Any], key: str, where: str, choices: tuple[str, ...]) -> Any:
    value = obj.get(key)
    if value not in choices:
        raise WireError(f"{where}.{key}: {value!r} is not one of {', '.join(choices)}")
    return value


# One reading as plain data: (meter, taken_at, [(quantity, value, unit), ...], relay). The
# collector's hot path takes this shape; building a Reading and a Value per quantity cost
# more than checking them.
ReadingFields = tuple[str, datetime, list[tuple[str, float, str]], RelayState | None]


def decode_reading(obj: Any, where: str = "reading") -> Reading:
    """Check one reading; the collector calls this per reading so one bad reading does not
    cost the good ones in the same batch."""
    meter, taken_at, values, relay = decode_reading_fields(obj, where)
    clock = obj.get("clock")
    return Reading(meter, taken_at, {name: Value(v, unit) for name, v, unit in values}, relay,
                   None if clock is None else decode_clock(clock, f"{where}.clock"))


# Quantity names and units already found good: a batch repeats a handful of them thousands of
# times. Bounded, so a hostile sender cannot grow it without end.
_GOOD_WORDS: set[str] = set()
_GOOD_WORDS_MAX = 1024


def _remember(word: str) -> None:
    if len(_GOOD_WORDS) < _GOOD_WORDS_MAX:
        _GOOD_WORDS.add(word)


def decode_reading_fields(obj: Any, where: str = "reading",
                          times: dict[str, datetime] | None = None) -> ReadingFields:
    """The checks of :func:`decode_reading`, returning plain fields (see ReadingFields).

    This is the ingest hot path: the checks are plain type tests and the error text is built
    only for a reading that fails. ``times`` caches parsed ``taken_at`` strings across the
    readings of one batch (they usually share one stamp).
    """
    if not isinstance(obj, dict):
        raise WireError(f"{where}: expected an object, got {_show(obj)}")
    meter = obj.get("meter")
    if type(meter) is not str or not _is_id(meter):
        meter = _id(obj, "meter", where)  # raises
    stamp: Any = obj.get("taken_at")
    taken_at = times.get(stamp) if times is not None and type(stamp) is str else None
    if taken_at is None:
        taken_at = parse_stamp(stamp, f"{where}.taken_at")
        if times is not None:
            times[stamp] = taken_at  # a str: parse_time refuses anything else
    raw_values = obj.get("values")
    if not isinstance(raw_values, dict) or not raw_values:
        raise WireError(f"{where}.values: expected a non-empty object of quantities")
    values: list[tuple[str, float, str]] = []
    for name, item in raw_values.items():
        if name not in _GOOD_WORDS:
            if not _is_id(name):
                raise WireError(f"{where}.values: quantity {_show(name)} is not a name "
                                f"({ID_PATTERN})", "bad_id")
            _remember(name)
        if not isinstance(item, dict):
            raise WireError(f"{where}.values.{name}: expected {{'value': number, 'unit': text}},"
                            f" got {_show(item)}")
        number = item.get("value")
        if type(number) is not float or not math.isfinite(number):
            number = _number(number, f"{where}.values.{name}.value")
        unit = item.get("unit")
        if type(unit) is not str or unit not in _GOOD_WORDS:
            if not isinstance(unit, str) or len(unit) > 16 or not _storable(unit):
                raise WireError(f"{where}.values.{name}.unit: expected a unit string, "
                                f"got {_show(unit)}", "bad_text")
            _remember(unit)
        values.append((name, number, unit))
    relay = obj.get("relay")
    if relay is not None and relay not in RELAY_STATES:
        raise WireError(f"{where}.relay: {_show(relay)} is not one of {', '.join(RELAY_STATES)}")
    return meter, taken_at, values, relay


def decode_clock(obj: Any, where: str, now: datetime | None = None) -> ClockCheck:
    """A reading's or ack's ``clock``: ``read_at`` is a device stamp (:func:`parse_stamp`),
    ``meter_clock`` may be far off but within :data:`CLOCK_EARLIEST`..:data:`CLOCK_LATEST`,
    and ``drift_s``, when sent, must agree with them."""
    if not isinstance(obj, dict):
        raise WireError(f"{where}: expected {{'meter_clock', 'read_at', 'drift_s'}}, "
                        f"got {_show(obj)}")
    read_at = parse_stamp(obj.get("read_at"), f"{where}.read_at", now)
    meter_clock = parse_time(obj.get("meter_clock"), f"{where}.meter_clock")
    if not CLOCK_EARLIEST <= meter_clock < CLOCK_LATEST:
        raise WireError(f"{where}.meter_clock: {obj.get('meter_clock')!r} is outside "
                        f"{CLOCK_EARLIEST.year}..{CLOCK_LATEST.year - 1}", "bad_time")
    check = ClockCheck(meter_clock, read_at)
    if "drift_s" in obj:
        drift = _number(obj["drift_s"], f"{where}.drift_s")
        if abs(drift - check.drift_s) > CLOCK_DRIFT_SLACK_S:
            raise WireError(f"{where}.drift_s: {drift!r} is not meter_clock - read_at "
                            f"({check.drift_s!r})", "bad_number")
    return check


def _number(value: Any, where: str) -> float:
    """A JSON number as a finite float, or the reason it is not (the uncommon path)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WireError(f"{where}: expected a number, got {_show(value)}", "bad_number")
    try:
        number = float(value)
    except OverflowError:
        raise WireError(f"{where}: {_show(value)} is not finite", "bad_number") from None
    if not math.isfinite(number):
        raise WireError(f"{where}: {value!r} is not finite", "bad_number")
    return number


MAX_COLUMNS = 64  # quantity columns in one readings message


@dataclass(frozen=True, slots=True)
class QuantityColumn:
    """One quantity of a schema-2 batch: its unit, and a number or null per reading (null:
    not read this time). The values are checked per reading by the consumer."""

    quantity: str
    unit: str
    values: list[Any]


@dataclass(frozen=True, slots=True)
class ReadingColumns:
    """The body of a schema-2 readings message: reading i is ``meter[i]`` taken at
    ``taken_at[i]`` with ``values[i]`` of each column. Only the shape is checked here (every
    list as long as ``meter``, each quantity once, units storable text); the readings
    themselves are checked one by one (:meth:`row`), so a bad one costs only itself."""

    meter: list[Any]
    taken_at: list[Any]
    columns: tuple[QuantityColumn, ...]
    relay: list[Any] | None = None
    clock: list[Any] | None = None

    def __len__(self) -> int:
        return len(self.meter)

    def row(self, i: int) -> dict[str, Any]:
        """Reading ``i`` in the schema-1 shape, which :func:`decode_reading_fields` checks."""
        obj: dict[str, Any] = {
            "meter": self.meter[i], "taken_at": self.taken_at[i],
            "values": {c.quantity: {"value": c.values[i], "unit": c.unit}
                       for c in self.columns if c.values[i] is not None},
        }
        if self.relay is not None and self.relay[i] is not None:
            obj["relay"] = self.relay[i]
        if self.clock is not None and self.clock[i] is not None:
            obj["clock"] = self.clock[i]
        return obj


@dataclass(frozen=True, slots=True)
class BatchEnvelope:
    """A readings message whose envelope checked out; its readings are checked one by one:
    ``raw_readings`` (schema 1) or ``columns`` (schema 2)."""

    gateway: str
    site: str
    seq: int
    sent_at: datetime
    raw_readings: list[Any]
    columns: ReadingColumns | None = None

    def rows(self) -> list[Any]:
        """Every reading in the schema-1 shape, unchecked."""
        if self.columns is None:
            return self.raw_readings
        return [self.columns.row(i) for i in range(len(self.columns))]


def decode_readings_envelope(payload: bytes | str,
                             limits: Limits = DEFAULT_LIMITS) -> BatchEnvelope:
    # ids, units, names: checked by the readings' own decoders
    obj = _load(payload, "readings", limits, check_text=False, schemas=READINGS_SCHEMAS)
    raw: list[Any] = []
    columns = None
    if obj["schema"] == READINGS_SCHEMA:
        columns = _decode_columns(obj, limits)
    else:
        raw = obj.get("readings")  # type: ignore[assignment]
        if not isinstance(raw, list):
            raise WireError("readings.readings: expected a list")
        _check_count(len(raw), "readings.readings", limits)
    return BatchEnvelope(
        gateway=_id(obj, "gateway", "readings"),
        site=_id(obj, "site", "readings"),
        seq=_int(obj, "seq", "readings"),
        sent_at=parse_stamp(obj.get("sent_at"), "readings.sent_at"),
        raw_readings=raw,
        columns=columns,
    )


def _check_count(n: int, where: str, limits: Limits) -> None:
    if n > limits.max_items:
        raise WireError(f"{where}: {n} readings, more than the {limits.max_items} a batch may "
                        "hold", "too_many")


def _decode_columns(obj: dict[str, Any], limits: Limits) -> ReadingColumns:
    """The shape of a schema-2 body; a shape that does not hold loses the whole message
    (which reading a misplaced value belongs to cannot be known)."""
    meter = obj.get("meter")
    if not isinstance(meter, list):
        raise WireError("readings.meter: expected a list of meter ids")
    n = len(meter)
    _check_count(n, "readings.meter", limits)

    def same_length(value: Any, where: str) -> list[Any]:
        if not isinstance(value, list) or len(value) != n:
            raise WireError(f"{where}: expected a list of {n} (one per meter), got "
                            f"{_show(value)}")
        return value

    taken_at = same_length(obj.get("taken_at"), "readings.taken_at")
    raw_columns = obj.get("columns")
    if not isinstance(raw_columns, list):
        raise WireError("readings.columns: expected a list of {quantity, unit, values}")
    if len(raw_columns) > MAX_COLUMNS:
        raise WireError(f"readings.columns: {len(raw_columns)} columns, more than "
                        f"{MAX_COLUMNS}", "too_many")
    columns = []
    seen: set[str] = set()
    for k, col in enumerate(raw_columns):
        where = f"readings.columns[{k}]"
        if not isinstance(col, dict):
            raise WireError(f"{where}: expected {{quantity, unit, values}}, got {_show(col)}")
        name = _id(col, "quantity", where)
        if name in seen:
            raise WireError(f"{where}.quantity: {name} has two columns", "bad_field")
        seen.add(name)
        unit = col.get("unit")
        if not isinstance(unit, str) or len(unit) > 16 or not _storable(unit):
            raise WireError(f"{where}.unit: expected a unit string, got {_show(unit)}",
                            "bad_text")
        columns.append(QuantityColumn(name, unit, same_length(col.get("values"),
                                                              f"{where}.values")))
    relay = obj.get("relay")
    clock = obj.get("clock")
    return ReadingColumns(
        meter, taken_at, tuple(columns),
        None if relay is None else same_length(relay, "readings.relay"),
        None if clock is None else same_length(clock, "readings.clock"),
    )


def batch_identity(payload: bytes | str, limits: Limits = DEFAULT_LIMITS
                   ) -> tuple[str, int] | None:
    """(gateway, seq) of a readings payload whose envelope may be bad otherwise, or None: a
    refused batch is still receipted, so its gateway stops sending it."""
    try:
        obj = _load(payload, "readings", limits, schemas=READINGS_SCHEMAS)
        return _id(obj, "gateway", "readings"), _int(obj, "seq", "readings")
    except WireError:
        return None


def decode_readings(payload: bytes | str) -> ReadingsBatch:
    """Strict decode: any bad reading fails the whole batch (for tests and tools)."""
    env = decode_readings_envelope(payload)
    readings = tuple(
        decode_reading(r, f"readings.readings[{i}]") for i, r in enumerate(env.rows())
    )
    return ReadingsBatch(env.gateway, env.site, env.seq, env.sent_at, readings)


_COMMAND_IDS = ("command_id", "meter", "gateway", "nonce", "key_id")


@dataclass(frozen=True, slots=True)
class SignedCommand:
    """A command whose signature checked out: act on ``command``, remember ``nonce``."""

    command: Command
    gateway: str
    nonce: str
    key_id: str


def decode_command(
    payload: bytes | str,
    keyring: Keyring,
    *,
    gateway: str,
    now: datetime,
    max_future_skew: timedelta = DEFAULT_MAX_FUTURE_SKEW,
) -> SignedCommand:
    """Check a command's form, then its signature, and return what the signature vouches for.

    Raises :class:`WireError` for a payload that is not a command at all (beyond
    :data:`COMMAND_LIMITS`, or an id that is not an id) and
    :class:`~meterhub.security.SignatureRefused` (with a reason code) for one no trusted key
    signed for this gateway, or that is expired or dated too far ahead. Replay and meter
    ownership are the gateway's checks.
    """
    obj = _load(payload, "cmd", COMMAND_LIMITS)
    for key in _COMMAND_IDS:  # refused before a signature check spends effort on them
        value = obj.get(key)
        if isinstance(value, str) and not _is_id(value):
            raise WireError(f"cmd.{key}: {_show(value)} is not an id ({ID_PATTERN})", "bad_id")
    attempt = _int(obj, "attempt", "cmd", minimum=1) if "attempt" in obj else 1
    claims = verify(obj, keyring, gateway=gateway, now=now, max_future_skew=max_future_skew)
    if claims.action not in ACTIONS:
        raise WireError(f"cmd.action: {claims.action!r} is not one of {', '.join(ACTIONS)}")
    command = Command(
        command_id=claims.command_id,
        meter=claims.meter,
        action=claims.action,  # type: ignore[arg-type]
        issued_at=claims.issued_at,
        expires_at=claims.expires_at,
        attempt=attempt,
        params=claims.params,
    )
    return SignedCommand(command, claims.gateway, claims.nonce, str(obj["key_id"]))


def decode_ack(payload: bytes | str) -> Ack:
    obj = _load(payload, "ack")
    stage = _choice(obj, "stage", "ack", ("accepted", "done"))
    outcome = obj.get("outcome")
    if stage == "done" or outcome is not None:
        outcome = _choice(obj, "outcome", "ack", OUTCOMES)
    relay = obj.get("relay")
    if relay is not None:
        relay = _choice(obj, "relay", "ack", RELAY_STATES)
    reason = obj.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise WireError(f"ack.reason: expected text, got {reason!r}")
    clock = obj.get("clock")
    return Ack(
        command_id=_str(obj, "command_id", "ack"),
        gateway=_str(obj, "gateway", "ack"),
        meter=_str(obj, "meter", "ack"),
        stage=stage,
        at=parse_time(obj.get("at"), "ack.at"),
        outcome=outcome,
        relay=relay,
        reason=reason,
        clock=None if clock is None else decode_clock(clock, "ack.clock"),
    )


def decode_status(payload: bytes | str, limits: Limits = DEFAULT_LIMITS) -> Status:
    """A (retained) status: the same guard as readings, or a retained poison message would
    stop every consumer that starts later."""
    obj = _load(payload, "status", limits)
    health = obj.get("health", {})
    if not isinstance(health, dict):
        raise WireError("status.health: expected an object")
    check_free(health, "status.health", limits)
    return Status(
        gateway=_id(obj, "gateway", "status"),
        site=_id(obj, "site", "status"),
        state=_choice(obj, "state", "status", ("online", "offline")),
        at=parse_stamp(obj.get("at"), "status.at"),
        health=health,
    )


def decode_events(payload: bytes | str,
                  limits: Limits = DEFAULT_LIMITS) -> tuple[str, list[Event]]:
    obj = _load(payload, "events", limits)
    gateway = _id(obj, "gateway", "events")
    raw = obj.get("events")
    if not isinstance(raw, list):
        raise WireError("events.events: expected a list")
    if len(raw) > limits.max_items:
        raise WireError(f"events.events: more than {limits.max_items} events", "too_many")
    events = []
    for i, item in enumerate(raw):
        where = f"events.events[{i}]"
        if not isinstance(item, dict):
            raise WireError(f"{where}: expected an object")
        data = item.get("data", {})
        data = data if isinstance(data, dict) else {}
        check_free(data, f"{where}.data", limits)
        meter = item.get("meter")
        events.append(
            Event(
                kind=_id(item, "kind", where),
                at=parse_stamp(item.get("at"), f"{where}.at"),
                meter=_id(item, "meter", where) if isinstance(meter, str) else None,
                detail=_detail(item.get("detail", ""), limits),
                data=data,
            )
        )
    return gateway, events


def _detail(value: Any, limits: Limits) -> str:
    """An event's free text, cut to the text limit (a long message is still worth keeping)."""
    text = value if isinstance(value, str) else _show(value, limits.max_text)
    return text[: limits.max_text]


def offline_status(gateway: str, site: str) -> bytes:
    """The last-will payload: the broker publishes it (retained) if the gateway vanishes."""
    return encode_status(Status(gateway, site, "offline", datetime.now(UTC)))


# ---------------------------------------------------------------------------- receipts
#
# End-to-end delivery: the collector publishes a receipt on the gateway's own topic
# (``meterhub/v1/<site>/<gateway>/receipt``) once it has committed readings batches; the
# gateway keeps each sealed batch until a receipt names its seq, and sends it again otherwise.
# ``{"schema":1,"gateway":gw,"site":site,"ranges":[[first,last],...],"at":iso}``; a range
# names every seq from ``first`` to ``last`` inclusive.


@dataclass(frozen=True, slots=True)
class Receipt:
    """The collector's word that it is done with these readings batches of one gateway."""

    gateway: str
    site: str
    ranges: tuple[tuple[int, int], ...]  # (first_seq, last_seq), inclusive
    at: datetime


def encode_receipt(gateway: str, site: str, ranges: Sequence[tuple[int, int]],
                   at: datetime) -> bytes:
    """Published by the collector on ``meterhub/v1/<site>/<gateway>/receipt`` (QoS 1) after
    the batches were committed: stored, or refused for good (dead-lettered); either way the
    gateway may drop them from its buffer and must not send them again."""
    return _dumps({"schema": SCHEMA_VERSION, "gateway": gateway, "site": site,
                   "ranges": [[first, last] for first, last in ranges], "at": utc_iso(at)})


def decode_receipt(payload: bytes | str, limits: Limits = DEFAULT_LIMITS) -> Receipt:
    obj = _load(payload, "receipt", limits)
    raw = obj.get("ranges")
    if not isinstance(raw, list) or not raw or len(raw) > limits.max_items:
        raise WireError(f"receipt.ranges: expected 1..{limits.max_items} [first, last] pairs")
    ranges = []
    for i, pair in enumerate(raw):
        if (not isinstance(pair, list) or len(pair) != 2
                or any(isinstance(n, bool) or not isinstance(n, int) for n in pair)
                or not 0 <= pair[0] <= pair[1] <= MAX_INT):
            raise WireError(f"receipt.ranges[{i}]: {_show(pair)} is not [first, last] with "
                            "0 <= first <= last", "bad_number")
        ranges.append((pair[0], pair[1]))
    return Receipt(
        gateway=_id(obj, "gateway", "receipt"),
        site=_id(obj, "site", "receipt"),
        ranges=tuple(ranges),
        at=parse_time(obj.get("at"), "receipt.at"),
    )


def seq_ranges(seqs: Sequence[int]) -> list[tuple[int, int]]:
    """Sequence numbers coalesced into inclusive runs: [1, 2, 3, 7] -> [(1, 3), (7, 7)]."""
    out: list[tuple[int, int]] = []
    for n in sorted(set(seqs)):
        if out and n == out[-1][1] + 1:
            out[-1] = (out[-1][0], n)
        else:
            out.append((n, n))
    return out
