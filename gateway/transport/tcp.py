"""TCP transport: a meter or a serial-device server reached over the network."""

from __future__ import annotations

import asyncio
import contextlib

from gateway.transport._base import StreamTransport, TransportError


class _Receiver(asyncio.Protocol):
    def __init__(self, owner: TcpTransport) -> None:
        self.owner = owner

    def data_received(self, data: bytes) -> None:
        self.owner._received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._lost()


class TcpTransport(StreamTransport):
    """``TcpTransport("10.0.0.5", 8899)``: connects on first use, reconnects after a loss."""

    def __init__(self, host: str, port: int, *, connect_timeout_s: float = 5.0) -> None:
        super().__init__()
        self.host = host
        self.port = port
        self.connect_timeout_s = connect_timeout_s
        self.name = f"tcp {host}:{port}"
        self._transport: asyncio.Transport | None = None

    def _is_open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(lambda: _Receiver(self), self.host, self.port),
                self.connect_timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            raise TransportError(f"{self.name}: cannot connect ({exc or 'timeout'})") from exc
        self._transport = transport

    def _lost(self) -> None:
        self._transport = None
        self._wake()  # an exchange waiting on a dead connection sees it at once

    async def _write(self, data: bytes) -> None:
        if self._transport is None:
            raise TransportError(f"{self.name}: not connected")
        self._transport.write(data)

    async def _close(self) -> None:
        if self._transport is not None:
            with contextlib.suppress(Exception):
                self._transport.close()
            self._transport = None
