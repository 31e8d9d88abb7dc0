"""Query parameters in, frozen typed requests out: each /api/v1 route parses its parameters once.

Every ``parse`` reads the parameters in the order the route always has, so the first bad one
is the one a 400 names; errors are :class:`stacks.errors.InputError` (the HTTP layer answers 400).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Self, TypeVar

from aggregator.windows import window_start
from stacks.errors import InputError
from stacks.namematch import MATCH_MODES, NameMatcher
from stacks.profiletype import DEFAULT, RESERVED, TYPE_LABEL, ProfileType, parse_query
from stacks.selector import LABEL_NAME, Matcher, Selector, matcher, parse_selector
from stacks.timeexpr import parse_time

# The API's output formats, in the order a 400 lists them (renderers: render.RENDERERS).
FORMATS = ("json", "folded", "pprof", "speedscope", "html")
TREE_FORMATS = ("json", "html")  # the formats drawn from a flame tree (focus makes a tree, not a profile)
DIFF_FORMATS = ("json", "folded")
MODES = ("share", "absolute")
MAX_NODES_LIMIT = 200_000
# Default ``min_share`` of flame JSON: a frame under 1/4000 of the root is narrower than a pixel on
# any screen, so it is merged into its parent's ``other`` node (and the tree builder never expands it).
DEFAULT_MIN_SHARE = 1 / 4000
T = TypeVar("T")


@dataclass(frozen=True)
class Range:
    """A query time range and the window size it is read with."""

    start: int
    end: int
    window: int

    @property
    def first_window(self) -> int:
        """The start of the window holding ``start``: the first window a query reads."""
        return window_start(self.start, self.window)


@dataclass(frozen=True)
class Context:
    """What parsing needs besides the query string: the server's clock, window, default
    ``max_nodes``, and the route's path parameters (``{name}`` of label values)."""

    now: float
    window: int
    max_nodes: int
    path: Mapping[str, str] = field(default_factory=dict)
    max_groups: int = 100  # --max-groups: group_by answers keep this many groups and "(other)"
    max_label_values: int = 10000  # --max-label-values


def time_range(params: Mapping[str, str], now: float, window: int, prefix: str = "") -> Range:
    """``from``/``until`` (default ``now-1h``/``now``) -> Range; InputError when bad or reversed."""
    f_key, u_key = f"{prefix}from", f"{prefix}until"
    start = parse_time(params.get(f_key) or "now-1h", now)
    end = parse_time(params.get(u_key) or "now", now)
    if end <= start:
        raise InputError(f"{u_key}={end} is not after {f_key}={start}: give an increasing time range")
    return Range(start, end, window)


def selector(params: Mapping[str, str], key: str = "query") -> Selector:
    """The selector of ``key`` restricted to the query's profile type (see :func:`typed_query`)."""
    return typed_query(params, key)[1]


def typed_query(params: Mapping[str, str], key: str = "query") -> tuple[ProfileType, Selector]:
    """(profile type, selector with a ``__profile_type__`` matcher) of a query parameter.

    The type comes from Pyroscope's ``TYPE{selector}`` form of ``key``, else ``profile_type=``,
    else CPU; both given and different is a 400. A query therefore never mixes types.
    """
    text = params.get(key, "") or ""
    try:
        qtype, rest = parse_query(text)
        sel = parse_selector(rest)
    except InputError as e:
        raise InputError(f"{key}: {e}") from None
    ptype = profile_type_param(params)
    if qtype is not None:
        if params.get("profile_type") and qtype != ptype:
            raise InputError(
                f"{key} asks for profile type {qtype.id} but profile_type={ptype.id}: give one of them"
            )
        ptype = qtype
    user = tuple(m for m in sel.matchers if m.name not in RESERVED)
    return ptype, Selector((*user, type_matcher(ptype)))


def type_matcher(ptype: ProfileType) -> Matcher:
    """The matcher of one type. Series stored before profile types existed have no type label
    and were all CPU, so the default type also matches a missing label (a ClickHouse database
    of the old schema is read this way; SQLite ones are migrated on open)."""
    if ptype == DEFAULT:
        return matcher(TYPE_LABEL, "=~", re.escape(ptype.id) + "|")
    return matcher(TYPE_LABEL, "=", ptype.id)


def profile_type_param(params: Mapping[str, str]) -> ProfileType:
    """``profile_type=`` (a five-part id), default CPU."""
    raw = params.get("profile_type") or ""
    if not raw:
        return DEFAULT
    try:
        return ProfileType.parse(raw)
    except InputError as e:
        raise InputError(f"profile_type: {e}") from None


def converted(params: Mapping[str, str], key: str, convert: Callable[[str], T], why: str) -> T | None:
    """``convert(params[key])``, None when absent or empty; when ``convert`` raises ValueError,
    InputError ``key='raw' why``."""
    raw = params.get(key)
    if not raw:
        return None
    try:
        return convert(raw)
    except ValueError:
        raise InputError(f"{key}={raw!r} {why}") from None


def int_param(
    params: Mapping[str, str], key: str, default: int, lo: int = 1, hi: int = MAX_NODES_LIMIT
) -> int:
    """Integer ``key`` in ``lo..hi``, ``default`` when absent or empty."""
    v = converted(params, key, int, "is not an integer")
    if v is None:
        return default
    if not lo <= v <= hi:
        raise InputError(f"{key}={v} is out of range: use {lo}..{hi}")
    return v


def choice(params: Mapping[str, str], key: str, options: Sequence[str], default: str) -> str:
    """``key`` as one of ``options``, ``default`` when absent or empty."""
    v = params.get(key) or default
    if v not in options:
        raise InputError(f"{key}={v!r} is not supported: use one of {', '.join(options)}")
    return v


def flag(params: Mapping[str, str], key: str) -> bool:
    """A 0/1 (false/true, no/yes, off/on) parameter, off when absent."""
    v = (params.get(key) or "0").lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise InputError(f"{key}={v!r}: use 0 or 1")


def label_name(name: str) -> str:
    """``name`` when it is a valid label name, else InputError."""
    if not LABEL_NAME.fullmatch(name):
        raise InputError(f"label name {name!r} is invalid: start with a letter, '_' or '.', then use "
                         "letters, digits, '_', '.', '-'")
    return name


def share_param(params: Mapping[str, str], key: str = "min_share", default: float = DEFAULT_MIN_SHARE) -> float:
    """``min_share`` in [0, 1]: frames narrower than this share of the root merge into ``other``."""
    v = converted(params, key, float, "is not a number: use e.g. 0.00025 (1/4000 of the root)")
    if v is None:
        return default
    if not 0.0 <= v <= 1.0:
        raise InputError(f"{key}={v} is out of range: use 0..1 (0 keeps every frame the budget allows)")
    return v


def name_matcher(params: Mapping[str, str], key: str) -> NameMatcher | None:
    """``key`` as a function matcher, None when absent: ``match=name`` (default; the exact name or
    a qualified name's suffix, ``createSampleImages`` names ``Admin.createSampleImages``),
    ``match=exact`` (that name only) or ``match=regex`` (RE2, searched in the name)."""
    text = params.get(key) or ""
    if not text:
        return None
    mode = choice(params, "match", MATCH_MODES, "name")
    try:
        return NameMatcher(text, mode)
    except InputError as e:
        raise InputError(f"{key}: {e}") from None


AGGREGATES = ("function", "line")


def aggregate_lines(params: Mapping[str, str]) -> bool:
    """``aggregate``: ``function`` (default: a function's lines merge) or ``line`` (True: frames
    keep their source file and line, one node per line)."""
    return choice(params, "aggregate", AGGREGATES, "function") == "line"


@dataclass(frozen=True)
class RangeRequest:
    """A time range alone (``/api/v1/profile_types``)."""

    rng: Range

    @classmethod
    def parse(cls, params: Mapping[str, str], ctx: Context) -> Self:
        """Parse ``from``/``until``."""
        return cls(time_range(params, ctx.now, ctx.window))


@dataclass(frozen=True)
class LabelsRequest:
    """A profile type and a time range (``/api/v1/labels``)."""

    ptype: ProfileType
    rng: Range
    limit: int = 10000  # --max-label-values

    @classmethod
    def parse(cls, params: Mapping[str, str], ctx: Context) -> Self:
        """Parse ``profile_type`` then the range."""
        return cls(profile_type_param(params), time_range(params, ctx.now, ctx.window), ctx.max_label_values)


@dataclass(frozen=True)
class Scoped:
    """A profile type, the ``query`` selector restricted to it, and a time range."""

    ptype: ProfileType
    sel: Selector
    rng: Range

    @classmethod
    def parse(cls, params: Mapping[str, str], ctx: Context) -> Self:
        """Parse ``query`` (with ``profile_type``) then the range."""
        return cls(*_scope(params, ctx))


def _scope(params: Mapping[str, str], ctx: Context) -> tuple[ProfileType, Selector, Range]:
    ptype, sel = typed_query(params)
    return ptype, sel, time_range(params, ctx.now, ctx.window)


@dataclass(frozen=True)
class RenderRequest(Scoped):
    """``/api/v1/render``: one flame graph (or profile) in ``format``."""

    format: str
    max_nodes: int
    metadata: bool
    min_share: float
    focus: NameMatcher | None = None
    lines: bool = False  # aggregate=line: frames keep their file and line

    @classmethod
    def parse(cls, params: Mapping[str, str], ctx: Context) -> Self:
        """Parse the scope, ``format``, ``max_nodes``, ``metadata``, ``min_share``, ``focus``
        (with ``match``): the flame graph of that function's subtrees, merged (tree formats),
        then ``aggregate`` (``function``, the default, or ``line``)."""
        req = cls(*_scope(params, ctx), choice(params, "format", FORMATS, "json"),
                  int_param(params, "max_nodes", ctx.max_nodes), flag(params, "metadata"), share_param(params),
                  name_matcher(params, "focus"), aggregate_lines(params))
        if req.focus is not None and req.format not in TREE_FORMATS:
            raise InputError(f"focus works with format={' or '.join(TREE_FORMATS)}, not format={req.format}")
        if req.focus is not None and req.lines:
            raise InputError("focus merges a function's occurrences: use it with aggregate=function (the default)")
        return req


@dataclass(frozen=True)
class LabelValuesRequest(Scoped):
    """``/api/v1/label/{name}/values``."""

    name: str
    limit: int = 10000

    @classmethod
    def parse(cls, params: Mapping[str, str], ctx: Context) -> Self:
        """Parse the path's label ``name``, then the scope."""
        name = label_name(ctx.path.get("name", ""))
        return cls(*_scope(params, ctx), name=name, limit=ctx.max_label_values)


@dataclass(frozen=True)
class TimelineRequest(Scoped):
    """``/api/v1/timeline``: ``group_by`` is a label name or empty (one "all" series)."""

    group_by: str
    max_groups: int = 100

    @classmethod
    def parse(cls, params: Mapping[str, str], ctx: Context) -> Self:
        """Parse the scope, then ``group_by``."""
        scope = _scope(params, ctx)
        group_by = params.get("group_by") or ""
        if group_by:
            label_name(group_by)
        return cls(*scope, group_by, ctx.max_groups)


@dataclass(frozen=True)
class TopRequest(Scoped):
    """``/api/v1/top``: the ``limit`` heaviest functions."""

    limit: int
    lines: bool = False  # aggregate=line: one row per function and line

    @classmethod
    def parse(cls, params: Mapping[str, str], ctx: Context) -> Self:
        """Parse the scope, ``limit``, then ``aggregate``."""
        return cls(*_scope(params, ctx), int_param(params, "limit", 100, 1, 100_000), aggregate_lines(params))


@dataclass(frozen=True)
class SandwichRequest(Scoped):
    """``/api/v1/sandwich``: callers and callees of ``function``."""

    function: NameMatcher
    max_nodes: int

    @classmethod
    def parse(cls, params: Mapping[str, str], ctx: Context) -> Self:
        """Parse the scope, ``function`` (required; with ``match``, see :func:`name_matcher`), then
        ``max_nodes``."""
        scope = _scope(params, ctx)
        fn = name_matcher(params, "function")
        if fn is None:
            raise InputError("missing ?function=NAME: the function to centre the sandwich view on")
        return cls(*scope, fn, int_param(params, "max_nodes", ctx.max_nodes))


@dataclass(frozen=True)
class DiffRequest:
    """``/api/v1/diff``: a base and a compare side of one profile type."""

    ptype: ProfileType
    base_sel: Selector
    cmp_sel: Selector
    base_rng: Range
    cmp_rng: Range
    mode: str
    format: str
    max_nodes: int
    metadata: bool

    @classmethod
    def parse(cls, params: Mapping[str, str], ctx: Context) -> Self:
        """Parse ``base``, ``compare`` (default: base), their ranges, ``mode``, ``format``,
        ``max_nodes``, ``metadata``; the two sides must be one profile type."""
        ptype, base_sel = typed_query(params, "base")
        cmp_type, cmp_sel = typed_query(params, "compare") if params.get("compare") is not None else (ptype, base_sel)
        if cmp_type != ptype:
            raise InputError(
                f"base is profile type {ptype.id} but compare is {cmp_type.id}: a diff compares one type"
            )
        return cls(ptype, base_sel, cmp_sel, time_range(params, ctx.now, ctx.window, "base_"),
                   time_range(params, ctx.now, ctx.window, "compare_"), choice(params, "mode", MODES, "share"),
                   choice(params, "format", DIFF_FORMATS, "json"),
                   int_param(params, "max_nodes", ctx.max_nodes), flag(params, "metadata"))
