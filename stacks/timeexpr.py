"""Time expressions for query parameters: ``1700000000``, ``now``, ``now-15m``, ``now-1h30m``.

Pure: the caller passes ``now``. Integers above 1e12 are taken as milliseconds
(what JavaScript's Date.now() gives); otherwise as unix seconds.
"""

from __future__ import annotations

import re

from stacks.errors import InputError

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(?:(\d+)([smhdw]))")
_REL = re.compile(r"now\s*(?:([+-])\s*((?:\d+[smhdw])+))?")
_HINT = "use unix seconds, milliseconds, 'now' or 'now-15m' (units s m h d w)"


def parse_duration(text: str) -> int:
    """``1h30m`` -> 5400 seconds. A bare integer means seconds."""
    t = text.strip()
    if t.isdigit():
        return int(t)
    if not t or not re.fullmatch(r"(?:\d+[smhdw])+", t):
        raise InputError(f"bad duration {text!r}: use e.g. 30s, 15m, 1h30m, 2d")
    return sum(int(n) * UNITS[u] for n, u in _DURATION.findall(t))


def parse_time(text: str, now: float) -> int:
    """A query time as unix seconds; raises InputError naming the text and the fix."""
    if text is None:
        raise InputError(f"missing time: {_HINT}")
    t = str(text).strip()
    if re.fullmatch(r"-?\d+(\.\d+)?", t):
        v = float(t)
        if v < 0:
            raise InputError(f"bad time {text!r}: negative; {_HINT}")
        if v > 1e12:
            v /= 1000.0
        return int(v)
    m = _REL.fullmatch(t)
    if not m:
        raise InputError(f"bad time {text!r}: {_HINT}")
    delta = 0
    if m.group(1):
        delta = sum(int(n) * UNITS[u] for n, u in _DURATION.findall(m.group(2)))
        if m.group(1) == "-":
            delta = -delta
    return int(now) + delta
