"""The MQTT wire contract: topics and payloads, imported by both ends.

Topics are versioned and scoped ``meterhub/v1/{site}/{gateway}/{kind}``. Payloads are JSON
a person can read with ``mosquitto_sub``; every payload carries ``schema`` so a consumer can
refuse what it does not understand instead of guessing. Decoders raise :class:`WireError`
with a reason a person can act on; they never return half-checked data.

Delivery is QoS 1 (at least once): consumers must be idempotent. Readings batches carry a
per-gateway ``seq`` that only grows (it survives gateway restarts) so the collector can tell
gaps from duplicates.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
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
TOPIC_ROOT = "meterhub/v1"

Kind = Literal["status", "readings", "events", "cmd", "cmd/ack"]
KINDS: tuple[Kind, ...] = ("status", "readings", "events", "cmd", "cmd/ack")

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
    """A payload or topic that breaks the contract; the message says which field and why."""


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
        raise WireError(f"topic {name!r} is not under {TOPIC_ROOT}/")
    parts = name[len(prefix) :].split("/", 2)
    if len(parts) != 3 or parts[2] not in KINDS:
        raise WireError(f"topic {name!r} is not {TOPIC_ROOT}/<site>/<gateway>/<kind>")
    return parts[0], parts[1], parts[2]  # type: ignore[return-value]


# ---------------------------------------------------------------------------- time helpers


def utc_iso(ts: datetime) -> str:
    if ts.tzinfo is None:
        raise WireError("timestamps on the wire must be timezone-aware")
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: Any, where: str) -> datetime:
    if not isinstance(value, str):
        raise WireError(f"{where}: expected an ISO-8601 timestamp string, got {value!r}")
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise WireError(f"{where}: {value!r} is not an ISO-8601 timestamp") from None
    if ts.tzinfo is None:
        raise WireError(f"{where}: {value!r} has no timezone; send UTC with 'Z'")
    return ts.astimezone(UTC)


# ---------------------------------------------------------------------------- payloads


@dataclass(frozen=True, slots=True)
class Value:
    value: float
    unit: str


@dataclass(frozen=True, slots=True)
class Reading:
    """One meter read in one poll: every quantity the meter answered, with units."""

    meter: str
    taken_at: datetime
    values: Mapping[str, Value]
    relay: RelayState | None = None


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
        }
    )


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


def _load(payload: bytes | str, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"{what}: not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise WireError(f"{what}: expected a JSON object, got {type(obj).__name__}")
    schema = obj.get("schema")
    if schema != SCHEMA_VERSION:
        raise WireError(f"{what}: schema {schema!r} is not supported (expected {SCHEMA_VERSION})")
    return obj


def _str(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise WireError(f"{where}.{key}: expected a non-empty string, got {value!r}")
    return value


def _int(obj: Mapping[str, Any], key: str, where: str, minimum: int = 0) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise WireError(f"{where}.{key}: expected an integer >= {minimum}, got {value!r}")
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
    return Reading(meter, taken_at, {name: Value(v, unit) for name, v, unit in values}, relay)


def decode_reading_fields(obj: Any, where: str = "reading",
                          times: dict[str, datetime] | None = None) -> ReadingFields:
    """The checks of :func:`decode_reading`, returning plain fields (see ReadingFields).

    This is the ingest hot path: the checks are plain type tests and the error text is built
    only for a reading that fails. ``times`` caches parsed ``taken_at`` strings across the
    readings of one batch (they usually share one stamp).
    """
    if not isinstance(obj, dict):
        raise WireError(f"{where}: expected an object, got {obj!r}")
    meter = obj.get("meter")
    if type(meter) is not str or not meter:
        meter = _str(obj, "meter", where)  # a str subclass passes; anything else raises
    stamp: Any = obj.get("taken_at")
    taken_at = times.get(stamp) if times is not None and type(stamp) is str else None
    if taken_at is None:
        taken_at = parse_time(stamp, f"{where}.taken_at")
        if times is not None:
            times[stamp] = taken_at  # a str: parse_time refuses anything else
    raw_values = obj.get("values")
    if not isinstance(raw_values, dict) or not raw_values:
        raise WireError(f"{where}.values: expected a non-empty object of quantities")
    values: list[tuple[str, float, str]] = []
    for name, item in raw_values.items():
        if not isinstance(item, dict):
            raise WireError(f"{where}.values.{name}: expected {{'value': number, 'unit': text}},"
                            f" got {item!r}")
        number = item.get("value")
        if type(number) is not float or not math.isfinite(number):
            number = _number(number, f"{where}.values.{name}.value")
        unit = item.get("unit")
        if not isinstance(unit, str):
            raise WireError(f"{where}.values.{name}.unit: expected a unit string, got {unit!r}")
        values.append((name, number, unit))
    relay = obj.get("relay")
    if relay is not None and relay not in RELAY_STATES:
        raise WireError(f"{where}.relay: {relay!r} is not one of {', '.join(RELAY_STATES)}")
    return meter, taken_at, values, relay


def _number(value: Any, where: str) -> float:
    """A JSON number as a finite float, or the reason it is not (the uncommon path)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WireError(f"{where}: expected a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        raise WireError(f"{where}: {value!r} is not finite") from None
    if not math.isfinite(number):
        raise WireError(f"{where}: {value!r} is not finite")
    return number


@dataclass(frozen=True, slots=True)
class BatchEnvelope:
    """A readings message whose envelope checked out; its readings are checked one by one."""

    gateway: str
    site: str
    seq: int
    sent_at: datetime
    raw_readings: list[Any]


def decode_readings_envelope(payload: bytes | str) -> BatchEnvelope:
    obj = _load(payload, "readings")
    raw = obj.get("readings")
    if not isinstance(raw, list):
        raise WireError("readings.readings: expected a list")
    return BatchEnvelope(
        gateway=_str(obj, "gateway", "readings"),
        site=_str(obj, "site", "readings"),
        seq=_int(obj, "seq", "readings"),
        sent_at=parse_time(obj.get("sent_at"), "readings.sent_at"),
        raw_readings=raw,
    )


def decode_readings(payload: bytes | str) -> ReadingsBatch:
    """Strict decode: any bad reading fails the whole batch (for tests and tools)."""
    env = decode_readings_envelope(payload)
    readings = tuple(
        decode_reading(r, f"readings.readings[{i}]") for i, r in enumerate(env.raw_readings)
    )
    return ReadingsBatch(env.gateway, env.site, env.seq, env.sent_at, readings)


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

    Raises :class:`WireError` for a payload that is not a command at all and
    :class:`~meterhub.security.SignatureRefused` (with a reason code) for one no trusted key
    signed for this gateway, or that is expired or dated too far ahead. Replay and meter
    ownership are the gateway's checks.
    """
    obj = _load(payload, "cmd")
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
    return Ack(
        command_id=_str(obj, "command_id", "ack"),
        gateway=_str(obj, "gateway", "ack"),
        meter=_str(obj, "meter", "ack"),
        stage=stage,
        at=parse_time(obj.get("at"), "ack.at"),
        outcome=outcome,
        relay=relay,
        reason=reason,
    )


def decode_status(payload: bytes | str) -> Status:
    obj = _load(payload, "status")
    health = obj.get("health", {})
    if not isinstance(health, dict):
        raise WireError("status.health: expected an object")
    return Status(
        gateway=_str(obj, "gateway", "status"),
        site=_str(obj, "site", "status"),
        state=_choice(obj, "state", "status", ("online", "offline")),
        at=parse_time(obj.get("at"), "status.at"),
        health=health,
    )


def decode_events(payload: bytes | str) -> tuple[str, list[Event]]:
    obj = _load(payload, "events")
    gateway = _str(obj, "gateway", "events")
    raw = obj.get("events")
    if not isinstance(raw, list):
        raise WireError("events.events: expected a list")
    events = []
    for i, item in enumerate(raw):
        where = f"events.events[{i}]"
        if not isinstance(item, dict):
            raise WireError(f"{where}: expected an object")
        data = item.get("data", {})
        events.append(
            Event(
                kind=_str(item, "kind", where),
                at=parse_time(item.get("at"), f"{where}.at"),
                meter=item.get("meter") if isinstance(item.get("meter"), str) else None,
                detail=str(item.get("detail", "")),
                data=data if isinstance(data, dict) else {},
            )
        )
    return gateway, events


def offline_status(gateway: str, site: str) -> bytes:
    """The last-will payload: the broker publishes it (retained) if the gateway vanishes."""
    return encode_status(Status(gateway, site, "offline", datetime.now(UTC)))
