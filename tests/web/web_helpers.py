"""Test helpers of the web part: logins per role and a small seeded fleet, written the way
the collector (its tables) and billing (its functions) write them. A module of its own, not
conftest, so test files import it by a name no other folder uses."""

from __future__ import annotations

import ipaddress
import socket
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from billing.ledger import create_account, topup
from meterhub.security import write_private_file
from web.auth import ROLES, create_token, create_user


@dataclass
class Logins:
    tokens: dict[str, str] = field(default_factory=dict)
    passwords: dict[str, str] = field(default_factory=dict)

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


def make_logins(db_url: str) -> Logins:
    logins = Logins()
    with psycopg.connect(db_url) as conn:
        for role in ROLES:
            user_id, password = create_user(conn, role, role, created_by="test")
            logins.passwords[role] = password
            logins.tokens[role] = create_token(conn, user_id, "test")[1]
    return logins


@dataclass
class Fleet:
    gateway: str
    offline_gateway: str
    meters: list[str]
    account: str
    review_id: int
    now: datetime


def seed_fleet(db_url: str) -> Fleet:
    """Two gateways (one offline), three meters with an hour of readings, intervals with a
    held surge and its open review item, and a prepaid account on the first meter."""
    tag = uuid.uuid4().hex[:6]
    gw, gw_off = f"gw-{tag}", f"gw-{tag}-off"
    meters = [f"m-{tag}-{n}" for n in (1, 2, 3)]
    now = datetime.now(UTC).replace(microsecond=0)
    # the health a gateway publishes (gateway/app.py Gateway.health), one meter backing off
    health = {"uptime_s": 5400.0,
              "buffer": {"batches": 0, "readings": 0, "full": False, "last_seq": 10},
              "commands_done": 0,
              "meters": {meters[0]: {"ok": 60, "errors": 0, "state": "ok"},
                         meters[1]: {"ok": 58, "errors": 2, "state": "backoff"}}}
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "INSERT INTO gateways (gateway, site, state, health, status_at, last_seen, max_seq,"
            " batches) VALUES (%s, 'site-a', 'online', %s, %s, %s, 10, 10),"
            " (%s, 'site-a', 'offline', '{}', %s, %s, 3, 3)",
            (gw, Jsonb(health), now, now, gw_off, now - timedelta(hours=2),
             now - timedelta(hours=2)))
        for n, meter in enumerate(meters):
            conn.execute(
                "INSERT INTO meters (meter_id, gateway, site, protocol, expected_interval_s,"
                " first_seen, last_seen, relay, relay_at)"
                " VALUES (%s, %s, 'site-a', 'dlt645-2007', 900, %s, %s, 'closed', %s)",
                (meter, gw_off if n == 2 else gw, now - timedelta(hours=1), now, now))
            rows = []
            for k in range(61):
                ts = now - timedelta(minutes=60 - k)
                rows += [
                    (meter, "power_active_total", ts, 1.0 + 0.01 * k),
                    (meter, "voltage_a", ts, 230.0 + (k % 5)),
                    (meter, "energy_import_total", ts, 1000.0 + k / 60),
                ]
            put_readings(conn, rows)
        start = now.replace(minute=0, second=0) - timedelta(hours=6)
        for k in range(24):
            s = start + timedelta(minutes=15 * k)
            surge = k == 20
            conn.execute(
                "INSERT INTO intervals (meter, interval_start, seconds, kwh_e4, quality, held,"
                " flags) SELECT meter_key, %s, 900, %s, 'A', %s, %s FROM meters"
                " WHERE meter_id = %s",
                (s, 95_000 if surge else 2_500, surge,
                 2 if surge else 0, meters[0]))  # 2: bit 1, the surge rule
        surge_at = start + timedelta(minutes=15 * 20)
        review_id = conn.execute(
            "INSERT INTO review_items (meter_id, rule, period_start, period_end, reason)"
            " VALUES (%s, 'surge', %s, %s, 'consumption 9.5 kWh is 38x the usual 0.25 kWh')"
            " RETURNING id", (meters[0], surge_at, surge_at + timedelta(minutes=15))
        ).fetchone()[0]  # type: ignore[index]
        conn.execute(
            "INSERT INTO anomalies (meter, rule, at, reason, value, expected, holds,"
            " review_item_id) SELECT meter_key, 1, %s, 'consumption 38x the baseline', 9.5,"
            " 0.25, true, %s FROM meters WHERE meter_id = %s", (surge_at, review_id, meters[0]))
        conn.execute(
            "INSERT INTO dead_letters (topic, payload, reason, gateway) VALUES"
            " (%s, %s, 'readings: not valid JSON', %s)",
            (f"meterhub/v1/site-a/{gw}/readings", b"{not json", gw))
        account = f"acct-{tag}"
        create_account(conn, account, meters=[meters[0]], tariff="residential-flat",
                       name="Household One")
        topup(conn, account, Decimal("30.00"), "counter", f"{account}-opening")
        conn.commit()
    return Fleet(gw, gw_off, meters, account, review_id, now)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def same_origin(client: Any) -> dict[str, str]:
    """The Origin header a browser on the test server's own page sends."""
    return {"Origin": str(client.make_url("")).rstrip("/")}


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 and its key (mode 0600), for HTTPS tests."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "web.crt", folder / "web.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_private_file(key_path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert_path, key_path


def put_readings(conn: psycopg.Connection, rows: list[tuple[str, str, datetime, float]]) -> None:
    """(meter, quantity, ts, value) rows into the collector's layout-v2 tables, as a tool
    would (``collector_put_values``)."""
    conn.execute("SELECT collector_put_values(%s, %s, %s, %s)",
                 [[r[i] for r in rows] for i in range(4)])
