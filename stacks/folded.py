"""Folded text <-> Profile.

``a;b;c 42``: one stack per line, root first, split at the last space.
Kernel frames are read from the FlameGraph ``_[k]`` suffix or the Pixie
``[k] `` prefix and always written with ``_[k]``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import numpy as np

from stacks.errors import FoldedError
from stacks.model import COUNT_MAX, Frame, Kind, Profile, StackTable

KERNEL_SUFFIX = "_[k]"
KERNEL_PREFIX = "[k] "


def parse_frame(text: str) -> Frame:
    """One folded frame: strip a kernel marker and set the kind."""
    if text.endswith(KERNEL_SUFFIX):
        return Frame(text[: -len(KERNEL_SUFFIX)], Kind.KERNEL)
    if text.startswith(KERNEL_PREFIX):
        return Frame(text[len(KERNEL_PREFIX) :], Kind.KERNEL)
    return Frame(text, Kind.USER)


def format_frame(frame: Frame) -> str:
    """One frame as folded text (kernel frames get ``_[k]``)."""
    return frame.name + KERNEL_SUFFIX if frame.kind is Kind.KERNEL else frame.name


def parse(text: str | Iterable[str], table: StackTable | None = None) -> Profile:
    """Parse folded text into a profile. Blank lines are skipped.

    Raises :class:`FoldedError` naming the 1-based line number and the line.
    """
    return parse_counted(text, table)[0]


def parse_counted(
    text: str | Iterable[str],
    table: StackTable | None = None,
    *,
    cache: dict[str, int] | None = None,
    cache_limit: int = 1 << 20,
) -> tuple[Profile, int]:
    """Like :func:`parse`, also returning how many stack lines were read.

    ``cache`` maps stack text to its id in ``table``; pass the same dict with
    the same table across calls (as the aggregator does) and a repeated stack
    costs one dict lookup. It grows up to ``cache_limit`` entries.
    """
    # split("\n"), not splitlines(): frame names may hold \x85, \x0c or \u2028.
    lines = text.split("\n") if isinstance(text, str) else text
    table = table if table is not None else StackTable()
    intern = table.intern
    stacks = cache if cache is not None else {}
    get = stacks.get
    frame_cache: dict[str, Frame] = {}
    ids: list[int] = []
    counts: list[int] = []
    for lineno, raw in enumerate(lines, 1):
        # Fast path: a known stack with a plain count needs no stripping or splitting.
        stack_text, sep, count_text = raw.rpartition(" ")
        sid = get(stack_text) if sep else None
        # 19+ digits may be past COUNT_MAX: the slow path checks.
        if sid is None or len(count_text) > 18 or not (count_text.isascii() and count_text.isdigit()):
            split = _split_line(lineno, raw)
            if split is None:
                continue
            stack_text, count_text = split
            sid = get(stack_text)
            if sid is None:
                sid = intern(_frames(stack_text, frame_cache))
                if len(stacks) < cache_limit:
                    stacks[stack_text] = sid
        ids.append(sid)
        counts.append(int(count_text))
    profile = Profile.from_arrays(table, np.asarray(ids, dtype=np.int64), np.asarray(counts, dtype=np.int64))
    return profile, len(ids)


def _split_line(lineno: int, raw: str) -> tuple[str, str] | None:
    """(stack text, count digits) of one line, None for a blank line; FoldedError if malformed."""
    line = raw.rstrip("\r\n")
    if not line.strip():
        return None
    stack_text, sep, count_text = line.rpartition(" ")
    if not sep or not stack_text.strip():
        raise FoldedError(lineno, line, "no stack before the count")
    # isdigit alone admits Unicode digits, int() alone admits "1_000" and "+5".
    if not (count_text.isascii() and count_text.isdigit()):
        if count_text[:1] == "-" and count_text[1:].isascii() and count_text[1:].isdigit():
            raise FoldedError(lineno, line, "count is negative")
        raise FoldedError(lineno, line, f"count {count_text!r} is not an integer")
    if len(count_text) > 18 and int(count_text) > COUNT_MAX:
        raise FoldedError(lineno, line, f"count is too large (at most {COUNT_MAX})")
    return stack_text, count_text


def _frames(stack_text: str, frame_cache: dict[str, Frame]) -> tuple[Frame, ...]:
    """The frames of one stack text; ``frame_cache`` holds frames parsed earlier in this call."""
    frames = []
    for part in stack_text.split(";"):
        f = frame_cache.get(part)
        if f is None:
            f = frame_cache[part] = parse_frame(part)
        frames.append(f)
    return tuple(frames)


# -- the compiled fast path ------------------------------------------------------------------------
# ``stacks._folded_c`` (Cython, built by ``pip install -e .`` where a C compiler exists) reads
# bytes. Without it, or when the caller asks for no compiled index (to measure or rule out the
# compiled code), parse_bytes decodes and uses parse_counted: same results, slower.
try:
    from stacks import _folded_c
except ImportError:  # no compiler at install time
    _folded_c = None  # type: ignore[assignment]

BUILT = _folded_c is not None
"""True when the compiled reader was built: :func:`new_index` can then give a compiled index."""


class StackIndex(Protocol):
    """``stacks._folded_c.StackIndex``: stack text (UTF-8) -> id on ``table``, bounded by ``limit``."""

    @property
    def table(self) -> StackTable: ...
    @property
    def limit(self) -> int: ...
    def __len__(self) -> int: ...
    def get(self, stack: bytes) -> int: ...
    def put(self, stack: bytes, sid: int) -> bool: ...
    def clear(self) -> None: ...
    def scan(self, body: bytes) -> tuple[int, bytearray, bytearray, list[tuple[int, int, int]]]: ...


def new_index(table: StackTable, limit: int = 1 << 20, *, compiled: bool = True) -> StackIndex | None:
    """A compiled stack-text index tied to ``table`` (at most ``limit`` stacks).

    None when the reader is not built, or ``compiled`` is False (the caller rules it out).
    """
    return _folded_c.StackIndex(table, limit) if compiled and BUILT else None


def parse_bytes(
    body: bytes,
    table: StackTable | None = None,
    *,
    index: StackIndex | None = None,
    cache: dict[str, int] | None = None,
    cache_limit: int = 1 << 20,
) -> tuple[Profile, int]:
    """:func:`parse_counted` of UTF-8 folded bytes: the same profile, count and errors.

    With ``index`` (from :func:`new_index` on the same ``table``) the compiled
    scan resolves known stacks in C and this code handles the other lines as
    :func:`parse_counted` would. Without it, ``cache``/``cache_limit`` are
    passed to :func:`parse_counted`. Bytes that are not UTF-8 raise the
    :class:`UnicodeDecodeError` of ``body.decode()`` (before any FoldedError).
    """
    if index is None:
        return parse_counted(body.decode("utf-8"), table, cache=cache, cache_limit=cache_limit)
    if table is None:
        table = index.table
    elif index.table is not table:
        raise ValueError("the index belongs to another StackTable: make one with new_index(table)")
    if type(body) is not bytes:  # bytearray / memoryview: the scan reads a bytes object
        body = bytes(body)
    hits, ids_buf, counts_buf, rest = index.scan(body)
    ids = np.frombuffer(ids_buf, dtype=np.int64, count=hits)
    counts = np.frombuffer(counts_buf, dtype=np.int64, count=hits)
    if rest:
        more_ids, more_counts = _rest_lines(body, rest, table, index)
        # Counts past COUNT_MAX never get here: the scan leaves them to _split_line, which refuses them.
        ids = np.concatenate([ids, np.asarray(more_ids, dtype=np.int64)])
        counts = np.concatenate([counts, np.asarray(more_counts, dtype=np.int64)])
    return Profile.from_arrays(table, ids, counts), len(ids)


def _rest_lines(
    body: bytes, rest: list[tuple[int, int, int]], table: StackTable, index: StackIndex
) -> tuple[list[int], list[int]]:
    """Ids and counts of the lines the scan left (new stacks, odd shapes) by the pure rules.

    New stacks are interned only once every line is read, in line order, so
    the table ends as :func:`parse_counted` of the decoded body leaves it: all
    of them on success or on a FoldedError (the stacks before the bad line),
    none if the body is not UTF-8 (parse_counted never sees such a body).
    """
    ids: list[int] = []
    counts: list[int] = []
    new: dict[str, int] = {}  # stack text first seen in this body -> its position in ``new``
    try:
        for lineno, start, end in rest:
            split = _split_line(lineno, body[start:end].decode("utf-8"))
            if split is None:
                continue
            stack_text, count_text = split
            sid = index.get(stack_text.encode())  # the line's own bytes: valid UTF-8 round-trips
            if sid < 0:
                sid = -1 - new.setdefault(stack_text, len(new))
            ids.append(sid)
            counts.append(int(count_text))
    except (UnicodeDecodeError, FoldedError):
        # Every line before this one is valid UTF-8; a bad byte anywhere wins over a bad line, as
        # when the whole body is decoded first: this raises the exact error of body.decode().
        body.decode("utf-8")
        _intern_new(new, table, index)
        raise
    sids = _intern_new(new, table, index)
    return [sid if sid >= 0 else sids[-1 - sid] for sid in ids], counts


def _intern_new(new: dict[str, int], table: StackTable, index: StackIndex) -> list[int]:
    """Intern stack texts in first-seen order and remember them in ``index`` (up to its limit)."""
    intern = table.intern
    put = index.put
    frame_cache: dict[str, Frame] = {}
    sids = []
    for stack_text in new:
        sid = intern(_frames(stack_text, frame_cache))
        put(stack_text.encode(), sid)
        sids.append(sid)
    return sids


def format_lines(profile: Profile) -> list[str]:
    """Folded lines, sorted, without trailing newlines."""
    # An empty stack has no folded form (it would read back as a malformed line).
    out = [";".join(format_frame(f) for f in stack) + f" {count}" for stack, count in profile.items() if stack]
    out.sort()
    return out


def dumps(profile: Profile) -> str:
    """Folded text for a profile, one line per stack, sorted."""
    lines = format_lines(profile)
    return "\n".join(lines) + ("\n" if lines else "")
