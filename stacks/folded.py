"""Folded text <-> Profile.

``a;b;c 42``: one stack per line, root first, split at the last space.
Kernel frames are read from the FlameGraph ``_[k]`` suffix or the Pixie
``[k] `` prefix and always written with ``_[k]``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from stacks.errors import FoldedError
from stacks.model import Frame, Kind, Profile, StackTable

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
        if sid is None or not (count_text.isascii() and count_text.isdigit()):
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue
            stack_text, sep, count_text = line.rpartition(" ")
            if not sep or not stack_text.strip():
                raise FoldedError(lineno, line, "no stack before the count")
            # isdigit alone admits Unicode digits, int() alone admits "1_000" and "+5".
            if not (count_text.isascii() and count_text.isdigit()):
                if count_text[:1] == "-" and count_text[1:].isascii() and count_text[1:].isdigit():
                    raise FoldedError(lineno, line, "count is negative")
                raise FoldedError(lineno, line, f"count {count_text!r} is not an integer")
            sid = get(stack_text)
            if sid is None:
                frames = []
                for part in stack_text.split(";"):
                    f = frame_cache.get(part)
                    if f is None:
                        f = frame_cache[part] = parse_frame(part)
                    frames.append(f)
                sid = intern(tuple(frames))
                if len(stacks) < cache_limit:
                    stacks[stack_text] = sid
        ids.append(sid)
        counts.append(int(count_text))
    profile = Profile.from_arrays(table, np.asarray(ids, dtype=np.int64), np.asarray(counts, dtype=np.int64))
    return profile, len(ids)


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
