"""Serving the app inside another program's event loop (the demo runs everything in one)."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from meterhub.settings import MqttSettings
from web.app import create_app


@dataclass
class WebServer:
    """A running web service; ``url`` is where a browser should go."""

    url: str
    runner: web.AppRunner

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_server(database_url: str, *, mqtt: MqttSettings | None = None,
                       host: str = "127.0.0.1", port: int = 0,
                       offline_after_s: float = 60.0) -> WebServer:
    """Start serving on ``host:port`` (0: any free port) and return at once; OSError when
    the port is taken (nothing is left running then)."""
    runner = web.AppRunner(create_app(database_url, mqtt=mqtt,
                                      offline_after_s=offline_after_s))
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()  # the pool and the live feed are already running
        raise
    bound_host, bound_port = runner.addresses[0][:2]
    shown = "127.0.0.1" if bound_host in ("0.0.0.0", "::") else bound_host
    return WebServer(f"http://{shown}:{bound_port}/", runner)
