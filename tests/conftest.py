"""Shared fixtures: a real PostgreSQL and a real MQTT broker for integration tests.

Point them at running services with ``METERHUB_DATABASE_URL`` / ``METERHUB_MQTT_URL`` (CI does:
the machine's PostgreSQL and Mosquitto); without them the embedded ones are started. Each test
that asks for ``db_url`` gets a database of its own, cloned from a migrated template, so tests
never see each other's rows, and ``site`` gives each test its own MQTT topic scope.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from launcher.embedded import embedded_broker, embedded_postgres
from meterhub import db
from meterhub.settings import DATABASE_URL_ENV, MQTT_URL_ENV, MqttSettings


def _with_dbname(conninfo: str, dbname: str) -> str:
    params = conninfo_to_dict(conninfo)
    params["dbname"] = dbname
    return make_conninfo(**params)


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    url = os.environ.get(DATABASE_URL_ENV)
    if url:
        yield url
        return
    # not under pytest's basetemp: a second pytest session prunes old basetemps, and would
    # delete this server's data directory under it
    with (
        tempfile.TemporaryDirectory(prefix="meterhub-test-pg-") as tmp,
        embedded_postgres(Path(tmp) / "pg") as embedded,
    ):
        yield embedded


@pytest.fixture(scope="session")
def migrated_template(pg_server_url: str) -> Iterator[str]:
    name = f"meterhub_tpl_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db.migrate(_with_dbname(pg_server_url, name))
    yield name
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db_url(pg_server_url: str, migrated_template: str) -> Iterator[str]:
    """A fresh, fully migrated database for this test alone."""
    name = f"meterhub_t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{migrated_template}"')
    yield _with_dbname(pg_server_url, name)
    with psycopg.connect(pg_server_url, autocommit=True) as conn, contextlib.suppress(
        psycopg.Error
    ):
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def mqtt() -> Iterator[MqttSettings]:
    url = os.environ.get(MQTT_URL_ENV)
    if url:
        yield MqttSettings.from_url(url)
        return
    with embedded_broker() as settings:
        yield settings


@pytest.fixture
def site() -> str:
    """A topic scope of this test's own, so parallel tests never read each other's messages."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def artifacts_dir() -> Path:
    path = Path(__file__).parent.parent / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def _scrape(bound: tuple[str, int] | None) -> Samples:
    """GET /metrics and parse it with prometheus-client's own parser:
    {(sample name, sorted labels): value}."""
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families

    assert bound is not None, "no metrics endpoint"
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://{bound[0]}:{bound[1]}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture
def scrape() -> Callable[[tuple[str, int] | None], Awaitable[Samples]]:
    """An async function fetching and parsing a part's /metrics."""
    return _scrape
