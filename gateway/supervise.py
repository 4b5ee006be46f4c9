"""Supervised tasks: a part never runs on with a dead task.

Every long-running task of the gateway (bus workers, the batcher, the MQTT loop and, inside a
session, the sender, the command server and the status loop) runs under a
:class:`Supervisor`: an exception is logged, counted, and the task started again after a
jittered back-off (0.5 s doubling to 30 s, reset once the task has run a minute). The counts
go into the gateway's status as ``tasks: {name: {restarts, last_error}}``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

HEALTHY_AFTER_S = 60.0  # a task that ran this long before failing starts over at the minimum


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
    """Runs tasks and restarts the ones that fail; :meth:`as_dict` reports them."""

    def __init__(self, *, backoff_min_s: float = 0.5, backoff_max_s: float = 30.0) -> None:
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.tasks: dict[str, TaskHealth] = {}

    def spawn(self, name: str, factory: Callable[[], Awaitable[None]], *,
              passthrough: tuple[type[BaseException], ...] = ()) -> asyncio.Task[None]:
        """Start ``factory()`` as a supervised task named ``name``."""
        return asyncio.create_task(self.run(name, factory, passthrough=passthrough), name=name)

    async def run(self, name: str, factory: Callable[[], Awaitable[None]], *,
                  passthrough: tuple[type[BaseException], ...] = ()) -> None:
        """Await ``factory()`` until it returns; restart it when it raises, except for the
        ``passthrough`` exceptions (e.g. a lost broker, which its caller handles)."""
        health = self.tasks.setdefault(name, TaskHealth())
        delay = self.backoff_min_s
        while True:
            started = time.monotonic()
            try:
                await factory()
                return
            except passthrough:
                raise
            except Exception as exc:
                health.restarts += 1
                health.last_error = safe_text(f"{type(exc).__name__}: {exc}")
                log.exception("task %s failed (restart %d)", name, health.restarts)
            if time.monotonic() - started > HEALTHY_AFTER_S:
                delay = self.backoff_min_s
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.backoff_max_s)

    def as_dict(self) -> dict[str, Any]:
        return {name: {"restarts": h.restarts, "last_error": h.last_error}
                for name, h in sorted(self.tasks.items())}
