"""PostgreSQL COPY text format: the one escaper every part that streams COPY text uses."""

from __future__ import annotations

# backslash, tab, newline and carriage return are the characters COPY text gives meaning to
ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def escape(text: str) -> str:
    """One value for COPY text format (ids are plain almost always, so look before copying)."""
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        return text.translate(ESCAPES)
    return text
