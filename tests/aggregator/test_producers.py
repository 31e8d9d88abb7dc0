"""pyroscope_spy on every series, and the rule that never adds two producers' samples of one process."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient

from aggregator.ingest import Decoded
from aggregator.producers import name_producers, spy_of_request
from stacks.model import Labels, Profile
from tests.aggregator.test_api import RANGE, W, make_client


@pytest.mark.parametrize(("query", "headers", "want"), [
    ({"spyName": "gospy"}, {}, "gospy"),
    ({"format": "jfr"}, {}, "javaspy"),
    ({}, {"User-Agent": "pyroscope-rs/pyspy/1.4.0 reqwest"}, "pyspy"),
    ({}, {"User-Agent": "flamewatch-agent"}, "flamewatch-agent"),
    ({}, {"User-Agent": "curl/8"}, ""),
])
def test_spy_of_request(query: dict, headers: dict, want: str) -> None:
    assert spy_of_request(query, headers) == want


def test_labels_win_then_scope_then_request() -> None:
    d = Decoded([(Labels.of(service_name="a", pyroscope_spy="nodespy"), None, Profile.empty()),
                 (Labels.of(service_name="b", **{"otel.scope.name": "com.grafana.pyroscope/python"}), None,
                  Profile.empty()),
                 (Labels.of(service_name="c"), None, Profile.empty())])
    name_producers(d, "")
    assert [it[0]["pyroscope_spy"] for it in d.items] == ["nodespy", "pyspy", "unknown"]


async def _ingest(c: TestClient, name: str, text: str, spy: str = "", ua: str = "") -> None:
    qs = f"&spyName={spy}" if spy else ""
    r = await c.post(f"/ingest?name={quote(name)}&from={W + 1}&until={W + 2}{qs}", data=text.encode(),
                     headers={"User-Agent": ua} if ua else {})
    assert r.status == 200, await r.text()


async def _total(c: TestClient, sel: str, path: str = "render") -> int:
    r = await c.get(f"/api/v1/{path}?query={quote(sel)}&{RANGE}")
    assert r.status == 200, await r.text()
    doc = await r.json()
    if path == "timeline":
        return sum(p[1] for s in doc["series"] for p in s["points"])
    return doc["total"]


async def _fill(c: TestClient) -> None:
    # Pod p1: the SDK (pyspy) and the agent both profile it. Pod p2: only the SDK.
    await _ingest(c, "shop{namespace=default,pod=p1}", "main;thumbnail 30\n", spy="pyspy")
    await _ingest(c, "default/app{namespace=default,pod=p1,process=python3}", "main;thumbnail (images.py) 32\n",
                  ua="flamewatch-agent")
    await _ingest(c, "other{namespace=default,pod=p2}", "main;other 5\n", spy="pyspy")
    await _ingest(c, "bare", "main;x 7\n", spy="gospy")  # no pod: not covered by the rule


async def test_default_counts_each_process_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    c = await make_client(tmp_path)
    try:
        await _fill(c)
        ns = '{namespace="default"}'
        assert await _total(c, ns) == 32 + 5
        assert await _total(c, ns, "top") == 32 + 5
        assert await _total(c, ns, "timeline") == 32 + 5
        assert await _total(c, "{}") == 32 + 5 + 7
        # Naming a producer shows its series, the agent's pods included.
        assert await _total(c, '{namespace="default",pyroscope_spy="pyspy"}') == 30 + 5
        assert await _total(c, '{pyroscope_spy=~".+"}') == 30 + 32 + 5 + 7
        r = await c.get(f"/api/v1/label/pyroscope_spy/values?{RANGE}")
        assert (await r.json())["values"] == ["flamewatch-agent", "gospy", "pyspy"]
        r = await c.get(f"/api/v1/top?query={quote(ns)}&{RANGE}")
        names = {row["name"] for row in (await r.json())["rows"]}
        assert "thumbnail (images.py)" in names and "thumbnail" not in names
    finally:
        await c.close()


async def test_rule_off(tmp_path) -> None:  # type: ignore[no-untyped-def]
    c = await make_client(tmp_path, one_producer_per_process=False)
    try:
        await _fill(c)
        assert await _total(c, '{namespace="default"}') == 30 + 32 + 5
    finally:
        await c.close()


async def test_grouped_timeline_under_the_rule_is_top_n_and_exact(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Where the rule splits a query in two (the agent's pods, the others), the timeline's top-N
    groups are ranked over both parts and the rest summed exactly (issue 24, cause 3)."""
    c = await make_client(tmp_path, max_groups=2)
    try:
        await _fill(c)
        r = await c.get(f"/api/v1/timeline?query={quote('{}')}&group_by=pod&{RANGE}")
        assert r.status == 200, await r.text()
        doc = await r.json()
        got = {s["group"]: sum(p[1] for p in s["points"]) for s in doc["series"]}
        # p1 counts once (the agent's 32), "" is the pod-less gospy series (7), p2 (5) is the rest.
        assert got == {"p1": 32, "": 7, "(other)": 5}, got
        assert doc["truncated"]["groups"] == 3 and doc["truncated"]["other_samples"] == 5
        r = await c.get(f"/api/v1/timeline?query={quote('{}')}&{RANGE}")
        assert sum(p[1] for s in (await r.json())["series"] for p in s["points"]) == 32 + 7 + 5
    finally:
        await c.close()
