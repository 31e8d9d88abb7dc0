"""viewer.app routes: the page, its static files, plotly from the installed package, no traversal."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from viewer import app as viewer_app


@pytest.fixture
async def client() -> TestClient:
    app = web.Application()
    viewer_app.add_routes(app)
    c = TestClient(TestServer(app))
    await c.start_server()
    yield c
    await c.close()


async def test_index_and_own_files(client: TestClient) -> None:
    r = await client.get("/")
    assert r.status == 200
    assert r.content_type == "text/html"
    body = await r.text()
    assert '<script src="/static/flame.js"' in body and 'src="/static/plotly' not in body
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    for name, ctype in (("flame.js", "text/javascript"), ("app.js", "text/javascript"),
                        ("style.css", "text/css")):
        r = await client.get(f"/static/{name}")
        assert r.status == 200, name
        assert r.content_type == ctype
        assert await r.read() == (viewer_app.STATIC_DIR / name).read_bytes()


async def test_plotly_served_from_installed_package_gzipped(client: TestClient) -> None:
    path = viewer_app.plotly_js_path()
    if path is None:
        pytest.skip(reason="plotly is not installed (pip install 'plotly>=5.18,<7')")
    r = await client.get("/static/plotly.min.js", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert r.status == 200
    assert r.headers["Content-Encoding"] == "gzip"
    raw = await r.read()
    assert gzip.decompress(raw) == path.read_bytes()
    assert "max-age=86400" in r.headers["Cache-Control"]
    # Conditional GET with the ETag answers 304 without a body.
    r2 = await client.get("/static/plotly.min.js", headers={"If-None-Match": r.headers["ETag"]})
    assert r2.status == 304


@pytest.mark.parametrize("path", [
    "/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py", "/static/__init__.py",
    "/static/app.py", "/static/nope.js", "/static/.hidden",
    "/static/static/flame.js", "/static//etc/passwd",
])
async def test_no_path_traversal(client: TestClient, path: str) -> None:
    r = await client.get(path, allow_redirects=False)
    assert r.status == 404, (path, r.status)
    body = await r.read()
    assert b"def add_routes" not in body and b"root:" not in body


async def test_every_page_asset_is_served(client: TestClient) -> None:
    """Every /static/ file that index.html names exists, so the page never 404s on load."""
    html = (viewer_app.STATIC_DIR / "index.html").read_text()

    names = re.findall(r'/static/([A-Za-z0-9_.-]+)', html)
    assert {"units.js", "flame.js", "app.js", "style.css"} <= set(names)
    assert names.index("units.js") < names.index("flame.js")  # flame.js needs window.FlameUnits
    for name in names:
        r = await client.get(f"/static/{name}")
        assert r.status == 200, name
    app_js = (viewer_app.STATIC_DIR / "app.js").read_text()
    assert "/static/plotly.min.js" in app_js  # loaded lazily, after the first paint
    # No HTML sinks at all in the page's scripts: data reaches the DOM only through textContent.
    sinks = re.compile(r"\.(innerHTML|outerHTML|insertAdjacentHTML)\b|document\.write|\beval\(|new Function")
    for name in ("app.js", "flame.js", "units.js"):
        src = (Path(viewer_app.STATIC_DIR) / name).read_text()
        assert not sinks.search(src), (name, sinks.search(src))


async def test_served_app_is_the_aggregator_plus_the_viewer(tmp_path: Path) -> None:
    """``flamewatch serve``'s composition (flamewatch.serve_cmd.build_app): the viewer at ``/``
    behind the aggregator's middleware, next to the API; the aggregator alone has no page."""
    from aggregator.app import create_app
    from aggregator.settings import SETTINGS
    from flamewatch.serve_cmd import build_app
    from ground.settings import resolve

    settings = resolve(SETTINGS, {"data_dir": str(tmp_path), "read_token": "t"}, environ={})
    for app, has_viewer in ((build_app(settings), True), (create_app(settings), False)):
        c = TestClient(TestServer(app, host="127.0.0.1"))
        await c.start_server()
        try:
            r = await c.get("/")
            assert r.status == (200 if has_viewer else 404)
            if has_viewer:
                assert '<script src="/static/flame.js"' in await r.text()
                r = await c.get("/static/nope.js")  # the viewer's 404, as JSON through the guard
                assert r.status == 404 and "no such viewer file" in (await r.json())["error"]
            assert (await c.get("/api/v1/labels")).status == 401  # the API keeps its auth
            r = await c.get("/api/v1/labels", headers={"Authorization": "Bearer t"})
            assert r.status == 200 and (await r.json())["names"] == []
        finally:
            await c.close()
