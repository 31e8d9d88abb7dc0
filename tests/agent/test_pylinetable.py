"""The CPython 3.11+ location-table decoder: exact on hand-built tables, and equal to CPython's own
``co_positions()`` on real code objects of this interpreter and of pyenv's 3.12 / 3.13."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from profiler.samplers.pylinetable import LineRanges, LineTableError, decode

PYENV = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"


def entry(code: int, units: int, *rest: int) -> bytes:
    return bytes([0x80 | code << 3 | (units - 1), *rest])


def test_each_entry_form_exactly() -> None:
    table = (entry(0, 3, 7)  # short form: same line, one column byte
             + entry(11, 1, 4, 9)  # one-line form: line + 1, start and end column
             + entry(13, 2, 5)  # no columns: svarint 5 = -2
             + entry(14, 1, 72, 3, 0, 4, 10)  # long form: svarint 200 = +100 (chunks 8|64, 3), end, columns
             + entry(15, 2)  # no location
             + entry(10, 8, 0, 1))  # one-line form, line + 0, after a no-location entry: the running line
    r = decode(table, 10)
    assert [r.line(i) for i in range(-1, 18)] == [10, 10, 10, 10, 11, 9, 9, 109, None, None] + [109] * 8 + [None]
    assert r.units == 17
    assert r == LineRanges(10, (3, 4, 6, 7, 9, 17), (10, 11, 9, 109, None, 109))


def test_empty_table_has_no_lines() -> None:
    r = decode(b"", 5)
    assert r.units == 0 and r.line(0) is None and r.line(-1) == 5


@pytest.mark.parametrize("table", [
    bytes([0x05]),  # not an entry start
    entry(13, 1, 0x40),  # varint continues past the end
    entry(11, 1, 4),  # one-line form missing its end column
    entry(14, 1, *([0x7F] * 12)),  # a varint longer than 64 bits
])
def test_malformed_tables_are_refused(table: bytes) -> None:
    with pytest.raises(LineTableError):
        decode(table, 1)


def _codes(root: types.CodeType) -> list[types.CodeType]:
    out, todo = [], [root]
    while todo:
        c = todo.pop()
        out.append(c)
        todo += [k for k in c.co_consts if isinstance(k, types.CodeType)]
    return out


def _check(code: types.CodeType) -> None:
    r = decode(code.co_linetable, code.co_firstlineno)
    assert r.units == len(code.co_code) // 2
    want = [p[0] for p in code.co_positions()]
    assert [r.line(i) for i in range(len(want))] == want, code


STDLIB = [c for m in ("json.decoder", "asyncio.base_events", "email.message", "threading", "dataclasses")
          for c in _codes(compile(Path(__import__(m, fromlist=["_"]).__file__).read_text(), m, "exec"))]


@given(st.sampled_from(STDLIB))
def test_equals_co_positions_on_stdlib_code(code: types.CodeType) -> None:
    _check(code)


statement = st.sampled_from([
    "x = {v}", "for i in range({v}):\n    x += i", "while x > {v}:\n    x -= 1", "if x:\n    y = (x +\n     {v})",
    "try:\n    z = 1 / x\nexcept ZeroDivisionError:\n    z = 0", "with open('f') as f:\n    pass",
    "def inner(a={v}):\n    return [a for _ in 'ab']", "y = f(\n    x,\n\n    {v})", "y = lambda q: q * {v}",
])


@settings(max_examples=150)
@given(st.lists(st.tuples(statement, st.integers(0, 2000), st.integers(0, 80)), min_size=1, max_size=12),
       st.integers(1, 5000))
def test_equals_co_positions_on_generated_code(parts: list[tuple[str, int, int]], first: int) -> None:
    """Statements at arbitrary line gaps (long and negative deltas, loops jumping back) and columns."""
    lines = ["\n" * (first - 1) + "def gen(x, f, open):"]
    for text, gap, indent in parts:
        body = text.format(v=gap).replace("\n", "\n    ")
        lines.append("\n" * (gap % 300) + "    " + body)
        if indent:
            lines.append(f"    x = {'(' * 1}x{' ' * indent}+ 1)")
    lines.append("    return x")
    for code in _codes(compile("\n".join(lines), "gen.py", "exec")):
        _check(code)


DUMP = """
import json, sys, types, threading, json.decoder, asyncio.base_events
out, todo, seen = [], [], set()
for m in (json.decoder, asyncio.base_events, threading):
    todo += [f.__code__ for f in vars(m).values() if isinstance(f, types.FunctionType)]
    todo += [f.__code__ for c in vars(m).values() if isinstance(c, type)
             for f in vars(c).values() if isinstance(f, types.FunctionType)]
while todo:
    c = todo.pop()
    if id(c) in seen:
        continue
    seen.add(id(c))
    todo += [k for k in c.co_consts if isinstance(k, types.CodeType)]
    out.append([c.co_linetable.hex(), c.co_firstlineno, len(c.co_code) // 2, [p[0] for p in c.co_positions()]])
print(json.dumps(out))
"""


@pytest.mark.parametrize("minor", [12, 13])
def test_equals_co_positions_of_other_versions(minor: int) -> None:
    """The format is the same in 3.12 and 3.13: their own tables decode to their own co_positions()."""
    found = sorted(PYENV.glob(f"3.{minor}.*/bin/python3.{minor}"))
    if not found:
        pytest.skip(reason=f"no CPython 3.{minor} under pyenv")
    dump = json.loads(subprocess.run([str(found[0]), "-c", DUMP], check=True, capture_output=True).stdout)
    assert len(dump) > 200
    for table, first, units, want in dump:
        r = decode(bytes.fromhex(table), first)
        assert r.units == units
        assert [r.line(i) for i in range(units)] == want


def test_decode_cost_per_code_and_per_offset() -> None:
    """The figure docs/agent.md quotes: decoding a stdlib code object's table, and one offset's lookup."""
    import time

    codes = STDLIB * 3
    t = time.perf_counter()
    ranges = [decode(c.co_linetable, c.co_firstlineno) for c in codes]
    per_code = (time.perf_counter() - t) / len(codes)
    t = time.perf_counter()
    n = 0
    for r in ranges:
        for i in range(0, r.units, 3):
            r.line(i)
            n += 1
    per_offset = (time.perf_counter() - t) / n
    print(f"decode: {per_code * 1e6:.1f} us per code object ({len(codes)}), {per_offset * 1e9:.0f} ns per offset")
    assert per_code < 0.01 and per_offset < 1e-4  # orders of magnitude above the measured figures: a gross bound
    assert sys.version_info >= (3, 11)
