"""The ``meterhub billing`` subcommands against a real database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from billing import SIGNING_KEY_ENV
from launcher.cli import main
from meterhub.security import generate_private_key


def run(capsys: pytest.CaptureFixture[str], db_url: str, *argv: str,
        lang: str = "en") -> tuple[int, str, str]:
    rc = main(["--lang", lang, "billing", "--database-url", db_url, *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_account_topup_balance_and_listing(capsys: pytest.CaptureFixture[str],
                                           db_url: str) -> None:
    rc, out, _ = run(capsys, db_url, "create-account", "--account", "A1", "--meter", "m1",
                     "--meter", "m2", "--tariff", "residential-tiered", "--group", "B7",
                     "--credit", '{"alert_thresholds": ["50", "0"], "emergency_credit": "5"}')
    assert rc == 0 and "A1" in out
    topup = ("topup", "--account", "A1", "--amount", "50.00", "--channel", "wechat",
             "--reference", "WX-1", "--json")
    rc, out, _ = run(capsys, db_url, *topup)
    first = json.loads(out)
    rc, out, _ = run(capsys, db_url, *topup)  # replayed: the same entry, no double credit
    assert json.loads(out) == first
    assert first["balance"] == "50.00"
    rc, out, _ = run(capsys, db_url, "balance", "--account", "A1", "--json")
    bal = json.loads(out)
    assert (bal["balance"], bal["risk_grade"], bal["meters"]) == ("50.00", "A", ["m1", "m2"])
    assert [e["kind"] for e in bal["entries"]] == ["topup"]
    rc, out, _ = run(capsys, db_url, "accounts")
    assert rc == 0 and "A1" in out and "B7" in out
    rc, out, _ = run(capsys, db_url, "commands", "--json")
    assert json.loads(out) == []


def test_messages_in_chinese(capsys: pytest.CaptureFixture[str], db_url: str) -> None:
    """``meterhub --lang zh-CN billing ...`` (or METERHUB_LANG / LANG) prints in Chinese;
    the JSON of --json stays as it is for scripts."""
    rc, out, _ = run(capsys, db_url, "create-account", "--account", "Z1", "--meter", "z1",
                     "--tariff", "residential-tiered", lang="zh-CN")
    assert rc == 0 and out == "已为 z1 开立账户 Z1，电价 residential-tiered\n"
    rc, out, _ = run(capsys, db_url, "topup", "--account", "Z1", "--amount", "1234.5",
                     "--channel", "wechat", "--reference", "WX-Z", lang="zh-CN")
    assert rc == 0 and out.endswith("当前余额 ¥1,234.50\n"), out
    rc, out, _ = run(capsys, db_url, "topup", "--account", "Z1", "--amount", "1234.5",
                     "--channel", "wechat", "--reference", "WX-Z", "--json", lang="zh-CN")
    assert json.loads(out)["balance"] == "1234.50"
    rc, _, err = run(capsys, db_url, "approve", "--group", "none", "--by", "me", lang="zh-CN")
    assert rc == 1 and "分组 'none' 中没有等待批准的断电" in err
    rc, out, _ = run(capsys, db_url, "create-account", "--account", "Z2", "--meter", "z2",
                     "--tariff", "residential-tiered")
    assert out.startswith("account Z2 opened"), "the language was for that run only"


def test_errors_are_one_clear_line(capsys: pytest.CaptureFixture[str], db_url: str) -> None:
    rc, _, err = run(capsys, db_url, "topup", "--account", "nobody", "--amount", "5",
                     "--channel", "bank", "--reference", "x")
    assert rc == 1 and "account 'nobody' does not exist" in err
    run(capsys, db_url, "create-account", "--account", "A1", "--meter", "m1", "--tariff",
        "residential-flat")
    rc, _, err = run(capsys, db_url, "topup", "--account", "A1", "--amount", "1.234",
                     "--channel", "bank", "--reference", "x")
    assert rc == 1 and "more than two decimals" in err
    rc, _, err = run(capsys, db_url, "approve", "--group", "none", "--by", "me")
    assert rc == 1 and "no cut-off is waiting" in err


def test_manual_relay_hold_and_release(capsys: pytest.CaptureFixture[str], db_url: str) -> None:
    run(capsys, db_url, "create-account", "--account", "A1", "--meter", "m1", "--tariff",
        "residential-flat")
    rc, out, _ = run(capsys, db_url, "relay", "--meter", "m1", "--want", "open", "--by",
                     "op:alice", "--reason", "tamper", "--until", "2099-01-01T00:00:00+08:00")
    assert rc == 0 and "held until 2099" in out
    rc, out, _ = run(capsys, db_url, "holds", "--json")
    [hold] = json.loads(out)
    assert (hold["meter_id"], hold["wanted"], hold["by"]) == ("m1", "open", "op:alice")
    rc, _, err = run(capsys, db_url, "relay", "--meter", "m1", "--want", "closed", "--by", "b")
    assert rc == 1 and "in flight" in err
    rc, out, _ = run(capsys, db_url, "release", "--meter", "m1", "--by", "op:alice")
    assert rc == 0 and "released" in out
    rc, _, err = run(capsys, db_url, "release", "--meter", "m1", "--by", "op:alice")
    assert rc == 1 and "no manual hold" in err
    rc, _, err = run(capsys, db_url, "relay", "--meter", "nope", "--want", "open", "--by", "b")
    assert rc == 1 and "belongs to no account" in err


def test_run_refuses_to_start_without_a_signing_key(
    capsys: pytest.CaptureFixture[str], db_url: str, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """No key, or a key others may read: the engine does not start, and the error names the
    setting (the flag and the environment variable) rather than failing at the first send."""
    monkeypatch.delenv(SIGNING_KEY_ENV, raising=False)
    rc, _, err = run(capsys, db_url, "run", "--mqtt-url", "mqtt://127.0.0.1:1")
    assert rc == 1
    assert "signing_key_path" in err and "--signing-key" in err and SIGNING_KEY_ENV in err
    key = tmp_path / "billing.pem"
    generate_private_key(key)
    key.chmod(0o644)
    monkeypatch.setenv(SIGNING_KEY_ENV, str(key))  # the fallback is read
    rc, _, err = run(capsys, db_url, "run", "--mqtt-url", "mqtt://127.0.0.1:1")
    assert rc == 1 and "signing_key_path" in err and "chmod 600" in err
