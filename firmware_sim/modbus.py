"""Simulated Modbus meters: the meter side of Modbus RTU on a :class:`firmware_sim.bus.SimBus`.

A meter's registers are not stored: each read asks :meth:`SimMeter.value` and encodes the value
through the meter's register map (``SimMeter.model`` names the map, ``SimMeter.address`` is the
unit id as text), so the physics stays in one place. Writes reach only the relay, as on a real
prepaid meter. :func:`answer` is shared with the Modbus TCP server (``firmware_sim.modbus_tcp``).

Framing and CRC come from :mod:`meterhub.protocols.modbus`, not from pymodbus, so the gateway
(pymodbus) and the simulator check each other.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from firmware_sim.meter import SimMeter
from meterhub.protocols.modbus import rtu
from meterhub.protocols.modbus.pdu import (
    ExceptionCode,
    FunctionCode,
    PduError,
    Request,
    decode_request,
    exception_reply,
    read_bits_reply,
    read_registers_reply,
    write_reply,
)
from meterhub.protocols.modbus.registermap import (
    RegisterMap,
    RegisterValueError,
    load_maps,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- one meter


def answer(pdu: bytes, meter: SimMeter, regmap: RegisterMap) -> bytes:
    """The reply PDU a meter of model ``regmap`` gives to a request PDU."""
    function = pdu[0] if pdu else 0
    try:
        request = decode_request(pdu)
        return _execute(request, meter, regmap)
    except PduError as exc:
        return exception_reply(function, exc.code)


def apply_broadcast(pdu: bytes, meter: SimMeter, regmap: RegisterMap) -> bool:
    """Unit 0: meters act on writes and never reply (Serial Line spec 2.2); reads are ignored.
    True when this meter acted."""
    try:
        request = decode_request(pdu)
        if not request.is_write:
            return False
        _execute(request, meter, regmap)
    except PduError:
        return False
    return True


def _execute(request: Request, meter: SimMeter, regmap: RegisterMap) -> bytes:
    match request.function:
        case FunctionCode.READ_HOLDING_REGISTERS | FunctionCode.READ_INPUT_REGISTERS:
            words = _read_words(request, meter, regmap)
            return read_registers_reply(request.function, words)
        case FunctionCode.READ_COILS:
            _relay_at(regmap, "coil", request.address, request.count)
            return read_bits_reply(request.function, [_relay_value(meter, regmap)])
        case FunctionCode.WRITE_SINGLE_COIL:
            _relay_at(regmap, "coil", request.address, request.count)
            _set_relay(meter, regmap, request.values[0])
            return write_reply(request)
        case _:  # WRITE_SINGLE_REGISTER / WRITE_MULTIPLE_REGISTERS
            _relay_at(regmap, "holding", request.address, request.count)
            _set_relay(meter, regmap, request.values[0])
            return write_reply(request)


def _read_words(request: Request, meter: SimMeter, regmap: RegisterMap) -> list[int]:
    """Registers from the meter's values; unused registers inside a read answer 0, like meters
    that allow reading across gaps. A read that only touches unused registers, or cuts a
    two-register value in half, is refused as a real meter would."""
    function = "holding" if request.function == FunctionCode.READ_HOLDING_REGISTERS else "input"
    if request.count > regmap.max_registers:
        raise PduError(
            ExceptionCode.ILLEGAL_DATA_VALUE,
            f"{request.count} registers exceed this model's {regmap.max_registers}",
        )
    first, last = request.address, request.address + request.count - 1
    words = [0] * request.count
    touched = False
    for reg in regmap.registers.values():
        if reg.function != function or reg.end < first or reg.address > last:
            continue
        if reg.address < first or reg.end > last:
            raise PduError(
                ExceptionCode.ILLEGAL_DATA_ADDRESS, f"read cuts {reg.describe()} in half"
            )
        try:
            encoded = reg.encode(meter.value(reg.quantity))
        except RegisterValueError:
            log.exception("meter %s cannot encode %s", meter.address, reg.quantity)
            raise PduError(ExceptionCode.SERVER_DEVICE_FAILURE, reg.describe()) from None
        words[reg.address - first : reg.end - first + 1] = encoded
        touched = True
    relay = regmap.relay
    if relay is not None and relay.function == function and first <= relay.address <= last:
        words[relay.address - first] = _relay_value(meter, regmap)
        touched = True
    if not touched:
        raise PduError(
            ExceptionCode.ILLEGAL_DATA_ADDRESS,
            f"no {function} register in 0x{first:04X}..0x{last:04X}",
        )
    return words


def _relay_at(regmap: RegisterMap, function: str, address: int, count: int) -> None:
    relay = regmap.relay
    if relay is None or relay.function != function or (address, count) != (relay.address, 1):
        raise PduError(ExceptionCode.ILLEGAL_DATA_ADDRESS, f"no writable {function} at {address}")


def _relay_value(meter: SimMeter, regmap: RegisterMap) -> int:
    relay = regmap.relay
    assert relay is not None
    if meter.relay_open and meter.relay_close_pending and relay.close_permitted_value is not None:
        return relay.close_permitted_value
    return relay.open_value if meter.relay_open else relay.closed_value


def _set_relay(meter: SimMeter, regmap: RegisterMap, value: int) -> None:
    relay = regmap.relay
    assert relay is not None
    if value == relay.open_value:
        meter.open_relay()
    elif value == relay.closed_value:
        meter.close_relay()
    elif relay.close_permitted_value is not None and value == relay.close_permitted_value:
        meter.close_relay(permitted_only=True)
    else:
        raise PduError(ExceptionCode.ILLEGAL_DATA_VALUE, f"relay value {value} is not defined")


# --------------------------------------------------------------------------- the fleet side


class ModbusMeters:
    """Finds the addressed meter and its register map; shared by the RTU bus and TCP server."""

    def __init__(
        self,
        maps: Mapping[str, RegisterMap] | None = None,
        *,
        maps_dir: Path | str | None = None,
    ) -> None:
        self.maps = dict(maps) if maps is not None else load_maps(maps_dir)

    def regmap(self, meter: SimMeter) -> RegisterMap:
        if meter.model is None or meter.model not in self.maps:
            raise KeyError(
                f"simulated Modbus meter {meter.address}: model {meter.model!r} is not one of "
                f"{', '.join(sorted(self.maps))}"
            )
        return self.maps[meter.model]

    @staticmethod
    def find(unit: int, meters: Sequence[SimMeter]) -> SimMeter | None:
        for meter in meters:
            if meter.address.isdigit() and int(meter.address) == unit:
                return meter
        return None

    def serve(
        self, unit: int, pdu: bytes, meters: Sequence[SimMeter]
    ) -> tuple[SimMeter | None, bytes | None]:
        """(meter, reply PDU) for a unicast; (meter, None) for a broadcast a meter acted on."""
        if unit == rtu.BROADCAST_UNIT:
            acted = [m for m in meters if apply_broadcast(pdu, m, self.regmap(m))]
            return (acted[0] if acted else None), None
        meter = self.find(unit, meters)
        if meter is None:
            return None, None
        return meter, answer(pdu, meter, self.regmap(meter))


class ModbusRtuBusProtocol(ModbusMeters):
    """:class:`firmware_sim.bus.BusProtocol` for Modbus RTU."""

    def __init__(
        self,
        maps: Mapping[str, RegisterMap] | None = None,
        *,
        maps_dir: Path | str | None = None,
    ) -> None:
        super().__init__(maps, maps_dir=maps_dir)
        self._framer = rtu.RtuRequestFramer()

    def feed(self, data: bytes) -> list[object]:
        return list(self._framer.feed(data))

    def respond(
        self, request: object, meters: Sequence[SimMeter]
    ) -> tuple[SimMeter | None, bytes | None]:
        if not isinstance(request, rtu.RtuFrame):
            raise TypeError(f"expected an RtuFrame, got {request!r}")
        meter, pdu = self.serve(request.unit, request.pdu, meters)
        return meter, (None if pdu is None else rtu.encode(request.unit, pdu))

    def corrupt(self, reply: bytes) -> bytes:
        return rtu.garble(reply)
