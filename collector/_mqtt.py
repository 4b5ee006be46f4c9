"""The broker side of the collector, on paho-mqtt directly.

Why paho and not aiomqtt: the collector must acknowledge a message only after the rows it
carried are committed, so a crash between COPY and commit (or commit and ack) makes the broker
redeliver instead of losing data. paho 2.x has ``manual_ack=True`` + ``Client.ack(mid, qos)``;
aiomqtt (2.5) acks as soon as the message is handed over. paho runs its network loop in its
own thread; messages are handed to the asyncio loop through ``call_soon_threadsafe``.

Sessions persist (MQTT 5 clean_start=False with a session expiry, or clean_session=False on
3.1.1) under a stable client id, so unacked QoS 1 messages come back after a restart. With
MQTT 5 we also raise Receive Maximum so enough messages are in flight to fill a COPY batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from collector.config import CollectorConfig
from meterhub import wire

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    mid: int
    qos: int
    arrived: float  # loop.time() at hand-over


def topic_filters(config: CollectorConfig) -> list[str]:
    """readings and events are split across collectors; status is retained and small, and
    retained messages are not delivered on shared subscriptions, so every collector takes it."""
    site = config.site
    if config.shared_group is None:
        return [wire.subscription("readings", site), wire.subscription("events", site),
                wire.subscription("status", site)]
    share = f"$share/{config.shared_group}/"
    return [
        share + wire.subscription("readings", site),
        share + wire.subscription("events", site),
        wire.subscription("status", site),
    ]


RECONNECT_FIRST_S = 0.5  # the first retry after a lost connection comes within this
RECONNECT_MAX_S = 10.0


def _jitter_reconnect(client: paho.Client) -> None:
    """Reset paho's reconnect backoff to a random first delay in (0.05, 0.5] s, doubling up
    to 10 s: a broker restart is noticed fast, and a fleet of collectors does not come back
    in lockstep (issue 12 item 5)."""
    client.reconnect_delay_set(random.uniform(0.05, RECONNECT_FIRST_S),  # type: ignore[arg-type]
                               RECONNECT_MAX_S)  # type: ignore[arg-type]


class Consumer:
    """A paho client that feeds an asyncio queue and acks only when told."""

    def __init__(self, config: CollectorConfig, loop: asyncio.AbstractEventLoop,
                 ready: asyncio.Event | None = None) -> None:
        self._config = config
        self.ready = ready or asyncio.Event()  # set once the broker granted our subscriptions
        self._loop = loop
        self.queue: asyncio.Queue[Message] = asyncio.Queue()
        self.connected = asyncio.Event()
        v5 = config.mqtt_v5
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else False,
            manual_ack=True,
        )
        settings = config.mqtt
        if settings.username:
            self._client.username_pw_set(settings.username, settings.password)
        ctx = settings.tls_context()
        if ctx is not None:
            self._client.tls_set_context(ctx)
        _jitter_reconnect(self._client)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe  # type: ignore[assignment]

    def start(self) -> None:
        props = None
        kwargs: dict[str, object] = {}
        if self._config.mqtt_v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self._config.session_expiry_s
            props.ReceiveMaximum = self._config.receive_maximum
            kwargs["clean_start"] = False
        self._client.connect_async(
            self._config.mqtt.host, self._config.mqtt.port, keepalive=30,
            properties=props, **kwargs,  # type: ignore[arg-type]
        )
        self._client.loop_start()

    def stop(self, leave: bool | None = None) -> None:
        """Disconnect; end the broker session too if ``leave`` (default: the config's
        ``leave_on_stop``). A restart after a failure keeps it, so unacked messages return."""
        props = None
        if self._config.leave_on_stop if leave is None else leave:
            for t in topic_filters(self._config):
                self._client.unsubscribe(t)
            if self._config.mqtt_v5:
                props = Properties(PacketTypes.DISCONNECT)
                props.SessionExpiryInterval = 0
        self._client.disconnect(properties=props)
        self._client.loop_stop()

    def publish(self, topic: str, payload: bytes) -> None:
        """QoS 1, not retained; paho queues it while disconnected and sends it again in the
        session, so a receipt published after a commit is not lost to a broker blip."""
        self._client.publish(topic, payload, qos=1)

    def ack(self, mid: int, qos: int) -> None:
        if qos > 0:
            self._client.ack(mid, qos)

    # paho thread ---------------------------------------------------------------------

    def _on_connect(self, client: paho.Client, _ud: object, _flags: object, rc: object,
                    _props: object = None) -> None:
        if getattr(rc, "is_failure", False):
            log.warning("mqtt connect refused", extra={"reason": str(rc)})
            return
        subs = topic_filters(self._config)
        if self._config.mqtt_v5:
            client.subscribe([(t, SubscribeOptions(qos=1)) for t in subs])
        else:
            client.subscribe([(t, 1) for t in subs])
        log.info("mqtt connected", extra={"broker": self._config.mqtt.url, "topics": subs})
        self._loop.call_soon_threadsafe(self.connected.set)

    def _on_subscribe(self, _c: paho.Client, _ud: object, _mid: int, codes: list[object],
                      _props: object = None) -> None:
        failed = [str(c) for c in codes if getattr(c, "is_failure", False)]
        if failed:
            log.error("mqtt subscription refused: %s", ", ".join(failed))
        self._loop.call_soon_threadsafe(self.ready.set)

    def _on_disconnect(self, _c: paho.Client, _ud: object, _flags: object, rc: object,
                       _props: object = None) -> None:
        # our own clean disconnect at shutdown is not worth a warning
        level = logging.INFO if getattr(rc, "value", rc) == 0 else logging.WARNING
        log.log(level, "mqtt disconnected", extra={"reason": str(rc)})
        _jitter_reconnect(_c)  # paho waits this long before its first retry, then doubles
        self._loop.call_soon_threadsafe(self.connected.clear)
        self._loop.call_soon_threadsafe(self.ready.clear)

    def _on_message(self, _c: paho.Client, _ud: object, msg: paho.MQTTMessage) -> None:
        loop = self._loop
        try:
            name = msg.topic
        except UnicodeDecodeError:  # not UTF-8: keep it, readable, for the dead letter
            name = msg._topic.decode("utf-8", "backslashreplace")
        message = Message(name, bytes(msg.payload), msg.mid, msg.qos, 0.0)
        # RuntimeError: the loop closed while shutting down; unacked, so the broker redelivers
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._put, message)

    def _put(self, message: Message) -> None:
        self.queue.put_nowait(
            Message(message.topic, message.payload, message.mid, message.qos, self._loop.time())
        )
