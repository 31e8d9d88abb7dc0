"""CPython 3.11+ location tables (``co_linetable``): the line of an instruction offset (pure).

The in-kernel unwinder (:mod:`profiler.samplers.pyunwind`) reports, per frame, the code
object and the instruction it was at; the agent reads the code's ``co_linetable`` and
``co_firstlineno`` from the process once and decodes them here. The format is CPython's
own (PEP 657; ``Objects/locations.md`` in CPython 3.11-3.13), a sequence of entries:

- a first byte ``1 cccc lll``: bit 7 marks an entry's start, ``cccc`` is the entry's code,
  ``lll + 1`` the number of code units (2-byte instructions or caches) it covers;
- code 0-9 (short form, one column byte follows): the same line as before;
- code 10-12 (one-line form, start and end column bytes follow): line + (code - 10);
- code 13 (no columns): line + a signed varint;
- code 14 (long form): line + a signed varint, then end line delta, start and end column (varints);
- code 15: no location (the line is None; the running line is kept).

Varints are 6-bit chunks, least significant first, bit 6 set on all but the last; a
signed varint keeps its sign in bit 0. Lines start at ``co_firstlineno``. Only the start
line is decoded: columns are read past, not kept.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

NO_LOCATION = 15
LONG_FORM = 14
NO_COLUMNS = 13
ONE_LINE_FIRST = 10
MAX_TABLE = 1 << 20  # bytes of a co_linetable read from a process (a real one is a few KB at most)


class LineTableError(ValueError):
    """A location table that is not one (a torn read of another process's memory, say)."""


def _varint(table: bytes, i: int) -> tuple[int, int]:
    """(value, next index) of the unsigned varint at ``table[i]``."""
    value, shift = 0, 0
    while True:
        if i >= len(table):
            raise LineTableError(f"varint runs past the table's end ({len(table)} bytes)")
        b = table[i]
        i += 1
        value |= (b & 63) << shift
        shift += 6
        if not b & 64:
            return value, i
        if shift > 60:
            raise LineTableError("varint longer than 64 bits")


def _svarint(table: bytes, i: int) -> tuple[int, int]:
    u, i = _varint(table, i)
    return (-(u >> 1) if u & 1 else u >> 1), i


@dataclass(frozen=True)
class LineRanges:
    """A decoded table: code units ``[ends[k-1], ends[k])`` are at ``lines[k]`` (None: no location)."""

    firstlineno: int
    ends: tuple[int, ...]
    lines: tuple[int | None, ...]

    def line(self, offset: int) -> int | None:
        """The line of the instruction at ``offset`` (in code units, as ``f_lasti // 2``).

        A negative offset is a frame that has not run its first instruction yet (3.11/3.12 start
        ``prev_instr`` one before the code): its line is the ``def``'s, ``co_firstlineno``. An offset
        beyond the table is None (not this code's instruction).
        """
        if offset < 0:
            return self.firstlineno
        k = bisect_right(self.ends, offset)
        return self.lines[k] if k < len(self.lines) else None

    @property
    def units(self) -> int:
        """Code units the table covers (the code's length in instructions and caches)."""
        return self.ends[-1] if self.ends else 0


def decode(table: bytes, firstlineno: int) -> LineRanges:
    """The ranges of a ``co_linetable`` (:class:`LineTableError` when it is malformed)."""
    ends: list[int] = []
    lines: list[int | None] = []
    line, unit, i = firstlineno, 0, 0
    while i < len(table):
        first = table[i]
        if not first & 0x80:
            raise LineTableError(f"byte {i} of the table does not start an entry")
        code, length = (first >> 3) & 15, (first & 7) + 1
        i += 1
        if code == NO_LOCATION:
            here: int | None = None
        elif code in (LONG_FORM, NO_COLUMNS):
            delta, i = _svarint(table, i)
            line += delta
            here = line
            if code == LONG_FORM:
                for _ in range(3):  # end line delta, start column, end column
                    _, i = _varint(table, i)
        elif code >= ONE_LINE_FIRST:
            line += code - ONE_LINE_FIRST
            here = line
            i += 2  # start and end column
        else:
            here = line
            i += 1  # the column byte
        if i > len(table):
            raise LineTableError(f"entry at byte {i} runs past the table's end ({len(table)} bytes)")
        unit += length
        if lines and lines[-1] == here:  # one range per run of a line: smaller, same answers
            ends[-1] = unit
        else:
            ends.append(unit)
            lines.append(here)
    return LineRanges(firstlineno, tuple(ends), tuple(lines))
