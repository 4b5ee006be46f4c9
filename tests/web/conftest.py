"""Fixtures for the web part: a served app on a real PostgreSQL, logins per role and a small
seeded fleet (see web_helpers)."""

from __future__ import annotations

import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from web_helpers import Fleet, Logins, free_port, make_logins, seed_fleet, self_signed_cert

from web import auth, create_app, keys
from web.server import tls_context


@pytest.fixture(autouse=True)
def _door_for_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    """A session key from the environment (as a site would set it), and scrypt at a test
    cost: N=2^17 takes seconds per hash on a shared CI machine, and every test makes five
    logins. test_web_door checks the real cost and the rehash to it."""
    monkeypatch.setenv(keys.KEY_ENV, "test-session-key-" + "k" * 40)
    monkeypatch.setattr(auth, "SCRYPT", auth.ScryptParams(n=2**12))


@pytest.fixture
def logins(db_url: str) -> Logins:
    return make_logins(db_url)


@pytest.fixture
def fleet(db_url: str) -> Fleet:
    return seed_fleet(db_url)


@pytest.fixture
async def client(db_url: str) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = create_app(db_url, live_interval_s=0.3, offline_after_s=60)
    async with TestClient(TestServer(app)) as c:
        yield c


@pytest.fixture
def served(db_url: str) -> Iterator[str]:
    """The app served on a real port from a thread of its own (for schemathesis and the
    browser, which drive it synchronously from the test)."""
    yield from _serve(db_url, None)


@pytest.fixture
def served_tls(db_url: str, tmp_path: Path) -> Iterator[str]:
    """The same over HTTPS with a self-signed certificate made here (the browser test)."""
    cert, key = self_signed_cert(tmp_path)
    yield from _serve(db_url, tls_context(cert, key))


def _serve(db_url: str, context: ssl.SSLContext | None) -> Iterator[str]:
    import asyncio

    port = free_port()
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    runner_box: dict[str, Any] = {}

    def serve() -> None:
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(create_app(db_url, live_interval_s=0.3))
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port,
                                            ssl_context=context).start())
        runner_box["runner"] = runner
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(20), "web app did not start"
    yield f"{'https' if context else 'http'}://127.0.0.1:{port}"
    loop.call_soon_threadsafe(loop.stop)
    thread.join(20)
