"""Profile types in the viewer (issue 13): the picker, values in the type's unit, like-with-like diffs.

Real headless Chromium against a real ``flamewatch serve`` fed with CPU (folded) and memory
(a Go-heap-like pprof: alloc_objects/count and alloc_space/bytes, ``__name__`` = memory).
"""

from __future__ import annotations

import json
import random
import re
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.viewer import profiles
from tests.viewer.conftest import WINDOW, PageWatch, Story

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CPU_ID = "process_cpu:cpu:nanoseconds:cpu:nanoseconds"


@dataclass
class Typed:
    srv: Any
    base: int      # start of the window with one memory profile (scale 1)
    compare: int   # start of the window with the same profile at scale 2
    types: dict[str, dict[str, Any]]  # sample_type -> the /api/v1/profile_types entry

    @property
    def url(self) -> str:
        return self.srv.url

    def range_q(self, start: int) -> str:
        return f"from={start - WINDOW}&until={start + 2 * WINDOW}"


def _get_json(srv: Any, path: str) -> tuple[int, Any]:
    status, body = srv.get(path)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


@pytest.fixture(scope="module")
def typed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Typed]:
    from tests.support.server import running_server

    tmp = tmp_path_factory.mktemp("viewer-types")
    now = int(time.time()) // WINDOW * WINDOW
    base, compare = now - 20 * 60, now - 10 * 60
    labels = profiles.SERIES[0][0]
    rng = random.Random(3)
    with running_server(tmp) as srv:
        for start, scale in ((base, 1), (compare, 2)):
            profiles.post(srv.url, "/ingest", {"name": profiles.app_name(labels), "from": str(start),
                                               "until": str(start + 10), "format": "folded",
                                               "sampleRate": "100"},
                          profiles.window_folded(profiles.SERIES[0][1], rng).encode())
            profiles.ingest_memory(srv.url, start, labels, scale=scale)
        deadline = time.monotonic() + 20
        types: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            status, doc = _get_json(srv, "/api/v1/profile_types?from=now-2h&until=now")
            assert status != 404, ("GET /api/v1/profile_types is 404: the aggregator part of issue 13 "
                                   "(profile types) is not in this tree")
            types = {t["sample_type"]: t for t in (doc or {}).get("profile_types", [])}
            if status == 200 and {"cpu", "alloc_space", "alloc_objects"} <= set(types):
                q = urllib.parse.urlencode({"from": "now-2h", "until": "now", "limit": "1",
                                            "profile_type": types["alloc_space"]["id"]})
                status, top = _get_json(srv, "/api/v1/top?" + q)
                if status == 200 and top["total"] > 0:
                    break
            time.sleep(0.2)
        else:
            raise AssertionError(f"memory and CPU data did not become queryable: {types}\n{srv.log()}")
        yield Typed(srv, base, compare, types)


def _hover(page: Any, frame: dict[str, Any]) -> str:
    rect = page.evaluate("window.__flame.canvas.getBoundingClientRect().toJSON()")
    page.mouse.move(rect["x"] + frame["x"] + min(frame["width"] / 2, 40), rect["y"] + frame["y"] + 8)
    tip = page.locator(".flamegraph-tip")
    tip.wait_for(state="visible")
    return tip.inner_text()


def _frame(watch: PageWatch, name: str) -> dict[str, Any]:
    got = [f for f in watch.frames() if f["name"] == name and f["width"] >= 6]
    assert got, f"no drawn frame {name!r}: {sorted({f['name'] for f in watch.frames()})}"
    return max(got, key=lambda f: f["width"])


def _api_requests(urls: list[str]) -> list[dict[str, list[str]]]:
    out = []
    for u in urls:
        p = urllib.parse.urlparse(u)
        if p.path.startswith("/api/v1/") and p.path != "/api/v1/profile_types":
            out.append({"path": [p.path], **urllib.parse.parse_qs(p.query)})
    return out


def test_picker_switches_type_and_tooltip_reads_bytes(typed: Typed, watch: PageWatch) -> None:
    page = watch.page
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    watch.goto_ready(typed.url + "/?" + typed.range_q(typed.base))
    # The picker lists the types present, labelled, CPU chosen by default.
    page.wait_for_selector("#type-field:not([hidden]) #profile-type option", state="attached")
    assert page.locator("#profile-type").is_visible()
    options = page.eval_on_selector_all("#profile-type option", "os => os.map(o => [o.value, o.textContent])")
    labels = dict(options)
    assert labels[CPU_ID] == "CPU" and labels[typed.types["alloc_space"]["id"]] == "alloc space", options
    assert page.locator("#profile-type").input_value() == CPU_ID
    # CPU reads as time plus samples.
    assert page.evaluate("window.__flame.data.profile_type") == CPU_ID
    cpu_tip = _hover(page, _frame(watch, "admin.views:admin_page"))
    assert re.search(r"total: [\d.]+ (ms|s) \([\d.]+%\) · [\d,]+ samples", cpu_tip), cpu_tip
    assert "samples" in page.locator("#status").inner_text()

    # Switch to alloc space: everything is refetched for that type and shown in bytes.
    space = typed.types["alloc_space"]["id"]
    seq = watch.seq()
    requests.clear()
    page.select_option("#profile-type", space)
    watch.wait_redraw(seq)
    assert urllib.parse.parse_qs(urllib.parse.urlparse(page.url).query)["type"] == [space]
    assert page.evaluate("[window.__flame.data.profile_type, window.__flame.data.unit]") == [space, "bytes"]
    tip = _hover(page, _frame(watch, profiles.MEMORY_NAME))
    assert "total: 1.50 MiB (" in tip, tip
    assert "alloc space" in page.locator("#status").inner_text()
    assert "4.75 MiB" in page.locator("#status").inner_text()
    # The top table and the timeline are in bytes too.
    row = page.locator("#top-table tbody tr", has_text=profiles.MEMORY_NAME).first
    row.wait_for()
    assert "1.50 MiB" in row.inner_text(), row.inner_text()
    page.wait_for_selector("body[data-timeline=ready]", timeout=30000)
    page.wait_for_function("() => document.getElementById('timeline-title').textContent.includes('alloc space')")
    assert "bytes" in page.locator("#timeline-title").inner_text()
    page.wait_for_timeout(300)
    _hover(page, _frame(watch, profiles.MEMORY_NAME))
    watch.shot("types.png")
    # Every query the page made after the switch asked for the chosen type.
    page.wait_for_timeout(500)
    api = _api_requests(requests)
    assert {r["path"][0] for r in api} >= {"/api/v1/render", "/api/v1/top", "/api/v1/timeline"}, api
    assert all(r.get("profile_type") == [space] for r in api), api
    href = page.locator("#exp-folded").get_attribute("href")
    assert urllib.parse.parse_qs(urllib.parse.urlparse(href).query)["profile_type"] == [space]

    # Objects are plain counts: 3 + 2 objects under PIL.Image:open.
    seq = watch.seq()
    page.select_option("#profile-type", typed.types["alloc_objects"]["id"])
    watch.wait_redraw(seq)
    page.mouse.move(0, 0)
    tip = _hover(page, _frame(watch, profiles.MEMORY_NAME))
    assert "total: 5 (" in tip, tip
    # A reload of the link keeps the type.
    watch.goto_ready(page.url)
    assert page.evaluate("window.__flame.data.unit") == "count"
    assert watch.errors == [], watch.errors


def test_diff_compares_one_type_on_both_sides(typed: Typed, watch: PageWatch) -> None:
    page = watch.page
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    space = typed.types["alloc_space"]["id"]
    b, c = typed.base, typed.compare
    q = {"mode": "diff", "type": space, "dmode": "absolute", "bfrom": str(b - WINDOW),
         "buntil": str(b + 2 * WINDOW), "cfrom": str(c - WINDOW), "cuntil": str(c + 2 * WINDOW)}
    watch.goto_ready(typed.url + "/?" + urllib.parse.urlencode(q))
    d = page.evaluate("({t: window.__flame.data.type, u: window.__flame.data.unit,"
                      " b: window.__flame.data.base_sum, c: window.__flame.data.compare_sum})")
    mib = profiles.MIB
    assert d == {"t": "diff", "u": "bytes", "b": 4.75 * mib, "c": 9.5 * mib}, d
    tip = _hover(page, _frame(watch, profiles.MEMORY_NAME))
    assert "base: 1.50 MiB" in tip and "compare: 3.00 MiB" in tip and "delta: +1.50 MiB" in tip, tip
    page.wait_for_selector("#dt-total-reg tbody td.name")
    table = page.locator("#dt-total-reg").inner_text()
    assert "Δ bytes" in table and "+1.50 MiB" in table, table
    diffs = [r for r in _api_requests(requests) if r["path"] == ["/api/v1/diff"]]
    assert diffs and all(r["profile_type"] == [space] for r in diffs), diffs
    assert watch.errors == [], watch.errors


def test_without_profile_types_route_the_picker_hides(story: Story, watch: PageWatch) -> None:
    """An aggregator without /api/v1/profile_types (404): no picker, the page works as before."""
    page = watch.page
    page.route("**/api/v1/profile_types*", lambda route: route.fulfill(
        status=404, content_type="application/json", body='{"error": "not found"}'))
    watch.goto_ready(story.url + "/")
    page.wait_for_selector("#top-table tbody tr td.name")
    assert page.locator("#type-field").is_hidden()
    assert re.search(r"[\d,]+ samples|\d (ms|s)", page.locator("#status").inner_text())
    assert profiles.GROWN in {f["name"] for f in watch.frames()}
    # The 404 is the only console error (Chromium logs failed fetches).
    assert all("404" in e for e in watch.errors), watch.errors
