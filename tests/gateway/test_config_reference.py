"""The config reference is generated from the loader and kept in step with it."""

from __future__ import annotations

from pathlib import Path

from gateway import config_reference
from gateway.config import KeyRecord, config_from_dict

ROOT = Path(__file__).parents[2]


def test_every_accepted_key_is_described() -> None:
    rows = config_reference.entries()
    undescribed = [(s, k) for s, k, _kind, _default, about in rows if not about.strip()]
    assert not undescribed, f"describe these in the example's comments or MORE: {undescribed}"
    assert {s for s, *_ in rows} == set(config_reference.SECTIONS)


def test_the_reference_lists_what_the_loader_accepts() -> None:
    """A key added to the loader appears in the reference (and in the test above)."""
    import tomllib

    record: KeyRecord = {}
    data = tomllib.loads(config_reference.EXAMPLE.read_text("utf-8"))
    config_from_dict(data, base_dir=config_reference.EXAMPLE.parent, record=record)
    accepted = {(s, k) for s, k in record if s in config_reference.SECTIONS}
    listed = {(s, k) for s, k, *_ in config_reference.entries()}
    assert accepted == listed
    assert ("buses", "baud") in listed and ("gateway", "missing_port") in listed


def test_the_committed_reference_is_current() -> None:
    committed = (ROOT / "docs" / "gateway-config.md").read_text("utf-8")
    assert committed == config_reference.render(), (
        "docs/gateway-config.md is stale: meterhub gateway config-reference "
        "--out docs/gateway-config.md")
