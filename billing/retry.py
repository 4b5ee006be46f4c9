"""The one retry policy of relay commands: how long a command lives, how long a gateway has
to answer, how often it is tried and how long to wait between tries.

The engine's configuration, the disconnect machinery, operators' manual commands and the
command lifecycle all take their numbers from a :class:`RetryPolicy`, so a command is retried
the same way whoever queued it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Attempt limit, exponential backoff and timeouts of relay commands."""

    max_attempts: int = 5
    backoff_s: float = 5.0  # wait after the first failed attempt, doubled per attempt
    max_backoff_s: float = 3600.0
    ack_timeout_s: float = 30.0  # no "done" ack by then: timed out, retried
    ttl_s: float = 3600.0  # a command is not executed after this

    def expires_at(self, issued: datetime) -> datetime:
        """When a command issued at ``issued`` must no longer be executed."""
        return issued + timedelta(seconds=self.ttl_s)

    def ack_deadline(self, sent: datetime) -> datetime:
        """When a command sent at ``sent`` counts as timed out without a final ack."""
        return sent + timedelta(seconds=self.ack_timeout_s)

    def next_attempt(
        self, now: datetime, attempts_made: int, not_before: datetime | None = None
    ) -> datetime:
        """When to try again after ``attempts_made`` tries (never before ``not_before``)."""
        delay = min(self.backoff_s * 2 ** max(0, attempts_made - 1), self.max_backoff_s)
        return max(now + timedelta(seconds=delay), not_before or now)

    @staticmethod
    def exhausted(attempts_made: int, max_attempts: int) -> bool:
        """No try left: ``max_attempts`` is the limit the command was issued with."""
        return attempts_made >= max_attempts
