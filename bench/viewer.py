"""Viewer benchmark: headless Chromium, a real ``flamewatch serve``, 20,000 distinct stacks.

Measures, for the page at ``/`` drawing the profile with up to 20,000 nodes:

- navigation -> drawn flamegraph (goal <= 1 s), median of several loads;
- redraw after a zoom (goal <= 200 ms) and after a filter change (new query + draw, goal <= 200 ms);

and, in the same run and the same browser, a baseline: plotly horizontal bars
(one trace per kind, ``base`` = x offset) drawing the same Flame JSON, plus
the time to load plotly.js itself. Prints the figures and the ratio.

With ``--against REV`` (a git revision, e.g. ``main``) it also loads the page with the
viewer files (``viewer/static/*``) of REV, served through the browser's request routing
from ``git show REV:...``, against the same server in the same browser, alternating the two
pages, and prints navigation -> drawn and zoom redraw for both with their ratio.

Run: ``python bench/viewer.py [--stacks 20000] [--runs 5] [--against main]``
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.server import running_server  # noqa: E402
from tests.viewer import profiles  # noqa: E402
from tests.viewer.conftest import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

PLOTLY_BARS = """
async (url) => {
  const t0 = performance.now();
  await new Promise((ok, bad) => { const s = document.createElement('script');
    s.src = '/static/plotly.min.js'; s.onload = ok; s.onerror = bad; document.head.appendChild(s); });
  const tLoad = performance.now() - t0;
  const d = await (await fetch(url)).json();
  const n = d.nodes, traces = {};
  for (let i = 0; i < n.name.length; i++) {
    const k = d.kinds[n.kind[i]];
    const t = traces[k] || (traces[k] = {type: 'bar', orientation: 'h', name: k, x: [], y: [], base: [],
      text: [], textposition: 'inside', insidetextanchor: 'start', marker: {line: {width: 0}}});
    t.x.push(n.width[i]); t.base.push(n.start[i]); t.y.push(n.depth[i]); t.text.push(d.names[n.name[i]]);
  }
  const div = document.createElement('div'); div.style.width = '1400px'; div.style.height = '700px';
  document.body.appendChild(div);
  const t1 = performance.now();
  await Plotly.newPlot(div, Object.values(traces), {barmode: 'overlay', bargap: 0, showlegend: false,
    margin: {l: 0, r: 0, t: 0, b: 0}, uniformtext: {mode: 'hide', minsize: 8}});
  const tDraw = performance.now() - t1;
  return {load: tLoad, draw: tDraw, nodes: n.name.length};
}
"""


def _flush(page: object) -> None:
    # Force the canvas to finish rasterising before the clock stops.
    page.evaluate("window.__flame.ctx.getImageData(0, 0, 1, 1)")  # type: ignore[attr-defined]


ZOOMS = """() => { const fg = window.__flame, out = [];
  const t = fg.data.nodes.total, tot = t[0];
  let pick = 1;
  for (let i = 1; i < t.length; i++) if (t[i] < tot / 4 && t[i] > tot / 40) { pick = i; break; }
  const timed = (f) => { const a = performance.now(); f(); fg.ctx.getImageData(0, 0, 1, 1);
                          out.push(performance.now() - a); };
  for (let k = 0; k < 5; k++) { timed(() => fg.zoomTo(pick)); timed(() => fg.reset()); }
  return out; }"""


def _static_of(rev: str) -> dict[str, bytes]:
    """The viewer's page files at git revision ``rev`` (name -> bytes)."""
    names = subprocess.run(["git", "-C", str(REPO), "ls-tree", "--name-only", f"{rev}:viewer/static"],
                           capture_output=True, text=True, check=True).stdout.split()
    return {n: subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:viewer/static/{n}"],
                              capture_output=True, check=True).stdout
            for n in names if n.endswith((".js", ".html", ".css"))}


def _ab(browser: object, url: str, files: dict[str, bytes], rounds: int) -> dict[str, dict[str, list[float]]]:
    """Alternate this tree's page and the page made of ``files`` on one server; loads and zooms."""
    out: dict[str, dict[str, list[float]]] = {v: {"load": [], "zoom": []} for v in ("this", "other")}
    ctypes = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}

    def handler(body: bytes, ctype: str) -> object:
        return lambda route: route.fulfill(body=body, content_type=ctype)

    for _ in range(rounds):
        for variant in ("this", "other"):
            page = browser.new_page(viewport={"width": 1400, "height": 900})  # type: ignore[attr-defined]
            if variant == "other":
                for name, body in files.items():
                    ctype = ctypes[Path(name).suffix]
                    if name == "index.html":
                        page.route(lambda u: urllib.parse.urlparse(u).path in ("/", "/index.html"),
                                   handler(body, ctype))
                    else:
                        page.route(f"**/static/{name}", handler(body, ctype))
            for k in range(3):  # the first load of each page warms it
                page.goto(url)
                page.wait_for_selector("body[data-flame=ready]", timeout=60000)
                _flush(page)
                if k:
                    out[variant]["load"].append(page.evaluate("window.__fwTimings.ready"))
                page.wait_for_load_state("networkidle")
            out[variant]["zoom"] += page.evaluate(ZOOMS)
            page.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stacks", type=int, default=20000, help="distinct stacks to ingest (default 20000)")
    ap.add_argument("--max-nodes", type=int, default=20000, help="node budget asked of the server")
    ap.add_argument("--runs", type=int, default=5, help="page loads to take the median of")
    ap.add_argument("--against", metavar="REV", default="",
                    help="also time the viewer page files of git revision REV in the same run")
    args = ap.parse_args(argv)
    other = _static_of(args.against) if args.against else {}
    if not Path(CHROMIUM).exists():
        print(f"chromium not found at {CHROMIUM}: apt-get install chromium", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    text = profiles.big_profile(args.stacks)
    half = text.splitlines()
    with tempfile.TemporaryDirectory(prefix="fw-bench-viewer-") as tmp, running_server(Path(tmp)) as srv:
        now = int(time.time()) // 30 * 30
        # Two namespaces (a filter change has something to narrow), one window each side.
        for ns, lines in (("shop", half[::2]), ("batch", half[1::2])):
            labels = {"namespace": ns, "pod": f"{ns}-0", "node": "node-a", "container": ns,
                      "process": "python"}
            profiles.post(srv.url, "/ingest", {"name": profiles.app_name(labels), "from": str(now - 300),
                                                 "until": str(now - 290), "format": "folded"},
                          ("\n".join(lines) + "\n").encode())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if srv.json("/api/v1/top?from=now-1h&until=now&limit=1")["total"] > 0:
                break
            time.sleep(0.1)
        url = f"{srv.url}/?max={args.max_nodes}&from=now-15m"
        api = f"/api/v1/render?from=now-15m&until=now&format=json&metadata=1&max_nodes={args.max_nodes}"
        # The server alone (no browser): the render query the page makes, warm, and with the
        # namespace filter; separates query time from page time in the figures below.
        direct: dict[str, list[float]] = {}
        shop = urllib.parse.quote('{namespace="shop"}')
        for name, path in (("all", api), ("namespace=shop", f"{api}&query={shop}")):
            urllib.request.urlopen(srv.url + path).read()  # warm the store's stack cache
            for _ in range(args.runs):
                t0 = time.perf_counter()
                urllib.request.urlopen(srv.url + path).read()
                direct.setdefault(name, []).append(1000 * (time.perf_counter() - t0))
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            loads, fetches, draws = [], [], []
            nodes = 0
            for _ in range(args.runs + 1):  # first load warms the server's caches and the browser
                page.goto(url)
                page.wait_for_selector("body[data-flame=ready]", timeout=60000)
                _flush(page)
                t = page.evaluate("window.__fwTimings")
                loads.append(t["ready"])
                fetches.append(t["fetchMs"])
                draws.append(t["drawMs"])
                nodes = t["nodes"]
                # Let the page's follow-up queries (timeline, labels, top) finish: the next load
                # must not queue behind them on the server.
                page.wait_for_load_state("networkidle")
            loads, fetches, draws = loads[1:], fetches[1:], draws[1:]
            drawn = page.evaluate("window.__flame.frames().length")
            # Zoom: click-equivalent zoomTo on a mid-sized frame, and back.
            zooms = page.evaluate(ZOOMS)
            full_draws = page.evaluate("""() => { const fg = window.__flame, out = [];
              fg.setOptions({minPx: 0});
              for (let k = 0; k < 5; k++) {
                const a = performance.now(); fg.draw(); fg.ctx.getImageData(0, 0, 1, 1);
                out.push(performance.now() - a); }
              fg.setOptions({minPx: 0.5}); return out; }""")
            # Filter change: pick namespace=shop through the widget; time until the new graph is drawn.
            filters = []
            for ns in ("shop", "batch"):
                page.goto(url)
                page.wait_for_selector("body[data-flame=ready]", timeout=60000)
                page.wait_for_load_state("networkidle")
                page.locator(".ms[data-label=namespace] > button").click()
                page.wait_for_selector(f".ms[data-label=namespace] .ms-list label:has-text('{ns}')")
                seq = page.evaluate("window.__fwTimings.seq")
                t0 = page.evaluate("performance.now()")
                page.locator(f".ms[data-label=namespace] .ms-list label:has-text('{ns}') input").check()
                page.wait_for_function(f"() => window.__fwTimings.seq > {seq}", timeout=60000)
                t = page.evaluate("window.__fwTimings")
                # Subtract the 250 ms input debounce: the user-visible wait after it is fetch + draw.
                filters.append({"total": t["ready"] - t0 - 250, "fetch": t["fetchMs"], "draw": t["drawMs"]})
            # Baseline in the same browser: plotly bars for the same JSON.
            page.goto(srv.url + "/healthz")  # same origin, no page CSP: a blank stage for plotly
            base = page.evaluate(PLOTLY_BARS, srv.url + api)
            ab = _ab(browser, url, other, max(2, args.runs // 2 + 1)) if other else None
            browser.close()

    med = statistics.median
    load, zoom = med(loads), med(zooms)
    print(f"viewer benchmark: {args.stacks} distinct stacks -> {nodes} flame nodes "
          f"({drawn} wider than 0.5 px drawn), headless Chromium, {args.runs} loads")
    print(f"  navigation -> drawn flamegraph   median {load:7.1f} ms  (server fetch {med(fetches):.1f} ms, "
          f"draw {med(draws):.1f} ms)   goal <= 1000 ms  {'OK' if load <= 1000 else 'MISSED'}")
    for name, ts in direct.items():
        print(f"    server alone: GET /api/v1/render metadata=1 {name:<15} median {med(ts):7.1f} ms  "
              f"(urllib, warm, {len(ts)} runs)")
    client = med([a - b for a, b in zip(loads, fetches, strict=True)])
    print(f"    of which in the browser (page, scripts, parse, draw; no server query) {client:7.1f} ms")
    print(f"  redraw after zoom / reset        median {zoom:7.1f} ms  max {max(zooms):.1f} ms"
          f"   goal <= 200 ms  {'OK' if zoom <= 200 else 'MISSED'}")
    print(f"  full redraw, all {nodes} nodes     median {med(full_draws):7.1f} ms")
    for ns, f in zip(("shop", "batch"), filters, strict=True):
        print(f"  filter change namespace={ns:<6} {f['total']:7.1f} ms after the debounce "
              f"(fetch {f['fetch']:.1f} ms, draw {f['draw']:.1f} ms)   goal <= 200 ms  "
              f"{'OK' if f['total'] <= 200 else 'MISSED'}")
    print(f"  baseline plotly bars ({base['nodes']} nodes): load plotly.js {base['load']:.0f} ms, "
          f"newPlot {base['draw']:.0f} ms")
    print(f"  ratio: plotly bars draw / canvas draw = {base['draw'] / max(med(draws), 0.01):.0f}x; "
          f"plotly (load + draw) / canvas navigation->drawn = {(base['load'] + base['draw']) / load:.1f}x")
    if ab:
        a, b = ab["this"], ab["other"]
        print(f"  page files of this tree vs {args.against} (same server, same browser, alternated, "
              f"{len(a['load'])} loads / {len(a['zoom'])} zooms each):")
        for name, v in (("this tree", a), (args.against, b)):
            print(f"    {name:<12} navigation -> drawn median {med(v['load']):7.1f} ms   "
                  f"zoom / reset redraw median {med(v['zoom']):5.2f} ms")
        print(f"    ratio this / {args.against}: navigation {med(a['load']) / med(b['load']):.2f}x, "
              f"zoom redraw {med(a['zoom']) / max(med(b['zoom']), 0.01):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
