"""Fixtures for the viewer's browser tests: a real server with ingested data and headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.viewer import profiles

CHROMIUM = os.environ.get("FLAMEWATCH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
WINDOW = 30


@dataclass
class Story:
    """A running server fed with the demo story; base and compare ranges in unix seconds."""

    srv: Any
    base: tuple[int, int]
    compare: tuple[int, int]

    @property
    def url(self) -> str:
        return self.srv.url

    def diff_query(self, **extra: str) -> str:
        q = {"mode": "diff", "bfrom": str(self.base[0]), "buntil": str(self.base[1]),
             "cfrom": str(self.compare[0]), "cuntil": str(self.compare[1]), **extra}
        return "?" + "&".join(f"{k}={v}" for k, v in q.items())


def _wait_for_data(srv: Any, expect_series: int, timeout: float = 20) -> None:
    """Poll until every ingested series is queryable (the writer commits asynchronously)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = srv.get("/api/v1/label/pod/values?from=now-2h&until=now")
        if status == 200 and len(json.loads(body)["values"]) >= expect_series:
            status, body = srv.get("/api/v1/top?from=now-2h&until=now&limit=1")
            if status == 200 and json.loads(body)["total"] > 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"ingested data did not become queryable within {timeout}s:\n{srv.log()}")


@pytest.fixture(scope="package")
def story(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    """``flamewatch serve`` (subprocess) with two namespaces, kernel frames, a hostile frame name,
    and a compare range in which ``admin.images:createSampleImages`` grew 4x."""
    from tests.support.server import running_server

    tmp = tmp_path_factory.mktemp("viewer-server")
    now = int(time.time()) // WINDOW * WINDOW
    base0, cmp0 = now - 20 * 60, now - 10 * 60
    n = 4
    with running_server(tmp) as srv:
        profiles.ingest_story(srv.url, base0, cmp0, windows=n, window=WINDOW, grow=4.0, hostile=True)
        # Settle: wait until the last window is visible before the tests look.
        _wait_for_data(srv, expect_series=len(profiles.SERIES))
        yield Story(srv, (base0, base0 + n * WINDOW), (cmp0, cmp0 + n * WINDOW))


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium through Playwright (never a downloaded browser)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(reason=f"chromium not found at {CHROMIUM} "
                    "(apt-get install chromium, or set FLAMEWATCH_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip(reason="playwright (python) is not installed: pip install 'playwright>=1.40,<2'")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class PageWatch:
    """A page plus everything it reported: console errors, page errors and dialogs."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

        def on_dialog(d: Any) -> None:
            self.dialogs.append(f"{d.type}: {d.message}")
            d.dismiss()

        page.on("dialog", on_dialog)

    def _console(self, m: Any) -> None:
        # The tests' own getImageData reads trigger Chromium's willReadFrequently hint; not the page's fault.
        if m.type == "error" or (m.type == "warning" and "willReadFrequently" not in m.text):
            self.errors.append(f"console.{m.type}: {m.text}")

    def goto_ready(self, url: str, timeout: float = 20000) -> None:
        self.page.goto(url)
        self.page.wait_for_selector("body[data-flame=ready]", timeout=timeout)

    def wait_redraw(self, seq_before: int, timeout: float = 20000) -> None:
        """Wait until the main flamegraph was redrawn with new data after ``seq_before``."""
        self.page.wait_for_function(
            "() => document.body.dataset.flame === 'ready' && "
            f"Number(document.body.dataset.flameSeq) > {seq_before}",
            timeout=timeout)

    def seq(self) -> int:
        return int(self.page.evaluate("Number(document.body.dataset.flameSeq || 0)"))

    def frames(self) -> list[dict[str, Any]]:
        return self.page.evaluate("window.__flame.frames()")

    def pixel(self, frame: dict[str, Any]) -> tuple[int, int, int]:
        """The canvas pixel 2 CSS px inside the top-left corner of a drawn frame (above any label)."""
        return tuple(self.page.evaluate(
            """([x, y]) => { const fg = window.__flame, d = fg.dpr;
                 const px = fg.ctx.getImageData(Math.round(x * d), Math.round(y * d), 1, 1).data;
                 return [px[0], px[1], px[2]]; }""",
            [frame["x"] + 2, frame["y"] + 2]))

    def shot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def watch(browser: Any) -> Iterator[PageWatch]:
    """A fresh page (1400x1000) whose console errors and dialogs are recorded."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    try:
        yield PageWatch(page)
    finally:
        ctx.close()


def chromium_available() -> bool:
    return Path(CHROMIUM).exists() and shutil.which(CHROMIUM) is not None
