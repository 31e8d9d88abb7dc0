"""Output formats: one table, format name -> renderer and content type.

Both the query API (``/api/v1/render``, ``/api/v1/diff``) and the CLI (``flamewatch render``,
``flamewatch diff``) look formats up here; each offers the subset it supports, in its own order.

A renderer reads a :class:`Subject`: a tree format (``tree=True``) reads ``doc``, the Flame or
diff JSON already pruned by the caller; the others read ``profile`` (and ``compare`` for a diff).
A JSON format returns the document itself: each channel writes JSON its own way (the API
compactly, the CLI with :func:`json.dumps` defaults), so bytes stay what they have always been.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from stacks import folded
from stacks.model import Profile

Body = str | bytes | dict[str, Any]


@dataclass(frozen=True)
class Subject:
    """What an output is made of; a renderer reads only the fields its format needs."""

    title: str
    doc: dict[str, Any] | None = None  # Flame or diff JSON (tree formats)
    profile: Profile | None = None  # the profile, or a diff's base
    compare: Profile | None = None  # a diff's compare side (folded diff)
    sample_type: tuple[str, str] = ("cpu", "nanoseconds")  # pprof only
    period_ns: int = 0  # pprof only
    period_type: tuple[str, str] = ("cpu", "nanoseconds")  # pprof only


class Output(NamedTuple):
    """A rendered answer: content type, body (a dict for JSON formats) and filename suffix."""

    content_type: str
    body: Body
    suffix: str


@dataclass(frozen=True)
class Renderer:
    """One output format. ``tree``: reads ``Subject.doc`` (else the profile); ``typed``: reads the
    sample type and period, which a caller may have to look up first."""

    content_type: str
    suffix: str
    tree: bool
    render: Callable[[Subject], Body]
    typed: bool = False

    def output(self, subject: Subject) -> Output:
        """The rendered :class:`Output` of ``subject``."""
        return Output(self.content_type, self.render(subject), self.suffix)


def _doc(s: Subject) -> dict[str, Any]:
    assert s.doc is not None
    return s.doc


def _html(s: Subject) -> str:
    from render.standalone import standalone_html  # imported late: only html output reads flame.js

    return standalone_html(_doc(s), s.title)


def _profile(s: Subject) -> Profile:
    assert s.profile is not None
    return s.profile


def _folded(s: Subject) -> str:
    if s.compare is not None:
        from stacks.diff import diff_folded

        return diff_folded(_profile(s), s.compare)
    return folded.dumps(_profile(s))


def _pprof(s: Subject) -> bytes:
    from stacks.pprof import encode_pprof

    return gzip.compress(encode_pprof(_profile(s), sample_type=s.sample_type, period_nanos=s.period_ns,
                                      period_type=s.period_type), 6)


def _speedscope(s: Subject) -> dict[str, Any]:
    from stacks.export import to_speedscope

    return to_speedscope(_profile(s), s.title)


RENDERERS: dict[str, Renderer] = {
    "json": Renderer("application/json", "json", True, _doc),
    "html": Renderer("text/html; charset=utf-8", "html", True, _html),
    "folded": Renderer("text/plain; charset=utf-8", "txt", False, _folded),
    "pprof": Renderer("application/octet-stream", "pb.gz", False, _pprof, typed=True),
    "speedscope": Renderer("application/json", "speedscope.json", False, _speedscope),
}
