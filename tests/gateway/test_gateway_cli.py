"""The installer's commands as an installer runs them: a process on a simulated bus."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from gateway_helpers import SIM_MODEL, dlt_meters, rtu_meters

from firmware_sim.modbus_tcp import ModbusTcpServer

REPO = Path(__file__).parents[2]


def meterhub(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "launcher.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_read_dlt645_prints_value_with_unit(sim_bus: Any) -> None:
    meters = dlt_meters(2)
    meters[1].energy_kwh = 1234.56
    bus = sim_bus("dlt645", meters, baud=2400)
    done = meterhub("gateway", "read", "--protocol", "dlt645-2007", "--port", bus.port,
                    "--baud", "2400", "--address", "000000000002", "--item",
                    "energy_import_total")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "energy_import_total = 1234.56 kWh"

    done = meterhub("gateway", "read", "--protocol", "dlt645-2007", "--port", bus.port,
                    "--baud", "2400", "--address", "000000000001", "--item", "voltage_a",
                    "--json")
    value = json.loads(done.stdout)
    assert value["unit"] == "V" and 200 < value["value"] < 240
    assert value["meter"] == "000000000001" and value["quantity"] == "voltage_a"


def test_read_dlt645_data_identifier(sim_bus: Any) -> None:
    bus = sim_bus("dlt645", dlt_meters(1, first=42))
    done = meterhub("gateway", "read", "--protocol", "dlt645-2007", "--port", bus.port,
                    "--baud", "9600", "--address", "000000000042", "--item", "04000401")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "04000401 (meter address) = 000000000042"


def test_read_modbus_and_a_silent_meter(sim_bus: Any) -> None:
    bus = sim_bus("modbus", rtu_meters(2))
    done = meterhub("gateway", "read", "--protocol", "modbus", "--port", bus.port,
                    "--model", SIM_MODEL, "--unit", "2", "--item", "energy_import_total",
                    "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["value"] == 52.0

    done = meterhub("gateway", "read", "--protocol", "modbus", "--port", bus.port,
                    "--model", SIM_MODEL, "--unit", "9", "--item", "energy_import_total",
                    "--timeout", "0.2", "--retries", "0")
    assert done.returncode == 1
    assert "unit 9" in done.stderr and "no reply" in done.stderr.lower()


def test_check_prints_a_table_and_fails_for_a_silent_meter(sim_bus: Any,
                                                           tmp_path: Path) -> None:
    dlt = sim_bus("dlt645", dlt_meters(2))
    dlt.meters[1].faults.no_reply = True
    rtu = sim_bus("modbus", rtu_meters(1))
    config = tmp_path / "gw.toml"
    config.write_text(f"""
[gateway]
id = "gw1"
site = "north"
[[buses]]
name = "dlt"
protocol = "dlt645-2007"
port = "{dlt.port}"
baud = 9600
timeout_s = 0.3
retries = 0
quantities = ["energy_import_total", "voltage_a"]
relay_control = false  # read only: no relay password needed
meters = [{{ address = "000000000001" }}, {{ address = "000000000002" }}]
[[buses]]
name = "rtu"
protocol = "modbus"
port = "{rtu.port}"
model = "{SIM_MODEL}"
quantities = ["energy_import_total", "current_a"]
meters = [{{ unit = 1 }}]
""")
    done = meterhub("gateway", "check", "--config", str(config), "--state-dir",
                    str(tmp_path / "state"))
    assert done.returncode == 1, "a meter did not answer"
    lines = done.stdout.splitlines()
    assert lines[0] == f"OK   state directory {tmp_path / 'state'}: will be created in {tmp_path}"
    assert lines[1].startswith("OK   broker mqtt://") and lines[1].endswith("login accepted")
    assert lines[2] == (f"FAIL bus dlt ({dlt.port}, 9600 8E1): partly, 1 of 2 meters read")
    assert lines[3] == f"OK   bus rtu ({rtu.port}, 9600 8N1): ok, 1 of 1 meters read"
    assert lines[4].split() == ["meter", "bus", "protocol", "verdict", "rtt", "ms", "values",
                                "/", "cause"]
    rows = {line.split()[0]: line for line in lines[5:]}
    assert set(rows) == {"000000000001", "000000000002", "gw1-rtu-1"}
    assert " ok " in rows["000000000001"] and "energy_import_total=101 kWh" in \
        rows["000000000001"] and "voltage_a=" in rows["000000000001"]
    # the other meter on the line answers: the line is ruled out, the address comes first
    assert " no answer " in rows["000000000002"] and (
        "no answer at 9600 8E1 from address 000000000002: check the address (000000000002), "
        "the protocol version (dlt645-2007 or dlt645-1997), that the meter is powered "
        "(ruled out: the port opens; baud, parity and wiring at the adapter (1 other meter(s) "
        "on this line answer))") in rows["000000000002"]
    assert "energy_import_total=51 kWh" in rows["gw1-rtu-1"] and " A" in rows["gw1-rtu-1"]
    assert "2 of 3 meters read (1 no answer)" in done.stderr


def test_check_reports_every_config_problem(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text('[gateway]\nid = "gw1"\n[[buses]]\nname = "a"\nprotocol = "dlt645"\n'
                      'port = "/dev/null"\nmeters = [{ address = "12345" }]\n')
    done = meterhub("gateway", "check", "--config", str(config))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"{config}: 3 problems:",
        "  gateway.site: is required",
        "  buses[0].protocol: 'dlt645' is not one of dlt645-2007, dlt645-1997, modbus",
        "  buses[0].meters[0].address: '12345' is not a 12-digit DL/T645 address",
    ]


def test_scan_dlt645_single_meter_by_read_address(sim_bus: Any) -> None:
    bus = sim_bus("dlt645", dlt_meters(1, first=777))
    done = meterhub("gateway", "scan", "--protocol", "dlt645-2007", "--port", bus.port,
                    "--baud", "9600", "--range", "1-3")
    assert done.returncode == 0, done.stderr
    assert 'address = "000000000777"' in done.stdout
    assert "[[buses.meters]]" in done.stdout and 'protocol = "dlt645-2007"' in done.stdout
    assert "4/4" in done.stderr, "progress bar on stderr"


def test_scan_dlt645_sweep_finds_meters_sharing_a_line(sim_bus: Any) -> None:
    bus = sim_bus("dlt645", [*dlt_meters(1, first=2), *dlt_meters(1, first=5)])
    done = meterhub("gateway", "scan", "--protocol", "dlt645-2007", "--port", bus.port,
                    "--baud", "9600", "--range", "1-6")
    assert done.returncode == 0, done.stderr
    found = [line for line in done.stdout.splitlines() if line.startswith("address")]
    assert found == ['address = "000000000002"', 'address = "000000000005"']


def test_scan_modbus_unit_sweep(sim_bus: Any) -> None:
    bus = sim_bus("modbus", [*rtu_meters(1, first=3), *rtu_meters(1, first=7)])
    done = meterhub("gateway", "scan", "--protocol", "modbus", "--port", bus.port,
                    "--units", "1-8", "--model", SIM_MODEL)
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stdout.splitlines() if line.startswith("unit")] == \
        ["unit = 3", "unit = 7"]
    assert f'model = "{SIM_MODEL}"' in done.stdout


def test_read_modbus_tcp() -> None:
    server = ModbusTcpServer(rtu_meters(1, first=4)).start()
    try:
        done = meterhub("gateway", "read", "--protocol", "modbus", "--tcp",
                        f"127.0.0.1:{server.port}", "--model", SIM_MODEL, "--unit", "4",
                        "--item", "energy_import_total")
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "energy_import_total = 54 kWh"
