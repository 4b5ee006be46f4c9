"""``meterhub gateway run|check|scan|read``: the service and the installer's tools."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from gateway.config import PROTOCOLS, ConfigError, MeterConfig, load_config
from gateway.drivers.base import DriverError
from gateway.hints import line_of
from meterhub.metrics import add_metrics_option, metrics_endpoint
from meterhub.quantities import QUANTITIES

RELAY_ITEM = "relay"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("gateway", help="the field gateway and installer tools",
                                   description="Poll meters, buffer, publish; installer tools.")
    sub = parser.add_subparsers(dest="gateway_command", required=True, metavar="ACTION")

    run = sub.add_parser("run", help="run the gateway service until SIGTERM/SIGINT")
    run.add_argument("--config", required=True, type=Path, help="gateway TOML file")
    run.add_argument("--state-dir", type=Path, help="overrides gateway.state_dir")
    add_metrics_option(run)
    run.set_defaults(handler=_run)

    ref = sub.add_parser("config-reference", help="print the config reference (Markdown), "
                         "generated from the config loader")
    ref.add_argument("--out", type=Path, help="write it to this file instead")
    ref.set_defaults(handler=_config_reference)

    check = sub.add_parser("check", help="validate the config, test the state directory and "
                           "the broker login, read each meter once: a verdict per bus and meter")
    check.add_argument("--config", required=True, type=Path, help="gateway TOML file")
    check.add_argument("--json", action="store_true", help="rows as JSON instead of a table")
    check.add_argument("--state-dir", type=Path, help="overrides gateway.state_dir")
    check.set_defaults(handler=_check)

    scan = sub.add_parser("scan", help="find the meters on a bus and print a config snippet")
    _line_options(scan)
    scan.add_argument("--units", default="1-247", help="Modbus unit ids to try, e.g. 1-32")
    scan.add_argument("--range", dest="addresses", default="000000000001-000000000032",
                      help="DL/T645 addresses to sweep after read-address, FIRST-LAST")
    scan.add_argument("--model", help="Modbus register map to write into the snippet")
    scan.set_defaults(handler=_scan, timeout=None)

    read = sub.add_parser("read", help="read one item (a quantity, the relay) from one meter")
    _line_options(read)
    read.add_argument("--address", help="12-digit DL/T645 address")
    read.add_argument("--unit", type=int, help="Modbus unit id")
    read.add_argument("--model", help="Modbus register map, e.g. eastron-sdm120")
    read.add_argument("--item", metavar="QUANTITY|relay|DI",
                      help="canonical quantity (e.g. energy_import_total), relay (its state), "
                      "or for DL/T645 a data identifier in hex (e.g. 04000401 for the meter "
                      "address); --list shows them")
    read.add_argument("--list", action="store_true",
                      help="list the items this protocol (or Modbus --model) can read")
    read.add_argument("--json", action="store_true", help="print the value as JSON")
    read.set_defaults(handler=_read)


def _line_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--protocol", required=True, choices=PROTOCOLS)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--port", help="serial device, e.g. /dev/ttyUSB0")
    where.add_argument("--tcp", metavar="HOST:PORT", help="Modbus TCP or a serial server")
    parser.add_argument("--baud", type=int, help="default 2400 for DL/T645, 9600 for Modbus")
    parser.add_argument("--parity", choices=("N", "E", "O"), help="default E / N")
    parser.add_argument("--timeout", type=float, default=1.0,
                        help="seconds per try (scan: sized to the line unless given)")
    parser.add_argument("--retries", type=int, default=1)


def _endpoint(args: argparse.Namespace) -> tuple[str, int] | None:
    if not args.tcp and not args.port:
        raise SystemExit("one of --port (serial device) or --tcp HOST:PORT is required")
    if not args.tcp:
        return None
    host, _, port = args.tcp.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"--tcp {args.tcp!r}: expected HOST:PORT")
    return host, int(port)


# ---------------------------------------------------------------------------- run


def _config_reference(args: argparse.Namespace) -> int:
    from gateway.config_reference import render

    text = render()
    if args.out:
        args.out.write_text(text, "utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _run(args: argparse.Namespace) -> int:
    from gateway.app import Gateway, GatewayStartError, summary_log
    from gateway.metrics import GatewayMetrics

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    # the minute's summary shows at default verbosity (warnings only otherwise)
    summary_log.setLevel(min(logging.INFO, logging.getLogger().getEffectiveLevel()))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        gateway = Gateway(config, state_dir=args.state_dir)
        async with metrics_endpoint(args.metrics, lambda: GatewayMetrics(gateway)):
            await gateway.run(stop)

    try:
        asyncio.run(main())
    except GatewayStartError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


# ---------------------------------------------------------------------------- check


def _check(args: argparse.Namespace) -> int:
    from gateway.tools import check_meters, format_check, preflight

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"{args.config}: config valid, {len(config.meters())} meters on "
          f"{len(config.buses)} buses; testing the state directory and the broker, then "
          "reading each meter once ...", file=sys.stderr)

    async def both() -> tuple[Any, Any]:
        return await preflight(config, args.state_dir), await check_meters(config)

    findings, (buses, rows) = asyncio.run(both())
    if args.json:
        print(json.dumps({
            "checks": [{"what": f.what, "ok": f.ok, "detail": f.detail} for f in findings],
            "buses": [{"bus": b.bus, "endpoint": b.endpoint, "line": b.line,
                       "verdict": b.verdict, "answered": b.answered, "meters": b.meters,
                       "cause": b.cause} for b in buses],
            "meters": [{"meter": r.meter, "bus": r.bus, "protocol": r.protocol,
                        "verdict": r.verdict, "answered": r.answered, "rtt_ms": r.rtt_ms,
                        "error": r.error, "hint": r.hint,
                        "values": {q: {"value": v.value, "unit": v.unit}
                                   for q, v in r.values.items()}} for r in rows]}))
    else:
        print(format_check(buses, rows, findings))
    counts = Counter(r.verdict for r in rows)
    failed = [f.what for f in findings if not f.ok]
    if counts.get("ok", 0) < len(rows) or failed:
        told = ", ".join(f"{n} {verdict}" for verdict, n in counts.items() if verdict != "ok")
        print(f"{counts.get('ok', 0)} of {len(rows)} meters read"
              + (f" ({told})" if told else "")
              + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------- scan


def _span(text: str, what: str) -> tuple[int, int]:
    first, _, last = text.partition("-")
    if not first.isdigit() or not (last or first).isdigit():
        raise SystemExit(f"{what} {text!r}: expected FIRST-LAST")
    return int(first), int(last or first)


def _scan(args: argparse.Namespace) -> int:
    from gateway.tools import adhoc_bus, config_snippet, probe_timeout, scan_dlt645, scan_modbus
    from meterhub.progress import Progress

    # silence is the expected answer at most addresses: keep the progress bar readable
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    bus = adhoc_bus(args.protocol, port=args.port, tcp=_endpoint(args), baud=args.baud,
                    parity=args.parity, timeout_s=1.0, retries=0)
    bus = replace(bus, timeout_s=args.timeout or probe_timeout(bus))
    print(f"scanning {bus.endpoint} ({line_of(bus)}, {bus.timeout_s:g} s per try; a meter "
          "slower to answer needs --timeout)", file=sys.stderr)
    bar: Progress | None = None

    def progress(done: int, total: int, found: str) -> None:
        nonlocal bar
        bar = bar or Progress(total, "scan")
        bar.update(done, found)

    if args.protocol == "modbus":
        first, last = _span(args.units, "--units")
        found = asyncio.run(scan_modbus(bus, list(range(first, last + 1)), progress,
                                        args.model))
    else:
        first, last = _span(args.addresses, "--range")
        candidates = [f"{n:012d}" for n in range(first, last + 1)]
        found = asyncio.run(scan_dlt645(bus, candidates, progress))
    print(f"found {len(found)} meter(s) on {bus.endpoint}", file=sys.stderr)
    for f in found:
        if args.protocol == "modbus":
            print(f"  unit {f.address}: " + (f"answers as {', '.join(f.models)}" if f.models
                  else "answers, but as none of the known register maps"), file=sys.stderr)
    print(config_snippet(bus, found, args.model))
    return 0 if found else 1


# ---------------------------------------------------------------------------- read


def _read(args: argparse.Namespace) -> int:
    from gateway.hints import explain
    from gateway.tools import adhoc_bus, read_identifier, read_once, read_relay, readable_items

    if args.list:
        try:
            print("\n".join(readable_items(args.protocol, args.model)))
        except DriverError as exc:
            raise SystemExit(str(exc)) from None
        return 0
    if not args.item:
        raise SystemExit("--item is required (or --list to see the items)")
    if args.item not in QUANTITIES and args.item != RELAY_ITEM:
        return _read_identifier(args, adhoc_bus, read_identifier)

    quantities = () if args.item == RELAY_ITEM else (args.item,)
    if args.protocol == "modbus":
        if args.unit is None or not args.model:
            raise SystemExit("--protocol modbus needs --unit N and --model NAME")
        address = str(args.unit)
        meter = MeterConfig(address, address, "modbus", 60.0, quantities, args.model)
    else:
        if not args.address or len(args.address) != 12 or not args.address.isdigit():
            raise SystemExit("--address: expected the 12-digit DL/T645 address")
        address = args.address
        meter = MeterConfig(address, address, args.protocol, 60.0, quantities)
    bus = adhoc_bus(args.protocol, port=args.port, tcp=_endpoint(args), baud=args.baud,
                    parity=args.parity, timeout_s=args.timeout, retries=args.retries,
                    meters=[meter])
    try:
        if args.item == RELAY_ITEM:
            relay = asyncio.run(read_relay(bus, address))
        else:
            value = asyncio.run(read_once(bus, address, args.item))
    except DriverError as exc:
        print(f"{bus.endpoint}: {exc}", file=sys.stderr)
        print(explain(exc, bus, address, model=args.model), file=sys.stderr)
        return 1
    if args.item == RELAY_ITEM:
        print(json.dumps({"meter": address, "protocol": args.protocol, "relay": relay})
              if args.json else f"relay = {relay}")
    elif args.json:
        print(json.dumps({"meter": address, "protocol": args.protocol, "quantity": args.item,
                          "value": value.value, "unit": value.unit}))
    else:
        print(f"{args.item} = {value.value:g} {value.unit}".rstrip())
    return 0


def _read_identifier(args: argparse.Namespace, adhoc_bus: Any, read_identifier: Any) -> int:
    """``--item`` as a DL/T645 data identifier: whatever the table says it holds."""
    digits = 4 if args.protocol == "dlt645-1997" else 8
    if args.protocol == "modbus" or len(args.item) != digits or not all(
            c in "0123456789abcdefABCDEF" for c in args.item):
        raise SystemExit(f"--item {args.item!r}: not a canonical quantity (e.g. "
                         "energy_import_total) nor a DL/T645 data identifier in hex")
    if not args.address or len(args.address) != 12 or not args.address.isdigit():
        raise SystemExit("--address: expected the 12-digit DL/T645 address")
    bus = adhoc_bus(args.protocol, port=args.port, tcp=_endpoint(args), baud=args.baud,
                    parity=args.parity, timeout_s=args.timeout, retries=args.retries)
    try:
        name, value, unit = asyncio.run(read_identifier(bus, args.address, int(args.item, 16)))
    except DriverError as exc:
        from gateway.hints import explain

        print(f"{bus.endpoint}: {exc}", file=sys.stderr)
        print(explain(exc, bus, args.address), file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"meter": args.address, "protocol": args.protocol, "di": args.item,
                          "name": name, "value": value, "unit": unit}, default=str))
    else:
        print(f"{args.item} ({name}) = {value} {unit}".rstrip())
    return 0
