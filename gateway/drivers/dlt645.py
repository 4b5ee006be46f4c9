"""DL/T645-2007 / -1997 driver: the codec (meterhub.protocols.dlt645) joined to a transport.

Every exchange is retried on silence or a garbled reply (``retries`` more times); a meter's
abnormal reply is an answer, not a failure of the line, so it is raised at once as
:class:`MeterRejected` with the error byte in words. Which bytes answer a request, and how many
must still arrive, is the codec's business (:class:`~meterhub.protocols.dlt645.messages.
ReplyFramer`); the driver only joins it to the transport.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, tzinfo
from datetime import time as dt_time
from typing import TypeVar

from gateway.drivers.base import (
    BadFrame,
    Checkpoint,
    DriverCapabilities,
    DriverError,
    MeterRejected,
    MeterStatus,
    NoAnswer,
    PortUnavailable,
    StatusFlag,
    no_checkpoint,
)
from gateway.transport import Transport, TransportError, TransportTimeout
from meterhub.protocols.dlt645 import messages as msg
from meterhub.protocols.dlt645.errors import (
    AbnormalReplyError,
    ChecksumError,
    Dlt645Error,
    UnknownIdentifierError,
)
from meterhub.protocols.dlt645.frame import WILDCARD, Frame
from meterhub.protocols.dlt645.identifiers import (
    DI_ADDRESS,
    DI_DATE,
    DI_STATUS_WORD_3,
    DI_TIME,
    STATUS3_PRE_TRIP_ALARM,
    STATUS3_RELAY_OPEN,
    DataId,
    DecodedValue,
    blocks,
    decode_value,
    encode_value,
    for_quantity,
    lookup,
)
from meterhub.quantities import unit_of
from meterhub.security import Secret
from meterhub.wire import ClockCheck, RelayState, Value

R = TypeVar("R")
_DAY_START_SLACK = dt_time(0, 0, 10)  # a time read this early may follow a date read yesterday

RELAY_ACTIONS = {
    "relay_open": msg.RelayCommand.TRIP,
    "relay_close": msg.RelayCommand.CLOSE_DIRECTLY,
    "relay_close_permitted": msg.RelayCommand.CLOSE_PERMITTED,
}


def _single(block: DataId) -> DataId:
    """The format of one value of a block identifier."""
    return replace(block, block=False)


def status_from_word3(word: int) -> MeterStatus:
    """Relay state and pre-trip alarm from status word 3 (04000503, DL/T645-2007)."""
    return MeterStatus(
        "open" if word & STATUS3_RELAY_OPEN else "closed",
        (StatusFlag("pre_trip_alarm", bool(word & STATUS3_PRE_TRIP_ALARM),
                    "pre-trip alarm (status word 3 bit 7)"),),
    )


class Dlt645Driver:
    """One DL/T645 bus (a serial port or a TCP link). See gateway.drivers.base.Driver.

    ``tz`` is the zone the meters keep their clocks in (China: UTC+8): relay validity times
    and time sync are written in it. ``relay_validity_s`` is how long a relay command stays
    valid; a meter refuses it after that.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        version: str = "2007",
        timeout_s: float = 1.0,
        retries: int = 2,
        preamble: int = 4,
        password: str | Secret | None = None,
        passwords: Mapping[str, str | Secret] | None = None,
        password_level: int = 2,
        operator: str = "00000000",
        relay_validity_s: float = 600.0,
        tz: tzinfo = UTC,
        options: msg.Options = msg.DEFAULT_OPTIONS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        use_blocks: bool = True,
        no_relay: frozenset[str] = frozenset(),
        time_sync_mode: str = "broadcast",
    ) -> None:
        if version not in ("2007", "1997"):
            raise ValueError(f"DL/T645 version {version!r} is not 2007 or 1997")
        if retries < 0 or timeout_s <= 0:
            raise ValueError("retries must be >= 0 and timeout_s > 0")
        if time_sync_mode not in ("broadcast", "set"):
            raise ValueError(f"time sync mode {time_sync_mode!r} is not broadcast or set")
        self.transport = transport
        self.version = version
        self.timeout_s = timeout_s
        self.retries = retries
        self.preamble = preamble
        self.password = password
        self.passwords = dict(passwords or {})
        self.password_level = password_level
        self.operator = operator
        self.relay_validity_s = relay_validity_s
        self.tz = tz
        self.options = options
        self.clock = clock
        self.use_blocks = use_blocks
        self.no_relay = no_relay
        self.time_sync_mode = time_sync_mode
        self._no_block: set[tuple[str, int]] = set()
        self.between_exchanges: Checkpoint = no_checkpoint

    # ------------------------------------------------------------------ Driver protocol

    def capabilities(self, address: str) -> DriverCapabilities:
        """Relay control and the status word are DL/T645-2007 only, for meters whose model
        has a relay (``no_relay`` lists those without); every meter on the bus takes the
        broadcast time sync and has a clock (04000101/04000102, -1997 C010/C011)."""
        return DriverCapabilities(relay=self.version == "2007" and address not in self.no_relay,
                                  time_sync=True, clock=True)

    async def read(self, address: str, quantities: Sequence[str]) -> dict[str, Value]:
        """Quantities that share a block identifier (all tariffs, all phases) come in one
        transaction when two or more are wanted; a meter that refuses the block, or answers
        fewer values than wanted, gets single reads for the rest."""
        entries: dict[str, DataId] = {}
        for quantity in quantities:
            try:
                entries[quantity] = for_quantity(quantity, self.version)
            except UnknownIdentifierError as exc:
                raise DriverError(f"meter {address}: {exc}") from None
        numbers: dict[str, DecodedValue] = {}
        if self.use_blocks:
            numbers.update(await self._read_blocks(address, list(entries)))
        for quantity, entry in entries.items():
            if quantity not in numbers:
                numbers[quantity] = await self._read_entry(address, entry)
        values: dict[str, Value] = {}
        for quantity in entries:
            number = numbers[quantity]
            assert isinstance(number, int | float)
            values[quantity] = Value(float(number), unit_of(quantity))
        return values

    async def _read_blocks(self, address: str, wanted: list[str]) -> dict[str, DecodedValue]:
        got: dict[str, DecodedValue] = {}
        for block in blocks(self.version):
            covered = [q for q in block.quantities if q in wanted and q not in got]
            if len(covered) < 2 or (address, block.di) in self._no_block:
                continue
            try:
                payload = await self._read_payload(address, block.di)
            except MeterRejected:
                self._no_block.add((address, block.di))  # ask this meter one by one
                continue
            # Values the meter fills with FFH (a phase it does not have) or leaves off are
            # read singly below, which gives the meter's own answer for them.
            size = block.size
            for i, quantity in enumerate(block.quantities[: len(payload) // size]):
                if quantity in covered:
                    with contextlib.suppress(Dlt645Error):
                        got[quantity] = decode_value(_single(block), payload[i * size:][:size])
        return got

    async def switch_relay(self, address: str, action: str) -> RelayState:
        try:
            command = RELAY_ACTIONS[action]
        except KeyError:
            raise DriverError(
                f"meter {address}: relay action {action!r} is not one of "
                f"{', '.join(RELAY_ACTIONS)}"
            ) from None
        await self.relay_command(address, command)
        return (await self.read_status(address)).relay

    async def read_status(self, address: str) -> MeterStatus:
        """Status word 3: the relay state and the pre-trip alarm, in one transaction."""
        self._need_relay(address, "reading the relay status word")
        word = await self.read_identifier(address, DI_STATUS_WORD_3)
        assert isinstance(word, int)
        return status_from_word3(word)

    async def time_sync(self, address: str, when: datetime | None = None) -> None:
        """Broadcast time sync (08H): every meter on the bus sets its clock, ``address``
        among them; none replies. With ``time_sync_mode = "set"`` only ``address`` is set,
        by writing its date then its time (14H/04H with its password; the meter answers)."""
        when = when if when is not None else self.clock()
        if when.tzinfo is None:
            raise ValueError("time_sync wants a timezone-aware time")
        local = when.astimezone(self.tz).replace(tzinfo=None)
        if self.time_sync_mode == "set":
            await self.write_identifier(address, DI_DATE[self.version], local.date())
            # the date write took line time: the time written is taken after it
            now = self.clock().astimezone(self.tz).replace(tzinfo=None)
            await self.write_identifier(address, DI_TIME[self.version], now.time())
            return
        frame = msg.broadcast_time(local, options=self.options)
        try:
            await self.transport.send(frame.encode(self.preamble))
        except TransportError as exc:
            raise PortUnavailable(f"broadcast time sync on {self.transport.name}: {exc}") \
                from exc

    async def read_clock(self, address: str) -> ClockCheck:
        """Date, then time, in the meters' zone. The time is read last and stamped with the
        middle of its exchange; a time in the first seconds of a day may pair with the date
        of the day before, so the date is read again then."""
        day = await self._read_date(address)
        sent = self.clock()
        moment = await self.read_identifier(address, DI_TIME[self.version])
        read_at = sent + (self.clock() - sent) / 2
        assert isinstance(moment, dt_time)
        if moment < _DAY_START_SLACK:
            day = await self._read_date(address)
        meter_clock = datetime.combine(day, moment, self.tz).astimezone(UTC)
        return ClockCheck(meter_clock, read_at)

    async def _read_date(self, address: str) -> date:
        value = await self.read_identifier(address, DI_DATE[self.version])
        assert isinstance(value, date)
        return value

    async def close(self) -> None:
        await self.transport.close()

    # ------------------------------------------------------------------ more of DL/T645

    async def read_identifier(self, address: str, di: int) -> DecodedValue:
        """Any identifier of the table (block identifiers give a tuple)."""
        try:
            entry = lookup(di, self.version)
        except UnknownIdentifierError as exc:
            raise DriverError(f"meter {address}: {exc}") from None
        return await self._read_entry(address, entry)

    async def write_identifier(self, address: str, di: int, value: DecodedValue) -> None:
        try:
            entry = lookup(di, self.version)
            raw = encode_value(entry, value)
        except (Dlt645Error, TypeError, ValueError) as exc:
            raise DriverError(f"meter {address}: cannot write {di:X}: {exc}") from None
        request = msg.write(address, di, raw, password=self._password(address, "writing"),
                            level=self.password_level, operator=self.operator,
                            version=self.version)
        await self._transact(request, lambda reply: msg.check_reply(request, reply, self.version))

    async def relay_command(self, address: str, command: msg.RelayCommand) -> None:
        """Send relay control 1CH (trip, close, alarm, keep power) without reading back."""
        self._need_relay(address, "relay control")
        valid_until = self.clock() + timedelta(seconds=self.relay_validity_s)
        request = msg.relay_control(
            address,
            command,
            valid_until=valid_until.astimezone(self.tz).replace(tzinfo=None),
            password=self._password(address, "relay control"),
            level=self.password_level,
            operator=self.operator,
        )
        await self._transact(request, lambda reply: msg.check_reply(request, reply))

    async def read_address(self) -> str:
        """The address of the single meter on the bus (read address 13H to AAAAAAAAAAAA;
        1997 meters have no 13H, so their meter number C032 is read at the wildcard)."""
        if self.version == "1997":
            value = await self.read_identifier(WILDCARD, DI_ADDRESS["1997"])
            assert isinstance(value, str)
            return value
        request = msg.read_address()
        return await self._transact(request, lambda reply: msg.parse_address_reply(request,
                                                                                   reply))

    # ------------------------------------------------------------------ machinery

    def _password(self, address: str, what: str) -> str:
        """The meter's own password, else the bus's; none configured means no relay control
        or writing, without a frame sent (there is no default password to try)."""
        password = self.passwords.get(address, self.password)
        if password is None:
            raise DriverError(f"meter {address}: {what} needs its DL/T645 password, "
                              "and none is configured")
        return password.reveal() if isinstance(password, Secret) else password

    def _need_relay(self, address: str, what: str) -> None:
        if not self.capabilities(address).relay:
            which = "DL/T645-1997" if self.version == "1997" else "its model (has_relay = false)"
            raise DriverError(f"meter {address}: {which} has no relay, so no {what}")

    async def _read_entry(self, address: str, entry: DataId) -> DecodedValue:
        payload = await self._read_payload(address, entry.di)
        try:
            return decode_value(entry, payload)
        except Dlt645Error as exc:
            raise BadFrame(f"meter {address}: {entry.label()} ({entry.name}): {exc}") from None

    async def _read_payload(self, address: str, di: int) -> bytes:
        """Read one identifier, following D5 (more frames) with read follow-up 12H."""
        request = msg.read(address, di, self.version)
        reply = await self._transact(
            request, lambda frame: msg.parse_read_reply(request, frame, self.version)
        )
        payload = reply.payload
        seq = 0
        while reply.more:
            seq += 1
            if seq > 255:
                raise BadFrame(f"meter {address}: more than 255 follow-up frames for {di:X}")
            follow = msg.read_follow_up(address, di, seq, self.version)

            def parse(frame: Frame, request: Frame = follow) -> msg.ReadReply:
                return msg.parse_read_reply(request, frame, self.version)

            reply = await self._transact(follow, parse)
            payload += reply.payload
        return payload

    async def _transact(self, request: Frame, parse: Callable[[Frame], R]) -> R:
        """One request, retried on silence and garbled replies; returns ``parse(reply)``."""
        await self.between_exchanges()
        wire = request.encode(self.preamble)
        who = f"meter {request.address} on {self.transport.name}"
        attempts = self.retries + 1
        failure: DriverError | None = None
        for _ in range(attempts):
            framer = msg.ReplyFramer(request, self.version)
            try:
                reply = await self.transport.exchange(wire, framer, self.timeout_s)
            except ChecksumError as exc:
                failure = BadFrame(f"{who}: garbled reply ({exc})")
                continue
            except TransportTimeout as exc:
                if framer.skipped and not framer.parser.pending:
                    failure = NoAnswer(
                        f"{who}: no answer within {self.timeout_s:g} s (only frames that "
                        f"answer something else, e.g. {framer.skipped[0]})"
                    )
                elif exc.received:
                    failure = BadFrame(
                        f"{who}: incomplete or garbled reply "
                        f"({exc.received[:64].hex(' ').upper()})"
                    )
                else:
                    failure = NoAnswer(f"{who}: no answer within {self.timeout_s:g} s")
                continue
            except TransportError as exc:
                raise PortUnavailable(f"{who}: {exc}") from exc
            try:
                return parse(reply)
            except AbnormalReplyError as exc:
                raise MeterRejected(f"{who}: {exc.meaning} (error byte {exc.error_byte:02X}H, "
                                    f"control {exc.control:02X}H)") from exc
            except Dlt645Error as exc:
                failure = BadFrame(f"{who}: {exc}")
        assert failure is not None
        if attempts > 1:
            failure.args = (f"{failure.args[0]} ({attempts} attempts)",)
        raise failure
