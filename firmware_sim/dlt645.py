"""DL/T645 meters on a :class:`firmware_sim.bus.SimBus`: the meter side of the real protocol.

Reuses the codec the gateway uses (``meterhub.protocols.dlt645``) for framing; what a meter
does with a request follows DL/T645-2007 (and -1997 for meters whose ``protocol`` says so):
a meter answers only frames to its own address (or the AA wildcard / abbreviated address),
broadcast frames (999999999999) are obeyed silently, unknown identifiers get an abnormal reply
"no requested data", and long answers are split into follow-up frames.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, tzinfo

from firmware_sim.meter import SimMeter
from meterhub.protocols.dlt645 import messages as msg
from meterhub.protocols.dlt645.errors import Dlt645Error, UnknownIdentifierError
from meterhub.protocols.dlt645.frame import BROADCAST, WILDCARD, Frame, FrameParser
from meterhub.protocols.dlt645.identifiers import (
    DI_STATUS_WORD_3,
    STATUS3_KEEP_POWER,
    STATUS3_PRE_TRIP_ALARM,
    DataId,
    Scalar,
    Version,
    decode_value,
    encode_value,
    lookup,
)
from meterhub.quantities import QUANTITIES

log = logging.getLogger(__name__)

# Control codes a meter of each version recognises; anything else it ignores (no reply).
_CODES: dict[Version, frozenset[int]] = {
    "2007": frozenset({0x08, *range(0x11, 0x1D)}),
    "1997": frozenset({0x01, 0x02, 0x04, 0x08, 0x0A, 0x0C, 0x0F, 0x10}),
}
# Parameters a fresh meter holds (DL/T645 alarm amounts 1/2 and overdraft limit, yuan).
_DEFAULT_PARAMETERS = {0x04001001: 50.0, 0x04001002: 30.0, 0x04001003: 0.0}


class _NoData(Exception):
    """The meter has no such value: answer "no requested data"."""


def meter_version(meter: SimMeter) -> Version | None:
    match meter.protocol:
        case "dlt645-2007" | "dlt645":
            return "2007"
        case "dlt645-1997":
            return "1997"
    return None


class Dlt645BusProtocol:
    """The :class:`firmware_sim.bus.BusProtocol` for DL/T645 meters (2007 and 1997 mixed).

    ``max_reply_data`` is the largest L a meter sends before splitting into follow-up frames
    (the standard allows 200; tests lower it to exercise follow-ups). ``tz`` is the zone of the
    meters' wall clocks (what time sync and relay validity times are written in).
    ``supports_blocks=False`` makes the meters answer block identifiers (0001FF00 ...) with
    "no requested data", as some meters do.
    """

    def __init__(
        self,
        *,
        password: str = "123456",
        password_level: int = 2,
        max_reply_data: int = 200,
        reply_preamble: int = 2,
        options: msg.Options = msg.DEFAULT_OPTIONS,
        tz: tzinfo = UTC,
        supports_blocks: bool = True,
    ) -> None:
        self.password = password
        self.password_level = password_level
        self.max_reply_data = max_reply_data
        self.reply_preamble = reply_preamble
        self.options = options
        self.tz = tz
        self.supports_blocks = supports_blocks
        self._parser = FrameParser()
        self._pending: dict[tuple[str, int], list[bytes]] = {}
        self._parameters: dict[tuple[str, int], float] = {}
        self.alarm: set[str] = set()
        self.keep_power: set[str] = set()

    # ------------------------------------------------------------------ BusProtocol

    def feed(self, data: bytes) -> list[object]:
        return [frame for frame in self._parser.feed(data) if not frame.is_reply]

    def respond(
        self, request: object, meters: Sequence[SimMeter]
    ) -> tuple[SimMeter | None, bytes | None]:
        assert isinstance(request, Frame)
        frame = request
        if frame.address == BROADCAST:
            for meter in meters:
                version = meter_version(meter)
                if version and frame.control in _CODES[version]:
                    self._answer(meter, version, frame)  # obeyed, never answered
            return None, None
        addressed = [
            (meter, version)
            for meter in meters
            if (version := meter_version(meter))
            and frame.control in _CODES[version]
            and msg.address_matches(frame.address, meter.address)
        ]
        if not addressed:
            return None, None
        replies = [(m, self._answer(m, v, frame)) for m, v in addressed]
        meter, reply = replies[0]
        if reply is None:
            return meter, None
        wire = reply.encode(self.reply_preamble)
        if sum(r is not None for _, r in replies) > 1:  # several drivers at once: a collision
            wire = self.corrupt(wire)
        return meter, wire

    def corrupt(self, reply: bytes) -> bytes:
        if len(reply) < 2:
            return reply
        return reply[:-2] + bytes([reply[-2] ^ 0x5A, reply[-1]])

    # ------------------------------------------------------------------ one meter

    def _answer(self, meter: SimMeter, version: Version, frame: Frame) -> Frame | None:
        try:
            request = msg.parse_request(frame, version, self.options)
        except Dlt645Error as exc:
            log.debug("meter %s: bad request %s", meter.address, exc)
            return msg.error_reply(meter.address, frame.control, msg.ERR_OTHER)
        try:
            return self._handle(meter, version, frame, request)
        except _NoData:
            return msg.error_reply(meter.address, frame.control, msg.ERR_NO_DATA)
        except ValueError as exc:  # a value the format cannot hold (Dlt645Error included)
            log.warning("meter %s: cannot answer %s: %s", meter.address, request, exc)
            return msg.error_reply(meter.address, frame.control, msg.ERR_OTHER)

    def _handle(
        self, meter: SimMeter, version: Version, frame: Frame, request: msg.Request
    ) -> Frame | None:
        address, control = meter.address, frame.control
        match request:
            case msg.ReadRequest(di=di):
                payload = self._read(meter, version, di)
                return self._first_part(meter, version, di, payload)
            case msg.FollowUpRequest(di=di, seq=seq):
                parts = self._pending.get((address, di))
                if not parts:
                    raise _NoData
                part = parts.pop(0)
                return msg.read_reply(address, di, part, version=version, more=bool(parts),
                                      follow_up=True, seq=seq or 0)
            case msg.ReadAddressRequest():
                if frame.address != WILDCARD:
                    return None
                return msg.normal_reply(address, control, bytes.fromhex(address)[::-1])
            case msg.WriteRequest():
                if not self._authorised(request.level, request.password):
                    return msg.error_reply(address, control, msg.ERR_PASSWORD)
                self._write(meter, version, request.di, request.value)
                return msg.normal_reply(address, control)
            case msg.TimeSyncRequest(when=when):
                meter.set_clock(when.replace(tzinfo=self.tz))
                return None
            case msg.FreezeRequest():
                return None if frame.address == BROADCAST else msg.normal_reply(address, control)
            case msg.ChangeBaudRequest():
                # the simulated line runs at one speed; say so as the standard allows
                return msg.error_reply(address, control, msg.ERR_BAUD)
            case msg.RelayRequest():
                return self._relay(meter, control, request)
        return msg.error_reply(address, control, msg.ERR_OTHER)

    def _first_part(self, meter: SimMeter, version: Version, di: int, payload: bytes) -> Frame:
        width = 4 if version == "2007" else 2
        first = self.max_reply_data - width
        later = first - (1 if version == "2007" else 0)  # 2007 follow-ups carry SEQ
        if len(payload) <= first:
            self._pending.pop((meter.address, di), None)
            return msg.read_reply(meter.address, di, payload, version=version)
        rest = payload[first:]
        self._pending[(meter.address, di)] = [
            rest[i : i + later] for i in range(0, len(rest), later)
        ]
        return msg.read_reply(meter.address, di, payload[:first], version=version, more=True)

    def _authorised(self, level: int, password: str) -> bool:
        return level == self.password_level and password == self.password

    def _wall_clock(self, meter: SimMeter) -> datetime:
        return meter.clock().astimezone(self.tz).replace(tzinfo=None)

    # ------------------------------------------------------------------ values

    def _read(self, meter: SimMeter, version: Version, di: int) -> bytes:
        try:
            entry = lookup(di, version)
        except UnknownIdentifierError:
            raise _NoData from None
        if entry.block:
            if not self.supports_blocks:
                raise _NoData
            values = tuple(self._scalar(meter, entry, q) for q in entry.quantities)
            return encode_value(entry, values)
        return encode_value(entry, self._scalar(meter, entry, entry.quantity))

    def _scalar(self, meter: SimMeter, entry: DataId, quantity: str | None) -> Scalar:
        di = entry.di
        if quantity == "balance_remaining":  # below zero the meter shows overdraft instead
            return round(max(0.0, meter.value(quantity)), 2)
        if quantity in QUANTITIES:
            return meter.value(quantity)
        if entry.kind == "date":
            return self._wall_clock(meter).date()
        if entry.kind == "time":
            return self._wall_clock(meter).time().replace(microsecond=0)
        if entry.kind == "address":
            return meter.address
        if di == DI_STATUS_WORD_3:
            word = meter.status_word3()
            if meter.address in self.alarm:
                word |= STATUS3_PRE_TRIP_ALARM
            if meter.address in self.keep_power:
                word |= STATUS3_KEEP_POWER
            return word
        if di in _DEFAULT_PARAMETERS:
            return self._parameters.get((meter.address, di), _DEFAULT_PARAMETERS[di])
        if di == 0x00900201:  # overdraft: how far below zero a prepaid balance has gone
            return round(max(0.0, -meter.value("balance_remaining")), 2)
        if di & 0xFFFF00FF == 0x02040000:  # reactive power of one phase
            return round(meter.value("power_reactive_total") / meter.phases, 4) \
                if (di >> 8 & 0xFF) <= meter.phases else 0.0
        if di & 0xFFFF00FF == 0x00020000 and di & 0xFF00:  # export by tariff: none exported
            return 0.0
        raise _NoData

    def _write(self, meter: SimMeter, version: Version, di: int, value: bytes) -> None:
        try:
            entry = lookup(di, version)
        except UnknownIdentifierError:
            raise _NoData from None
        if not entry.writable:
            raise _NoData
        try:
            decoded = decode_value(entry, value)
        except Dlt645Error:
            raise _NoData from None
        now = self._wall_clock(meter)
        if isinstance(decoded, date) and not isinstance(decoded, datetime):
            meter.set_clock(datetime.combine(decoded, now.time(), self.tz))
        elif isinstance(decoded, time):
            meter.set_clock(datetime.combine(now.date(), decoded, self.tz))
        elif isinstance(decoded, int | float):
            self._parameters[(meter.address, di)] = float(decoded)
        else:
            raise _NoData

    # ------------------------------------------------------------------ relay

    def _relay(self, meter: SimMeter, control: int, request: msg.RelayRequest) -> Frame:
        address = meter.address
        if not self._authorised(request.level, request.password):
            return msg.error_reply(address, control, msg.ERR_PASSWORD)
        if request.valid_until < self._wall_clock(meter):
            return msg.error_reply(address, control, msg.ERR_OTHER)  # expired command
        match request.command:
            case msg.RelayCommand.TRIP:
                if address in self.keep_power:
                    return msg.error_reply(address, control, msg.ERR_OTHER)
                meter.open_relay()
            case msg.RelayCommand.CLOSE_PERMITTED:
                meter.close_relay(permitted_only=True)
            case msg.RelayCommand.CLOSE_DIRECTLY:
                meter.close_relay()
            case msg.RelayCommand.ALARM:
                self.alarm.add(address)
            case msg.RelayCommand.ALARM_RELEASE:
                self.alarm.discard(address)
            case msg.RelayCommand.KEEP_POWER:
                self.keep_power.add(address)
                meter.close_relay()
            case msg.RelayCommand.KEEP_POWER_RELEASE:
                self.keep_power.discard(address)
        return msg.normal_reply(address, control)
