"""The whole path, meter to relay and back, against a real broker and a real PostgreSQL.

Simulated meters on pseudo-terminals (real DL/T645 and Modbus RTU framing) -> gateway ->
broker -> collector -> PostgreSQL -> billing -> cut-off command -> gateway -> simulated relay
-> ack -> top-up -> restore; and a postpaid account with an overdue bill through its ladder
to the cut-off, payment and restore. Nothing of ours is mocked.
"""

from __future__ import annotations

import re
import uuid
from decimal import Decimal

import psycopg
import pytest

from launcher.demo import DemoPlan, run_demo
from meterhub.settings import MqttSettings

pytestmark = pytest.mark.integration


async def test_meter_to_relay_and_back(db_url: str, mqtt: MqttSettings,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    plan = DemoPlan(run_id=uuid.uuid4().hex[:6])
    summary = await run_demo(db_url, mqtt, duration=50, live=True, plan=plan)

    assert summary.meters == 4
    assert summary.readings_published > 0
    # every published reading stored exactly once: the primary key makes a duplicate row
    # impossible, so also check no reading is missing or counted twice per quantity
    assert summary.readings_stored == summary.readings_published
    with psycopg.connect(db_url) as conn:
        dupes = conn.execute(
            "SELECT count(*) FROM (SELECT meter_id, quantity, ts FROM reading_values "
            "GROUP BY 1, 2, 3 HAVING count(*) > 1) d"
        ).fetchone()
        assert dupes == (0,)
        per_meter = dict(
            conn.execute(
                "SELECT meter_id, count(DISTINCT ts) FROM reading_values GROUP BY meter_id"
            ).fetchall()
        )
        assert set(per_meter) == set(plan.meter_ids()), "every meter was read and stored"
        # warn first, then a final warning, then the cut-off, in that order, published
        ladder = [
            kind
            for (kind,) in conn.execute(
                "SELECT kind FROM billing_alerts WHERE account_id = %s "
                "AND kind IN ('warning', 'final_warning', 'cutoff') ORDER BY alert_id",
                (summary.dry_account,),
            )
        ]
        assert ladder[:2] == ["warning", "final_warning"], ladder
        unpublished = conn.execute(
            "SELECT count(*) FROM billing_alerts WHERE account_id = %s AND published_at IS NULL",
            (summary.dry_account,),
        ).fetchone()
        assert unpublished == (0,), "alerts are published on MQTT"

    # the cut-off reached the simulated meter's relay, and energy stopped while open
    assert summary.cutoffs_acked >= 1
    assert summary.relay_opened_on_meter
    assert summary.energy_frozen_while_open
    # the top-up restored supply through the same path
    assert summary.restores_acked >= 1
    assert summary.relay_closed_again

    # The status line stamped at the cut-off shows the balance at the cut-off (run dry: zero
    # or below), not the topped-up one: the top-up follows it by seconds, and restores.
    lines = [x for x in capsys.readouterr().err.splitlines() if " cut-offs " in x]
    # (the first line showing the dry meter's relay open: the postpaid account is cut too)
    first_cut = next(x for x in lines if "relay OPEN" in x)
    balance = re.search(r"balance +(-?)¥([\d,.]+)", first_cut)
    assert balance, first_cut
    assert Decimal(balance.group(1) + balance.group(2).replace(",", "")) <= 0, first_cut

    # the postpaid account: overdue bill -> its ladder's notices -> the final notice -> the
    # cut-off on the meter -> the bill paid -> restored on the meter
    assert summary.postpaid_cut_on_meter and summary.postpaid_paid
    assert summary.postpaid_restored_on_meter
    with psycopg.connect(db_url) as conn:
        kinds = [k for (k,) in conn.execute(
            "SELECT kind FROM billing_notices WHERE account_id = %s ORDER BY notice_id",
            (summary.postpaid_account,))]
    assert kinds == ["bill", "reminder", "due_today", "collection", "planned_disconnection",
                     "final_notice", "cutoff", "restore"], kinds
