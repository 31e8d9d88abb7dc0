"""Prometheus/Pyroscope label selectors: ``{namespace="default",pod=~"admin-.*"}``.

Grammar: ``{`` [matcher (``,`` matcher)* [``,``]] ``}`` where a matcher is
``name op "value"``, ``op`` one of ``=``, ``!=``, ``=~``, ``!~``. Values are
double-quoted (single quotes and backticks are accepted too) with the usual
backslash escapes. Regexes are fully anchored. ``""`` and ``{}`` match
everything. A bare name such as ``myapp`` (Pyroscope's application name) is
read as ``{service_name="myapp"}``. Errors raise :class:`InputError` naming the
position and the fix.

Regexes run in RE2 (``google-re2``), as in Prometheus and Pyroscope: matching is linear in
the label value, so no selector can take the server's time exponentially (issue 24, cause 1);
RE2 has no backreferences or lookaround, and says so in the InputError.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import re2

from stacks.errors import InputError

# RE2's memory budget per compiled regex (its default is 8 MiB): bounds the DFA a selector may build.
_RE2_MAX_MEM = 8 << 20
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.max_mem = _RE2_MAX_MEM
_RE2_OPTIONS.log_errors = False

OPS = ("=", "!=", "=~", "!~")

# The one label-name rule (selectors, /ingest tags, query parameters): a letter, '_' or '.',
# then letters, digits, '_', '.' or '-'.
LABEL_NAME = re.compile(r"[A-Za-z_.][A-Za-z0-9_.\-]*")
_BARE_APP = re.compile(r"[A-Za-z0-9_.\-/:]+")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "`": "`"}
_EXAMPLE = 'e.g. {namespace="default",pod=~"admin-.*"}'


@dataclass(frozen=True)
class Matcher:
    """One ``name op "value"`` term. Regexes are fully anchored, as in Prometheus."""

    name: str
    op: str
    value: str
    _rx: Any = field(default=None, compare=False, repr=False)  # a compiled re2 pattern
    # value -> regex result: a store matches one selector against every series, and label
    # values repeat (types, namespaces); re2's Python call costs several µs each.
    _memo: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    def matches(self, labels: Mapping[str, str]) -> bool:
        v = labels.get(self.name, "")
        if self.op == "=":
            return v == self.value
        if self.op == "!=":
            return v != self.value
        hit = self._memo.get(v)
        if hit is None:
            rx = self._rx or compile_regex(self.name, self.value)
            hit = rx.fullmatch(v) is not None
            if len(self._memo) < _MEMO_LIMIT:
                self._memo[v] = hit
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'{self.name}{self.op}"{escaped}"'


@dataclass(frozen=True)
class Selector:
    """A conjunction of matchers; ``{}`` matches everything."""

    matchers: tuple[Matcher, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(m.matches(labels) for m in self.matchers)

    def __str__(self) -> str:
        return "{" + ",".join(str(m) for m in self.matchers) + "}"


_MAX_NESTING = 100
_MEMO_LIMIT = 65536  # regex results kept per matcher
# A counted repeat; RE2 refuses counts over 1000 in Go, but its Python binding reads them as text.
_REPEAT = re.compile(r"(?<!\\)\{([0-9]+)(?:,([0-9]*))?\}")


def _nesting(value: str) -> int:
    """Deepest group nesting of a regex (unescaped parentheses outside character classes)."""
    depth = top = 0
    i, n, in_class = 0, len(value), False
    while i < n:
        c = value[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c == "(":
            depth += 1
            top = max(top, depth)
        elif c == ")":
            depth -= 1
        i += 1
    return top


def compile_regex(name: str, value: str) -> Any:
    """``value`` compiled by RE2, fully anchored by :meth:`Matcher.matches` (``fullmatch``, as
    Prometheus anchors ``^(?:value)$``). InputError on what RE2 refuses: bad syntax, Perl-only
    constructs (backreferences, lookaround), repeats over 1000, more than its memory budget."""
    if _nesting(value) > _MAX_NESTING:
        shown = value if len(value) <= 80 else value[:80] + "..."
        raise InputError(f"selector regex {shown!r} for {name!r} is too complex: groups nested deeper than "
                         f"{_MAX_NESTING}; simplify it")
    for m in _REPEAT.finditer(value):
        if any(x and int(x) > 1000 for x in m.groups()):
            raise InputError(f"selector regex repeat {m.group(0)!r} for {name!r} is too large: RE2 (as "
                             "Prometheus) allows repeat counts up to {1000}")
    try:
        return re2.compile(value, _RE2_OPTIONS)
    except re2.error as e:
        shown = value if len(value) <= 80 else value[:80] + "..."
        why = e.args[0].decode("utf-8", "replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        raise InputError(
            f"selector regex {shown!r} for {name!r} is invalid in RE2 syntax ({why}); RE2 (as Prometheus) "
            "has no backreferences or lookaround and allows repeats up to {1000}"
        ) from None
    except (RecursionError, OverflowError, ValueError, TypeError) as e:
        shown = value if len(value) <= 80 else value[:80] + "..."
        raise InputError(
            f"selector regex {shown!r} for {name!r} is too complex ({type(e).__name__}): simplify it"
        ) from None


def matcher(name: str, op: str, value: str) -> Matcher:
    """Build a matcher, compiling (and checking) regexes once."""
    if op not in OPS:
        raise InputError(f"selector operator {op!r} is not one of {', '.join(OPS)}")
    rx = compile_regex(name, value) if op in ("=~", "!~") else None
    return Matcher(name, op, value, rx)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, why: str) -> InputError:
        return InputError(
            f"bad selector {self.text!r} at position {self.pos}: {why} ({_EXAMPLE})"
        )

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def name(self) -> str:
        m = LABEL_NAME.match(self.text, self.pos)
        if not m:
            found = self.peek() or "end of input"
            raise self.fail(f"expected a label name, found {found!r}")
        self.pos = m.end()
        return m.group(0)

    def op(self) -> str:
        for op in ("=~", "!~", "!=", "="):
            if self.text.startswith(op, self.pos):
                self.pos += len(op)
                return op
        raise self.fail(f"expected one of = != =~ !~, found {self.peek() or 'end of input'!r}")

    def string(self) -> str:
        quote = self.peek()
        if quote not in ('"', "'", "`"):
            raise self.fail(f"expected a quoted value, found {quote or 'end of input'!r}")
        start = self.pos
        self.pos += 1
        out: list[str] = []
        while True:
            if self.pos >= len(self.text):
                self.pos = start
                raise self.fail("unterminated quoted value")
            c = self.text[self.pos]
            if c == quote:
                self.pos += 1
                return "".join(out)
            if c == "\\" and quote != "`":
                nxt = self.text[self.pos + 1 : self.pos + 2]
                if nxt not in _ESCAPES:
                    raise self.fail(f"unknown escape \\{nxt}")
                out.append(_ESCAPES[nxt])
                self.pos += 2
                continue
            out.append(c)
            self.pos += 1


def parse_selector(text: str) -> Selector:
    """Parse a selector; raises stacks.errors.InputError naming the problem."""
    if text is None:
        return Selector()
    stripped = text.strip()
    if not stripped or stripped == "{}":
        return Selector()
    if _BARE_APP.fullmatch(stripped):
        return Selector((matcher("service_name", "=", stripped),))
    p = _Parser(text)
    p.skip_ws()
    app = None
    if p.peek() != "{":
        # Pyroscope style: app{labels}
        m = _BARE_APP.match(text, p.pos)
        if not m:
            raise p.fail("a selector starts with '{'")
        app = m.group(0)
        p.pos = m.end()
        if p.peek() != "{":
            raise p.fail("expected '{' after the application name")
    p.pos += 1
    matchers: list[Matcher] = []
    if app is not None:
        matchers.append(matcher("service_name", "=", app))
    p.skip_ws()
    while p.peek() != "}":
        if not p.peek():
            raise p.fail("missing closing '}'")
        name = p.name()
        p.skip_ws()
        op = p.op()
        p.skip_ws()
        vpos = p.pos
        value = p.string()
        try:
            matchers.append(matcher(name, op, value))
        except InputError as e:
            p.pos = vpos
            raise p.fail(str(e)) from None
        p.skip_ws()
        if p.peek() == ",":
            p.pos += 1
            p.skip_ws()
        elif p.peek() != "}":
            raise p.fail(f"expected ',' or '}}', found {p.peek() or 'end of input'!r}")
    p.pos += 1
    p.skip_ws()
    if p.pos != len(text):
        raise p.fail(f"unexpected text after '}}': {text[p.pos:]!r}")
    return Selector(tuple(matchers))
