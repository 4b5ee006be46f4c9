"""A payment notification restores a cut meter, end to end, and the customer hears of it.

The demo's path (simulated DL/T645 meter on a pseudo-terminal -> gateway -> real broker ->
collector -> PostgreSQL -> billing cuts the dry account's meter off) with one change: the
customer pays through a provider, whose signed notification reaches billing's payment
endpoint over HTTP (a forged one first, refused). Billing restores supply through the
normal path; then notify e-mails the restore confirmation to a real SMTP server.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import requests

from billing import create_customer, link_account
from billing.payment_http import PaymentsConfig, serve
from launcher.demo import TOPUP_AMOUNT, DemoPlan, DemoSummary, _DemoRun, _fleet_spec
from launcher.embedded import BrokerLogins
from meterhub.security.files import write_private_file
from meterhub.security.webhooks import sign
from meterhub.settings import MqttSettings
from notify import NotifyConfig, NotifyService

sys.path.insert(0, str(Path(__file__).parents[1] / "notify"))
from notify_helpers import free_port, smtp_server

pytestmark = pytest.mark.integration
SECRET = b"acmepay-shared-secret-for-the-test"


class PayingRun(_DemoRun):
    """The demo run, but the customer pays through a provider's signed notification."""

    def __init__(self, *args: object, endpoint: str) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.endpoint = endpoint
        self.answers: list[tuple[int, dict]] = []

    def open_accounts(self) -> None:
        super().open_accounts()
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            create_customer(
                conn,
                "cust-dry",
                name="Dry Household",
                email="dry@example.com",
                preferred_channel="email",
                language="en",
            )
            link_account(conn, self.summary.dry_account, "cust-dry")

    def top_up(self, at: str) -> None:
        body = json.dumps(
            {
                "event": "payment.succeeded",
                "txn_id": "ACME-0001",
                "account": self.summary.dry_account,
                "amount_fen": int(TOPUP_AMOUNT * 100),
                "currency": "CNY",
                "occurred_at": datetime.now(UTC).isoformat(),
            }
        ).encode()
        now = int(time.time())
        for secret in (b"forged-by-someone", SECRET):
            r = requests.post(
                self.endpoint,
                data=body,
                timeout=10,
                headers={"Meterhub-Signature": sign(secret, body, now)},
            )
            self.answers.append((r.status_code, r.json()))
        self.topped_up = True


async def test_payment_notification_restores_a_cut_meter(
    db_url: str, mqtt: MqttSettings, tmp_path: Path
) -> None:
    from firmware_sim.fleet import Fleet

    write_private_file(tmp_path / "acmepay.secret", SECRET)
    payments = PaymentsConfig.from_dict(
        {
            "providers": {
                "acmepay": {
                    "channel": "wechat",
                    "secret": {"file": str(tmp_path / "acmepay.secret")},
                }
            }
        }
    )
    port, stop = free_port(), asyncio.Event()
    endpoint = asyncio.create_task(serve(db_url, payments, "127.0.0.1", port, stop))
    plan = DemoPlan(run_id=uuid.uuid4().hex[:6])
    summary = DemoSummary(run_id=plan.run_id, dry_meter=plan.dry_meter)
    try:
        await asyncio.sleep(0.5)
        with Fleet.from_dict(_fleet_spec(plan)) as fleet:
            run = PayingRun(
                plan,
                fleet,
                summary,
                db_url,
                BrokerLogins(mqtt),
                tmp_path,
                endpoint=f"http://127.0.0.1:{port}/payments/acmepay",
            )
            await run.run(time.monotonic(), 50, live=False)
    finally:
        stop.set()
        await endpoint

    assert run.answers[0][0] == 401  # the forged notification
    assert run.answers[1] == (200, {"status": "applied", "reason": ""})
    assert summary.cutoffs_acked >= 1 and summary.relay_opened_on_meter
    assert summary.restores_acked >= 1 and summary.relay_closed_again
    with psycopg.connect(db_url) as conn:
        assert conn.execute(
            "SELECT kind, amount_fen, reference FROM billing_ledger WHERE account_id = %s "
            "AND kind = 'topup'",
            (summary.dry_account,),
        ).fetchall() == [("topup", 10000, "acmepay:ACME-0001")]
        assert conn.execute("SELECT state FROM billing_payments").fetchall() == [("applied",)]

    with smtp_server() as (box, smtp_port):
        config = NotifyConfig.from_dict(
            {"email": {"host": "127.0.0.1", "port": smtp_port, "from": "billing@meterhub.test"}}
        )
        async with NotifyService(config, db_url) as service:
            for _ in range(5):
                await service.pass_once()
    subjects = [m["Subject"] for m in box.messages]
    assert "Supply restored" in subjects
    assert all(m["To"] == "dry@example.com" for m in box.messages)
