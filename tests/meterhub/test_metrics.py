"""The shared /metrics endpoint: listen addresses, the exposition, a failing refresh."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from meterhub.metrics import (
    Metric,
    add_metrics_option,
    counter,
    metrics_endpoint,
    parse_listen,
    registry_of,
)


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:9101") == ("127.0.0.1", 9101)
    assert parse_listen("[::1]:9101") == ("::1", 9101)
    assert parse_listen("localhost:1") == ("localhost", 1)
    for bad, why in (
        ("9101", "HOST:PORT"),
        (":9101", "HOST:PORT"),
        ("example.com:9101", "not an IP address"),
        ("127.0.0.1:0x10", "0-65535"),
        ("127.0.0.1:70000", "0-65535"),
        ("127.0.0.1:", "0-65535"),
    ):
        with pytest.raises(ValueError, match=why) as info:
            parse_listen(bad)
        assert str(info.value).startswith("metrics.listen:")


def test_the_flag_names_itself_on_a_bad_address(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="x")
    add_metrics_option(parser)
    assert parser.parse_args(["--metrics", "127.0.0.1:9"]).metrics == "127.0.0.1:9"
    assert parser.parse_args([]).metrics is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--metrics", "nowhere"])
    assert "--metrics: expected HOST:PORT" in capsys.readouterr().err


class _Exporter:
    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.refreshed = 0
        self.registry = registry_of(self._collect)

    async def refresh(self) -> None:
        self.refreshed += 1
        if self.fail:
            raise ConnectionError("database away")

    def _collect(self) -> Iterator[Metric]:
        yield counter("meterhub_test_things", "Things", self.refreshed)


@pytest.mark.parametrize("fail", [False, True])
async def test_endpoint_serves_text_the_parser_reads(fail: bool) -> None:
    exporter = _Exporter(fail)
    async with (
        metrics_endpoint("127.0.0.1:0", lambda: exporter) as bound,
        aiohttp.ClientSession() as http,
    ):
        assert bound is not None
        for expected in (1, 2):
            async with http.get(f"http://{bound[0]}:{bound[1]}/metrics") as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain; version=")
                text = await response.text()
            families = {f.name: f for f in text_string_to_metric_families(text)}
            # a failed refresh still answers, with what the process itself knows
            assert families["meterhub_test_things"].samples[0].value == expected


async def test_no_listen_serves_nothing() -> None:
    async with metrics_endpoint(None, lambda: _Exporter(False)) as bound:
        assert bound is None
