"""Tariffs as data: TOML files with dated versions, priced exactly per interval.

One model covers the four schemes of the issue. Every version has *bands* (a price per kWh
by local time of day: one band all day is a flat tariff; peak / flat / valley is time of use;
an optional critical-peak window overrides the band in given months) and optional annual
*tier blocks* (the residential three-tier scheme: a price adder per block of the kWh used in
the tier year, which resets on a configured local day). Price of a kWh = band price + tier
adder, so "tiered + TOU" is simply both.

Versions take effect at local midnight of their ``effective`` date and never before: an
interval is priced by the version in force when it was consumed, so a new version never
rewrites past charges. Band edges, version changes and tier-year resets all fall on local
times, so a day's plan (which band when, which version, which tier year) is computed once
per local date and cached; an interval that crosses an edge is split by duration, and a
piece of consumption that crosses a tier boundary is split by kWh. kWh are conserved
exactly (the last piece takes the remainder of the rounding of the others).
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from bisect import bisect_right
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

KWH_SPLIT = Decimal("1E-6")  # kWh pieces of a split interval are rounded to this, remainder last


class TariffError(ValueError):
    """A tariff file or lookup that cannot be used; says which file, key and why."""


@dataclass(frozen=True, slots=True)
class Block:
    """A tier block: kWh of the tier year up to ``up_to_kwh`` (None = no limit) add ``adder``."""

    up_to_kwh: Decimal | None
    adder: Decimal


@dataclass(frozen=True, slots=True)
class ScheduleEntry:
    start: time
    band: str


@dataclass(frozen=True, slots=True)
class Version:
    effective: date
    bands: Mapping[str, Decimal]
    schedule: tuple[ScheduleEntry, ...]  # sorted by start, first starts at 00:00
    holiday_schedule: tuple[ScheduleEntry, ...] | None
    weekends_are_holidays: bool
    holidays: frozenset[date]
    critical_band: str | None
    critical_months: frozenset[int]
    critical_windows: tuple[tuple[time, time], ...]
    blocks: tuple[Block, ...]  # empty: not tiered
    tier_reset: tuple[int, int]  # (month, day) local


@dataclass(frozen=True, slots=True)
class Piece:
    """A priced piece of an interval: one band, one tier, one price."""

    start: datetime
    end: datetime
    kwh: Decimal
    band: str
    tier: int  # 1-based; 0 when the version has no tiers
    price: Decimal
    tier_year: date

    @property
    def amount(self) -> Decimal:
        return self.kwh * self.price


@dataclass(frozen=True, slots=True)
class _Segment:
    start: datetime
    end: datetime
    band: str
    price: Decimal


@dataclass(frozen=True, slots=True)
class _DayPlan:
    version: Version
    tier_year: date
    starts: tuple[datetime, ...]
    segments: tuple[_Segment, ...]
    day_start: datetime  # UTC
    day_end: datetime  # UTC


@dataclass(eq=False)
class Tariff:
    """A named tariff: its versions, oldest first, and the local time zone of its rules."""

    tariff_id: str
    name: str
    zone: ZoneInfo
    versions: tuple[Version, ...]
    source: str = "<memory>"
    _plans: dict[date, _DayPlan] = field(default_factory=dict, repr=False)
    _last: _DayPlan | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ lookups

    def version_at(self, day: date) -> Version:
        found = None
        for v in self.versions:
            if v.effective <= day:
                found = v
        if found is None:
            raise TariffError(
                f"{self.source}: tariff {self.tariff_id!r} has no version in force on {day} "
                f"(first is effective {self.versions[0].effective})"
            )
        return found

    def tier_year(self, day: date) -> date:
        """First local day of the tier year that contains ``day``."""
        month, dom = self.version_at(day).tier_reset
        start = _safe_date(day.year, month, dom)
        return start if start <= day else _safe_date(day.year - 1, month, dom)

    def local_date(self, ts: datetime) -> date:
        return ts.astimezone(self.zone).date()

    # ------------------------------------------------------------------ pricing

    def price(
        self,
        start: datetime,
        end: datetime,
        kwh: Decimal,
        usage: MutableMapping[date, Decimal],
    ) -> list[Piece]:
        """Split and price one interval; ``usage`` (kWh per tier year) is advanced.

        Negative ``kwh`` (a downward correction) walks the tier blocks downwards, so a
        correction undoes exactly the kWh it replaces at the account's current position.
        """
        if start.tzinfo is None or end.tzinfo is None:
            raise TariffError("interval times must be timezone-aware")
        if end <= start:
            raise TariffError(f"interval end {end} is not after its start {start}")
        start, end = start.astimezone(UTC), end.astimezone(UTC)
        segments = self._segments(start, end)
        pieces: list[Piece] = []
        for (seg_start, seg_end, plan, seg), seg_kwh in zip(
            segments, _split_kwh(kwh, [(b - a) for a, b, _, _ in segments]), strict=True
        ):
            pieces.extend(self._tier_pieces(seg_start, seg_end, seg_kwh, plan, seg, usage))
        return pieces

    def amount(
        self,
        start: datetime,
        end: datetime,
        kwh: Decimal,
        usage: MutableMapping[date, Decimal],
    ) -> Decimal:
        """The exact money of one interval (same result as summing :meth:`price`'s pieces).

        Fast path for the common case, an interval inside one band of one day: no pieces
        are built and no time zone conversion is done.
        """
        plan = self._last
        if plan is None or not plan.day_start <= start < plan.day_end:
            if start.tzinfo is None:
                raise TariffError("interval times must be timezone-aware")
            plan = self._last = self._plan(self.local_date(start))
        if start < end <= plan.day_end:
            seg = plan.segments[bisect_right(plan.starts, start) - 1]
            if end <= seg.end:
                return _tier_amount(kwh, plan, seg.price, usage)
        return sum((p.kwh * p.price for p in self.price(start, end, kwh, usage)), Decimal(0))

    def _segments(
        self, start: datetime, end: datetime
    ) -> list[tuple[datetime, datetime, _DayPlan, _Segment]]:
        out = []
        t = start
        while t < end:
            plan = self._plan(self.local_date(t))
            i = bisect_right(plan.starts, t) - 1
            while i < len(plan.segments) and t < end:
                seg = plan.segments[i]
                seg_end = min(seg.end, end)
                out.append((t, seg_end, plan, seg))
                t = seg_end
                i += 1
        return out

    def _tier_pieces(
        self,
        start: datetime,
        end: datetime,
        kwh: Decimal,
        plan: _DayPlan,
        seg: _Segment,
        usage: MutableMapping[date, Decimal],
    ) -> list[Piece]:
        blocks = plan.version.blocks
        year = plan.tier_year
        used = usage.get(year, Decimal(0))
        if not blocks:  # still counted: annual kWh is shown even without tiers
            usage[year] = used + kwh
            return [Piece(start, end, kwh, seg.band, 0, seg.price, year)]
        lo, hi = (used, used + kwh) if kwh >= 0 else (used + kwh, used)
        pieces = []
        floor = Decimal(0)
        for n, block in enumerate(blocks, start=1):
            top = block.up_to_kwh
            a, b = max(lo, floor), hi if top is None else min(hi, top)
            # a zero-kWh interval still gets one piece, at the tier the account is in
            if b > a or (kwh == 0 and (top is None or used < top)):
                part = b - a if kwh >= 0 else a - b
                pieces.append(Piece(start, end, part, seg.band, n, seg.price + block.adder, year))
                if kwh == 0:
                    break
            if top is None or hi <= top:
                break
            floor = top
        if kwh < 0:
            pieces.reverse()  # highest tier undone first, for readers of the audit trail
        usage[year] = used + kwh
        return pieces

    def _plan(self, day: date) -> _DayPlan:
        plan = self._plans.get(day)
        if plan is None:
            plan = self._build_plan(day)
            if len(self._plans) > 4096:
                self._plans.clear()
            self._plans[day] = plan
        return plan

    def _build_plan(self, day: date) -> _DayPlan:
        v = self.version_at(day)
        holiday = day in v.holidays or (v.weekends_are_holidays and day.weekday() >= 5)
        schedule = v.holiday_schedule if (holiday and v.holiday_schedule) else v.schedule
        # edges in local wall time, each with the band that starts there
        edges: dict[time, str] = {}
        for entry in schedule:
            edges[entry.start] = entry.band
        bands_at = sorted(edges.items())
        if v.critical_band and day.month in v.critical_months:
            for w_start, w_end in v.critical_windows:
                band_at_end = _band_at(bands_at, w_end)
                for t in [t for t in edges if w_start <= t < w_end]:
                    del edges[t]
                edges[w_start] = v.critical_band
                if w_end != time(0) and w_end not in edges:
                    edges[w_end] = band_at_end
                bands_at = sorted(edges.items())
        next_day = day + timedelta(days=1)
        day_end = datetime.combine(next_day, time(0), self.zone).astimezone(UTC)
        starts: list[datetime] = []
        segments: list[_Segment] = []
        for i, (t, band) in enumerate(bands_at):
            seg_start = datetime.combine(day, t, self.zone).astimezone(UTC)
            seg_end = (
                datetime.combine(day, bands_at[i + 1][0], self.zone).astimezone(UTC)
                if i + 1 < len(bands_at)
                else day_end
            )
            if seg_end <= seg_start:
                continue
            if segments and segments[-1].band == band:
                prev = segments.pop()
                starts.pop()
                seg_start = prev.start
            starts.append(seg_start)
            segments.append(_Segment(seg_start, seg_end, band, v.bands[band]))
        day_start = datetime.combine(day, time(0), self.zone).astimezone(UTC)
        return _DayPlan(v, self.tier_year(day), tuple(starts), tuple(segments), day_start,
                        day_end)


def _tier_amount(
    kwh: Decimal, plan: _DayPlan, price: Decimal, usage: MutableMapping[date, Decimal]
) -> Decimal:
    """Money of ``kwh`` at one band price, walking the tier blocks (both directions)."""
    year = plan.tier_year
    used = usage.get(year, _ZERO)
    usage[year] = used + kwh
    blocks = plan.version.blocks
    if not blocks:
        return kwh * price
    lo, hi = (used, used + kwh) if kwh >= 0 else (used + kwh, used)
    total = _ZERO
    floor = _ZERO
    for block in blocks:
        top = block.up_to_kwh
        a = lo if lo > floor else floor
        b = hi if top is None or hi < top else top
        if b > a:
            total += (b - a) * (price + block.adder)
        if top is None or hi <= top:
            break
        floor = top
    return total if kwh >= 0 else -total


_ZERO = Decimal(0)


def _band_at(bands_at: list[tuple[time, str]], t: time) -> str:
    band = bands_at[0][1]
    for start, name in bands_at:
        if start <= t:
            band = name
    return band


def _safe_date(year: int, month: int, day: int) -> date:
    """A reset on 29 February falls on 28 February in common years."""
    try:
        return date(year, month, day)
    except ValueError:
        return date(year, month, 28)


def _split_kwh(kwh: Decimal, durations: list[timedelta]) -> list[Decimal]:
    """Share ``kwh`` by duration; pieces rounded to KWH_SPLIT, the last takes the rest."""
    if len(durations) == 1:
        return [kwh]
    total_us = sum(d // timedelta(microseconds=1) for d in durations)
    out: list[Decimal] = []
    left = kwh
    for d in durations[:-1]:
        share = (kwh * (d // timedelta(microseconds=1)) / total_us).quantize(
            KWH_SPLIT, rounding=ROUND_HALF_EVEN
        )
        out.append(share)
        left -= share
    out.append(left)
    return out


def version_digest(v: Version) -> str:
    """A stable fingerprint of what a version charges (sets sorted, decimals as text)."""
    canonical = {
        "effective": v.effective.isoformat(),
        "bands": {k: str(p) for k, p in sorted(v.bands.items())},
        "schedule": [(e.start.isoformat(), e.band) for e in v.schedule],
        "holiday_schedule": [(e.start.isoformat(), e.band) for e in v.holiday_schedule or ()],
        "weekends_are_holidays": v.weekends_are_holidays,
        "holidays": sorted(d.isoformat() for d in v.holidays),
        "critical": [v.critical_band, sorted(v.critical_months),
                     [(a.isoformat(), b.isoformat()) for a, b in v.critical_windows]],
        "blocks": [(None if b.up_to_kwh is None else str(b.up_to_kwh), str(b.adder))
                   for b in v.blocks],
        "reset": list(v.tier_reset),
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def check_history(conn: Any, tariffs: Mapping[str, Tariff], today: date | None = None) -> None:
    """Refuse tariff files that would rewrite the past, and remember the versions seen.

    A version already in force may not change or disappear; a version first seen with an
    effective date before today would apply retroactively. (A tariff seen for the first
    time is taken as it is.) ``conn`` is a psycopg Connection.
    """
    problems: list[str] = []
    with conn.transaction():
        conn.execute("LOCK TABLE billing_tariff_versions IN SHARE ROW EXCLUSIVE MODE")
        known: dict[str, dict[date, str]] = {}
        for tid, eff, digest in conn.execute(
            "SELECT tariff_id, effective, digest FROM billing_tariff_versions"
        ):
            known.setdefault(tid, {})[eff] = digest
        for t in tariffs.values():
            day = today or datetime.now(t.zone).date()
            seen = known.get(t.tariff_id)
            current = {v.effective: version_digest(v) for v in t.versions}
            for eff, digest in (seen or {}).items():
                if eff <= day and current.get(eff) != digest:
                    what = "was removed" if eff not in current else "was edited"
                    problems.append(
                        f"{t.source}: version effective {eff} {what} after it took effect; "
                        "add a new version with a future date instead")
            for eff, digest in current.items():
                if seen is not None and eff not in seen and eff < day:
                    problems.append(
                        f"{t.source}: new version effective {eff} is in the past; a tariff "
                        "change never applies retroactively")
                if seen is None or eff not in seen or seen[eff] != digest:
                    conn.execute(
                        """INSERT INTO billing_tariff_versions (tariff_id, effective, digest)
                           VALUES (%s, %s, %s) ON CONFLICT (tariff_id, effective)
                           DO UPDATE SET digest = EXCLUDED.digest""",
                        (t.tariff_id, eff, digest))
        if problems:
            raise TariffError("; ".join(problems))


def charge_total(pieces: Iterable[Piece]) -> Decimal:
    return sum((p.amount for p in pieces), Decimal(0))


# ---------------------------------------------------------------------------- loading


def _dec(value: Any, where: str) -> Decimal:
    if isinstance(value, float):
        raise TariffError(f"{where}: write prices as strings (\"0.5283\"), not floats")
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise TariffError(f"{where}: {value!r} is not a number") from None
    if not d.is_finite():
        raise TariffError(f"{where}: {value!r} is not finite")
    return d


def _time(value: Any, where: str) -> time:
    if isinstance(value, time):
        return value
    if isinstance(value, str):
        try:
            return time.fromisoformat(value) if value != "24:00" else time(0)
        except ValueError:
            pass
    raise TariffError(f"{where}: {value!r} is not a local time like \"08:00\"")


def _schedule(raw: Any, bands: Mapping[str, Decimal], where: str, errors: list[str]) -> tuple[
    ScheduleEntry, ...
]:
    if not isinstance(raw, list) or not raw:
        errors.append(f"{where}: expected a list of {{from = \"HH:MM\", band = \"name\"}}")
        return ()
    entries = []
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(item, dict):
            errors.append(f"{at}: expected a table")
            continue
        try:
            start = _time(item.get("from"), f"{at}.from")
        except TariffError as exc:
            errors.append(str(exc))
            continue
        band = item.get("band")
        if band not in bands:
            errors.append(f"{at}.band: {band!r} is not one of the bands {sorted(bands)}")
            continue
        entries.append(ScheduleEntry(start, str(band)))
    entries.sort(key=lambda e: e.start)
    if entries and entries[0].start != time(0):
        errors.append(f"{where}: the first entry must start at 00:00 so every hour has a band")
    if len({e.start for e in entries}) != len(entries):
        errors.append(f"{where}: two entries start at the same time")
    return tuple(entries)


def _version(raw: Any, where: str, errors: list[str]) -> Version | None:
    if not isinstance(raw, dict):
        errors.append(f"{where}: expected a table")
        return None
    eff = raw.get("effective")
    if isinstance(eff, datetime) or not isinstance(eff, date):
        errors.append(f"{where}.effective: expected a local date like 2026-01-01, got {eff!r}")
        return None
    raw_bands = raw.get("bands")
    bands: dict[str, Decimal] = {}
    if not isinstance(raw_bands, dict) or not raw_bands:
        errors.append(f"{where}.bands: expected a table of band = \"price per kWh\"")
        return None
    for name, price in raw_bands.items():
        try:
            bands[name] = _dec(price, f"{where}.bands.{name}")
            if bands[name] < 0:
                errors.append(f"{where}.bands.{name}: a price cannot be negative")
        except TariffError as exc:
            errors.append(str(exc))
    if "schedule" in raw:
        schedule = _schedule(raw["schedule"], bands, f"{where}.schedule", errors)
    elif len(bands) == 1:
        schedule = (ScheduleEntry(time(0), next(iter(bands))),)
    else:
        errors.append(f"{where}.schedule: several bands need a schedule saying when each applies")
        schedule = ()
    holiday_schedule = None
    if "holiday_schedule" in raw:
        holiday_schedule = _schedule(
            raw["holiday_schedule"], bands, f"{where}.holiday_schedule", errors
        )
    holidays = raw.get("holidays", [])
    if not isinstance(holidays, list) or not all(
        isinstance(h, date) and not isinstance(h, datetime) for h in holidays
    ):
        errors.append(f"{where}.holidays: expected a list of dates")
        holidays = []
    critical_band = None
    months: frozenset[int] = frozenset()
    windows: list[tuple[time, time]] = []
    cp = raw.get("critical_peak")
    if cp is not None:
        at = f"{where}.critical_peak"
        if not isinstance(cp, dict):
            errors.append(f"{at}: expected a table")
        else:
            critical_band = cp.get("band", "critical")
            if critical_band not in bands:
                errors.append(f"{at}.band: {critical_band!r} is not one of {sorted(bands)}")
            m = cp.get("months", [])
            if not isinstance(m, list) or not all(isinstance(x, int) and 1 <= x <= 12 for x in m):
                errors.append(f"{at}.months: expected a list of month numbers 1-12")
            else:
                months = frozenset(m)
            for i, w in enumerate(cp.get("windows", [])):
                try:
                    if not isinstance(w, list) or len(w) != 2:
                        raise TariffError(f"{at}.windows[{i}]: expected [\"HH:MM\", \"HH:MM\"]")
                    a, b = _time(w[0], f"{at}.windows[{i}]"), _time(w[1], f"{at}.windows[{i}]")
                    if b != time(0) and b <= a:
                        raise TariffError(f"{at}.windows[{i}]: end must be after start")
                    windows.append((a, b))
                except TariffError as exc:
                    errors.append(str(exc))
    blocks: list[Block] = []
    reset = (1, 1)
    tiers = raw.get("tiers")
    if tiers is not None:
        at = f"{where}.tiers"
        if not isinstance(tiers, dict):
            errors.append(f"{at}: expected a table with reset and blocks")
        else:
            r = tiers.get("reset", "01-01")
            try:
                month, dom = (int(x) for x in str(r).split("-"))
                date(2024, month, dom)
                reset = (month, dom)
            except ValueError:
                errors.append(f"{at}.reset: {r!r} is not a month-day like \"01-01\"")
            raw_blocks = tiers.get("blocks")
            if not isinstance(raw_blocks, list) or not raw_blocks:
                errors.append(f"{at}.blocks: expected a list of {{up_to_kwh, adder}}")
                raw_blocks = []
            last = Decimal(0)
            for i, b in enumerate(raw_blocks):
                bat = f"{at}.blocks[{i}]"
                try:
                    up = b.get("up_to_kwh")
                    up_d = None if up is None else _dec(up, f"{bat}.up_to_kwh")
                    if up_d is None and i != len(raw_blocks) - 1:
                        raise TariffError(f"{bat}.up_to_kwh: only the last block may be open")
                    if up_d is not None and up_d <= last:
                        raise TariffError(f"{bat}.up_to_kwh: must grow block by block")
                    blocks.append(Block(up_d, _dec(b.get("adder", "0"), f"{bat}.adder")))
                    last = up_d if up_d is not None else last
                except (TariffError, AttributeError) as exc:
                    errors.append(str(exc) if isinstance(exc, TariffError) else f"{bat}: table")
            if blocks and blocks[-1].up_to_kwh is not None:
                errors.append(f"{at}.blocks: the last block must have no up_to_kwh (open end)")
    unknown = set(raw) - {
        "effective", "bands", "schedule", "holiday_schedule", "weekends_are_holidays",
        "holidays", "critical_peak", "tiers",
    }
    if unknown:
        errors.append(f"{where}: unknown keys {sorted(unknown)}")
    return Version(
        effective=eff,
        bands=bands,
        schedule=schedule,
        holiday_schedule=holiday_schedule,
        weekends_are_holidays=bool(raw.get("weekends_are_holidays", False)),
        holidays=frozenset(holidays),
        critical_band=critical_band,
        critical_months=months,
        critical_windows=tuple(windows),
        blocks=tuple(blocks),
        tier_reset=reset,
    )


def parse_tariff(doc: Mapping[str, Any], source: str = "<memory>") -> Tariff:
    """Check a tariff document; every problem is reported at once, each with its key path."""
    errors: list[str] = []
    tariff_id = doc.get("id")
    if not isinstance(tariff_id, str) or not tariff_id:
        errors.append("id: expected a non-empty tariff id")
    tz_name = doc.get("timezone", "Asia/Shanghai")
    zone: ZoneInfo | None = None
    try:
        zone = ZoneInfo(str(tz_name))
    except (ZoneInfoNotFoundError, ValueError):
        errors.append(f"timezone: {tz_name!r} is not an IANA zone like \"Asia/Shanghai\"")
    raw_versions = doc.get("versions")
    versions: list[Version] = []
    if not isinstance(raw_versions, list) or not raw_versions:
        errors.append("versions: expected at least one [[versions]] table")
    else:
        for i, raw in enumerate(raw_versions):
            v = _version(raw, f"versions[{i}]", errors)
            if v is not None:
                versions.append(v)
        effs = [v.effective for v in versions]
        if len(set(effs)) != len(effs):
            errors.append("versions: two versions share an effective date")
    if errors:
        raise TariffError(f"{source}: " + "; ".join(errors))
    assert zone is not None and isinstance(tariff_id, str)
    versions.sort(key=lambda v: v.effective)
    return Tariff(tariff_id, str(doc.get("name", tariff_id)), zone, tuple(versions), source)


def load_tariff(path: Path) -> Tariff:
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise TariffError(f"{path}: not valid TOML ({exc})") from None
    return parse_tariff(doc, str(path))


def default_tariffs_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "configs" / "tariffs"


@lru_cache(maxsize=8)
def _load_dir(path: str, stamp: tuple[tuple[str, float], ...]) -> dict[str, Tariff]:
    del stamp  # only part of the cache key: a changed file is read again
    out: dict[str, Tariff] = {}
    for file in sorted(Path(path).glob("*.toml")):
        t = load_tariff(file)
        if t.tariff_id in out:
            other = out[t.tariff_id].source
            raise TariffError(f"{file}: tariff id {t.tariff_id!r} is also defined in {other}")
        out[t.tariff_id] = t
    return out


def load_tariffs(directory: Path | None = None) -> dict[str, Tariff]:
    """All tariffs of a folder by id (cached until a file changes)."""
    d = directory or default_tariffs_dir()
    if not d.is_dir():
        raise TariffError(f"{d}: tariff folder not found")
    stamp = tuple((str(p), p.stat().st_mtime) for p in sorted(d.glob("*.toml")))
    return _load_dir(str(d), stamp)
