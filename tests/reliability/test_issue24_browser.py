"""Issue 24, cause 9, in headless Chromium: label values are drawn as text in the timeline legend
and hover (plotly reads trace names as a subset of HTML), against a real ``flamewatch serve``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.support.server import Server, running_server
from tests.viewer.conftest import CHROMIUM, CHROMIUM_ARGS

LINK = '<a href="https://evil.example/phish">CLICK ME</a>'
BIG = '<span style="font-size:80px;color:red">HUGE</span>'


@pytest.fixture()
def srv(tmp_path: Path) -> Iterator[Server]:
    with running_server(tmp_path) as s:
        for ns in (LINK, BIG):
            name = quote("hostileapp{namespace=" + ns.replace(",", " ").replace("}", ")").replace("=", ":") + "}")
            status, body = s.post(f"/ingest?name={name}&from={int(time.time())}", b"main;work 5\n")
            assert status == 200, body
        yield s


def test_cause9_label_values_are_text_in_the_timeline_legend(srv: Server) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(reason=f"chromium not found at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = b.new_page()
            page.goto(srv.url + "/?gb=namespace")
            page.wait_for_selector("#timeline .legendtext", timeout=30000)
            page.wait_for_timeout(500)
            texts = page.locator("#timeline .legendtext").all_text_contents()
            links = page.evaluate("document.querySelectorAll('#timeline a').length")
            sizes = page.evaluate("Array.from(document.querySelectorAll('#timeline .legendtext tspan'))"
                                  ".map(t => t.getAttribute('style') || '')")
        finally:
            b.close()
    print(f"cause 9: legend texts {texts}, links {links}")
    assert any("<a href:" in t and "CLICK ME</a>" in t for t in texts), texts  # "=" is "tag=" syntax in ?name
    assert any("<span style:" in t or "<span style=" in t for t in texts), texts
    assert links == 0
    assert not any("80px" in s for s in sizes), sizes


TOKEN = "read-tkn-24"


def test_cause11_viewer_signs_in_with_the_read_token(tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(reason=f"chromium not found at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    with running_server(tmp_path, "--read-token", TOKEN) as s:
        assert s.post(f"/ingest?name=tokapp&from={int(time.time())}", b"main;tokwork 5\n")[0] == 200
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = b.new_page()
                sent: list[tuple[str, str]] = []
                page.on("request", lambda r: sent.append((r.url, r.headers.get("authorization", "")))
                        if "/api/" in r.url else None)
                page.goto(s.url + "/")
                page.wait_for_selector("#signin:not([hidden])", timeout=20000)
                page.fill("#signin-token", "wrong")
                page.click("#signin-go")
                page.wait_for_selector("#signin:not([hidden])", timeout=20000)
                assert "refused" in page.locator("#signin-why").inner_text()
                page.fill("#signin-token", TOKEN)
                page.click("#signin-go")
                page.wait_for_selector("body[data-flame=ready]", timeout=30000)
                page.wait_for_function(
                    "() => window.__flame && window.__flame.frames().some(f => f.name === 'tokwork')", timeout=20000)
                stored = page.evaluate("[sessionStorage.getItem('flamewatch.readToken'), localStorage.length,"
                                       " document.cookie]")
                hidden = page.evaluate("document.getElementById('signin').hidden")
            finally:
                b.close()
    after = [h for u, h in sent if h == f"Bearer {TOKEN}"]
    print(f"cause 11: {len(sent)} API calls, {len(after)} with the token after sign-in")
    assert stored == [TOKEN, 0, ""], stored
    assert hidden
    last = sent[-len(after):]
    assert after and all(h == f"Bearer {TOKEN}" for _, h in last), sent
