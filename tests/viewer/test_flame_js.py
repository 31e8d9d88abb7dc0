"""flame.js on hand-built Flame JSON in headless Chromium: layout, search, diff colours, labels."""

from __future__ import annotations

from typing import Any

import pytest

from viewer.app import STATIC_DIR

pytestmark = pytest.mark.browser

# all(10) -> main(10) -> {work(7, self 7), read_[k](3) -> "<b>x</b>"(3)}
FLAME = {
    "version": 1, "type": "flame", "unit": "samples", "total": 10,
    "names": ["all", "main", "work", "sys_read", "<b>x</b>"],
    "kinds": ["user", "kernel", "metadata", "other"],
    "nodes": {"name": [0, 1, 2, 3, 4], "kind": [2, 0, 0, 1, 0], "depth": [0, 1, 2, 2, 3],
              "start": [0, 0, 0, 7, 7], "width": [10, 10, 7, 3, 3], "total": [10, 10, 7, 3, 3],
              "self": [0, 0, 7, 0, 3]},
    "max_depth": 3,
}
# base: work 8 of 10, read 2; compare: work 2 of 10, read 8 (share k = 1).
DIFF = {
    "version": 1, "type": "diff", "mode": "share", "unit": "samples", "total": 10,
    "base_sum": 10, "compare_sum": 10,
    "names": ["all", "work", "read"], "kinds": ["user", "kernel", "metadata", "other"],
    "nodes": {"name": [0, 1, 2], "kind": [2, 0, 1], "depth": [0, 1, 1], "start": [0, 0, 10],
              "width": [20, 10, 10], "total": [10, 2, 8], "self": [0, 2, 8],
              "base_total": [10, 8, 2], "base_self": [0, 8, 2]},
    "max_depth": 1,
}


@pytest.fixture
def page(browser: Any) -> Any:
    ctx = browser.new_context(viewport={"width": 1000, "height": 400}, device_scale_factor=2)
    p = ctx.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    p.set_content("<html><body style='margin:0'><div id=f style='width:1000px'></div></body></html>")
    p.add_script_tag(content=(STATIC_DIR / "units.js").read_text())
    p.add_script_tag(content=(STATIC_DIR / "flame.js").read_text())
    p.evaluate("window.fg = new FlameGraph(document.getElementById('f'), {})")
    yield p
    assert errors == []
    ctx.close()


def test_layout_root_bottom_invert_and_hidpi(page: Any) -> None:
    frames = page.evaluate("(d) => { fg.setData(d); return fg.frames(); }", FLAME)
    by = {f["name"]: f for f in frames}
    assert set(by) == {"all", "main", "work", "sys_read", "<b>x</b>"}
    assert by["all"]["y"] > by["main"]["y"] > by["work"]["y"] > by["<b>x</b>"]["y"]
    assert by["work"]["x"] == 0 and by["work"]["width"] == pytest.approx(700)
    assert by["sys_read"]["x"] == pytest.approx(700) and by["sys_read"]["kind"] == "kernel"
    assert by["all"]["kind"] == "metadata"
    # HiDPI: the backing store is device pixels, the CSS size is unchanged.
    size = page.evaluate("[fg.canvas.width, fg.canvas.height, fg.canvas.style.height]")
    assert size == [2000, 4 * 18 * 2, f"{4 * 18}px"]
    inv = {f["name"]: f for f in page.evaluate("fg.setOptions({invert: true}); fg.frames()")}
    assert inv["all"]["y"] < inv["main"]["y"] < inv["work"]["y"]
    # Hit testing follows the drawing.
    w = inv["work"]
    assert page.evaluate(f"fg.nodeAt({w['x'] + 5}, {w['y'] + 5})") == 2


def test_zoom_search_highlight_and_tooltip_text(page: Any) -> None:
    page.evaluate("(d) => fg.setData(d)", FLAME)
    zoomed = {f["name"]: f for f in page.evaluate("fg.zoomTo(3); fg.frames()")}
    # Ancestors span the width; the zoomed frame fills it; its sibling is gone.
    assert zoomed["sys_read"]["x"] == 0 and zoomed["sys_read"]["width"] == pytest.approx(1000)
    assert zoomed["main"]["width"] == pytest.approx(1000) and "work" not in zoomed
    page.evaluate("fg.reset()")
    # Nested matches count once: "sys_read" (3) contains "<b>x</b>" (3); "work" adds 7.
    stats = page.evaluate("fg.setOptions({search: 'work|read|<b>'}); fg.searchStats()")
    assert stats == {"matched": 10, "total": 10, "share": 1, "error": None}
    stats = page.evaluate("fg.setOptions({search: '^<b>'}); fg.searchStats()")
    assert stats["matched"] == 3 and stats["share"] == pytest.approx(0.3)
    bad = page.evaluate("fg.setOptions({search: '('}); fg.searchStats()")
    assert bad["matched"] == 0 and bad["error"]
    colours = {f["name"]: f["color"] for f in page.evaluate("fg.setOptions({search: '', highlight: 'work'});"
                                                               " fg.frames()")}
    assert colours["work"] == page.evaluate("FlameGraph.COLORS.highlight")
    assert colours["main"] != colours["work"]
    assert page.evaluate("fg.describe(4)") == ["<b>x</b>", "kind: user", "total: 3 samples (30.00%)",
                                               "self: 3 samples (30.00%)"]
    assert page.evaluate("document.querySelectorAll('b').length") == 0
    assert page.evaluate("fg.toPNG()").startswith("data:image/png;base64,")


def test_diff_colours_share_and_absolute(page: Any) -> None:
    frames = {f["name"]: f for f in page.evaluate("(d) => { fg.setData(d); return fg.frames(); }", DIFF)}

    def rgb(s: str) -> tuple[int, ...]:
        return tuple(int(x) for x in s[s.index("(") + 1:-1].split(","))
    r, g, b = rgb(frames["read"]["color"])
    assert r > g + 100 and r > b + 100  # grew 20% -> 80%: full red
    r, g, b = rgb(frames["work"]["color"])
    assert b > r + 100  # shrank: blue
    assert frames["all"]["color"] == "rgb(216,216,216)"  # unchanged root
    lines = page.evaluate("fg.describe(2)")
    assert lines[2].startswith("base: 2 samples (20.00%)") and lines[3].startswith("compare: 8 samples (80.00%)")
    assert lines[4] == "delta: +60.00 pp of the whole"
    page.evaluate("fg.setOptions({diffMode: 'absolute'})")
    assert page.evaluate("fg.describe(2)")[4] == "delta: +6 samples"


def test_min_px_skips_whole_subtrees_and_bad_input(page: Any) -> None:
    tiny = dict(FLAME, nodes=dict(FLAME["nodes"], width=[1000, 1000, 999, 1, 1], start=[0, 0, 0, 999, 999]))
    names = page.evaluate(
        "(d) => { fg.setOptions({minPx: 2}); fg.setData(d); return fg.frames().map(f => f.name); }", tiny)
    assert names == ["all", "main", "work"]
    err = page.evaluate(
        "() => { try { fg.setData({type: 'icicle'}); return ''; } catch (e) { return e.message; } }")
    assert "type 'flame' or 'diff'" in err
    assert page.evaluate("fg.setData(null); fg.frames().length") == 0


def test_tooltip_in_the_types_unit(page: Any) -> None:
    """CPU stored as samples with a period reads as time plus samples; bytes with binary prefixes;
    counts plain; an absolute diff's delta in the same unit."""
    cpu = dict(FLAME, unit="samples", period_ns=10_000_000, profile_type="process_cpu:cpu:nanoseconds:cpu:nanoseconds")
    page.evaluate("(d) => fg.setData(d)", cpu)
    assert page.evaluate("fg.describe(2)")[2:] == ["total: 70.0 ms (70.00%) · 7 samples",
                                                   "self: 70.0 ms (70.00%) · 7 samples"]
    mib = 1024 * 1024
    mem = dict(FLAME, unit="bytes", period_ns=None, total=10 * mib,
               nodes=dict(FLAME["nodes"], width=[v * mib for v in FLAME["nodes"]["width"]],
                          start=[v * mib for v in FLAME["nodes"]["start"]],
                          total=[v * mib for v in FLAME["nodes"]["total"]],
                          self=[v * mib for v in FLAME["nodes"]["self"]]))
    page.evaluate("(d) => fg.setData(d)", mem)
    assert page.evaluate("fg.describe(2)")[2:] == ["total: 7.00 MiB (70.00%)", "self: 7.00 MiB (70.00%)"]
    page.evaluate("(d) => fg.setData(d)", dict(FLAME, unit="count"))
    assert page.evaluate("fg.describe(2)")[2] == "total: 7 (70.00%)"
    page.evaluate("(d) => fg.setData(d)", dict(DIFF, unit="bytes", mode="absolute"))
    page.evaluate("fg.setOptions({diffMode: 'absolute'})")
    lines = page.evaluate("fg.describe(2)")
    assert lines[2].startswith("base: 2 B (20.00%)") and lines[4] == "delta: +6 B"
