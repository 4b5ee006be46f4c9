"""PostgreSQL LISTEN/NOTIFY channels: which write wakes which process, named once.

A notification is only a wake-up: the work itself is always found in the tables (accounts
marked ``dirty``, the interval change queue, queued commands), so a lost
notification delays work until the listener's next pass, never loses it. Writers call
:func:`notify` in the transaction of the write, so the wake-up is delivered at its commit
and dropped with its rollback (PostgreSQL also folds repeats within one transaction).
"""

from __future__ import annotations

from typing import Any

import psycopg

ACCOUNTS = "meterhub_accounts"
"""billing: an account's balance or credit situation moved (top-up, refund, adjustment,
announced payment, approval); payload: the account id."""

INTERVALS = "meterhub_intervals"
"""collector: validated intervals were written (a validation pass committed)."""

HOLDS_RELEASED = "meterhub_holds_released"
"""collector: a review decision released held intervals; payload: the review item id."""

COMMANDS = "meterhub_commands"
"""billing: a relay command was queued (by the policy, an operator or a retry); payload: the
command id."""

BILLING_WAKES = (ACCOUNTS, INTERVALS, HOLDS_RELEASED, COMMANDS)
"""What the billing engine listens to."""


def notify(conn: psycopg.Connection[Any], channel: str, payload: str = "") -> None:
    """Queue a notification on ``channel`` in ``conn``'s current transaction."""
    if channel not in BILLING_WAKES:
        raise ValueError(f"{channel!r} is not a channel of meterhub.channels")
    conn.execute("SELECT pg_notify(%s, %s)", (channel, payload[:7000]))
