"""COPY text format of `readings` rows: the one place that escapes values and lays out lines.

Ingest builds these lines while it parses (formatting rows later from tuples cost as much as
parsing); the store streams them into COPY; tools and the benchmark build the same text from
row tuples. Quantities and units are known names and values finite floats, so only ids
(meter, gateway) need escaping.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from meterhub.copytext import escape

# (meter_id, quantity, ts, value, unit, gateway, seq): the shape of a `readings` row
Row = tuple[str, str, datetime, float, str, str, int]

def tail(gateway: str, seq: int) -> str:
    """The end of every line of one batch: gateway and seq columns and the newline."""
    return f"\t{escape(gateway)}\t{seq}\n"


def reading_lines(meter: str, stamp: str, values: Iterable[tuple[str, float, str]],
                  end: str) -> str:
    """COPY lines of one reading, one per (quantity, value, unit): `meter` already escaped,
    `stamp` the ISO form of its time, `end` from :func:`tail`."""
    return "".join([f"{meter}\t{name}\t{stamp}\t{number!r}\t{unit}{end}"
                    for name, number, unit in values])


def with_column(text: bytes, value: str) -> bytes:
    """Append one constant column to every line of COPY text."""
    return text.replace(b"\n", b"\t" + value.encode() + b"\n")


def copy_text(rows: Iterable[Row]) -> bytes:
    """COPY text of `readings` rows given as tuples, in the same format ingest builds (for
    tools and the benchmark's reference COPY)."""
    escaped: dict[str, str] = {}
    stamps: dict[datetime, str] = {}
    out: list[str] = []
    for meter, quantity, ts, value, unit, gateway, seq in rows:
        m = escaped.get(meter)
        if m is None:
            m = escaped[meter] = escape(meter)
        t = stamps.get(ts)
        if t is None:
            t = stamps[ts] = ts.isoformat()
        out.append(reading_lines(m, t, ((quantity, value, unit),), tail(gateway, seq)))
    return "".join(out).encode()
