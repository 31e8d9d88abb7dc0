"""Which frames a user means by a function name: the exact name, a qualified-name suffix, or a regex.

``createSampleImages`` names ``Admin.createSampleImages``, ``admin::createSampleImages`` and
``app/admin.py:createSampleImages`` too: a name matches when it equals the text or ends with it
right after a separator (a character that cannot be part of an identifier), so ``Images`` does not
match ``createSampleImages``. A regex is RE2 (google-re2): linear time on any input, so a pattern
sent to the server cannot stall it (Python's ``re`` backtracks exponentially on ``(a+)+$``).
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import re2

from stacks.errors import InputError

MATCH_MODES = ("name", "exact", "regex")
# Bounds of a user pattern: its length, and the memory RE2 may use to compile it (a bounded
# pattern can still expand, e.g. ``a{1000}{1000}``; RE2 refuses it past max_mem).
MAX_PATTERN_CHARS = 1000
RE2_MAX_MEM = 8 << 20


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def compile_regex(text: str, what: str = "regex") -> re2._Regexp:
    """``text`` compiled by RE2 within :data:`RE2_MAX_MEM`; InputError naming ``what`` and the fix."""
    if len(text) > MAX_PATTERN_CHARS:
        raise InputError(f"{what} is {len(text)} characters: at most {MAX_PATTERN_CHARS} are accepted")
    opts = re2.Options()
    opts.max_mem = RE2_MAX_MEM
    opts.log_errors = False
    try:
        return re2.compile(text, opts)
    except re2.error as e:
        raise InputError(f"{what} {text!r} is invalid: {e} (RE2 syntax; escape special characters)") from None


@dataclass(frozen=True)
class NameMatcher:
    """A predicate over function names: ``text`` as a name/suffix (``mode="name"``), the one exact
    name (``mode="exact"``: a frame clicked in a viewer) or an RE2 regex searched anywhere in the
    name (``mode="regex"``). Call it with a name."""

    text: str
    mode: str = "name"
    _rx: object = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in MATCH_MODES:
            raise InputError(f"match={self.mode!r} is not supported: use one of {', '.join(MATCH_MODES)}")
        if not self.text:
            raise InputError("the function to match is empty: give a name, a name's suffix or a regex")
        if self.mode == "regex":
            object.__setattr__(self, "_rx", compile_regex(self.text))
        elif len(self.text) > MAX_PATTERN_CHARS:
            raise InputError(f"function name is {len(self.text)} characters: at most {MAX_PATTERN_CHARS}")

    def __call__(self, name: str) -> bool:
        """True when ``name`` is meant: equal, a separator-bounded suffix, or a regex match."""
        if self._rx is not None:
            return self._rx.search(name) is not None  # type: ignore[attr-defined]
        t = self.text
        if name == t:
            return True
        if self.mode == "exact":
            return False
        # ``.createSampleImages`` brings its own separator; ``createSampleImages`` needs one before it.
        return len(name) > len(t) and name.endswith(t) and (not _is_word(t[0]) or not _is_word(name[-len(t) - 1]))

    def describe(self) -> str:
        """How a 404/400 names this matcher: ``'x'`` or ``regex 'x'``."""
        return f"regex {self.text!r}" if self.mode == "regex" else repr(self.text)


def matcher(text_or_pred: str | Callable[[str], bool], mode: str = "name") -> Callable[[str], bool]:
    """A :class:`NameMatcher` of ``text_or_pred`` (a callable is returned as it is)."""
    if callable(text_or_pred):
        return text_or_pred
    return NameMatcher(text_or_pred, mode)
