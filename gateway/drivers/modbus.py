"""Modbus RTU / TCP driver: register maps (meterhub.protocols.modbus) over Modbus clients.

One driver per bus (serial port) or TCP endpoint; ``models`` says which register map each unit
id uses. Reads are planned by :func:`plan_reads`, so a poll of many quantities costs as few
requests as the meter allows.

Modbus TCP uses pymodbus' client. Modbus RTU uses :class:`_RtuClient`: pymodbus' request and
reply PDUs (so both framings hand the driver the same reply objects) on our own
:class:`~gateway.transport.serial.SerialTransport`. pymodbus' serial transport takes a reply
in byte by byte as the line delivers it, one event-loop wake-up per character; ours waits for
the bytes a reply still needs (5 + 2N for N registers, known after its third byte, sized by
the codec's :class:`~meterhub.protocols.modbus.rtu.ReplyFramer`), two wake-ups a reply, which
is most of the gateway's CPU on a busy line. It also keeps the
3.5-character silence between frames and opens a pseudo-terminal at even parity.

A reply whose CRC or header does not check must not look like a dead meter. The driver watches
the bytes that arrived (pymodbus' ``trace_packet`` hook, which :class:`_RtuClient` calls the
same way): silence is :class:`NoAnswer`, bytes that never made a valid frame are
:class:`BadFrame`, a Modbus exception reply is :class:`MeterRejected` (except 0x0A/0x0B,
a TCP gateway saying its serial target did not answer: :class:`NoAnswer`).

pymodbus changes its API between minor releases; :data:`PYMODBUS_SUPPORTED` is the range this
module was written and tested against (and pyproject pins).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.client.mixin import ModbusClientMixin
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU

from gateway.drivers.base import (
    BadFrame,
    Checkpoint,
    DriverCapabilities,
    DriverError,
    MeterRejected,
    MeterStatus,
    NoAnswer,
    PortUnavailable,
    no_checkpoint,
)
from gateway.transport import TransportError, TransportTimeout
from gateway.transport.serial import SerialTransport
from meterhub.protocols.modbus import rtu
from meterhub.protocols.modbus.pdu import ExceptionCode
from meterhub.protocols.modbus.registermap import (
    ReadRequest,
    RegisterMap,
    RegisterValueError,
    load_maps,
    plan_reads,
)
from meterhub.quantities import QUANTITIES
from meterhub.wire import ClockCheck, RelayState, Value

PYMODBUS_SUPPORTED = ((3, 16), (3, 17))  # [lower, upper) as (major, minor)

RELAY_ACTIONS = ("relay_open", "relay_close", "relay_close_permitted")

Trace = Callable[[bool, bytes], bytes]


class _RtuClient(ModbusClientMixin[Awaitable[ModbusPDU]]):
    """Modbus RTU master: pymodbus' request PDUs out, pymodbus' reply PDUs back, framed here
    and carried by our :class:`SerialTransport` (see the module docstring for why).

    Raises what pymodbus' own client raises, so the driver maps both framings' errors alike:
    :class:`ModbusIOException` when no valid reply came after ``retries`` more tries (the bytes
    that did come went to ``trace`` first), :class:`ConnectionException` when the port is lost.
    Every frame is followed by the 3.5-character silence the Serial Line spec asks for (a fixed
    1.75 ms above 19200 baud), also between the requests of one poll; a garbled reply is
    retried only once the line has been quiet that long.
    """

    def __init__(
        self, transport: SerialTransport, *, timeout_s: float, retries: int, trace: Trace
    ) -> None:
        super().__init__()
        self.transport = transport
        self.timeout_s = timeout_s
        self.retries = retries
        self._trace = trace
        self._decoder = DecodePDU(is_server=False)
        self.silence_s = 1.75e-3 if transport.baud > 19200 else 3.5 * transport.char_time
        self._line_free_at = 0.0
        self.error: str | None = None  # why the port did not open

    @property
    def connected(self) -> bool:
        return self.transport.is_open

    async def connect(self) -> bool:
        try:
            await self.transport.open()
        except TransportError as exc:
            self.error = str(exc)
            return False
        self.error = None
        return True

    async def close(self) -> None:
        await self.transport.close()

    async def execute(self, no_response_expected: bool, request: ModbusPDU) -> ModbusPDU:
        if no_response_expected:
            raise ModbusException("the gateway's RTU client always waits for a reply")
        wire = rtu.encode(request.dev_id, bytes([request.function_code]) + request.encode())
        loop = asyncio.get_running_loop()
        attempts = self.retries + 1
        for attempt in range(attempts):
            wait = self._line_free_at - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            framer = rtu.ReplyFramer(request.dev_id, request.function_code)
            try:
                frame = await self.transport.exchange(wire, framer, self.timeout_s)
            except rtu.GarbledReply:
                self._trace(False, bytes(framer.received))
                if attempt + 1 < attempts:
                    await self.transport.wait_quiet(self.silence_s, self.timeout_s)
                continue
            except TransportTimeout as exc:
                if exc.received:
                    self._trace(False, exc.received)
                continue
            except TransportError as exc:
                raise ConnectionException(str(exc)) from exc
            finally:
                self._line_free_at = loop.time() + self.silence_s
            self._trace(False, frame)
            reply = self._decoder.decode(frame[1:-2])
            if reply is None:
                raise ModbusIOException(f"reply not understood ({frame.hex(' ')})")
            reply.dev_id = frame[0]
            return reply
        raise ModbusIOException(f"no valid reply in {attempts} attempt(s)")


_Client = _RtuClient | AsyncModbusTcpClient


class ModbusDriver:
    """Driver protocol (gateway.drivers.base.Driver) for Modbus meters."""

    def __init__(
        self,
        client: _Client,
        *,
        endpoint: str,
        framing: str,
        models: Mapping[str, str],
        maps: Mapping[str, RegisterMap],
    ) -> None:
        """Prefer :meth:`serial` / :meth:`tcp`; ``client`` must have been made with
        :meth:`_trace` as its ``trace_packet`` (``trace``) so bad frames can be told from
        silence."""
        self._client = client
        self.endpoint = endpoint
        self._framing = framing
        self._maps = dict(maps)
        self._units = _resolve_units(endpoint, models, self._maps)
        self._lock = asyncio.Lock()
        self._rx = b""
        self.between_exchanges: Checkpoint = no_checkpoint

    # ------------------------------------------------------------------ construction

    @classmethod
    def serial(
        cls,
        port: str,
        *,
        baud: int = 9600,
        parity: str = "N",
        stopbits: int = 1,
        bytesize: int = 8,
        timeout_s: float = 1.0,
        retries: int = 2,
        models: Mapping[str, str],
        maps_dir: Path | str | None = None,
    ) -> ModbusDriver:
        """Modbus RTU on a serial port (RS-485 adapter or the simulator's pseudo-terminal).
        The port opens on the first transaction and reopens after an error."""
        maps = load_maps(maps_dir)
        _resolve_units(port, models, maps)  # configuration errors before any client exists
        if retries < 0 or timeout_s <= 0:
            raise ValueError("retries must be >= 0 and timeout_s > 0")
        holder: list[ModbusDriver] = []
        transport = SerialTransport(port, baud=baud, parity=parity, bytesize=bytesize,
                                    stopbits=stopbits, exclusive=True)  # as pymodbus opened it
        client = _RtuClient(transport, timeout_s=timeout_s, retries=retries,
                            trace=lambda sending, data: holder[0]._trace(sending, data))
        driver = cls(client, endpoint=port, framing="rtu", models=models, maps=maps)
        holder.append(driver)
        return driver

    @classmethod
    def tcp(
        cls,
        host: str,
        port: int = 502,
        *,
        timeout_s: float = 1.0,
        retries: int = 2,
        models: Mapping[str, str],
        maps_dir: Path | str | None = None,
    ) -> ModbusDriver:
        """Modbus TCP to a meter or an RS-485-to-TCP gateway hosting several unit ids.
        Call inside a running event loop (pymodbus clients bind to it)."""
        maps = load_maps(maps_dir)
        _resolve_units(f"{host}:{port}", models, maps)
        holder: list[ModbusDriver] = []
        client = AsyncModbusTcpClient(
            host,
            port=port,
            timeout=timeout_s,
            retries=retries,
            reconnect_delay=0,
            name=f"modbus-tcp {host}:{port}",
            trace_packet=lambda sending, data: holder[0]._trace(sending, data),
        )
        driver = cls(client, endpoint=f"{host}:{port}", framing="tcp", models=models, maps=maps)
        holder.append(driver)
        return driver

    def model(self, address: str) -> RegisterMap:
        """The register map configured for a unit id (DriverError when not configured)."""
        return self._unit(address)[1]

    # ------------------------------------------------------------------ Driver protocol

    def capabilities(self, address: str) -> DriverCapabilities:
        """A relay when the unit's register map has one; no register map gives a clock yet
        (the maps of the meters here have no clock register)."""
        return DriverCapabilities(relay=self._unit(address)[1].relay is not None,
                                  time_sync=False)

    async def read(self, address: str, quantities: Sequence[str]) -> dict[str, Value]:
        unit, regmap = self._unit(address)
        missing = [q for q in quantities if q not in regmap.registers]
        if missing:
            raise DriverError(
                f"unit {unit} ({regmap.name}): no register for {', '.join(missing)}; "
                f"the model has {', '.join(regmap.registers)}"
            )
        values: dict[str, Value] = {}
        for request in plan_reads(regmap, quantities):
            words = await self._read_registers(unit, request)
            try:
                decoded = request.decode(words)
            except RegisterValueError as exc:
                raise BadFrame(f"unit {unit} ({regmap.name}): {exc}") from None
            for quantity, value in decoded.items():
                values[quantity] = Value(value, QUANTITIES[quantity].unit)
        return {q: values[q] for q in quantities}

    async def switch_relay(self, address: str, action: str) -> RelayState:
        unit, regmap = self._unit(address)
        relay = regmap.relay
        if action not in RELAY_ACTIONS:
            raise DriverError(f"unit {unit}: {action!r} is not one of {', '.join(RELAY_ACTIONS)}")
        if relay is None:
            raise DriverError(f"unit {unit}: model {regmap.name} has no relay")
        if action == "relay_open":
            value = relay.open_value
        elif action == "relay_close":
            value = relay.closed_value
        elif relay.close_permitted_value is None:
            raise DriverError(f"unit {unit}: model {regmap.name} cannot close-permitted")
        else:
            value = relay.close_permitted_value
        where = f"{relay.describe()} <- {value}"
        if relay.function == "coil":
            await self._call(unit, where, lambda: self._client.write_coil(
                relay.address, bool(value), device_id=unit))
        else:
            await self._call(unit, where, lambda: self._client.write_register(
                relay.address, value, device_id=unit))
        return (await self.read_status(address)).relay

    async def read_status(self, address: str) -> MeterStatus:
        """The relay register or coil; Modbus maps give no alarm flags."""
        return MeterStatus(await self._read_relay(address))

    async def time_sync(self, address: str, when: datetime) -> None:
        """Not supported: no register map describes a clock (see :meth:`capabilities`)."""
        unit, regmap = self._unit(address)
        raise DriverError(f"unit {unit}: model {regmap.name} has no time sync")

    async def read_clock(self, address: str) -> ClockCheck:
        """Not supported: no register map describes a clock (see :meth:`capabilities`)."""
        unit, regmap = self._unit(address)
        raise DriverError(f"unit {unit}: model {regmap.name} has no clock register")

    async def _read_relay(self, address: str) -> RelayState:
        unit, regmap = self._unit(address)
        relay = regmap.relay
        if relay is None:
            raise DriverError(f"unit {unit}: model {regmap.name} has no relay")
        where = relay.describe()
        if relay.function == "coil":
            reply = await self._call(unit, where, lambda: self._client.read_coils(
                relay.address, count=1, device_id=unit))
            if not reply.bits:
                raise BadFrame(f"unit {unit}: {where}: reply carries no coil")
            value = int(bool(reply.bits[0]))
        else:
            reply = await self._call(unit, where, lambda: self._client.read_holding_registers(
                relay.address, count=1, device_id=unit))
            if len(reply.registers) != 1:
                raise BadFrame(f"unit {unit}: {where}: expected 1 register, got "
                               f"{len(reply.registers)}")
            value = reply.registers[0]
        if value == relay.close_permitted_value:
            return "open"  # still open until the customer presses the button
        return relay.state(value) or "unknown"

    async def probe(self, unit: int | str, model: str | None = None) -> bool:
        """Installer's unit-id sweep: does anything answer at ``unit``? A normal or exception
        reply counts (the device is there); silence does not. One try, no retries, so a sweep
        of 247 ids takes 247 timeouts at most. BadFrame propagates: something answered, but
        garbled (wrong line settings or two devices on one id)."""
        unit_id = _unit_id(str(unit))
        if unit_id is None:
            raise DriverError(f"unit {unit!r}: not a Modbus unit id 1..247")
        if model is not None and model not in self._maps:
            raise DriverError(f"model {model!r} is not one of {', '.join(sorted(self._maps))}")
        configured = self._units.get(str(unit_id))
        regmap = self._maps[model] if model is not None else configured and configured[1]
        if regmap:
            # the model's first register: a meter of that model answers it normally
            request = plan_reads(regmap, regmap.quantities[:1])[0]
        else:
            # any device answers this, normally or with "illegal data address"
            request = ReadRequest("holding", 0, 1, ())
        with self._no_retries():
            try:
                await self._read_registers(unit_id, request)
            except NoAnswer:
                return False
            except MeterRejected:
                return True
        return True

    async def identify(self, unit: int | str) -> list[str]:
        """The known register maps a unit answers as, best first. The maps carry no
        identification register, so each map's registers are read (no retries): a map
        counts when every read is answered normally and its voltage and frequency are
        plausible; the map that covers most registers ranks first. Meters whose layouts
        overlap (one model's registers a subset of another's) both count."""
        unit_id = _unit_id(str(unit))
        if unit_id is None:
            raise DriverError(f"unit {unit!r}: not a Modbus unit id 1..247")
        scores: dict[str, int] = {}
        with self._no_retries():
            for name, regmap in sorted(self._maps.items()):
                values: dict[str, float] = {}
                try:
                    for request in plan_reads(regmap, regmap.quantities):
                        values.update(request.decode(
                            await self._read_registers(unit_id, request)))
                except (DriverError, RegisterValueError):
                    continue
                if _plausible(values):
                    scores[name] = len(values)
        return sorted(scores, key=lambda n: (-scores[n], n))

    async def close(self) -> None:
        if isinstance(self._client, _RtuClient):
            await self._client.close()
        else:
            self._client.close()

    @contextlib.contextmanager
    def _no_retries(self) -> Iterator[None]:
        # pymodbus 3.16: the TCP client's TransactionManager holds the retry count
        holder: Any = self._client if isinstance(self._client, _RtuClient) else self._client.ctx
        saved = holder.retries
        holder.retries = 0
        try:
            yield
        finally:
            holder.retries = saved

    # ------------------------------------------------------------------ transactions

    def _unit(self, address: str) -> tuple[int, RegisterMap]:
        unit = _unit_id(address)
        found = self._units.get(str(unit)) if unit is not None else None
        if found is None:
            raise DriverError(
                f"{self.endpoint}: unit {address!r} is not configured "
                f"(configured: {', '.join(self._units) or 'none'})"
            )
        return found

    async def _read_registers(self, unit: int, request: ReadRequest) -> list[int]:
        where = (f"FC{request.function_code:02d} {request.function} registers "
                 f"0x{request.address:04X}+{request.count}")
        if request.function == "holding":
            reply = await self._call(unit, where, lambda: self._client.read_holding_registers(
                request.address, count=request.count, device_id=unit))
        else:
            reply = await self._call(unit, where, lambda: self._client.read_input_registers(
                request.address, count=request.count, device_id=unit))
        words = list(reply.registers)
        if len(words) != request.count:
            raise BadFrame(f"unit {unit}: {where}: got {len(words)} registers")
        return words

    async def _call(
        self, unit: int, where: str, send: Callable[[], Awaitable[ModbusPDU]]
    ) -> Any:
        """One transaction, errors mapped to the driver's exceptions (one in flight)."""
        await self.between_exchanges()
        async with self._lock:
            await self._connect()
            self._rx = b""
            try:
                reply = await send()
            except ModbusIOException as exc:
                if self._rx:
                    raise BadFrame(
                        f"unit {unit}: {where}: {self._diagnose(unit, self._rx)} "
                        f"(received {self._rx.hex(' ')})"
                    ) from None
                raise NoAnswer(f"unit {unit}: {where}: no reply from {self.endpoint} "
                               f"({exc})") from None
            except ConnectionException as exc:
                raise NoAnswer(f"unit {unit}: {where}: connection to {self.endpoint} "
                               f"lost ({exc})") from None
            except ModbusException as exc:
                raise BadFrame(f"unit {unit}: {where}: {exc}") from None
        if isinstance(reply, ExceptionResponse) or reply.isError():
            code = getattr(reply, "exception_code", 0)
            try:
                name = ExceptionCode(code).name.lower().replace("_", " ")
            except ValueError:
                name = "unknown exception"
            text = f"unit {unit}: {where}: exception {code:02X} ({name})"
            if code in (ExceptionCode.GATEWAY_PATH_UNAVAILABLE,
                        ExceptionCode.GATEWAY_TARGET_FAILED):
                raise NoAnswer(text)
            raise MeterRejected(text)
        return reply

    async def _connect(self) -> None:
        if self._client.connected:
            return
        if not await self._client.connect():
            why = self._client.error if isinstance(self._client, _RtuClient) else None
            raise PortUnavailable(f"cannot open {self._framing} connection to {self.endpoint}"
                                  + (f" ({why})" if why else ""))

    def _trace(self, sending: bool, data: bytes) -> bytes:
        """pymodbus hook: remember what arrived, so a timeout can tell silence from garbage."""
        if not sending and data:
            self._rx = bytes(data)
        return data

    def _diagnose(self, unit: int, data: bytes) -> str:
        if self._framing == "tcp":
            if len(data) >= 7 and data[2:4] != b"\x00\x00":
                return "reply header has a wrong protocol id (garbled MBAP)"
            return "incomplete reply (truncated MBAP frame)"
        if data[0] != unit:
            return f"reply from unit {data[0]}, not {unit}"
        expected = rtu.reply_length(data)
        if not expected or len(data) < expected:
            return "incomplete reply (truncated RTU frame)"
        if not rtu.crc_ok(data[:expected]):
            return "CRC check failed"
        return "reply not understood"


_PLAUSIBLE = {"voltage_a": (50.0, 500.0), "frequency": (40.0, 70.0)}


def _plausible(values: Mapping[str, float]) -> bool:
    """Values a real meter of that model would show (a float read from integer registers,
    or the other way round, is far off)."""
    return all(low <= values[q] <= high for q, (low, high) in _PLAUSIBLE.items() if q in values)


def _resolve_units(
    endpoint: str, models: Mapping[str, str], maps: Mapping[str, RegisterMap]
) -> dict[str, tuple[int, RegisterMap]]:
    """unit id text -> (unit id, map); every configuration problem in one DriverError."""
    units: dict[str, tuple[int, RegisterMap]] = {}
    problems = []
    for address, model in models.items():
        unit = _unit_id(address)
        if unit is None:
            problems.append(f"unit {address!r}: not a Modbus unit id 1..247")
        elif model not in maps:
            problems.append(
                f"unit {address}: model {model!r} is not one of {', '.join(sorted(maps))}"
            )
        else:
            units[str(unit)] = (unit, maps[model])
    if problems:
        raise DriverError(f"{endpoint}: " + "; ".join(problems))
    return units


def _unit_id(address: str) -> int | None:
    text = str(address).strip()
    if not text.isdigit() or not 1 <= int(text) <= 247:
        return None
    return int(text)
