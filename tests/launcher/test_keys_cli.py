"""``meterhub keys generate`` writes a usable pair and never overwrites a key."""

from __future__ import annotations

import argparse
import stat
from pathlib import Path

import pytest

from launcher.keys import register
from meterhub.security import CommandSigner, Keyring


def test_generate_writes_a_pair_whose_key_id_the_gateway_trusts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="meterhub")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["keys", "generate", str(tmp_path / "billing.pem")])
    assert args.handler(args) == 0
    signer = CommandSigner.from_file(tmp_path / "billing.pem")
    assert stat.S_IMODE((tmp_path / "billing.pem").stat().st_mode) == 0o600
    assert signer.key_id in Keyring.from_files([tmp_path / "billing.pub"])
    out = capsys.readouterr().out
    assert f"key id {signer.key_id}" in out and "PRIVATE" not in out
    with pytest.raises(FileExistsError):
        args.handler(args)
