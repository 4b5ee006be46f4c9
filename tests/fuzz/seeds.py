"""Write the seed corpora (``tests/fuzz/corpus/<target>/``) from the test vectors.

Run once after changing a harness's input layout: ``python tests/fuzz/seeds.py``. The frames
are PROTOCOLS.md's vectors and the codec tests' examples; the JSON payloads are what the
encoders write; the configs are the shipped example and small variants.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meterhub import wire
from meterhub.protocols.modbus import rtu, tcp
from meterhub.security.signing import CommandSigner

HERE = Path(__file__).parent
CORPUS = HERE / "corpus"
ROOT = HERE.parents[1]
H = bytes.fromhex

# PROTOCOLS.md, DL/T645 test vectors
DLT_REQUESTS = [
    H("FE FE FE FE 68 61 01 00 00 00 00 68 11 04 33 33 34 33 14 16"),
    H("68 61 01 00 00 00 00 68 11 04 33 34 34 35 17 16"),
    H("68 AA AA AA AA AA AA 68 13 00 DF 16"),
    H("68 61 01 00 00 00 00 68 1C 10 35 89 67 45 33 33 33 33 4D 33 33 33 33 34 34 63 78 16"),
    H("68 03 00 00 00 00 00 68 01 02 44 E9 03 16"),
]
DLT_REPLIES = [
    H("68 61 01 00 00 00 00 68 91 08 33 33 34 33 59 33 33 33 8A 16"),  # 0.26 kWh
    H("68 61 01 00 00 00 00 68 91 06 33 34 34 35 34 43 10 16"),  # 100.1 V
    H("68 03 00 00 00 00 00 68 81 04 44 E9 33 34 EC 16"),  # 1997: 100 V
]

JSON_TIME = "2025-01-01T00:00:00.000Z"


def _dlt645() -> dict[str, bytes]:
    """Layout (fuzzkit.split): selector, chunk-size count, chunk sizes, payload."""
    seeds = {}
    for i, frame in enumerate(DLT_REQUESTS + DLT_REPLIES):
        seeds[f"decode-{i}"] = bytes([0, 0]) + frame
        seeds[f"stream-{i}"] = bytes([1, 3, 5, 1, 7]) + b"\x00\xfe" + frame + frame[:9]
        seeds[f"request-{i}"] = bytes([3, 0]) + frame
    # replies against the requests of harness_dlt645.REQUESTS (selector 2 + 6 * index)
    seeds["reply-read"] = bytes([2, 2, 4, 9]) + DLT_REPLIES[0]
    seeds["reply-1997"] = bytes([2 + 6 * 7, 0]) + DLT_REPLIES[2]
    seeds["reply-abnormal"] = bytes([2, 0]) + H("68 61 01 00 00 00 00 68 D1 01 35 C4 16")
    seeds["value-energy"] = bytes([4, 0]) + H("00 00 01 00 26 00 00 00")
    seeds["value-block"] = bytes([4, 0]) + H("00 FF 01 00") + bytes(20)
    seeds["value-date"] = bytes([4, 0]) + H("01 01 00 04 03 01 01 25")
    seeds["baud"] = bytes([5, 0, 0x20])
    return seeds


def _modbus() -> dict[str, bytes]:
    reply = rtu.encode(1, H("03 04 43 66 80 00"))
    seeds = {
        "reply-fc03": bytes([0, 2, 3, 2]) + reply,
        "reply-exception": bytes([0, 0]) + rtu.encode(1, H("83 02")),
        "reply-noise": bytes([0, 0, 0xFF, 0x00]) + reply,
        "requests": bytes([2, 1, 5]) + H("11 03 00 6B 00 03 76 87 01 04 00 00 00 02 71 CB"),
        "request-fc16": bytes([2, 0]) + rtu.encode(1, H("10 00 01 00 02 04 00 0A 01 02")),
        "pdu-fc05": bytes([3, 0]) + H("05 00 AC FF 00"),
        "mbap": bytes([4, 0]) + tcp.encode(1, 1, H("04 00 00 00 02")),
        "registers": bytes([5, 0]) + H("43 66 80 00") * 8,
        "registers-int": bytes([6, 0]) + H("00 0A 01 02") * 8,
    }
    for path in sorted((ROOT / "meterhub/protocols/modbus/maps").glob("*.toml")):
        seeds[f"map-{path.stem}"] = bytes([7, 0]) + path.read_bytes()
    return seeds


def _wire() -> dict[str, bytes]:
    """Layout: selector (harness_wire.TARGETS index), payload."""
    at = datetime(2025, 1, 1, tzinfo=UTC)
    batch = wire.ReadingsBatch("gw-1", "s1", 7, at, (
        wire.Reading("000000000001", at, {"energy_import_total": wire.Value(0.26, "kWh"),
                                          "voltage_a": wire.Value(230.1, "V")}, "closed"),
    ))
    ack = wire.Ack("c1", "gw-1", "000000000001", "done", at, "ok", "open", "switched")
    status = wire.Status("gw-1", "s1", "online", at, {"meters": 2, "backlog": 0})
    events = [wire.Event("comm_error", at, "000000000001", "no answer", {"tries": 3})]
    return {
        "readings": b"\x00" + wire.encode_readings(batch),
        "readings-each": b"\x01" + wire.encode_readings(batch),
        "readings-rows": b"\x00" + wire.encode_reading_rows(batch),
        "readings-rows-each": b"\x01" + wire.encode_reading_rows(batch),
        "ack": b"\x02" + wire.encode_ack(ack),
        "ack-accepted": b"\x02" + wire.encode_ack(wire.Ack("c1", "gw-1", "m", "accepted", at)),
        "status": b"\x03" + wire.encode_status(status),
        "events": b"\x04" + wire.encode_events("gw-1", events),
    }


def _command() -> dict[str, bytes]:
    signer = CommandSigner(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
    issued = datetime(2025, 1, 1, tzinfo=UTC)
    seeds = {}
    for action in ("relay_open", "relay_close", "time_sync"):
        params = {"reason": "arrears", "tries": 2} if action != "time_sync" else {}
        cmd = wire.Command(f"c-{action}", "000000000001", action, issued,  # type: ignore[arg-type]
                           issued + timedelta(minutes=5), params=params)
        seeds[f"signed-{action}"] = wire.encode_command(cmd, "gw-1", signer, nonce="n1")
    unsigned = json.loads(seeds["signed-relay_open"])
    del unsigned["sig"], unsigned["key_id"]
    seeds["unsigned"] = json.dumps(unsigned, separators=(",", ":")).encode()
    return seeds


def _config() -> dict[str, bytes]:
    example = (ROOT / "configs/gateway.example.toml").read_bytes()
    small = (
        b'[gateway]\nid = "gw1"\nsite = "north"\n[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n'
        b'[[buses]]\nname = "rs485-1"\nprotocol = "dlt645-2007"\nport = "/dev/ttyUSB0"\n'
        b'[[buses.meters]]\naddress = "000000000001"\n'
        b'[[buses]]\nname = "rtu"\nprotocol = "modbus"\ntcp = "10.0.0.5:502"\n'
        b'model = "eastron-sdm120"\n[[buses.meters]]\nunit = 1\n'
    )
    return {"example": example, "small": small}


def main() -> None:
    for target, seeds in (("dlt645", _dlt645()), ("modbus", _modbus()), ("wire", _wire()),
                          ("command", _command()), ("config", _config())):
        folder = CORPUS / target
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
        for name, data in seeds.items():
            digest = hashlib.sha1(data).hexdigest()[:8]
            (folder / f"{name}-{digest}").write_bytes(data)


if __name__ == "__main__":
    main()
