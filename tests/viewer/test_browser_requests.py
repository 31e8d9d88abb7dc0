"""Issue 28 in headless Chromium: the Requests view (slowest root spans; a row opens that span's
flame graph), and navigation (sandwich by a name's suffix, focus on the selected function),
against a real ``flamewatch serve`` fed span-tagged pprof pushes."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from stacks.folded import parse
from stacks.model import Frame, Profile
from stacks.pprof import encode_pprof
from stacks.push import PushSeries, RawSample, encode_push_request
from tests.viewer.conftest import PageWatch

pytestmark = [pytest.mark.browser, pytest.mark.slow]
WALL_ID = "wall:wall:nanoseconds:wall:nanoseconds"
# (span id, span name, pod, folded wall samples): the ranking is a1 (40), c3 (25), b2 (8).
SPANS = (
    ("00000000000000a1", "GET /admin", "admin-1",
     "main;Admin.handle;Admin.createSampleImages;manipulation.resize 34\nmain;Admin.handle 6\n"),
    ("00000000000000b2", "GET /health", "admin-1", "main;health 8\n"),
    ("00000000000000c3", "GET /admin", "admin-2", "main;Admin.handle;Admin.fetchImages 25\n"),
)
# Where span a1's frames are (as an SDK's pprof says): its flame graph by line shows them.
ADMIN_PY = "/srv/tinyhats/admin.py"
LOCS = {"main": ("/srv/tinyhats/main.py", 12), "Admin.handle": (ADMIN_PY, 260),
        "Admin.createSampleImages": (ADMIN_PY, 236), "manipulation.resize": ("/srv/tinyhats/images.py", 88)}


def located(text: str) -> Profile:
    """The samples of folded ``text`` with each frame of :data:`LOCS` at its file and line."""
    def at(f: Frame) -> Frame:
        return Frame(f.name, f.kind, *LOCS[f.name]) if f.name in LOCS else f
    return Profile.from_pairs((tuple(at(f) for f in stack), c) for stack, c in parse(text).items())


@pytest.fixture(scope="module")
def traced_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.support.server import running_server

    with running_server(tmp_path_factory.mktemp("requests-server")) as srv:
        now = time.time()
        srv.pushed_at = now  # the profiles' time: the span rows are filed at it
        for span_id, name, pod, text in SPANS:
            raw = encode_pprof(located(text), time_nanos=int(now * 1e9),
                               sample_labels={"span_id": span_id, "trace_id": span_id * 2, "span_name": name})
            labels = (("__name__", "process_cpu"), ("service_name", "admin"), ("pod", pod), ("oncpu", "false"))
            body = gzip.compress(encode_push_request([PushSeries(labels, (RawSample(raw),))]))
            status, answer = srv.post("/push.v1.PusherService/Push", body,
                                      headers={"Content-Type": "application/proto"})
            assert status == 200, answer
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # the window writer commits asynchronously
            status, body = srv.get(f"/api/v1/top?from=now-1h&until=now&profile_type={WALL_ID}")
            if status == 200 and json.loads(body)["total"] == 40 + 8 + 25:
                break
            time.sleep(0.1)
        yield srv


def test_requests_view_opens_a_span_flamegraph(traced_server: Any, watch: PageWatch) -> None:
    page = watch.page
    watch.goto_ready(traced_server.url + f"/?mode=requests&type={WALL_ID}")
    page.wait_for_selector("body[data-requests=ready]", timeout=20000)
    rows = page.locator("#requests-table tbody tr")
    assert [rows.nth(i).get_attribute("data-span") for i in range(rows.count())] == [s[0] for s in
                                                                                      (SPANS[0], SPANS[2], SPANS[1])]
    first = rows.nth(0).inner_text()
    assert "GET /admin" in first and "admin-1" in first and "400 ms" in first.replace("\u202f", " ")
    assert "3 requests" in page.locator("#requests-status").inner_text()
    assert page.locator("#requests-title").inner_text() == "Slowest requests (root spans by wall time)"
    assert page.locator('.tab[data-tab="top"]').inner_text() == "Top functions"
    wait_chart(page)
    seq = watch.seq()
    rows.nth(1).click()
    watch.wait_redraw(seq)
    names = {f["name"] for f in watch.frames()}
    assert "Admin.fetchImages" in names and "Admin.createSampleImages" not in names
    assert page.evaluate("window.__flame.data.total") == 25
    assert "request 00000000000000c3" in page.locator("#status").inner_text()
    assert "span=00000000000000c3" in page.url
    # the table under it is still the range's, and says so
    assert page.locator('.tab[data-tab="top"]').inner_text() == "Top functions (whole range)"
    # The chart marks the picked request where its samples are (its profile's time, this push's).
    page.wait_for_function("() => (document.getElementById('timeline').layout.shapes || []).length === 1")
    shape = page.evaluate("document.getElementById('timeline').layout.shapes[0]")
    pushed = traced_server.pushed_at
    assert _iso(shape["x0"]) <= pushed <= _iso(shape["x1"]), (shape, pushed)
    watch.shot("requests.png")  # after the chart drew: the screenshot shows the whole view
    # The link reproduces the view: a reload opens the same span's flame graph.
    watch.goto_ready(page.url)
    assert page.evaluate("window.__flame.data.total") == 25
    assert watch.errors == [], watch.errors


def test_span_flamegraph_by_line_shows_file_and_line(traced_server: Any, watch: PageWatch) -> None:
    """The "by line" toggle holds in the Requests view: a request's flame graph by line has the
    frames' file:line (in the answer and the tooltip); by function it has none."""
    from tests.viewer.test_browser_lines import hover

    page = watch.page
    watch.goto_ready(traced_server.url + f"/?mode=requests&type={WALL_ID}&meta=0")
    page.wait_for_selector("body[data-requests=ready]", timeout=20000)
    seq = watch.seq()
    page.locator("#requests-table tbody tr").nth(0).click()
    watch.wait_redraw(seq)
    assert page.evaluate("window.__flame.data.total") == 40
    assert page.evaluate("window.__flame.data.locations") is None  # by function (the default)
    seq = watch.seq()
    page.locator("#by-line").check()
    watch.wait_redraw(seq)
    assert "line=1" in page.url and "span=00000000000000a1" in page.url
    assert page.evaluate("window.__flame.data.total") == 40
    locs = page.evaluate("window.__flame.data.locations")
    assert f"{ADMIN_PY}:236" in locs and f"{ADMIN_PY}:260" in locs
    frame = next(f for f in watch.frames() if f["name"] == "Admin.createSampleImages")
    assert f"at: {ADMIN_PY}:236" in hover(page, frame)
    watch.shot("requests-by-line.png")
    # The link reproduces it: a reload opens the same span by line.
    watch.goto_ready(page.url)
    assert page.locator("#by-line").is_checked()
    assert f"{ADMIN_PY}:236" in page.evaluate("window.__flame.data.locations")
    assert watch.errors == [], watch.errors


def test_requests_chart_draws_while_the_flame_graph_still_loads(traced_server: Any, watch: PageWatch) -> None:
    """The Requests view's chart comes after its table: a range's flame graph that never answers
    (held here) must not leave the chart at "loading chart…", as it once did."""
    page = watch.page
    held: list[Any] = []
    page.route("**/api/v1/render?*", lambda route: held.append(route))  # never answered
    page.goto(traced_server.url + f"/?mode=requests&type={WALL_ID}")
    page.wait_for_selector("body[data-requests=ready]", timeout=20000)
    wait_chart(page)
    assert held and page.evaluate("document.body.dataset.flame") == "loading"
    assert page.locator("#requests-table tbody tr").count() == 3
    # A row still opens its flame graph (span_profile, not the held render).
    seq = watch.seq()
    page.locator("#requests-table tbody tr").nth(0).click()
    watch.wait_redraw(seq)
    assert page.evaluate("window.__flame.data.total") == 40
    # A range without traced requests says why a table can be empty.
    page.goto(traced_server.url + f"/?mode=requests&type={WALL_ID}&from=now-3h&until=now-2h")
    page.wait_for_selector("body[data-requests=ready]", timeout=20000)
    assert "0 requests" in page.locator("#requests-status").inner_text()
    assert "shorter than the sampling interval" in page.locator("#requests-table tbody").inner_text()
    assert watch.errors == [], watch.errors


def test_sandwich_suffix_and_focus_action(traced_server: Any, watch: PageWatch) -> None:
    page = watch.page
    watch.goto_ready(traced_server.url + f"/?type={WALL_ID}&meta=0")
    page.locator(".tabs .tab[data-tab=sandwich]").click()
    page.locator("#sandwich-fn").fill("createSampleImages")  # the suffix of Admin.createSampleImages
    page.locator("#apply-sandwich").click()
    page.wait_for_function("() => document.getElementById('sandwich-status').textContent.includes('Admin.')")
    assert "Admin.createSampleImages" in page.locator("#sandwich-status").inner_text()
    callers = page.evaluate("window.__sandwich.callers.frames().map(f => f.name)")
    assert "Admin.handle" in callers
    # The same box with the regex box ticked: an RE2 regex naming two functions.
    page.locator("#sandwich-fn").fill("^Admin\\.(create|fetch)")
    page.locator("#sandwich-rx").check()
    page.wait_for_function("() => document.getElementById('sandwich-status').textContent.includes('2 functions')")
    # Focus on the selected function: the flame graph becomes its subtrees merged.
    page.locator("#sandwich-fn").fill("Admin.handle")
    page.locator("#sandwich-rx").uncheck()  # applies the box's new value
    page.wait_for_function(
        "() => document.getElementById('sandwich-status').textContent.startsWith('function Admin.handle')")
    seq = watch.seq()
    page.locator("#focus-fn").click()
    watch.wait_redraw(seq)
    frames = watch.frames()
    root = max(frames, key=lambda f: f["width"])
    assert root["name"] == "Admin.handle"
    assert page.evaluate("window.__flame.data.total") == 40 + 25
    assert not page.locator("#focus-info").is_hidden() and "focus=Admin.handle" in page.url
    seq = watch.seq()
    page.locator("#clear-focus").click()
    watch.wait_redraw(seq)
    assert page.evaluate("window.__flame.data.total") == 40 + 8 + 25
    assert watch.errors == [], watch.errors


def wait_chart(page: Any) -> None:
    """Wait until the timeline drew its bars (plotly.js loaded, the placeholder gone)."""
    page.wait_for_selector("body[data-timeline=ready]", timeout=30000)
    assert page.locator("#timeline .placeholder").count() == 0
    assert page.locator("#timeline .barlayer .trace.bars .point path").count() > 0


def _iso(text: str) -> float:
    """Unix seconds of a plotly date (``2026-12-07 04:20:00`` or ISO with a Z), read as UTC."""
    return datetime.fromisoformat(str(text).replace(" ", "T").replace("Z", "")).replace(
        tzinfo=UTC).timestamp()


def test_artifacts_dir_is_ignored() -> None:
    """Screenshots land in tests/viewer/artifacts (git-ignored), never in the repo's tree."""
    ignore = (Path(__file__).resolve().parents[2] / ".gitignore").read_text()
    assert "artifacts" in ignore
