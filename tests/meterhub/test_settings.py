from __future__ import annotations

import pytest

from meterhub.settings import MqttSettings, SettingsError


def test_mqtt_url_forms() -> None:
    assert MqttSettings.from_url("mqtt://127.0.0.1") == MqttSettings("127.0.0.1", 1883)
    s = MqttSettings.from_url("mqtts://user:p%40ss@broker.example:8884")
    assert (s.host, s.port, s.tls, s.username, s.password) == (
        "broker.example", 8884, True, "user", "p@ss",
    )
    assert s.url == "mqtts://broker.example:8884"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://x", "must start with mqtt:// or mqtts://"),
        ("mqtt://", "has no host"),
        ("mqtt://h:notaport", "has an invalid port"),
    ],
)
def test_bad_mqtt_url_names_the_setting(url: str, message: str) -> None:
    with pytest.raises(SettingsError, match=f"METERHUB_MQTT_URL: .*{message}"):
        MqttSettings.from_url(url)
