"""Text that is safe to print, log and put in a Kafka header, whatever an alert held."""

from __future__ import annotations

import re

CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
"""C0 and C1 control characters (ESC starts terminal escape sequences, newlines split
log and CLI lines), line/paragraph separators and bidirectional controls (which
reorder what a terminal shows)."""


def printable(text: str) -> str:
    """``text`` with control characters as ``\\xNN`` and lone surrogates as ``\\udNNN``.

    Examples
    --------
    >>> printable("a\\x1b[2Jb")
    'a\\\\x1b[2Jb'
    """
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return CONTROL_CHARACTERS.sub(_escape, text)


def _escape(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def one_line(text: object, limit: int = 1000) -> str:
    """``str(text)`` on one line (runs of whitespace → one space), printable, at most
    ``limit`` characters.

    A longer text keeps its first two thirds and its end, with an ellipsis between:
    reasons name the place first and the problem last (``VOEvent <ivorn>: ... is over
    the limit ...``), and a long quoted value in the middle must not hide either.
    """
    text = printable(" ".join(str(text).split()))
    if len(text) <= limit:
        return text
    head = limit * 2 // 3
    return text[:head] + "…" + text[len(text) - (limit - head - 1):]
