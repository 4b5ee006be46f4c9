"""Hostile command-line arguments: NUL, lone surrogates and floods are refused before any
command runs, naming the option; over-long or malformed account and meter ids are refused
by billing with the field named, and nothing is stored."""

from __future__ import annotations

import psycopg
import pytest

from launcher.cli import MAX_ARGUMENT_CHARS, main

HOSTILE = [
    ("a\x00b", "contains a NUL character"),
    ("\ud800", "contains a lone surrogate"),
    ("x" * (MAX_ARGUMENT_CHARS + 1), f"more than {MAX_ARGUMENT_CHARS}"),
]
COMMANDS = [
    (["billing", "escalation-clear", "--account", "A1", "--by", "li", "--reason", "{}"],
     "--reason"),
    (["billing", "create-postpaid", "--account", "{}", "--meter", "m1", "--class",
      "residential"], "--account"),
    (["collector", "work-orders", "open", "--item", "1", "--instructions", "{}"],
     "--instructions"),
    (["gateway", "config-reference", "--out", "{}"], "--out"),  # a Path
    (["web", "create-user", "--name", "{}", "--role", "operator"], "--name"),
]


@pytest.mark.parametrize(("argv", "option"), COMMANDS)
@pytest.mark.parametrize(("bad", "why"), HOSTILE)
def test_hostile_text_is_refused_before_the_command_runs(
    argv: list[str], option: str | None, bad: str, why: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = [a.replace("{}", bad) for a in argv]
    with pytest.raises(SystemExit) as exit_:  # no database is ever asked: none is given
        main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and why in err
    if option:
        assert f"argument {option}:" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(("account", "meter", "field"), [
    ("A" * 65, "m1", "account:"),
    ("A\tB", "m1", "account:"),
    ("A1", "m 1", "meter:"),
    ("A1", "m" * 65, "meter:"),
])
def test_ids_billing_cannot_keep_are_refused_by_name(
    db_url: str, account: str, meter: str, field: str, capsys: pytest.CaptureFixture[str],
) -> None:
    rc = main(["billing", "--database-url", db_url, "create-postpaid", "--account", account,
               "--meter", meter, "--class", "residential"])
    err = capsys.readouterr().err
    assert rc == 1 and field in err and "Traceback" not in err
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM billing_accounts").fetchone() == (0,)
