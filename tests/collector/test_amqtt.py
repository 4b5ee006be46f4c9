"""The embedded fallback broker (amqtt 0.12: MQTT 3.1.1, no $share): plain subscription."""

from __future__ import annotations

import pytest
from collector_helpers import (
    T0,
    Publisher,
    batch_payload,
    config,
    reading,
    running,
    scalar,
    subscribed,
    wait_until,
)

from launcher.embedded import amqtt_broker
from meterhub import wire

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def amqtt():
    with amqtt_broker() as settings:
        yield settings


async def test_ingest_over_amqtt_with_a_plain_subscription(db_url, amqtt, site):
    pub = Publisher(amqtt)
    try:
        cfg = config(db_url, amqtt, site, shared_group=None)
        assert not cfg.mqtt_v5
        async with running(cfg) as col:
            await subscribed(col)
            payload = batch_payload(site, "gw1", 1, [reading("m1", T0, 1.0),
                                                     reading("m2", T0, 2.0)])
            pub.publish(wire.topic(site, "gw1", "readings"), payload)
            pub.publish(wire.topic(site, "gw1", "readings"), payload)
            pub.publish(wire.topic(site, "gw1", "status"), wire.encode_status(
                wire.Status("gw1", site, "online", T0)))
            await wait_until(lambda: col.stats.messages == 3, what="three messages")
        assert col.stats.readings_stored == 2
        assert scalar(db_url, "SELECT count(*) FROM readings") == 2
        assert scalar(db_url, "SELECT state FROM gateways WHERE gateway = 'gw1'") == "online"
    finally:
        pub.close()
