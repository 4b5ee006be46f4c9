"""The gateway's TOML config: read once, checked once, then typed.

An installer edits this file on site, so validation never stops at the first mistake: every
problem is collected with its key path, the bad value and why, and :class:`ConfigError` lists
them all. Indexes in key paths count from 0, like the TOML arrays they point into.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from meterhub.quantities import QUANTITIES
from meterhub.security import KeyFileError, Keyring, Secret, SecretError, load_secret
from meterhub.settings import MqttSettings, SettingsError

BusProtocol = Literal["dlt645-2007", "dlt645-1997", "modbus"]
PROTOCOLS: tuple[BusProtocol, ...] = ("dlt645-2007", "dlt645-1997", "modbus")
BAUDS = (300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
DEFAULT_QUANTITIES = ("energy_import_total",)
DEFAULT_RELAY_EVERY = 1  # polls per relay state report when not configured

_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_DLT_ADDRESS = re.compile(r"^[0-9]{12}$")


class ConfigError(ValueError):
    """A config that cannot run; ``problems`` holds one line per mistake."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"{source}: {count}:\n" + "\n".join(f"  {p}" for p in problems))


# ---------------------------------------------------------------------------- typed config


@dataclass(frozen=True, slots=True)
class MeterConfig:
    """One meter. ``id`` is the meter's name on the wire; ``address`` is what the bus uses
    (the 12-digit DL/T645 address, or the Modbus unit id as text)."""

    id: str
    address: str
    protocol: BusProtocol
    poll_interval_s: float
    quantities: tuple[str, ...]
    model: str | None = None
    # read the relay state (and DL/T645 alarm bits) with every N-th poll, so readings carry
    # the relay's truth; 0 never; None (not configured) every poll where the driver can
    report_relay_every: int | None = None
    relay_control: bool = True  # relay commands run on it (False: refused as invalid)
    password: Secret | None = None  # DL/T645 relay/write password: its own, else its bus's
    # the meter model has a relay (DL/T645-2007 meters without one say has_relay = false;
    # DL/T645-1997 has none; a Modbus meter's register map says it)
    has_relay: bool = True
    clock_check_s: float = 3600.0  # read the meter's clock this often (0: never)


@dataclass(frozen=True, slots=True)
class BusConfig:
    """One RS-485 port (``port``) or one TCP endpoint (``tcp``) and the meters behind it."""

    name: str
    protocol: BusProtocol
    meters: tuple[MeterConfig, ...]
    port: str | None = None
    tcp: tuple[str, int] | None = None
    baud: int = 2400
    parity: str = "E"
    stopbits: int = 1
    bytesize: int = 8
    timeout_s: float = 1.0
    retries: int = 2
    inter_frame_gap_s: float = 0.0
    # DL/T645 only: wake-up preamble and the relay-control credentials (0x1C); the password
    # is the bus's default (or [security] meter_password), a meter may have its own
    preamble: int = 4
    password: Secret | None = None
    password_level: int = 2
    operator: str = "00000000"
    time_sync: str = "broadcast"  # DL/T645: "broadcast" (08H to all) or "set" (write, per meter)
    # Modbus only: a folder of extra register maps next to the packaged ones
    maps_dir: str | None = None

    @property
    def is_serial(self) -> bool:
        """A serial bus carries one transaction at a time; a TCP endpoint has its own worker."""
        return self.port is not None

    @property
    def frame_gap_s(self) -> float:
        """Silence the scheduler keeps between two transactions: the configured gap, and on a
        Modbus RTU line at least the 3.5-character interval that ends a frame (Modbus over
        serial line 2.5.1.1: 1.75 ms above 19200 baud)."""
        if self.protocol != "modbus" or not self.is_serial:
            return self.inter_frame_gap_s
        bits = 1 + self.bytesize + (self.parity != "N") + self.stopbits
        t35 = 1.75e-3 if self.baud > 19200 else 3.5 * bits / self.baud
        return max(self.inter_frame_gap_s, t35)

    @property
    def endpoint(self) -> str:
        return self.port if self.port is not None else f"{self.tcp[0]}:{self.tcp[1]}"  # type: ignore[index]


@dataclass(frozen=True, slots=True)
class MqttConfig:
    url: str | None = None
    username: str | None = None
    password: Secret | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive_s: int = 30

    def settings(self) -> MqttSettings | None:
        """Broker settings from the file, or None when the file names no broker."""
        if self.url is None:
            return None
        base = MqttSettings.from_url(self.url, setting="mqtt.url")
        return MqttSettings(
            host=base.host,
            port=base.port,
            tls=base.tls or self.ca_file is not None,
            username=self.username or base.username,
            password=self.password.reveal() if self.password is not None else base.password,
            ca_file=self.ca_file,
            cert_file=self.cert_file,
            key_file=self.key_file,
        )


@dataclass(frozen=True, slots=True)
class BufferConfig:
    """Store-and-forward limits: how many batches may wait, how fast a backlog drains."""

    max_batches: int = 100_000
    replay_rate: float = 20.0  # batches per second while a backlog drains
    publish_timeout_s: float = 10.0
    # keep a batch until the collector's receipt names it (False: until the broker's PUBACK)
    receipts: bool = True
    receipt_timeout_s: float = 10.0  # send it again after this (doubling, jittered)


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """Who may command this gateway: the public keys (PEM files) of the signers it trusts,
    several during a key rotation, and how far ahead of its clock a command may be dated."""

    trusted_keys: tuple[Path, ...] = ()
    max_future_skew_s: float = 60.0
    meter_password: Secret | None = None  # the DL/T645 password of meters that name none

    def keyring(self) -> Keyring:
        """The trusted keys, loaded; empty means every command is refused."""
        return Keyring.from_files(self.trusted_keys)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    gateway_id: str
    site: str
    buses: tuple[BusConfig, ...]
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    batch_interval_s: float = 5.0
    max_batch_readings: int = 500
    status_interval_s: float = 30.0
    backoff_max_s: float = 300.0
    state_dir: Path | None = None
    source: str = "<dict>"
    # a serial port missing at start: "degrade" runs the other buses and warns once per
    # port (its meters are read once it appears); "refuse" does not start
    missing_port: str = "degrade"
    summary_interval_s: float = 60.0  # one summary line at default verbosity; 0: none

    def meters(self) -> dict[str, tuple[BusConfig, MeterConfig]]:
        """Every meter by its wire id, with the bus it hangs on."""
        return {m.id: (b, m) for b in self.buses for m in b.meters}


# ---------------------------------------------------------------------------- checking


# (section path without indexes, key) -> (kind in words, default): what the reference lists
KeyRecord = dict[tuple[str, str], tuple[str, Any]]


class _Checker:
    """Walks the raw TOML tables, recording every problem instead of raising at the first."""

    def __init__(self, base_dir: Path | None = None, record: KeyRecord | None = None) -> None:
        self.problems: list[str] = []
        self.base_dir = base_dir
        # the config reference (gateway/config_reference.py) listens to the walk: every key a
        # table accepts and, for each key read, its type and default
        self.record = record

    def _seen(self, path: str, key: str, kind: str, default: Any) -> None:
        if self.record is not None:
            self.record.setdefault((re.sub(r"\[\d+\]", "", path), key), (kind, default))

    def problem(self, path: str, value: Any, why: str) -> None:
        self.problems.append(f"{path}: {value!r} {why}" if value is not _MISSING else
                             f"{path}: {why}")

    def table(self, raw: Any, path: str) -> dict[str, Any]:
        if raw is _MISSING:
            return {}
        if not isinstance(raw, dict):
            self.problem(path, raw, "is not a table")
            return {}
        return raw

    def unknown_keys(self, raw: Mapping[str, Any], known: tuple[str, ...], path: str) -> None:
        for key in known:
            self._seen(path, key, "table", _MISSING)
        for key in raw:
            if key not in known:
                hint = difflib.get_close_matches(key, known, n=1)
                why = f"is not a known key (did you mean {hint[0]!r}?)" if hint else \
                    f"is not a known key (known: {', '.join(known)})"
                self.problems.append(f"{_join(path, key)}: {why}")

    def get(
        self,
        raw: Mapping[str, Any],
        key: str,
        path: str,
        kind: type | tuple[type, ...],
        default: Any,
        check: Callable[[Any], str | None] | None = None,
    ) -> Any:
        """The value at ``key`` if it has the right type and passes ``check``; else the
        default, with the problem recorded. ``default=_MISSING`` makes the key required."""
        if self.record is not None:
            self.record[(re.sub(r"\[\d+\]", "", path), key)] = (_kind_name(kind), default)
        where = _join(path, key)
        if key not in raw:
            if default is _MISSING:
                self.problems.append(f"{where}: is required")
            return default
        value = raw[key]
        ok_type = isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool
                                                   and bool not in _as_tuple(kind))
        if not ok_type:
            self.problem(where, value, f"is not {_kind_name(kind)}")
            return default
        if check is not None and (why := check(value)) is not None:
            self.problem(where, value, why)
            return default
        return value


    def secret(self, raw: Mapping[str, Any], key: str, path: str,
               check: Callable[[str], str | None] | None = None) -> Secret | None:
        """A secret given as ``{file = ...}``, ``{env = ...}`` or inline (with a warning);
        problems name the key, never the value."""
        if self.record is not None:
            self.record[(re.sub(r"\[\d+\]", "", path), key)] = ("a secret", None)
        if key not in raw:
            return None
        where = _join(path, key)
        try:
            secret = load_secret(where, raw[key], base_dir=self.base_dir)
        except SecretError as exc:
            self.problems.append(str(exc))
            return None
        if check is not None and (why := check(secret.reveal())) is not None:
            self.problems.append(f"{where}: ({secret.source}) {why}")
            return None
        return secret


_MISSING: Any = object()


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "text", int: "a whole number", float: "a number", bool: "true or false",
             list: "a list", dict: "a table"}
    kinds = _as_tuple(kind)
    if kinds == (int, float):
        return "a number"
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _name(value: str) -> str | None:
    return None if _NAME.match(value) else "must be 1-64 letters, digits, '_', '.', ':' or '-'"


def _positive(limit: float) -> Callable[[float], str | None]:
    def check(value: float) -> str | None:
        if not 0 < value <= limit:
            return f"must be above 0 and at most {limit:g}"
        return None
    return check


def _between(low: int, high: int) -> Callable[[int], str | None]:
    def check(value: int) -> str | None:
        return None if low <= value <= high else f"must be between {low} and {high}"
    return check


def _one_of(choices: tuple[Any, ...]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in choices else f"is not one of {', '.join(map(str, choices))}"
    return check


def _file(value: str) -> str | None:
    return None if Path(value).is_file() else "is not a file that exists"


def _tcp_endpoint(value: str) -> str | None:
    host, sep, port = value.rpartition(":")
    if not (sep and host and port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        return "is not HOST:PORT (for example '192.168.1.20:502')"
    return None


def _check_mqtt(c: _Checker, raw: dict[str, Any]) -> MqttConfig:
    keys = ("url", "username", "password", "ca_file", "cert_file", "key_file", "keepalive_s")
    c.unknown_keys(raw, keys, "mqtt")

    def url(value: str) -> str | None:
        try:
            MqttSettings.from_url(value, setting="mqtt.url")
        except SettingsError:
            return "is not an MQTT URL like 'mqtt://host:1883' or 'mqtts://host:8883'"
        return None

    cfg = MqttConfig(
        url=c.get(raw, "url", "mqtt", str, None, url),
        username=c.get(raw, "username", "mqtt", str, None),
        password=c.secret(raw, "password", "mqtt"),
        ca_file=c.get(raw, "ca_file", "mqtt", str, None, _file),
        cert_file=c.get(raw, "cert_file", "mqtt", str, None, _file),
        key_file=c.get(raw, "key_file", "mqtt", str, None, _file),
        keepalive_s=c.get(raw, "keepalive_s", "mqtt", int, 30, _between(5, 3600)),
    )
    if cfg.key_file and not cfg.cert_file:
        c.problems.append("mqtt.key_file: needs mqtt.cert_file (the client certificate)")
    return cfg


def _dlt_password(value: str) -> str | None:
    return None if re.fullmatch(r"[0-9]{6}", value) else "is not a 6-digit DL/T645 password"


def _check_security(c: _Checker, raw: dict[str, Any]) -> SecurityConfig:
    c.unknown_keys(raw, ("trusted_keys", "max_future_skew_s", "meter_password"), "security")
    paths: list[Path] = []
    for i, item in enumerate(c.get(raw, "trusted_keys", "security", list, [])):
        where = f"security.trusted_keys[{i}]"
        if not isinstance(item, str) or not item:
            c.problem(where, item, "is not a path to a public key (PEM) file")
            continue
        path = Path(item).expanduser()
        if not path.is_absolute() and c.base_dir is not None:
            path = c.base_dir / path
        try:
            Keyring.from_files([path])
        except OSError as exc:
            c.problem(where, item, f"cannot be read ({exc.strerror})")
            continue
        except KeyFileError as exc:
            c.problem(where, item, f"is not an Ed25519 public key: {exc}")
            continue
        paths.append(path)
    skew = c.get(raw, "max_future_skew_s", "security", (int, float), 60.0, _positive(3600))
    return SecurityConfig(trusted_keys=tuple(paths), max_future_skew_s=float(skew),
                          meter_password=c.secret(raw, "meter_password", "security",
                                                  _dlt_password))


_BUS_KEYS = ("name", "protocol", "port", "tcp", "baud", "parity", "stopbits", "bytesize",
             "timeout_s", "retries", "inter_frame_gap_s", "poll_interval_s", "quantities", "model",
             "preamble", "password", "password_level", "operator", "maps_dir", "read_status",
             "report_relay_every", "relay_control", "has_relay", "clock_check_s", "time_sync",
             "meters")
_METER_KEYS = ("id", "address", "unit", "protocol", "model", "poll_interval_s", "quantities",
               "password", "relay_control", "has_relay", "clock_check_s",
               "read_status", "report_relay_every")
TIME_SYNC_MODES = ("broadcast", "set")


def _quantities(c: _Checker, raw: Mapping[str, Any], path: str,
                default: tuple[str, ...]) -> tuple[str, ...]:
    value = c.get(raw, "quantities", path, list, None)
    if value is None:
        return default
    where = _join(path, "quantities")
    if not value:
        c.problem(where, value, "is empty; list at least one quantity")
        return default
    good = []
    for i, name in enumerate(value):
        if not isinstance(name, str) or name not in QUANTITIES:
            hint = difflib.get_close_matches(str(name), QUANTITIES, n=1)
            why = f"is not a known quantity (did you mean {hint[0]!r}?)" if hint else \
                "is not a known quantity (see meterhub.quantities)"
            c.problem(f"{where}[{i}]", name, why)
        elif name in good:
            c.problem(f"{where}[{i}]", name, "is listed twice")
        else:
            good.append(name)
    return tuple(good) or default


def _modbus_unit(c: _Checker, raw: Mapping[str, Any], path: str) -> str | None:
    """A Modbus meter's unit id, given as ``unit`` or ``address`` (a number or digits)."""
    if "unit" in raw and "address" in raw:
        c.problems.append(f"{path}: has both 'unit' and 'address'; give the unit id once")
        return None
    key = "unit" if "unit" in raw else "address"
    if key not in raw:
        c.problems.append(f"{_join(path, 'unit')}: is required (the Modbus unit id, 1-247)")
        return None
    value = raw[key]
    if isinstance(value, str) and value.isascii() and value.isdigit():
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        c.problem(_join(path, key), value, "is not a Modbus unit id (a number 1-247)")
        return None
    if not 1 <= number <= 247:
        c.problem(_join(path, key), value, "is not a Modbus unit id (a number 1-247)")
        return None
    return str(number)


def _check_meter(c: _Checker, raw: Any, path: str, bus: BusConfig, gateway_id: str,
                 interval_s: float, quantities: tuple[str, ...],
                 model: str | None, relay_every: int | None,
                 relay_control: bool, clock: tuple[bool, float]) -> MeterConfig | None:
    raw = c.table(raw, path)
    if not raw:
        return None
    c.unknown_keys(raw, _METER_KEYS, path)
    protocol = c.get(raw, "protocol", path, str, bus.protocol)
    if protocol != bus.protocol:
        c.problem(_join(path, "protocol"), protocol,
                  f"differs from its bus's protocol {bus.protocol!r}; one protocol per bus")
    address: str | None = None
    if bus.protocol.startswith("dlt645"):
        if "unit" in raw:
            c.problems.append(f"{_join(path, 'unit')}: is for Modbus meters; "
                              "a DL/T645 meter has an 'address'")
        if "address" not in raw:
            c.problems.append(f"{_join(path, 'address')}: is required "
                              "(the 12 digits printed on the meter)")
        else:
            value = raw["address"]
            if isinstance(value, str) and _DLT_ADDRESS.match(value):
                address = value
            elif isinstance(value, int) and not isinstance(value, bool):
                c.problem(_join(path, "address"), value,
                          "is a number; write the 12-digit DL/T645 address in quotes "
                          f"(e.g. {str(value).zfill(12)!r})")
            else:
                c.problem(_join(path, "address"), value, "is not a 12-digit DL/T645 address")
        if "model" in raw:
            c.problems.append(f"{_join(path, 'model')}: is for Modbus meters (register map)")
    else:
        address = _modbus_unit(c, raw, path)
        model = c.get(raw, "model", path, str, model)
    interval = c.get(raw, "poll_interval_s", path, (int, float), interval_s, _positive(86400))
    qty = _quantities(c, raw, path, quantities)
    every = _relay_every(c, raw, path, relay_every)
    if every and bus.protocol == "dlt645-1997":
        c.problems.append(f"{_join(path, _relay_key(raw))}: DL/T645-1997 has no relay "
                          "status word to read")
    has_relay = c.get(raw, "has_relay", path, bool, clock[0])
    if has_relay and bus.protocol == "dlt645-1997" and "has_relay" in raw:
        c.problem(_join(path, "has_relay"), True, "DL/T645-1997 has no relay control")
    relay = c.get(raw, "relay_control", path, bool, relay_control) and has_relay
    clock_check = c.get(raw, "clock_check_s", path, (int, float), clock[1], _clock_check)
    password = c.secret(raw, "password", path, _dlt_password)
    if password is not None and not bus.protocol.startswith("dlt645"):
        c.problems.append(f"{_join(path, 'password')}: is for DL/T645 meters")
    if address is None:
        return None
    default_id = address if bus.protocol.startswith("dlt645") else \
        f"{gateway_id}-{bus.name}-{address}"
    meter_id = c.get(raw, "id", path, str, default_id, _name)
    return MeterConfig(id=meter_id, address=address, protocol=bus.protocol,
                       poll_interval_s=float(interval), quantities=qty,
                       model=model if bus.protocol == "modbus" else None,
                       report_relay_every=every if has_relay else 0, relay_control=relay,
                       password=password or bus.password,
                       has_relay=has_relay and bus.protocol != "dlt645-1997",
                       clock_check_s=float(clock_check))


def _check_bus(c: _Checker, raw: Any, path: str, gateway_id: str,
               default_password: Secret | None) -> BusConfig | None:
    raw = c.table(raw, path)
    if not raw:
        return None
    c.unknown_keys(raw, _BUS_KEYS, path)
    name = c.get(raw, "name", path, str, _MISSING, _name)
    protocol = c.get(raw, "protocol", path, str, _MISSING, _one_of(PROTOCOLS))
    known = protocol in PROTOCOLS
    dlt = known and protocol.startswith("dlt645")
    port = c.get(raw, "port", path, str, None)
    tcp_text = c.get(raw, "tcp", path, str, None, _tcp_endpoint)
    if "port" in raw and "tcp" in raw:
        c.problems.append(f"{path}: has both 'port' and 'tcp'; a bus is one serial port "
                          "or one TCP endpoint")
    elif "port" not in raw and "tcp" not in raw:
        c.problems.append(f"{path}: needs 'port' (serial device, e.g. '/dev/ttyUSB0') "
                          "or 'tcp' ('HOST:PORT')")
    tcp = None
    if tcp_text:
        host, _, tcp_port = tcp_text.rpartition(":")
        tcp = (host.strip("[]"), int(tcp_port))
    bus = BusConfig(
        name=name if isinstance(name, str) else f"bus{path}",
        protocol=protocol if known else "dlt645-2007",
        meters=(),
        port=port,
        tcp=tcp,
        baud=c.get(raw, "baud", path, int, 2400 if dlt else 9600, _one_of(BAUDS)),
        parity=c.get(raw, "parity", path, str, "E" if dlt else "N", _one_of(("N", "E", "O"))),
        stopbits=c.get(raw, "stopbits", path, int, 1, _one_of((1, 2))),
        bytesize=c.get(raw, "bytesize", path, int, 8, _one_of((7, 8))),
        timeout_s=float(c.get(raw, "timeout_s", path, (int, float), 1.0, _positive(30))),
        retries=c.get(raw, "retries", path, int, 2, _between(0, 10)),
        inter_frame_gap_s=float(c.get(raw, "inter_frame_gap_s", path, (int, float), 0.0,
                                      lambda v: None if 0 <= v <= 5 else
                                      "must be between 0 and 5 seconds")),
        preamble=c.get(raw, "preamble", path, int, 4, _between(0, 4)),
        password=c.secret(raw, "password", path, _dlt_password) or default_password,
        password_level=c.get(raw, "password_level", path, int, 2, _between(0, 9)),
        operator=c.get(raw, "operator", path, str, "00000000",
                       lambda v: None if re.fullmatch(r"[0-9]{8}", v) else
                       "is not an 8-digit DL/T645 operator code"),
        maps_dir=c.get(raw, "maps_dir", path, str, None,
                       lambda v: None if Path(v).is_dir() else "is not a folder that exists"),
        time_sync=c.get(raw, "time_sync", path, str, "broadcast", _one_of(TIME_SYNC_MODES)),
    )
    if "time_sync" in raw and known and not dlt:
        c.problems.append(f"{_join(path, 'time_sync')}: is for DL/T645 buses")
    clock = (c.get(raw, "has_relay", path, bool, protocol != "dlt645-1997"),
             float(c.get(raw, "clock_check_s", path, (int, float), 3600.0, _clock_check)))
    interval = float(c.get(raw, "poll_interval_s", path, (int, float), 60.0, _positive(86400)))
    quantities = _quantities(c, raw, path, DEFAULT_QUANTITIES)
    model = c.get(raw, "model", path, str, None)
    relay_every = _relay_every(c, raw, path, None)
    relay_control = c.get(raw, "relay_control", path, bool, True)
    if "password" in raw and known and not dlt:
        c.problems.append(f"{_join(path, 'password')}: is for DL/T645 buses")
    if model is not None and dlt:
        c.problems.append(f"{_join(path, 'model')}: is for Modbus buses (register map)")
    meters_raw = c.get(raw, "meters", path, list, [])
    if not meters_raw:
        c.problems.append(f"{_join(path, 'meters')}: has no meters; add [[buses.meters]] "
                          "tables (run 'meterhub gateway scan' to find them)")
    meters: list[MeterConfig] = []
    kept: list[int] = []  # each kept meter's index in the file, for messages
    seen: dict[str, int] = {}
    for i, item in enumerate(meters_raw):
        mpath = f"{path}.meters[{i}]"
        meter = _check_meter(c, item, mpath, bus, gateway_id, interval, quantities, model,
                             relay_every, relay_control, clock)
        if meter is None:
            continue
        if meter.address in seen:
            what = "address" if dlt or "unit" not in item else "unit"
            c.problem(_join(mpath, what), item.get(what),
                      f"is already used by {path}.meters[{seen[meter.address]}] on this bus")
            continue
        seen[meter.address] = i
        meters.append(meter)
        kept.append(i)
    bus = replace(bus, meters=tuple(meters))
    _check_relay_passwords(c, bus, path, kept)
    if bus.protocol == "modbus":
        _check_models(c, bus, path, kept, model)
    _check_supported(c, bus, path, kept, model)
    return bus


def _relay_every(c: _Checker, raw: Mapping[str, Any], path: str,
                 inherited: int | None) -> int | None:
    """``report_relay_every`` (or the older ``read_status = true|false``, meaning 1 or 0)."""
    if "report_relay_every" in raw and "read_status" in raw:
        c.problems.append(f"{path}: has both 'report_relay_every' and 'read_status'; "
                          "give report_relay_every only")
    if "read_status" in raw:
        status = c.get(raw, "read_status", path, bool, None)
        return inherited if status is None else int(status)
    return c.get(raw, "report_relay_every", path, int, inherited, _between(0, 1_000_000))


def _clock_check(value: float) -> str | None:
    """0 (never) or between 10 s and a week: a clock read costs line time like a poll."""
    return None if value == 0 or 10 <= value <= 7 * 86400 else \
        "must be 0 (never) or between 10 and 604800 seconds"


def _relay_key(raw: Mapping[str, Any]) -> str:
    return "read_status" if "read_status" in raw else "report_relay_every"


def _check_relay_passwords(c: _Checker, bus: BusConfig, path: str, indexes: list[int]) -> None:
    """A DL/T645-2007 meter that takes relay commands needs its password: there is no
    default (a meter still on its factory password is for the installer to change)."""
    if bus.protocol != "dlt645-2007":
        return
    missing = [i for m, i in zip(bus.meters, indexes, strict=True)
               if m.relay_control and m.password is None]
    if missing:
        which = ", ".join(f"meters[{i}]" for i in missing)
        c.problems.append(
            f"{path}.password: is required for relay control of DL/T645-2007 meters "
            f"({which}): give password = {{file = \"...\"}} or {{env = \"...\"}} on the bus, "
            "on each meter or as [security] meter_password, or set relay_control = false")


def _check_models(c: _Checker, bus: BusConfig, path: str, indexes: list[int],
                  bus_model: str | None) -> None:
    """A Modbus meter needs a register map: said once for the bus when no meter names one."""
    missing = [i for m, i in zip(bus.meters, indexes, strict=True) if m.model is None]
    if missing and len(missing) == len(bus.meters):
        c.problems.append(f"{path}.model: is required for a Modbus bus (the register map, "
                          "e.g. 'eastron-sdm120'), unless each meter names its own")
    else:
        c.problems.extend(f"{path}.meters[{i}].model: is required (the register map, e.g. "
                          "'eastron-sdm120'): this bus has no default model" for i in missing)


def _check_supported(c: _Checker, bus: BusConfig, path: str, indexes: list[int],
                     bus_model: str | None) -> None:
    """Every quantity must exist for the meter's protocol or register map, so a typo'd
    model or an unreadable quantity is found on site, not as errors in the night."""
    if bus.protocol == "modbus":
        from meterhub.protocols.modbus.registermap import RegisterMapError, load_maps

        try:
            maps = load_maps(bus.maps_dir)
        except RegisterMapError as exc:
            c.problems.extend(f"{path}.maps_dir: {p}" for p in exc.problems)
            return
        if bus_model is not None and bus_model not in maps:
            c.problem(f"{path}.model", bus_model,
                      f"is not a known register map (known: {', '.join(sorted(maps))})")
        for meter, i in zip(bus.meters, indexes, strict=True):
            where = f"{path}.meters[{i}]"
            if meter.model is None:
                continue
            regmap = maps.get(meter.model)
            if regmap is None:
                if meter.model != bus_model:
                    c.problem(f"{where}.model", meter.model, "is not a known register map "
                              f"(known: {', '.join(sorted(maps))})")
                continue
            if meter.report_relay_every and regmap.relay is None:
                c.problems.append(f"{where}.report_relay_every: register map "
                                  f"{meter.model!r} has no relay to read")
            for q in meter.quantities:
                if q not in regmap.registers:
                    c.problem(f"{where}.quantities", q,
                              f"is not in register map {meter.model!r} "
                              f"(it has {', '.join(regmap.registers)})")
        return
    from meterhub.protocols.dlt645.identifiers import quantities_for

    version = "1997" if bus.protocol == "dlt645-1997" else "2007"
    readable = quantities_for(version)
    for meter, i in zip(bus.meters, indexes, strict=True):
        for q in meter.quantities:
            if q not in readable:
                c.problem(f"{path}.meters[{i}].quantities", q,
                          f"has no DL/T645-{version} data identifier")


def config_from_dict(data: Mapping[str, Any], source: str = "<dict>", *,
                     base_dir: Path | None = None,
                     record: KeyRecord | None = None) -> GatewayConfig:
    """Check a parsed config; raise :class:`ConfigError` listing every problem.

    ``base_dir`` resolves relative key and secret paths (the config file's folder);
    ``record`` hears every key the walk accepts (the config reference)."""
    c = _Checker(base_dir, record)
    if not isinstance(data, Mapping):
        raise ConfigError(source, [f"top level: {data!r} is not a table"])
    c.unknown_keys(data, ("gateway", "mqtt", "buffer", "security", "buses"), "")
    gw = c.table(data.get("gateway", _MISSING), "gateway")
    if "gateway" not in data:
        c.problems.append("gateway: is required ([gateway] with id and site)")
    c.unknown_keys(gw, ("id", "site", "state_dir", "batch_interval_s", "max_batch_readings",
                        "status_interval_s", "backoff_max_s", "missing_port",
                        "summary_interval_s"), "gateway")
    gateway_id = c.get(gw, "id", "gateway", str, _MISSING, _name) if gw else None
    site = c.get(gw, "site", "gateway", str, _MISSING, _name) if gw else None
    state_dir = c.get(gw, "state_dir", "gateway", str, None)
    batch_interval = c.get(gw, "batch_interval_s", "gateway", (int, float), 5.0,
                           _positive(3600))
    max_batch = c.get(gw, "max_batch_readings", "gateway", int, 500, _between(1, 100_000))
    status_interval = c.get(gw, "status_interval_s", "gateway", (int, float), 30.0,
                            _positive(3600))
    backoff_max = c.get(gw, "backoff_max_s", "gateway", (int, float), 300.0, _positive(86400))
    missing_port = c.get(gw, "missing_port", "gateway", str, "degrade",
                         _one_of(("degrade", "refuse")))
    summary_every = c.get(gw, "summary_interval_s", "gateway", (int, float), 60.0,
                          lambda v: None if 0 <= v <= 86400 else
                          "must be between 0 (no summary) and 86400 seconds")

    mqtt = _check_mqtt(c, c.table(data.get("mqtt", _MISSING), "mqtt"))
    braw = c.table(data.get("buffer", _MISSING), "buffer")
    c.unknown_keys(braw, ("max_batches", "replay_rate", "publish_timeout_s", "receipts",
                          "receipt_timeout_s"), "buffer")
    buffer = BufferConfig(
        max_batches=c.get(braw, "max_batches", "buffer", int, 100_000,
                          _between(10, 100_000_000)),
        replay_rate=float(c.get(braw, "replay_rate", "buffer", (int, float), 20.0,
                                _positive(10_000))),
        publish_timeout_s=float(c.get(braw, "publish_timeout_s", "buffer", (int, float), 10.0,
                                      _positive(600))),
        receipts=c.get(braw, "receipts", "buffer", bool, True),
        receipt_timeout_s=float(c.get(braw, "receipt_timeout_s", "buffer", (int, float), 10.0,
                                      _positive(3600))),
    )

    security = _check_security(c, c.table(data.get("security", _MISSING), "security"))

    buses_raw = c.get(data, "buses", "", list, [])
    if not buses_raw:
        c.problems.append("buses: no buses configured; add at least one [[buses]] table")
    gid = gateway_id if isinstance(gateway_id, str) else "gateway"
    buses: list[BusConfig] = []
    names: dict[str, int] = {}
    endpoints: dict[str, int] = {}
    ids: dict[str, str] = {}
    for i, item in enumerate(buses_raw):
        path = f"buses[{i}]"
        bus = _check_bus(c, item, path, gid, security.meter_password)
        if bus is None:
            continue
        if bus.name in names:
            c.problem(f"{path}.name", bus.name, f"is already the name of buses[{names[bus.name]}]")
        names.setdefault(bus.name, i)
        if bus.port or bus.tcp:
            if bus.endpoint in endpoints:
                key = "port" if bus.port else "tcp"
                c.problem(f"{path}.{key}", item.get(key),
                          f"is already used by buses[{endpoints[bus.endpoint]}]; "
                          "put all meters of one line on one bus")
            endpoints.setdefault(bus.endpoint, i)
        for j, meter in enumerate(bus.meters):
            where = f"{path}.meters[{j}]"
            if meter.id in ids:
                c.problem(f"{where}.id", meter.id, f"is already the id of {ids[meter.id]}")
            ids.setdefault(meter.id, where)
        buses.append(bus)
    if c.problems:
        raise ConfigError(source, c.problems)
    assert isinstance(gateway_id, str) and isinstance(site, str)
    return GatewayConfig(
        gateway_id=gateway_id,
        site=site,
        buses=tuple(buses),
        mqtt=mqtt,
        buffer=buffer,
        security=security,
        batch_interval_s=float(batch_interval),
        max_batch_readings=max_batch,
        status_interval_s=float(status_interval),
        backoff_max_s=float(backoff_max),
        state_dir=Path(state_dir) if state_dir else None,
        source=source,
        missing_port=missing_port,
        summary_interval_s=float(summary_every),
    )


def load_config(path: str | Path) -> GatewayConfig:
    """Read and check a TOML config file; :class:`ConfigError` names the file in every case."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the file: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [f"not UTF-8 text: {exc.reason} at byte {exc.start}"]) \
            from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [f"not valid TOML: {exc}"]) from None
    except (ValueError, RecursionError) as exc:  # a 5,000-digit integer, 5,000-deep arrays
        raise ConfigError(str(path), [f"not usable TOML: {exc}"]) from None
    return config_from_dict(data, source=str(path), base_dir=path.parent)
