"""Driver capabilities are data per protocol, version and meter model (no I/O to ask)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.drivers.base import DriverCapabilities, DriverError
from gateway.drivers.dlt645 import Dlt645Driver
from gateway.drivers.modbus import ModbusDriver
from gateway.transport import TcpTransport

M = "000000000001"


def test_dlt645_relay_is_2007_only_and_every_version_takes_the_time_broadcast() -> None:
    d07 = Dlt645Driver(TcpTransport("127.0.0.1", 9), version="2007",
                       no_relay=frozenset({"000000000002"}))
    d97 = Dlt645Driver(TcpTransport("127.0.0.1", 9), version="1997")
    assert d07.capabilities(M) == DriverCapabilities(relay=True, time_sync=True, clock=True)
    # a 2007 model without a relay (has_relay = false in the config)
    assert d07.capabilities("000000000002") == DriverCapabilities(relay=False, time_sync=True,
                                                                  clock=True)
    assert d97.capabilities(M) == DriverCapabilities(relay=False, time_sync=True, clock=True)


async def test_modbus_relay_follows_the_register_map_and_no_map_gives_a_clock() -> None:
    driver = ModbusDriver.tcp("127.0.0.1", 9,
                              models={"1": "sim-prepaid-1p", "2": "eastron-sdm120"})
    try:
        assert driver.capabilities("1") == DriverCapabilities(relay=True, time_sync=False)
        assert driver.capabilities("2") == DriverCapabilities(relay=False, time_sync=False)
        with pytest.raises(DriverError, match="no clock register"):
            await driver.read_clock("1")
        with pytest.raises(DriverError, match="not configured"):
            driver.capabilities("3")
        with pytest.raises(DriverError, match="no time sync"):
            await driver.time_sync("1", datetime.now(UTC))
    finally:
        await driver.close()
