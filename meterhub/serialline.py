"""Serial line settings (baud, data bits, parity, stop bits) and how they reach a simulator
through a pseudo-terminal.

A real RS-485 meter decodes what it hears at its own baud rate and parity; a master set
differently gets garbage or silence, the most common fault on site. A Linux pseudo-terminal
carries no bits, but it keeps the termios settings its opener asked for, so the simulator on
the other end can read them and decode as a real UART would (``firmware_sim.line``). One gap:
a pty refuses PARENB (tcsetattr fails with EINVAL and the bit is dropped). The gateway's
serial transport therefore records the parity it wanted on a pty in bits that mean nothing
without PARENB and that a pty keeps: PARODD for odd, CMSPAR alone for even
(:func:`mark_pty_parity`). :func:`read_line` reads them back. On a real port these bits are
never set this way: PARENB is accepted there.
"""

from __future__ import annotations

import termios
from dataclasses import dataclass

CMSPAR = getattr(termios, "CMSPAR", 0o10000000000)
_SPEEDS = {
    getattr(termios, f"B{b}"): b
    for b in (300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
}
_SIZES = {termios.CS5: 5, termios.CS6: 6, termios.CS7: 7, termios.CS8: 8}
_PARITY_BITS = {"N": 0, "E": 1, "O": 1}


@dataclass(frozen=True, slots=True)
class LineSettings:
    """What both ends of a serial line must agree on."""

    baud: int
    parity: str = "E"  # N | E | O
    bytesize: int = 8
    stopbits: int = 1

    def __post_init__(self) -> None:
        if self.parity not in _PARITY_BITS:
            raise ValueError(f"parity {self.parity!r} is not one of N, E, O")
        if self.baud <= 0 or self.bytesize not in (5, 6, 7, 8) or self.stopbits not in (1, 2):
            raise ValueError(f"line settings {self} are not usable")

    @property
    def bits_per_char(self) -> int:
        """Start bit, data bits, parity bit, stop bits."""
        return 1 + self.bytesize + _PARITY_BITS[self.parity] + self.stopbits

    def __str__(self) -> str:
        """As installers write it: ``9600 8E1``."""
        return f"{self.baud} {self.bytesize}{self.parity}{self.stopbits}"


def mark_pty_parity(fd: int, parity: str) -> None:
    """On a pty opened without parity: record the ``parity`` asked for (see module doc)."""
    attrs = termios.tcgetattr(fd)
    attrs[2] &= ~(termios.PARENB | termios.PARODD | CMSPAR)
    attrs[2] |= {"N": 0, "E": CMSPAR, "O": termios.PARODD}[parity.upper()]
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def read_line(fd: int) -> LineSettings | None:
    """The line settings a terminal's opener asked for (None: a speed this module does not
    know). Parity from PARENB/PARODD, or from the pty marks of :func:`mark_pty_parity`."""
    attrs = termios.tcgetattr(fd)
    cflag = attrs[2]
    baud = _SPEEDS.get(attrs[5])
    if baud is None:
        return None
    if cflag & termios.PARENB or cflag & termios.PARODD:
        parity = "O" if cflag & termios.PARODD else "E"
    else:
        parity = "E" if cflag & CMSPAR else "N"
    return LineSettings(
        baud, parity, _SIZES.get(cflag & termios.CSIZE, 8), 2 if cflag & termios.CSTOPB else 1
    )


def apply_line(fd: int, line: LineSettings) -> None:
    """Set a pty to ``line`` (a simulator presets its port, so an opener that changes
    nothing hears the meters right, like a port already configured for the line)."""
    attrs = termios.tcgetattr(fd)
    speed = next(k for k, v in _SPEEDS.items() if v == line.baud)
    attrs[4] = attrs[5] = speed
    size = next(k for k, v in _SIZES.items() if v == line.bytesize)
    attrs[2] = (attrs[2] & ~termios.CSIZE & ~termios.CSTOPB) | size
    if line.stopbits == 2:
        attrs[2] |= termios.CSTOPB
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    mark_pty_parity(fd, line.parity)
