"""Serving the app inside another program's event loop (the demo runs everything in one),
over plain HTTP or, given a certificate and key, HTTPS."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from meterhub.security import check_private_file
from meterhub.settings import MqttSettings
from web._http import DoorSettings
from web.app import create_app


@dataclass
class WebServer:
    """A running web service; ``url`` is where a browser should go."""

    url: str
    runner: web.AppRunner

    async def close(self) -> None:
        await self.runner.cleanup()


def tls_context(cert_file: str | Path, key_file: str | Path) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2 at least) from a PEM certificate chain and its key; the
    key file must be mode 0600."""
    check_private_file(Path(key_file), "--tls-key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert_file), str(key_file))
    return context


async def start_server(database_url: str, *, mqtt: MqttSettings | None = None,
                       host: str = "127.0.0.1", port: int = 0,
                       offline_after_s: float = 60.0,
                       ssl_context: ssl.SSLContext | None = None,
                       door_settings: DoorSettings | None = None) -> WebServer:
    """Start serving on ``host:port`` (0: any free port) and return at once; OSError when
    the port is taken (nothing is left running then). With ``ssl_context`` it serves HTTPS
    and the session cookie is marked ``Secure``."""
    runner = web.AppRunner(create_app(database_url, mqtt=mqtt, offline_after_s=offline_after_s,
                                      door_settings=door_settings))
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
    except BaseException:
        await runner.cleanup()  # the pool and the live feed are already running
        raise
    bound_host, bound_port = runner.addresses[0][:2]
    shown = "127.0.0.1" if bound_host in ("0.0.0.0", "::") else bound_host
    scheme = "https" if ssl_context is not None else "http"
    return WebServer(f"{scheme}://{shown}:{bound_port}/", runner)
