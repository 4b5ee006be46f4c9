"""A site's identities and ACLs on the embedded amqtt broker (a laptop without mosquitto).

amqtt 0.12 enforces what matters for the demo: no anonymous clients (``FileAuthPlugin`` with
an Argon2 password file; amqtt does not read Mosquitto's ``$7$`` hashes, so the site gets a
second password file, ``amqtt-passwd``, hashed from the same 0600 credential files) and
per-identity topic rules from :func:`launcher.broker.grants` (``TopicAccessControlListPlugin``:
publish, subscribe and per-message receive checks).

What it cannot enforce is :data:`LIMITS`, logged once when the broker starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from amqtt.plugins.topic_checking import TopicAccessControlListPlugin
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from launcher.broker import SitePaths, grants
from meterhub import wire
from meterhub.security.files import read_private_file, write_private_file

LIMITS = (
    "embedded amqtt broker: identities and topic ACLs are enforced, but not: TLS (loopback "
    "plain listener only) nor client-certificate identities; retained messages are sent on "
    "subscribe without the per-message receive check (harmless with one site per broker); "
    "no persistence (sessions and queued QoS 1 messages live in memory: a broker restart "
    "loses them); no reload of passwords or ACLs while running; MQTT 3.1.1 only (no shared "
    "subscriptions). Install mosquitto for all of these."
)


class SiteAclPlugin(TopicAccessControlListPlugin):
    """amqtt's ACL plugin with a config that declares ``receive_acl`` too.

    0.12's plugin checks a ``receive-acl`` on every delivery, but its own ``Config`` (loaded
    strictly) only declares ``publish_acl`` and ``acl``, so a ``plugins:`` config could not
    set it. Nothing else is changed.
    """

    @dataclass
    class Config:
        publish_acl: dict[str, list[str]] = field(default_factory=dict)
        subscribe_acl: dict[str, list[str]] = field(default_factory=dict)
        receive_acl: dict[str, list[str]] = field(default_factory=dict)


def amqtt_plugins(paths: SitePaths, site: str, identities: Mapping[str, str]) -> dict[str, Any]:
    """The ``plugins`` section of an amqtt config for a provisioned site; writes the Argon2
    password file (0600) from the identities' credential files."""
    hasher = PasswordHash((Argon2Hasher(),))
    passwd = paths.root / "amqtt-passwd"
    lines = [
        f"{name}:{hasher.hash(read_private_file(paths.credential(name), name).decode().strip())}"
        for name in sorted(identities)
    ]
    write_private_file(passwd, ("\n".join(lines) + "\n").encode())

    publish: dict[str, list[str]] = {}
    subscribe: dict[str, list[str]] = {}
    receive: dict[str, list[str]] = {}
    for name, role in identities.items():
        publish[name], subscribe[name], receive[name] = [], [], []
        for access, topic in grants(site, name, role):
            if access == "write":
                publish[name].append(topic)
                continue
            receive[name].append(topic)
            # amqtt compares a subscription's wildcards literally ('+' only matches a '+'
            # rule), so a part subscribing to every site ('meterhub/v1/+/+/status') needs a
            # '+' site here; the receive rule above still limits delivery to this site
            # a filter, not a topic (wire.parse_topic takes only real ids): root/site/gw/kind
            _, _, _, gateway, kind = topic.split("/", 4)
            subscribe[name].append(
                topic if gateway != "+" else wire.subscription(kind))  # type: ignore[arg-type]
    return {
        "amqtt.plugins.authentication.FileAuthPlugin": {"password_file": str(passwd)},
        f"{__name__}.SiteAclPlugin": {
            "publish_acl": publish, "subscribe_acl": subscribe, "receive_acl": receive,
        },
    }
