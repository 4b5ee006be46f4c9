"""``meterhub billing customers`` and ``meterhub billing payments`` against a real database,
and ``meterhub notify check``."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.cli import main

pytestmark = pytest.mark.integration


def run(capsys: pytest.CaptureFixture[str], db_url: str, *argv: str) -> tuple[int, str, str]:
    rc = main(["billing", "--database-url", db_url, *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_customer_and_payment_commands(capsys, db_url: str, tmp_path: Path) -> None:
    assert (
        run(
            capsys,
            db_url,
            "create-account",
            "--account",
            "A1",
            "--meter",
            "m1",
            "--tariff",
            "residential-flat",
        )[0]
        == 0
    )
    rc, out, _ = run(
        capsys,
        db_url,
        "customers",
        "add",
        "--customer",
        "C1",
        "--name",
        "Li Lei",
        "--phone",
        "+8613800138000",
        "--language",
        "en",
        "--compound",
        "East Park",
    )
    assert rc == 0 and "contacts not verified" in out
    rc, _, err = run(
        capsys, db_url, "customers", "add", "--customer", "C2", "--name", "X", "--phone", "138"
    )
    assert rc == 1 and "phones[0]" in err
    assert run(capsys, db_url, "customers", "link", "--customer", "C1", "--account", "A1")[0] == 0
    rc, out, _ = run(capsys, db_url, "customers", "verify", "--customer", "C1", "--by", "clerk")
    rc, out, _ = run(capsys, db_url, "customers", "show", "--customer", "C1")
    assert "verified 20" in out and "accounts A1" in out

    debits = tmp_path / "debits.csv"
    debits.write_text(
        "txn_id,account,amount,currency,collected_at,status\n"
        "D1,A1,30.00,CNY,2026-12-03T09:00:00+08:00,ok\n"
        "D2,A1,30.00,CNY,2026-12-03T09:00:00+08:00,failed\n"
    )
    rc, out, _ = run(
        capsys, db_url, "payments", "import-debits", str(debits), "--provider", "bank-a"
    )
    assert rc == 0 and "1 collections; applied 1" in out
    rc, out, _ = run(
        capsys, db_url, "payments", "import-debits", str(debits), "--provider", "bank-a"
    )
    assert "duplicate 1" in out
    rc, out, _ = run(
        capsys, db_url, "payments", "cash", "--account", "A1", "--amount", "5", "--receipt", "R-1"
    )
    assert rc == 0 and "balance now 35.00" in out

    statement = tmp_path / "statement.csv"
    statement.write_text(
        "txn_id,kind,amount,currency,occurred_at\n"
        "D1,payment,30.00,CNY,2026-12-03T09:00:00+08:00\n"
        "D9,payment,1.00,CNY,2026-12-03T10:00:00+08:00\n"
    )
    rc, out, _ = run(
        capsys,
        db_url,
        "payments",
        "reconcile",
        str(statement),
        "--provider",
        "bank-a",
        "--date",
        "2026-12-03",
        "--by",
        "clerk",
    )
    assert rc == 2 and "D9: missing_in_ledger" in out
    rc, out, _ = run(capsys, db_url, "payments", "differences")
    did = out.split(":")[0]
    assert (
        run(
            capsys,
            db_url,
            "payments",
            "resolve",
            "--id",
            did,
            "--by",
            "clerk",
            "--note",
            "bank error, confirmed by phone",
        )[0]
        == 0
    )
    assert run(capsys, db_url, "payments", "differences")[1] == ""


def test_notify_check_names_bad_keys(capsys, tmp_path: Path) -> None:
    cfg = tmp_path / "notify.toml"
    cfg.write_text(
        'quiet_hours = "25:00-08:00"\n[email]\nport = 25\n'
        '[sms]\nurl = "ftp://x"\nkey_id = "k"\nsecret = "inline"\nsign_name = "s"\n'
    )
    assert main(["notify", "check", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    for key in ("quiet_hours", "email.host", "email.from", "sms.url", "sms.secret"):
        assert key in err, key
