"""Versioned SQL migrations for every part that owns tables.

Each part keeps ``<part>/migrations/NNNN_name.sql``; they are applied in component order
(the collector's tables first: billing reads them) inside one transaction per file, under an
advisory lock so two processes starting together do not race.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

import psycopg

log = logging.getLogger(__name__)

# Order matters: later components reference earlier tables.
COMPONENTS = ("collector", "billing", "notify", "web")
_MIGRATION_LOCK = 0x6D657465  # "mete"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    component: str
    version: int
    name: str
    sql: str


def discover(components: tuple[str, ...] = COMPONENTS) -> list[Migration]:
    found: list[Migration] = []
    for component in components:
        try:
            folder = resources.files(component) / "migrations"
        except ModuleNotFoundError:
            continue
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir(), key=lambda e: e.name):
            match = _NAME.match(entry.name)
            if match:
                found.append(
                    Migration(component, int(match[1]), match[2], entry.read_text("utf-8"))
                )
    return found


def migrate(conninfo: str, components: tuple[str, ...] = COMPONENTS) -> list[str]:
    """Apply what is missing; returns the names applied (empty when up to date)."""
    applied: list[str] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
        try:
            conn.execute(
                """CREATE TABLE IF NOT EXISTS meterhub_migrations (
                       component text NOT NULL,
                       version int NOT NULL,
                       name text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now(),
                       PRIMARY KEY (component, version))"""
            )
            done = {
                (c, v) for c, v in conn.execute(
                    "SELECT component, version FROM meterhub_migrations"
                )
            }
            for m in discover(components):
                if (m.component, m.version) in done:
                    continue
                with conn.transaction():
                    conn.execute(m.sql.encode())
                    conn.execute(
                        "INSERT INTO meterhub_migrations (component, version, name) "
                        "VALUES (%s, %s, %s)",
                        (m.component, m.version, m.name),
                    )
                label = f"{m.component}/{m.version:04d}_{m.name}"
                log.info("migration applied", extra={"migration": label})
                applied.append(label)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
    return applied


def host_label(conninfo: str) -> str:
    """The host a connection string points at, for summaries (never the password)."""
    info = psycopg.conninfo.conninfo_to_dict(conninfo)
    return str(info.get("host") or "localhost")
