"""Which producer sent a series (``pyroscope_spy``) and the rule that never counts a process twice.

**Naming.** Every stored series carries ``pyroscope_spy`` with Pyroscope's values: the one the
client sent (a label, ``/ingest?spyName=``), else what the request shows (:func:`spy_of_request`:
the pyroscope-rs SDKs' ``User-Agent: pyroscope-rs/pyspy/...``, the ``otel.scope.name`` the
Pyroscope SDKs add, ``format=jfr`` -> ``javaspy``), else ``unknown``. The agent's own series say
``flamewatch-agent``; OTLP says ``otlp`` (``ebpfspy`` for the OpenTelemetry eBPF profiler).

**The rule** (``--one-producer-per-process``, default on; docs/aggregator.md): a process profiled
by a host-wide producer (the agent, an eBPF profiler: :data:`HOST_WIDE`) and by an SDK inside it
would be added twice by a query over both. A query whose selector does not name
``pyroscope_spy`` therefore reads, for every pod that has host-wide series in the range, only the
host-wide series; SDK series of other pods (and of processes outside Kubernetes, which carry no
pod) are read as before. Naming ``pyroscope_spy`` in the selector (the viewer's producer filter)
turns the rule off for that query: ``{pyroscope_spy="pyspy"}`` shows the SDK's series.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from aggregator.ingest import Decoded
from aggregator.store.base import MERGE_ALL, PrunedMergedReads, SeriesWindow, Store, TopTotals
from stacks.model import Labels, Profile, StackTable, merge
from stacks.selector import Selector, matcher

DAY = 86400  # the coarsest rollup: weight reads use whole days
SPY_LABEL = "pyroscope_spy"
AGENT_SPY = "flamewatch-agent"
HOST_WIDE = (AGENT_SPY, "ebpfspy")
_HOST_RX = "|".join(re.escape(s) for s in HOST_WIDE)
PROCESS_LABEL = "pod"
# otel.scope.name of the Pyroscope SDKs (com.grafana.pyroscope/<language>) -> Pyroscope's spy names.
_SCOPE_SPY = {"python": "pyspy", "go": "gospy", "golang": "gospy", "java": "javaspy", "nodejs": "nodespy",
              "node": "nodespy", "ruby": "rbspy", "dotnet": "dotnetspy", "rust": "pyroscope-rs", "php": "phpspy"}
_UA = re.compile(r"pyroscope-rs/([A-Za-z0-9_.\-]{1,40})/")
_SPY_VALUE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def spy_of_request(query: Mapping[str, str], headers: Mapping[str, str]) -> str:
    """The producer a request shows without a label ('' when it shows none)."""
    name = query.get("spyName", "")
    if _SPY_VALUE.fullmatch(name):
        return name
    if query.get("format", "").lower() == "jfr":
        return "javaspy"
    ua = headers.get("User-Agent", "")
    if ua.startswith(AGENT_SPY):
        return AGENT_SPY
    m = _UA.search(ua)
    if m:
        return m.group(1)
    return ""


def _from_labels(labels: Labels) -> str:
    scope = labels.get("otel.scope.name", "")
    if scope.startswith("com.grafana.pyroscope/"):
        return _SCOPE_SPY.get(scope.rsplit("/", 1)[-1].lower(), "")
    return ""


def name_producers(decoded: Decoded, request_spy: str) -> None:
    """Give every item without ``pyroscope_spy`` one (in place): its labels' SDK scope, else the
    request's producer, else ``unknown``."""
    items = decoded.items
    cache: dict[Labels, Labels] = {}
    for i, (labels, t, profile) in enumerate(items):
        if SPY_LABEL in labels:
            continue
        named = cache.get(labels)
        if named is None:
            spy = _from_labels(labels) or request_spy or "unknown"
            named = cache[labels] = Labels.of({**dict(labels.items_), SPY_LABEL: spy})
        items[i] = (named, t, profile)


class OneProducerPerProcess:
    """A read view of a store applying the rule above; writes go to the store itself."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def split(self, sel: Selector, start: int, end: int) -> list[Selector] | None:
        """The selectors whose union the rule reads, or None when ``sel`` reads as is."""
        if any(m.name == SPY_LABEL for m in sel.matchers):
            return None
        host = Selector((*sel.matchers, matcher(SPY_LABEL, "=~", _HOST_RX)))
        pods = [p for p in await self.store.label_values(PROCESS_LABEL, host, start, end) if p]
        if not pods:
            return None
        others = Selector((*sel.matchers, matcher(SPY_LABEL, "!~", _HOST_RX),
                           matcher(PROCESS_LABEL, "!~", "|".join(re.escape(p) for p in pods))))
        return [host, others]

    async def read(self, selector: Selector, start: int, end: int, table: StackTable) -> list[SeriesWindow]:
        parts = await self.split(selector, start, end)
        if parts is None:
            return await self.store.read(selector, start, end, table)
        out: list[SeriesWindow] = []
        for sel in parts:
            out.extend(await self.store.read(sel, start, end, table))
        return out

    async def read_merged(self, selector: Selector, start: int, end: int, table: StackTable,
                          group_by: Sequence[str] = ()) -> dict[Labels, Profile]:
        parts = await self.split(selector, start, end)
        if parts is None:
            return await self.store.read_merged(selector, start, end, table, group_by)  # type: ignore[attr-defined]
        return _union([await self.store.read_merged(s, start, end, table, group_by)  # type: ignore[attr-defined]
                       for s in parts], table)

    async def totals(self, selector: Selector, start: int, end: int,
                     group_by: Sequence[str] = (), step: int = 0) -> list[tuple[Labels, int, int]]:
        parts = await self.split(selector, start, end)
        if parts is None:
            return await self.store.totals(selector, start, end, group_by, step=step)  # type: ignore[attr-defined]
        sums: dict[tuple[Labels, int], int] = {}
        for s in parts:
            for labels, w, n in await self.store.totals(s, start, end, group_by, step=step):  # type: ignore[attr-defined]
                sums[(labels, w)] = sums.get((labels, w), 0) + n
        return [(k[0], k[1], n) for k, n in sums.items()]

    async def top_totals(self, selector: Selector, start: int, end: int, group_by: str, n: int, step: int = 0
                         ) -> tuple[list[tuple[Labels, int, int]], dict[int, int], int, int]:
        """The store's bounded top-N read where the rule leaves one part. Across two parts a
        group's weight is the sum of both, so it is read in three bounded steps: every group's
        weight over the whole range (one row per group and part: coarse buckets), then the kept
        groups per ``step`` bucket, then each part's total per bucket, whose difference is the
        rest. Memory: groups + (n + 1) x buckets, never groups x buckets (issue 24, cause 3)."""
        parts = await self.split(selector, start, end)
        if parts is None:
            if isinstance(self.store, TopTotals):
                return await self.store.top_totals(selector, start, end, group_by, n, step=step)
            parts = [selector]
        wide = (-(-max(end - start, 1) // DAY) + 1) * DAY  # at most two epoch-aligned buckets
        weight: dict[str, int] = {}
        for part in parts:
            for labels, _, k in await self.store.totals(part, start, end, (group_by,), step=wide):  # type: ignore[attr-defined]
                g = labels.get(group_by, "")
                weight[g] = weight.get(g, 0) + k
        order = sorted(weight, key=lambda g: (-weight[g], g))
        kept = order[:n]
        if not kept:
            return [], {}, 0, 0
        only = matcher(group_by, "=~", "|".join(re.escape(g) for g in kept))
        cells: dict[tuple[str, int], int] = {}
        totals: dict[int, int] = {}
        for part in parts:
            if len(order) > n:
                for _labels, w, k in await self.store.totals(part, start, end, MERGE_ALL, step=step):  # type: ignore[attr-defined]
                    totals[w] = totals.get(w, 0) + k
            narrowed = Selector((*part.matchers, only))
            for labels, w, k in await self.store.totals(narrowed, start, end, (group_by,), step=step):  # type: ignore[attr-defined]
                key = (labels.get(group_by, ""), w)
                cells[key] = cells.get(key, 0) + k
        rows = [(Labels.of({group_by: g}), w, k) for (g, w), k in cells.items()]
        kept_per: dict[int, int] = {}
        for (_, w), v in cells.items():
            kept_per[w] = kept_per.get(w, 0) + v
        rest = {w: k - kept_per.get(w, 0) for w, k in totals.items() if k != kept_per.get(w, 0)}
        return rows, rest, len(order), sum(weight[g] for g in order[n:])

    async def label_names(self, start: int, end: int, selector: Selector | None = None) -> list[str]:
        return await self.store.label_names(start, end, selector)

    async def label_values(self, name: str, selector: Selector, start: int, end: int) -> list[str]:
        return await self.store.label_values(name, selector, start, end)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


class _PrunedView(OneProducerPerProcess):
    """The view of a store that also offers :class:`PrunedMergedReads` (ClickHouse)."""

    async def read_merged_pruned(self, selector: Selector, start: int, end: int, table: StackTable,
                                 levels: Sequence[str], min_share: float) -> dict[Labels, Profile]:
        parts = await self.split(selector, start, end)
        if parts is None:
            return await self.store.read_merged_pruned(  # type: ignore[attr-defined]
                selector, start, end, table, levels, min_share)
        # Cells pruned against each part's own total could collide; read them whole (the flame
        # tree prunes at min_share anyway).
        return _union([await self.store.read_merged(s, start, end, table, levels)  # type: ignore[attr-defined]
                       for s in parts], table)


def _union(parts: list[dict[Labels, Profile]], table: StackTable) -> dict[Labels, Profile]:
    out: dict[Labels, Profile] = {}
    for part in parts:
        for k, p in part.items():
            out[k] = merge([out[k], p], table) if k in out else p
    return out


def read_view(store: Store, on: bool) -> Store:
    """The store the query routes read: the rule's view when ``on``."""
    if not on:
        return store
    return _PrunedView(store) if isinstance(store, PrunedMergedReads) else OneProducerPerProcess(store)
