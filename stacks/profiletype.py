"""Profile types: which quantity a series measures, in Pyroscope's five-part id form.

``name:sample_type:sample_unit:period_type:period_unit``, e.g.
``process_cpu:cpu:nanoseconds:cpu:nanoseconds``. Pure: no I/O.

Storage units (docs/architecture.md, "Profile types"): a type whose sample unit
and period unit are both ``nanoseconds`` (CPU, wall) is stored as **samples**
(``round(value / period)``) with the period kept in the reserved label
``__period__``; every other type is stored as the raw pprof value (bytes,
counts, nanoseconds of delay). Values are never converted across types.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from stacks.errors import InputError

# Reserved labels: the type of a series and the period (ns) of a samples-stored type.
TYPE_LABEL = "__profile_type__"
PERIOD_LABEL = "__period__"
RESERVED = frozenset({TYPE_LABEL, PERIOD_LABEL})

_PART = re.compile(r"[A-Za-z0-9_.\-]+")
_PERIOD_PART = re.compile(r"[A-Za-z0-9_.\-]*")
# Time units a pprof column may be counted in, in nanoseconds.
TIME_UNITS_NS = {"nanoseconds": 1, "microseconds": 1_000, "milliseconds": 1_000_000, "seconds": 1_000_000_000}
_LABELS = {
    ("process_cpu", "cpu"): "CPU",
    ("cpu", "cpu"): "CPU",
    ("wall", "wall"): "wall",
    ("memory", "alloc_space"): "alloc space",
    ("memory", "alloc_objects"): "alloc objects",
    ("memory", "inuse_space"): "in-use space",
    ("memory", "inuse_objects"): "in-use objects",
    ("mutex", "contentions"): "mutex contentions",
    ("mutex", "delay"): "mutex delay",
    ("block", "contentions"): "block contentions",
    ("block", "delay"): "block delay",
    ("goroutines", "goroutine"): "goroutines",
}
# Pyroscope's instant (gauge) sample types: a snapshot, not a count of events since the last
# push (Pyroscope aggregates them by average). Everything else is a delta and adds up over time.
_INSTANT_TYPES = frozenset({"inuse_space", "inuse_objects", "goroutine", "goroutines", "live"})


@dataclass(frozen=True, order=True)
class ProfileType:
    """One profile type; ``id`` is the five-part form and :meth:`parse` reads it back."""

    name: str
    sample_type: str
    sample_unit: str
    period_type: str
    period_unit: str

    @property
    def id(self) -> str:
        return ":".join((self.name, self.sample_type, self.sample_unit, self.period_type, self.period_unit))

    def __str__(self) -> str:
        return self.id

    @staticmethod
    def parse(text: str) -> ProfileType:
        """``name:sample_type:sample_unit:period_type:period_unit`` -> ProfileType. Raises InputError."""
        parts = text.strip().split(":")
        if (len(parts) != 5 or not all(_PART.fullmatch(p) for p in parts[:3])
                or not all(_PERIOD_PART.fullmatch(p) for p in parts[3:])):
            raise InputError(
                f"profile type {text[:200]!r} is not name:sample_type:sample_unit:period_type:period_unit "
                f"(parts of [A-Za-z0-9_.-], only the period ones may be empty); e.g. {CPU.id}"
            )
        return ProfileType(*parts)

    @property
    def as_samples(self) -> bool:
        """Stored as sample counts (value / period): a time column counted in its period's unit
        (CPU, wall); the period is kept in ns (:func:`period_ns`)."""
        return self.sample_unit in TIME_UNITS_NS and self.sample_unit == self.period_unit

    @property
    def unit(self) -> str:
        """Display unit of stored values: ``samples``, ``nanoseconds``, ``bytes``, ``count``, ..."""
        return "samples" if self.as_samples else self.sample_unit

    @property
    def delta(self) -> bool:
        """True for types whose values are events since the last push (sum over time)."""
        return self.sample_type not in _INSTANT_TYPES

    @property
    def label(self) -> str:
        """A short human label, e.g. ``CPU``, ``wall``, ``alloc space``."""
        got = _LABELS.get((self.name, self.sample_type))
        if got:
            return got
        st = self.sample_type.replace("_", " ")
        return st if self.name in (self.sample_type, "memory") else f"{self.name} {st}"

    def describe(self) -> dict[str, object]:
        """The JSON object of ``/api/v1/profile_types``."""
        return {
            "id": self.id, "name": self.name, "sample_type": self.sample_type,
            "sample_unit": self.sample_unit, "period_type": self.period_type,
            "period_unit": self.period_unit, "unit": self.unit, "label": self.label,
            "delta": self.delta,
        }  # fmt: skip


CPU = ProfileType("process_cpu", "cpu", "nanoseconds", "cpu", "nanoseconds")
WALL = ProfileType("wall", "wall", "nanoseconds", "wall", "nanoseconds")
DEFAULT = CPU

# Sample-type -> metric name, Pyroscope's legacy /ingest rule (pkg/og/convert/pprof metricName)
# for pprofs that arrive without a __name__.
_LEGACY_DISPLAY = {"samples": "cpu", "contentions": "mutex_count", "delay": "mutex_duration"}


def legacy_name(sample_types: list[str]) -> str:
    """The ``__name__`` Pyroscope gives a pprof pushed to ``/ingest`` (by its sample types)."""
    if "wall" in sample_types:
        return "wall"
    st = ""
    for st in sample_types:
        st = _LEGACY_DISPLAY.get(st, st)
        if "cpu" in st:
            return "process_cpu"
        if "alloc_" in st or "inuse_" in st or st in ("space", "objects"):
            return "memory"
        if "mutex_" in st:
            return "mutex"
        if "block_" in st:
            return "block"
        if "goroutine" in st:
            return "goroutines"
    return st or "process_cpu"


def derive(
    name: str, sample_type: str, sample_unit: str, period_type: str, period_unit: str
) -> ProfileType:
    """The type of one pprof column pushed under ``__name__ = name`` (Pyroscope's rule: the
    name, then the column's type and unit, then the pprof's period type and unit)."""
    name = _safe(name) or "process_cpu"
    su = _safe(sample_unit) or "count"
    pu = _safe(period_unit)
    if not pu and su in TIME_UNITS_NS:
        pu = su  # no period unit: the period counts in the column's unit (as the decoder divides)
    return ProfileType(name, _safe(sample_type) or "samples", su, _safe(period_type), pu)


def _safe(part: str) -> str:
    """A pprof string made fit for an id part: ``-`` and other characters become ``_``
    (Pyroscope also rewrites ``alloc-space`` to ``alloc_space``)."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", part.strip())


def period_ns(ptype: ProfileType, period: int) -> int | None:
    """The period of a samples-stored type in nanoseconds (a period <= 0 counts as 1 unit)."""
    if not ptype.as_samples:
        return None
    return max(period, 1) * TIME_UNITS_NS[ptype.period_unit]


def columns(name: str, types: list[tuple[str, str]], period_type: str, period_unit: str
            ) -> list[tuple[int, ProfileType]]:
    """(column index, type) for every pprof sample type: as Pyroscope does, each column is
    its own type (Go's ``samples/count`` + ``cpu/nanoseconds`` give two)."""
    out = []
    for i, (st, su) in enumerate(types):
        out.append((i, derive(name, st, su, period_type, period_unit)))
    return out


def parse_query(text: str) -> tuple[ProfileType | None, str]:
    """Split Pyroscope's ``TYPE{selector}`` query form: (type or None, selector text).

    A query without a five-part prefix (``{...}``, ``app{...}``, ``app``) gives ``None``.
    """
    text = text.strip()
    head, brace, rest = text.partition("{")
    if head.count(":") == 4:
        return ProfileType.parse(head), (brace + rest) if brace else ""
    return None, text
