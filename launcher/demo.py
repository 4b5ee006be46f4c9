"""``meterhub demo``: the whole system in one process, on embedded defaults.

Simulated meters on two simulated RS-485 buses (DL/T645-2007 and Modbus RTU, on
pseudo-terminal pairs with real framing and wire time) -> gateway -> MQTT broker -> collector
-> PostgreSQL -> billing. One prepaid account is set to run dry: billing cuts its meter off
through MQTT and the gateway, the simulated relay opens (power and energy growth stop), then
the demo tops the account up and billing restores supply. A postpaid account with a bill 50
days overdue (its collection ladder back-dated and delivered) is cut off, pays, and is
restored the same way.

Every id is unique to the run, so the demo can run again and again against one real
PostgreSQL and broker without tripping over an earlier run's rows.

The embedded broker refuses anonymous clients: the demo provisions its site like
``meterhub broker provision`` does (one identity and 0600 password file per process, ACLs)
into its run directory, next to a command-signing key pair (``meterhub keys generate``).
Nothing it prints or logs holds a password; the broker and database URLs it shows carry a
user name at most.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import secrets
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import psycopg
from psycopg.conninfo import conninfo_to_dict

from launcher.embedded import BrokerLogins, database_or_embedded, embedded_broker, site_broker
from launcher.keys import generate_key_pair
from meterhub import db, i18n, settings
from meterhub.i18n import N_, _
from meterhub.security.files import write_private_file
from meterhub.settings import MqttSettings

log = logging.getLogger(__name__)

DRY_ACCOUNT_BALANCE = Decimal("2.00")  # yuan; runs out within the first half minute
TOPUP_AMOUNT = Decimal("100.00")
TOPUP_DELAY_S = 3.0  # after the cut-off is confirmed, the customer pays
DEMO_TARIFF = "residential-flat"  # configs/tariffs/residential_flat.toml
STOP_BUDGET_S = 4.0  # Ctrl-C / SIGTERM: every part gets a share of this, then the process ends

# What the demo tells its user, in one place (plain English; the i18n catalogues wrap these).
MSG_START = N_("meterhub demo run {run}: Ctrl-C to stop{until}")
MSG_UNTIL = N_(" (stops by itself after {duration:g} s)")
MSG_PORT_MOVED = N_("web page: port {wanted} is taken; using port {port} instead")
MSG_WEB = N_("web page: {url}  (login {user}, this run's own; password in {file})")
MSG_RUN_DIR = N_("run folder: {path} ({kept})")
MSG_RUN_DIR_KEPT = N_("kept after the run")
MSG_RUN_DIR_TEMP = N_("removed at the end; --run-dir keeps it")
MSG_STOPPING = N_("stopping (signal {signal}) ...")
MSG_INCOMPLETE = N_("demo incomplete: {missing}")
MSG_HINT_SHORT = N_("the whole scenario needs about 45 s: try --duration 60")
MSG_COMPLETE = N_("demo complete: readings stored, cut-off and restore acknowledged by the meter")
MISSING_READINGS = "no readings stored"
MISSING_CUTOFF = "no cut-off acknowledged (dry account {account}, meter {meter})"
MISSING_RESTORE = "no restore acknowledged after the top-up"


def _collection() -> Any:
    from billing import CollectionSettings

    # the renewed notice before a postpaid cut: seconds instead of 30 minutes
    return CollectionSettings(final_notice_s=3)


POSTPAID_DEBT = Decimal("86.40")  # yuan on the overdue bill


def _postpaid_in_arrears(conn: psycopg.Connection[Any], account: str, meter: str) -> None:
    """A postpaid account whose weeks of collection are already behind it: a bill issued
    50 days ago for a hand-read month, its ladder walked and every notice delivered (the demo
    plays the notify part), so the cut is due now and the engine does the rest."""
    from datetime import UTC, datetime, timedelta

    from billing import adjust, issue_bill, open_postpaid, record_evidence, run_collection

    s = _collection()
    now = datetime.now(UTC)
    issued = now - timedelta(days=50)
    period_end = issued.astimezone(s.zone).date() - timedelta(days=1)
    open_postpaid(conn, account, meters=[meter], customer_class="residential",
                  tariff=DEMO_TARIFF, name="demo shop (postpaid)",
                  charge_from=now, settings=s)
    adjust(conn, account, -POSTPAID_DEBT, f"{account}-reading", reason="hand-read month")
    issue_bill(conn, account, period_end.replace(day=1), period_end, now=issued, settings=s)
    for back in (6, 5):  # the collection notice, a day later the planned disconnection
        at = now - timedelta(days=back)
        run_collection(conn, at, s)
        for (notice_id,) in conn.execute(
                "SELECT notice_id FROM billing_notices WHERE account_id = %s "
                "AND closed_at IS NULL", (account,)).fetchall():
            record_evidence(conn, notice_id, at=at, channel="sms", outcome="delivered")


def _demo_credit() -> Any:
    """Warnings seconds apart instead of an hour and 30 minutes, no protected windows."""
    from billing import CreditSettings

    return CreditSettings(
        alert_thresholds=(Decimal("1.00"), Decimal("0.50"), Decimal(0)),
        warning_to_final_s=2.0,
        final_to_cutoff_s=3.0,
    )


@dataclass
class DemoSummary:
    meters: int = 0
    readings_published: int = 0
    readings_stored: int = 0
    cutoffs_acked: int = 0
    restores_acked: int = 0
    relay_opened_on_meter: bool = False
    relay_closed_again: bool = False
    energy_frozen_while_open: bool = False
    web_url: str = ""
    database: str = "embedded"
    broker: str = "embedded"
    mqtt_url: str = ""  # user name at most, never a password
    database_url: str = ""  # idem
    signing_key_id: str = ""
    duration_s: float = 0.0
    run_id: str = ""
    dry_account: str = ""
    dry_meter: str = ""
    # the postpaid account: an overdue bill, its ladder, the cut-off, payment, restore
    postpaid_account: str = ""
    postpaid_cut_on_meter: bool = False
    postpaid_paid: bool = False
    postpaid_restored_on_meter: bool = False
    events: list[str] = field(default_factory=list)
    interrupted: str = ""  # the signal that ended the run early, if any
    web_user: str = ""
    missing: list[str] = field(default_factory=list)  # what the scenario did not reach

    def check_complete(self) -> list[str]:
        """What the scenario did not reach (empty: it completed), kept in ``missing``."""
        missing = []
        if self.readings_stored <= 0:
            missing.append(MISSING_READINGS)
        # the dry account's own meter, as it shows itself: the postpaid account's cut-off
        # and restore are acknowledged too and must not stand in for it
        if self.cutoffs_acked < 1 or not self.relay_opened_on_meter:
            missing.append(MISSING_CUTOFF.format(account=self.dry_account, meter=self.dry_meter))
        if self.restores_acked < 1 or not self.relay_closed_again:
            missing.append(MISSING_RESTORE)
        self.missing = missing
        return missing


@dataclass(frozen=True)
class DemoPlan:
    """What the demo runs: ids are prefixed with the run id."""

    run_id: str
    poll_interval_s: float = 2.0
    interval_s: int = 5
    dlt645_baud: int = 9600
    modbus_baud: int = 9600
    # the DL/T645 relay password of this run's meters: never the factory 123456
    meter_password: str = field(
        default_factory=lambda: f"{secrets.randbelow(10**6):06d}", repr=False)

    @property
    def gateway_id(self) -> str:
        return f"demo-gw-{self.run_id}"

    @property
    def site(self) -> str:
        return f"demo-{self.run_id}"

    def dlt645_addresses(self) -> list[str]:
        # 12-digit BCD addresses; the run id keeps them apart between runs
        base = int(self.run_id, 16) % 10**8
        return [f"{base:08d}{n:04d}" for n in (1, 2)]

    def meter_ids(self) -> list[str]:
        return [*self.dlt645_addresses(), *(f"{self.gateway_id}-rtu-{u}" for u in (1, 2))]

    @property
    def dry_meter(self) -> str:
        return self.dlt645_addresses()[0]

    @property
    def postpaid_meter(self) -> str:
        return self.dlt645_addresses()[1]

    @property
    def postpaid_account(self) -> str:
        return f"post-{self.run_id}"

    def accounts(self) -> list[tuple[str, str, Decimal]]:
        """Prepaid (account, meter, opening balance); the first runs dry within the demo.
        The second DL/T645 meter is the postpaid account's."""
        ids = [m for m in self.meter_ids() if m != self.postpaid_meter]
        return [
            (f"acct-{self.run_id}-{n}", meter, DRY_ACCOUNT_BALANCE if n == 1 else Decimal("500"))
            for n, meter in enumerate(ids, start=1)
        ]


# --------------------------------------------------------------------------- CLI


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run everything (meters, gateway, broker, database, collector, billing) at once",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--duration", type=float, default=None,
                   help="seconds to run, then shut down cleanly (default: until Ctrl-C)")
    p.add_argument("--summary-json", type=Path, help="write a JSON summary here at the end")
    p.add_argument("--database-url", default=settings.database_url(),
                   help=f"PostgreSQL to use (default ${settings.DATABASE_URL_ENV} or embedded)")
    p.add_argument("--mqtt-url", default=None,
                   help=f"broker to use (default ${settings.MQTT_URL_ENV} or embedded)")
    p.add_argument("--web-port", type=int, default=8080,
                   help="port of the web page (0: any free port; default 8080)")
    p.add_argument("--quiet", action="store_true", help="no live status lines")
    p.add_argument("--run-dir", type=Path, default=None,
                   help="keep the run's broker site, credentials (0600) and keys here "
                   "(default: a temporary folder removed at the end)")
    p.add_argument("--insecure-broker", action="store_true",
                   help="embedded broker without identities or ACLs (anonymous clients)")
    p.add_argument("--fault", metavar="KIND", default=None,
                   help="set a simulator fault on the dry account's meter (e.g. no_reply: "
                   "the meter stops answering), to see how the demo reports what failed")
    p.set_defaults(handler=_cli)


def _cli(args: argparse.Namespace) -> int:
    given_mqtt = settings.mqtt_from(args.mqtt_url)
    plan = DemoPlan(run_id=uuid.uuid4().hex[:6])
    until = "" if args.duration is None else _(MSG_UNTIL, duration=args.duration)
    _say(_(MSG_START, run=plan.run_id, until=until))
    # SIGTERM while the services start: unwind like Ctrl-C, so what started is stopped
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with contextlib.ExitStack() as stack:
            run_dir = args.run_dir or Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="meterhub-demo-")))
            _say(_(MSG_RUN_DIR, path=run_dir, kept=_(MSG_RUN_DIR_KEPT) if args.run_dir
                                    else _(MSG_RUN_DIR_TEMP)))
            database_url = database_or_embedded(args.database_url, stack)
            db_label = db.host_label(database_url) if args.database_url else "embedded"
            logins, broker_label = _broker(args, given_mqtt, plan, run_dir, stack)
            _say(f"broker: {logins.public_url}"
                 + (f" (passwords in {run_dir / 'broker' / 'credentials'}, mode 0600)"
                    if logins.credentials else ""))
            _say(f"database: {public_database_url(database_url)}")
            db.migrate(database_url)
            summary = asyncio.run(
                run_demo(database_url, logins, duration=args.duration, live=not args.quiet,
                         web_port=args.web_port, plan=plan, run_dir=run_dir,
                         fault=args.fault)
            )
            summary.database, summary.broker = db_label, broker_label
    finally:
        signal.signal(signal.SIGTERM, previous)
    missing = summary.check_complete()
    text = json.dumps(asdict(summary), indent=2)
    if args.summary_json:
        args.summary_json.write_text(text + "\n")
    _say(text)
    if missing:
        _say(_(MSG_INCOMPLETE, missing="; ".join(missing)))
        if args.duration is not None and args.duration < 45 and not summary.interrupted:
            _say(_(MSG_HINT_SHORT))
        return 1
    _say(_(MSG_COMPLETE))
    return 0


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _broker(args: argparse.Namespace, given_mqtt: MqttSettings | None, plan: DemoPlan,
            run_dir: Path, stack: contextlib.ExitStack) -> tuple[BrokerLogins, str]:
    """The broker the parts log in to, and how the summary names it."""
    if given_mqtt:
        _say("using the broker given: its identities and ACLs are the site operator's "
             "job (see `meterhub broker provision --help`)")
        return BrokerLogins(given_mqtt), given_mqtt.host
    if args.insecure_broker:
        _say("starting embedded MQTT broker (anonymous clients, no ACLs) ...")
        return BrokerLogins(stack.enter_context(embedded_broker())), "embedded"
    _say("starting embedded MQTT broker (one identity per process, ACLs) ...")
    logins = stack.enter_context(
        site_broker(run_dir / "broker", site=plan.site, gateways=[plan.gateway_id]))
    return logins, "embedded"


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def public_database_url(conninfo: str) -> str:
    """A PostgreSQL URL or conninfo as ``postgresql://user@host:port/db``, the password and
    any other secret parameter left out (for what the demo prints and summarizes)."""
    info = {k: v for k, v in conninfo_to_dict(conninfo).items()
            if v is not None and k not in ("password", "sslpassword")}
    host = str(info.pop("host", ""))
    user, port, dbname = (str(info.pop(k, "")) for k in ("user", "port", "dbname"))
    if host.startswith("/"):  # a Unix socket folder goes into the query
        info["host"], host = host, ""
    netloc = (f"{quote(user)}@" if user else "") + host + (f":{port}" if port else "")
    query = f"?{urlencode(info)}" if info else ""
    return f"postgresql://{netloc}/{quote(dbname)}{query}"


# --------------------------------------------------------------------------- the run


async def run_demo(
    database_url: str,
    mqtt: MqttSettings | BrokerLogins,
    *,
    duration: float | None,
    live: bool = True,
    plan: DemoPlan | None = None,
    web_port: int | None = 0,
    run_dir: Path | None = None,
    fault: str | None = None,
) -> DemoSummary:
    """Run the whole path for ``duration`` seconds (None: until cancelled).

    ``mqtt`` is one login for every part, or a site's logins (each part its own identity:
    the gateway its gateway id, then ``collector``, ``billing``, ``web``). ``run_dir`` keeps
    the gateway's state and the command-signing keys (default: a temporary folder).
    ``fault`` (a ``meterhub sim --fault`` kind) is set on the dry account's meter.
    """
    from firmware_sim.cli import apply_fault
    from firmware_sim.fleet import Fleet

    logins = mqtt if isinstance(mqtt, BrokerLogins) else BrokerLogins(mqtt)
    plan = plan or DemoPlan(run_id=uuid.uuid4().hex[:6])
    summary = DemoSummary(run_id=plan.run_id, dry_meter=plan.dry_meter,
                          mqtt_url=logins.public_url,
                          database_url=public_database_url(database_url))
    started = time.monotonic()

    fleet = Fleet.from_dict(_fleet_spec(plan))
    with contextlib.ExitStack() as stack:
        run_dir = run_dir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="meterhub-demo-")))
        web_server = None
        if web_port is not None:
            web_server, summary.web_user = await _start_web(
                database_url, logins.login("web"), web_port, run_dir, plan)
            summary.web_url = web_server.url
        try:
            with fleet:
                if fault:
                    apply_fault(fleet, f"{plan.dry_meter}:{fault}")
                demo = _DemoRun(plan, fleet, summary, database_url, logins, run_dir)
                await demo.run(started, duration, live)
        finally:
            if web_server is not None:
                await web_server.close()
    return summary


async def _start_web(database_url: str, mqtt: MqttSettings, port: int, run_dir: Path,
                     plan: DemoPlan) -> tuple[Any, str]:
    """The web page on ``port`` (a free one when taken, said so) and this run's own admin
    login, so two demos on one database do not reset each other's password. The password
    goes to a 0600 file in the run folder, not to the terminal."""
    from web import ensure_demo_user, start_server

    try:
        server = await start_server(database_url, mqtt=mqtt, port=port, offline_after_s=10.0)
    except OSError:  # the port is taken: any free one will do
        server = await start_server(database_url, mqtt=mqtt, port=0, offline_after_s=10.0)
        _say(_(MSG_PORT_MOVED, wanted=port, port=server.url.rstrip("/").rsplit(":", 1)[1]))
    user, password = ensure_demo_user(database_url, name=f"admin-{plan.run_id}")
    login_file = run_dir / "web-login.password"
    write_private_file(login_file, (password + "\n").encode())
    _say(_(MSG_WEB, url=server.url, user=user, file=login_file))
    return server, user


class _DemoRun:
    """The parts of one demo run, the scenario that drives them, and an orderly stop."""

    def __init__(self, plan: DemoPlan, fleet: Any, summary: DemoSummary, database_url: str,
                 logins: BrokerLogins, run_dir: Path) -> None:
        from billing import BillingConfig, BillingEngine
        from collector import Collector, CollectorConfig
        from gateway import Gateway, config_from_dict

        self.plan, self.summary, self.database_url = plan, summary, database_url
        self.dry = fleet.meter(plan.dry_meter)
        self.postpaid = fleet.meter(plan.postpaid_meter)
        # Billing signs commands with this key; the gateway trusts only its public key.
        signing_key_path = run_dir / "keys" / f"billing-{plan.run_id}.pem"
        summary.signing_key_id, public_key = generate_key_pair(signing_key_path)
        meter_password = run_dir / "gateway-secrets" / "meter.password"
        meter_password.parent.mkdir(mode=0o700, exist_ok=True)
        write_private_file(meter_password, plan.meter_password.encode())
        self.gateway = Gateway(
            config_from_dict(_gateway_spec(plan, fleet, trusted_key=public_key,
                                           meter_password=meter_password),
                             source="demo"),
            mqtt=logins.login(plan.gateway_id),
            state_dir=run_dir / "gateway",
        )
        self.collector = Collector(
            CollectorConfig(
                database_url=database_url,
                mqtt=logins.login("collector"),
                shared_group=None,
                site=plan.site,  # only this run's gateway, even on a shared broker
                leave_on_stop=True,  # the demo's session is not coming back
                validate_every_s=1.0,
                interval_s=plan.interval_s,
                client_id=f"demo-collector-{plan.run_id}",
                # the demo's gateway brings its meters: they are registered to it
                commission_unknown_meters=True,
            )
        )
        self.billing = BillingEngine(
            BillingConfig(
                database_url=database_url,
                mqtt=logins.login("billing"),
                signing_key_path=signing_key_path,
                poll_interval_s=1.0,
                ack_timeout_s=10.0,
                retry_backoff_s=2.0,
                reconcile_interval_s=10.0,
                reconcile_grace_s=10.0,
                collection=_collection(),
                collection_interval_s=1.0,
            )
        )
        self.topped_up = False
        self.open_energy: float | None = None

    def open_accounts(self) -> None:
        from billing import create_account

        with psycopg.connect(self.database_url) as conn:
            for account, meter, opening in self.plan.accounts():
                create_account(
                    conn,
                    account,
                    meters=[meter],
                    tariff=DEMO_TARIFF,
                    name=f"demo household {account[-1]}",
                    credit=_demo_credit(),
                    opening_balance=opening,
                )
            _postpaid_in_arrears(conn, self.plan.postpaid_account, self.plan.postpaid_meter)
        self.summary.meters = len(self.plan.meter_ids())
        self.summary.dry_account = self.plan.accounts()[0][0]
        self.summary.postpaid_account = self.plan.postpaid_account

    async def run(self, started: float, duration: float | None, live: bool) -> None:
        await asyncio.to_thread(self.open_accounts)
        stop_gateway, stop_backend = asyncio.Event(), asyncio.Event()
        backend = [
            asyncio.create_task(self.collector.run(stop_backend), name="collector"),
            asyncio.create_task(self.billing.run(stop_backend), name="billing"),
        ]
        gateway = asyncio.create_task(self.gateway.run(stop_gateway), name="gateway")
        deadline = None if duration is None else started + duration
        # Ctrl-C or SIGTERM end the run like the deadline does, but within STOP_BUDGET_S
        interrupted = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._interrupted, sig, interrupted)
        try:
            while not interrupted.is_set() and (
                deadline is None or time.monotonic() < deadline - 2
            ):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(interrupted.wait(), 1.0)
                _raise_if_failed([*backend, gateway])
                at = f"{time.monotonic() - started:5.1f}s"
                self.observe_relay(at)
                self.observe_postpaid(at)
                # the line stamped `at` shows the state at `at`: written before a top-up
                # that happens later in this turn, from one reading of the cut-off count
                # that also decides the top-up
                cutoffs = self.billing.stats.cutoffs_acked
                if live and not interrupted.is_set():
                    _say(await asyncio.to_thread(self.status_line, at, cutoffs))
                if cutoffs and not self.topped_up and self.dry.relay_open:
                    # seen open here, and again just before paying: the restore after the
                    # top-up is quicker than the next turn's look at the meter
                    self.observe_relay(at)
                    with contextlib.suppress(TimeoutError):  # the customer pays, unless stopped
                        await asyncio.wait_for(interrupted.wait(), TOPUP_DELAY_S)
                    if not interrupted.is_set():
                        paid_at = f"{time.monotonic() - started:5.1f}s"
                        self.observe_relay(paid_at)
                        await asyncio.to_thread(self.top_up, paid_at)
                if self.postpaid.relay_open and not self.summary.postpaid_paid:
                    self.observe_postpaid(at)  # the same: seen cut before the payment
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(interrupted.wait(), TOPUP_DELAY_S)
                    if not interrupted.is_set():
                        await asyncio.to_thread(self.pay_bill,
                                                f"{time.monotonic() - started:5.1f}s")
        finally:
            await self._stop(gateway, backend, stop_gateway, stop_backend,
                             hurry=interrupted.is_set())
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        self.summary.readings_stored = _stored(self.database_url, self.plan)
        self.summary.cutoffs_acked = self.billing.stats.cutoffs_acked
        self.summary.restores_acked = self.billing.stats.restores_acked
        self.summary.duration_s = round(time.monotonic() - started, 1)

    def _interrupted(self, sig: signal.Signals, interrupted: asyncio.Event) -> None:
        if not interrupted.is_set():
            self.summary.interrupted = sig.name
            _say(_(MSG_STOPPING, signal=sig.name))
        interrupted.set()

    async def _stop(self, gateway: asyncio.Task[None], backend: list[asyncio.Task[None]],
                    stop_gateway: asyncio.Event, stop_backend: asyncio.Event,
                    *, hurry: bool) -> None:
        """Gateway first: it flushes its buffer; then the collector gets time to store what
        was published before the backend stops. In a hurry (a signal) every step gets a
        share of STOP_BUDGET_S and is cancelled when it runs over."""
        share = STOP_BUDGET_S / 3 if hurry else None
        stop_gateway.set()
        await _bounded(asyncio.gather(gateway, return_exceptions=True), share or 15)
        self.summary.readings_published = self.gateway.stats.readings_published
        await _wait_stored(self.database_url, self.plan, self.summary.readings_published,
                           timeout=share or 15)
        stop_backend.set()
        await _bounded(asyncio.gather(*backend, return_exceptions=True), share or 20)


    def observe_relay(self, at: str) -> None:
        """What the simulated meter itself shows: relay, power, a frozen energy register."""
        summary, dry = self.summary, self.dry
        if dry.relay_open and not summary.relay_opened_on_meter:
            summary.relay_opened_on_meter = True
            self.open_energy = dry.value("energy_import_total")
            summary.events.append(_("{at} relay of {meter} opened, power {kw} kW", at=at,
                                    meter=self.plan.dry_meter,
                                    kw=dry.value("power_active_total")))
        if dry.relay_open and self.open_energy is not None:
            summary.energy_frozen_while_open = (
                dry.value("energy_import_total") == self.open_energy
            )
        if self.topped_up and summary.relay_opened_on_meter and not dry.relay_open:
            if not summary.relay_closed_again:
                summary.events.append(_("{at} relay of {meter} closed again", at=at,
                                        meter=self.plan.dry_meter))
            summary.relay_closed_again = True

    def observe_postpaid(self, at: str) -> None:
        summary, meter = self.summary, self.postpaid
        if meter.relay_open and not summary.postpaid_cut_on_meter:
            summary.postpaid_cut_on_meter = True
            summary.events.append(f"{at} postpaid {summary.postpaid_account}: relay of "
                                  f"{self.plan.postpaid_meter} opened (bill overdue)")
        if summary.postpaid_paid and summary.postpaid_cut_on_meter and not meter.relay_open:
            if not summary.postpaid_restored_on_meter:
                summary.events.append(f"{at} postpaid {summary.postpaid_account}: relay "
                                      "closed again after payment")
            summary.postpaid_restored_on_meter = True

    def pay_bill(self, at: str) -> None:
        """The postpaid customer pays what the overdue bill asks; billing restores."""
        from billing import bills_of, topup

        account = self.summary.postpaid_account
        with psycopg.connect(self.database_url) as conn:
            due = bills_of(conn, account)[0].amount_due
            topup(conn, account, due, channel="counter", reference=f"{account}-bill-1")
        self.summary.postpaid_paid = True
        self.summary.events.append(f"{at} postpaid {account} paid its bill of {due}")

    def top_up(self, at: str) -> None:
        """The customer pays after the cut-off; billing should restore supply."""
        from billing import topup

        with psycopg.connect(self.database_url) as conn:
            topup(conn, self.summary.dry_account, TOPUP_AMOUNT, channel="wechat",
                  reference=f"{self.summary.dry_account}-topup-1")
        self.topped_up = True
        self.summary.events.append(_("{at} topped up {account} by {amount}", at=at,
                                     account=self.summary.dry_account,
                                     amount=i18n.yuan(TOPUP_AMOUNT)))

    def status_line(self, at: str, cutoffs: int) -> str:
        from billing import balance

        account = self.summary.dry_account
        with psycopg.connect(self.database_url) as conn:
            left = balance(conn, account)
        return _(
            "[{at}] published {published:4d} stored {stored:4d} | {account} balance {balance:>8} "
            "| relay {relay} {kw:.3f} kW | cut-offs {cutoffs} restores {restores}",
            at=at, published=self.gateway.stats.readings_published,
            stored=_stored(self.database_url, self.plan), account=account,
            balance=i18n.yuan(left), relay=_("OPEN  ") if self.dry.relay_open else _("closed"),
            kw=self.dry.value("power_active_total"), cutoffs=cutoffs,
            restores=self.billing.stats.restores_acked)


async def _bounded(waiting: Any, timeout: float) -> None:
    """Wait at most ``timeout`` seconds (then cancel); never raises TimeoutError."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(waiting, timeout)


def _raise_if_failed(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        if task.done() and task.exception() is not None:
            raise RuntimeError(f"{task.get_name()} stopped: {task.exception()}")


def _stored(database_url: str, plan: DemoPlan) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM readings r JOIN meters m ON m.meter_key = r.meter"
            " WHERE m.meter_id = ANY(%s)",
            (plan.meter_ids(),),
        ).fetchone()
    return int(row[0]) if row else 0


async def _wait_stored(database_url: str, plan: DemoPlan, expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(_stored, database_url, plan) >= expected:
            return
        await asyncio.sleep(0.5)


# --------------------------------------------------------------------------- specs


def _fleet_spec(plan: DemoPlan) -> dict[str, Any]:
    dry_meter = plan.dry_meter
    return {
        "buses": [
            {
                "name": "rs485-1",
                "protocol": "dlt645-2007",
                "baud": plan.dlt645_baud,
                "parity": "E",
                "turnaround_ms": 20,
                "password": plan.meter_password,
                "meters": [
                    {
                        "address": address,
                        # the dry account's meter runs a heavy load, fast-forwarded, so its
                        # balance is gone within the first half minute
                        "base_load_kw": 6.0 if address == dry_meter else 1.2,
                        "speedup": 600.0 if address == dry_meter else 1.0,
                        "energy_kwh": 1000.0 + n * 250,
                    }
                    for n, address in enumerate(plan.dlt645_addresses())
                ],
            },
            {
                "name": "rs485-2",
                "protocol": "modbus",
                "baud": plan.modbus_baud,
                "parity": "N",
                "turnaround_ms": 10,
                "meters": [
                    {"unit": unit, "model": "sim-prepaid-1p", "base_load_kw": 0.8,
                     "energy_kwh": 500.0 * unit}
                    for unit in (1, 2)
                ],
            },
        ]
    }


def _gateway_spec(plan: DemoPlan, fleet: Any, *, trusted_key: Path,
                  meter_password: Path) -> dict[str, Any]:
    return {
        "gateway": {
            "id": plan.gateway_id,
            "site": plan.site,
            "batch_interval_s": plan.poll_interval_s,  # one batch per poll cycle
        },
        "security": {
            "trusted_keys": [str(trusted_key)],
            "meter_password": {"file": str(meter_password)},
        },
        "buses": [
            {
                "name": "rs485-1",
                "port": fleet.port("rs485-1"),
                "protocol": "dlt645-2007",
                "baud": plan.dlt645_baud,
                "parity": "E",
                "timeout_s": 1.0,
                "meters": [
                    {"address": a, "poll_interval_s": plan.poll_interval_s,
                     "quantities": ["energy_import_total", "voltage_a", "current_a",
                                    "power_active_total"]}
                    for a in plan.dlt645_addresses()
                ],
            },
            {
                "name": "rtu",
                "port": fleet.port("rs485-2"),
                "protocol": "modbus",
                "baud": plan.modbus_baud,
                "parity": "N",
                "timeout_s": 1.0,
                "meters": [
                    {"address": str(u), "model": "sim-prepaid-1p",
                     "poll_interval_s": plan.poll_interval_s,
                     "quantities": ["energy_import_total", "voltage_a", "current_a",
                                    "power_active_total"]}
                    for u in (1, 2)
                ],
            },
        ],
    }

