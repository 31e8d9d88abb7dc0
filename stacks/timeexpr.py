"""Time expressions for query parameters: ``1700000000``, ``now``, ``now-15m``, ``now-1h30m``.

Pure: the caller passes ``now``. Integers above 1e12 are taken as milliseconds
(what JavaScript's Date.now() gives); otherwise as unix seconds.
"""

from __future__ import annotations

import re

from stacks.errors import InputError

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# ASCII digits only ('²'.isdigit() is True but int('²') fails) and bounded lengths, so a
# hostile value is an InputError rather than an OverflowError or a giant int.
_DURATION = re.compile(r"(?:([0-9]{1,12})([smhdw]))")
_REL = re.compile(r"now\s*(?:([+-])\s*((?:[0-9]{1,12}[smhdw]){1,8}))?")
_HINT = "use unix seconds, milliseconds, 'now' or 'now-15m' (units s m h d w)"


def parse_duration(text: str) -> int:
    """``1h30m`` -> 5400 seconds. A bare integer means seconds."""
    t = text.strip()
    if re.fullmatch(r"[0-9]{1,12}", t):
        return int(t)
    if not t or len(t) > 64 or not re.fullmatch(r"(?:[0-9]{1,12}[smhdw])+", t):
        raise InputError(f"bad duration {text!r}: use e.g. 30s, 15m, 1h30m, 2d")
    return sum(int(n) * UNITS[u] for n, u in _DURATION.findall(t))


def parse_time(text: str, now: float) -> int:
    """A query time as unix seconds; raises InputError naming the text and the fix."""
    if text is None:
        raise InputError(f"missing time: {_HINT}")
    t = str(text).strip()
    if re.fullmatch(r"-?[0-9]+(\.[0-9]+)?", t):
        if len(t.split(".")[0].lstrip("-")) > 16:
            raise InputError(f"time {text[:40]!r}... is out of range: {_HINT}")
        v = float(t)
        if v < 0:
            raise InputError(f"bad time {text!r}: negative; {_HINT}")
        if v > 1e12:
            v /= 1000.0
        return int(v)
    m = _REL.fullmatch(t) if len(t) <= 128 else None
    if not m:
        shown = text if len(text) <= 80 else text[:80] + "..."
        raise InputError(f"bad time {shown!r}: {_HINT}")
    delta = 0
    if m.group(1):
        delta = sum(int(n) * UNITS[u] for n, u in _DURATION.findall(m.group(2)))
        if m.group(1) == "-":
            delta = -delta
    return int(now) + delta
