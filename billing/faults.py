"""What a failure means, and the supervisor that keeps the engine's tasks alive.

A database error is either the fault of the message being handled (SQLSTATE classes 22 data
exception, 23 integrity violation, 42 syntax or access rule, and psycopg's own refusals of a
value it cannot send): drop that message and go on; or an outage (08 connection, 57P
operator intervention, 53 insufficient resources): back off and reconnect; anything else is
a bug, which the :class:`Supervisor` logs, counts and recovers from by restarting the task.
A part never runs on with a dead task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping

import psycopg

log = logging.getLogger(__name__)

DATA_CLASSES = ("22", "23", "42")
OUTAGE_CLASSES = ("08", "57P", "53")


def is_data_error(exc: BaseException) -> bool:
    """True when ``exc`` was caused by the values handed to the database, not by it."""
    if isinstance(exc, UnicodeError):
        return True  # psycopg could not encode a parameter (a lone surrogate)
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate or ""
    if state:
        return state[:2] in DATA_CLASSES
    # refused client-side, before the server saw it (a NUL in text): no SQLSTATE
    return isinstance(exc, psycopg.DataError | psycopg.IntegrityError | psycopg.ProgrammingError)


def is_outage(exc: BaseException) -> bool:
    """True when the database is away or refusing work: back off, reconnect, resume."""
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return True
    state = getattr(exc, "sqlstate", None) or ""
    return state.startswith(OUTAGE_CLASSES)


TaskFactory = Callable[[], Awaitable[None]]


class Supervisor:
    """Runs named tasks until ``stop`` is set; a task that fails (or returns early) is logged,
    counted in ``restarts`` and started again after a jittered, doubling backoff.

    Exceptions of the ``fatal`` types are not bugs to ride out but conditions a person must
    fix (tariff files rewriting the past): they stop every task and propagate.
    """

    def __init__(
        self,
        stop: asyncio.Event,
        *,
        fatal: tuple[type[BaseException], ...] = (),
        restarts: Counter[str] | None = None,
        last_errors: dict[str, str] | None = None,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        healthy_after_s: float = 60.0,
    ) -> None:
        self._stop = stop
        self._fatal = fatal
        self.restarts: Counter[str] = Counter() if restarts is None else restarts
        self.last_errors: dict[str, str] = {} if last_errors is None else last_errors
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._healthy_after_s = healthy_after_s  # a run this long resets the backoff

    async def run(self, tasks: Mapping[str, TaskFactory]) -> None:
        """Keep every task running until ``stop``; re-raise a fatal error after cancelling
        the others."""
        runners = [asyncio.create_task(self._keep(name, factory), name=f"billing-{name}")
                   for name, factory in tasks.items()]
        try:
            done, _ = await asyncio.wait(runners, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # a fatal error propagates from here
        finally:
            for task in runners:
                task.cancel()
            for task in runners:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _keep(self, name: str, factory: TaskFactory) -> None:
        delay = self._backoff_s
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                await factory()
            except self._fatal:
                raise
            except Exception as exc:
                self.last_errors[name] = f"{type(exc).__name__}: {exc}"[:500]
                log.exception("billing task failed; restarting it",
                              extra={"task": name, "in_s": round(delay, 2)})
            else:
                if self._stop.is_set():
                    return
                self.last_errors[name] = "returned while the engine runs"
                log.error("billing task ended on its own; restarting it", extra={"task": name})
            self.restarts[name] += 1
            if time.monotonic() - started >= self._healthy_after_s:
                delay = self._backoff_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self._max_backoff_s)
