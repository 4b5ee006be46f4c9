"""A fleet described in the gateway config's words; the older words load with a warning."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from firmware_sim.fleet import Fleet, FleetConfigError

OLD = {
    "bus": [
        {"name": "a", "protocol": "dlt645-2007", "meter": [{"address": "000000000001"}]},
        {
            "name": "b",
            "protocol": "modbus-rtu",
            "baud": 9600,
            "parity": "N",
            "meter": [
                {"address": "1", "model": "sim-prepaid-1p"},
                {"address": "2", "model": "sim-prepaid-1p"},
            ],
        },
        {
            "name": "c",
            "protocol": "modbus-tcp",
            "host": "127.0.0.1",
            "port": 0,
            "meter": [{"address": 3, "model": "sim-prepaid-1p"}],
        },
    ]
}


def _new(links: Path) -> dict:
    return {
        "buses": [
            {
                "name": "a",
                "protocol": "dlt645-2007",
                "port": str(links / "a"),
                "meters": [{"address": "000000000001"}],
            },
            {
                "name": "b",
                "protocol": "modbus",
                "baud": 9600,
                "parity": "N",
                "meters": [
                    {"unit": 1, "model": "sim-prepaid-1p"},
                    {"unit": 2, "model": "sim-prepaid-1p"},
                ],
            },
            {
                "name": "c",
                "protocol": "modbus",
                "tcp": "127.0.0.1:0",
                "meters": [{"unit": 3, "model": "sim-prepaid-1p"}],
            },
        ]
    }


def test_old_words_load_with_one_warning_per_word(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "firmware_sim.fleet"):
        fleet = Fleet.from_dict(OLD, source="sim.toml")
    assert fleet.deprecations == [
        "sim.toml: bus: [[bus]] is deprecated, use [[buses]] (as in the gateway config)",
        "sim.toml: buses[0].meter (and 2 more): [[bus.meter]] is deprecated, use [[buses.meters]]",
        "sim.toml: buses[1].protocol: 'modbus-rtu' is deprecated, use 'modbus'",
        "sim.toml: buses[1].meters[0].address (and 2 more): a Modbus meter's 'address' is "
        "deprecated, use unit",
        "sim.toml: buses[2].protocol: 'modbus-tcp' with host and port is deprecated, use "
        "protocol = 'modbus' and tcp = \"127.0.0.1:0\"",
    ]
    assert [r.getMessage() for r in caplog.records] == fleet.deprecations
    assert [m.address for m in fleet.meters()] == ["000000000001", "1", "2", "3"]


def test_stable_port_names_come_and_go(tmp_path: Path) -> None:
    fleet = Fleet.from_dict(_new(tmp_path / "links"))
    assert fleet.deprecations == []
    with fleet:
        link = tmp_path / "links" / "a"
        assert link.is_symlink() and str(link.resolve()) == fleet.port("a")
        assert fleet.describe()[0] == ("a", "dlt645-2007", str(link), 1)
        assert fleet.bus_line("b") == "9600 8N1" and fleet.bus_line("c") == "tcp"
    assert not link.exists() and not link.is_symlink()


def test_a_port_name_that_is_not_our_link_is_refused(tmp_path: Path) -> None:
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "a").write_text("a real file")
    with (
        pytest.raises(FleetConfigError, match="exists and is not a link"),
        Fleet.from_dict(_new(tmp_path / "links")),
    ):
        pass
    assert (tmp_path / "links" / "a").read_text() == "a real file"


def test_problems_name_the_key() -> None:
    with pytest.raises(FleetConfigError) as caught:
        Fleet.from_dict(
            {
                "buses": [
                    {
                        "name": "a",
                        "protocol": "dlt645-2007",
                        "tcp": "h:1",
                        "parity": "X",
                        "meters": [{"unit": 1}],
                    },
                    {"name": "b", "protocol": "modbus", "meters": [{"unit": 300, "model": "x"}]},
                ]
            }
        )
    assert caught.value.problems == [
        "buses[0].parity: 'X' is not N, E or O",
        "buses[0].tcp: only Modbus meters are simulated on TCP",
        "buses[0].meters[0].unit: is for Modbus meters; a DL/T645 meter takes address",
        "buses[0].meters[0].address: required",
        "buses[1].meters[0].unit: '300' is not a Modbus unit id 1..247",
    ]
