"""Navigation over HTTP (issue 28): sandwich by a name's suffix or an RE2 regex, and ``focus`` on
``/api/v1/render`` (real aiohttp server, real SQLite, injected clock)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient

from tests.aggregator.test_api import RANGE, ingest_folded, make_client, q

ADMIN = """\
main;Admin.handle;Admin.createSampleImages;resize 6
main;Admin.handle;Admin.createSampleImages 2
main;jobs::createSampleImages;resize 3
main;Admin.handle;fetchSampleImages 4
"""


@pytest.fixture
async def client(tmp_path) -> AsyncIterator[TestClient]:  # type: ignore[no-untyped-def]
    c = await make_client(tmp_path)
    await ingest_folded(c, "admin{pod=a}", ADMIN)
    yield c
    await c.close()


def names(doc: dict) -> list[str]:
    return [doc["names"][i] for i in doc["nodes"]["name"]]


async def get(client: TestClient, path: str, status: int = 200) -> dict:
    r = await client.get(path)
    assert r.status == status, await r.text()
    return await r.json()


async def test_sandwich_by_suffix_and_regex(client: TestClient) -> None:
    sw = await get(client, f"/api/v1/sandwich?{RANGE}&function=createSampleImages")
    assert sw["function"] == "createSampleImages"
    assert sw["matched"] == ["Admin.createSampleImages", "jobs::createSampleImages"]
    assert sw["callees"]["total"] == 11 and sw["callers"]["total"] == 11
    exact = await get(client, f"/api/v1/sandwich?{RANGE}&function=Admin.createSampleImages")
    assert exact["function"] == "Admin.createSampleImages" and exact["callees"]["total"] == 8
    rx = await get(client, f"/api/v1/sandwich?{RANGE}&match=regex&function={q('^fetch.*Images$')}")
    assert rx["function"] == "fetchSampleImages" and rx["callees"]["total"] == 4
    err = await (await client.get(f"/api/v1/sandwich?{RANGE}&function=createSampleImages&match=exact")).text()
    assert "no frame matches 'createSampleImages'" in err
    err = await (await client.get(f"/api/v1/sandwich?{RANGE}&match=regex&function=(a")).text()
    assert "function" in err and "RE2" in err


async def test_render_focus(client: TestClient) -> None:
    doc = await get(client, f"/api/v1/render?{RANGE}&focus=createSampleImages")
    assert doc["focus"] == "createSampleImages"
    assert doc["focus_matched"] == ["Admin.createSampleImages", "jobs::createSampleImages"]
    assert doc["total"] == 11 and names(doc) == ["createSampleImages", "resize"]
    # the viewer's "focus on this function": the clicked name only, with metadata frames on
    doc = await get(client, f"/api/v1/render?{RANGE}&focus=Admin.handle&match=exact&metadata=1")
    assert doc["total"] == 12 and names(doc)[0] == "Admin.handle"
    assert "admin" not in names(doc)  # the service frame is above the focus, not in it


@pytest.mark.parametrize(("qs", "status", "words"), [
    ("focus=nothing", 400, ["focus", "nothing"]),
    ("focus=main&format=folded", 400, ["focus works with format=json or html"]),
    ("focus=main&match=glob", 400, ["match='glob'", "name, exact, regex"]),
    ("focus=" + q("(a+)+$" + "x" * 1000) + "&match=regex", 400, ["at most 1000"]),
    ("focus=" + q("((a{1000}){1000}){1000}") + "&match=regex", 400, ["RE2"]),
])
async def test_bad_focus_is_a_readable_400(client: TestClient, qs: str, status: int, words: list[str]) -> None:
    r = await client.get(f"/api/v1/render?{RANGE}&{qs}")
    text = await r.text()
    assert r.status == status, text
    for w in words:
        assert w in text
    assert (await client.get("/healthz")).status == 200
