"""End to end: ``flamewatch serve --storage clickhouse://...`` on a real ClickHouse.

Pushes folded text through ``/ingest``, queries ``/api/v1/render``, compares
every answer with a SQLite-backed server fed the same pushes, and takes
ClickHouse down and up under the running aggregator.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest

from tests.support.clickhouse import ClickHouseMissing, ClickHouseServer, clickhouse_server

pytestmark = [pytest.mark.clickhouse, pytest.mark.slow]

if importlib.util.find_spec("tests.support.server") is None:  # pragma: no cover - until it lands
    pytest.skip(reason="tests/support/server.py (running_server) not written yet", allow_module_level=True)

from tests.support.server import Server, running_server  # noqa: E402

FOLDED_1 = "main;handle;createSampleImages;render 30\nmain;handle;sys_write_[k] 7\nmain;idle 3\n"
FOLDED_2 = "main;handle;createSampleImages;render 12\nmain;gc 5\n"
FOLDED_DOWN = "main;lost_while_down 1000\n"


@pytest.fixture
def private_clickhouse() -> Iterator[ClickHouseServer]:
    """A ClickHouse of this test's own: the test stops and restarts it."""
    try:
        with clickhouse_server(private=True) as ch:
            yield ch
    except ClickHouseMissing as e:
        pytest.skip(reason=str(e))


def ingest(srv: Server, name: str, t: int, folded: str) -> tuple[int, bytes]:
    q = urlencode({"name": name, "from": t, "until": t + 10, "format": "folded"})
    return srv.post(f"/ingest?{q}", folded.encode(), timeout=30)


def render(srv: Server, selector: str, t: int, fmt: str = "folded") -> tuple[int, bytes]:
    q = urlencode({"query": selector, "from": t - 120, "until": t + 120, "format": fmt}, quote_via=quote)
    return srv.get(f"/api/v1/render?{q}", timeout=30)


def folded_map(body: bytes) -> dict[str, int]:
    out = {}
    for line in body.decode().splitlines():
        if line.strip():
            stack, n = line.rsplit(" ", 1)
            out[stack] = int(n)
    return out


def test_serve_on_clickhouse_matches_sqlite_and_survives_an_outage(
    tmp_path: Path, private_clickhouse: ClickHouseServer
) -> None:
    ch = private_clickhouse
    t = int(time.time()) - 60
    admin = "admin-service{namespace=default,pod=admin-7f9c}"
    other = "manipulation-service{namespace=default,pod=manip-1}"
    kube = "coredns{namespace=kube-system,pod=coredns-1}"
    spec = ch.storage_spec("flamewatch_test_serve")
    for sub in ("ch", "sq"):
        (tmp_path / sub).mkdir()
    with running_server(tmp_path / "ch", "--storage", spec) as srv, \
            running_server(tmp_path / "sq") as ref:
        for s in (srv, ref):
            for name, folded in ((admin, FOLDED_1), (other, FOLDED_2), (kube, FOLDED_2), (admin, FOLDED_2)):
                status, body = ingest(s, name, t, folded)
                assert status == 200, body
        assert srv.json("/healthz")["storage"] == spec  # type: ignore[index]

        admin_expected = {
            "main;handle;createSampleImages;render": 42, "main;handle;sys_write_[k]": 7,
            "main;idle": 3, "main;gc": 5,
        }
        status, body = render(srv, '{namespace="default",pod=~"admin-.*"}', t)
        assert status == 200, body
        assert folded_map(body) == admin_expected
        # Every query answers the same as on SQLite.
        for sel in ("{}", '{namespace="default"}', '{namespace!="default"}', '{pod!~"admin.*"}'):
            for fmt in ("folded", "json"):
                a, b = render(srv, sel, t, fmt), render(ref, sel, t, fmt)
                assert a[0] == b[0] == 200, (a, b)
                assert (json.loads(a[1]) if fmt == "json" else folded_map(a[1])) == \
                       (json.loads(b[1]) if fmt == "json" else folded_map(b[1])), (sel, fmt)
        for path in ("/api/v1/labels", "/api/v1/label/pod/values"):
            q = f"?from={t - 120}&until={t + 120}"
            assert srv.json(path + q) == ref.json(path + q)

        # ClickHouse goes away: pushes get an honest 5xx, queries too, the server stays up.
        ch.kill()
        status, body = ingest(srv, admin, t, FOLDED_DOWN)
        assert 500 <= status < 600, (status, body)
        assert "error" in json.loads(body) and "ClickHouse" in json.loads(body)["error"]
        status, body = render(srv, "{}", t)
        assert 500 <= status < 600, (status, body)
        assert srv.alive()
        assert srv.get("/healthz")[0] == 200

        # ... and comes back: pushes succeed again, nothing from the failed push was stored.
        ch.start()
        status, body = ingest(srv, admin, t, "main;after_restart 9\n")
        assert status == 200, body
        status, body = render(srv, '{pod="admin-7f9c"}', t)
        assert status == 200, body
        assert folded_map(body) == {**admin_expected, "main;after_restart": 9}
        assert srv.alive()


def test_timeline_group_by_many_pods_keeps_the_top_groups_on_clickhouse(
    tmp_path: Path, clickhouse: ClickHouseServer, clickhouse_db: str
) -> None:
    """Issue 24, cause 3 on ClickHouse: ``group_by=pod`` over 5,000 pods answers the 100 heaviest
    and "(other)" with the note (ranked in ClickHouse by ``top_totals``), the points add up to
    the ungrouped timeline bucket for bucket, and the answer equals SQLite's for the same pushes."""
    from stacks import pprof, push
    from stacks.model import Frame, Profile

    now = time.time_ns()

    def raw(n: int, t_ns: int) -> bytes:
        return gzip.compress(pprof.encode_pprof(Profile.from_pairs([((Frame.user("main"), Frame.user("g")), n)]),
                                                time_nanos=t_ns, duration_nanos=10**9), 1)

    pods = 5000
    light, heavy, earlier = raw(1, now), raw(1000, now), raw(2, now - 600 * 10**9)
    bodies = []
    for b in range(0, pods, 2500):
        series = [push.PushSeries((("__name__", "process_cpu"), ("service_name", "chmany"), ("pod", f"p{i:05d}")),
                                  (push.RawSample(heavy if i % 1000 == 7 else light),)) for i in range(b, b + 2500)]
        bodies.append(push.encode_push_request(series))
    # a second window, ten minutes earlier, for every tenth pod
    bodies.append(push.encode_push_request(
        [push.PushSeries((("__name__", "process_cpu"), ("service_name", "chmany"), ("pod", f"p{i:05d}")),
                         (push.RawSample(earlier),)) for i in range(0, pods, 10)]))
    t = now // 10**9
    q = quote('{service_name="chmany"}')
    rng = f"from={t - 3600}&until={t + 60}"
    for sub in ("ch", "sq"):
        (tmp_path / sub).mkdir()
    with running_server(tmp_path / "ch", "--storage", clickhouse.storage_spec(clickhouse_db),
                        "--max-groups", "100") as srv, \
            running_server(tmp_path / "sq", "--max-groups", "100") as ref:
        for s in (srv, ref):
            for body in bodies:
                status, answer = s.post("/push.v1.PusherService/Push", gzip.compress(body, 1),
                                        headers={"Content-Type": "application/proto"}, timeout=120)
                assert status == 200, answer
        status, body = srv.get(f"/api/v1/timeline?query={q}&group_by=pod&{rng}", timeout=120)
        assert status == 200, body
        doc = json.loads(body)
        groups = [s["group"] for s in doc["series"]]
        assert len(groups) == 101 and groups[-1] == "(other)" and doc["series"][-1]["other"]
        assert {f"p{i:05d}" for i in range(7, pods, 1000)} <= set(groups)  # the five heaviest are kept
        note = doc["truncated"]
        assert (note["groups"], note["shown"], note["other_groups"]) == (pods, 100, pods - 100), note
        assert "(other)" in note["note"] and "--max-groups" in note["note"]
        ungrouped = json.loads(srv.get(f"/api/v1/timeline?query={q}&{rng}", timeout=120)[1])
        assert [s["group"] for s in ungrouped["series"]] == ["all"]
        per_bucket: dict[int, int] = {}
        for s in doc["series"]:
            for b, v in s["points"]:
                per_bucket[b] = per_bucket.get(b, 0) + v
        assert per_bucket == dict(map(tuple, ungrouped["series"][0]["points"]))  # type: ignore[arg-type]
        expected = (pods - 5) + 5 * 1000 + 2 * (pods // 10)
        assert sum(per_bucket.values()) == expected
        assert note["other_samples"] == sum(v for _, v in doc["series"][-1]["points"])
        assert doc == json.loads(ref.get(f"/api/v1/timeline?query={q}&group_by=pod&{rng}", timeout=120)[1])
