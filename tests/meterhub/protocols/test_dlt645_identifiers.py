"""DL/T645 data identifiers: value formats (BCD, sign, decimals), tables, lookups."""

from __future__ import annotations

from datetime import date, time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterhub.protocols.dlt645.errors import BcdError, LengthError, UnknownIdentifierError
from meterhub.protocols.dlt645.identifiers import (
    TABLE_1997,
    TABLE_2007,
    DataId,
    bcd_to_int,
    decode_value,
    encode_value,
    for_quantity,
    int_to_bcd,
    lookup,
    quantities_for,
)
from meterhub.quantities import QUANTITIES

H = bytes.fromhex
ALL = [*TABLE_2007.values(), *TABLE_1997.values()]


def test_vector_values() -> None:
    # PROTOCOLS.md vectors: 00010000 reply 59 33 33 33 (-33H: 26 00 00 00) = 0.26 kWh,
    # 02010100 reply 34 43 (01 10) = 100.1 V, 1997 B611 reply 33 34 (00 01) = 100 V.
    assert decode_value(lookup(0x00010000), H("26 00 00 00")) == pytest.approx(0.26)
    assert decode_value(lookup(0x02010100), H("01 10")) == pytest.approx(100.1)
    assert decode_value(lookup(0xB611, "1997"), H("00 01")) == 100


def test_sign_is_bit_7_of_the_most_significant_byte() -> None:
    current = lookup(0x02020100)  # XXX.XXX A, signed, 3 bytes
    assert decode_value(current, H("34 12 80")) == pytest.approx(-1.234)
    assert encode_value(current, -1.234) == H("34 12 80")
    assert encode_value(current, 799.999) == H("99 99 79")
    with pytest.raises(ValueError):
        encode_value(current, 800.0)  # the top digit shares its byte with the sign
    with pytest.raises(ValueError):
        encode_value(lookup(0x00010000), -1.0)  # forward energy is unsigned


def test_bcd() -> None:
    assert bcd_to_int(H("56 34 12")) == 123456
    assert int_to_bcd(123456, 3) == H("56 34 12")
    with pytest.raises(BcdError, match="1AH"):
        bcd_to_int(H("1A"))
    with pytest.raises(ValueError):
        int_to_bcd(1000, 1)


def test_wrong_value_length() -> None:
    with pytest.raises(LengthError, match="02010100"):
        decode_value(lookup(0x02010100), H("01 10 00"))
    with pytest.raises(LengthError):
        decode_value(lookup(0x0201FF00), H("01 10 00"))


def test_date_time_address_and_status_word() -> None:
    # 2026-11-23 is a Monday: WW = 01, sent first
    assert encode_value(lookup(0x04000101), date(2026, 11, 23)) == H("01 23 11 26")
    assert decode_value(lookup(0x04000102), H("56 34 12")) == time(12, 34, 56)
    assert decode_value(lookup(0x04000401), H("61 01 00 00 00 00")) == "000000000161"
    assert decode_value(lookup(0x04000503), H("10 02")) == 0x0210  # little-endian bits
    with pytest.raises(BcdError):
        decode_value(lookup(0x04000101), H("01 32 13 26"))  # 32nd of a 13th month


def test_block_reads_split_by_reply_length() -> None:
    block = lookup(0x0001FF00)
    raw = H("00 10 00 00  00 02 00 00  00 03 00 00  00 04 00 00  00 01 00 00")
    assert decode_value(block, raw) == pytest.approx((10.0, 2.0, 3.0, 4.0, 1.0))
    assert decode_value(lookup(0x0201FF00), H("00 22 10 22 20 22")) == pytest.approx(
        (220.0, 221.0, 222.0)
    )


def test_energy_family_beyond_the_fixed_table() -> None:
    assert lookup(0x00010500).name == "forward active energy, tariff 5, current"
    assert lookup(0x00010001).name == "forward active energy, total, settlement 1 back"
    assert lookup(0x00013F0C).size == 4
    assert lookup(0x00000000).signed
    for bad in (0x00014000, 0x0001000D, 0x00050000, 0x02FF0000):
        with pytest.raises(UnknownIdentifierError, match=f"{bad:08X}"):
            lookup(bad)
    with pytest.raises(UnknownIdentifierError, match="1997"):
        lookup(0x00010000, "1997")


def test_canonical_quantities() -> None:
    for entry in ALL:
        for quantity in entry.quantities:
            assert quantity is None or quantity in QUANTITIES, entry
        if entry.quantity:
            assert QUANTITIES[entry.quantity].unit == entry.unit, entry
    assert for_quantity("energy_import_total").di == 0x00010000
    assert for_quantity("energy_import_total", "1997").di == 0x9010
    assert for_quantity("voltage_b", "1997").di == 0xB612
    assert for_quantity("balance_remaining").di == 0x00900200
    assert "frequency" in quantities_for("2007")
    with pytest.raises(UnknownIdentifierError):
        for_quantity("frequency", "1997")


def test_di_bytes_go_low_byte_first() -> None:
    assert lookup(0x02010100).di_bytes == H("00 01 01 02")
    assert lookup(0xB611, "1997").di_bytes == H("11 B6")


def _values(entry: DataId) -> st.SearchStrategy[object]:
    match entry.kind:
        case "number":
            top = (8 * 10 ** (2 * entry.size - 1) if entry.signed else 100**entry.size) - 1
            low = -top if entry.signed else 0
            return st.integers(low, top).map(
                lambda n: n / 10**entry.decimals if entry.decimals else n
            )
        case "date":
            return st.dates(date(2000, 1, 1), date(2099, 12, 31))
        case "time":
            return st.times().map(lambda t: t.replace(microsecond=0))
        case "address":
            return st.integers(0, 10**12 - 1).map(lambda n: f"{n:012d}")
        case "word":
            return st.integers(0, 256**entry.size - 1)
    raise AssertionError(entry.kind)


@pytest.mark.parametrize("entry", ALL, ids=lambda e: f"{e.version}-{e.label()}")
@given(data=st.data())
def test_round_trip_every_identifier(entry: DataId, data: st.DataObject) -> None:
    if entry.block:
        value: object = tuple(data.draw(st.lists(_values(entry), min_size=1, max_size=6)))
    else:
        value = data.draw(_values(entry))
    raw = encode_value(entry, value)  # type: ignore[arg-type]
    assert len(raw) % entry.size == 0
    back = decode_value(entry, raw)
    if entry.kind == "number":
        assert back == pytest.approx(value, abs=10**-entry.decimals / 2)
    else:
        assert back == value
