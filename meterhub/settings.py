"""Settings read from the environment: where the real services are.

``METERHUB_DATABASE_URL`` and ``METERHUB_MQTT_URL`` switch a process from the embedded
defaults (pgserver, a local mosquitto binary or amqtt) to real services.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

DATABASE_URL_ENV = "METERHUB_DATABASE_URL"
MQTT_URL_ENV = "METERHUB_MQTT_URL"
DATA_DIR_ENV = "METERHUB_DATA_DIR"


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the setting and why."""


@dataclass(frozen=True, slots=True)
class MqttSettings:
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @classmethod
    def from_url(cls, url: str, *, setting: str = MQTT_URL_ENV) -> MqttSettings:
        """Parse ``mqtt://user:pass@host:1883`` or ``mqtts://host:8883``."""
        try:
            parts = urlsplit(url)
        except ValueError as exc:  # "Invalid IPv6 URL" and the like
            raise SettingsError(f"{setting}: {url!r} is not a URL ({exc})") from None
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise SettingsError(f"{setting}: {url!r} must start with mqtt:// or mqtts://")
        if not parts.hostname:
            raise SettingsError(f"{setting}: {url!r} has no host")
        tls = parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise SettingsError(f"{setting}: {url!r} has an invalid port") from None
        return cls(
            host=parts.hostname,
            port=port,
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def database_url() -> str | None:
    return os.environ.get(DATABASE_URL_ENV) or None


def mqtt_settings() -> MqttSettings | None:
    url = os.environ.get(MQTT_URL_ENV)
    return MqttSettings.from_url(url) if url else None


def data_dir() -> Path:
    """Where embedded services and local state live unless told otherwise."""
    base = os.environ.get(DATA_DIR_ENV)
    path = Path(base) if base else Path.home() / ".local" / "share" / "meterhub"
    path.mkdir(parents=True, exist_ok=True)
    return path


def mqtt_from(given: str | None, *, setting: str = "--mqtt-url") -> MqttSettings | None:
    """The broker from a command-line value, else from the environment, else None."""
    return MqttSettings.from_url(given, setting=setting) if given else mqtt_settings()


def require_mqtt(given: str | None) -> MqttSettings:
    """For a command that cannot run without a broker: a clear error when none is set."""
    found = mqtt_from(given)
    if found is None:
        raise SettingsError(f"no broker: pass --mqtt-url or set {MQTT_URL_ENV}")
    return found


def require_database_url(given: str | None) -> str:
    """For a command that cannot run without PostgreSQL: a clear error when none is set."""
    url = given or database_url()
    if not url:
        raise SettingsError(f"no database: pass --database-url or set {DATABASE_URL_ENV}")
    return url
