"""Meter clocks: queue a time sync where a meter's clock has drifted too far.

A meter keeps its own clock for its tariff bands, load profiles and event log; a wrong clock
bills peak energy as valley. The gateway reads each meter's clock now and then and the
collector keeps the newest check in the ``meter_field_contract`` view. Here billing, which
alone sends commands, queues a signed ``time_sync`` for each of its meters whose newest
check is off by more than :attr:`ClockPolicy.threshold_s` (through
:func:`billing.lifecycle.issue`, like every command). The gateway sets the clock and reads it
back; :func:`billing.lifecycle.apply_ack` verifies the read-back against
:attr:`ClockPolicy.tolerance_s`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from billing import lifecycle
from billing.retry import RetryPolicy


@dataclass(frozen=True, slots=True)
class ClockPolicy:
    """When to sync a meter's clock. ``min_gap_s``: a meter is synced at most this often (a
    clock that will not keep time after a sync is for a person to look at, not a loop)."""

    threshold_s: float = 60.0
    tolerance_s: float = 5.0
    min_gap_s: float = 3600.0

    def __post_init__(self) -> None:
        if not 0 < self.tolerance_s < self.threshold_s:
            raise ValueError("clock policy: 0 < tolerance_s < threshold_s, got "
                             f"{self.tolerance_s} and {self.threshold_s}")
        if self.min_gap_s < 0:
            raise ValueError(f"clock policy: min_gap_s {self.min_gap_s} is negative")


# Meters of billing's whose newest clock check is off by more than the threshold, can be set,
# and that check came after the meter's last time sync was sent (a check from before it
# speaks of the clock the sync corrected), with no sync queued within the minimum gap.
_DRIFTED = """
SELECT bm.meter_id, bm.account_id, f.clock_drift_s, f.clock_read_at
FROM billing_meters bm
JOIN meter_field_contract f ON f.meter_id = bm.meter_id
WHERE abs(f.clock_drift_s) > %(threshold)s
  AND f.time_sync_capable IS NOT FALSE
  AND NOT EXISTS (SELECT 1 FROM billing_commands c
                  WHERE c.meter_id = bm.meter_id AND c.action = 'time_sync'
                    AND (c.created_at > %(gap)s
                         OR coalesce(c.sent_at, c.created_at) >= f.clock_read_at))
ORDER BY bm.meter_id
LIMIT %(n)s
FOR UPDATE OF bm SKIP LOCKED
"""


def queue_time_syncs(conn: psycopg.Connection[Any], now: datetime, policy: ClockPolicy,
                     retry: RetryPolicy, actor: str, limit: int = 500) -> int:
    """Queue a time sync for every drifted meter (see :data:`_DRIFTED`); the number queued.
    A meter with another command in flight is left for the next pass."""
    queued = 0
    with conn.transaction():
        rows = conn.execute(_DRIFTED, {"threshold": policy.threshold_s, "n": limit,
                                       "gap": now - timedelta(seconds=policy.min_gap_s)},
                            ).fetchall()
        for meter, account, drift, read_at in rows:
            why = (f"meter clock {abs(drift):.0f} s {'ahead' if drift > 0 else 'behind'} "
                   f"(checked {read_at.isoformat()}, limit {policy.threshold_s:.0f} s)")
            if lifecycle.issue(conn, account_id=account, meter_id=meter, action="time_sync",
                               purpose="time_sync", now=now, retry=retry, actor=actor,
                               detail=why, reason=why):
                queued += 1
    return queued
