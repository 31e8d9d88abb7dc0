"""The viewer page in real headless Chromium against a real ``flamewatch serve`` with ingested data."""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

import pytest

from tests.viewer import profiles
from tests.viewer.conftest import PageWatch, Story

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Palette end points per kind (flame.js KIND_RANGE); a frame's colour lies between them.
KIND_RANGE = {
    "metadata": ((0x47, 0x96, 0xC1), (0x3A, 0x7F, 0xA8)),
    "user": ((0x31, 0xD0, 0xF3), (0x00, 0xB1, 0xD8)),
    "kernel": ((0x98, 0xDF, 0x8A), (0x90, 0xCB, 0x84)),
}


def in_kind_range(rgb: tuple[int, int, int], kind: str, slack: int = 3) -> bool:
    a, b = KIND_RANGE[kind]
    return all(min(x, y) - slack <= c <= max(x, y) + slack for c, x, y in zip(rgb, a, b, strict=True))


def frame_named(frames: list[dict[str, Any]], name: str, min_width: float = 6) -> dict[str, Any]:
    got = [f for f in frames if f["name"] == name and f["width"] >= min_width]
    assert got, f"no drawn frame named {name!r}; drawn: {sorted({f['name'] for f in frames})}"
    return max(got, key=lambda f: f["width"])


def test_page_draws_flamegraph_with_colours_by_kind(story: Story, watch: PageWatch) -> None:
    watch.goto_ready(story.url + "/")
    page = watch.page
    frames = watch.frames()
    names = {f["name"] for f in frames}
    for expected in ("all", "default", "kube-system", "admin.images:createSampleImages",
                     "manipulation.api:resize", "tcp_recvmsg", "coredns"):
        assert expected in names
    # Kinds come from the data (metadata prepended, `_[k]` kernel) and so do the painted pixels.
    for name, kind in (("default", "metadata"), ("admin-service-7f9c", "metadata"),
                       ("admin.views:admin_page", "user"), ("tcp_recvmsg", "kernel"),
                       ("__x64_sys_recvfrom", "kernel"), ("flask.app:wsgi_app", "user")):
        f = frame_named(frames, name)
        assert f["kind"] == kind, (name, f)
        rgb = watch.pixel(f)
        assert in_kind_range(rgb, kind), f"{name}: pixel {rgb} is not {kind} colour"
    # Root at the bottom: "all" is the lowest row, a leaf is above its parent.
    root = frame_named(frames, "all")
    leaf = frame_named(frames, "tcp_recvmsg")
    assert root["y"] > leaf["y"]
    # Legend, status and the top table are filled from the API.
    assert "metadata" in page.locator("#legend").inner_text()
    assert re.search(r"[\d,]+ samples", page.locator("#status").inner_text())
    page.wait_for_selector("#top-table tbody tr td.name")
    assert page.locator("#top-table tbody tr").count() > 10
    # The timeline (plotly, loaded after the first paint) arrives too.
    page.wait_for_selector("body[data-timeline=ready]", timeout=30000)
    assert page.locator("#timeline .main-svg").count() > 0
    # Top-down toggle flips the layout.
    page.locator("#invert").check()
    page.wait_for_function("() => window.__flame.options.invert === true")
    frames2 = watch.frames()
    assert frame_named(frames2, "all")["y"] < frame_named(frames2, "tcp_recvmsg")["y"]
    assert "inv=1" in page.url
    page.locator("#invert").uncheck()
    watch.shot("main.png")
    assert watch.errors == [], watch.errors


def test_namespace_filter_narrows_graph_and_url_reproduces_view(story: Story, watch: PageWatch) -> None:
    watch.goto_ready(story.url + "/")
    page = watch.page
    total_before = page.evaluate("window.__flame.data.total")
    seq = watch.seq()
    page.locator(".ms[data-label=namespace] > button").click()
    page.locator(".ms[data-label=namespace] .ms-pop input[type=search]").fill("kube")
    page.wait_for_selector(".ms[data-label=namespace] .ms-list label:has-text('kube-system')")
    # type-to-filter hid the other namespace
    assert page.locator(".ms[data-label=namespace] .ms-list label").count() == 1
    page.locator(".ms[data-label=namespace] .ms-list label:has-text('kube-system') input").check()
    watch.wait_redraw(seq)
    names = {f["name"] for f in watch.frames()}
    assert "coredns" in names and "kube-system" in names
    assert "default" not in names and "admin.views:admin_page" not in names
    total_after = page.evaluate("window.__flame.data.total")
    assert 0 < total_after < total_before
    assert 'namespace="kube-system"' in page.locator("#effective").inner_text()
    assert "namespace=kube-system" in page.url
    # Search reports the share of the matches.
    page.locator("#search").fill("runtime\\.gc")
    page.wait_for_function("() => document.getElementById('search-stats').textContent.includes('matched')")
    stats = page.evaluate("window.__flame.searchStats()")
    assert 0 < stats["matched"] < stats["total"] == total_after
    watch.shot("filtered.png")
    # The URL alone reproduces the view in a fresh page.
    url = page.url
    assert "search=" in url
    watch.goto_ready(url)
    assert page.evaluate("window.__flame.data.total") == total_after
    assert page.locator("#search").input_value() == "runtime\\.gc"
    # The producer filter (pyroscope_spy, issue 27): the story's /ingest pushes name no spy.
    page.locator(".ms[data-label=pyroscope_spy] > button").click()
    page.wait_for_selector(".ms[data-label=pyroscope_spy] .ms-list label:has-text('unknown')")
    assert watch.errors == [], watch.errors


def _drag_on_timeline(page: Any, t0: int, t1: int) -> None:
    """A real mouse drag across the plotly timeline from unix second t0 to t1."""
    box = page.evaluate(
        """([a, b]) => { const gd = document.getElementById('timeline'), xa = gd._fullLayout.xaxis;
             const r = gd.querySelector('.nsewdrag').getBoundingClientRect();
             return {x0: r.left + xa.l2p(a * 1000), x1: r.left + xa.l2p(b * 1000),
                     y: r.top + r.height / 2}; }""",
        [t0, t1])
    page.mouse.move(box["x0"], box["y"])
    page.mouse.down()
    page.mouse.move((box["x0"] + box["x1"]) / 2, box["y"], steps=4)
    page.mouse.move(box["x1"], box["y"], steps=4)
    page.mouse.up()


def test_diff_from_two_timeline_selections_paints_grown_frame_red(story: Story, watch: PageWatch) -> None:
    watch.goto_ready(story.url + "/?from=now-30m")
    page = watch.page
    page.locator("#mode-diff").click()
    page.wait_for_selector("body.diff[data-flame=ready]")
    page.wait_for_selector("body[data-timeline=ready]", timeout=30000)
    # Drag the base window, then (the target switches itself) the compare window.
    seq = watch.seq()
    _drag_on_timeline(page, *story.base)
    page.wait_for_function(
        "() => document.querySelector('#drag-target .seg.on').dataset.target === 'compare'")
    watch.wait_redraw(seq)
    seq = watch.seq()
    _drag_on_timeline(page, *story.compare)
    watch.wait_redraw(seq)
    q = urllib.parse.parse_qs(urllib.parse.urlparse(page.url).query)
    assert q["mode"] == ["diff"]
    inputs = {"base-from": story.base[0], "base-until": story.base[1],
              "compare-from": story.compare[0], "compare-until": story.compare[1]}
    for input_id, want in inputs.items():
        got = page.locator(f"#{input_id}").input_value()
        secs = page.evaluate("(s) => Date.parse(s) / 1000", got)
        assert abs(secs - want) <= 30, (input_id, got, want)
        assert q[{"base-from": "bfrom", "base-until": "buntil", "compare-from": "cfrom",
                  "compare-until": "cuntil"}[input_id]] == [got]
    data = page.evaluate("({type: window.__flame.data.type, b: window.__flame.data.base_sum,"
                         " c: window.__flame.data.compare_sum})")
    assert data["type"] == "diff" and data["b"] > 0 and data["c"] > 0
    frames = watch.frames()
    grown = frame_named(frames, profiles.GROWN)
    r, g, b = watch.pixel(grown)
    assert r > g + 60 and r > b + 60, f"grown frame is not red: {(r, g, b)}"
    shrank = frame_named(frames, "manipulation.api:resize")
    r, g, b = watch.pixel(shrank)
    assert b > r + 60, f"shrunk frame is not blue: {(r, g, b)}"
    # Tooltip of a diff frame: base %, compare %, delta.
    page.mouse.move(grown["x"] + grown["width"] / 2 + page.evaluate(
        "window.__flame.canvas.getBoundingClientRect().left"),
        grown["y"] + 8 + page.evaluate("window.__flame.canvas.getBoundingClientRect().top"))
    tip = page.locator(".flamegraph-tip")
    tip.wait_for(state="visible")
    text = tip.inner_text()
    assert profiles.GROWN in text and "base:" in text and "compare:" in text and "delta: +" in text
    # The regressions table names the grown function.
    page.wait_for_selector("#dt-total-reg tbody td.name")
    assert profiles.GROWN in page.locator("#dt-total-reg").inner_text()
    watch.shot("diff.png")
    # Absolute mode refetches with mode=absolute and keeps the grown frame red.
    seq = watch.seq()
    page.locator("[data-dmode=absolute]").click()
    watch.wait_redraw(seq)
    assert page.evaluate("window.__flame.data.mode") == "absolute"
    r, g, b = watch.pixel(frame_named(watch.frames(), profiles.GROWN))
    assert r > g + 60 and r > b + 60
    assert watch.errors == [], watch.errors


def test_hostile_frame_name_renders_as_text(story: Story, watch: PageWatch) -> None:
    watch.goto_ready(story.url + "/?search=" + urllib.parse.quote("<img"))
    page = watch.page
    frames = watch.frames()
    hostile = frame_named(frames, profiles.HOSTILE, min_width=1)
    assert hostile["color"] == page.evaluate("FlameGraph.COLORS.search")
    # It is a table cell's text, not an element.
    page.wait_for_selector("#top-table tbody td.name")
    cells = page.locator("#top-table tbody td.name").all_inner_texts()
    assert profiles.HOSTILE in cells
    assert page.evaluate("document.querySelectorAll('img').length") == 0
    # The tooltip shows it as text.
    rect = page.evaluate("window.__flame.canvas.getBoundingClientRect().toJSON()")
    page.mouse.move(rect["x"] + hostile["x"] + min(hostile["width"] / 2, 20), rect["y"] + hostile["y"] + 8)
    tip = page.locator(".flamegraph-tip")
    tip.wait_for(state="visible")
    assert profiles.HOSTILE in tip.inner_text()
    assert page.evaluate("document.querySelector('.flamegraph-tip').children.length") == 0
    # Clicking its table row highlights it and fills the sandwich box with the raw name.
    page.locator("#top-table tbody td.name", has_text=profiles.HOSTILE).first.click()
    assert page.locator("#sandwich-fn").input_value() == profiles.HOSTILE
    page.locator(".tabs .tab[data-tab=sandwich]").click()
    page.wait_for_function("() => document.getElementById('sandwich-status').textContent.includes('samples')")
    sw = page.evaluate("({callers: window.__sandwich.callers.frames().map(f => f.name),"
                       " callees: window.__sandwich.callees.frames().map(f => f.name)})")
    assert sw["callers"][0] == profiles.HOSTILE and "flask.app:wsgi_app" in sw["callers"]
    assert sw["callees"] == [profiles.HOSTILE]
    page.wait_for_timeout(300)
    watch.shot("hostile.png")
    assert page.evaluate("document.querySelectorAll('img').length") == 0
    assert watch.dialogs == [], watch.dialogs
    assert watch.errors == [], watch.errors


def test_zoom_export_and_png(story: Story, watch: PageWatch) -> None:
    watch.goto_ready(story.url + "/")
    page = watch.page
    target = frame_named(watch.frames(), "admin.views:admin_page")
    rect = page.evaluate("window.__flame.canvas.getBoundingClientRect().toJSON()")
    page.mouse.click(rect["x"] + target["x"] + 5, rect["y"] + target["y"] + 8)
    page.wait_for_function("() => window.__flame.zoom > 0")
    zoomed = frame_named(watch.frames(), "admin.views:admin_page")
    width = page.evaluate("window.__flame.cssW")
    assert zoomed["x"] == 0 and abs(zoomed["width"] - width) < 1
    assert "zoom=" in page.url
    # A reload of the link restores the zoom by frame path.
    watch.goto_ready(page.url)
    page.wait_for_function("() => window.__flame.zoom > 0")
    assert frame_named(watch.frames(), "admin.views:admin_page")["width"] > width - 1
    page.locator("#reset-zoom").click()
    assert page.evaluate("window.__flame.zoom") == 0
    # Export links go to the API with the current query; each answers 200 with its format.
    for link_id, fmt in (("exp-folded", "folded"), ("exp-pprof", "pprof"),
                         ("exp-speedscope", "speedscope"), ("exp-html", "html")):
        href = page.locator(f"#{link_id}").get_attribute("href")
        assert f"format={fmt}" in href
        status = page.evaluate("(u) => fetch(u).then(r => r.status)", href)
        assert status == 200, (link_id, href)
    folded_href = page.locator("#exp-folded").get_attribute("href")
    folded = page.evaluate("(u) => fetch(u).then(r => r.text())", folded_href)
    assert "admin.images:createSampleImages" in folded
    png = page.evaluate("window.__flame.toPNG()")
    assert png.startswith("data:image/png;base64,") and len(png) > 5000
    with page.expect_download() as dl:
        page.locator("#exp-png").click()
    assert dl.value.suggested_filename == "flamegraph.png"
    assert watch.errors == [], watch.errors


def test_7d_preset_progress_and_a_new_range_aborts_the_request_in_flight(story: Story, watch: PageWatch) -> None:
    watch.goto_ready(story.url + "/")
    page = watch.page
    held: list[Any] = []

    def hold(route: Any) -> None:
        if "from=now-24h" in route.request.url and not held:
            held.append(route)  # never answered: the 24h render stays in flight
        else:
            route.continue_()

    page.route("**/api/v1/render*", hold)
    failed: list[str] = []
    page.on("requestfailed", lambda r: failed.append(r.url))
    page.locator("#presets .seg[data-preset='24h']").click()
    page.wait_for_selector("#progress:not([hidden])")
    assert re.search(r"loading \d+ quer", page.locator("#progress").inner_text())
    assert page.evaluate("document.body.dataset.busy") is not None
    seq = watch.seq()
    page.locator("#presets .seg[data-preset='7d']").click()
    watch.wait_redraw(seq)
    page.wait_for_selector("#progress", state="hidden")
    # the 24h request was aborted by the page (not answered late and drawn over the 7d one)
    assert held and any("now-24h" in u and "/api/v1/render" in u for u in failed), failed
    assert "from=now-7d" in page.url
    assert "on" in (page.locator("#presets .seg[data-preset='7d']").get_attribute("class") or "")
