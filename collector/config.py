"""Collector settings: plain data, checked once when built, then trusted."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import date

from meterhub import wire
from meterhub.settings import MqttSettings


class ConfigError(ValueError):
    """A collector setting that cannot work; the message names it and says why."""


@dataclass(frozen=True, slots=True)
class ValidationConfig:
    """Thresholds of the VEE rules. Defaults follow common utility practice."""

    # surge / drop against the meter's own robust baseline (median, MAD) per time-of-day bucket
    baseline_days: int = 28
    tod_buckets: int = 24  # 24: one baseline per hour of the day
    min_baseline_samples: int = 8  # fewer samples in a bucket: no verdict
    surge_z: float = 6.0  # robust z-score above which an interval is a surge
    drop_z: float = 6.0
    min_abs_kwh: float = 0.05  # ignore deviations smaller than this (noise on tiny loads)
    # ... and a sustained one is judged over up to this much of consecutive intervals
    evidence_window_s: float = 3600.0
    max_window_intervals: int = 8
    # missing reads: a gap longer than factor x the meter's expected read interval
    missing_factor: float = 2.5
    # estimation: linear up to this gap length (Ontario VEE: 1 hour), like-day beyond
    linear_max_s: int = 3600
    like_day_weeks: int = 4
    holidays: tuple[date, ...] = ()  # estimated like Sundays
    # register going backwards
    register_modulus_kwh: float = 1_000_000.0  # a 6-digit kWh register wraps here
    rollover_margin: float = 0.02  # within 2% of the modulus counts as "near the maximum"
    reset_max_kwh: float = 1.0  # a backwards step landing below this is a reset/replacement
    # what the meter can resolve: one step of its energy register, when the meter declares
    # none (meters.register_resolution_kwh x ct_ratio) and its reads do not show it
    register_step_kwh: float = 0.01  # DL/T645 XXXXXX.XX
    # a consumption rule fires only on a change of at least this many register steps
    evidence_steps: float = 2.0
    # zero consumption while current flows: a run of zero intervals must last until its
    # current (at the band's lowest voltage and this power factor) carried evidence_steps
    # steps; the pass looks back at most zero_lookback_s for the start of the run
    zero_kwh: float = 0.0005
    zero_current_a: float = 0.5
    zero_min_power_factor: float = 0.5
    zero_lookback_s: float = 3600.0
    # voltage band
    nominal_voltage: float = 230.0
    voltage_band: float = 0.10
    # clock skew of the meter (its gateway's clock checks, table clock_checks) against
    # gateway time; a check speaks for the intervals up to clock_check_valid_s after it
    clock_skew_s: float = 60.0
    clock_check_valid_s: float = 2 * 86400.0
    # a readings batch whose oldest reading arrives this long after it was taken is a late
    # arrival: one `late_batches` row per run of such batches (not an anomaly per interval)
    late_after_s: float = 3600.0
    # forward estimates (quality E, like-day profile) for a meter silent this long; billing
    # then charges them and re-charges the difference when the reads come. None: off.
    forward_estimate_after_s: float | None = None
    forward_estimate_max_s: float = 7 * 86400.0  # ... but not for meters silent longer

    def __post_init__(self) -> None:
        if self.tod_buckets < 1 or 86400 % self.tod_buckets:
            raise ConfigError("validation.tod_buckets must divide a day (e.g. 24, 48, 96)")
        if self.baseline_days < 1:
            raise ConfigError("validation.baseline_days must be at least 1")
        if not 0 < self.voltage_band < 1:
            raise ConfigError("validation.voltage_band is a fraction of nominal, e.g. 0.10")
        if self.register_modulus_kwh <= 0:
            raise ConfigError("validation.register_modulus_kwh must be positive")
        if self.register_step_kwh <= 0 or self.evidence_steps <= 0:
            raise ConfigError("validation.register_step_kwh and evidence_steps must be positive")
        if not 0 < self.zero_min_power_factor <= 1:
            raise ConfigError("validation.zero_min_power_factor is a power factor in (0, 1]")
        if self.zero_lookback_s < 0:
            raise ConfigError("validation.zero_lookback_s must not be negative")


def _default_client_id() -> str:
    # Stable across restarts on one host so the broker redelivers what we had not acked.
    return f"meterhub-collector-{socket.gethostname()}"


@dataclass(frozen=True, slots=True)
class CollectorConfig:
    database_url: str
    mqtt: MqttSettings
    # MQTT 5 shared subscription group; None means a plain subscription over MQTT 3.1.1
    # (amqtt has neither MQTT 5 nor $share), so only one collector should then run.
    shared_group: str | None = "collectors"
    interval_s: int = 900
    site: str = "+"  # topic scope: one site, or "+" for all of them
    client_id: str = field(default_factory=_default_client_id)
    # a batch is committed when it holds this many readings or is this old, whichever first
    batch_max_readings: int = 20_000
    batch_max_delay_s: float = 0.25
    # ... but go sooner when the database is idle and nothing else has arrived for this long
    batch_linger_s: float = 0.01
    # how many unacknowledged messages the broker may have in flight to us (MQTT 5)
    receive_maximum: int = 2000
    session_expiry_s: int = 7 * 86400
    # On a clean stop, end the broker session. Off by default: a persistent session makes the
    # broker keep our share of messages while we restart. Turn it on for a collector that is
    # retired for good, or the broker keeps queueing its share of a shared subscription.
    leave_on_stop: bool = False
    max_future_s: float = 300.0  # readings taken further in the future are dead-lettered
    # ... and so are readings older than this: no gateway buffers for longer, but a gateway
    # whose clock fell back to its epoch (a flat RTC battery) sends 2000-01-01 or 1970
    max_age_s: float = 400 * 86400.0
    known_meters_only: bool = False  # dead-letter readings of meters not in `meters`
    # Register an unknown meter to the gateway that sends it, as if every gateway were
    # commissioning (the demo). Off: only a gateway in its commissioning window
    # (`meterhub collector commissioning GW --minutes N`) registers meters; other unknown
    # meters wait in `pending_meters` for an operator (collector/ownership.py).
    commission_unknown_meters: bool = False
    # what one message may hold (meterhub.wire.Limits); anything beyond is dead-lettered
    max_payload_bytes: int = 1 << 20
    max_json_depth: int = 32
    max_readings_per_batch: int = 10_000
    # dead letters: a payload up to `dead_letter_keep_bytes` is kept whole (and can be
    # replayed); a longer one keeps its first `dead_letter_prefix_bytes`, its length and
    # sha256. Pruned every `dead_letter_prune_every_s` to at most this age and total size.
    dead_letter_keep_bytes: int = 64 * 1024
    dead_letter_prefix_bytes: int = 4096
    dead_letter_max_age_days: float = 30.0
    dead_letter_max_total_bytes: int = 256 * 1024 * 1024
    dead_letter_prune_every_s: float = 300.0
    # after each commit, publish `meterhub/v1/<site>/<gateway>/receipt` naming the committed
    # batches' seq ranges (QoS 1): the gateway keeps a batch until then (issue 12)
    receipts: bool = True
    validate_every_s: float | None = 5.0  # continuous validation; None: ingest only
    migrate: bool = False  # apply migrations at start
    db_retry_max_s: float = 10.0  # reconnect backoff ceiling during a database outage
    # raw readings older than this many days are dropped a month-partition at a time
    # (validated intervals are kept); None keeps everything
    retention_days: int | None = None
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def __post_init__(self) -> None:
        if self.interval_s < 1 or (86400 % self.interval_s and self.interval_s < 86400):
            raise ConfigError(f"interval_s={self.interval_s} must divide a day (e.g. 300, 900)")
        if self.batch_max_readings < 1 or self.batch_max_delay_s <= 0:
            raise ConfigError("batch_max_readings and batch_max_delay_s must be positive")
        if self.shared_group is not None and (
            not self.shared_group or any(c in self.shared_group for c in "/+#")
        ):
            raise ConfigError(f"shared_group {self.shared_group!r} must be a plain name")
        if self.retention_days is not None and self.retention_days < 1:
            raise ConfigError("retention_days must be at least 1 (or None to keep everything)")
        if min(self.max_payload_bytes, self.max_json_depth, self.max_readings_per_batch) < 1:
            raise ConfigError("max_payload_bytes, max_json_depth, max_readings_per_batch must "
                              "be positive")
        if not 0 < self.dead_letter_prefix_bytes <= self.dead_letter_keep_bytes:
            raise ConfigError("dead_letter_prefix_bytes must be within 1..dead_letter_keep_bytes")
        if not 1 <= self.receive_maximum <= 65535:
            raise ConfigError("receive_maximum must be within 1..65535")

    @property
    def limits(self) -> wire.Limits:
        return wire.Limits(max_bytes=self.max_payload_bytes, max_depth=self.max_json_depth,
                           max_items=self.max_readings_per_batch)

    @property
    def mqtt_v5(self) -> bool:
        return self.shared_group is not None


def client_id_for(prefix: str = "meterhub-collector") -> str:
    """A client id unique to this process (for tools; a service wants a stable one)."""
    return f"{prefix}-{socket.gethostname()}-{os.getpid()}"
