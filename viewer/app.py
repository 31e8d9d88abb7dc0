"""The aiohttp routes that serve the viewer page: ``/`` and ``/static/*``.

``flamewatch serve`` calls :func:`add_routes` on its application. The page
talks to the aggregator only through the HTTP API (``/api/v1/...``).

Static files are served from a fixed table built once from
``viewer/static`` plus ``plotly.min.js`` from the installed ``plotly``
package (never a CDN, so the viewer works offline). A request names a key of
that table; anything else is a 404, so no path can walk out of the folder.
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).resolve().parent / "static"

# The page only loads its own files; styles may be inline because plotly.js
# injects a <style> element. Data never reaches HTML, and this is the second
# line of defence if it ever did.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; font-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'self'; form-action 'self'"
)

_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
}


def plotly_js_path() -> Path | None:
    """``plotly.min.js`` inside the installed plotly package, or None if plotly is absent."""
    try:
        import plotly
    except ImportError:
        return None
    path = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
    return path if path.is_file() else None


@dataclass
class _Asset:
    """One servable file; bytes are read lazily and kept (the set is small and fixed)."""

    path: Path
    content_type: str
    max_age: int
    _body: bytes | None = field(default=None, repr=False)
    _gz: bytes | None = field(default=None, repr=False)
    _etag: str = ""
    _mtime: float = -1.0

    def load(self) -> None:
        # Re-read when the file changed on disk, so a developer's edit shows up without a restart.
        mtime = self.path.stat().st_mtime
        if self._body is None or mtime != self._mtime:
            body = self.path.read_bytes()
            self._body, self._gz, self._mtime = body, None, mtime
            self._etag = '"' + hashlib.sha1(body).hexdigest()[:20] + '"'

    def body(self, want_gzip: bool) -> tuple[bytes, bool]:
        self.load()
        assert self._body is not None
        if want_gzip and len(self._body) > 1024 and self.content_type != "image/png":
            if self._gz is None:
                self._gz = gzip.compress(self._body, compresslevel=6, mtime=0)
            return self._gz, True
        return self._body, False


def _asset_table() -> dict[str, _Asset]:
    table: dict[str, _Asset] = {}
    if STATIC_DIR.is_dir():
        for p in sorted(STATIC_DIR.iterdir()):
            if p.is_file() and not p.name.startswith(".") and p.suffix in _TYPES:
                ctype = _TYPES.get(p.suffix) or mimetypes.guess_type(p.name)[0] or "application/octet-stream"
                table[p.name] = _Asset(p, ctype, max_age=0)
    plotly_js = plotly_js_path()
    if plotly_js is not None:
        # Versioned with the installed package; safe to cache for a day.
        table["plotly.min.js"] = _Asset(plotly_js, "text/javascript", max_age=86400)
    return table


def _security_headers(resp: web.StreamResponse) -> None:
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["X-Frame-Options"] = "SAMEORIGIN"


def _serve(asset: _Asset, request: web.Request) -> web.Response:
    try:
        accept = request.headers.get("Accept-Encoding", "")
        body, gz = asset.body("gzip" in accept)
    except FileNotFoundError:
        raise web.HTTPNotFound(
            text='{"error": "viewer file missing on the server; reinstall flamewatch"}',
            content_type="application/json",
        ) from None
    if request.headers.get("If-None-Match") == asset._etag:
        resp = web.Response(status=304)
    else:
        resp = web.Response(body=body, content_type=asset.content_type)
        if asset.content_type.startswith("text/"):
            resp.charset = "utf-8"
        if gz:
            resp.headers["Content-Encoding"] = "gzip"
    resp.headers["ETag"] = asset._etag
    resp.headers["Vary"] = "Accept-Encoding"
    resp.headers["Cache-Control"] = f"public, max-age={asset.max_age}" if asset.max_age else "no-cache"
    _security_headers(resp)
    return resp


def add_routes(app: web.Application) -> None:
    """Serve the viewer on ``app``: ``GET /`` (index.html) and ``GET /static/{name}``."""
    assets = _asset_table()

    async def index(request: web.Request) -> web.Response:
        asset = assets.get("index.html")
        if asset is None:
            raise web.HTTPNotFound(
                text='{"error": "viewer/static/index.html is missing; reinstall flamewatch"}',
                content_type="application/json",
            )
        return _serve(asset, request)

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        asset = assets.get(name)
        if asset is None:
            # Only names from the fixed table are served: "../x", "%2e%2e/x" and subpaths all land here.
            raise web.HTTPNotFound(
                text='{"error": "no such viewer file; see /static/ names in the page source"}',
                content_type="application/json",
            )
        return _serve(asset, request)

    app.router.add_get("/", index)
    app.router.add_get("/index.html", index)
    app.router.add_get("/static/{name:[A-Za-z0-9_.-]+}", static)
