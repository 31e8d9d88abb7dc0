"""Issue 23 item 5: cumulative (running-total) memory profiles stay exact whichever replica
takes the push and across restarts.

Go's ``alloc_*`` columns pushed without ``__delta__="false"`` are running totals; the server
stores each push's growth over the series' previous push (stacks/delta.py). Two real
``flamewatch serve`` replicas on one real ClickHouse take the pushes of one process alternately
(a replica restarted and another killed halfway, the process itself restarting once): the
stored total must equal the true growth exactly. Before the state moved into ClickHouse each
replica differenced against its own last push and stored 1.70x the growth. The SQLite case: a
server restarted between two pushes keeps differencing from the push before the restart.
"""

from __future__ import annotations

import gzip
import json
import random
import time
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest

from stacks import _proto
from stacks.push import PushSeries, RawSample, encode_push_request
from tests.support.clickhouse import ClickHouseServer
from tests.support.server import Server, running_server

ALLOC_SPACE = "memory:alloc_space:bytes:space:bytes"
ALLOC_OBJECTS = "memory:alloc_objects:count:space:bytes"
SERVICE = "cumulative-app"


def alloc_pprof(totals: dict[str, tuple[int, int]], t: float) -> bytes:
    """A Go heap pprof's allocation columns: ``totals`` maps a leaf function (under ``main``)
    to its running (objects, bytes) since the process started."""
    strings = ["", "alloc_objects", "count", "alloc_space", "bytes", "space", "main", *totals]
    p = _proto.Profile(period=524288, time_nanos=int(t * 1e9))
    p.string_table.extend(s.encode() for s in strings)  # type: ignore[attr-defined]
    p.sample_type.add(type=1, unit=2)
    p.sample_type.add(type=3, unit=4)
    p.period_type.type, p.period_type.unit = 5, 4
    p.function.add(id=1, name=6)
    p.location.add(id=1).line.add(function_id=1)
    for i, (objects, space) in enumerate(totals.values()):
        fid = i + 2
        p.function.add(id=fid, name=7 + i)
        p.location.add(id=fid).line.add(function_id=fid)
        p.sample.add(location_id=[fid, 1], value=[objects, space])
    return p.SerializeToString()


def push(srv: Server, totals: dict[str, tuple[int, int]]) -> None:
    labels = (("__name__", "memory"), ("service_name", SERVICE))  # no __delta__: running totals
    body = gzip.compress(encode_push_request([PushSeries(labels, (RawSample(alloc_pprof(totals, time.time()), "1"),))]))
    status, answer = srv.post("/push.v1.PusherService/Push", body,
                              headers={"Content-Type": "application/proto", "Content-Encoding": "gzip"})
    assert status == 200, (srv.url, status, answer[:300])


def stored(srv: Server, ptype: str, t0: float) -> dict[str, int]:
    # (pyroscope_spy: the deltas are named by their producer like every other item)
    q = urlencode({"query": f'{ptype}{{service_name="{SERVICE}",pyroscope_spy=~".+"}}', "from": int(t0) - 600,
                   "until": int(time.time()) + 60, "format": "folded"}, quote_via=quote)
    status, body = srv.get(f"/api/v1/render?{q}")
    assert status == 200, body[:300]
    out: dict[str, int] = {}
    for line in body.decode().splitlines():
        if line.strip():
            stack, n = line.rsplit(" ", 1)
            out[stack] = int(n)
    return out


class Process:
    """A Go process's running allocation totals: random growth, stacks appearing late, and
    a restart (totals back to small values). ``growth()`` is what really was allocated after
    each run's first push (a stack absent from that push counts from 0)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.totals: dict[str, tuple[int, int]] = {"alloc_big": (10, 10_485_760), "alloc_small": (300, 38_400)}
        self.runs: list[tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int]]]] = []
        self._first: dict[str, tuple[int, int]] | None = None

    def next(self, new_stack: str | None = None) -> dict[str, tuple[int, int]]:
        if self._first is None:
            self._first = dict(self.totals)
        else:
            for name, (o, b) in self.totals.items():
                n = self.rng.choice((0, 1, self.rng.randrange(1, 500)))  # some stacks do not grow
                self.totals[name] = (o + n, b + n * self.rng.randrange(16, 4096))
            if new_stack:
                self.totals[new_stack] = (self.rng.randrange(1, 50), self.rng.randrange(1, 1 << 20))
        return dict(self.totals)

    def restart(self) -> None:
        """The process restarts: its totals fall back to small values (a new baseline)."""
        assert self._first is not None
        self.runs.append((self._first, dict(self.totals)))
        self._first = None
        self.totals = {name: (1, 64) for name in self.totals}

    def growth(self, column: int) -> dict[str, int]:
        runs = self.runs + ([(self._first, dict(self.totals))] if self._first is not None else [])
        out: dict[str, int] = {}
        for first, last in runs:
            for name, values in last.items():
                d = values[column] - first.get(name, (0, 0))[column]
                if d:
                    out[f"main;{name}"] = out.get(f"main;{name}", 0) + d
        return out


@pytest.mark.clickhouse
@pytest.mark.slow
def test_two_replicas_on_one_clickhouse_store_the_true_growth(
    tmp_path: Path, clickhouse: ClickHouseServer, clickhouse_db: str
) -> None:
    spec = clickhouse.storage_spec(clickhouse_db)
    proc = Process(seed=23)
    t0 = time.time()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with running_server(tmp_path / "a", "--storage", spec) as a, running_server(tmp_path / "b", "--storage", spec) as b:
        replicas = [a, b]
        for i in range(16):
            push(replicas[i % 2], proc.next(new_stack="alloc_late" if i == 7 else None))
        b.restart()  # SIGTERM and start again: the state is in ClickHouse, not in the replica
        a.kill()
        a.start()
        for i in range(8):
            push(replicas[i % 2], proc.next())
        proc.restart()  # the Go process restarts: its totals fall, a new baseline
        for i in range(8):
            push(replicas[(i + 1) % 2], proc.next(new_stack="alloc_new_run" if i == 3 else None))
        want_space, want_objects = proc.growth(1), proc.growth(0)
        assert sum(want_space.values()) > 0 and len(want_space) >= 3
        for srv in replicas:
            assert stored(srv, ALLOC_SPACE, t0) == want_space
            assert stored(srv, ALLOC_OBJECTS, t0) == want_objects


def test_a_restarted_single_server_keeps_differencing_from_the_last_push(tmp_path: Path) -> None:
    """SQLite (one process): the state is saved to the data directory at shutdown, so the first
    push after a restart stores its growth instead of becoming a new baseline."""
    proc = Process(seed=5)
    t0 = time.time()
    with running_server(tmp_path) as srv:
        for _ in range(3):
            push(srv, proc.next())
        srv.restart()
        assert json.loads((srv.data_dir / "cumulative.json").read_text())["series"], "state not saved"
        for i in range(3):
            push(srv, proc.next(new_stack="alloc_late" if i == 1 else None))
        assert stored(srv, ALLOC_SPACE, t0) == proc.growth(1)
        assert stored(srv, ALLOC_OBJECTS, t0) == proc.growth(0)
