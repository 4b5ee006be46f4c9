"""configs/grafana/meterhub.json only charts metrics the parts really export."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

from billing.engine import EngineStats
from billing.metrics import BillingMetrics
from collector.metrics import CollectorMetrics
from collector.service import CollectorStats
from gateway.metrics import GatewayMetrics
from gateway.stats import GatewayStats
from meterhub.supervise import Supervisor
from web.metrics import WebMetrics

DASHBOARD = Path(__file__).parents[2] / "configs" / "grafana" / "meterhub.json"
_SUFFIX = re.compile(r"_(total|bucket|count|sum)$")


def exported_families() -> set[str]:
    gateway = SimpleNamespace(
        connected=False,
        stats=GatewayStats(),
        supervisor=Supervisor(),
        config=SimpleNamespace(buffer=SimpleNamespace(max_batches=1)),
        bus_workers=dict,
    )
    collector = SimpleNamespace(stats=CollectorStats(last_commit_at=datetime.now(UTC)),
                                ready=asyncio.Event(), config=None)
    engine = SimpleNamespace(stats=EngineStats(), config=None)
    registries = [
        GatewayMetrics(gateway).registry,  # type: ignore[arg-type]
        CollectorMetrics(collector).registry,  # type: ignore[arg-type]
        BillingMetrics(engine).registry,  # type: ignore[arg-type]
        WebMetrics().registry,
    ]
    return {family.name for registry in registries for family in registry.collect()}


def test_dashboard_charts_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    referenced = {
        _SUFFIX.sub("", name) for e in exprs for name in re.findall(r"\bmeterhub_[a-z_]+", e)
    }
    exported = exported_families()
    assert referenced, "no meterhub metric in the dashboard"
    assert referenced <= exported, sorted(referenced - exported)
