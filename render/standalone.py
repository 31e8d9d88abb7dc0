"""One self-contained, offline HTML page for a Flame JSON (flame or diff).

The page inlines ``viewer/static/flame.js`` (the canvas renderer) and the
JSON, plus a legend, a regex search box with matched-sample stats, an icicle
toggle and a reset button (flame.js draws the tooltip). It fetches
nothing: a Content-Security-Policy forbids every network load, and the JSON is
embedded in a ``<script type="application/json">`` with ``<``, ``>``, ``&``
and the JS line separators escaped as ``\\uXXXX``, so a frame named
``</script><img onerror=...>`` stays data. All page text is set with
``textContent``.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

# The viewer's renderer files are read as data by path (render/ and viewer/ are installed side
# by side); nothing of the viewer is imported, so render stays below it in the layers.
FLAME_JS = Path(__file__).resolve().parents[1] / "viewer" / "static" / "flame.js"
# flame.js formats values with units.js (window.FlameUnits); both are inlined, units first.
UNITS_JS = FLAME_JS.with_name("units.js")

# Colours follow the team palette (docs/architecture.md "Colours").
LEGEND_FLAME = (("metadata", "#4796c1"), ("user", "#31d0f3"), ("kernel", "#98df8a"), ("other", "#c8c8c8"))
LEGEND_DIFF = (("grew", "#e0443c"), ("shrank", "#3c78e0"), ("unchanged", "#d8d8d8"))

_JSON_ESCAPES = {
    ord("<"): "\\u003c",
    ord(">"): "\\u003e",
    ord("&"): "\\u0026",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def script_json(data: Any) -> str:
    """JSON safe to place inside a ``<script>`` element (no ``</script>``, no ``<!--``)."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).translate(_JSON_ESCAPES)


def flame_js() -> str:
    """The renderer source (units.js then flame.js); FileNotFoundError naming the file if the
    viewer has not shipped it."""
    parts = []
    for path in (UNITS_JS, FLAME_JS):
        try:
            parts.append(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{path} is missing: the standalone page needs the viewer's canvas renderer "
                "(reinstall flamewatch with its viewer/static files)"
            ) from None
    src = "\n".join(parts)
    # An inline script ends at the first "</script" whatever the JS means; "<\/" is the same JS.
    return src.replace("</script", "<\\/script").replace("</SCRIPT", "<\\/SCRIPT")


_CSS = """
*{box-sizing:border-box}
body{margin:0;font:13px system-ui,sans-serif;color:#222;background:#fff}
header{display:flex;flex-wrap:wrap;gap:12px;align-items:center;padding:8px 12px;border-bottom:1px solid #ddd}
h1{font-size:15px;margin:0 12px 0 0}
.legend{display:flex;gap:10px;align-items:center}
.sw{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:4px;vertical-align:-2px}
#search{width:16em;padding:3px 6px}
#search.bad{outline:2px solid #e0443c}
#stats,#summary{color:#555}
#flame{position:relative;width:100%;min-height:240px}
"""

_JS = """
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("flame-data").textContent);
  var stats = document.getElementById("stats");
  // No onHover callback: flame.js then shows its own textContent tooltip.
  var fg = new FlameGraph(document.getElementById("flame"), {});
  window.flamewatchGraph = fg;
  fg.setData(data);
  if (data.type === "diff") fg.setOptions({diffMode: data.mode});
  var box = document.getElementById("search");
  function updateSearch() {
    var q = box.value;
    fg.setOptions({search: q});
    var s = fg.searchStats();
    box.classList.toggle("bad", !!s.error);
    if (s.error) { stats.textContent = "invalid regex: " + s.error; return; }
    stats.textContent = q ? "matched " + s.matched + " of " + s.total + " samples (" +
      (100 * (s.share || 0)).toFixed(2) + "%)" : "";
  }
  box.addEventListener("input", updateSearch);
  document.getElementById("reset").addEventListener("click", function () {
    box.value = ""; updateSearch(); fg.reset();
  });
  document.getElementById("invert").addEventListener("change", function (e) {
    fg.setOptions({invert: e.target.checked});
  });
})();
"""


def _legend(items: tuple[tuple[str, str], ...]) -> str:
    return "".join(
        f'<span><span class="sw" style="background:{colour}"></span>{html.escape(label)}</span>'
        for label, colour in items
    )


def standalone_html(data: dict[str, Any], title: str) -> str:
    """A complete offline HTML page drawing ``data`` (flame or diff JSON) with flame.js."""
    is_diff = data.get("type") == "diff"
    legend = _legend(LEGEND_DIFF if is_diff else LEGEND_FLAME)
    # The stored unit of the answer (samples, bytes, count, nanoseconds); flame.js's tooltip
    # shows values in it through units.js.
    unit = str(data.get("unit") or "samples")
    if is_diff:
        summary = (
            f"{data.get('mode', 'share')} diff: base {data.get('base_sum', 0)} {unit}, "
            f"compare {data.get('compare_sum', 0)} {unit}; width = compare + base scaled"
        )
    else:
        summary = f"{data.get('total', 0)} {unit}"
    pruned = data.get("pruned") or {}
    if pruned.get("nodes_before", 0) > pruned.get("nodes_after", 0):
        summary += f"; {pruned['nodes_before']} nodes pruned to {pruned['nodes_after']}"
    cut = pruned.get("cut") or {}
    if cut.get("share"):  # the heaviest frames folded into "other", and from which depth
        summary += f"; cut: frames of {100 * float(cut['share']):.1f}% from depth {int(cut.get('depth', 0))}"
    t = html.escape(title)
    csp = (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "img-src data: blob:; connect-src 'none'"
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{t}</title>
<style>{_CSS}</style>
</head>
<body>
<header>
<h1>{t}</h1>
<span class="legend">{legend}</span>
<input id="search" type="search" placeholder="search (regex)" aria-label="search frames by regex">
<span id="stats"></span>
<label><input id="invert" type="checkbox"> icicle</label>
<button id="reset" type="button">reset zoom</button>
<span id="summary">{html.escape(summary)}</span>
</header>
<div id="flame"></div>
<script type="application/json" id="flame-data">{script_json(data)}</script>
<script>{flame_js()}</script>
<script>{_JS}</script>
</body>
</html>
"""
