"""What to check when a meter does not answer as it should: the installer's checklist, ordered
by how often each cause is the one on site, without what is already ruled out.

A driver error says what happened (silence, an error reply, garbage, no port); the verdict
and checklist here say what that usually means. ``check`` knows more than a single ``read``
(whether the port opened, whether other meters on the same line answered), and passes it in
:class:`Known` so the list leaves those causes out and says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import BusConfig
from gateway.drivers.base import BadFrame, DriverError, MeterRejected, PortUnavailable
from meterhub.i18n import N_, _

# Verdicts, and the words installers read: English here, translated where shown (_()).
OK, SILENT, REJECTED, GARBLED, NO_PORT = "ok", "no answer", "error reply", "garbled", "no port"

NO_ANSWER = N_("no answer at {line} from {what} {address}: check {checks}")
ERROR_REPLY = N_("{what} {address} answered with an error: {checks}")
GARBLED_REPLY = N_("something answered at {line} for {what} {address}, garbled: check {checks}")
PORT_PROBLEM = N_("cannot use {endpoint}: check {checks}")
RULED_OUT = N_(" (ruled out: {ruled_out})")

CHECK_BAUD_PARITY = N_("baud and parity (meter menu vs {line})")
CHECK_WIRING = N_("A/B wiring (swapped or loose) and termination")
CHECK_ADDRESS = N_("the {what} ({address})")
CHECK_VERSION = N_("the protocol version (dlt645-2007 or dlt645-1997)")
CHECK_POWER = N_("that the meter is powered")
CHECK_TWO_DEVICES = N_("two devices on one address")
CHECK_MODEL = N_("the register map: the meter is not a {model} (run `meterhub gateway scan` to "
    "name the models that answer)")
CHECK_DLT_ERROR = N_("the data identifier, protocol version or password this meter accepts")
CHECK_PORT = N_("the adapter is plugged in, the device name (ls /dev/ttyUSB* /dev/serial/by-id), "
    "permission (dialout group), no other program holds it, the simulator runs")
CHECK_TCP = N_("the converter's IP address and port, and that it is reachable")
RULED_PORT = N_("the port opens")
RULED_LINE = N_(
    "baud, parity and wiring at the adapter ({count} other meter(s) on this line answer)"
)


@dataclass(frozen=True, slots=True)
class Known:
    """What is already established about the line, so the checklist can leave it out."""

    port_opens: bool = False
    others_answer: int = 0  # meters on the same bus that answered


def line_of(bus: BusConfig) -> str:
    """``9600 8E1`` for a serial bus, ``TCP host:port`` for an endpoint."""
    if bus.port is None:
        return f"TCP {bus.endpoint}"
    return f"{bus.baud} {bus.bytesize}{bus.parity}{bus.stopbits}"


def verdict(exc: BaseException | None) -> str:
    """One word for an outcome: ok, no answer, error reply, garbled, no port."""
    if exc is None:
        return OK
    if isinstance(exc, PortUnavailable):
        return NO_PORT
    if isinstance(exc, MeterRejected):
        return REJECTED
    if isinstance(exc, BadFrame):
        return GARBLED
    return SILENT


def explain(
    exc: DriverError | OSError,
    bus: BusConfig,
    address: str,
    *,
    model: str | None = None,
    known: Known = Known(),
) -> str:
    """The checklist for this outcome, most likely cause first."""
    what = _("unit") if bus.protocol == "modbus" else _("address")
    line = line_of(bus)
    if isinstance(exc, PortUnavailable | OSError):
        return _(PORT_PROBLEM,
            endpoint=bus.endpoint, checks=_(CHECK_TCP) if bus.port is None else _(CHECK_PORT)
        )
    if isinstance(exc, MeterRejected):
        check = (
            _(CHECK_MODEL, model=model)
            if bus.protocol == "modbus" and model
            else _(CHECK_DLT_ERROR)
        )
        return _(ERROR_REPLY, what=what, address=address, checks=check)
    ruled: list[str] = []
    if known.port_opens:
        ruled.append(_(RULED_PORT))
    checks: list[str] = []
    if known.others_answer:
        ruled.append(_(RULED_LINE, count=known.others_answer))
    elif bus.port is not None:
        checks += [_(CHECK_BAUD_PARITY, line=line), _(CHECK_WIRING)]
    if isinstance(exc, BadFrame):
        checks.append(_(CHECK_TWO_DEVICES))
        text = _(GARBLED_REPLY, line=line, what=what, address=address, checks=", ".join(checks))
    else:
        checks.append(_(CHECK_ADDRESS, what=what, address=address))
        if bus.protocol.startswith("dlt645"):
            checks.append(_(CHECK_VERSION))
        checks.append(_(CHECK_POWER))
        text = _(NO_ANSWER, line=line, what=what, address=address, checks=", ".join(checks))
    return text + (_(RULED_OUT, ruled_out="; ".join(ruled)) if ruled else "")
