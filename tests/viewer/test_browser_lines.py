"""Frames by line in real headless Chromium (issue 28 item 1): the "by line" toggle, file:line in
the tooltip and the top table, and the link to a frame's source from the series' repository and
git ref labels (``service_repository``, ``service_git_ref``, ``service_root_path``)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stacks.model import Frame, Kind, Profile
from stacks.pprof import encode_pprof
from tests.viewer import profiles
from tests.viewer.conftest import PageWatch

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LABELS = {"service_name": "shop", "service_repository": "https://github.com/acme/shop",
          "service_git_ref": "v1.2.3", "service_root_path": "/app"}


def at(name: str, file: str, line: int) -> Frame:
    return Frame(name, Kind.USER, file, line)


MAIN = at("main", "/app/shop/main.py", 10)
STACKS = {
    (MAIN, at("checkout", "/app/shop/cart.py", 42)): 60,
    (MAIN, at("checkout", "/app/shop/cart.py", 57)): 30,
    (at("main", "/app/shop/main.py", 11), at("render", "/app/shop/views.py", 7)): 10,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.support.server import running_server

    with running_server(tmp_path_factory.mktemp("viewer-lines")) as srv:
        now = int(time.time()) // 30 * 30 - 60
        body = encode_pprof(Profile.from_pairs(STACKS.items()), period_nanos=10_000_000)
        profiles.post(srv.url, "/ingest", {"name": profiles.app_name(LABELS), "from": str(now),
                                           "until": str(now + 10), "format": "pprof"}, body)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status, got = srv.get("/api/v1/top?from=now-1h&until=now&limit=1")
            if status == 200 and json.loads(got)["total"] > 0:
                break
            time.sleep(0.1)
        yield srv


def hover(page: Any, frame: dict[str, Any]) -> str:
    rect = page.evaluate("window.__flame.canvas.getBoundingClientRect().toJSON()")
    page.mouse.move(rect["x"] + frame["x"] + frame["width"] / 2, rect["y"] + frame["y"] + 8)
    tip = page.locator(".flamegraph-tip")
    tip.wait_for(state="visible")
    return tip.inner_text()


def test_by_line_toggle_tooltip_top_table_and_source_link(server: Any, watch: PageWatch) -> None:
    watch.goto_ready(server.url + "/?meta=0")
    page = watch.page
    checkouts = [f for f in watch.frames() if f["name"] == "checkout"]
    assert len(checkouts) == 1  # by function (the default): one frame, lines merged
    assert "at: " not in hover(page, checkouts[0])

    seq = watch.seq()
    page.locator("#by-line").check()
    watch.wait_redraw(seq)
    assert "line=1" in page.url
    checkouts = sorted((f for f in watch.frames() if f["name"] == "checkout"), key=lambda f: -f["width"])
    assert len(checkouts) == 2 and checkouts[0]["width"] > 1.9 * checkouts[1]["width"]
    tip = hover(page, checkouts[0])
    assert "at: /app/shop/cart.py:42" in tip
    assert "source: https://github.com/acme/shop/blob/v1.2.3/shop/cart.py#L42" in tip
    # Clicking the frame offers its source as a link (the tooltip itself cannot be clicked).
    page.mouse.click(*[page.evaluate("window.__flame.canvas.getBoundingClientRect().toJSON()")[k] + v
                       for k, v in (("x", checkouts[1]["x"] + checkouts[1]["width"] / 2),
                                    ("y", checkouts[1]["y"] + 8))])
    link = page.locator("#frame-source")
    link.wait_for(state="visible")
    assert link.get_attribute("href") == "https://github.com/acme/shop/blob/v1.2.3/shop/cart.py#L57"
    # The top table shows each line's row with its file:line.
    page.wait_for_function("() => [...document.querySelectorAll('#top-table td.name')]"
                           ".some(td => td.textContent.includes('cart.py:42'))")
    cells = page.locator("#top-table tbody td.name").all_inner_texts()
    assert "checkout /app/shop/cart.py:42" in cells and "checkout /app/shop/cart.py:57" in cells
    # Exports follow the toggle.
    assert "aggregate=line" in (page.locator("#exp-pprof").get_attribute("href") or "")
    watch.shot("by-line.png")

    seq = watch.seq()
    page.locator("#by-line").uncheck()
    watch.wait_redraw(seq)
    assert len([f for f in watch.frames() if f["name"] == "checkout"]) == 1
    assert page.locator("#frame-source").is_hidden()
    assert watch.errors == [], watch.errors


def test_url_with_line_opens_by_line(server: Any, watch: PageWatch, tmp_path: Path) -> None:
    watch.goto_ready(server.url + "/?meta=0&line=1")
    assert watch.page.locator("#by-line").is_checked()
    assert watch.page.evaluate("window.__flame.data.locations.includes('/app/shop/views.py:7')")
    assert watch.errors == [], watch.errors
