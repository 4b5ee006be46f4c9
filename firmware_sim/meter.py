"""A simulated meter's physics and its faults, independent of any wire protocol.

Energy registers integrate power over (simulated) time from a load profile; voltage, current,
power and power factor of each phase are derived from one another, so a reader always sees a
consistent picture. An open relay drops current and power to zero and freezes the registers.
Protocol responders (``firmware_sim.dlt645``, ``firmware_sim.modbus``) only ask
:meth:`SimMeter.value` and the relay methods; transport faults (no reply, garbled checksum,
truncated frame, slow reply) are applied by the bus on the bytes, from :attr:`SimMeter.faults`.
Physics faults are recorded in :attr:`SimMeter.labels` (:mod:`firmware_sim.labels`) as they are
injected, so a run can be scored against what validation flags.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from firmware_sim.labels import FaultLog
from meterhub.quantities import QUANTITIES

# Daily shape of a household's load, one factor per hour (morning and evening peaks).
RESIDENTIAL_PROFILE = (
    0.35, 0.3, 0.28, 0.27, 0.28, 0.35, 0.6, 0.85, 0.75, 0.6, 0.55, 0.6,
    0.7, 0.6, 0.55, 0.55, 0.65, 0.9, 1.0, 1.0, 0.95, 0.8, 0.6, 0.45,
)


@dataclass
class Faults:
    """Faults on demand. Transport faults apply to each reply while set; ``*_once`` flags
    apply to the next reply only."""

    no_reply: bool = False
    bad_checksum: bool = False
    truncate: bool = False
    slow_reply_s: float = 0.0
    no_reply_once: bool = False
    bad_checksum_once: bool = False
    truncate_once: bool = False

    def take(self) -> tuple[bool, bool, bool, float]:
        """(no_reply, bad_checksum, truncate, extra_delay) for the next reply."""
        result = (
            self.no_reply or self.no_reply_once,
            self.bad_checksum or self.bad_checksum_once,
            self.truncate or self.truncate_once,
            self.slow_reply_s,
        )
        self.no_reply_once = self.bad_checksum_once = self.truncate_once = False
        return result


@dataclass
class SimMeter:
    """One meter. ``address`` is the 12-digit DL/T645 address or the Modbus unit id as text.

    ``speedup`` makes simulated time for energy run faster than wall time, so a demo can use
    up a prepaid balance in a minute. ``base_load_kw`` is the mean load before the profile;
    ``load_noise`` the relative spread of the load from one read to the next (households are
    never as regular as a profile).
    """

    address: str
    protocol: str = "dlt645-2007"
    model: str | None = None
    phases: int = 1
    nominal_voltage: float = 220.0
    frequency_hz: float = 50.0
    base_load_kw: float = 1.5
    power_factor: float = 0.95
    load_noise: float = 0.0
    speedup: float = 1.0
    energy_kwh: float = 0.0
    export_kwh: float = 0.0
    register_max_kwh: float = 999999.99  # XXXXXX.XX rolls over past this
    profile: tuple[float, ...] = RESIDENTIAL_PROFILE
    seed: int = 0
    clock_drift_s_per_day: float = 0.0
    clock_drift_ppm: float = 0.0  # a crystal's error: 1 ppm is 0.0864 s a day
    clock_offset_s: float = 0.0  # how far off the clock is at start (positive: ahead)
    balance_remaining: float = 0.0
    relay_open: bool = False
    relay_close_pending: bool = False  # "close permitted": waits for the customer's button
    faults: Faults = field(default_factory=Faults)
    now: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._rng = random.Random(self.seed or hash(self.address))
        self._last = self.now()
        self._started = self._last
        self._clock_offset_s = self.clock_offset_s
        self._surge_factor = 1.0
        self._noise = 1.0
        self._stuck = False  # the register ignores the energy that flows
        self._voltage_factor = 1.0
        self._tariff_energy = [0.0, 0.0, 0.0, 0.0]
        self.labels = FaultLog(self.address)

    # ------------------------------------------------------------------ physics

    def _load_kw(self, at: float) -> float:
        if self.relay_open:
            return 0.0
        hour = int(at // 3600) % 24  # UTC hour of the epoch time
        return (self.base_load_kw * self.profile[hour % len(self.profile)] * self._surge_factor
                * self._noise)

    def advance(self) -> None:
        """Integrate energy up to now, hour by hour (the profile changes on the hour); called
        before every read."""
        with self._lock:
            now = self.now()
            last, self._last = self._last, max(self._last, now)
            if now <= last:
                return
            if self.load_noise:
                self._noise = max(0.0, self._rng.gauss(1.0, self.load_noise))
            while last < now and not self._stuck:
                cut = min(now, (last // 3600 + 1) * 3600)
                self._count(self._load_kw(last) * (cut - last) / 3600.0 * self.speedup, cut)
                last = cut

    def _count(self, kwh: float, at: float) -> None:
        if not kwh:
            return
        self.energy_kwh += kwh
        # per-tariff registers: split the day into 4 bands by hour (sharp/peak/flat/valley)
        hour = int((at - 1e-6) // 3600) % 24
        band = 3 if hour < 8 else (1 if 8 <= hour < 12 or 17 <= hour < 21 else 2)
        if hour in (19, 20):
            band = 0
        self._tariff_energy[band] += kwh
        if self.energy_kwh > self.register_max_kwh:  # the register wraps like a real one
            self.energy_kwh -= self.register_max_kwh + 0.01
            self.labels.instant("rollover", at)

    def value(self, quantity: str) -> float:
        """Current value of a canonical quantity (see meterhub.quantities)."""
        if quantity not in QUANTITIES:
            raise KeyError(f"unknown quantity {quantity!r}")
        self.advance()
        with self._lock:
            load = self._load_kw(self._last)
            per_phase_kw = load / self.phases
            jitter = 1.0 + self._rng.uniform(-0.004, 0.004)
            voltage = self.nominal_voltage * jitter * self._voltage_factor
            current = per_phase_kw * 1000 / (voltage * self.power_factor)
            pf = self.power_factor if load > 0 else 1.0
            phase = quantity[-1] if quantity[-2:] in ("_a", "_b", "_c") else ""
            if phase and "abc".index(phase) >= self.phases:
                return 0.0
            match quantity:
                case "energy_import_total" | "energy_combined_total":
                    return round(self.energy_kwh, 2)
                case "energy_export_total":
                    return round(self.export_kwh, 2)
                case "energy_import_t1" | "energy_import_t2" | "energy_import_t3" \
                        | "energy_import_t4":
                    return round(self._tariff_energy[int(quantity[-1]) - 1], 2)
                case "voltage_a" | "voltage_b" | "voltage_c":
                    return round(voltage, 1)
                case "current_a" | "current_b" | "current_c":
                    return round(current, 3)
                case "power_active_total":
                    return round(load, 4)
                case "power_active_a" | "power_active_b" | "power_active_c":
                    return round(per_phase_kw, 4)
                case "power_reactive_total":
                    return round(load * math.tan(math.acos(pf)), 4)
                case "power_factor_total" | "power_factor_a" | "power_factor_b" | "power_factor_c":
                    return round(pf, 3)
                case "frequency":
                    return round(self.frequency_hz + self._rng.uniform(-0.02, 0.02), 2)
                case "balance_remaining":
                    return round(self.balance_remaining, 2)
            raise KeyError(f"quantity {quantity!r} is not simulated")

    def clock(self) -> datetime:
        """The meter's own clock, drifting from true time as configured."""
        elapsed_s = self.now() - self._started
        drift = (self.clock_drift_s_per_day / 86400.0 + self.clock_drift_ppm * 1e-6) \
            * elapsed_s + self._clock_offset_s
        return datetime.fromtimestamp(self.now(), UTC) + timedelta(seconds=drift)

    def set_clock(self, when: datetime) -> None:
        """Time sync (broadcast or written): the meter adopts the given time and keeps it
        in whole seconds, as a DL/T645 meter does; its drift starts again from there."""
        self._started = self.now()
        self._clock_offset_s = (when - datetime.fromtimestamp(self.now(), UTC)).total_seconds()

    # ------------------------------------------------------------------ relay

    def open_relay(self) -> None:
        self.advance()  # energy up to the trip belongs to the closed period
        with self._lock:
            self.relay_open = True
            self.relay_close_pending = False

    def close_relay(self, *, permitted_only: bool = False) -> None:
        """Close now, or (DL/T645 1BH) only allow closing until the customer presses."""
        self.advance()
        with self._lock:
            if permitted_only:
                self.relay_close_pending = True
            else:
                self.relay_open = False
                self.relay_close_pending = False

    def press_button(self) -> None:
        """The customer's button: closes a relay that was permitted to close."""
        if self.relay_close_pending:
            self.close_relay()

    def status_word3(self) -> int:
        """DL/T645-2007 status word 3: b4 relay open, b6 relay command state, b8..9 type."""
        word = 0
        if self.relay_open:
            word |= 1 << 4 | 1 << 6
        word |= 0b10 << 8  # money prepaid meter
        return word

    # ------------------------------------------------------------------ physics faults

    def surge(self, factor: float) -> None:
        """Sudden surge (factor > 1) or drop (factor < 1, 0 for drop to zero) of the load;
        factor 1 ends it."""
        self.advance()
        at = self.now()
        self.labels.end("surge", at)
        self.labels.end("drop", at)
        if factor != 1.0:
            self.labels.begin("surge" if factor > 1.0 else "drop", at, factor=factor)
        self._surge_factor = factor

    def stick_register(self, stuck: bool = True) -> None:
        """The energy register stops counting while current still flows (a stuck or bypassed
        register: what ``zero_with_current`` looks for); False counts again."""
        self.advance()
        self._stuck = stuck
        if stuck:
            self.labels.begin("zero_with_current", self.now())
        else:
            self.labels.end("zero_with_current", self.now())

    def voltage_fault(self, factor: float) -> None:
        """Supply voltage at ``factor`` x nominal (a sag below 1, a swell above); 1 ends it."""
        self._voltage_factor = factor
        if factor != 1.0:
            self.labels.begin("voltage", self.now(), factor=factor)
        else:
            self.labels.end("voltage", self.now())

    def drift_clock(self, seconds_per_day: float) -> None:
        """The meter's clock drifts from now on at this rate (0 stops the drift, keeping the
        offset it reached)."""
        with self._lock:
            now = self.now()
            self._clock_offset_s += self.clock_drift_s_per_day * (now - self._started) / 86400
            self._started = now
            self.clock_drift_s_per_day = seconds_per_day
        if seconds_per_day:
            self.labels.begin("clock_drift", now, seconds_per_day=seconds_per_day)
        else:
            self.labels.end("clock_drift", now)

    def silence(self, silent: bool = True) -> None:
        """The meter stops answering on the bus (a lasting ``no_reply``); False answers again."""
        self.faults.no_reply = silent
        if silent:
            self.labels.begin("no_reply", self.now())
        else:
            self.labels.end("no_reply", self.now())

    def step_back(self, kwh: float) -> None:
        """The register goes back by ``kwh`` and counts on from there (a meter reprogrammed or
        swapped for a used one): near neither zero nor the maximum."""
        self.advance()
        with self._lock:
            before = self.energy_kwh
            self.energy_kwh = max(0.0, before - kwh)
        self.labels.instant("backwards", self.now(), before=round(before, 2),
                            after=round(self.energy_kwh, 2))

    def reset_register(self, to_kwh: float = 0.0) -> None:
        """Register reset, as after a meter reset or a replaced meter starting at zero."""
        self.advance()
        with self._lock:
            before = self.energy_kwh
            self.energy_kwh = to_kwh
            self._tariff_energy = [0.0, 0.0, 0.0, 0.0]
        self.labels.instant("reset", self.now(), before=round(before, 2), after=to_kwh)

    def near_rollover(self, margin_kwh: float = 0.5) -> None:
        """Put the register just below its maximum so it rolls over soon."""
        self.advance()
        with self._lock:
            self.energy_kwh = self.register_max_kwh - margin_kwh

    def replace(self, new_address: str | None = None) -> None:
        """Meter replaced: a new address (if given) and a register starting from zero."""
        self.reset_register()
        if new_address:
            self.address = new_address
