"""The gateway config reference, generated from the config loader itself.

The loader (:func:`gateway.config.config_from_dict`) is the schema: walking a config it names
every key each table accepts, and for each value it reads, the kind and the default. This
module walks the shipped example (``configs/gateway.example.toml``) with a listener, takes
each key's description from the example's own comments, and writes the Markdown reference
(``docs/gateway-config.md``, ``meterhub gateway config-reference``). A key the loader accepts
but neither the example nor :data:`MORE` describes fails ``tests/gateway/test_config_reference.py``,
as does a reference file that differs from what this module writes.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from gateway.config import _MISSING, KeyRecord, config_from_dict

EXAMPLE = Path(__file__).resolve().parent.parent / "configs" / "gateway.example.toml"
SECTIONS = ("gateway", "mqtt", "buffer", "security", "buses", "buses.meters")
TITLES = {"gateway": "[gateway]", "mqtt": "[mqtt]", "buffer": "[buffer]",
          "security": "[security]", "buses": "[[buses]]", "buses.meters": "[[buses.meters]]"}

# What the example's comments do not say, and kinds the loader reads through helpers.
MORE: dict[tuple[str, str], tuple[str, str]] = {
    ("gateway", "id"): ("text", "this gateway's id, unique per site (part of its topics)"),
    ("buses", "meters"): ("list of tables", "the meters on this line ([[buses.meters]])"),
    ("buses", "quantities"): ("list of text", "what to read from each meter by default "
                              "(canonical quantity names, see meterhub.quantities)"),
    ("buses.meters", "quantities"): ("list of text", "what to read from this meter "
                                     "(default: the bus's)"),
    ("security", "trusted_keys"): ("list of paths", "Ed25519 public keys (PEM) whose signed "
                                   "commands are executed; old and new during a rotation"),
    ("buses", "model"): ("text", "the Modbus register map of the bus's meters "
                         "(`meterhub gateway read --list` shows the maps)"),
    ("buses", "maps_dir"): ("path", "a folder of extra Modbus register maps (TOML)"),
    ("buses", "read_status"): ("true or false", "read the meter's status word with polls "
                               "(DL/T645-2007)"),
    ("buses", "has_relay"): ("true or false", "the line's meters have a relay (default: "
                             "what the protocol and register map say)"),
    ("buses.meters", "id"): ("text", "the meter's id on the wire (default: its address, or "
                             "bus:unit for Modbus)"),
    ("buses.meters", "protocol"): ("text", "dlt645-2007 | dlt645-1997 for one meter on a "
                                   "line of the other version"),
    ("buses.meters", "model"): ("text", "this meter's register map (default: the bus's)"),
    ("buses.meters", "password"): ("a secret", "this meter's DL/T645 relay password "
                                   "({file = ...} or {env = ...})"),
    ("buses.meters", "read_status"): ("true or false", "as the bus's, for this meter"),
    ("buses.meters", "report_relay_every"): ("a whole number", "as the bus's, for this meter"),
    ("buses.meters", "relay_control"): ("true or false", "as the bus's, for this meter"),
    ("buses.meters", "has_relay"): ("true or false", "as the bus's, for this meter"),
    ("buses.meters", "clock_check_s"): ("a number", "as the bus's, for this meter"),
    ("buses.meters", "poll_interval_s"): ("a number", "as the bus's, for this meter"),
    ("mqtt", "keepalive_s"): ("a whole number", "MQTT keep-alive in seconds: the broker "
                              "publishes the gateway's last will after 1.5 x this silence"),
    ("mqtt", "url"): ("text", "the broker: mqtt://host:1883, or mqtts://host:8883 for TLS "
                      "(default: $METERHUB_MQTT_URL)"),
    ("mqtt", "password"): ("a secret", "the broker password as {file = ...} (mode 0600) or "
                           "{env = ...}; never logged"),
    ("mqtt", "key_file"): ("path", "the client certificate's private key (mode 0600)"),
    ("buses", "bytesize"): ("a whole number", "data bits (8)"),
    ("buses", "stopbits"): ("a whole number", "stop bits (1 or 2)"),
    ("buses", "operator"): ("text", "DL/T645 operator code sent with relay commands "
                            "(8 digits)"),
    ("buses", "password_level"): ("a whole number", "DL/T645 password level of the relay "
                                  "password (usually 2)"),
    ("buses", "tcp"): ("text", "HOST:PORT of a Modbus TCP meter or a serial server, instead "
                       "of port"),
}


def descriptions(text: str) -> dict[tuple[str, str], str]:
    """Each key's comment in the example: after its value, continued on lines that hold only
    a comment, and also for keys shown commented out (``# key = ...  # what``)."""
    out: dict[tuple[str, str], str] = {}
    section, last = "", None
    for line in text.splitlines():
        header = re.match(r"^\s*\[\[?([a-z.]+)\]\]?", line)
        if header:
            section, last = header[1], None
            continue
        entry = re.match(r"^\s*#?\s*([a-z_]+)\s*=\s*(?:[^#]*?)\s*(?:#\s*(.*))?$", line)
        if entry:  # a key, or a key shown commented out
            last = (section, entry[1])
            if entry[2]:
                out[last] = entry[2].strip()
            continue
        more = re.match(r"^\s{8,}#\s*(.*)$", line)
        if more and last is not None and last in out:
            out[last] = f"{out[last]} {more[1].strip()}"
        elif not line.strip().startswith("#"):
            last = None
    return out


def entries() -> list[tuple[str, str, str, str, str]]:
    """(section, key, kind, default, description) for every key the loader accepts."""
    text = EXAMPLE.read_text("utf-8")
    record: KeyRecord = {}
    config_from_dict(tomllib.loads(text), str(EXAMPLE), base_dir=EXAMPLE.parent, record=record)
    said = descriptions(text)
    rows = []
    for (section, key), (kind, default) in record.items():
        if section not in SECTIONS:
            continue
        kind = MORE.get((section, key), (kind, ""))[0] if kind == "table" else kind
        about = MORE.get((section, key), ("", ""))[1] or said.get((section, key), "")
        rows.append((section, key, kind, _default(default), about))
    order = {s: i for i, s in enumerate(SECTIONS)}
    return sorted(rows, key=lambda r: (order[r[0]], r[1]))


def _default(value: Any) -> str:
    if value is _MISSING:
        return "required"
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value!r}`" if isinstance(value, str) else f"`{value}`"


def render() -> str:
    rows = entries()
    out = ["# Gateway configuration reference", "",
           "Generated from the config loader by `meterhub gateway config-reference` "
           "(gateway/config_reference.py); the example with comments is "
           "`configs/gateway.example.toml`. Defaults that depend on the protocol (baud, parity, "
           "timeouts) are those of the example's line.", ""]
    for section in SECTIONS:
        out += [f"## {TITLES[section]}", "", "| key | kind | default | what |",
                "| --- | --- | --- | --- |"]
        out += [f"| `{key}` | {kind} | {default} | {about.replace('|', '/')} |"
                for s, key, kind, default, about in rows if s == section]
        out.append("")
    return "\n".join(out)
