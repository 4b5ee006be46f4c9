"""Protocol drivers: each joins a codec (meterhub.protocols) to a transport.

:func:`open_driver` turns a bus of the config into the driver for its protocol; the protocol
modules are imported only when a bus needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.drivers.base import (
    BadFrame,
    Driver,
    DriverError,
    MeterRejected,
    NoAnswer,
    PortUnavailable,
)

if TYPE_CHECKING:
    from gateway.config import BusConfig
    from gateway.transport import Transport

__all__ = ["BadFrame", "Driver", "DriverError", "MeterRejected", "NoAnswer", "PortUnavailable",
           "open_driver"]


def open_driver(bus: BusConfig) -> Driver:
    """The driver for one configured bus (serial port or TCP endpoint)."""
    if bus.protocol == "modbus":
        from gateway.drivers.modbus import ModbusDriver

        models = {m.address: m.model or "" for m in bus.meters}
        if bus.tcp is not None:
            return ModbusDriver.tcp(bus.tcp[0], bus.tcp[1], timeout_s=bus.timeout_s,
                                    retries=bus.retries, models=models, maps_dir=bus.maps_dir)
        assert bus.port is not None
        return ModbusDriver.serial(bus.port, baud=bus.baud, parity=bus.parity,
                                   stopbits=bus.stopbits, bytesize=bus.bytesize,
                                   timeout_s=bus.timeout_s, retries=bus.retries, models=models,
                                   maps_dir=bus.maps_dir)
    from gateway.drivers.dlt645 import Dlt645Driver

    return Dlt645Driver(
        open_transport(bus),
        version=bus.protocol.removeprefix("dlt645-"),
        timeout_s=bus.timeout_s,
        retries=bus.retries,
        preamble=bus.preamble,
        password=bus.password,
        passwords={m.address: m.password for m in bus.meters if m.password is not None},
        password_level=bus.password_level,
        operator=bus.operator,
        no_relay=frozenset(m.address for m in bus.meters if not m.has_relay),
        time_sync_mode=bus.time_sync,
    )


def open_transport(bus: BusConfig) -> Transport:
    """The byte pipe under a DL/T645 driver: the serial port or a TCP socket."""
    if bus.tcp is not None:
        from gateway.transport.tcp import TcpTransport

        return TcpTransport(bus.tcp[0], bus.tcp[1])
    from gateway.transport.serial import SerialTransport

    assert bus.port is not None
    return SerialTransport(bus.port, baud=bus.baud, parity=bus.parity, stopbits=bus.stopbits,
                           bytesize=bus.bytesize)
