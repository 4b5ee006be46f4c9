"""Simulated Modbus TCP meters: several unit ids behind one host:port, like an RS-485-to-TCP
gateway or a meter with an Ethernet port.

An asyncio server on a loop of its own in a background thread, so the synchronous fleet
(``firmware_sim.fleet``) and async tests can both use it: :meth:`ModbusTcpServer.start` returns
once the port is bound. Replies come from :func:`firmware_sim.modbus.answer`, faults from each
meter's :attr:`SimMeter.faults`: no reply, a garbled header (TCP has no checksum; a gateway that
relays a garbled serial frame produces a header with a wrong protocol id), truncated frame,
slow reply. A unit id with no meter gets exception 0x0B, as a TCP gateway answers when its
serial target stays silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from firmware_sim._running import StartStop
from firmware_sim.meter import SimMeter
from firmware_sim.modbus import ModbusMeters
from meterhub.protocols.modbus import tcp
from meterhub.protocols.modbus.pdu import ExceptionCode, exception_reply
from meterhub.protocols.modbus.registermap import RegisterMap

log = logging.getLogger(__name__)


class ModbusTcpServer(StartStop):
    def __init__(
        self,
        meters: Sequence[SimMeter],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        maps: Mapping[str, RegisterMap] | None = None,
        maps_dir: Path | str | None = None,
    ) -> None:
        self.meters = list(meters)
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._meters = ModbusMeters(maps, maps_dir=maps_dir)
        for meter in self.meters:  # a wrong model fails here, not on the first request
            self._meters.regmap(meter)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.requests = 0

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("ModbusTcpServer.port is only known after start()")
        return self._port

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> ModbusTcpServer:
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()

        async def bind() -> None:
            self._server = await asyncio.start_server(
                self._client, self.host, self._requested_port
            )
            self._port = self._server.sockets[0].getsockname()[1]

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(bind())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="ModbusTcpServer", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = self._loop = None
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._thread = self._loop = None
        self._port = None

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            await self._server.wait_closed()

    # ------------------------------------------------------------------ connections

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        decoder = tcp.MbapDecoder()
        try:
            while data := await reader.read(4096):
                for frame in decoder.feed(data):
                    await self._serve(frame, writer)
        except tcp.MbapError as exc:
            log.warning("Modbus TCP client sent a bad header (%s); closing", exc)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, frame: tcp.MbapFrame, writer: asyncio.StreamWriter) -> None:
        self.requests += 1
        meter, pdu = self._meters.serve(frame.unit, frame.pdu, self.meters)
        if meter is None and frame.unit != 0:
            function = frame.pdu[0] if frame.pdu else 0
            reply = exception_reply(function, ExceptionCode.GATEWAY_TARGET_FAILED)
            writer.write(tcp.encode(frame.transaction, frame.unit, reply))
            await writer.drain()
            return
        if meter is None or pdu is None:
            return  # broadcast: no reply
        no_reply, bad_checksum, truncate, delay = meter.faults.take()
        if no_reply:
            return
        out = tcp.encode(frame.transaction, frame.unit, pdu, protocol=0xFFFF if bad_checksum else 0)
        if truncate:
            out = out[: max(1, len(out) // 2)]
        if delay:
            await asyncio.sleep(delay)
        writer.write(out)
        await writer.drain()
