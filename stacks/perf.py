"""`perf script` text -> samples, folded stacks and profiles. Pure: no I/O.

Three entry points share one parser:

- :func:`iter_samples` streams :class:`PerfSample` records (header fields plus
  frames with kinds), for the agent, in constant memory.
- :func:`collapse` returns folded stack strings and counts that equal what
  FlameGraph's ``stackcollapse-perf.pl`` prints, option for option.
- :func:`parse_perf` builds a :class:`~stacks.model.Profile`.

Speed comes from working on whole sample blocks (the text between blank
lines) instead of lines: a block is its header line plus the text of its
frame lines, and real profiles repeat the same frame text very often, so the
cleaned-up stack is memoised by that text. Frame lines are memoised too. Any
block that is not "one header followed by indented frame lines" (comments,
several headers, garbage) goes through a slow line-by-line state machine that
mirrors the reference script's rules exactly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from stacks.model import Frame, Kind, Profile, StackTable

__all__ = [
    "CollapseStats",
    "Collapser",
    "PerfSample",
    "collapse",
    "is_kernel_module",
    "iter_samples",
    "parse_perf",
]

# Byte semantics: the reference reads bytes, so \s \w \d are ASCII only.
_A = re.ASCII
# Sample header: a command (at least two characters, may hold spaces), then the
# first whitespace-delimited "PID" or "PID/TID" number.
_HEADER = re.compile(r"(\S.+?)\s+(\d+)/*(\d+)*\s", _A)
# Optional period and the event name closing the header ("...: 10101 cycles:").
_EVENT = re.compile(r":\s*(\d+)*\s+(\S+):\s*$", _A)
_TIME = re.compile(r"\s(\d+\.\d+):", _A)
# Frame line: address, symbol (maybe with +0xOFF), then "(module)" up to the last ')'.
_FRAME = re.compile(r"\s*(\w+)\s*(.+) \((.*)\)", _A)
_LOWER_HEX = "0123456789abcdef"
_GO_METHOD = re.compile(r"\.\(.*\)\.", _A)
_ARGS = re.compile(r"\((?!anonymous namespace\)).*", _A)
_JIT_MAP = re.compile(r"/tmp/perf-\d+\.map", _A)
_QUOTES = str.maketrans("", "", "\"'")
_WS_CHARS = " \t\n\r\f\v"
_WS = frozenset(_WS_CHARS)
# Kernel half of the address space on 64-bit Linux (x86-64 and arm64).
_KERNEL_ADDR_MIN = 0xFFFF800000000000
_USER_BRACKET_MODULES = frozenset({"[vdso]", "[vsyscall]", "[vectors]", "[uprobes]", "[heap]", "[stack]"})

_COMPLEX = False  # cache marker: this block needs the line-by-line path
_MISS = object()


class PerfSample(NamedTuple):
    """One `perf script` sample. ``frames`` are root first."""

    comm: str
    pid: int | None
    tid: int | None
    time: float | None
    period: int | None
    event: str | None
    frames: tuple[Frame, ...]


@dataclass
class CollapseStats:
    """What the parser met besides samples (the reference only warns about these)."""

    samples: int = 0
    filtered: int = 0
    unrecognized: int = 0
    first_unrecognized: tuple[int, str] | None = None  # (1-based line number, line)


def is_kernel_module(module: str, address: str = "") -> bool:
    """Whether a frame's module marks kernel code (for :class:`Kind`).

    ``[kernel.kallsyms]``, ``[kernel.*]``, kernel modules such as
    ``[nf_conntrack]`` and ``.../vmlinux`` are kernel; ``[vdso]`` and friends
    are user space; ``[unknown]`` is kernel when its address lies in the
    kernel half of the address space.
    """
    if module.startswith("[kernel.") or module.endswith("vmlinux"):
        return True
    if module == "[unknown]":
        try:
            return int(address, 16) >= _KERNEL_ADDR_MIN
        except ValueError:
            return False
    return module.startswith("[") and module not in _USER_BRACKET_MODULES and "unknown" not in module


def _clean(line: str, java: bool, addrs: bool) -> list[tuple[str, str, str]] | None:
    """Tidy one frame line like the reference: [(func, module, address)] in line order.

    None means the line is not a frame line. An empty list means a frame
    line that contributes nothing (a "(process)" pseudo-symbol).
    """
    m = _FRAME.match(line)
    if m is None:
        return None
    return _clean_match(m, java, addrs)


def _clean_match(m: re.Match, java: bool, addrs: bool) -> list[tuple[str, str, str]]:
    pc, raw, mod = m.group(1, 2, 3)
    i = raw.rfind("+0x")
    if i >= 0 and raw[i + 3 :] and not raw[i + 3 :].strip(_LOWER_HEX):
        raw = raw[:i]  # perf >= 4.8 prints symbol offsets; drop them
    if raw.startswith("("):
        return []
    parts = raw.split("->") if "->" in raw else [raw]
    while parts and parts[-1] == "":  # split drops trailing empty fields
        parts.pop()
    out = []
    for func in parts:
        if func == "[unknown]":
            name = mod.rpartition("/")[2] if mod != "[unknown]" else "unknown"
            if name.startswith("[") and name.endswith("]"):  # a mapping named by the kernel: [vdso], not [[vdso]]
                name = name[1:-1]
            func = f"[{name} <{pc}>]" if addrs else f"[{name}]"
        if ";" in func:
            func = func.replace(";", ":")
        if "(" in func and not _GO_METHOD.search(func):
            func = _ARGS.sub("", func, count=1)
        if '"' in func or "'" in func:
            func = func.translate(_QUOTES)
        if java and func.startswith("L") and "/" in func:
            func = func[1:]
        out.append((func, mod, pc))
    return out


def _annotate(cleaned: list[tuple[str, str, str]], kernel: bool, jit: bool) -> list[str]:
    """Add the reference's _[i] / _[k] / _[j] markers."""
    out = []
    for i, (func, mod, _pc) in enumerate(cleaned):
        if i > 0:
            if "_[i]" not in func:
                func += "_[i]"
        elif kernel and (mod.startswith("[") or mod.endswith("vmlinux")) and "unknown" not in mod:
            func += "_[k]"
        elif jit and _JIT_MAP.search(mod) and "_[j]" not in func:
            func += "_[j]"
        out.append(func)
    return out


class _HeaderInfo(NamedTuple):
    comm: str
    first: str  # "PID" of "PID/TID", or the lone number (perf's default prints the TID)
    second: str | None  # "TID" of "PID/TID"
    period_text: str | None
    event: str | None

    @property
    def pid_text(self) -> str:
        # The reference treats a lone number (or a TID of 0) as the TID and the PID as unknown.
        return self.first if self.second and self.second != "0" else "?"

    @property
    def tid_text(self) -> str:
        return self.second if self.second and self.second != "0" else self.first


def _header(line: str) -> _HeaderInfo | None:
    m = _HEADER.match(line)
    if m is None:
        return None
    e = _EVENT.search(line)
    if e is None:
        return _HeaderInfo(*m.group(1, 2, 3), None, None)
    return _HeaderInfo(*m.group(1, 2, 3), *e.group(1, 2))


def _period(text: str | None) -> int:
    # Perl truthiness: missing, "" and "0" count as 1.
    return int(text) if text and text != "0" else 1


class Collapser:
    """Streaming ``stackcollapse-perf.pl``: :meth:`feed` text chunks, then :meth:`close`.

    Options mean what the reference's options of the same name mean.
    ``weight_by_period`` adds each sample's printed period (the reference at
    HEAD); False counts every sample as 1. The java symbol tidy applies when
    the process column is exactly ``java`` (the recorded conformance files;
    newer versions of the script also tidy under --pid/--tid).
    """

    def __init__(
        self,
        *,
        pid: bool = False,
        tid: bool = False,
        kernel: bool = False,
        jit: bool = False,
        all: bool = False,
        addrs: bool = False,
        weight_by_period: bool = True,
    ) -> None:
        self.pid, self.tid, self.addrs = pid, tid, addrs
        self.kernel, self.jit = kernel or all, jit or all
        self.weight = weight_by_period
        self.stats = CollapseStats()
        self._counts: dict[tuple[str, str], int] = {}
        self._event_filter: str | None = None
        self._tail = ""
        self._lineno = 0  # lines consumed before self._tail
        # Memo tables: block body text -> joined frames (or _COMPLEX), per java flag;
        # frame line -> joined annotated group (None: contributes nothing; _COMPLEX: not a frame line).
        self._bodies: tuple[dict, dict] = ({}, {})
        self._lines: tuple[dict, dict] = ({}, {})
        self._rests: tuple[dict, dict] = ({}, {})
        self._heads: dict[str, str | None] = {}
        self._tails: dict[str, tuple[str, int] | None] = {}

    @property
    def event_filter(self) -> str | None:
        """The event kept: the first one seen (the reference's default)."""
        return self._event_filter

    # -- per-block helpers -------------------------------------------------------------
    def _pname(self, h: _HeaderInfo) -> str:
        if self.tid:
            name = f"{h.comm}-{h.pid_text}/{h.tid_text}"
        elif self.pid:
            name = f"{h.comm}-{h.pid_text}"
        else:
            name = h.comm
        return name.replace(" ", "_")

    def _group(self, line: str, java: bool):
        """Joined annotated frames of one frame line (None: adds nothing; _COMPLEX: not a frame)."""
        cache = self._lines[java]
        g = cache.get(line, _MISS)
        if g is not _MISS:
            return g
        # Without --addrs the result does not depend on the address, and many lines
        # differ only there ("7f7e... [unknown] ([unknown])"): memoise by the text after it.
        rest = None
        if not self.addrs:
            s = line.lstrip(_WS_CHARS)
            j = s.find(" ")
            pc = s[:j]
            if j > 0 and pc.isascii() and pc.isalnum():
                rest = s[j + 1 :]
                g = self._rests[java].get(rest, _MISS)
                if g is not _MISS:
                    cache[line] = g
                    return g
        m = _FRAME.match(line)
        if m is None:
            g = _COMPLEX
        else:
            cleaned = _clean_match(m, java, self.addrs)
            g = ";".join(_annotate(cleaned, self.kernel, self.jit)) if cleaned else None
            # Valid for any address only if the address is exactly the word before `rest`.
            if rest is not None and m.start(2) == len(line) - len(rest):
                self._rests[java][rest] = g
        cache[line] = g
        return g

    def _body(self, body: str, java: bool):
        """Joined root-first frames of indented frame lines, or _COMPLEX."""
        cache = self._lines[java]
        lines = body.split("\n")
        groups = list(map(cache.get, lines))
        if None in groups:  # new lines (or lines that add nothing)
            for i, g in enumerate(groups):
                if g is None:
                    line = lines[i]
                    g = cache.get(line, _MISS)
                    if g is _MISS:
                        g = self._group(line, java) if line and line[0] in _WS else _COMPLEX
                    groups[i] = g
        if _COMPLEX in groups:
            return _COMPLEX
        if None in groups:
            groups = [g for g in groups if g is not None]
        groups.reverse()
        return ";".join(groups)

    def _accept_event(self, event: str | None) -> bool:
        if event is None:
            return True
        if self._event_filter is None:
            self._event_filter = event
        elif event != self._event_filter:
            return False
        return True

    def _slow(self, block: str, lineno: int, terminated: bool) -> None:
        """The reference's line-by-line rules for one block starting at ``lineno``."""
        pname = None
        period = 1
        stack: list[str] = []
        stats = self.stats
        for i, line in enumerate(block.split("\n")):
            if line.startswith("#") or not line:
                continue
            h = _header(line)
            if h is not None:
                if not self._accept_event(h.event):
                    stats.filtered += 1
                    continue
                pname = self._pname(h)
                period = _period(h.period_text) if self.weight else 1
                continue
            java = pname == "java"
            g = self._group(line, java)
            if g is _COMPLEX:
                stats.unrecognized += 1
                if stats.first_unrecognized is None:
                    stats.first_unrecognized = (lineno + i, line)
                continue
            if pname is not None and g is not None:
                stack.insert(0, g)
        if terminated and pname is not None:
            self._add(pname, ";".join(stack), period)

    def _add(self, pname: str, frames: str, weight: int) -> None:
        key = (pname, frames)
        self._counts[key] = self._counts.get(key, 0) + weight
        self.stats.samples += 1

    # -- streaming ---------------------------------------------------------------------
    def feed(self, text: str) -> None:
        """Add a chunk of perf script text (any split point; lines end with \\n)."""
        buf = self._tail + text if self._tail else text
        blocks = buf.split("\n\n")
        tail = blocks.pop()
        self._run(blocks)
        self._lineno += buf.count("\n") - tail.count("\n")
        self._tail = tail

    def _run(self, blocks: list[str]) -> None:
        """The fast loop: a few dict lookups per sample.

        Three memo tables make it cheap. The process column is parsed from the
        header's text before its first '[' (or '.'): the header pattern cannot
        match across those characters, so that prefix decides it. The period
        and event are parsed from the text from the first ':' on, where any
        match of the event pattern must start. The frames come from the body text.
        """
        heads = self._heads
        tails = self._tails
        bodies_plain, bodies_java = self._bodies
        counts = self._counts
        get = counts.get
        weight = self.weight
        stats = self.stats
        body_of = self._body
        n = 0
        for bi, block in enumerate(blocks):
            head, _, body = block.partition("\n")
            if not head:  # extra blank lines between samples
                block = block.lstrip("\n")
                if not block:
                    continue
                head, _, body = block.partition("\n")
            k = head.find("[")
            if k < 0:
                k = head.find(".")
            pname = heads.get(head[:k]) if k > 0 else None
            if pname is None:
                pname = self._head(head, k)
                if pname is None:
                    self._slow(block, self._block_lineno(blocks, bi), True)
                    continue
            if pname == "java":
                frames = bodies_java.get(body)
                if frames is None:
                    frames = bodies_java[body] = body_of(body, True) if body else ""
            else:
                frames = bodies_plain.get(body)
                if frames is None:
                    frames = bodies_plain[body] = body_of(body, False) if body else ""
            if frames is _COMPLEX:
                self._slow(block, self._block_lineno(blocks, bi), True)
                continue
            j = head.find(":")
            ev = tails.get(head[j:], _MISS) if j >= 0 else None
            if ev is _MISS:
                ev = self._tail_info(head[j:])
            period = 1
            if ev is not None:
                if ev[0] != self._event_filter and not self._accept_event(ev[0]):
                    stats.filtered += 1
                    continue
                if weight:
                    period = ev[1]
            key = (pname, frames)
            counts[key] = get(key, 0) + period
            n += 1
        stats.samples += n

    def _head(self, head: str, k: int) -> str | None:
        """Process column for a header line, or None if the line is not a sample header."""
        if head[0] in _WS or head[0] == "#":
            return None
        if k > 0:
            prefix = head[:k]
            if prefix not in self._heads:
                h = _header(prefix)
                self._heads[prefix] = self._pname(h) if h is not None else None
            pname = self._heads[prefix]
            if pname is not None:
                return pname
        h = _header(head)
        return self._pname(h) if h is not None else None

    def _tail_info(self, tail: str) -> tuple[str, int] | None:
        """(event, period) from the header text after its first ':'."""
        e = _EVENT.search(tail)
        info = None if e is None else (e.group(2), _period(e.group(1)))
        self._tails[tail] = info
        return info

    def _block_lineno(self, blocks: list[str], index: int) -> int:
        """1-based line number of the first line of ``blocks[index]`` (error paths only)."""
        line = self._lineno + 1
        for b in blocks[:index]:
            line += b.count("\n") + 2
        b = blocks[index]
        return line + (len(b) - len(b.lstrip("\n")))

    def close(self) -> dict[str, int]:
        """Finish: an unterminated last sample is dropped (as the reference does)."""
        if self._tail:
            tail = self._tail.lstrip("\n")
            self._slow(tail, self._lineno + 1 + len(self._tail) - len(tail), False)
            self._lineno += self._tail.count("\n") + (not self._tail.endswith("\n"))
            self._tail = ""
        return self.result()

    def result(self) -> dict[str, int]:
        """Folded stack -> count for what has been fed so far."""
        out: dict[str, int] = {}
        for (pname, frames), c in self._counts.items():
            key = pname + ";" + frames if frames else pname
            out[key] = out.get(key, 0) + c
        return out


def _chunks(lines: str | Iterable[str], batch: int = 8192) -> Iterator[str]:
    """Text chunks from a string or an iterable of lines (with or without newlines)."""
    if isinstance(lines, str):
        yield lines if lines.endswith("\n") or not lines else lines + "\n"
        return
    buf: list[str] = []
    for line in lines:
        buf.append(line)
        if len(buf) >= batch:
            yield _join(buf)
            buf = []
    if buf:
        yield _join(buf)


def _join(buf: list[str]) -> str:
    s = "".join(buf)
    if s.count("\n") == len(buf) and s.endswith("\n"):
        return s
    return "\n".join(x[:-1] if x.endswith("\n") else x for x in buf) + "\n"


def collapse(lines: str | Iterable[str], **options: bool) -> dict[str, int]:
    """Folded stacks -> counts, equal to ``stackcollapse-perf.pl`` with the same options.

    ``lines`` is perf script text or an iterable of its lines; ``options`` are the keyword
    options of :class:`Collapser` (``pid``, ``tid``, ``kernel``, ``jit``, ``all``, ``addrs``,
    ``weight_by_period``), with its defaults.
    """
    c = Collapser(**options)
    for chunk in _chunks(lines):
        c.feed(chunk)
    return c.close()


# -- structured samples ---------------------------------------------------------------------


class _FrameParser:
    """Frame lines -> Frame tuples with kinds, memoised like the collapser."""

    def __init__(self) -> None:
        self._lines: tuple[dict, dict] = ({}, {})
        self._bodies: tuple[dict, dict] = ({}, {})

    def line(self, line: str, java: bool):
        cache = self._lines[java]
        r = cache.get(line, _MISS)
        if r is _MISS:
            cleaned = _clean(line, java, False)
            if cleaned is None:
                r = _COMPLEX
            else:
                r = tuple(
                    Frame(func, Kind.KERNEL if is_kernel_module(mod, pc) else Kind.USER)
                    for func, mod, pc in cleaned
                )
            cache[line] = r
        return r

    def body(self, body: str, java: bool):
        cache = self._bodies[java]
        r = cache.get(body)
        if r is None:
            r = self._body(body, java)
            cache[body] = r
        return r

    def _body(self, body: str, java: bool):
        if not body:
            return ()
        groups = []
        for line in body.split("\n"):
            if not line or line[0] not in _WS:
                return _COMPLEX
            g = self.line(line, java)
            if g is _COMPLEX:
                return _COMPLEX
            groups.append(g)
        groups.reverse()
        return tuple(f for g in groups for f in g)


def _sample(h: _HeaderInfo, head: str, frames: tuple[Frame, ...]) -> PerfSample:
    t = _TIME.search(head)
    if h.second is None:  # one number: perf prints the TID by default
        pid, tid = None, int(h.first)
    else:
        pid, tid = int(h.first), int(h.second)
    return PerfSample(
        h.comm,
        pid,
        tid,
        float(t.group(1)) if t else None,
        int(h.period_text) if h.period_text else None,
        h.event,
        frames,
    )


def _java(comm: str) -> bool:
    return comm.startswith("java")


def _slow_samples(block: str, fp: _FrameParser, terminated: bool) -> Iterator[PerfSample]:
    """Line-by-line rules for an unusual block (comments, several headers, garbage)."""
    head = None
    h = None
    stack: list[tuple[Frame, ...]] = []
    for line in block.split("\n"):
        if not line or line.startswith("#"):
            continue
        hh = _header(line)
        if hh is not None:
            h, head = hh, line
            continue
        g = fp.line(line, _java(h.comm) if h else False)
        if g is _COMPLEX or h is None:
            continue  # garbage line: skipped
        stack.insert(0, g)
    if terminated and h is not None and head is not None:
        yield _sample(h, head, tuple(f for g in stack for f in g))


def iter_samples(lines: str | Iterable[str]) -> Iterator[PerfSample]:
    """Stream samples from perf script text or lines, in constant memory.

    Garbage lines are skipped; an unterminated last sample (no closing blank
    line, e.g. a truncated file) is dropped. Every event type is yielded.
    Frame names are tidied like ``stackcollapse-perf.pl`` (no annotations);
    kernel frames get :attr:`Kind.KERNEL` (see :func:`is_kernel_module`).
    """
    fp = _FrameParser()
    tail = ""
    for chunk in _chunks(lines, batch=2048):
        buf = tail + chunk if tail else chunk
        blocks = buf.split("\n\n")
        tail = blocks.pop()
        for block in blocks:
            yield from _block_samples(block, fp, True)
    if tail:
        yield from _block_samples(tail, fp, False)


class SampleParser:
    """A long-lived parser of whole sample blocks (text between blank lines).

    Its frame-line cache outlives one call, so a streaming caller (the agent)
    that parses batch after batch pays for each distinct frame line once.
    """

    def __init__(self) -> None:
        self._frames = _FrameParser()

    def block(self, block: str) -> tuple[PerfSample, ...]:
        """Samples of one complete block (usually one sample)."""
        return tuple(_block_samples(block, self._frames, True)) if block.strip() else ()


def _block_samples(block: str, fp: _FrameParser, terminated: bool) -> Iterator[PerfSample]:
    block = block.lstrip("\n")
    if not block:
        return
    nl = block.find("\n")
    head = block if nl < 0 else block[:nl]
    h = _header(head) if head[0] not in _WS and head[0] != "#" else None
    if h is None:
        yield from _slow_samples(block, fp, terminated)
        return
    frames = fp.body("" if nl < 0 else block[nl + 1 :], _java(h.comm))
    if frames is _COMPLEX:
        yield from _slow_samples(block, fp, terminated)
    elif terminated:
        yield _sample(h, head, frames)


def parse_perf(
    lines: str | Iterable[str],
    table: StackTable | None = None,
    *,
    weight_by_period: bool = False,
    comm: bool = True,
    event: str | None = None,
) -> Profile:
    """A profile of perf script text: one count per sample (or its period).

    ``comm`` puts the process name first as a user frame (as the reference
    does). Only samples of ``event`` are kept; by default the first event
    type seen, like the reference. Kernel frames have :attr:`Kind.KERNEL`.
    """
    table = table if table is not None else StackTable()
    intern = table.intern
    totals: dict[tuple[Frame, ...], int] = {}
    get = totals.get
    comm_frames: dict[str, Frame] = {}
    for s in iter_samples(lines):
        if s.event is not None:
            if event is None:
                event = s.event
            elif s.event != event:
                continue
        stack = s.frames
        if comm:
            f = comm_frames.get(s.comm)
            if f is None:
                f = comm_frames[s.comm] = Frame(s.comm.replace(" ", "_"), Kind.USER)
            stack = (f, *stack)
        w = (s.period or 1) if weight_by_period else 1
        totals[stack] = get(stack, 0) + w
    ids = np.fromiter((intern(s) for s in totals), dtype=np.int64, count=len(totals))
    counts = np.fromiter(totals.values(), dtype=np.int64, count=len(totals))
    return Profile.from_arrays(table, ids, counts)
