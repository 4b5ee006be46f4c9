"""COPY text layout: the escaping and line shape every writer of `readings` shares."""

from __future__ import annotations

from datetime import UTC, datetime

from collector import _copy

TS = datetime(2026, 3, 2, 0, 15, tzinfo=UTC)


def test_ids_are_escaped_and_rows_laid_out_as_ingest_builds_them() -> None:
    rows: list[_copy.Row] = [
        ("m\t1", "energy_import_total", TS, 12.5, "kWh", "g\\w", 7),
        ("m\t1", "voltage_a", TS, 230.0, "V", "g\\w", 7),
    ]
    text = _copy.copy_text(rows)
    assert text == (b"m\\t1\tenergy_import_total\t2026-03-02T00:15:00+00:00\t12.5\tkWh\tg\\\\w\t7\n"
                    b"m\\t1\tvoltage_a\t2026-03-02T00:15:00+00:00\t230.0\tV\tg\\\\w\t7\n")
    same = _copy.reading_lines(_copy.escape("m\t1"), TS.isoformat(),
                               [("energy_import_total", 12.5, "kWh"), ("voltage_a", 230.0, "V")],
                               _copy.tail("g\\w", 7))
    assert same.encode() == text


def test_with_column_appends_to_every_line() -> None:
    assert _copy.with_column(b"a\tb\nc\td\n", "x") == b"a\tb\tx\nc\td\tx\n"
    assert _copy.escape("a\r\nb") == "a\\r\\nb"
