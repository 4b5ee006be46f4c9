"""The generated broker files, enforced by the real mosquitto binary.

Each check that something does *not* arrive is made deterministic by a follow-up message on
the same connection that *is* allowed: once the follow-up arrives, the forbidden message (sent
first, on the same session) would have arrived before it.
"""

from __future__ import annotations

import base64
import contextlib
import queue
import shutil
import socket
import ssl
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from launcher.broker import (
    PlainListener,
    SitePaths,
    TlsListener,
    add_gateway,
    mosquitto_password_hash,
    provision,
)
from launcher.certs import CertificateAuthority, create_ca, issue_certificate

MOSQUITTO = shutil.which("mosquitto") or next(
    (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None)
pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="needs the mosquitto binary")
SITE = "s1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _broker(paths: SitePaths, port: int) -> Iterator[subprocess.Popen[bytes]]:
    assert MOSQUITTO is not None
    with (paths.root / "mosquitto.log").open("wb") as log:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(paths.config)], stderr=log, stdout=log)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((paths.root / "mosquitto.log").read_text())
            time.sleep(0.05)
        while not paths.pid_file.exists():  # reload_broker reads it
            time.sleep(0.02)
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


class Refused(Exception):
    pass


class Peer:
    """A paho client that records what it receives."""

    def __init__(self, client: mqtt.Client) -> None:
        self.client = client
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._subacks: queue.Queue[list[Any]] = queue.Queue()
        client.on_message = lambda _c, _u, msg: self.inbox.put((msg.topic, bytes(msg.payload)))
        client.on_subscribe = lambda _c, _u, _mid, codes, _p: self._subacks.put(list(codes))

    def subscribe(self, topic: str) -> bool:
        """True when the broker granted the subscription."""
        self.client.subscribe(topic, qos=1)
        return not self._subacks.get(timeout=5)[0].is_failure

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def until(self, topic: str, payload: bytes) -> list[tuple[str, bytes]]:
        """Wait for (topic, payload); return what arrived before it."""
        before: list[tuple[str, bytes]] = []
        while True:
            got = self.inbox.get(timeout=5)
            if got == (topic, payload):
                return before
            before.append(got)


def _connect(port: int, username: str | None = None, password: str | None = None, *,
             host: str = "127.0.0.1", tls: dict[str, Any] | None = None) -> Peer:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=uuid.uuid4().hex,
                         protocol=mqtt.MQTTv5)
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    client.on_connect = lambda _c, _u, _f, rc, _p: events.put(("connect", rc))
    client.on_disconnect = lambda _c, _u, _f, rc, _p: events.put(("disconnect", rc))
    if username is not None:
        client.username_pw_set(username, password)
    if tls is not None:
        client.tls_set(**tls)
    try:
        client.connect(host, port, keepalive=10)
    except (OSError, ssl.SSLError) as exc:
        raise Refused(f"connect: {exc}") from None
    client.loop_start()
    try:
        what, rc = events.get(timeout=5)
    except queue.Empty:
        what, rc = "timeout", None
    if what != "connect" or rc.is_failure:
        client.loop_stop()
        client.disconnect()
        raise Refused(f"{what}: {rc}")
    return Peer(client)


def _topic(gateway: str, kind: str) -> str:
    return f"meterhub/v1/{SITE}/{gateway}/{kind}"


def _password(paths: SitePaths, identity: str) -> str:
    return paths.credential(identity).read_text().strip()


@pytest.fixture(scope="module")
def plain_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SitePaths, int]]:
    port = _free_port()
    paths = provision(tmp_path_factory.mktemp("site"), site=SITE, gateways=["gw-a", "gw-b"],
                      plain=PlainListener(port=port))
    with _broker(paths, port):
        yield paths, port


@pytest.fixture
def login(plain_site: tuple[SitePaths, int]) -> Iterator[Any]:
    paths, port = plain_site
    peers: list[Peer] = []

    def connect(identity: str) -> Peer:
        peers.append(_connect(port, identity, _password(paths, identity)))
        return peers[-1]

    yield connect
    for peer in peers:
        peer.client.disconnect()
        peer.client.loop_stop()


# ---------------------------------------------------------------------------- files


def test_files_are_private_and_config_refuses_anonymous(plain_site: tuple[SitePaths, int]) -> None:
    paths, _ = plain_site
    conf = paths.config.read_text()
    for line in ("allow_anonymous false", "persistence true", "autosave_on_changes true",
                 f"password_file {paths.passwd}", f"acl_file {paths.acl}"):
        assert line in conf.splitlines()
    for path in (paths.passwd, paths.credential("gw-a"), paths.credential("billing")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _password(paths, "gw-a") not in paths.passwd.read_text()
    assert _password(paths, "gw-a") != _password(paths, "gw-b")


def test_password_hash_is_mosquitto_passwd_format(tmp_path: Path) -> None:
    binary = shutil.which("mosquitto_passwd")
    if binary is None:
        pytest.skip("no mosquitto_passwd")
    subprocess.run([binary, "-b", "-c", str(tmp_path / "pw"), "alice", "secret"], check=True)
    line = (tmp_path / "pw").read_text().strip()
    _, _, iterations, salt, _ = line.split(":", 1)[1].split("$")
    assert line == "alice:" + mosquitto_password_hash(
        "secret", salt=base64.b64decode(salt), iterations=int(iterations))


def test_reprovisioning_keeps_passwords(tmp_path: Path) -> None:
    first = provision(tmp_path, site=SITE, gateways=["gw-a"])
    before = _password(first, "gw-a")
    again = provision(tmp_path, site=SITE, gateways=["gw-b"])
    assert _password(again, "gw-a") == before
    assert "user gw-a" in again.acl.read_text() and "user gw-b" in again.acl.read_text()


# ---------------------------------------------------------------------------- authentication


def test_anonymous_and_wrong_password_refused(plain_site: tuple[SitePaths, int]) -> None:
    paths, port = plain_site
    with pytest.raises(Refused):
        _connect(port)
    with pytest.raises(Refused):
        _connect(port, "gw-a", "not-the-password")
    with pytest.raises(Refused):
        _connect(port, "gw-a", _password(paths, "gw-b"))
    _connect(port, "gw-a", _password(paths, "gw-a")).client.disconnect()


# ---------------------------------------------------------------------------- ACL


def test_gateway_cannot_publish_on_another_gateways_topics(login: Any) -> None:
    monitor, gw_a = login("monitor"), login("gw-a")
    for kind in ("readings", "status", "events", "cmd/ack"):
        assert monitor.subscribe(_topic("+", kind))
    for kind in ("readings", "status", "events", "cmd/ack"):
        gw_a.publish(_topic("gw-b", kind), b"forged")
    gw_a.publish(_topic("gw-a", "readings"), b"mine")
    assert monitor.until(_topic("gw-a", "readings"), b"mine") == []


def test_gateway_cannot_read_another_gateways_commands(login: Any) -> None:
    gw_a, gw_b, billing = login("gw-a"), login("gw-b"), login("billing")
    gw_a.subscribe(_topic("gw-b", "cmd"))  # refused or filtered: nothing may arrive
    gw_a.subscribe(_topic("+", "cmd"))
    assert gw_a.subscribe(_topic("gw-a", "cmd"))
    assert gw_b.subscribe(_topic("gw-b", "cmd"))
    billing.publish(_topic("gw-b", "cmd"), b"for-b")
    billing.publish(_topic("gw-a", "cmd"), b"for-a")
    assert gw_b.until(_topic("gw-b", "cmd"), b"for-b") == []
    assert all(t != _topic("gw-b", "cmd") for t, _ in gw_a.until(_topic("gw-a", "cmd"), b"for-a"))


def test_only_billing_publishes_commands(login: Any) -> None:
    gw_a, billing = login("gw-a"), login("billing")
    assert gw_a.subscribe(_topic("gw-a", "cmd"))
    for identity in ("collector", "web", "monitor", "gw-b"):
        login(identity).publish(_topic("gw-a", "cmd"), identity.encode())
    gw_a.publish(_topic("gw-a", "cmd"), b"self")  # a gateway cannot command itself either
    billing.publish(_topic("gw-a", "cmd"), b"billing")
    assert gw_a.until(_topic("gw-a", "cmd"), b"billing") == []


def test_monitor_is_read_only_and_collector_reads_no_commands(login: Any) -> None:
    collector, monitor, gw_a = login("collector"), login("monitor"), login("gw-a")
    assert collector.subscribe(_topic("+", "readings"))
    collector.subscribe(_topic("+", "cmd"))  # mosquitto grants it, but delivers nothing
    login("billing").publish(_topic("gw-a", "cmd"), b"cmd")
    for kind in ("readings", "status", "events"):
        monitor.publish(_topic("monitor", kind), b"x")
        monitor.publish(_topic("gw-a", kind), b"x")
    gw_a.publish(_topic("gw-a", "readings"), b"batch")
    assert collector.until(_topic("gw-a", "readings"), b"batch") == []


def test_add_gateway_reloads_a_running_broker(tmp_path: Path) -> None:
    port = _free_port()
    paths = provision(tmp_path, site=SITE, gateways=["gw-a"], plain=PlainListener(port=port))
    with _broker(paths, port):
        with pytest.raises(Refused):
            _connect(port, "gw-c", "anything")
        credential = add_gateway(tmp_path, "gw-c")
        password = credential.read_text().strip()
        deadline = time.monotonic() + 5
        while True:  # the broker rereads its files asynchronously after SIGHUP
            try:
                peer = _connect(port, "gw-c", password)
                break
            except Refused:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert peer.subscribe(_topic("gw-c", "cmd"))
        peer.publish(_topic("gw-c", "readings"), b"first")
        peer.client.disconnect()
        _connect(port, "gw-a", _password(paths, "gw-a")).client.disconnect()


def test_gateway_id_may_not_shadow_a_service(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="monitor"):
        provision(tmp_path, site=SITE, gateways=["monitor"])


# ---------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def tls_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SitePaths, int]]:
    port = _free_port()
    paths = provision(tmp_path_factory.mktemp("tls"), site=SITE, gateways=["gw-a"], plain=None,
                      tls=TlsListener(port=port, hostnames=("localhost",),
                                      require_certificate=True))
    with _broker(paths, port):
        yield paths, port


def _tls(paths: SitePaths, identity: str, ca: Path | None = None,
         cert: tuple[Path, Path] | None = None) -> dict[str, Any]:
    certfile, keyfile = cert or (paths.client_cert(identity), paths.client_key(identity))
    return {"ca_certs": str(ca or paths.ca_cert), "certfile": str(certfile),
            "keyfile": str(keyfile), "cert_reqs": ssl.CERT_REQUIRED}


def test_tls_with_the_site_ca_and_server_name(tls_site: tuple[SitePaths, int]) -> None:
    paths, port = tls_site
    peer = _connect(port, "gw-a", _password(paths, "gw-a"), host="localhost",
                    tls=_tls(paths, "gw-a"))
    peer.client.disconnect()
    with pytest.raises(Refused, match=r"IP address mismatch|hostname"):
        # 127.0.0.1 is not in the certificate's names: the client must refuse
        _connect(port, "gw-a", _password(paths, "gw-a"), host="127.0.0.1",
                 tls=_tls(paths, "gw-a"))


def test_tls_wrong_ca_refused(tls_site: tuple[SitePaths, int], tmp_path: Path) -> None:
    paths, port = tls_site
    other = create_ca(tmp_path / "other.crt", tmp_path / "other.key", site="elsewhere")
    assert other.cert != CertificateAuthority.load(paths.ca_cert, paths.ca_key).cert
    with pytest.raises(Refused, match="certificate verify failed"):
        _connect(port, "gw-a", _password(paths, "gw-a"), host="localhost",
                 tls=_tls(paths, "gw-a", ca=tmp_path / "other.crt"))


def test_tls_expired_or_missing_client_certificate_refused(
        tls_site: tuple[SitePaths, int], tmp_path: Path) -> None:
    paths, port = tls_site
    ca = CertificateAuthority.load(paths.ca_cert, paths.ca_key)
    past = datetime.now(UTC) - timedelta(days=30)
    issue_certificate(ca, tmp_path / "old.crt", tmp_path / "old.key", common_name="gw-a",
                      not_before=past, not_after=past + timedelta(days=1))
    with pytest.raises(Refused):
        _connect(port, "gw-a", _password(paths, "gw-a"), host="localhost",
                 tls=_tls(paths, "gw-a", cert=(tmp_path / "old.crt", tmp_path / "old.key")))
    with pytest.raises(Refused):
        _connect(port, "gw-a", _password(paths, "gw-a"), host="localhost",
                 tls={"ca_certs": str(paths.ca_cert), "cert_reqs": ssl.CERT_REQUIRED})


def test_tls_only_has_no_plain_listener(tls_site: tuple[SitePaths, int]) -> None:
    paths, port = tls_site
    listeners = [ln for ln in paths.config.read_text().splitlines()
                 if ln.startswith("listener")]
    assert listeners == [f"listener {port}"]
    with pytest.raises(Refused):
        _connect(port, "gw-a", _password(paths, "gw-a"))  # plain MQTT on the TLS port


def test_client_certificate_as_identity(tmp_path: Path) -> None:
    """With use_identity_as_username the certificate's CN is the username the ACL applies to."""
    port = _free_port()
    paths = provision(tmp_path, site=SITE, gateways=["gw-a", "gw-b"], plain=None,
                      tls=TlsListener(port=port, hostnames=("localhost",),
                                      require_certificate=True, use_identity_as_username=True))
    with _broker(paths, port):
        gw_a = _connect(port, host="localhost", tls=_tls(paths, "gw-a"))
        monitor = _connect(port, host="localhost", tls=_tls(paths, "monitor"))
        assert monitor.subscribe(_topic("+", "readings"))
        gw_a.publish(_topic("gw-b", "readings"), b"forged")
        gw_a.publish(_topic("gw-a", "readings"), b"mine")
        assert monitor.until(_topic("gw-a", "readings"), b"mine") == []
        for peer in (gw_a, monitor):
            peer.client.disconnect()


def test_cli_provision_and_add_gateway_print_paths_never_passwords(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from launcher.broker import register

    parser = argparse.ArgumentParser(prog="meterhub")
    register(parser.add_subparsers(dest="command", required=True))
    for argv in (["broker", "provision", "--site-dir", str(tmp_path), "--site", SITE,
                  "--gateway", "gw-a", "--tls-port", "8883", "--hostname", "broker.lan"],
                 ["broker", "add-gateway", "--site-dir", str(tmp_path), "gw-b"]):
        args = parser.parse_args(argv)
        assert args.handler(args) == 0
    out = capsys.readouterr().out
    paths = SitePaths(tmp_path)
    assert "no running broker to reload" in out
    for identity in ("gw-a", "gw-b", "billing"):
        assert _password(paths, identity) not in out
    assert paths.client_cert("gw-b").exists()


def test_site_brings_its_own_ca(tmp_path: Path) -> None:
    from cryptography import x509

    own = create_ca(tmp_path / "own-ca.crt", tmp_path / "own-ca.key", site="corp")
    paths = provision(tmp_path / "site", site=SITE, gateways=["gw-a"],
                      tls=TlsListener(hostnames=("broker.lan", "10.0.0.5"),
                                      ca_cert=str(tmp_path / "own-ca.crt"),
                                      ca_key=str(tmp_path / "own-ca.key")))
    server = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    server.verify_directly_issued_by(own.cert)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(n.value) for n in names] == ["broker.lan", "10.0.0.5"]
    client = x509.load_pem_x509_certificate(paths.client_cert("gw-a").read_bytes())
    client.verify_directly_issued_by(own.cert)
    assert client.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "gw-a"
    for key in (paths.ca_key, paths.server_key, paths.client_key("gw-a")):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
