"""``meterhub demo`` as a user runs it: where everything is, a taken web port, a meter that
stops answering, and Ctrl-C / SIGTERM, each in its own process."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meterhub.settings import MQTT_URL_ENV

pytestmark = pytest.mark.integration
REPO = Path(__file__).parents[2]


def _demo(db_url: str, *args: str, output: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != MQTT_URL_ENV}
    env["PYTHONPATH"] = str(REPO)
    with output.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "launcher.cli", "demo", "--database-url", db_url, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )


def test_taken_port_and_a_silent_meter(db_url: str, tmp_path: Path) -> None:
    output = tmp_path / "out"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        proc = _demo(
            db_url,
            "--duration",
            "20",
            "--quiet",
            "--web-port",
            str(port),
            "--fault",
            "no_reply",
            output=output,
        )
        try:
            rc = proc.wait(90)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = output.read_text()
    assert rc == 1, text
    assert time.monotonic() - started < 60, "--duration is honoured"
    assert re.search(
        r"meterhub demo run \w{6}: Ctrl-C to stop \(stops by itself after 20 s\)", text
    )
    assert re.search(rf"web page: port {port} is taken; using port (\d+) instead", text)
    assert re.search(
        r"web page: http://127\.0\.0\.1:\d+/  \(login admin-\w{6}, this run's own", text
    )
    assert "broker: mqtt://127.0.0.1:" in text and "database: postgresql://" in text
    assert re.search(
        r"demo incomplete: no cut-off acknowledged \(dry account acct-\w{6}-1, "
        r"meter \d{12}\); no restore acknowledged after the top-up",
        text,
    )
    assert "try --duration 60" in text


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_it_within_5_s(db_url: str, tmp_path: Path, sig: signal.Signals) -> None:
    output = tmp_path / "out"
    proc = _demo(db_url, "--web-port", "0", output=output)
    try:
        deadline = time.monotonic() + 90
        while "published" not in output.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, output.read_text()
            time.sleep(0.2)
        sent = time.monotonic()
        proc.send_signal(sig)
        rc = proc.wait(30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = output.read_text()
    assert took < 5, f"{sig.name}: stopped after {took:.1f} s\n{text}"
    assert f"stopping (signal {sig.name})" in text
    assert rc == 1 and "demo incomplete: " in text, text  # stopped before the cut-off
