"""Prometheus/Pyroscope label selectors: ``{namespace="default",pod=~"admin-.*"}``.

Placeholder contract; the aggregator work replaces the body with a full parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from collections.abc import Mapping

OPS = ("=", "!=", "=~", "!~")


@dataclass(frozen=True)
class Matcher:
    """One ``name op "value"`` term. Regexes are fully anchored, as in Prometheus."""

    name: str
    op: str
    value: str
    _rx: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def matches(self, labels: Mapping[str, str]) -> bool:
        v = labels.get(self.name, "")
        if self.op == "=":
            return v == self.value
        if self.op == "!=":
            return v != self.value
        rx = self._rx or re.compile(self.value)
        hit = rx.fullmatch(v) is not None
        return hit if self.op == "=~" else not hit


@dataclass(frozen=True)
class Selector:
    """A conjunction of matchers; ``{}`` matches everything."""

    matchers: tuple[Matcher, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(m.matches(labels) for m in self.matchers)


def parse_selector(text: str) -> Selector:
    """Parse a selector; raises stacks.errors.InputError naming the problem."""
    raise NotImplementedError("replaced by the aggregator work")
