"""The field gateway: polls RS-485/TCP meters, buffers readings in SQLite, publishes over MQTT
and executes relay commands. The public face is small; the rest is machinery."""

from gateway.app import Gateway
from gateway.config import (
    BusConfig,
    ConfigError,
    GatewayConfig,
    MeterConfig,
    config_from_dict,
    load_config,
)
from gateway.stats import GatewayStats

__all__ = [
    "BusConfig",
    "ConfigError",
    "Gateway",
    "GatewayConfig",
    "GatewayStats",
    "MeterConfig",
    "config_from_dict",
    "load_config",
]
