"""The delivery service: due notices in, messages out, evidence back to billing.

One pass: ask billing for the due notices (``billing.due_notices``), plan a job per notice
for the customer and each interested webhook, claim due jobs, send them concurrently under
each channel's rate, and record each attempt (``notify_attempts``) and its evidence on the
notice (``billing.record_evidence``: ``delivered`` closes it). The customer's job walks
their channels, preferred first: an error worth retrying is retried on the same channel
with backoff (doubling, at most an hour) up to ``max_attempts``; a dead contact is listed
for staff (``billing.mark_undeliverable``) and the next channel is tried at once. When no
channel is left the job is given up and the notice stays open for staff to deliver by hand
(``posted``). Outside ``required`` notices, quiet hours defer a message to their end and a
contact gets at most ``per_contact_per_hour`` messages an hour.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

import aiohttp
import psycopg
from psycopg_pool import ConnectionPool

from billing import (
    Customer,
    customer_of_account,
    due_notices,
    mark_undeliverable,
    record_evidence,
)
from meterhub.dbfaults import is_outage
from meterhub.supervise import Supervisor, safe_text
from notify import queue
from notify.channels.base import DeliveryError, Message, RateLimit, Sent
from notify.channels.email import EmailChannel
from notify.channels.sms import SmsChannel
from notify.channels.webhook import WebhookTarget, post_event
from notify.channels.wechat import WechatChannel
from notify.config import NotifyConfig
from notify.queue import Job
from notify.templates import TemplateError

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_BACKOFF_S = 3600.0


class Channel(Protocol):
    name: str

    async def send(self, to: str, message: Message) -> Sent: ...


@dataclass
class NotifyStats:
    planned: int = 0
    delivered: int = 0
    webhooks_sent: int = 0
    retries: int = 0
    dead_contacts: int = 0
    given_up: int = 0
    deferred: int = 0
    task_restarts: dict[str, int] = field(default_factory=dict)


class NotifyService:
    def __init__(
        self,
        config: NotifyConfig,
        database_url: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.database_url = database_url
        self.clock = clock
        self.stats = NotifyStats()
        self._pool = ConnectionPool(
            database_url, min_size=1, max_size=4, open=False, kwargs={"autocommit": True}
        )
        self._http: aiohttp.ClientSession | None = None
        self._channels: dict[str, Channel] = {}
        self._rates = {name: RateLimit(rate) for name, rate in config.rates.items()}
        self._webhooks = {w.name: w for w in config.webhooks}
        # one message at a time per contact within a pass, so the hourly limit is counted
        # after the previous message was recorded (per process; see the README)
        self._contact_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def __aenter__(self) -> NotifyService:
        await asyncio.to_thread(self._pool.open, wait=True, timeout=15)
        self._http = aiohttp.ClientSession()
        cfg = self.config
        if cfg.email:
            self._channels["email"] = EmailChannel(cfg.email)
        if cfg.sms:
            self._channels["sms"] = SmsChannel(cfg.sms, self._http)
        if cfg.wechat:
            self._channels["wechat"] = WechatChannel(cfg.wechat, self._http)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.close()
        await asyncio.to_thread(self._pool.close)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; the loop runs supervised (a failure is logged,
        counted and the loop restarted with backoff; a database outage just waits)."""

        def counted(name: str, health: Any) -> None:
            self.stats.task_restarts[name] = health.restarts

        async with self:
            await Supervisor(stop, on_restart=counted).run_all(
                {"deliver": lambda: self._loop(stop)}
            )

    async def _loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                busy = await self.pass_once()
            except psycopg.Error as exc:
                if not is_outage(exc):
                    raise
                log.warning("database unavailable; delivery waits", extra={"why": str(exc)})
                busy = False
            if not busy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.config.poll_s)

    async def _db(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        def work() -> T:
            with self._pool.connection() as conn:
                return fn(conn, *args, **kw)

        return await asyncio.to_thread(work)

    async def pass_once(self) -> bool:
        """Plan and send what is due now; True when it sent a full batch (more may wait)."""
        now = self.clock()
        self._contact_locks.clear()
        self.stats.planned += await self._db(self._plan, now)
        jobs = await self._db(queue.claim, now, self.config.batch, self.config.lease_s)
        await asyncio.gather(*(self._deliver(job) for job in jobs))
        return len(jobs) >= self.config.batch

    def _plan(self, conn: psycopg.Connection[Any], now: datetime) -> int:
        limit = min(10_000, self.config.batch + queue.open_jobs(conn))
        due = due_notices(conn, now=now, limit=limit)
        planned = queue.plan(conn, due, [(w.name, w.kinds) for w in self.config.webhooks], now)
        if len(due) < limit:  # the whole list: a pending job not on it is moot
            queue.drop_closed(conn, [n.notice_id for n in due], now)
        return planned

    # ----------------------------------------------------------------------- one job

    async def _deliver(self, job: Job) -> None:
        try:
            if job.webhook is not None:
                await self._deliver_webhook(job, self._webhooks.get(job.webhook))
            else:
                await self._deliver_customer(job)
        except psycopg.Error:
            raise
        except Exception as exc:  # a bug must not leave the job leased forever unexplained
            log.exception("delivery failed unexpectedly", extra={"notice": job.notice_id})
            await self._db(queue.update, job, last_error=safe_text(f"internal: {exc}"))

    async def _deliver_webhook(self, job: Job, target: WebhookTarget | None) -> None:
        now = self.clock()
        if target is None:
            await self._db(
                queue.update,
                job,
                state="given_up",
                finished_at=now,
                last_error="webhook no longer configured",
            )
            return
        event = {"notice_id": job.notice_id, **job.notice}
        await self._rate("webhook")
        try:
            sent = await post_event(self._require_http(), target, event)
        except DeliveryError as exc:
            await self._failed(job, "webhook", target.name, exc, next_channel=False)
            return
        await self._db(self._succeeded, job, "webhook", target.name, sent, "sent")
        self.stats.webhooks_sent += 1

    async def _deliver_customer(self, job: Job) -> None:
        customer = await self._db(customer_of_account, job.notice["account_id"])
        kind = job.notice["kind"]
        channels = (
            []
            if customer is None
            else [c for c in customer.channels() if c in self._channels and self._carries(c, kind)]
        )
        if job.channel_index >= len(channels):
            why = (
                "no customer is linked to the account"
                if customer is None
                else f"no channel left (contacts dead or not configured for {kind} notices)"
            )
            await self._db(self._give_up, job, why)
            return
        assert customer is not None
        channel = channels[job.channel_index]
        contact = customer.contact(channel) or ""
        async with self._contact_locks[contact]:
            await self._send_to_customer(job, customer, channel, contact)

    async def _send_to_customer(
        self, job: Job, customer: Customer, channel: str, contact: str
    ) -> None:
        now = self.clock()
        if not job.required and (later := await self._db(self._not_now, contact, now)):
            await self._db(queue.update, job, next_attempt_at=later)
            self.stats.deferred += 1
            return
        message = _message(job, customer)
        await self._rate(channel)
        try:
            sent = await self._channels[channel].send(contact, message)
        except TemplateError as exc:
            await self._failed(job, channel, contact, DeliveryError(str(exc), retry=False))
            return
        except DeliveryError as exc:
            if exc.dead_contact:
                await self._db(
                    mark_undeliverable, customer.customer_id, channel, contact, exc.reason, at=now
                )
                self.stats.dead_contacts += 1
            await self._failed(job, channel, contact, exc)
            return
        await self._db(self._succeeded, job, channel, contact, sent, "delivered")
        self.stats.delivered += 1

    def _carries(self, channel: str, kind: str) -> bool:
        carries = getattr(self._channels[channel], "carries", None)
        return carries is None or bool(carries(kind))

    def _not_now(
        self, conn: psycopg.Connection[Any], contact: str, now: datetime
    ) -> datetime | None:
        """When a non-required message to ``contact`` may go, if not now."""
        quiet = self.config.quiet
        if quiet is not None and quiet.contains(now):
            return quiet.ends_after(now)
        hour = timedelta(hours=1)
        count, oldest = queue.recent_to(conn, contact, now - hour)
        if count >= self.config.per_contact_per_hour and oldest is not None:
            return oldest + hour
        return None

    async def _rate(self, channel: str) -> None:
        limit = self._rates.get(channel)
        if limit is not None:
            await limit.acquire()

    def _require_http(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise RuntimeError("NotifyService used outside 'async with'")
        return self._http

    # ----------------------------------------------------------------------- outcomes

    def _succeeded(
        self,
        conn: psycopg.Connection[Any],
        job: Job,
        channel: str,
        contact: str,
        sent: Sent,
        outcome: str,
    ) -> None:
        now = self.clock()
        with conn.transaction():
            queue.attempt(conn, job, channel, contact, now, "ok", sent.provider_id, sent.detail)
            queue.update(
                conn,
                job,
                state="done",
                finished_at=now,
                channel=channel,
                provider_id=sent.provider_id,
                last_error=None,
            )
            record_evidence(
                conn,
                job.notice_id,
                at=now,
                channel=channel,
                outcome=outcome,
                provider_ref=sent.provider_id,
                detail=sent.detail,
            )

    async def _failed(
        self, job: Job, channel: str, contact: str, exc: DeliveryError, *, next_channel: bool = True
    ) -> None:
        now = self.clock()
        attempts = job.attempts + 1
        if exc.retry and attempts < self.config.max_attempts:
            delay = min(MAX_BACKOFF_S, self.config.retry_backoff_s * 2 ** (attempts - 1))
            sets = {"attempts": attempts, "next_attempt_at": now + timedelta(seconds=delay)}
            outcome, evidence = "retry", "failed"
            self.stats.retries += 1
        elif next_channel:
            sets = {"attempts": 0, "channel_index": job.channel_index + 1, "next_attempt_at": now}
            outcome = "dead_contact" if exc.dead_contact else "failed"
            evidence = "refused" if exc.dead_contact else "failed"
        else:
            sets = {"state": "given_up", "finished_at": now}
            outcome, evidence = "failed", "failed"
            self.stats.given_up += 1
        log.warning(
            "delivery failed",
            extra={"notice": job.notice_id, "channel": channel, "why": exc.reason, "next": outcome},
        )
        reason = safe_text(exc.reason)

        def write(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                queue.attempt(conn, job, channel, contact, now, outcome, None, reason)
                queue.update(conn, job, last_error=reason, **sets)
                record_evidence(
                    conn,
                    job.notice_id,
                    at=now,
                    channel="webhook" if job.webhook else channel,
                    outcome=evidence,
                    detail=reason,
                )

        await self._db(write)

    def _give_up(self, conn: psycopg.Connection[Any], job: Job, why: str) -> None:
        now = self.clock()
        with conn.transaction():
            queue.update(conn, job, state="given_up", finished_at=now, last_error=why)
            record_evidence(
                conn,
                job.notice_id,
                at=now,
                channel="none",
                outcome="failed",
                detail=f"{why}; staff must deliver it by hand",
            )
        self.stats.given_up += 1
        log.warning("notice undeliverable", extra={"notice": job.notice_id, "why": why})


def _message(job: Job, customer: Customer) -> Message:
    n = job.notice
    text = n["texts"].get(customer.language) or n["texts"]["zh-CN"]
    return Message(
        notice_id=job.notice_id,
        account_id=n["account_id"],
        kind=n["kind"],
        required=job.required,
        language=customer.language,
        subject=text["subject"],
        body=text["body"],
        params=dict(n["params"]),
    )
