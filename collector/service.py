"""The collector process: MQTT in, COPY batches out, ack after commit, validation alongside.

Ordering of a batch's life: messages arrive (unacked) -> parsed into rows -> one transaction
(COPY + conflict-safe insert + bookkeeping) -> commit -> ack every message in the batch.
A database outage leaves the batch unacked in memory and retries with backoff; the broker
stops sending once Receive Maximum messages are unacked, so memory stays bounded. A crash at
any point makes the broker redeliver; the (meter, ts) key makes that harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
from prometheus_client import Histogram

from collector import dead_letters, ownership, parse, store, vee
from collector._mqtt import Consumer, Message
from collector.config import CollectorConfig
from collector.store import Batch
from meterhub import db, dbfaults, wire
from meterhub.metrics import LATENCY_BUCKETS_S
from meterhub.supervise import Supervisor, TaskHealth

log = logging.getLogger(__name__)


@dataclass(slots=True)
class CollectorStats:
    messages: int = 0  # messages committed (readings, events, status)
    readings_received: int = 0  # good readings parsed, duplicates included
    readings_stored: int = 0  # (meter, taken_at) pairs newly stored
    values_stored: int = 0  # rows newly stored in `readings`
    dead_letters: int = 0
    dead_letters_by_code: dict[str, int] = field(default_factory=dict)
    dead_letters_pruned: int = 0
    duplicate_batches: int = 0
    batches_committed: int = 0
    receipts_sent: int = 0  # receipt messages published (one per gateway and commit)
    db_errors: int = 0  # every failed write, both kinds
    db_data_errors: int = 0  # ... the database refused the data: dead-lettered, acked
    validation_runs: int = 0
    intervals_written: int = 0
    last_commit_at: datetime | None = None
    commit_latencies_s: list[float] = field(default_factory=list)  # arrival -> commit, sampled
    task_restarts: dict[str, int] = field(default_factory=dict)  # supervised task -> restarts
    task_last_error: dict[str, str] = field(default_factory=dict)
    commit_latency: Histogram = field(default_factory=lambda: Histogram(
        "meterhub_collector_commit_latency_seconds",
        "Message arrival at the collector to its batch's commit",
        buckets=LATENCY_BUCKETS_S, registry=None))


class Collector:
    """One collector instance; several may share a subscription group."""

    def __init__(self, config: CollectorConfig) -> None:
        self.config = config
        self.stats = CollectorStats()
        # Called after a batch commits and before its messages are acked (tests kill the
        # process here to prove redelivery loses nothing and stores nothing twice).
        self.on_commit: Callable[[Batch], None] | None = None
        self._conn: psycopg.AsyncConnection | None = None
        self._months: set[tuple[int, int]] = set()
        self.ready = asyncio.Event()  # set while subscribed to the broker
        self._writing = False
        self._policy = store.WritePolicy(
            dead_letter_keep_bytes=config.dead_letter_keep_bytes,
            dead_letter_prefix_bytes=config.dead_letter_prefix_bytes,
            late_after_s=config.validation.late_after_s,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, then commit and ack what was received, and return.

        Every long-running task runs under a :class:`meterhub.supervise.Supervisor`: one that
        fails is logged, counted in ``stats.task_restarts`` and started again with backoff,
        so the collector never runs on with a dead task."""
        if self.config.migrate:
            await asyncio.to_thread(db.migrate, self.config.database_url)

        def counted(name: str, health: TaskHealth) -> None:
            self.stats.task_restarts[name] = health.restarts
            self.stats.task_last_error[name] = health.last_error or ""

        supervisor = Supervisor(stop, on_restart=counted)
        helpers = [supervisor.spawn("dead_letter_prune", lambda: self._prune_loop(stop))]
        if self.config.validate_every_s:
            helpers.append(supervisor.spawn("validation", lambda: self._validate_loop(stop)))
        try:
            await supervisor.run("ingest", lambda: self._consume(stop))
        finally:
            for task in helpers:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    await self._conn.close()
                self._conn = None

    async def _consume(self, stop: asyncio.Event) -> None:
        """One broker session's worth of ingest. After a failure the session is resumed (not
        ended), so the broker hands back every message this run had not acknowledged."""
        consumer = Consumer(self.config, asyncio.get_running_loop(), self.ready)
        consumer.start()
        clean = False
        try:
            await self._ingest(consumer, stop)
            clean = True
        finally:
            consumer.stop(leave=None if clean else False)

    async def replay(self, letters: Sequence[tuple[str, bytes]]) -> store.WriteResult:
        """Feed stored payloads (topic, payload) through the normal parse and store path
        again, in one transaction: after a fix, what was refused may now be taken (what is
        still refused becomes a new dead letter). No broker is involved."""
        loop = asyncio.get_running_loop()
        batch = Batch()
        for topic, payload in letters:
            self._add(batch, Message(topic, payload, 0, 0, loop.time()), loop.time())
        try:
            result = await self._write(batch)
        finally:
            await self._drop_connection()
        self._count(batch, result)
        return result

    async def _prune_loop(self, stop: asyncio.Event) -> None:
        cfg = self.config
        while not stop.is_set():
            try:
                gone = await asyncio.to_thread(self._prune_once)
                if gone:
                    log.info("dead letters: pruned %d (age / total size limits)", gone)
            except psycopg.OperationalError as exc:
                log.warning("dead-letter prune failed (database): %s", exc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=cfg.dead_letter_prune_every_s)

    def _prune_once(self) -> int:
        cfg = self.config
        with psycopg.connect(cfg.database_url, connect_timeout=5, autocommit=True) as conn:
            gone = dead_letters.prune(conn, cfg.dead_letter_max_age_days * 86400,
                                      cfg.dead_letter_max_total_bytes)
        self.stats.dead_letters_pruned += gone
        return gone

    # ------------------------------------------------------------------ ingest loop

    async def _ingest(self, consumer: Consumer, stop: asyncio.Event) -> None:
        """Build batches while the previous one is being written (parsing overlaps the
        database's work); a batch goes out when full, when old, or as soon as the writer is
        idle and nothing more is waiting, so light load gets low latency and heavy load gets
        big COPYs."""
        loop = asyncio.get_running_loop()
        cfg = self.config
        queue = consumer.queue
        outbox: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=1)
        writer = asyncio.create_task(self._writer(consumer, outbox, stop))
        batch = Batch()
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while True:
                while batch.readings < cfg.batch_max_readings:
                    try:
                        msg = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        break
                    self._add(batch, msg, loop.time())
                    # let the writer's database round trips through between two messages:
                    # else each of them waits behind a whole batch of parsing
                    await asyncio.sleep(0)
                if writer.done():
                    writer.result()  # a writer that died: raised to the supervisor
                    return
                if batch.messages:
                    age = loop.time() - batch.first_at
                    idle = outbox.empty() and not self._writing and queue.empty()
                    if (batch.readings >= cfg.batch_max_readings or age >= cfg.batch_max_delay_s
                            or (idle and age >= cfg.batch_linger_s) or stop.is_set()):
                        await outbox.put(batch)
                        batch = Batch()
                        continue
                if stop.is_set():
                    await outbox.put(None)
                    await writer
                    return
                wait = (max(cfg.batch_linger_s - (loop.time() - batch.first_at), 0.002)
                        if batch.messages else 0.5)
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait(
                    {getter, stopping, writer}, timeout=wait, return_when=asyncio.FIRST_COMPLETED,
                )
                if getter in done:
                    self._add(batch, getter.result(), loop.time())
                else:
                    getter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await getter
        finally:
            stopping.cancel()
            if not writer.done():
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer

    async def _writer(self, consumer: Consumer, outbox: asyncio.Queue[Batch | None],
                      stop: asyncio.Event) -> None:
        while (batch := await outbox.get()) is not None:
            self._writing = True
            try:
                await self._flush(consumer, batch, stop)
            finally:
                self._writing = False

    def _add(self, batch: Batch, msg: Message, now: float) -> None:
        if not batch.messages:
            batch.first_at = now
        batch.messages += 1
        batch.acks.append((msg.mid, msg.qos))
        batch.items.append(msg)
        batch.publish_times.append(msg.arrived)
        try:
            self._parse_into(batch, msg)
        except Exception as exc:  # a decoder bug must not stop ingestion: dead-letter, go on
            log.exception("decoding a message on %s failed", msg.topic)
            batch.dead.append(parse.refused(msg.topic, msg.payload, exc, "decoder_crash"))

    def _parse_into(self, batch: Batch, msg: Message) -> None:
        received = datetime.now(UTC)
        kind = msg.topic.rsplit("/", 1)[-1]
        limits = self.config.limits
        if kind == "readings":
            batch.add_readings(parse.parse_readings(
                msg.topic, msg.payload, received, max_future_s=self.config.max_future_s,
                max_age_s=self.config.max_age_s, limits=limits,
            ))
        elif kind == "status":
            status = parse.parse_status(msg.topic, msg.payload, limits)
            if isinstance(status, parse.DeadLetter):
                batch.dead.append(status)
            else:
                batch.statuses.append(status)
        elif kind == "events":
            parsed = parse.parse_events(msg.topic, msg.payload, limits)
            if isinstance(parsed, parse.DeadLetter):
                batch.dead.append(parsed)
            else:
                site, gateway, events = parsed
                batch.events.extend((site, gateway, e) for e in events)
        else:
            batch.dead.append(parse.refused(
                msg.topic, msg.payload,
                ValueError(f"topic {msg.topic[:200]!r} is not one the collector reads"),
                "not_collected",
            ))

    async def _flush(self, consumer: Consumer, batch: Batch, stop: asyncio.Event) -> None:
        """Commit the batch, then ack it. The database's refusal is sorted by SQLSTATE
        (:func:`meterhub.dbfaults.is_data_error`): data it refused is dead-lettered and
        acked, so one poison message never stalls ingestion; an outage keeps the messages
        unacked and retries with backoff until the database is back."""
        delay = 0.2
        gave_up_at = None
        while True:
            try:
                result = await self._write(batch)
                break
            except psycopg.Error as exc:
                self.stats.db_errors += 1
                await self._drop_connection()
                if dbfaults.is_data_error(exc):
                    self.stats.db_data_errors += 1
                    if batch.messages > 1:  # find the message(s) responsible, keep the rest
                        await self._flush_one_by_one(consumer, batch, stop)
                        return
                    if batch.rejected:
                        # Not even its raw bytes could be stored: say so loudly and let it
                        # go, or the broker would hand it back to us forever.
                        log.error("message on %s refused by the database even as a dead "
                                  "letter: %s", batch.items[0].topic if batch.items else "?",
                                  exc)
                        result = store.WriteResult(0, 0, 0, 0)
                        break
                    batch = self._as_dead(batch, exc)
                    continue
                if stop.is_set():
                    # Shutting down with the database away: leave the messages unacked; the
                    # broker hands them to the next collector (or us, after a restart).
                    gave_up_at = gave_up_at or time.monotonic()
                    if time.monotonic() - gave_up_at > 3 * self.config.db_retry_max_s:
                        log.error("database unreachable at shutdown; %d messages left unacked"
                                  " for redelivery", batch.messages)
                        return
                log.warning("database unavailable (SQLSTATE %s), retrying in %.1f s: %s",
                            exc.sqlstate, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.db_retry_max_s)
        if self.on_commit is not None:
            self.on_commit(batch)
        if self.config.receipts:
            self._send_receipts(consumer, batch)
        for mid, qos in batch.acks:
            consumer.ack(mid, qos)
        self._count(batch, result)

    async def _flush_one_by_one(self, consumer: Consumer, batch: Batch,
                                stop: asyncio.Event) -> None:
        now = asyncio.get_running_loop().time()
        for msg in batch.items:
            single = Batch()
            self._add(single, msg, now)
            await self._flush(consumer, single, stop)

    def _send_receipts(self, consumer: Consumer, batch: Batch) -> None:
        """Tell each gateway which of its batches are committed (stored, duplicates, or
        dead-lettered for good), so it may drop them and not send them again (issue 12)."""
        seqs: dict[tuple[str, str], list[int]] = {}
        for seen in batch.batches:
            seqs.setdefault((seen.site, seen.gateway), []).append(seen.seq)
        for d in batch.dead:
            if not d.whole_message or not d.topic.endswith("/readings"):
                continue
            try:
                site, gateway, _ = wire.parse_topic(d.topic)
            except wire.WireError:
                continue
            identity = wire.batch_identity(d.payload, self.config.limits)
            if identity is not None and identity[0] == gateway:  # never for a forged name
                seqs.setdefault((site, gateway), []).append(identity[1])
        at = datetime.now(UTC)
        for (site, gateway), numbers in sorted(seqs.items()):
            consumer.publish(wire.topic(site, gateway, "receipt"),
                             wire.encode_receipt(gateway, site, wire.seq_ranges(numbers), at))
            self.stats.receipts_sent += 1

    @staticmethod
    def _as_dead(batch: Batch, exc: psycopg.Error) -> Batch:
        dead = Batch(messages=batch.messages, acks=batch.acks, items=batch.items,
                     publish_times=batch.publish_times, first_at=batch.first_at, rejected=True)
        reason = ValueError(f"refused by the database (SQLSTATE {exc.sqlstate}): {exc}")
        dead.dead.extend(parse.refused(msg.topic, msg.payload, reason, "db_refused")
                         for msg in batch.items)
        return dead

    def _count(self, batch: Batch, result: store.WriteResult) -> None:
        s = self.stats
        s.messages += batch.messages
        s.readings_received += batch.readings
        s.readings_stored += result.readings_stored
        s.values_stored += result.values_stored
        s.dead_letters += result.dead_letters
        for d in batch.dead:
            s.dead_letters_by_code[d.code] = s.dead_letters_by_code.get(d.code, 0) + 1
        s.duplicate_batches += result.duplicate_batches
        s.batches_committed += 1
        s.last_commit_at = datetime.now(UTC)
        now = asyncio.get_running_loop().time()
        latencies = [now - t for t in batch.publish_times]
        for seconds in latencies:
            s.commit_latency.observe(seconds)
        if len(s.commit_latencies_s) < 200_000:
            s.commit_latencies_s.extend(latencies)

    async def _connection(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed:
            conn = await psycopg.AsyncConnection.connect(
                self.config.database_url, connect_timeout=5, autocommit=True
            )  # autocommit: `transaction()` blocks are then real transactions, not savepoints
            await store.prepare(conn)
            self._conn = conn
        return self._conn

    async def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
        self._conn = None

    async def _write(self, batch: Batch) -> store.WriteResult:
        conn = await self._connection()
        if len(batch.cols):
            await self._ensure_months(conn, batch)
            await ownership.sort(conn, batch, datetime.now(UTC),
                                 commission_unknown=self.config.commission_unknown_meters,
                                 known_only=self.config.known_meters_only)
        return await store.write(conn, batch, datetime.now(UTC), self._policy)

    async def _ensure_months(self, conn: psycopg.AsyncConnection, batch: Batch) -> None:
        known = self._months
        for key in sorted(batch.months - known):  # each month on its own: no range between
            ts = datetime(key[0], key[1], 1, tzinfo=UTC)
            await store.ensure_partitions(conn, ts, ts)
            known.add(key)

    # ------------------------------------------------------------------ validation loop

    async def _validate_loop(self, stop: asyncio.Event) -> None:
        cfg = self.config
        period = cfg.validate_every_s or 5.0
        next_retention = 0.0
        while not stop.is_set():
            if cfg.retention_days and time.monotonic() >= next_retention:
                next_retention = time.monotonic() + 3600
                try:
                    dropped = await asyncio.to_thread(
                        vee.drop_old_readings, cfg.database_url, cfg.retention_days
                    )
                    if dropped:
                        log.info("retention: dropped %d month(s) of raw readings", dropped)
                except psycopg.Error as exc:
                    log.warning("retention pass failed: %s", exc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=period)
            try:
                written = await asyncio.to_thread(
                    vee.run_pending, cfg.database_url, cfg.interval_s, cfg.validation
                )
                self.stats.validation_runs += 1
                self.stats.intervals_written += written
            except psycopg.OperationalError as exc:
                log.warning("validation pass failed (database): %s", exc)
            except Exception:
                log.exception("validation pass failed")
