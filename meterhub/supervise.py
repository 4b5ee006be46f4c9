"""Supervised tasks: a part never runs on with a dead task.

Every long-running task of the gateway, the collector and billing runs under a
:class:`Supervisor`: an exception is logged, counted and the task started again after a
jittered back-off (0.5 s doubling to 30 s, reset once the task has run a minute). With a
``stop`` event, a task that returns while ``stop`` is not set is a failure too, and setting
``stop`` ends the back-off at once. :meth:`Supervisor.as_dict` is what status pages report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

HEALTHY_AFTER_S = 60.0  # a task that ran this long before failing starts over at the minimum

TaskFactory = Callable[[], Awaitable[None]]


def safe_text(text: str, limit: int = 300) -> str:
    """``text`` fit for a log line, an ack or an event: lone surrogates and other unencodable
    characters escaped (they would break UTF-8 encoding), at most ``limit`` characters."""
    clean = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


@dataclass
class TaskHealth:
    restarts: int = 0
    last_error: str | None = None


class Supervisor:
    """Runs named tasks and restarts the ones that fail.

    ``stop``: when given, tasks are meant to run until it is set. ``on_restart(name, health)``
    lets a part mirror the counts into its own stats. Exceptions of the types a task is
    started with as ``passthrough`` are not failures but its caller's business (a lost broker
    the session loop handles, tariff files a person must fix): they propagate.
    """

    def __init__(
        self,
        stop: asyncio.Event | None = None,
        *,
        backoff_min_s: float = 0.5,
        backoff_max_s: float = 30.0,
        on_restart: Callable[[str, TaskHealth], None] | None = None,
    ) -> None:
        self.stop = stop
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.tasks: dict[str, TaskHealth] = {}
        self._on_restart = on_restart

    def spawn(self, name: str, factory: TaskFactory, *,
              passthrough: tuple[type[BaseException], ...] = ()) -> asyncio.Task[None]:
        """Start ``factory()`` as a supervised task named ``name``."""
        return asyncio.create_task(self.run(name, factory, passthrough=passthrough), name=name)

    async def run(self, name: str, factory: TaskFactory, *,
                  passthrough: tuple[type[BaseException], ...] = ()) -> None:
        """Await ``factory()`` until it is done (returns, or ``stop`` is set); restart it when
        it fails."""
        health = self.tasks.setdefault(name, TaskHealth())
        delay = self.backoff_min_s
        while True:
            started = time.monotonic()
            try:
                await factory()
                if self.stop is None or self.stop.is_set():
                    return
                error = "returned while it should run"
                log.error("task %s ended on its own; restarting it", name)
            except passthrough:
                raise
            except Exception as exc:
                if self.stop is not None and self.stop.is_set():
                    log.exception("task %s failed while stopping", name)
                    return
                error = f"{type(exc).__name__}: {exc}"
                log.exception("task %s failed (restart %d)", name, health.restarts + 1)
            health.restarts += 1
            health.last_error = safe_text(error)
            if self._on_restart is not None:
                self._on_restart(name, health)
            if time.monotonic() - started > HEALTHY_AFTER_S:
                delay = self.backoff_min_s
            if await self._stopped_within(delay * random.uniform(0.5, 1.0)):
                return
            delay = min(delay * 2, self.backoff_max_s)

    async def run_all(self, tasks: Mapping[str, TaskFactory], *,
                      passthrough: tuple[type[BaseException], ...] = ()) -> None:
        """Run every task until each is done; a ``passthrough`` error from one cancels the
        others and propagates."""
        runners = [self.spawn(name, factory, passthrough=passthrough)
                   for name, factory in tasks.items()]
        try:
            done, _ = await asyncio.wait(runners, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in runners:
                task.cancel()
            for task in runners:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _stopped_within(self, seconds: float) -> bool:
        if self.stop is None:
            await asyncio.sleep(seconds)
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)
        return self.stop.is_set()

    def as_dict(self) -> dict[str, Any]:
        return {name: {"restarts": h.restarts, "last_error": h.last_error}
                for name, h in sorted(self.tasks.items())}


def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop)`` in a new event loop; SIGINT and SIGTERM set ``stop`` (an orderly
    end, as the part's ``run`` commands promise)."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(runner())
