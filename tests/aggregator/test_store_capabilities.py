"""Store capabilities are Protocols checked with ``isinstance``: each backend satisfies exactly
the ones it claims, every store method the layers above call belongs to one of them, a store
lacking a capability takes the general path and one that has it is recognised and used."""

from __future__ import annotations

import ast
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from aggregator import query
from aggregator.params import Context, TimelineRequest
from aggregator.store.base import (
    MERGE_ALL,
    Compacting,
    MergedReads,
    PrunedMergedReads,
    SeriesWindow,
    SharedCumulative,
    Store,
    TopTotals,
)
from aggregator.store.clickhouse import ClickHouseStore
from aggregator.store.sqlite import SQLiteStore
from aggregator.windows import WindowWriter
from stacks.model import Frame, Labels, Profile, StackTable, merge
from stacks.profiletype import DEFAULT, TYPE_LABEL
from stacks.selector import Selector

ROOT = Path(__file__).resolve().parents[2]
CAPABILITIES = (Store, MergedReads, PrunedMergedReads, Compacting, TopTotals, SharedCumulative)
T0 = 1_700_006_400
U = Frame.user


def protocol_methods(proto: type) -> set[str]:
    """Public methods a Protocol declares (``open``, ``read_merged``...)."""
    return {n for n, v in vars(proto).items() if callable(v) and not n.startswith("_")}


@pytest.mark.parametrize(
    ("make", "claims"),
    [
        (lambda tmp: SQLiteStore(tmp / "f.db"), {Store, MergedReads, Compacting, TopTotals}),
        # Construction does not connect: no server needed to check the shape of the class.
        (lambda tmp: ClickHouseStore("clickhouse://127.0.0.1:8123/flamewatch"),
         {Store, MergedReads, PrunedMergedReads, SharedCumulative, TopTotals}),
    ],
    ids=["sqlite", "clickhouse"],
)
def test_each_backend_satisfies_exactly_the_protocols_it_claims(make, claims, tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = make(tmp_path)
    for proto in CAPABILITIES:
        assert isinstance(store, proto) == (proto in claims), (type(store).__name__, proto.__name__)


def _store_calls(path: Path) -> set[str]:
    """Methods called on a store in ``path``: ``store.m(...)``, ``self.store.m(...)`` and
    ``request.app[STORE].m(...)``."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        target = node.func.value
        if ((isinstance(target, ast.Name) and target.id == "store")
                or (isinstance(target, ast.Attribute) and target.attr == "store")
                or (isinstance(target, ast.Subscript) and isinstance(target.slice, ast.Name)
                    and target.slice.id == "STORE")):
            out.add(node.func.attr)
    return out


def test_every_store_method_the_layers_call_is_in_a_protocol() -> None:
    declared = set().union(*(protocol_methods(p) for p in CAPABILITIES))
    called: set[str] = set()
    for name in ("query.py", "app.py", "windows.py"):
        called |= _store_calls(ROOT / "aggregator" / name)
    assert called, "the scan found no store calls: has the code moved?"
    assert called <= declared, f"store methods called but in no Protocol: {sorted(called - declared)}"
    # No capability is looked up by name any more.
    for name in ("query.py", "app.py", "windows.py"):
        text = (ROOT / "aggregator" / name).read_text(encoding="utf-8")
        assert "getattr(store" not in text and "getattr(self.store" not in text
        assert "getattr(request.app[STORE]" not in text


class PlainStore:
    """Only the :class:`Store` methods, delegated to a real SQLite store; records ``read``."""

    def __init__(self, inner: SQLiteStore) -> None:
        self.inner = inner
        self.reads = 0

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def write(self, windows: Sequence[SeriesWindow]) -> None:
        await self.inner.write(windows)

    async def read(self, selector: Selector, start: int, end: int, table: StackTable) -> list[SeriesWindow]:
        self.reads += 1
        return await self.inner.read(selector, start, end, table)

    async def label_names(self, start: int, end: int, selector: Selector | None = None) -> list[str]:
        return await self.inner.label_names(start, end, selector)

    async def label_values(self, name: str, selector: Selector, start: int, end: int) -> list[str]:
        return await self.inner.label_values(name, selector, start, end)

    async def delete_before(self, t: int) -> int:
        return await self.inner.delete_before(t)


class SpyStore(SQLiteStore):
    """A SQLite store that also offers ``read_merged_pruned`` and records the calls it gets."""

    def __init__(self, *a, **kw) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*a, **kw)
        self.calls: list[str] = []

    async def read(self, selector: Selector, start: int, end: int, table: StackTable) -> list[SeriesWindow]:
        self.calls.append("read")
        return await super().read(selector, start, end, table)

    async def read_merged(self, selector: Selector, start: int, end: int, table: StackTable,
                          group_by: Sequence[str] | None = ()) -> dict[Labels, Profile]:
        self.calls.append("read_merged")
        return await super().read_merged(selector, start, end, table, group_by)

    async def read_merged_pruned(self, selector: Selector, start: int, end: int, table: StackTable,
                                 levels: Sequence[str], min_share: float) -> dict[Labels, Profile]:
        self.calls.append("read_merged_pruned")
        return await super().read_merged(selector, start, end, table, levels)

    async def totals(self, selector: Selector, start: int, end: int, group_by: Sequence[str] | None = (),
                     step: int = 0) -> list[tuple[Labels, int, int]]:
        self.calls.append("totals")
        return await super().totals(selector, start, end, group_by, step)

    async def top_totals(self, selector: Selector, start: int, end: int, group_by: str, n: int, step: int = 0
                         ) -> tuple[list[tuple[Labels, int, int]], dict[int, int], int, int]:
        self.calls.append("top_totals")
        return await super().top_totals(selector, start, end, group_by, n, step)

    async def compact(self, before: int, limit: int = 2000) -> int:
        self.calls.append("compact")
        return await super().compact(before, limit)


def _batch() -> list[SeriesWindow]:
    out = []
    for i, pod in enumerate(("a-1", "a-2", "b-1")):
        labels = Labels.of({TYPE_LABEL: DEFAULT.id, "namespace": pod[0], "pod": pod, "service_name": "svc"})
        prof = Profile.from_pairs([((U("main"), U(f"f{i}")), 3 + i), ((U("main"),), 2)], StackTable())
        out += [SeriesWindow(labels, T0, prof), SeriesWindow(labels, T0 + 30, prof)]
    return out


@pytest.fixture
async def stores(tmp_path) -> AsyncIterator[tuple[PlainStore, SpyStore]]:  # type: ignore[no-untyped-def]
    plain, spy = PlainStore(SQLiteStore(tmp_path / "plain.db")), SpyStore(tmp_path / "spy.db")
    for s in (plain, spy):
        await s.open()
        await s.write(_batch())
    try:
        yield plain, spy
    finally:
        await plain.close()
        await spy.close()


async def test_a_store_without_a_capability_takes_the_general_path(stores: tuple[PlainStore, SpyStore]) -> None:
    plain, spy = stores
    assert isinstance(plain, Store) and isinstance(spy, Store)
    for proto in (MergedReads, PrunedMergedReads, Compacting):
        assert not isinstance(plain, proto)
        assert isinstance(spy, proto)
    rng = query.Range(T0, T0 + 60, 30)
    sel = Selector()

    async def answers(store: Store) -> list:
        # What the callers make of each answer (the fast paths may group differently: MERGE_ALL,
        # metadata levels), so both paths must give the same documents.
        t = StackTable()
        out: list = [(await query.series_profiles(store, sel, rng, t))[0][0]]
        out.append(merge([p for _, p in await query.series_profiles(store, sel, rng, t, False)], t).as_dict())
        for metadata in (True, False):
            out.append(query.flame_json_series(await query.query_series(store, sel, rng, t, metadata),
                                               metadata, 100))
            for share in (0.0, 0.01):
                out.append(query.flame_json_series(
                    await query.flame_series(store, sel, rng, t, metadata, share), metadata, 100, share))
        req = TimelineRequest.parse({"from": str(T0), "until": str(T0 + 60), "group_by": "namespace"},
                                    Context(now=T0 + 60, window=30, max_nodes=100))
        out.append(await query.timeline(store, req))
        return out

    assert await answers(plain) == await answers(spy)  # type: ignore[arg-type]
    # The plain store only ever got reads; the spy store never did, each capability was used.
    assert plain.reads == 9  # 2 series_profiles, 2 query_series, 4 flame_series, 1 timeline
    assert "read" not in spy.calls
    assert spy.calls.count("read_merged_pruned") == 1  # metadata=1 with min_share > 0 only
    assert spy.calls.count("top_totals") == 1  # the timeline's group_by (issue 24: bounded groups)
    assert spy.calls.count("read_merged") == 7  # the other 7 of the 9 reads


async def test_maintenance_compacts_only_a_compacting_store(stores: tuple[PlainStore, SpyStore]) -> None:
    plain, spy = stores
    now = T0 + 3600
    done_plain = await WindowWriter(plain, clock=lambda: now).maintain()  # type: ignore[arg-type]
    done_spy = await WindowWriter(spy, clock=lambda: now).maintain()
    assert "compacted" not in done_plain
    assert "compacted" in done_spy and spy.calls == ["compact"]


def test_merge_all_groups_everything() -> None:
    # the constant the general and fast paths agree on (see MergedReads)
    assert MERGE_ALL == ("",)
