"""Canonical quantity names and units, shared by every protocol, the wire and the database.

A driver maps a protocol register or data identifier onto one of these names; everything
downstream (wire payloads, the readings table, validation, billing) speaks only these.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Quantity:
    name: str
    unit: str
    cumulative: bool = False  # energy registers only grow (modulo rollover and resets)
    description: str = ""


_ALL = [
    Quantity("energy_import_total", "kWh", True, "forward active energy, all tariffs"),
    Quantity("energy_import_t1", "kWh", True, "forward active energy, tariff 1 (sharp/critical)"),
    Quantity("energy_import_t2", "kWh", True, "forward active energy, tariff 2 (peak)"),
    Quantity("energy_import_t3", "kWh", True, "forward active energy, tariff 3 (flat)"),
    Quantity("energy_import_t4", "kWh", True, "forward active energy, tariff 4 (valley)"),
    Quantity("energy_export_total", "kWh", True, "reverse active energy, all tariffs"),
    Quantity("energy_combined_total", "kWh", True, "combined active energy (signed)"),
    Quantity("voltage_a", "V"),
    Quantity("voltage_b", "V"),
    Quantity("voltage_c", "V"),
    Quantity("current_a", "A"),
    Quantity("current_b", "A"),
    Quantity("current_c", "A"),
    Quantity("power_active_total", "kW"),
    Quantity("power_active_a", "kW"),
    Quantity("power_active_b", "kW"),
    Quantity("power_active_c", "kW"),
    Quantity("power_reactive_total", "kvar"),
    Quantity("power_factor_total", ""),
    Quantity("power_factor_a", ""),
    Quantity("power_factor_b", ""),
    Quantity("power_factor_c", ""),
    Quantity("frequency", "Hz"),
    Quantity("balance_remaining", "CNY", description="money left on a locally prepaid meter"),
]

QUANTITIES: dict[str, Quantity] = {q.name: q for q in _ALL}
ENERGY_IMPORT = "energy_import_total"


def unit_of(name: str) -> str:
    """Unit of a canonical quantity; KeyError names the unknown quantity."""
    try:
        return QUANTITIES[name].unit
    except KeyError:
        raise KeyError(f"unknown quantity {name!r}") from None
