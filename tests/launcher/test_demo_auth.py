"""``meterhub demo`` as shipped: authenticated on its embedded broker, and no secret printed.

The demo runs as its own process (as a user starts it), with the embedded mosquitto (amqtt
when there is no binary) and the test's PostgreSQL. While it runs, an anonymous client is
turned away by its broker; at the end the whole scenario has completed, and neither its
output (logs included, at -v) nor its summary holds any password it generated.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from meterhub.settings import MQTT_URL_ENV

pytestmark = pytest.mark.integration


def _anonymous_connect_rc(port: int) -> mqtt.ReasonCode | None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="outsider")
    codes: list[mqtt.ReasonCode] = []
    client.on_connect = lambda _c, _u, _f, rc, _p: codes.append(rc)
    client.connect("127.0.0.1", port)
    client.loop_start()
    deadline = time.monotonic() + 5
    while not codes and time.monotonic() < deadline:
        time.sleep(0.05)
    client.loop_stop()
    client.disconnect()
    return codes[0] if codes else None


def test_demo_runs_authenticated_and_prints_no_secret(db_url: str, tmp_path: Path) -> None:
    run_dir, summary_path, output = tmp_path / "run", tmp_path / "summary.json", tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != MQTT_URL_ENV}
    with output.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "launcher.cli", "-v", "demo", "--duration", "50", "--quiet",
             "--web-port", "0", "--database-url", db_url, "--run-dir", str(run_dir),
             "--summary-json", str(summary_path)],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )
    try:
        deadline = time.monotonic() + 60
        while not (found := re.search(r"broker: mqtt://127\.0\.0\.1:(\d+)", output.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, output.read_text()
            time.sleep(0.2)
        rc = _anonymous_connect_rc(int(found.group(1)))
        assert rc is not None and rc.is_failure, f"an anonymous client was let in: {rc}"
        assert proc.wait(120) == 0, output.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    summary = json.loads(summary_path.read_text())
    assert summary["readings_published"] > 0
    assert summary["readings_stored"] == summary["readings_published"]
    assert summary["cutoffs_acked"] >= 1 and summary["restores_acked"] >= 1
    assert summary["relay_opened_on_meter"] and summary["relay_closed_again"]
    assert summary["mqtt_url"] == f"mqtt://127.0.0.1:{found.group(1)}"
    assert summary["database_url"].startswith("postgresql://")

    secret_files = [*(run_dir / "broker" / "credentials").glob("*.password"),
                    run_dir / "web-login.password"]
    assert len(secret_files) == 6  # gateway, collector, billing, web, monitor, web login
    for path in secret_files:
        assert path.stat().st_mode & 0o777 == 0o600, path
    printed = output.read_text() + summary_path.read_text()
    for path in secret_files:
        password = path.read_text().strip()
        assert password and password not in printed, f"{path.name} shows up in the output"
