"""The postpaid ``meterhub billing`` subcommands against a real database: open an account,
issue a bill, read it and write its e-bill, the arrears report, the ladder, a plan."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from billing import ledger
from billing.arrears import CollectionSettings
from launcher.cli import main

S = CollectionSettings()


def run(capsys: pytest.CaptureFixture[str], db_url: str, *argv: str) -> tuple[int, str, str]:
    rc = main(["billing", "--database-url", db_url, *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_postpaid_commands(capsys: pytest.CaptureFixture[str], db_url: str, tmp_path: Path) -> None:
    rc, out, _ = run(
        capsys,
        db_url,
        "create-postpaid",
        "--account",
        "C1",
        "--meter",
        "c1m",
        "--class",
        "low_voltage",
        "--group",
        "Plaza",
        "--name",
        "Shop 3",
    )
    assert rc == 0 and "low_voltage" in out
    with psycopg.connect(db_url, autocommit=True) as conn:
        ledger.adjust(conn, "C1", "-120.50", "reading-1", reason="hand reading")
        conn.execute("UPDATE billing_meters SET charge_from = charge_from - interval '90 days'")
    rc, out, err = run(capsys, db_url, "issue-bills", "--at", "2026-01-01T10:00")
    assert rc != 0 and "offset" in out + err
    rc, out, _ = run(capsys, db_url, "issue-bills")  # last month's, now
    assert rc == 0 and "1 bills issued" in out and "120.50" in out
    rc, out, _ = run(capsys, db_url, "bills", "--account", "C1", "--json")
    (bill,) = json.loads(out)
    assert bill["amount_due"] == "120.50" and bill["customer_class"] == "low_voltage"
    html, pdf = tmp_path / "b.html", tmp_path / "b.pdf"
    rc, out, _ = run(
        capsys, db_url, "bill", "--id", str(bill["bill_id"]), "--html", str(html), "--pdf", str(pdf)
    )
    assert rc == 0 and "120.50" in html.read_text("utf-8")
    assert pdf.read_bytes().startswith(b"%PDF")
    rc, out, _ = run(capsys, db_url, "arrears", "--json")
    (row,) = json.loads(out)["accounts"]
    assert row["unpaid"] == "120.50" and row["group"] == "Plaza"
    rc, out, _ = run(capsys, db_url, "ladder", "--account", "C1")
    assert rc == 0 and "bill" in out
    due = (datetime.now(UTC) + timedelta(days=5)).astimezone(S.zone).date()
    rc, out, _ = run(
        capsys,
        db_url,
        "plan-create",
        "--account",
        "C1",
        "--instalment",
        f"{due}:60.50",
        "--instalment",
        f"{due + timedelta(days=30)}:60",
        "--by",
        "li.wei",
        "--reason",
        "hardship",
    )
    assert rc == 0 and "2 instalments" in out
    rc, out, err = run(
        capsys,
        db_url,
        "plan-create",
        "--account",
        "C1",
        "--instalment",
        "soon:5",
        "--by",
        "x",
        "--reason",
        "y",
    )
    assert rc != 0 and "--instalment" in out + err
    rc, out, _ = run(capsys, db_url, "plans", "--json")
    assert json.loads(out)[0]["state"] == "kept"
    rc, out, _ = run(capsys, db_url, "collection-report", "--json")
    assert json.loads(out)["group"][0]["billed"] == "120.50"
    # the same listings for a person: a header (where there is one) and a line per row
    for args, wanted in [
        (("bills", "--account", "C1"), [" due now", "120.50"]),
        (("arrears",), ["0-30", "C1", "120.50", "total"]),
        (("penalties", "--account", "C1"), []),
        (("plans",), ["li.wei", f"{due} 60.50"]),
        (("collection-report",), ["billed", "Plaza", "120.50"]),
    ]:
        rc, out, _ = run(capsys, db_url, *args)
        assert rc == 0 and all(w in out for w in wanted), (args, out)


def test_escalation_clear_and_settlement_commands(
    capsys: pytest.CaptureFixture[str], db_url: str
) -> None:
    rc, _, _ = run(capsys, db_url, "create-postpaid", "--account", "H1", "--meter", "h1m",
                   "--class", "high_voltage")
    assert rc == 0
    rc, out, err = run(capsys, db_url, "escalation-clear", "--account", "H1", "--by", "li.wei",
                       "--reason", "paid in person")
    assert rc != 0 and "not escalated" in err
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE billing_accounts SET escalated_at = now(), "
                     "escalation_reason = '2 bills in arrears'")
    rc, out, _ = run(capsys, db_url, "escalation-clear", "--account", "H1", "--by", "li.wei",
                     "--reason", "paid in person")
    assert rc == 0 and "cleared by li.wei" in out
    rc, out, _ = run(capsys, db_url, "arrears", "--json")
    (row,) = json.loads(out)["accounts"]
    assert not row["escalated"] and row["escalation_cleared"]["by"] == "li.wei"
    nxt = (datetime.now(UTC).astimezone(S.zone).date().replace(day=28) + timedelta(days=4))
    month = f"{nxt:%Y-%m}"
    rc, out, err = run(capsys, db_url, "settlement-create", "--account", "H1", "--month", month,
                       "--by", "zhang", "--reason", "HV contract")
    assert rc != 0 and "no bill" in err  # no history: staff give the expected amount
    rc, out, err = run(capsys, db_url, "settlement-create", "--account", "H1", "--month", month,
                       "--expected", "1000", "--instalment", "10:x", "--by", "z", "--reason", "r")
    assert rc != 0 and "DAY:SHARE" in err
    rc, out, _ = run(capsys, db_url, "settlement-create", "--account", "H1", "--month", month,
                     "--expected", "1000", "--instalment", "10:0.25", "--instalment", "20:0.25",
                     "--by", "zhang", "--reason", "HV contract")
    assert rc == 0 and "the bill settles 500.00" in out
    rc, out, _ = run(capsys, db_url, "settlements", "--json")
    (sched,) = json.loads(out)
    assert sched["month"] == month and sched["state"] == "kept"
    assert [i["amount"] for i in sched["instalments"]] == ["250.00", "250.00"]
    assert sched["bill_share"] == "0.5"
    rc, out, _ = run(capsys, db_url, "settlements")
    assert rc == 0 and f"H1 {month} kept" in out and "bill 500.00" in out
