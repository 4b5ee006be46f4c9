"""Billing's /metrics: engine counters, commands by state and the created -> verified latency."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import psycopg
import pytest
from billing_helpers import T0, BillingKey, config, engines, put_intervals, put_meter, until
from fake_gateway import FakeGateway, running

from billing import CreditSettings, create_account
from billing.metrics import BillingMetrics
from billing.tariffs import load_tariffs
from meterhub.metrics import metrics_endpoint
from meterhub.settings import MqttSettings

D = Decimal
P = "meterhub_billing_"
FAST = CreditSettings(
    alert_thresholds=(D("0.50"), D(0)), warning_to_final_s=0.3, final_to_cutoff_s=0.3
)


@pytest.mark.integration
async def test_billing_metrics(
    db_url: str, mqtt: MqttSettings, site: str, billing_key: BillingKey, scrape: Any
) -> None:
    with psycopg.connect(db_url, autocommit=True) as c:
        put_meter(c, "m1", site, "gw1")
        create_account(
            c,
            "A1",
            meters=["m1"],
            tariff="residential-flat",
            credit=FAST,
            opening_balance="1.00",
            charge_from=T0,
            tariffs=load_tariffs(),
        )
    gw = FakeGateway(mqtt, site, billing_key.keyring)
    async with (
        running(gw),
        engines(config(db_url, mqtt, billing_key)) as (eng,),
        metrics_endpoint("127.0.0.1:0", lambda: BillingMetrics(eng)) as bound,
    ):
        await scrape(bound)  # the latency cursor starts here
        with psycopg.connect(db_url, autocommit=True) as c:
            put_intervals(c, "m1", ["1.0000", "1.0000"])  # 1.12 yuan > the 1.00 balance
        await until(lambda: eng.stats.cutoffs_acked == 1)
        m = await scrape(bound)
    assert m[(P + "cutoffs_acked_total", ())] == 1
    assert m[(P + "intervals_charged_total", ())] == 2
    assert m[(P + "commands", (("purpose", "cutoff"), ("state", "verified")))] == 1
    assert m[(P + "commands", (("purpose", "cutoff"), ("state", "queued")))] == 0
    assert m[(P + "command_latency_seconds_count", (("purpose", "cutoff"),))] == 1
    assert 0 < m[(P + "command_latency_seconds_sum", (("purpose", "cutoff"),))] < 30
