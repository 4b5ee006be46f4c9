"""``meterhub broker provision|add-gateway``: a site's Mosquitto identities, ACLs and TLS.

For one site this writes into a site folder:

- ``mosquitto.conf``: no anonymous clients, persistence, the password and ACL files, a plain
  listener on loopback (for processes on the broker's machine) and/or a TLS listener;
- ``passwd``: one entry per identity in Mosquitto's own hash (PBKDF2-SHA512, ``$7$``);
- ``acl``: what each identity may publish and read (see :data:`ROLES`);
- ``credentials/<identity>.password``: one generated password per process, mode 0600, never
  printed; a process points its config at it (``password = {file = "..."}``);
- ``tls/``: a CA (generated or the site's own), the broker's server certificate and one
  client certificate per identity (CN = identity, for ``use_identity_as_username``);
- ``site.json``: the record everything above is rendered from; re-running is idempotent and
  keeps existing passwords, keys and certificates.

Why explicit ``user`` blocks rather than ``pattern ... %u`` rules for gateways: Mosquitto
applies pattern rules to *every* user (``man mosquitto.conf``: "Pattern ACLs apply to all
users"), so a pattern would also let the monitor or the collector publish readings under a
gateway named like themselves. One block per gateway grants exactly that gateway's topics;
adding a gateway appends its block and reloads the broker (SIGHUP).
"""

from __future__ import annotations

import argparse
import base64
import getpass
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from launcher.certs import SERVER_DAYS, CertificateAuthority, create_ca, issue_certificate
from meterhub import wire
from meterhub.security.files import write_private_file

Access = Literal["read", "write"]
Scope = Literal["own", "all"]


@dataclass(frozen=True, slots=True)
class Rule:
    """One ACL grant: ``access`` on topic kind ``kind`` of its own gateway name or of all."""

    access: Access
    kind: str
    scope: Scope = "all"


GATEWAY_ROLE = "gateway"
# Who may do what, as data: a new topic kind (say a command receipt) is one more Rule here.
ROLES: Mapping[str, tuple[Rule, ...]] = {
    GATEWAY_ROLE: (
        Rule("write", "status", "own"), Rule("write", "readings", "own"),
        Rule("write", "events", "own"), Rule("write", "cmd/ack", "own"),
        Rule("read", "cmd", "own"), Rule("read", "receipt", "own"),
    ),
    # the collector confirms each committed batch on the gateway's own receipt topic
    "collector": (Rule("read", "readings"), Rule("read", "status"), Rule("read", "events"),
                  Rule("write", "receipt")),
    # billing's own alerts travel as events under its name (billing.commands.ALERTS_GATEWAY)
    "billing": (Rule("write", "cmd"), Rule("read", "cmd/ack"), Rule("read", "status"),
                Rule("write", "events", "own")),
    "web": (Rule("read", "status"), Rule("read", "events")),
    "monitor": tuple(Rule("read", kind) for kind in wire.KINDS),
}
DEFAULT_SERVICES: Mapping[str, str] = {role: role for role in ROLES if role != GATEWAY_ROLE}

_IDENTITY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
PBKDF2_ITERATIONS = 101  # what mosquitto_passwd 2.0 writes ($7$101$...)
RECORD = "site.json"


class ProvisionError(ValueError):
    """A provisioning request that cannot be honoured; the message says what to change."""


# ---------------------------------------------------------------------------- options


@dataclass(frozen=True, slots=True)
class PlainListener:
    """Unencrypted MQTT, meant for processes on the broker's own machine (loopback)."""

    port: int = 1883
    bind: str = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class TlsListener:
    """MQTT over TLS. ``hostnames`` go into the server certificate's SAN: the names (or IPs)
    clients connect by and verify. ``ca_cert``/``ca_key`` bring the site's own CA."""

    port: int = 8883
    bind: str | None = None  # None: every interface
    hostnames: tuple[str, ...] = ("localhost", "127.0.0.1")
    require_certificate: bool = False
    use_identity_as_username: bool = False
    ca_cert: str | None = None
    ca_key: str | None = None

    def __post_init__(self) -> None:
        if self.use_identity_as_username and not self.require_certificate:
            raise ProvisionError("use_identity_as_username needs require_certificate")
        if not self.hostnames:
            raise ProvisionError("TLS needs at least one hostname or IP for the certificate")
        if (self.ca_cert is None) != (self.ca_key is None):
            raise ProvisionError("bring both the CA certificate and its key, or neither")


@dataclass(slots=True)
class SiteRecord:
    """What a site's broker files are rendered from (``site.json``)."""

    site: str
    identities: dict[str, str]  # identity -> role
    plain: PlainListener | None = PlainListener()
    tls: TlsListener | None = None
    autosave_interval: int = 100
    user: str = field(default_factory=getpass.getuser)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> SiteRecord:
        tls = obj.get("tls")
        plain = obj.get("plain")
        return cls(
            site=obj["site"], identities=dict(obj["identities"]),
            plain=PlainListener(**plain) if plain else None,
            tls=TlsListener(**{**tls, "hostnames": tuple(tls["hostnames"])}) if tls else None,
            autosave_interval=obj["autosave_interval"], user=obj["user"],
        )


class SitePaths:
    """Where each generated file lives inside a site folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.record = self.root / RECORD
        self.config = self.root / "mosquitto.conf"
        self.passwd = self.root / "passwd"
        self.acl = self.root / "acl"
        self.pid_file = self.root / "mosquitto.pid"
        self.data = self.root / "data"
        self.tls = self.root / "tls"
        self.ca_cert = self.tls / "ca.crt"
        self.ca_key = self.tls / "ca.key"
        self.server_cert = self.tls / "server.crt"
        self.server_key = self.tls / "server.key"

    def credential(self, identity: str) -> Path:
        """The identity's password file (0600): what its process's config points to."""
        return self.root / "credentials" / f"{identity}.password"

    def client_cert(self, identity: str) -> Path:
        return self.tls / "clients" / f"{identity}.crt"

    def client_key(self, identity: str) -> Path:
        return self.tls / "clients" / f"{identity}.key"


# ---------------------------------------------------------------------------- rendering


def mosquitto_password_hash(password: str, *, salt: bytes | None = None,
                            iterations: int = PBKDF2_ITERATIONS) -> str:
    """``$7$<iterations>$<salt>$<hash>`` exactly as ``mosquitto_passwd`` 2.x writes it."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return (f"$7${iterations}${base64.b64encode(salt).decode()}"
            f"${base64.b64encode(digest).decode()}")


def _topic(site: str, gateway: str, kind: str) -> str:
    return f"{wire.TOPIC_ROOT}/{site}/{gateway}/{kind}"


def grants(site: str, identity: str, role: str) -> list[tuple[Access, str]]:
    """What ``identity`` may do, as (access, topic filter) pairs: its role's rules applied
    to the site (``own`` rules name the identity as the gateway, the others any gateway).
    Both the Mosquitto ACL file and the embedded amqtt broker's ACLs come from here."""
    return [(rule.access, _topic(site, identity if rule.scope == "own" else "+", rule.kind))
            for rule in ROLES[role]]


def render_acl(site: str, identities: Mapping[str, str]) -> str:
    """One ``user`` block per identity, its topics from its role's rules."""
    lines = [f"# Generated by `meterhub broker provision` for site {site}; rewritten from",
             f"# {RECORD} on every provision/add-gateway. Anything not granted is denied."]
    for name, role in sorted(identities.items()):
        lines += ["", f"# {role}", f"user {name}"]
        lines += [f"topic {access} {topic}" for access, topic in grants(site, name, role)]
    return "\n".join(lines) + "\n"


def render_config(record: SiteRecord, paths: SitePaths) -> str:
    lines = [
        f"# Generated by `meterhub broker provision` for site {record.site}; rewritten from",
        f"# {RECORD}. Start: mosquitto -c {paths.config}",
        # started as root, mosquitto would switch to user "mosquitto", which cannot read
        # the 0600 password file: run as the owner of the site folder
        f"user {record.user}",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {paths.passwd}",
        f"acl_file {paths.acl}",
        "persistence true",
        f"persistence_location {paths.data}/",
        # with autosave_on_changes, the interval counts changes, not seconds: a queued
        # command for an offline gateway reaches disk within that many changes
        "autosave_on_changes true",
        f"autosave_interval {record.autosave_interval}",
        "max_queued_messages 100000",
        f"pid_file {paths.pid_file}",
    ]
    if record.plain is not None:
        lines += ["", f"listener {record.plain.port} {record.plain.bind}"]
    if record.tls is not None:
        tls = record.tls
        lines += [
            "",
            f"listener {tls.port}" + (f" {tls.bind}" if tls.bind else ""),
            f"cafile {paths.ca_cert}",
            f"certfile {paths.server_cert}",
            f"keyfile {paths.server_key}",
            "tls_version tlsv1.2",
        ]
        if tls.require_certificate:
            lines.append("require_certificate true")
        if tls.use_identity_as_username:
            lines.append("use_identity_as_username true")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- writing


def _check_identity(name: str) -> None:
    if not _IDENTITY.fullmatch(name):
        raise ProvisionError(f"identity {name!r}: use letters, digits, '.', '_' or '-' "
                             "(at most 64, starting with a letter or digit)")


def _password(paths: SitePaths, identity: str) -> str:
    """The identity's password: kept if it exists (re-provisioning never locks a process
    out), else generated and written 0600."""
    path = paths.credential(identity)
    if path.exists():
        return path.read_text().strip()
    password = secrets.token_urlsafe(24)
    write_private_file(path, (password + "\n").encode())
    return password


def _ensure_ca(record: SiteRecord, paths: SitePaths) -> CertificateAuthority:
    assert record.tls is not None
    if record.tls.ca_cert and record.tls.ca_key:
        brought = CertificateAuthority.load(Path(record.tls.ca_cert), Path(record.tls.ca_key))
        if not paths.ca_cert.exists() or paths.ca_cert.read_bytes() != Path(
                record.tls.ca_cert).read_bytes():
            paths.tls.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(record.tls.ca_cert, paths.ca_cert)
            write_private_file(paths.ca_key, Path(record.tls.ca_key).read_bytes())
        return brought
    if paths.ca_cert.exists():
        return CertificateAuthority.load(paths.ca_cert, paths.ca_key)
    return create_ca(paths.ca_cert, paths.ca_key, site=record.site)


def _write_tls(record: SiteRecord, paths: SitePaths) -> None:
    assert record.tls is not None
    ca = _ensure_ca(record, paths)
    # the server certificate follows the hostnames asked for now, so it is reissued
    issue_certificate(ca, paths.server_cert, paths.server_key,
                      common_name=record.tls.hostnames[0], server_names=record.tls.hostnames,
                      days=SERVER_DAYS)
    for identity in record.identities:
        if not paths.client_cert(identity).exists():
            issue_certificate(ca, paths.client_cert(identity), paths.client_key(identity),
                              common_name=identity)


def write_site(record: SiteRecord, paths: SitePaths) -> None:
    """Render every file of the site from ``record`` (existing secrets are kept)."""
    for name in record.identities:
        _check_identity(name)
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.data.mkdir(exist_ok=True)
    entries = [f"{name}:{mosquitto_password_hash(_password(paths, name))}"
               for name in sorted(record.identities)]
    write_private_file(paths.passwd, ("\n".join(entries) + "\n").encode())
    write_private_file(paths.acl, render_acl(record.site, record.identities).encode())
    if record.tls is not None:
        _write_tls(record, paths)
    paths.config.write_text(render_config(record, paths))
    paths.record.write_text(json.dumps(record.to_json(), indent=2) + "\n")


def load_record(site_dir: Path) -> SiteRecord:
    path = SitePaths(site_dir).record
    if not path.exists():
        raise ProvisionError(f"{site_dir} is not a provisioned site (no {RECORD}); "
                             "run `meterhub broker provision` first")
    return SiteRecord.from_json(json.loads(path.read_text()))


def provision(
    site_dir: Path,
    *,
    site: str,
    gateways: Iterable[str],
    tls: TlsListener | None = None,
    plain: PlainListener | None = PlainListener(),
    services: Mapping[str, str] = DEFAULT_SERVICES,
    autosave_interval: int = 100,
    user: str | None = None,
) -> SitePaths:
    """Write (or rewrite) a site's broker files; returns where they are.

    ``services`` maps each non-gateway process identity to its role (one credential per
    process: a second collector is ``{"collector-2": "collector"}``). ``plain=None`` makes
    the broker TLS-only. Gateways already recorded for the site are kept.
    """
    wire.topic(site, "x", "status")  # raises WireError for a site name topics cannot carry
    if plain is None and tls is None:
        raise ProvisionError("no listener: give a plain listener, a TLS listener or both")
    paths = SitePaths(Path(site_dir))
    identities = dict(load_record(paths.root).identities) if paths.record.exists() else {}
    for name, role in services.items():
        if role not in ROLES or role == GATEWAY_ROLE:
            raise ProvisionError(f"service {name!r}: unknown role {role!r}; one of "
                                 f"{', '.join(r for r in ROLES if r != GATEWAY_ROLE)}")
        identities[name] = role
    for gateway in gateways:
        _add_gateway_identity(identities, gateway)
    record = SiteRecord(site=site, identities=identities, plain=plain, tls=tls,
                        autosave_interval=autosave_interval, user=user or getpass.getuser())
    write_site(record, paths)
    return paths


def _add_gateway_identity(identities: dict[str, str], gateway: str) -> None:
    _check_identity(gateway)
    wire.topic("site", gateway, "status")
    if identities.get(gateway, GATEWAY_ROLE) != GATEWAY_ROLE:
        raise ProvisionError(f"gateway {gateway!r} would share its name with the "
                             f"{identities[gateway]} identity; choose another gateway id")
    identities[gateway] = GATEWAY_ROLE


def add_gateway(site_dir: Path, gateway: str, *, reload: bool = True) -> Path:
    """Add one gateway to a provisioned site (password, ACL block, client certificate) and
    reload a running broker; returns the gateway's credential file."""
    paths = SitePaths(Path(site_dir))
    record = load_record(paths.root)
    _add_gateway_identity(record.identities, gateway)
    write_site(record, paths)
    if reload:
        reload_broker(paths.root)
    return paths.credential(gateway)


def reload_broker(site_dir: Path) -> bool:
    """SIGHUP the site's running broker (its pid file) so it rereads passwords and ACLs.

    Returns False when no broker runs for this site (nothing to reload).
    """
    pid_file = SitePaths(Path(site_dir)).pid_file
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return False
    comm = Path(f"/proc/{pid}/comm")
    if comm.exists() and comm.read_text().strip() != "mosquitto":
        return False  # a stale pid file whose number now belongs to another process
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return False
    return True


# ---------------------------------------------------------------------------- CLI


def register(subparsers: Any) -> None:
    """Add ``broker provision|add-gateway`` to the ``meterhub`` command."""
    parser = subparsers.add_parser("broker", help="broker identities, ACLs and TLS for a site",
                                   description="Write a site's Mosquitto config, passwords, "
                                   "ACLs and certificates.")
    sub = parser.add_subparsers(dest="broker_command", required=True, metavar="ACTION")

    prov = sub.add_parser("provision", help="write (or rewrite) a site's broker files")
    prov.add_argument("--site-dir", required=True, type=Path)
    prov.add_argument("--site", required=True)
    prov.add_argument("--gateway", action="append", default=[], dest="gateways",
                      help="gateway id (repeat for each)")
    prov.add_argument("--port", type=int, default=1883, help="plain listener on loopback")
    prov.add_argument("--no-plain", action="store_true", help="TLS only")
    prov.add_argument("--tls-port", type=int, help="add a TLS listener on this port")
    prov.add_argument("--hostname", action="append", dest="hostnames",
                      help="name or IP clients use to reach the broker (repeat)")
    prov.add_argument("--require-certificate", action="store_true")
    prov.add_argument("--use-identity-as-username", action="store_true")
    prov.add_argument("--ca-cert", help="the site's own CA certificate (PEM)")
    prov.add_argument("--ca-key", help="its private key (PEM, mode 0600)")
    prov.set_defaults(handler=_provision_command)

    add = sub.add_parser("add-gateway", help="add a gateway and reload the running broker")
    add.add_argument("--site-dir", required=True, type=Path)
    add.add_argument("gateway")
    add.set_defaults(handler=_add_gateway_command)


def _provision_command(args: argparse.Namespace) -> int:
    tls = None
    if args.tls_port is not None:
        tls = TlsListener(port=args.tls_port,
                          hostnames=tuple(args.hostnames or TlsListener().hostnames),
                          require_certificate=args.require_certificate,
                          use_identity_as_username=args.use_identity_as_username,
                          ca_cert=args.ca_cert, ca_key=args.ca_key)
    plain = None if args.no_plain else PlainListener(port=args.port)
    paths = provision(args.site_dir, site=args.site, gateways=args.gateways, tls=tls,
                      plain=plain)
    # paths only: the passwords stay in their 0600 files
    print(f"broker config: {paths.config}\nstart it with: mosquitto -c {paths.config}\n"
          f"credentials: {paths.root / 'credentials'}/<identity>.password")
    return 0


def _add_gateway_command(args: argparse.Namespace) -> int:
    credential = add_gateway(args.site_dir, args.gateway, reload=False)
    reloaded = reload_broker(args.site_dir)
    print(f"gateway {args.gateway}: credential {credential}"
          + ("; broker reloaded" if reloaded else "; no running broker to reload"))
    return 0
