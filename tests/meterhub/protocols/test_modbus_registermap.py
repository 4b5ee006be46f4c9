"""Register maps: the shipped models, load errors an installer can act on, read planning and
value conversion round trips."""

from __future__ import annotations

import itertools
import math
import struct
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from meterhub.protocols.modbus.registermap import (
    BUILTIN_MAPS_DIR,
    DATA_TYPES,
    Register,
    RegisterMap,
    RegisterMapError,
    RegisterValueError,
    available_models,
    load_map,
    load_maps,
    parse_map,
    plan_reads,
)
from meterhub.quantities import QUANTITIES

# --------------------------------------------------------------------------- shipped maps


def test_shipped_models() -> None:
    assert available_models() == [
        "chint-ddsu666", "chint-dtsu666", "eastron-sdm120", "eastron-sdm630", "sim-prepaid-1p",
    ]


@pytest.mark.parametrize("path", sorted(BUILTIN_MAPS_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_maps_load_and_fit_their_limits(path: Path) -> None:
    regmap = load_map(path)
    assert regmap.name == path.stem
    assert regmap.registers and set(regmap.registers) <= set(QUANTITIES)
    assert "energy_import_total" in regmap.registers
    for request in plan_reads(regmap, regmap.quantities):
        assert request.count <= regmap.max_registers


def test_facts_from_protocols_md() -> None:
    maps = load_maps()
    sdm120 = maps["eastron-sdm120"]
    assert (sdm120.register("energy_import_total").address, sdm120.register("frequency").address) \
        == (0x0048, 0x0046)
    assert {r.function for r in sdm120.registers.values()} == {"input"}
    dtsu = maps["chint-dtsu666"]
    assert dtsu.register("voltage_a").address == 0x2006
    assert dtsu.register("voltage_a").factor == Decimal("0.1")
    assert dtsu.register("power_active_total").factor == Decimal("0.0001")  # 0.1 W -> kW
    assert {r.function for r in dtsu.registers.values()} == {"holding"}
    # Real SDM/DTSU/DDSU meters have no relay; the simulator's prepaid model does.
    assert [n for n, m in maps.items() if m.relay is not None] == ["sim-prepaid-1p"]


def test_sdm120_full_poll_is_four_requests() -> None:
    sdm120 = load_maps()["eastron-sdm120"]
    plan = plan_reads(sdm120, sdm120.quantities)
    assert [(r.function_code, r.address, r.count) for r in plan] == [
        (4, 0x0000, 32), (4, 0x0046, 6), (4, 0x0156, 2),
    ]
    assert [(r.address, r.count) for r in plan_reads(sdm120, sdm120.quantities, max_gap=0)] == [
        (0x00, 2), (0x06, 2), (0x0C, 2), (0x18, 2), (0x1E, 2), (0x46, 6), (0x156, 2),
    ]


# --------------------------------------------------------------------------- load errors


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(text, "utf-8")
    return path


GOOD = """
[meter]
phases = 1
[[registers]]
quantity = "voltage_a"
address = 0
function = "input"
type = "float32"
unit = "V"
"""


@pytest.mark.parametrize(
    ("body", "key", "why"),
    [
        (GOOD.replace('"voltage_a"', '"volts"'), "registers[0].quantity", "not a canonical"),
        (GOOD.replace('"float32"', '"float"'), "registers[0].type", "not one of"),
        (GOOD.replace('"input"', '"coil"'), "registers[0].function", "not one of"),
        (GOOD.replace('unit = "V"', 'unit = "W"'), "registers[0].unit", "does not convert to V"),
        (GOOD.replace('unit = "V"', ""), "registers[0].unit", "required"),
        (GOOD.replace("address = 0", "address = 65535"), "registers[0].address", "outside"),
        (GOOD.replace("address = 0", 'address = "0x10"'), "registers[0].address", "required"),
        (GOOD + "scale = 0\n", "registers[0].scale", "non-zero"),
        (GOOD + "wordorder = 'big'\n", "registers[0].wordorder", "unknown key"),
        (GOOD.replace("phases = 1", "phases = 2"), "meter.phases", "not 1 or 3"),
        (GOOD.replace("phases = 1", "max_registers = 200"), "meter.max_registers", "1..125"),
        (GOOD + "[extra]\n", "extra", "unknown section"),
        (GOOD.replace("[meter]\nphases = 1\n", ""), "meter", "required"),
        ("[meter]\n", "registers", "at least one"),
        (GOOD + GOOD.split("[meter]\nphases = 1\n")[1], "registers[1].quantity", "mapped twice"),
        (
            GOOD + GOOD.split("[meter]\nphases = 1\n")[1]
            .replace("voltage_a", "current_a").replace("address = 0", "address = 1")
            .replace('"V"', '"A"'),
            "registers (current_a)",
            "overlaps voltage_a",
        ),
        (GOOD + '[relay]\nfunction = "coil"\naddress = 0\nopen = 0\nclosed = 0\n',
         "relay.open", "must be different"),
        (GOOD + '[relay]\nfunction = "coil"\naddress = 0\nopen = 0\nclosed = 2\n',
         "relay.closed", "not a coil value"),
        (GOOD + '[relay]\nfunction = "coil"\naddress = 0\nopen = 0\nclosed = 1\n'
         "close_permitted = 1\n", "relay.close_permitted", "two states"),
        (GOOD + '[relay]\nfunction = "discrete"\n', "relay.function", "not one of"),
        ("[meter\n", "", "not valid TOML"),
    ],
)
def test_load_errors_name_file_key_and_why(tmp_path: Path, body: str, key: str, why: str) -> None:
    path = _write(tmp_path, "site-meter", body)
    with pytest.raises(RegisterMapError) as caught:
        load_map(path)
    lines = [line for line in caught.value.problems if key in line and why in line]
    assert lines, caught.value.problems
    assert all(line.startswith(f"{path}: ") for line in caught.value.problems)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "two-problems",
        GOOD.replace('"voltage_a"', '"volts"').replace("phases = 1", "phases = 7"),
    )
    with pytest.raises(RegisterMapError) as caught:
        load_map(path)
    assert len(caught.value.problems) == 2


def test_extra_folder_adds_and_overrides_models(tmp_path: Path) -> None:
    _write(tmp_path, "site-meter", GOOD)
    _write(tmp_path, "eastron-sdm120", GOOD)  # a site's corrected copy wins
    maps = load_maps(tmp_path)
    assert "site-meter" in maps and "chint-dtsu666" in maps
    assert list(maps["eastron-sdm120"].registers) == ["voltage_a"]


def test_extra_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(RegisterMapError, match="does not exist"):
        load_maps(tmp_path / "missing")
    _write(tmp_path, "broken", "[meter\n")
    _write(tmp_path, "also-broken", GOOD.replace('"V"', '"kWh"'))
    with pytest.raises(RegisterMapError) as caught:
        load_maps(tmp_path)
    assert {Path(p.split(": ")[0]).stem for p in caught.value.problems} == {
        "broken", "also-broken",
    }


def test_unknown_quantity_names_the_model_and_what_it_has() -> None:
    with pytest.raises(KeyError, match=r"eastron-sdm120.*voltage_a"):
        plan_reads(load_maps()["eastron-sdm120"], ["balance_remaining"])


# --------------------------------------------------------------------------- planning

_NAMES = sorted(QUANTITIES)


@st.composite
def _maps(draw: st.DrawFn) -> RegisterMap:
    """A random map whose registers never overlap, with random gaps, types and functions."""
    count = draw(st.integers(1, len(_NAMES)))
    names = draw(st.permutations(_NAMES))[:count]
    entries: list[dict[str, Any]] = []
    next_free = {"input": 0, "holding": 0}
    for name in names:
        function = draw(st.sampled_from(["input", "holding"]))
        dtype = draw(st.sampled_from(DATA_TYPES))
        address = next_free[function] + draw(st.integers(0, 12))
        next_free[function] = address + (1 if dtype.endswith("16") else 2)
        entries.append({"quantity": name, "address": address, "function": function,
                        "type": dtype, "unit": QUANTITIES[name].unit})
    return parse_map({"meter": {"max_registers": 125}, "registers": entries}, name="random")


def _min_requests(regs: list[Register], limit: int, gap: int) -> int:
    """Fewest requests by dynamic programming over runs of the sorted registers."""
    regs = sorted(regs, key=lambda r: (r.address, r.end))
    best = [0] + [math.inf] * len(regs)
    for j in range(1, len(regs) + 1):
        for i in range(j):  # run regs[i:j]
            run = regs[i:j]
            end = run[0].end
            ok = True
            for reg in run[1:]:
                ok &= reg.address - end - 1 <= gap
                end = max(end, reg.end)
            if ok and end - run[0].address + 1 <= limit:
                best[j] = min(best[j], best[i] + 1)
    return int(best[-1])


@settings(max_examples=300, deadline=None)
@given(_maps(), st.integers(2, 125), st.integers(0, 20), st.data())
def test_plan_reads_covers_each_register_once_within_limits_and_minimally(
    regmap: RegisterMap, limit: int, gap: int, data: st.DataObject
) -> None:
    wanted = data.draw(st.lists(st.sampled_from(regmap.quantities), min_size=1, unique=True))
    plan = plan_reads(regmap, wanted, max_registers=limit, max_gap=gap)
    covered = [r.quantity for req in plan for r in req.registers]
    assert sorted(covered) == sorted(wanted)
    for req in plan:
        assert 1 <= req.count <= limit
        regs = sorted(req.registers, key=lambda r: r.address)
        assert req.address == regs[0].address
        assert req.address + req.count - 1 == max(r.end for r in regs)
        assert all(r.function == req.function for r in regs)
        for prev, reg in itertools.pairwise(regs):
            assert reg.address - prev.end - 1 <= gap
    for function in ("input", "holding"):
        regs = [regmap.registers[q] for q in wanted if regmap.registers[q].function == function]
        mine = sum(1 for req in plan if req.function == function)
        assert mine == (_min_requests(regs, limit, gap) if regs else 0)


def test_plan_reads_rejects_impossible_limits() -> None:
    sdm = load_maps()["eastron-sdm120"]
    with pytest.raises(ValueError, match="max_registers"):
        plan_reads(sdm, ["voltage_a"], max_registers=126)
    with pytest.raises(ValueError, match="max_gap"):
        plan_reads(sdm, ["voltage_a"], max_gap=-1)


# --------------------------------------------------------------------------- conversion


def _register(dtype: str, scale: float = 1, unit: str = "V", order: str = "big",
              quantity: str = "voltage_a") -> Register:
    regmap = parse_map(
        {"meter": {}, "registers": [{"quantity": quantity, "address": 0, "function": "holding",
                                     "type": dtype, "scale": scale, "unit": unit,
                                     "word_order": order}]},
        name="t",
    )
    return regmap.registers[quantity]


def test_golden_float32_words() -> None:
    # IEEE 754 single: 230.1 = 0x4366199A, so an SDM120 voltage read returns 4366 199A.
    assert _register("float32").decode([0x4366, 0x199A]) == 230.1
    assert _register("float32", order="little").decode([0x199A, 0x4366]) == 230.1
    # SDM power in W: 1500 W (0x44BB8000) is 1.5 kW
    assert _register("float32", unit="W", quantity="power_active_total").decode(
        [0x44BB, 0x8000]) == 1.5


def test_golden_scaled_integers() -> None:
    assert _register("uint16", scale=0.1).decode([2205]) == 220.5  # not 220.50000000000003
    assert _register("int16", scale=0.001, unit="", quantity="power_factor_total").decode(
        [0xFC18]) == -1.0
    energy = _register("uint32", scale=0.01, unit="kWh", quantity="energy_import_total")
    assert energy.decode([0x0001, 0xE240]) == 1234.56  # 123456 x 0.01
    assert energy.encode(1234.56) == [0x0001, 0xE240]


def test_values_that_cannot_be_used_raise() -> None:
    with pytest.raises(RegisterValueError, match="voltage_a"):
        _register("float32").decode([0x7FC0, 0x0000])  # NaN
    with pytest.raises(RegisterValueError, match=r"outside 0\.\.65535"):
        _register("uint16", scale=0.1).encode(6553.6)
    with pytest.raises(RegisterValueError, match="outside"):
        _register("uint32", unit="V").encode(-1.0)
    with pytest.raises(RegisterValueError, match="float32"):
        _register("float32").encode(1e39)


_SCALES = st.sampled_from([(1, "V"), (0.1, "V"), (0.001, "A"), (1, "W"), (0.1, "W"), (0.01, "kWh")])
_UNIT_QUANTITY = {"V": "voltage_a", "A": "current_a", "W": "power_active_total",
                  "kWh": "energy_import_total"}


@given(st.sampled_from(["int16", "uint16", "int32", "uint32"]), _SCALES,
       st.sampled_from(["big", "little"]), st.data())
def test_integer_words_round_trip(dtype: str, scale_unit: tuple[float, str], order: str,
                                  data: st.DataObject) -> None:
    scale, unit = scale_unit
    reg = _register(dtype, scale, unit, order, _UNIT_QUANTITY[unit])
    words = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=reg.words, max_size=reg.words))
    assert reg.encode(reg.decode(words)) == words


@given(st.integers(0, 0xFFFFFFFF), _SCALES, st.sampled_from(["big", "little"]))
def test_float32_words_round_trip(bits: int, scale_unit: tuple[float, str], order: str) -> None:
    number = struct.unpack(">f", bits.to_bytes(4, "big"))[0]
    assume(math.isfinite(number) and bits != 0x80000000)  # -0.0 reads as 0.0 on purpose
    scale, unit = scale_unit
    reg = _register("float32", scale, unit, order, _UNIT_QUANTITY[unit])
    words = [bits >> 16, bits & 0xFFFF]
    if order == "little":
        words.reverse()
    assert reg.encode(reg.decode(words)) == words


@given(st.integers(-999_999_99, 999_999_99))
def test_meter_values_round_trip_through_scaled_registers(hundredths: int) -> None:
    """A meter's value with its own resolution survives encode/decode exactly."""
    value = hundredths / 100
    reg = _register("int32", 0.01, "kWh", quantity="energy_import_total")
    assert reg.decode(reg.encode(value)) == value


@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).map(lambda v: round(v, 1)))
def test_meter_values_survive_float32_within_its_precision(value: float) -> None:
    reg = _register("float32", 0.1, "V")  # DTSU666 style: float counting 0.1 V
    back = reg.decode(reg.encode(value))
    assert back == pytest.approx(value, rel=2**-23, abs=1e-9)
