"""Config validation: every broken config gives its exact message, all problems at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from gateway_helpers import signer_for

from gateway import ConfigError, config_from_dict, load_config
from meterhub.security import write_private_file, write_public_key

EXAMPLE = Path(__file__).parents[2] / "configs" / "gateway.example.toml"


def _good() -> dict[str, Any]:
    return {
        "gateway": {"id": "gw1", "site": "north"},
        "mqtt": {"url": "mqtt://127.0.0.1:1883"},
        "buses": [
            {"name": "rs485-1", "protocol": "dlt645-2007", "port": "/dev/ttyUSB0",
             "password": "271828",
             "meters": [{"address": "000000000001"}, {"address": "000000000002"}]},
            {"name": "rtu", "protocol": "modbus", "port": "/dev/ttyUSB1",
             "model": "eastron-sdm120", "meters": [{"unit": 1}, {"unit": 2}]},
        ],
    }


def _with(path: str, value: Any) -> dict[str, Any]:
    """The good config with one key (dotted path, [i] for list items) set or deleted."""
    data = _good()
    *parents, last = path.replace("]", "").replace("[", ".").split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if isinstance(value, dict) and last == "port":  # swap the serial port for another key
        del node[last]
        node.update(value)
    elif value is _DELETE:
        del node[int(last) if last.isdigit() else last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return data


_DELETE = object()

BROKEN = [
    ("buses[0].meters[1].address", "12345",
     "buses[0].meters[1].address: '12345' is not a 12-digit DL/T645 address"),
    ("buses[0].meters[1].address", 1,
     "buses[0].meters[1].address: 1 is a number; write the 12-digit DL/T645 address in quotes "
     "(e.g. '000000000001')"),
    ("buses[0].meters[1].address", "000000000001",
     "buses[0].meters[1].address: '000000000001' is already used by buses[0].meters[0] "
     "on this bus"),
    ("buses[0].meters[0].quantities", ["energy_import_totl"],
     "buses[0].meters[0].quantities[0]: 'energy_import_totl' is not a known quantity "
     "(did you mean 'energy_import_total'?)"),
    ("buses[0].meters[0].poll_interval_s", 0,
     "buses[0].meters[0].poll_interval_s: 0 must be above 0 and at most 86400"),
    ("buses[0].meters[0].poll_interval_s", "60",
     "buses[0].meters[0].poll_interval_s: '60' is not a number"),
    ("buses[0].protocol", "dlt645",
     "buses[0].protocol: 'dlt645' is not one of dlt645-2007, dlt645-1997, modbus"),
    ("buses[0].baud", 2401,
     "buses[0].baud: 2401 is not one of 300, 600, 1200, 2400, 4800, 9600, 19200, 38400, "
     "57600, 115200"),
    ("buses[0].parity", "X", "buses[0].parity: 'X' is not one of N, E, O"),
    ("buses[0].meters[0].clock_check_s", 5,
     "buses[0].meters[0].clock_check_s: 5 must be 0 (never) or between 10 and 604800 seconds"),
    ("buses[0].time_sync", "ntp", "buses[0].time_sync: 'ntp' is not one of broadcast, set"),
    ("buses[1].time_sync", "set", "buses[1].time_sync: is for DL/T645 buses"),
    ("buses[0].meters[0].has_relay", "no",
     "buses[0].meters[0].has_relay: 'no' is not true or false"),
    ("buses[0].retries", -1, "buses[0].retries: -1 must be between 0 and 10"),
    ("buses[0].port", {"tcp": "10.0.0.5"}, "buses[0].tcp: '10.0.0.5' is not HOST:PORT "
     "(for example '192.168.1.20:502')"),
    ("buses[0].tcp", "10.0.0.5:8899", "buses[0]: has both 'port' and 'tcp'; a bus is one "
     "serial port or one TCP endpoint"),
    ("buses[0].port", _DELETE, "buses[0]: needs 'port' (serial device, e.g. '/dev/ttyUSB0') "
     "or 'tcp' ('HOST:PORT')"),
    ("buses[1].port", "/dev/ttyUSB0",
     "buses[1].port: '/dev/ttyUSB0' is already used by buses[0]; put all meters of one line "
     "on one bus"),
    ("buses[1].name", "rs485-1", "buses[1].name: 'rs485-1' is already the name of buses[0]"),
    ("buses[1].meters[0].unit", 248,
     "buses[1].meters[0].unit: 248 is not a Modbus unit id (a number 1-247)"),
    ("buses[1].model", "sdm120",
     "buses[1].model: 'sdm120' is not a known register map (known: chint-ddsu666, "
     "chint-dtsu666, eastron-sdm120, eastron-sdm630, sim-prepaid-1p)"),
    ("buses[1].meters[1].model", "sdm630",
     "buses[1].meters[1].model: 'sdm630' is not a known register map (known: chint-ddsu666, "
     "chint-dtsu666, eastron-sdm120, eastron-sdm630, sim-prepaid-1p)"),
    ("buses[1].model", _DELETE,
     "buses[1].model: is required for a Modbus bus (the register map, e.g. 'eastron-sdm120'), "
     "unless each meter names its own"),
    ("buses[1].meters[0].quantities", ["balance_remaining"],
     "buses[1].meters[0].quantities: 'balance_remaining' is not in register map "
     "'eastron-sdm120' (it has voltage_a, current_a, power_active_total, power_reactive_total, "
     "power_factor_total, frequency, energy_import_total, energy_export_total, "
     "energy_combined_total)"),
    ("buses[1].meters[0].address", "000000000001",
     "buses[1].meters[0]: has both 'unit' and 'address'; give the unit id once"),
    ("buses[1].meters[1].id", "000000000001",
     "buses[1].meters[1].id: '000000000001' is already the id of buses[0].meters[0]"),
    ("buses[0].meters", [], "buses[0].meters: has no meters; add [[buses.meters]] tables "
     "(run 'meterhub gateway scan' to find them)"),
    ("buses[0].meters[0].adress", "000000000003",
     "buses[0].meters[0].adress: is not a known key (did you mean 'address'?)"),
    ("gateway.id", "gw/1",
     "gateway.id: 'gw/1' must be 1-64 letters, digits, '_', '.', ':' or '-'"),
    ("gateway.site", _DELETE, "gateway.site: is required"),
    ("mqtt.url", "http://broker",
     "mqtt.url: 'http://broker' is not an MQTT URL like 'mqtt://host:1883' or "
     "'mqtts://host:8883'"),
    ("mqtt.ca_file", "/nonexistent/ca.pem",
     "mqtt.ca_file: '/nonexistent/ca.pem' is not a file that exists"),
    ("buffer", {"max_batches": 5}, "buffer.max_batches: 5 must be between 10 and 100000000"),
    ("buses", [], "buses: no buses configured; add at least one [[buses]] table"),
]


@pytest.mark.parametrize(("path", "value", "message"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_config_names_key_value_and_why(path: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict(_with(path, value), source="gw.toml")
    assert err.value.problems == [message]
    assert str(err.value) == f"gw.toml: 1 problem:\n  {message}"


def test_every_problem_is_reported_at_once() -> None:
    data = _good()
    data["buses"][0]["meters"][1]["address"] = "12345"
    data["buses"][1]["meters"][0]["unit"] = 0
    data["gateway"]["id"] = ""
    with pytest.raises(ConfigError) as err:
        config_from_dict(data, source="gw.toml")
    assert len(err.value.problems) == 3
    assert str(err.value).startswith("gw.toml: 3 problems:\n")


def test_meter_ids_and_defaults() -> None:
    config = config_from_dict(_good())
    assert list(config.meters()) == ["000000000001", "000000000002", "gw1-rtu-1", "gw1-rtu-2"]
    dlt, rtu = config.buses
    assert (dlt.baud, dlt.parity, rtu.baud, rtu.parity) == (2400, "E", 9600, "N")
    assert rtu.meters[0].address == "1" and rtu.meters[0].model == "eastron-sdm120"


def test_unreadable_and_invalid_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing.toml: 1 problem:\n  cannot read the file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[gateway\nid = 1\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: 1 problem:\n  not valid TOML"):
        load_config(bad)


# what an installer uncomments on site, as the example's comments say
ON_SITE = (("# trusted_keys = ", "trusted_keys = "), ("# username = ", "username = "),
           ('# password = { file = "secrets/', 'password = { file = "secrets/'),
           ("relay_control = false          # read only", "# relay control on: password"))


def installed_example(folder: Path) -> Path:
    """The example config installed in ``folder`` with its secret lines enabled and the
    files they point to: the trusted public key and the secret files (mode 0600)."""
    path = folder / "gateway.toml"
    text = EXAMPLE.read_text()
    for shipped, on_site in ON_SITE:
        assert shipped in text, shipped
        text = text.replace(shipped, on_site)
    path.write_text(text)
    write_public_key(folder / "keys" / "billing.pub", signer_for().public_key)
    (folder / "secrets").mkdir()
    write_private_file(folder / "secrets" / "mqtt.password", b"mqtt-s3cret\n")
    write_private_file(folder / "secrets" / "rs485-1.password", b"314159\n")
    return path


def test_example_config_is_valid(tmp_path: Path) -> None:
    path = installed_example(tmp_path)
    config = load_config(path)
    assert config.gateway_id == "gw-0001"
    assert "flat-12b" in config.meters()
    assert config.security.trusted_keys == (tmp_path / "keys" / "billing.pub",)
    assert len(config.security.keyring()) == 1
    assert load_config(path) == config
    dlt = config.buses[0]
    assert dlt.password is not None and dlt.password.reveal() == "314159"
    assert all(m.password == dlt.password for m in dlt.meters)
    assert config.mqtt.settings().password == "mqtt-s3cret"  # type: ignore[union-attr]
    assert "314159" not in repr(config) and "mqtt-s3cret" not in repr(config)


def test_example_as_shipped_needs_no_secret() -> None:
    """It works with the simulator at once: relay control off, no trusted key (commands
    refused), the broker without a login."""
    config = load_config(EXAMPLE)
    assert config.security.trusted_keys == () and config.mqtt.password is None
    assert not any(m.relay_control for m in config.buses[0].meters)


def test_example_has_no_default_meter_password() -> None:
    assert "123456" not in EXAMPLE.read_text()


def test_relay_control_needs_a_password_named_by_key(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _good()
    del data["buses"][0]["password"]
    with pytest.raises(ConfigError) as err:
        config_from_dict(data, source="gw.toml")
    assert err.value.problems == [
        "buses[0].password: is required for relay control of DL/T645-2007 meters "
        "(meters[0], meters[1]): give password = {file = \"...\"} or {env = \"...\"} on the "
        "bus, on each meter or as [security] meter_password, or set relay_control = false"]
    data["buses"][0]["meters"][0]["password"] = {"env": "GW_TEST_M1_PASSWORD"}
    data["buses"][0]["meters"][1]["relay_control"] = False
    with pytest.raises(ConfigError, match="GW_TEST_M1_PASSWORD is not set"):
        config_from_dict(data)
    monkeypatch.setenv("GW_TEST_M1_PASSWORD", "112233")
    config = config_from_dict(data)
    first, second = config.buses[0].meters
    assert first.password is not None and first.password.reveal() == "112233"
    assert (second.password, second.relay_control) == (None, False)
    data["buses"][0]["meters"][1]["relay_control"] = True
    data["security"] = {"meter_password": "445566"}  # the gateway-wide fallback
    assert config_from_dict(data).buses[0].meters[1].password.reveal() == "445566"  # type: ignore[union-attr]


def test_bad_secrets_are_named_without_their_value(tmp_path: Path) -> None:
    loose = tmp_path / "loose.password"
    loose.write_text("987654\n")
    loose.chmod(0o644)
    data = _good()
    data["buses"][0]["password"] = "98765x"
    data["mqtt"]["password"] = {"file": str(loose)}
    with pytest.raises(ConfigError) as err:
        config_from_dict(data, source="gw.toml")
    text = str(err.value)
    assert "buses[0].password: (inline) is not a 6-digit DL/T645 password" in text
    assert "mqtt.password" in text
    assert "98765x" not in text and "987654" not in text


def test_trusted_keys_must_be_public_key_files(tmp_path: Path) -> None:
    (tmp_path / "junk.pub").write_text("not a key")
    data = _good()
    data["security"] = {"trusted_keys": ["junk.pub", "missing.pub"], "max_future_skew_s": 0}
    with pytest.raises(ConfigError) as err:
        config_from_dict(data, source="gw.toml", base_dir=tmp_path)
    assert [p.split(":")[0] for p in err.value.problems] == [
        "security.trusted_keys[0]", "security.trusted_keys[1]", "security.max_future_skew_s"]
    assert "cannot be read" in err.value.problems[1]


def test_clock_and_relay_settings_and_their_defaults() -> None:
    data = _good()
    data["buses"][0]["clock_check_s"] = 600
    data["buses"][0]["meters"][1]["has_relay"] = False  # a 2007 model without a relay
    cfg = config_from_dict(data)
    first, second = cfg.buses[0].meters
    assert (first.clock_check_s, first.has_relay, first.relay_control) == (600.0, True, True)
    # no relay: no relay control, no relay status read, and no password needed for it
    assert (second.has_relay, second.relay_control, second.report_relay_every) == (
        False, False, 0)
    assert cfg.buses[0].time_sync == "broadcast"
    assert cfg.buses[1].meters[0].clock_check_s == 3600.0
