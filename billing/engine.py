"""The billing engine: one loop that charges, decides, commands and reconciles.

Each tick, in this order: charge changed intervals, evaluate accounts
whose balance moved or whose timer runs, handle command deadlines (retry / expire / cancel),
reconcile wanted and reported relay state now and then, send due commands and publish
alerts. Acks are applied as they arrive. All coordination between engines goes through
PostgreSQL row locks, so any number of engines may run against one database.

The passes wake on PostgreSQL notifications (:mod:`meterhub.channels`: top-ups and other
account changes, validated intervals, released review holds, queued commands) and on each
other (a tick that queued a command wakes the sender at once); ``poll_interval_s`` is only
the fallback for timers (warning delays, ack deadlines, retries) and for a lost
notification. After its listening connection (re)connects, the engine runs every pass once,
which catches up on whatever was notified while it was away.

Database work is synchronous psycopg run in worker threads (one connection for the tick,
one for acks): the same functions serve the CLI and the web API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from billing import alerts, commands, lifecycle
from billing.arrears import CollectionSettings
from billing.charging import charge_parallel
from billing.clocks import ClockPolicy, queue_time_syncs
from billing.collection import run_collection
from billing.disconnect import (
    PolicyKnobs,
    evaluate_accounts,
    handle_deadlines,
    next_ladder_step,
    reconcile,
)
from billing.errors import BillingError
from billing.lifecycle import CommandState
from billing.manual import end_expired_holds
from billing.postpaid import issue_due_bills
from billing.retry import RetryPolicy
from billing.tariffs import TariffError, check_history, load_tariffs
from meterhub import channels, wire
from meterhub.dbfaults import is_data_error, is_outage
from meterhub.security import CommandSigner, InsecureFileError, KeyFileError
from meterhub.settings import MqttSettings
from meterhub.supervise import Supervisor, TaskHealth

log = logging.getLogger(__name__)

SIGNING_KEY_ENV = "METERHUB_BILLING_SIGNING_KEY"
"""Where ``meterhub billing run`` looks for the signing key when ``--signing-key`` is absent."""


class BillingConfigError(BillingError):
    """The engine cannot start with this configuration; the message names the setting."""


def _engine_id() -> str:
    return f"billing-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


@dataclass(frozen=True)
class BillingConfig:
    """Where the services are and how the engine behaves. Per-account credit rules
    (thresholds, warning delays, emergency credit, windows) live on the account."""

    database_url: str
    mqtt: MqttSettings
    # Ed25519 private key (PEM, mode 0600) every relay command is signed with; required
    signing_key_path: Path | None = None
    # fallback: the passes run at least this often; notifications wake them at once
    poll_interval_s: float = 5.0
    tariffs_dir: Path | None = None  # default: configs/tariffs of the project
    engine_id: str = field(default_factory=_engine_id)
    # relay commands, as a billing.retry.RetryPolicy (see there)
    ack_timeout_s: float = 30.0
    command_ttl_s: float = 3600.0
    max_attempts: int = 5
    retry_backoff_s: float = 5.0
    reconcile_interval_s: float = 60.0
    reconcile_grace_s: float = 30.0
    max_group_cutoffs: int = 50  # more households of one group at once need approval
    mass_window_s: float = 3600.0
    alerts_site: str = "billing"  # site for alerts of accounts whose meters were never heard
    batch_accounts: int = 500
    charge_connections: int = 1  # >1: charge on that many connections at once (threads)
    # meter clocks (billing.clocks): sync a clock further off than this, verify the read-back
    # within the tolerance, and sync one meter at most every clock_sync_gap_s
    clock_sync_threshold_s: float = 60.0
    clock_sync_tolerance_s: float = 5.0
    clock_sync_gap_s: float = 3600.0
    # reconciliation queues at most this many repairs of one meter's relay, then raises a
    # site_visit alert and stops (billing.disconnect.reconcile)
    reconcile_max_attempts: int = 3
    # postpaid: monthly bills and the collection ladder, a pass this often
    collection: CollectionSettings = field(default_factory=CollectionSettings)
    collection_interval_s: float = 60.0

    @property
    def retry(self) -> RetryPolicy:
        """The one retry policy of this engine's relay commands."""
        return RetryPolicy(max_attempts=self.max_attempts, backoff_s=self.retry_backoff_s,
                           ack_timeout_s=self.ack_timeout_s, ttl_s=self.command_ttl_s)

    @property
    def knobs(self) -> PolicyKnobs:
        return PolicyKnobs(
            max_group_cutoffs=self.max_group_cutoffs,
            mass_window_s=self.mass_window_s,
            retry=self.retry,
            reconcile_grace_s=self.reconcile_grace_s,
            reconcile_max_attempts=self.reconcile_max_attempts,
            collection=self.collection,
        )

    @property
    def clocks(self) -> ClockPolicy:
        return ClockPolicy(threshold_s=self.clock_sync_threshold_s,
                           tolerance_s=self.clock_sync_tolerance_s,
                           min_gap_s=self.clock_sync_gap_s)


@dataclass
class EngineStats:
    """Counts of what this engine did (each event is counted by the one engine that did it)."""

    ticks: int = 0
    intervals_charged: int = 0
    adjustments: int = 0
    intervals_unbilled: int = 0  # not priceable; see billing_unbilled
    alerts_raised: int = 0
    alerts_published: int = 0
    commands_sent: int = 0
    cutoffs_queued: int = 0
    restores_queued: int = 0
    cutoffs_acked: int = 0  # relay_open done with outcome ok and relay read back open
    restores_acked: int = 0  # relay_close(_permitted) done with outcome ok
    acks: int = 0
    retries: int = 0
    reconciled: int = 0
    time_syncs_queued: int = 0
    time_syncs_verified: int = 0  # a meter's clock read back within tolerance after a sync
    holds_ended: int = 0  # operators' manual holds that expired (billing.manual)
    tampers: int = 0  # relay movements reported with readings that no command explains
    bills_issued: int = 0  # postpaid monthly bills
    notices_recorded: int = 0  # collection ladder notices (billing_notices)
    errors: int = 0  # database outages ridden out
    mqtt_connected: bool = False
    listening: bool = False  # the LISTEN connection is up
    listen_connects: int = 0  # each (re)connect is followed by one catch-up pass
    wakeups: Counter[str] = field(default_factory=Counter)  # notifications, by channel
    # acks ignored, by reason: malformed, too_large, bad_field, topic_mismatch (the payload's
    # gateway is not the topic's), unknown_command, wrong_gateway, wrong_meter, inconsistent
    # (a success contradicting the action), db_data_error
    acks_refused: Counter[str] = field(default_factory=Counter)
    # restarts of the supervised tasks (charging, commands, alerts, acks) and the last error
    task_restarts: Counter[str] = field(default_factory=Counter)
    task_errors: dict[str, str] = field(default_factory=dict)


def load_signer(config: BillingConfig) -> CommandSigner:
    """The signer of every relay command this engine sends; refuses to go without one, since
    gateways execute only commands a trusted key signed."""
    path = config.signing_key_path
    if path is None:
        raise BillingConfigError(
            "signing_key_path is not set: billing signs every relay command and will not "
            f"start without a key (meterhub billing run --signing-key PATH, or ${SIGNING_KEY_ENV};"
            " create one with: meterhub keys generate)")
    try:
        return CommandSigner.from_file(Path(path))
    except (FileNotFoundError, InsecureFileError, KeyFileError) as exc:
        raise BillingConfigError(f"signing_key_path: {exc}") from None
    except OSError as exc:
        raise BillingConfigError(f"signing_key_path: cannot read {path}: {exc.strerror}") from None


class BillingEngine:
    def __init__(self, config: BillingConfig) -> None:
        self.config = config
        self.signer = load_signer(config)
        self.stats = EngineStats()
        self.tariffs = load_tariffs(config.tariffs_dir)
        self._link: commands.CommandLink | None = None
        # one connection per task: charging (the tick), commands, alerts, acks
        self._tick_conn: psycopg.Connection[Any] | None = None
        self._send_conn: psycopg.Connection[Any] | None = None
        self._alert_conn: psycopg.Connection[Any] | None = None
        self._ack_conn: psycopg.Connection[Any] | None = None
        self._charge_conns: list[psycopg.Connection[Any]] = []  # beside the tick connection
        self._last_reconcile = -1e18
        self._last_collection = -1e18
        self._tariffs_checked = False
        # set to run a task's pass now rather than at its fallback poll
        self._wake = {name: asyncio.Event() for name in ("charging", "commands", "alerts")}
        self._next_step: datetime | None = None  # the next ladder timer to run out

    @property
    def listener_name(self) -> str:
        """The ``application_name`` of the LISTEN connection (pg_stat_activity)."""
        return f"{self.config.engine_id} listen"[:63]

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; survives database and broker outages.

        Four tasks run under a :class:`meterhub.supervise.Supervisor` (a failing one is logged,
        counted in ``stats.task_restarts`` and restarted with backoff): charging (charge,
        policy, deadlines, reconciliation), commands (send what is due), alerts (publish)
        and acks (the broker connection, applying acks). Tariff files that rewrite the past
        stop the engine: a person must fix them.
        """
        def counted(name: str, health: TaskHealth) -> None:
            self.stats.task_restarts[name] = health.restarts
            self.stats.task_errors[name] = health.last_error or ""

        supervisor = Supervisor(stop, on_restart=counted)
        try:
            await supervisor.run_all({
                "charging": lambda: self._every_poll(stop, "charging", self.tick,
                                                     self._drop_tick_conns),
                "commands": lambda: self._every_poll(
                    stop, "commands", self._send_due, lambda: self._drop_conn("_send_conn")),
                "alerts": lambda: self._every_poll(
                    stop, "alerts", self._publish_alerts,
                    lambda: self._drop_conn("_alert_conn")),
                "acks": lambda: self._mqtt_loop(stop),
                "listen": lambda: self._listen(stop),
            }, passthrough=(TariffError,))
        finally:
            for name in ("_tick_conn", "_send_conn", "_alert_conn", "_ack_conn"):
                await asyncio.to_thread(self._drop_conn, name)
            await asyncio.to_thread(self._drop_charge_conns)

    async def _every_poll(self, stop: asyncio.Event, name: str,
                          work: Callable[[], Awaitable[None]], drop: Callable[[], None]) -> None:
        """Do ``work`` when woken (``self._wake[name]``), and at least every poll interval,
        until ``stop``; a database outage drops the task's connections (``drop``) and is
        retried next time. Other errors end the task (its supervisor restarts it)."""
        wake = self._wake[name]
        while not stop.is_set():
            wake.clear()  # a wake-up during the work means one more pass
            fallback = self.config.poll_interval_s
            try:
                await work()
            except psycopg.Error as exc:
                if not is_outage(exc):
                    raise
                self.stats.errors += 1
                log.warning("database unavailable, retrying", extra={"why": str(exc)})
                await asyncio.to_thread(drop)
            else:
                if name == "charging":
                    fallback = min(fallback, self._charging_due_in())
            await _first(stop, wake, fallback)

    def _charging_due_in(self) -> float:
        """Seconds until the charging pass has timed work: a ladder timer running out."""
        if self._next_step is None:
            return float("inf")
        return max(0.0, (self._next_step - datetime.now(UTC)).total_seconds())

    def _wake_up(self, *names: str) -> None:
        for name in names:
            self._wake[name].set()

    async def _listen(self, stop: asyncio.Event) -> None:
        """LISTEN on :data:`meterhub.channels.BILLING_WAKES` and wake the passes that care;
        reconnect when the connection drops, then wake every pass once (the catch-up: what
        was notified meanwhile is still in the tables)."""
        delay = 0.5
        while not stop.is_set():
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.config.database_url, autocommit=True,
                    application_name=self.listener_name)
                async with conn:
                    for channel in channels.BILLING_WAKES:
                        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    self.stats.listening = True
                    self.stats.listen_connects += 1
                    delay = 0.5
                    self._wake_up(*self._wake)
                    await self._notifications(conn, stop)
            except psycopg.Error as exc:
                if not is_outage(exc):
                    raise
                self.stats.errors += 1
                log.warning("notification listener lost, reconnecting",
                            extra={"why": str(exc)})
            finally:
                self.stats.listening = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 10.0)

    async def _notifications(self, conn: psycopg.AsyncConnection[Any],
                             stop: asyncio.Event) -> None:
        """Wake passes as notifications come, until ``stop`` (looked at every second). After
        a fallback interval without any, a query checks that the connection still lives."""
        quiet_since = time.monotonic()
        while not stop.is_set():
            async for note in conn.notifies(timeout=min(1.0, self.config.poll_interval_s)):
                quiet_since = time.monotonic()
                self.stats.wakeups[note.channel] += 1
                self._wake_up("commands" if note.channel == channels.COMMANDS else "charging")
            if time.monotonic() - quiet_since >= self.config.poll_interval_s:
                await conn.execute("SELECT 1")
                quiet_since = time.monotonic()

    def _conn(self, name: str) -> psycopg.Connection[Any]:
        conn = getattr(self, name)
        if conn is None or conn.closed:
            conn = psycopg.connect(self.config.database_url, autocommit=True)
            setattr(self, name, conn)
        return conn

    def _drop_conn(self, name: str) -> None:
        conn = getattr(self, name)
        setattr(self, name, None)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _charging(self, tick: psycopg.Connection[Any]) -> list[psycopg.Connection[Any]]:
        """The tick connection plus ``charge_connections - 1`` more (opened on demand)."""
        self._charge_conns = [c for c in self._charge_conns if not c.closed]
        while len(self._charge_conns) < self.config.charge_connections - 1:
            self._charge_conns.append(psycopg.connect(self.config.database_url,
                                                      autocommit=True))
        return [tick, *self._charge_conns]

    def _drop_tick_conns(self) -> None:
        self._drop_conn("_tick_conn")
        self._drop_charge_conns()

    def _drop_charge_conns(self) -> None:
        conns, self._charge_conns = self._charge_conns, []
        for c in conns:
            with contextlib.suppress(Exception):
                c.close()

    # ------------------------------------------------------------------ the tick

    async def tick(self) -> None:
        """One charging pass: charges, policy, deadlines, now and then reconciliation;
        then wake the sender and the alert publisher if it gave them work."""
        self._wake_up(*await asyncio.to_thread(self._db_tick))
        self.stats.ticks += 1

    def _db_tick(self) -> set[str]:
        """The pass itself (in a worker thread); returns the tasks to wake."""
        wake: set[str] = set()
        cfg, actor = self.config, self.config.engine_id
        conn = self._conn("_tick_conn")
        if not self._tariffs_checked:
            check_history(conn, self.tariffs)
            self._tariffs_checked = True
        charged = charge_parallel(self._charging(conn), self.tariffs,
                                  max_accounts=cfg.batch_accounts, max_batches=50)
        self.stats.intervals_charged += charged.intervals
        self.stats.adjustments += charged.adjustments
        self.stats.intervals_unbilled += charged.unbilled
        now = datetime.now(UTC)
        self.stats.holds_ended += end_expired_holds(conn, now, cfg.knobs, actor)
        if time.monotonic() - self._last_collection >= cfg.collection_interval_s:
            # postpaid: bills of last month, then the ladder (it may make cut-offs due)
            self._last_collection = time.monotonic()
            self.stats.bills_issued += len(issue_due_bills(conn, now, cfg.collection))
            for _ in range(20):
                ladder = run_collection(conn, now, cfg.collection, cfg.batch_accounts)
                self.stats.notices_recorded += ladder.notices
                if ladder.accounts < cfg.batch_accounts:
                    break
        for _ in range(20):
            ev = evaluate_accounts(conn, now, cfg.knobs, actor, limit=cfg.batch_accounts)
            self.stats.alerts_raised += ev.alerts
            self.stats.cutoffs_queued += ev.cutoffs_queued
            self.stats.restores_queued += ev.restores_queued
            if ev.cutoffs_queued or ev.restores_queued:
                wake.add("commands")
            if ev.alerts:
                wake.add("alerts")
            if ev.accounts < cfg.batch_accounts:
                break
        self._next_step = next_ladder_step(conn, now)
        done = handle_deadlines(conn, now, cfg.knobs, actor)
        self.stats.retries += done.get(CommandState.QUEUED, 0)
        mono = time.monotonic()
        if mono - self._last_reconcile >= cfg.reconcile_interval_s:
            self._last_reconcile = mono
            repaired = reconcile(conn, now, cfg.knobs, actor)
            self.stats.reconciled += repaired.queued
            self.stats.tampers += repaired.tampered
            if repaired.queued:
                wake.add("commands")
            synced = queue_time_syncs(conn, now, cfg.clocks, cfg.retry, actor)
            self.stats.time_syncs_queued += synced
            if synced:
                wake.add("commands")
        if done.get(CommandState.QUEUED, 0):
            wake.add("commands")
        return wake

    async def _send_due(self) -> None:
        """Claim due commands and send them (signed, in billing.commands); none while the
        broker is away, so they wait queued rather than fail."""
        link = self._link
        if link is None:
            return
        cfg = self.config
        conn = await asyncio.to_thread(self._conn, "_send_conn")
        due = await asyncio.to_thread(lifecycle.claim_due, conn, datetime.now(UTC), cfg.retry,
                                      cfg.engine_id)
        for out in due:
            try:
                await link.send(out.site, out.gateway, out.command)
                self.stats.commands_sent += 1
            except (commands.MqttError, wire.WireError) as exc:
                await asyncio.to_thread(lifecycle.unsend, conn, out.command.command_id,
                                        cfg.engine_id, str(exc))

    async def _publish_alerts(self) -> None:
        link = self._link
        if link is None:
            return
        conn = await asyncio.to_thread(self._conn, "_alert_conn")
        batch = await asyncio.to_thread(alerts.claim_unpublished, conn, self.config.alerts_site)
        for a in batch:
            try:
                await link.publish_alert(a.site, a.kind, a.meter, a.message, a.data)
                self.stats.alerts_published += 1
            except (commands.MqttError, wire.WireError) as exc:
                log.warning("alert not published", extra={"why": str(exc)})
                await asyncio.to_thread(alerts.unclaim, conn, a.alert_id)

    # ------------------------------------------------------------------ MQTT and acks

    async def _mqtt_loop(self, stop: asyncio.Event) -> None:
        delay = 0.5
        while not stop.is_set():
            try:
                async with commands.CommandLink(self.config.mqtt, self.config.engine_id,
                                                self.signer, self.stats.acks_refused) as link:
                    self._link = link
                    self.stats.mqtt_connected = True
                    delay = 0.5
                    await self._apply_acks_until(stop, link)
            except commands.MqttError as exc:
                log.warning("broker unavailable, reconnecting", extra={"why": str(exc)})
            except psycopg.Error as exc:
                if not is_outage(exc):
                    raise
                self.stats.errors += 1
                log.warning("database unavailable while applying acks", extra={"why": str(exc)})
                await asyncio.to_thread(self._drop_conn, "_ack_conn")
            finally:
                self._link = None
                self.stats.mqtt_connected = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 10.0)

    async def _apply_acks_until(self, stop: asyncio.Event, link: commands.CommandLink) -> None:
        """Apply acks as they come until ``stop`` (the ack stream itself never ends); an
        error applying one propagates."""
        async def consume() -> None:
            async for ack in link.acks():
                await self._on_ack(ack)

        consumer = asyncio.create_task(consume())
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({consumer, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (consumer, stopped):
                task.cancel()
            await asyncio.gather(stopped, return_exceptions=True)
        if consumer.done() and not consumer.cancelled():
            consumer.result()
        else:
            with contextlib.suppress(asyncio.CancelledError):
                await consumer

    async def _on_ack(self, ack: wire.Ack) -> None:
        try:
            result = await asyncio.to_thread(self._apply_ack, ack)
        except Exception as exc:
            if not is_data_error(exc):
                raise  # an outage (the loop reconnects) or a bug (the supervisor restarts)
            self._refuse_ack(ack, "db_data_error", f"{type(exc).__name__}: {exc}")
            return
        if result is None:
            self._refuse_ack(ack, "unknown_command", "no such command")
            return
        if result.refused is not None:
            self._refuse_ack(ack, result.refused, f"{result.action} in state {result.state}")
            return
        if not result.changed:
            return
        if result.state in lifecycle.TERMINAL:
            self._wake_up("commands")  # _apply_ack's repair may have queued one
        self.stats.acks += 1
        if result.state is CommandState.VERIFIED:
            if result.action == "relay_open":
                self.stats.cutoffs_acked += 1
            elif result.action in ("relay_close", "relay_close_permitted"):
                self.stats.restores_acked += 1
            elif result.action == "time_sync":
                self.stats.time_syncs_verified += 1

    def _refuse_ack(self, ack: wire.Ack, reason: str, why: str) -> None:
        """Count and log an ack that changes nothing (ids are checked ASCII by now)."""
        self.stats.acks_refused[reason] += 1
        log.warning("ack ignored", extra={"reason": reason, "command": ack.command_id,
                                          "gateway": ack.gateway, "meter": ack.meter,
                                          "stage": ack.stage, "outcome": ack.outcome,
                                          "why": why[:300]})

    def _apply_ack(self, ack: wire.Ack) -> lifecycle.AckResult | None:
        conn = self._conn("_ack_conn")
        result = lifecycle.apply_ack(conn, ack, self.config.engine_id,
                                     clock_tolerance_s=self.config.clock_sync_tolerance_s)
        if result is not None and result.changed and result.state in lifecycle.TERMINAL:
            # what was wanted may have changed while the command ran (a payment during a
            # cut-off): repair at once rather than at the next reconciliation
            reconcile(conn, datetime.now(UTC), self.config.knobs, self.config.engine_id,
                      meter_id=ack.meter)
        return result


async def _first(stop: asyncio.Event, wake: asyncio.Event, timeout: float) -> None:
    """Return when ``stop`` or ``wake`` is set, or after ``timeout`` seconds."""
    waiters = [asyncio.ensure_future(e.wait()) for e in (stop, wake)]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
