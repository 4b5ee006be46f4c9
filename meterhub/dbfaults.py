"""What a database error means for the message being handled: its own fault, or an outage.

Every part that writes what arrived from the network asks this one question. A data error
(SQLSTATE classes 22 data exception, 23 integrity constraint, 42 syntax or access rule, 54
program limit exceeded such as a key too long for its index, P0 PL/pgSQL raise, or psycopg
refusing to send a value at all) is the fault of that message: set it aside and go on. An
outage (08 connection, 57P operator intervention, 53 insufficient resources, a dropped
socket) is nobody's message: stop acknowledging, back off, reconnect, resume.
"""

from __future__ import annotations

import psycopg

DATA_CLASSES = ("22", "23", "42", "54", "P0")
OUTAGE_CLASSES = ("08", "57P", "53")


def is_data_error(exc: BaseException) -> bool:
    """True when ``exc`` was caused by the values handed to the database, not by it."""
    if isinstance(exc, UnicodeError):
        return True  # psycopg could not encode a parameter (a lone surrogate)
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate or ""
    if state:
        return state[:2] in DATA_CLASSES
    # refused client-side, before the server saw it (a NUL in text): no SQLSTATE
    return isinstance(exc, psycopg.DataError | psycopg.IntegrityError | psycopg.ProgrammingError)


def is_outage(exc: BaseException) -> bool:
    """True when the database is away or refusing work: back off, reconnect, resume."""
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return True
    state = getattr(exc, "sqlstate", None) or ""
    return state.startswith(OUTAGE_CLASSES)
