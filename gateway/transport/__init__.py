"""Byte transports for the gateway's drivers: one request, one reply, a timeout.

A transport knows nothing about the protocol on it: the driver hands it a *framer* (anything
with ``feed(bytes) -> list``) that says when a reply is complete. ``SerialTransport`` drives
an RS-485 port with pyserial, ``TcpTransport`` a serial server or meter on TCP.
"""

from gateway.transport._base import Framer, Transport, TransportError, TransportTimeout
from gateway.transport.serial import SerialTransport
from gateway.transport.tcp import TcpTransport

__all__ = [
    "Framer",
    "SerialTransport",
    "TcpTransport",
    "Transport",
    "TransportError",
    "TransportTimeout",
]
