"""The command executor: commands down the ``cmd`` topic, onto the bus, acks back.

Only signed commands run. Each payload is verified against the trusted keys
(``[security] trusted_keys``, :func:`meterhub.wire.decode_command`): unsigned, forged, unknown
key, another gateway's, expired or dated too far ahead are refused, as is a replay (its signed
nonce was seen before: :class:`~meterhub.security.SqliteReplayGuard` in the gateway's SQLite
file, kept until the command expires, so a restart does not reopen the window). A refusal is
acked "done"/"rejected" (or "invalid" for a payload that is not a command) to whoever the
payload names, and raised as a ``security_refused`` event; it never reaches a bus.

A verified command is remembered by ``command_id`` (a repeated id, e.g. billing's retry signed
anew, gets the first result again without touching the meter), jumps the queue of its bus and
is acked "accepted" and then "done". Acks and events leave through the publisher's queues (the
``ack`` and ``event`` callables), so they share its ordering and its reconnects.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt

from gateway.config import BusConfig, GatewayConfig, MeterConfig
from gateway.drivers.base import Driver, DriverError, MeterRejected, NoAnswer
from gateway.scheduler import BusWorker
from gateway.stats import GatewayStats
from gateway.store import Store
from meterhub import wire
from meterhub.security import RefusalReason, SignatureRefused, SqliteReplayGuard
from meterhub.supervise import safe_text
from meterhub.wire import Ack, Command, Event, RelayState

log = logging.getLogger(__name__)

COMMAND_MEMORY_S = 7 * 86400.0  # how long a command id is remembered for idempotency

_ID = re.compile(wire.ID_PATTERN)
_EXPECTED_RELAY: dict[str, RelayState] = {"relay_open": "open", "relay_close": "closed"}
_RELAY_ACTIONS = ("relay_open", "relay_close", "relay_close_permitted")


class CommandExecutor:
    """Runs the commands addressed to one gateway on the bus workers of its meters."""

    def __init__(
        self,
        config: GatewayConfig,
        store: Store,
        stats: GatewayStats,
        workers: Mapping[str, BusWorker],
        *,
        ack: Callable[[Ack | bytes], None],
        event: Callable[[Event], None],
    ) -> None:
        self.config = config
        self.store = store
        self.stats = stats
        self.workers = workers
        self._ack = ack
        self._event = event
        self._meters: dict[str, tuple[BusConfig, MeterConfig]] = config.meters()
        self._topic = wire.topic(config.site, config.gateway_id, "cmd")
        self._keyring = config.security.keyring()
        self._max_future_skew = timedelta(seconds=config.security.max_future_skew_s)
        # seen nonces live next to the buffer, in the gateway's own SQLite file
        self._replay = SqliteReplayGuard(store.path)
        if not self._keyring:
            log.error("gateway %s trusts no command keys ([security] trusted_keys is empty): "
                      "EVERY relay command will be refused", config.gateway_id)
        self._running: set[str] = set()
        self.tasks: set[asyncio.Task[None]] = set()  # commands in flight

    def close(self) -> None:
        self._replay.close()

    async def forget_old(self) -> None:
        """Drop command ids older than :data:`COMMAND_MEMORY_S` from the idempotency memory."""
        await asyncio.to_thread(self.store.forget_commands_before,
                                time.time() - COMMAND_MEMORY_S)

    # ------------------------------------------------------------------ the MQTT side

    async def subscribe(self, client: aiomqtt.Client) -> None:
        await client.subscribe(self._topic, qos=1)

    def deliver(self, payload: bytes | str) -> None:
        """Start a command as it arrives; they run side by side (each waits for its bus)."""
        task = asyncio.create_task(self._handle_safely(payload))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # ------------------------------------------------------------------ one command

    async def _handle_safely(self, payload: bytes | str) -> None:
        """:meth:`handle`, with a bug in it logged and reported instead of lost with the
        task: one command never stops the next."""
        try:
            await self.handle(payload)
        except Exception as exc:
            log.exception("command handling failed")
            self.stats.commands_failed += 1
            self._event(Event("command_failed", datetime.now(UTC), None,
                              safe_text(f"{type(exc).__name__}: {exc}"),
                              _fingerprint(payload)))

    async def handle(self, payload: bytes | str) -> None:
        """Verify, deduplicate, execute and ack one command payload."""
        try:
            signed = await self._verify(payload)
        except wire.WireError as exc:
            self._refuse(payload, "invalid", "invalid", str(exc))
            return
        except SignatureRefused as exc:
            self._refuse(payload, "rejected", exc.reason.value, str(exc))
            return
        cmd = signed.command
        _seen, done_ack = await asyncio.to_thread(self.store.command_seen, cmd.command_id)
        if done_ack is not None:  # a repeat: the first result, the meter left alone
            self.stats.commands_repeated += 1
            self._ack(done_ack)
            return
        if cmd.command_id in self._running:
            return  # the first copy is still on its way; its "done" answers both
        self._running.add(cmd.command_id)
        try:
            ack = await self._execute(cmd)
            encoded = wire.encode_ack(ack)
            await asyncio.to_thread(self.store.command_finished, cmd.command_id, encoded)
            self.stats.commands_done += 1
            self._ack(encoded)
        finally:
            self._running.discard(cmd.command_id)

    async def _verify(self, payload: bytes | str) -> wire.SignedCommand:
        """The signed command, or WireError / SignatureRefused saying why it must not run
        (the payload limits are :data:`meterhub.wire.COMMAND_LIMITS`)."""
        if not self._keyring:
            raise SignatureRefused(RefusalReason.UNKNOWN_KEY,
                                   "this gateway trusts no command keys")
        signed = wire.decode_command(payload, self._keyring, gateway=self.config.gateway_id,
                                     now=datetime.now(UTC),
                                     max_future_skew=self._max_future_skew)
        cmd = signed.command
        if await asyncio.to_thread(self._replay.seen, signed.nonce, cmd.expires_at):
            raise SignatureRefused(RefusalReason.REPLAYED,
                                   f"nonce {signed.nonce!r} of command {cmd.command_id!r} "
                                   "was seen before")
        return signed

    def _done(self, cmd_id: str, meter: str, outcome: wire.Outcome,
              relay: RelayState | None = None, reason: str | None = None) -> Ack:
        return Ack(cmd_id, self.config.gateway_id, meter, "done", datetime.now(UTC),
                   outcome, relay, reason)

    def _refuse(self, payload: bytes | str, outcome: wire.Outcome, code: str,
                reason: str) -> None:
        """Say no, loudly: a security event always, and a "done" ack to the command id the
        (unverified) payload names, if it names one well-formed; billing only trusts acks
        for commands it sent. The refusal is not remembered, so it cannot shadow a genuine
        command."""
        self.stats.commands_refused += 1
        reason = safe_text(reason)
        cmd_id, meter = _addressee(payload)
        log.warning("command %s refused: %s", cmd_id or "(no id)", reason)
        self._event(Event("security_refused", datetime.now(UTC), meter, reason,
                          {"reason": code, "command_id": cmd_id, **_fingerprint(payload)}))
        if cmd_id is not None:
            self._ack(self._done(cmd_id, meter or "?", outcome, reason=reason))

    async def _execute(self, cmd: Command) -> Ack:
        if cmd.expired(datetime.now(UTC)):  # expired while the signature was checked
            return self._done(cmd.command_id, cmd.meter, "expired",
                              reason=f"expired at {wire.utc_iso(cmd.expires_at)}")
        target = self._meters.get(cmd.meter)
        if target is None:
            reason = f"no meter {cmd.meter!r} on gateway {self.config.gateway_id}"
            self._event(Event("security_refused", datetime.now(UTC), cmd.meter, reason,
                              {"reason": "unknown_meter", "command_id": cmd.command_id}))
            return self._done(cmd.command_id, cmd.meter, "unknown_meter", reason=reason)
        bus, meter = target
        caps = self.workers[bus.name].health[meter.id].capabilities
        if cmd.action in (*_RELAY_ACTIONS, "relay_status") and not caps.get("relay"):
            return self._done(cmd.command_id, cmd.meter, "invalid",
                              reason=f"meter {cmd.meter} has no relay ({meter.protocol}, "
                                     f"model {meter.model or 'as configured'}): disconnecting "
                                     "it needs a site visit")
        if cmd.action in _RELAY_ACTIONS and not meter.relay_control:
            return self._done(cmd.command_id, cmd.meter, "invalid",
                              reason=f"relay control is off for meter {cmd.meter} "
                                     "(relay_control = false)")
        await asyncio.to_thread(self.store.command_started, cmd.command_id)
        self._ack(Ack(cmd.command_id, self.config.gateway_id, cmd.meter, "accepted",
                      datetime.now(UTC)))
        try:
            return await self.workers[bus.name].submit(self._job(cmd, meter))
        except NoAnswer as exc:
            return self._done(cmd.command_id, cmd.meter, "no_answer", reason=str(exc))
        except MeterRejected as exc:
            return self._done(cmd.command_id, cmd.meter, "rejected", reason=str(exc))
        except DriverError as exc:
            return self._done(cmd.command_id, cmd.meter, "failed", reason=str(exc))

    def _job(self, cmd: Command, meter: MeterConfig) -> Callable[[Driver], Awaitable[Ack]]:
        async def job(driver: Driver) -> Ack:
            # it may have waited behind another command: check expiry at the last moment
            if cmd.expired(datetime.now(UTC)):
                return self._done(cmd.command_id, cmd.meter, "expired",
                                  reason="expired while waiting for the bus")
            if cmd.action == "relay_status":
                status = await driver.read_status(meter.address)
                return self._done(cmd.command_id, cmd.meter, "ok", status.relay)
            if cmd.action == "time_sync":
                if not driver.capabilities(meter.address).time_sync:
                    return self._done(cmd.command_id, cmd.meter, "invalid",
                                      reason=f"{meter.protocol} meters have no time sync")
                await driver.time_sync(meter.address, datetime.now(UTC))
                # verified by reading the clock back: the ack carries what the meter says now
                check = await driver.read_clock(meter.address)
                return replace(self._done(cmd.command_id, cmd.meter, "ok"), clock=check)
            relay = await driver.switch_relay(meter.address, cmd.action)
            expected = _EXPECTED_RELAY.get(cmd.action)
            if expected is not None and relay != expected:
                return self._done(cmd.command_id, cmd.meter, "failed", relay,
                                  f"{cmd.action}: the meter accepted it but reads back "
                                  f"relay {relay}")
            return self._done(cmd.command_id, cmd.meter, "ok", relay)

        return job


# ---------------------------------------------------------------------------- untrusted input


def _addressee(payload: bytes | str) -> tuple[str | None, str | None]:
    """The (command id, meter) an unverified payload names, where both are well-formed ids;
    a refusal is acked to them. Anything else (too big or too deep to read, an id that is
    not an id) gets no ack, only the event."""
    if len(payload) > wire.COMMAND_LIMITS.max_bytes:
        return None, None
    try:  # numbers stay text: only the ids are wanted here
        obj = json.loads(payload, parse_int=str, parse_float=str, parse_constant=str)
    except (ValueError, RecursionError):
        obj = None
    if not isinstance(obj, dict):
        return None, None
    found = [obj.get(key) for key in ("command_id", "meter")]
    cmd_id, meter = (v if isinstance(v, str) and _ID.fullmatch(v) else None for v in found)
    return cmd_id, meter


def _fingerprint(payload: bytes | str) -> dict[str, Any]:
    """What an event says about a refused payload: its size and hash, never its text."""
    raw = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else payload
    return {"size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()[:16]}
