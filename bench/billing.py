"""Benchmark: validated intervals charged per second (time-of-use + tiered tariff).

Builds a fresh database with N accounts (one meter each, tariff ``residential-tou-tiered``)
and M 15-minute intervals per meter spread over day and night bands, then times the real
charging path (``billing.charging.charge_all``: lock accounts, read intervals, price with
band/tier splits and fen carry, append the ledger, record charges, move balances, cursors
and tier usage, commit). Two references run in the same process on the same machine:

* ``ratio_vs_plain_insert``: charging rate / rate of COPYing the very same ledger rows
  into a plain table (the floor cost of writing the ledger at all);
* ``ratio_vs_pricing_only``: charging rate / rate of pricing the same intervals in Python
  with no database (how much the database round trips cost on top of the arithmetic).

Uses ``METERHUB_DATABASE_URL`` when set, else an embedded pgserver. The last line printed
is one JSON object. Goal from the issue: at least 50,000 intervals/s with 10,000 accounts.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

# run as a script this file's folder comes first on sys.path, and its name would hide the
# ``billing`` package: put the project root there instead (works installed or not)
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from billing.charging import charge_all, charge_parallel  # noqa: E402
from billing.tariffs import load_tariffs  # noqa: E402
from meterhub import db  # noqa: E402
from meterhub.settings import database_url  # noqa: E402

TARIFF = "residential-tou-tiered"
START = datetime(2026, 3, 1, 16, 0, tzinfo=UTC)  # 00:00 Shanghai: night and day bands


def _server(stack: ExitStack) -> str:
    url = database_url()
    if url:
        return url
    from launcher.embedded import embedded_postgres

    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-billing-")))
    return stack.enter_context(embedded_postgres(tmp / "pg"))


def _fresh_db(server: str, stack: ExitStack) -> str:
    name = f"bench_billing_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(server, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    stack.callback(drop)
    params = conninfo_to_dict(server)
    params["dbname"] = name
    url = make_conninfo(**params)
    db.migrate(url)
    return url


def _load(conn: psycopg.Connection[Any], accounts: int, per_meter: int) -> int:
    with conn.transaction(), conn.cursor() as cur:
        with cur.copy(
            "COPY billing_accounts (account_id, tariff_id, balance_fen) FROM STDIN"
        ) as cp:
            for a in range(accounts):
                cp.write_row((f"A{a:05d}", TARIFF, 100_000))
        with cur.copy("COPY billing_meters (meter_id, account_id, charge_from) FROM STDIN") as cp:
            for a in range(accounts):
                cp.write_row((f"M{a:05d}", f"A{a:05d}", START))
        # the collector's meters: meter_key a + 1 (a fresh database's identity)
        with cur.copy("COPY meters (meter_id) FROM STDIN") as cp:
            for a in range(accounts):
                cp.write_row((f"M{a:05d}",))
        step = timedelta(minutes=15)
        # 96 intervals = one day; spread meters over the day so both bands are charged
        # (the collector's statement trigger puts every meter's span on billing's change queue)
        with cur.copy(
            "COPY intervals (meter, interval_start, seconds, kwh_e4, quality) FROM STDIN"
        ) as cp:
            for i in range(per_meter):
                for a in range(accounts):
                    s = START + ((a * 7 + i) % 96) * step + (i // 96) * timedelta(days=1)
                    kwh_e4 = (1 + (a * 31 + i * 17) % 400) * 10  # 0.001-0.4 kWh
                    cp.write_row((a + 1, s, 900, kwh_e4, "A"))
    conn.execute("ANALYZE")
    return accounts * per_meter


def _pricing_only(conn: psycopg.Connection[Any]) -> tuple[int, float]:
    tariffs = load_tariffs()
    t = tariffs[TARIFF]
    rows = conn.execute("SELECT interval_start, interval_start + make_interval(secs => seconds),"
                        " kwh_e4 * 0.0001 FROM intervals").fetchall()
    usage: dict[date, Decimal] = {}
    t0 = time.perf_counter()
    for s, e, k in rows:
        sum((p.kwh * p.price for p in t.price(s, e, k, usage)), Decimal(0))
    return len(rows), time.perf_counter() - t0


def _plain_insert(conn: psycopg.Connection[Any]) -> tuple[int, float]:
    rows = conn.execute(
        "SELECT account_id, kind, amount_fen, balance_after_fen, idempotency_key, meter_id, "
        "interval_start FROM billing_ledger"
    ).fetchall()
    conn.execute("CREATE TABLE bench_plain (LIKE billing_ledger INCLUDING ALL)")
    t0 = time.perf_counter()
    with conn.transaction(), conn.cursor() as cur, cur.copy(
        "COPY bench_plain (account_id, kind, amount_fen, balance_after_fen, idempotency_key, "
        "meter_id, interval_start) FROM STDIN"
    ) as cp:
        for r in rows:
            cp.write_row(r)
    return len(rows), time.perf_counter() - t0


def _worker(url: str, batch_accounts: int, per_meter: int) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        return charge_all(conn, load_tariffs(), max_accounts=batch_accounts,
                          max_rows=batch_accounts * per_meter).intervals


def _charge(url: str, conn: psycopg.Connection[Any], workers: int, batch_accounts: int,
            per_meter: int, connections: int = 1) -> tuple[int, float]:
    """Charge everything with ``workers`` processes (SKIP LOCKED splits the accounts, as
    between billing engines), or with ``connections`` threads of this one process
    (``charge_parallel``); returns (intervals, seconds)."""
    if workers == 1 and connections > 1:
        conns = [psycopg.connect(url, autocommit=True) for _ in range(connections)]
        try:
            tariffs = load_tariffs()
            t0 = time.perf_counter()
            n = charge_parallel(conns, tariffs, max_accounts=batch_accounts,
                                max_rows=batch_accounts * per_meter).intervals
            return n, time.perf_counter() - t0
        finally:
            for c in conns:
                c.close()
    if workers == 1:
        t0 = time.perf_counter()
        n = charge_all(conn, load_tariffs(), max_accounts=batch_accounts,
                       max_rows=batch_accounts * per_meter).intervals
        return n, time.perf_counter() - t0
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(len, [[]] * workers))  # start the processes before the clock
        t0 = time.perf_counter()
        futures = [pool.submit(_worker, url, batch_accounts, per_meter) for _ in range(workers)]
        n = sum(f.result() for f in futures)
        return n, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accounts", type=int, default=10_000)
    ap.add_argument("--intervals-per-meter", type=int, default=10)
    ap.add_argument("--batch-accounts", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=1,
                    help="charging processes at once (as several billing engines)")
    ap.add_argument("--connections", type=int, default=1,
                    help="charging connections (threads) of one process (charge_parallel)")
    ap.add_argument("--json", action="store_true", help="only the JSON line")
    args = ap.parse_args(argv)
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr))
    with ExitStack() as stack:
        url = _fresh_db(_server(stack), stack)
        with psycopg.connect(url, autocommit=True) as conn:
            t0 = time.perf_counter()
            n = _load(conn, args.accounts, args.intervals_per_meter)
            say(f"loaded {n} intervals for {args.accounts} accounts in "
                f"{time.perf_counter() - t0:.1f} s")
            charged, charge_s = _charge(url, conn, args.workers, args.batch_accounts,
                                        args.intervals_per_meter, args.connections)
            if charged != n:
                raise SystemExit(f"charged {charged} of {n} intervals")
            check = conn.execute(
                "SELECT count(*) FROM billing_accounts a WHERE balance_fen <> 100000 + "
                "(SELECT coalesce(sum(amount_fen), 0) FROM billing_ledger l "
                "WHERE l.account_id = a.account_id)").fetchone()
            if check != (0,):
                raise SystemExit(f"balances differ from the ledger: {check}")
            say(f"charged {n} intervals in {charge_s:.2f} s")
            p_n, p_s = _pricing_only(conn)
            say(f"pricing only: {p_n} intervals in {p_s:.2f} s")
            i_n, i_s = _plain_insert(conn)
            say(f"plain COPY of the same {i_n} ledger rows: {i_s:.2f} s")
    rate = n / charge_s
    result = {
        "bench": "billing",
        "accounts": args.accounts,
        "intervals": n,
        "workers": args.workers,
        "connections": args.connections,
        "tariff": TARIFF,
        "intervals_per_s": round(rate),
        "pricing_only_per_s": round(p_n / p_s),
        "plain_insert_rows_per_s": round(i_n / i_s),
        "ratio_vs_plain_insert": round(rate / (i_n / i_s), 3),
        "ratio_vs_pricing_only": round(rate / (p_n / p_s), 3),
        "goal_intervals_per_s": 50_000,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
