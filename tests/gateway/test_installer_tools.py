"""The first hour on site, as an installer lives it: processes on simulated buses that decode
at their own line settings, and what the tools say when something is wrong."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gateway_helpers import SIM_MODEL, dlt_meters, rtu_meters

from firmware_sim.meter import SimMeter

REPO = Path(__file__).parents[2]


def meterhub(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "launcher.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _dlt_config(
    tmp_path: Path, port: str, *, baud: int = 9600, extra: str = "", gateway: str = ""
) -> Path:
    config = tmp_path / "gw.toml"
    config.write_text(f"""
[gateway]
id = "gw1"
site = "north"
{gateway}
[[buses]]
name = "dlt"
protocol = "dlt645-2007"
port = "{port}"
baud = {baud}
timeout_s = 0.3
retries = 0
relay_control = false
meters = [{{ address = "000000000001" }}]
{extra}
""")
    return config


def test_wrong_baud_is_silence_with_the_checklist(sim_bus: Any) -> None:
    bus = sim_bus("dlt645", dlt_meters(1), baud=2400)
    done = meterhub(
        "gateway",
        "read",
        "--protocol",
        "dlt645-2007",
        "--port",
        bus.port,
        "--baud",
        "9600",
        "--address",
        "000000000001",
        "--item",
        "energy_import_total",
        "--timeout",
        "0.3",
        "--retries",
        "0",
    )
    assert done.returncode == 1
    assert "no answer within 0.3 s" in done.stderr  # NoAnswer: the meter heard garbage
    assert (
        "no answer at 9600 8E1 from address 000000000001: check baud and parity (meter "
        "menu vs 9600 8E1), A/B wiring (swapped or loose) and termination, the address "
        "(000000000001)"
    ) in done.stderr
    assert bus.stats.misheard >= 1 and bus.stats.replies == 0

    done = meterhub(
        "gateway",
        "read",
        "--protocol",
        "dlt645-2007",
        "--port",
        bus.port,
        "--baud",
        "2400",
        "--address",
        "000000000001",
        "--item",
        "energy_import_total",
    )
    assert done.returncode == 0, done.stderr  # at the meter's own baud it answers


def test_wrong_parity_on_modbus_is_silence_or_garbage(sim_bus: Any) -> None:
    bus = sim_bus("modbus", rtu_meters(1))  # 9600 8N1
    done = meterhub(
        "gateway",
        "read",
        "--protocol",
        "modbus",
        "--port",
        bus.port,
        "--parity",
        "O",
        "--model",
        SIM_MODEL,
        "--unit",
        "1",
        "--item",
        "energy_import_total",
        "--timeout",
        "0.3",
        "--retries",
        "0",
    )
    assert done.returncode == 1
    assert "at 9600 8O1" in done.stderr and "check baud and parity" in done.stderr
    assert bus.stats.misheard >= 1


def test_check_tells_error_replies_no_port_broker_and_state_dir(
    sim_bus: Any, tmp_path: Path
) -> None:
    rtu = sim_bus("modbus", rtu_meters(1))
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    config = _dlt_config(
        tmp_path,
        str(tmp_path / "ttyUSB9"),
        extra=f"""
[[buses]]
name = "rtu"
protocol = "modbus"
port = "{rtu.port}"
model = "eastron-sdm120"
quantities = ["energy_import_total"]
meters = [{{ unit = 1 }}]
[mqtt]
url = "mqtt://127.0.0.1:1"
""",
    )
    done = meterhub(
        "gateway", "check", "--config", str(config), "--state-dir", str(not_a_dir / "state")
    )
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"FAIL state directory {not_a_dir / 'state'}: ")
    assert lines[1].startswith("FAIL broker mqtt://127.0.0.1:1: ") and "the broker runs" in lines[1]
    missing = [line for line in lines if "ttyUSB9" in line]
    assert len(missing) == 1, "the missing port is said once, for its bus"
    assert missing[0].startswith("FAIL bus dlt") and "no port" in missing[0]
    assert "check the adapter is plugged in" in missing[0]
    rtu_row = next(line for line in lines if line.startswith("gw1-rtu-1"))
    # answered with an error: not "did not answer"
    assert " error reply " in rtu_row and "the meter is not a eastron-sdm120" in rtu_row
    assert "0 of 2 meters read (1 no port, 1 error reply)" in done.stderr
    assert "failed: state directory" in done.stderr


def test_read_list_and_relay(sim_bus: Any) -> None:
    done = meterhub("gateway", "read", "--protocol", "dlt645-2007", "--list")
    assert done.returncode == 0, done.stderr
    items = done.stdout.splitlines()
    assert any(line.split() == ["energy_import_total", "kWh"] for line in items)
    assert any(line.startswith("relay ") for line in items)
    done = meterhub(
        "gateway", "read", "--protocol", "modbus", "--model", "eastron-sdm120", "--list"
    )
    assert "voltage_a" in done.stdout and "relay" not in done.stdout

    meters = dlt_meters(1)
    bus = sim_bus("dlt645", meters)
    args = (
        "gateway",
        "read",
        "--protocol",
        "dlt645-2007",
        "--port",
        bus.port,
        "--baud",
        "9600",
        "--parity",
        "E",
        "--address",
        "000000000001",
        "--item",
        "relay",
    )
    done = meterhub(*args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "relay = closed"
    meters[0].open_relay()
    assert meterhub(*args).stdout.strip() == "relay = open"

    rtu = sim_bus("modbus", rtu_meters(1))
    done = meterhub(
        "gateway",
        "read",
        "--protocol",
        "modbus",
        "--port",
        rtu.port,
        "--model",
        SIM_MODEL,
        "--unit",
        "1",
        "--item",
        "relay",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    assert '"relay": "closed"' in done.stdout


def test_scan_names_the_models_that_answer(sim_bus: Any) -> None:
    meters = [
        SimMeter("2", protocol="modbus", model="eastron-sdm120"),
        SimMeter("5", protocol="modbus", model=SIM_MODEL, energy_kwh=3.0),
    ]
    bus = sim_bus("modbus", meters)
    done = meterhub("gateway", "scan", "--protocol", "modbus", "--port", bus.port, "--units", "1-6")
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    name = Path(bus.port).name
    assert out[:4] == [
        "[[buses]]",
        f'name = "{name}"',
        'protocol = "modbus"',
        f'port = "{bus.port}"',
    ]
    assert out[out.index("unit = 2") + 1].startswith('model = "eastron-sdm120"')
    assert out[out.index("unit = 5") + 1] == f'model = "{SIM_MODEL}"'
    assert "unit 5: answers as sim-prepaid-1p" in done.stderr
    assert "0.1" in done.stderr.splitlines()[0], "the probe timeout is sized to the line"


def test_run_refuses_or_degrades_on_a_missing_port(sim_bus: Any, tmp_path: Path) -> None:
    gone = str(tmp_path / "ttyUSB7")
    config = _dlt_config(tmp_path, gone, gateway='missing_port = "refuse"')
    done = meterhub(
        "gateway", "run", "--config", str(config), "--state-dir", str(tmp_path / "state")
    )
    assert done.returncode == 2
    assert f"not starting, serial port(s) missing: {gone} (bus dlt)" in done.stderr

    bus = sim_bus("dlt645", dlt_meters(1))
    config = _dlt_config(
        tmp_path,
        bus.port,
        gateway="summary_interval_s = 1",
        extra=f"""
[[buses]]
name = "gone"
protocol = "dlt645-2007"
port = "{gone}"
relay_control = false
meters = [{{ address = "000000000002" }}]
""",
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "launcher.cli",
            "gateway",
            "run",
            "--config",
            str(config),
            "--state-dir",
            str(tmp_path / "state"),
        ],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[str] = []
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("gateway gw1: 1/2" in s for s in seen):
            seen.append(proc.stderr.readline())
    finally:
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
    err = "".join(seen) + rest
    assert proc.returncode == 0, err
    warned = [line for line in err.splitlines() if gone in line and "does not exist" in line]
    assert len(warned) == 1, err  # once, at default verbosity
    summaries = [line for line in err.splitlines() if "gateway gw1: " in line]
    assert summaries, err
    assert "1/2 meters answering" in summaries[-1] and "silent: 000000000002" in summaries[-1]


def test_example_configs_work_together(tmp_path: Path) -> None:
    """configs/sim.example.toml and configs/gateway.example.toml as shipped, but for the
    folder of the stable port names and the broker this test runs against."""
    links = tmp_path / "links"
    sim_config = tmp_path / "sim.toml"
    sim_config.write_text(
        (REPO / "configs/sim.example.toml").read_text().replace("/tmp/meterhub-sim", str(links))
    )
    broker = os.environ.get("METERHUB_MQTT_URL", "mqtt://127.0.0.1:1883")
    gw_config = tmp_path / "gateway.toml"
    gw_config.write_text(
        (REPO / "configs/gateway.example.toml")
        .read_text()
        .replace("/tmp/meterhub-sim", str(links))
        .replace('url = "mqtt://127.0.0.1:1883"', f'url = "{broker}"')
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    sim = subprocess.Popen(
        [sys.executable, "-m", "launcher.cli", "sim", "--config", str(sim_config)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert sim.stdout is not None
        printed = [sim.stdout.readline() for _ in range(7)]
        assert printed[-1].strip() == "2 buses, 4 meters simulated. Ctrl-C to stop."
        assert printed[0].startswith(f"bus rs485-1: dlt645-2007 at 2400 8E1 on {links}/rs485-1")
        assert printed[4].strip() == "unit 1 (eastron-sdm120)"
        assert (links / "rtu").is_symlink()
        done = meterhub(
            "gateway", "check", "--config", str(gw_config), "--state-dir", str(tmp_path / "state")
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.count(" ok ") == 4 and "FAIL" not in done.stdout
    finally:
        sim.send_signal(signal.SIGINT)
        sim.communicate(timeout=30)
    assert sim.returncode == 0
    assert not (links / "rtu").exists(), "the stable names go with the simulator"


def test_the_checklist_speaks_chinese_when_asked() -> None:
    """Installers read Chinese first: the verdicts' checklists come from the catalogue."""
    from gateway import hints
    from gateway.drivers.base import NoAnswer
    from gateway.tools import adhoc_bus
    from meterhub.i18n import language

    bus = adhoc_bus("dlt645-2007", port="/dev/ttyUSB0", tcp=None)
    with language("zh-CN"):
        text = hints.explain(NoAnswer("silent"), bus, "000000000001")
    assert "无应答：请检查" in text and "A/B 线接线" in text and "电表是否通电" in text
    with language("en"):
        assert "no answer at" in hints.explain(NoAnswer("silent"), bus, "000000000001")
