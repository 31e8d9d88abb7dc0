"""Ingest decoding: the cached folded parser equals stacks.folded.parse; app-name labels."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator.ingest import IngestTables, decode_ingest, parse_app_name, parse_folded
from stacks import folded
from stacks.errors import InputError
from stacks.model import Labels

FRAME = st.sampled_from(["main", "a", "b b", "do_sys_[k]", "[k] irq", "ü🔥", "x;y"])
LINE = st.one_of(
    st.builds(lambda fr, n: ";".join(fr) + f" {n}", st.lists(FRAME, min_size=1, max_size=4), st.integers(0, 99)),
    st.sampled_from(["", "  ", "\r", "bad", "a x", "a -1", " 4", "a 1\r", "a  3"]),
)


def _outcome(fn, text):  # type: ignore[no-untyped-def]
    try:
        return ("ok", fn(text).as_dict())
    except InputError as e:
        return ("error", str(e))


@given(st.lists(LINE, max_size=8))
def test_cached_parser_matches_reference(lines: list[str]) -> None:
    text = "\n".join(lines)
    tables = IngestTables()
    # warm the cache with the good lines: the second parse takes the cached path
    _outcome(lambda t: parse_folded(t, tables)[0], "\n".join(x for x in lines if x.count(" ") == 1))
    ours = _outcome(lambda t: parse_folded(t, tables)[0], text)
    ref = _outcome(folded.parse, text)
    assert ours == ref


def test_table_is_swapped_when_full() -> None:
    tables = IngestTables(limit=3)
    first = tables.current()
    parse_folded("a 1\nb 1\nc 1\nd 1\n", tables)
    assert tables.current() is not first and len(tables.current()) == 0


@pytest.mark.parametrize(
    ("name", "labels"),
    [
        ("app", {"service_name": "app"}),
        ("app.cpu", {"service_name": "app"}),
        ("app.cpu{env=prod, region=eu}", {"service_name": "app", "env": "prod", "region": "eu"}),
        ('app{env="prod",__name__=x}', {"service_name": "app", "env": "prod"}),
        ("app{}", {"service_name": "app"}),
    ],
)
def test_app_names(name: str, labels: dict[str, str]) -> None:
    assert parse_app_name(name) == Labels.of(labels)


@pytest.mark.parametrize("name", ["", "{a=b}", "app{a=b", "app{ab}", "app{1x=2}"])
def test_bad_app_names(name: str) -> None:
    with pytest.raises(InputError, match="name"):
        parse_app_name(name)


def test_ingest_time_is_midpoint_and_units() -> None:
    tables = IngestTables()
    d = decode_ingest({"name": "a", "from": "100", "until": "120"}, b"m 1\n", tables, 1 << 20)
    assert d.items[0][1] == 110
    d = decode_ingest({"name": "a", "from": "100000", "until": "120000000"}, b"m 1\n", tables, 1 << 20)
    assert d.items[0][1] == pytest.approx((100000 + 120000000) / 2)
    d = decode_ingest({"name": "a", "from": "1700000000000"}, b"m 1\n", tables, 1 << 20)
    assert d.items[0][1] == 1_700_000_000  # milliseconds
    d = decode_ingest({"name": "a"}, b"m 1\n", tables, 1 << 20)
    assert d.items[0][1] is None  # arrival time


def test_ingest_tables_own_their_pprof_decoder() -> None:
    """The decoder caches live in the tables (one per aggregator), chosen compiled or not at creation."""
    from stacks import compiled

    on, off = IngestTables(), IngestTables(compiled=False)
    assert on.pprof is not off.pprof and on.pprof is on.pprof
    assert on.in_use() == compiled.chosen(True) and off.in_use() == {"pprof": False, "folded": False, "otlp": False}
