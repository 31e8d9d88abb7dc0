/*
 * flamewatch canvas flamegraph renderer: window.FlameGraph.
 *
 * Draws Flame JSON (type "flame") and diff JSON (type "diff") as described in
 * docs/architecture.md on one <canvas>. Plain script, no modules, no build
 * step, so `flamewatch render` can inline it into an offline page.
 *
 * Speed: the JSON is columnar and pre-order, so drawing is one pass over typed
 * arrays. Subtrees narrower than `minPx` are skipped whole (children are never
 * wider than their parent), rectangles are batched into one path per colour,
 * and labels are cut with a monospace advance measured once, not per frame.
 *
 * Safety: frame names are untrusted. They only ever reach the canvas
 * (fillText) or an element's textContent, never innerHTML.
 */
(function (global) {
  "use strict";

  var KIND_ORDER = ["user", "kernel", "metadata", "other"];

  // Two end points per kind; frames get one of SHADES shades between them by
  // a hash of their name, so neighbours stay distinguishable while the kind
  // reads at a glance.
  var KIND_RANGE = {
    metadata: ["#4796c1", "#3a7fa8"],
    user: ["#31d0f3", "#00b1d8"],
    kernel: ["#98df8a", "#90cb84"],
    other: ["#c8c8c8", "#b4b4b4"]
  };
  var SHADES = 4;
  var SEARCH_COLOUR = "#e55bd0";
  var HIGHLIGHT_COLOUR = "#ffb000";
  var DIFF_SAME = [216, 216, 216]; // #d8d8d8
  var DIFF_RED = [224, 68, 60];    // #e0443c
  var DIFF_BLUE = [60, 120, 224];  // #3c78e0
  var DIFF_STEPS = 12;

  var COLORS = {
    metadata: "#4796c1", user: "#31d0f3", kernel: "#98df8a", other: "#c8c8c8",
    grew: "#e0443c", shrank: "#3c78e0", unchanged: "#d8d8d8",
    search: SEARCH_COLOUR, highlight: HIGHLIGHT_COLOUR
  };

  function hexRgb(h) {
    return [parseInt(h.substr(1, 2), 16), parseInt(h.substr(3, 2), 16), parseInt(h.substr(5, 2), 16)];
  }
  function rgbStr(c) {
    return "rgb(" + Math.round(c[0]) + "," + Math.round(c[1]) + "," + Math.round(c[2]) + ")";
  }
  function mix(a, b, t) {
    return [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t];
  }
  function luminance(c) {
    return (0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]) / 255;
  }
  function hashName(s) {
    var h = 2166136261;
    for (var i = 0; i < s.length; i++) {
      h ^= s.charCodeAt(i);
      h = Math.imul(h, 16777619);
    }
    return h >>> 0;
  }

  /*
   * Palette: colour id -> fill string and text colour. Ids:
   *   kind k, shade s        -> k * SHADES + s          (0 .. 4*SHADES-1)
   *   diff red/blue step n   -> base + side * DIFF_STEPS + n
   *   diff unchanged, search, highlight -> fixed ids after that.
   */
  var PALETTE = [];
  var TEXT_DARK = [];
  (function buildPalette() {
    KIND_ORDER.forEach(function (k) {
      var r = KIND_RANGE[k], a = hexRgb(r[0]), b = hexRgb(r[1]);
      for (var s = 0; s < SHADES; s++) {
        var c = mix(a, b, s / (SHADES - 1));
        PALETTE.push(rgbStr(c));
        TEXT_DARK.push(k !== "metadata");
      }
    });
    [DIFF_RED, DIFF_BLUE].forEach(function (full) {
      for (var n = 0; n < DIFF_STEPS; n++) {
        var c = mix(DIFF_SAME, full, (n + 1) / DIFF_STEPS);
        PALETTE.push(rgbStr(c));
        TEXT_DARK.push(luminance(c) > 0.55);
      }
    });
    PALETTE.push(rgbStr(DIFF_SAME)); TEXT_DARK.push(true);
    PALETTE.push(SEARCH_COLOUR); TEXT_DARK.push(true);
    PALETTE.push(HIGHLIGHT_COLOUR); TEXT_DARK.push(true);
  })();
  var DIFF_BASE = KIND_ORDER.length * SHADES;
  var C_SAME = DIFF_BASE + 2 * DIFF_STEPS;
  var C_SEARCH = C_SAME + 1;
  var C_HIGHLIGHT = C_SAME + 2;
  var NCOL = PALETTE.length;

  var ROW = 18;            // CSS px per depth level
  var FONT_PX = 12;
  var FONT = FONT_PX + "px \"DejaVu Sans Mono\", Menlo, Consolas, monospace";
  var PAD = 3;             // text padding inside a frame

  // Values, shares and units come from units.js (window.FlameUnits), loaded first.
  var U = global.FlameUnits;
  if (!U) throw new Error("flame.js needs units.js (window.FlameUnits) loaded before it");
  var pct = U.pct;

  /**
   * new FlameGraph(container, {onZoom(i), onHover(i, event), onSelect(name, i)})
   * The container gets a canvas (and an overlay for the hover outline).
   */
  function FlameGraph(container, callbacks) {
    if (!(this instanceof FlameGraph)) return new FlameGraph(container, callbacks);
    if (!container || !container.appendChild) throw new Error("FlameGraph: container must be a DOM element");
    this.container = container;
    this.cb = callbacks || {};
    this.options = {
      invert: false, diffMode: null, search: "", highlight: "", minPx: 0.5,
      // Built-in tooltip unless the embedder handles hover itself.
      tooltip: !this.cb.onHover
    };
    this.data = null;
    this.zoom = 0;
    this.hover = -1;
    this.lastDrawMs = 0;
    this._searchError = null;

    var doc = container.ownerDocument || document;
    if (getComputedStyle(container).position === "static") container.style.position = "relative";
    var canvas = doc.createElement("canvas");
    canvas.className = "flamegraph-canvas";
    canvas.style.display = "block";
    canvas.style.width = "100%";
    canvas.setAttribute("tabindex", "0");
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", "flame graph");
    var overlay = doc.createElement("canvas");
    overlay.style.position = "absolute";
    overlay.style.left = "0";
    overlay.style.top = "0";
    overlay.style.pointerEvents = "none";
    container.appendChild(canvas);
    container.appendChild(overlay);
    this.canvas = canvas;
    this.overlay = overlay;
    this.ctx = canvas.getContext("2d");
    this.octx = overlay.getContext("2d");
    this.tip = null;

    var self = this;
    canvas.addEventListener("mousemove", function (e) { self._onMove(e); });
    canvas.addEventListener("mouseleave", function () { self._setHover(-1, null); });
    canvas.addEventListener("click", function (e) { self._onClick(e); });
    canvas.addEventListener("keydown", function (e) {
      if (e.key === "Escape") self.reset();
    });
    if (typeof ResizeObserver !== "undefined") {
      var lastW = -1;
      this._ro = new ResizeObserver(function () {
        var w = container.clientWidth;
        if (w !== lastW) { lastW = w; self.draw(); }
      });
      this._ro.observe(container);
    } else {
      global.addEventListener("resize", function () { self.draw(); });
    }
  }

  FlameGraph.COLORS = COLORS;
  FlameGraph.KINDS = KIND_ORDER.slice();
  FlameGraph.ROW_HEIGHT = ROW;

  /** Load a Flame JSON or diff JSON document and draw it (zoom resets). */
  FlameGraph.prototype.setData = function (json) {
    if (json && (json.type !== "flame" && json.type !== "diff")) {
      throw new Error("FlameGraph.setData: expected Flame JSON with type 'flame' or 'diff', got " +
        JSON.stringify(json.type));
    }
    this.data = json || null;
    this.zoom = 0;
    this.hover = -1;
    this._prepare();
    this._recolour();
    this.draw();
  };

  // Derived arrays: typed copies, subtree ends and parents from the pre-order depths.
  FlameGraph.prototype._prepare = function () {
    var d = this.data;
    if (!d || !d.nodes || !d.nodes.name || !d.nodes.name.length) {
      this.n = 0;
      return;
    }
    var nd = d.nodes, n = nd.name.length;
    this.n = n;
    this.isDiff = d.type === "diff";
    this.nName = Int32Array.from(nd.name);
    this.nDepth = Int32Array.from(nd.depth);
    this.nStart = Float64Array.from(nd.start);
    this.nWidth = Float64Array.from(nd.width);
    var kinds = d.kinds || KIND_ORDER;
    // Map the document's kind indices to ours, whatever order it uses.
    var kmap = kinds.map(function (k) {
      var j = KIND_ORDER.indexOf(k);
      return j < 0 ? 3 : j;
    });
    var nKind = new Uint8Array(n);
    for (var i = 0; i < n; i++) nKind[i] = kmap[nd.kind[i]] !== undefined ? kmap[nd.kind[i]] : 3;
    this.nKind = nKind;
    var parent = new Int32Array(n), end = new Int32Array(n);
    var stack = [];
    var maxDepth = 0;
    for (i = 0; i < n; i++) {
      var dep = this.nDepth[i];
      if (dep > maxDepth) maxDepth = dep;
      while (stack.length && this.nDepth[stack[stack.length - 1]] >= dep) end[stack.pop()] = i;
      parent[i] = stack.length ? stack[stack.length - 1] : -1;
      stack.push(i);
    }
    while (stack.length) end[stack.pop()] = n;
    this.nParent = parent;
    this.nEnd = end;
    this.maxDepth = typeof d.max_depth === "number" ? Math.max(d.max_depth, maxDepth) : maxDepth;
    // Shade per name, computed once per distinct name.
    var shadeOfName = new Uint8Array(d.names.length);
    for (i = 0; i < d.names.length; i++) shadeOfName[i] = hashName(String(d.names[i])) % SHADES;
    this.shadeOfName = shadeOfName;
    this._searchMatch = null;
  };

  /** Change options; any of invert, diffMode, search, highlight, minPx, tooltip. Redraws. */
  FlameGraph.prototype.setOptions = function (opts) {
    opts = opts || {};
    var o = this.options;
    for (var k in opts) {
      if (Object.prototype.hasOwnProperty.call(opts, k)) o[k] = opts[k];
    }
    if (!o.tooltip && this.tip) this.tip.style.display = "none";
    this._recolour();
    this.draw();
  };

  /** Highlight every frame with exactly this name (e.g. from a table click); "" clears. */
  FlameGraph.prototype.highlight = function (name) {
    this.setOptions({highlight: name || ""});
  };

  // Per-node colour ids for the current data and options.
  FlameGraph.prototype._recolour = function () {
    if (!this.n) return;
    var d = this.data, nd = d.nodes, n = this.n, o = this.options;
    var col = this.nCol && this.nCol.length === n ? this.nCol : new Uint8Array(n);
    var i;
    if (this.isDiff) {
      var mode = o.diffMode || d.mode || "share";
      var bt = nd.base_total, ct = nd.total;
      var bsum = d.base_sum || 0, csum = d.compare_sum || d.total || 0;
      var delta = new Float64Array(n), maxAbs = 0;
      for (i = 0; i < n; i++) {
        var dv;
        if (mode === "absolute") dv = ct[i] - bt[i];
        else dv = (csum ? ct[i] / csum : 0) - (bsum ? bt[i] / bsum : 0);
        delta[i] = dv;
        if (i > 0 && Math.abs(dv) > maxAbs) maxAbs = Math.abs(dv);
      }
      // Intensity relative to the largest change, with a floor so a diff of
      // two nearly equal windows stays pale instead of painting noise bright.
      var floor = mode === "absolute" ? 0.01 * Math.max(bsum, csum, 1) : 0.01;
      var ref = Math.max(maxAbs, floor);
      var tiny = mode === "absolute" ? 0.5 : 1e-4;
      for (i = 0; i < n; i++) {
        var a = Math.abs(delta[i]);
        if (a < tiny) { col[i] = C_SAME; continue; }
        var step = Math.min(DIFF_STEPS - 1, Math.floor((a / ref) * DIFF_STEPS));
        col[i] = DIFF_BASE + (delta[i] > 0 ? 0 : DIFF_STEPS) + step;
      }
      this.delta = delta;
      this.diffModeUsed = mode;
    } else {
      for (i = 0; i < n; i++) col[i] = this.nKind[i] * SHADES + this.shadeOfName[this.nName[i]];
    }
    // Search and highlight paint over the kind / diff colour.
    var names = d.names;
    this._searchError = null;
    this._searchMatch = null;
    if (o.search) {
      var re = null;
      try { re = new RegExp(o.search); } catch (e) { this._searchError = String(e.message || e); }
      if (re) {
        var m = new Uint8Array(names.length);
        for (i = 0; i < names.length; i++) m[i] = re.test(String(names[i])) ? 1 : 0;
        this._searchMatch = m;
        for (i = 0; i < n; i++) if (m[this.nName[i]]) col[i] = C_SEARCH;
      }
    }
    if (o.highlight) {
      for (i = 0; i < n; i++) if (String(names[this.nName[i]]) === o.highlight) col[i] = C_HIGHLIGHT;
    }
    this.nCol = col;
  };

  /** {matched, total, share} of the current search; matches inside matches count once. */
  FlameGraph.prototype.searchStats = function () {
    var total = this.n ? this.data.nodes.total[0] : 0;
    if (!this.n || !this._searchMatch) return {matched: 0, total: total, share: 0, error: this._searchError};
    var m = this._searchMatch, tot = this.data.nodes.total, matched = 0, skip = 0;
    for (var i = 0; i < this.n; i++) {
      if (i < skip) continue;
      if (m[this.nName[i]]) { matched += tot[i]; skip = this.nEnd[i]; }
    }
    return {matched: matched, total: total, share: total ? matched / total : 0, error: this._searchError};
  };

  /** Zoom so that node i fills the width; its ancestors stay visible. */
  FlameGraph.prototype.zoomTo = function (i) {
    if (!this.n) return;
    i = Math.max(0, Math.min(this.n - 1, i | 0));
    this.zoom = i;
    this.draw();
    if (this.cb.onZoom) this.cb.onZoom(i);
  };

  /** Back to the whole profile. */
  FlameGraph.prototype.reset = function () {
    this.zoomTo(0);
  };

  /** The drawing as a PNG data URL. */
  FlameGraph.prototype.toPNG = function () {
    return this.canvas.toDataURL("image/png");
  };

  FlameGraph.prototype._height = function () {
    return (this.n ? this.maxDepth + 1 : 1) * ROW;
  };

  FlameGraph.prototype._rowY = function (depth, h) {
    return this.options.invert ? depth * ROW : h - (depth + 1) * ROW;
  };

  /** Redraw at the current size, zoom and options. Returns the time taken in ms. */
  FlameGraph.prototype.draw = function () {
    var t0 = performance.now();
    var ctx = this._resize();
    if (!this.n) {
      ctx.fillStyle = "#666";
      ctx.textBaseline = "middle";
      ctx.fillText(this.data ? "no samples" : "", 8, this.cssH / 2);
      this.drawn = {count: 0};
      this.lastDrawMs = performance.now() - t0;
      return this.lastDrawMs;
    }
    var vis = this._visible();
    this._fillRects(vis);
    this._drawLabels(vis);
    this.drawn = vis;
    if (this.hover >= 0) this._drawHover();
    this.lastDrawMs = performance.now() - t0;
    return this.lastDrawMs;
  };

  /** Size both canvases to the container at the device pixel ratio, clear them; the 2D context. */
  FlameGraph.prototype._resize = function () {
    var cssW = this.container.clientWidth || 800;
    var cssH = this._height();
    var dpr = global.devicePixelRatio || 1;
    var canvas = this.canvas, ctx = this.ctx;
    var pw = Math.round(cssW * dpr), ph = Math.round(cssH * dpr);
    if (canvas.width !== pw || canvas.height !== ph) {
      canvas.width = pw;
      canvas.height = ph;
      canvas.style.height = cssH + "px";
      this.overlay.width = pw;
      this.overlay.height = ph;
      this.overlay.style.width = cssW + "px";
      this.overlay.style.height = cssH + "px";
    }
    this.cssW = cssW;
    this.cssH = cssH;
    this.dpr = dpr;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, cssW, cssH);
    this.octx.setTransform(dpr, 0, 0, dpr, 0, 0);
    this.octx.clearRect(0, 0, cssW, cssH);
    ctx.font = FONT;
    if (!this.charW) this.charW = ctx.measureText("MMMMMMMMMM").width / 10 || 7;
    return ctx;
  };

  /** The frames visible at the current zoom: {count, idx, x, w} (typed arrays, CSS px). */
  FlameGraph.prototype._visible = function () {
    var n = this.n, z = this.zoom, minPx = this.options.minPx || 0, cssW = this.cssW;
    var start = this.nStart, width = this.nWidth, end = this.nEnd;
    var x0 = start[z], span = width[z] || 1;
    var scale = cssW / span;
    var vIdx = new Int32Array(n), vX = new Float32Array(n), vW = new Float32Array(n);
    var cnt = 0;
    // Ancestors of the zoomed frame fill the width.
    var p = this.nParent[z];
    while (p >= 0) {
      vIdx[cnt] = p; vX[cnt] = 0; vW[cnt] = cssW; cnt++;
      p = this.nParent[p];
    }
    var i = z, stop = end[z];
    while (i < stop) {
      var w = width[i] * scale;
      if (w < minPx) { i = end[i]; continue; }  // children are narrower still
      var x = (start[i] - x0) * scale;
      if (x >= cssW || x + w <= 0) { i = end[i]; continue; }
      vIdx[cnt] = i; vX[cnt] = x; vW[cnt] = w; cnt++;
      i++;
    }
    return {count: cnt, idx: vIdx, x: vX, w: vW};
  };

  /** Fill the visible rectangles, grouped by colour (counting sort): one path and one fill each. */
  FlameGraph.prototype._fillRects = function (vis) {
    var ctx = this.ctx, col = this.nCol, depth = this.nDepth, cnt = vis.count;
    var vIdx = vis.idx, vX = vis.x, vW = vis.w;
    var counts = new Int32Array(NCOL + 1);
    for (var k = 0; k < cnt; k++) counts[col[vIdx[k]] + 1]++;
    for (var c = 0; c < NCOL; c++) counts[c + 1] += counts[c];
    var order = new Int32Array(cnt), pos = counts.slice(0, NCOL);
    for (k = 0; k < cnt; k++) order[pos[col[vIdx[k]]]++] = k;
    var invert = this.options.invert, h = this.cssH;
    for (c = 0; c < NCOL; c++) {
      var a = counts[c], b = counts[c + 1];
      if (a === b) continue;
      ctx.beginPath();
      for (var q = a; q < b; q++) {
        k = order[q];
        var y = invert ? depth[vIdx[k]] * ROW : h - (depth[vIdx[k]] + 1) * ROW;
        // 1 px gap on the right and top so neighbours separate; tiny frames keep their sliver.
        var ww = vW[k] > 2 ? vW[k] - 1 : vW[k];
        ctx.rect(vX[k], y + 1, ww, ROW - 1);
      }
      ctx.fillStyle = PALETTE[c];
      ctx.fill();
    }
  };

  /** Labels: only frames wide enough for three characters, cut with a fixed advance. */
  FlameGraph.prototype._drawLabels = function (vis) {
    var ctx = this.ctx, col = this.nCol, depth = this.nDepth, names = this.data.names;
    var vIdx = vis.idx, vX = vis.x, vW = vis.w, cssW = this.cssW, h = this.cssH, invert = this.options.invert;
    var charW = this.charW, minText = charW * 3 + 2 * PAD;
    ctx.textBaseline = "middle";
    for (var pass = 0; pass < 2; pass++) {
      ctx.fillStyle = pass === 0 ? "#111" : "#fff";
      var wantDark = pass === 0;
      for (var k = 0; k < vis.count; k++) {
        if (vW[k] < minText) continue;
        var j = vIdx[k];
        if (TEXT_DARK[col[j]] !== wantDark) continue;
        var name = String(names[this.nName[j]]);
        var xs = Math.max(vX[k], 0), we = Math.min(vX[k] + vW[k], cssW) - xs;
        var fit = Math.floor((we - 2 * PAD) / charW);
        if (fit < 3) continue;
        var s = name.length <= fit ? name : name.slice(0, fit - 2) + "..";
        var yy = invert ? depth[j] * ROW : h - (depth[j] + 1) * ROW;
        ctx.fillText(s, xs + PAD, yy + 1 + ROW / 2);
      }
    }
  };

  /** Index of the frame drawn at CSS pixel (x, y) of the canvas, or -1. */
  FlameGraph.prototype.nodeAt = function (x, y) {
    var dr = this.drawn;
    if (!dr || !dr.count) return -1;
    var dep = this.options.invert ? Math.floor(y / ROW) : Math.floor((this.cssH - y) / ROW);
    for (var k = 0; k < dr.count; k++) {
      var j = dr.idx[k];
      if (this.nDepth[j] === dep && x >= dr.x[k] && x < dr.x[k] + dr.w[k]) return j;
    }
    return -1;
  };

  /**
   * Read-only list of the frames last drawn: {index, name, kind, x, y, width,
   * height, color}, CSS px relative to the canvas. For tests and debugging.
   */
  FlameGraph.prototype.frames = function () {
    var out = [], dr = this.drawn;
    if (!dr || !dr.count) return out;
    for (var k = 0; k < dr.count; k++) {
      var j = dr.idx[k];
      out.push({
        index: j,
        name: String(this.data.names[this.nName[j]]),
        kind: KIND_ORDER[this.nKind[j]],
        depth: this.nDepth[j],
        x: dr.x[k], y: this._rowY(this.nDepth[j], this.cssH) + 1, width: dr.w[k], height: ROW - 1,
        color: PALETTE[this.nCol[j]]
      });
    }
    return out;
  };

  /** The unit of the loaded data ({unit, periodNs, kind}, see units.js). */
  FlameGraph.prototype.unit = function () {
    return U.unitOf(this.data);
  };

  /** The file:line of node i when the data is by line and it is known, else "". */
  FlameGraph.prototype.location = function (i) {
    var locs = this.data && this.data.locations;
    if (!locs || i < 0 || i >= this.n) return "";
    return String(locs[this.nName[i]] || "");
  };

  /**
   * The URL of node i's source line when the data names a repository and a git ref (labels
   * service_repository and service_git_ref: {repo}/blob/{ref}/{file}#L{line}, the file made
   * relative to service_root_path when under it), else "". Only http(s) repositories.
   */
  FlameGraph.prototype.sourceURL = function (i) {
    var src = this.data && this.data.source, loc = this.location(i);
    if (!src || !loc || !/^https?:\/\//.test(String(src.repository))) return "";
    var cut = loc.lastIndexOf(":"), file = cut > 0 ? loc.slice(0, cut) : loc, line = cut > 0 ? loc.slice(cut + 1) : "";
    if (!/^\d+$/.test(line)) { file = loc; line = ""; }
    var root = String(src.root_path || "");
    if (root && file.indexOf(root) === 0) file = file.slice(root.length);
    file = file.replace(/^\/+/, "");
    if (!file) return "";
    var repo = String(src.repository).replace(/\/+$/, "").replace(/\.git$/, "");
    var seg = function (p) { return p.split("/").map(encodeURIComponent).join("/"); }; // a ref may hold "/"
    return repo + "/blob/" + seg(String(src.ref)) + "/" + seg(file) + (line ? "#L" + line : "");
  };

  /** Tooltip lines for node i (plain strings; the caller puts them in textContent). Values in the data's unit. */
  FlameGraph.prototype.describe = function (i) {
    if (!this.n || i < 0 || i >= this.n) return [];
    var d = this.data, nd = d.nodes, u = U.unitOf(d);
    var name = String(d.names[this.nName[i]]), kind = KIND_ORDER[this.nKind[i]];
    var label = nd.label && nd.label[i] ? String(nd.label[i]) : "";
    var lines = [label ? label + ": " + name : name];
    var loc = this.location(i), src = this.sourceURL(i);
    if (loc) lines.push("at: " + loc);
    if (src) lines.push("source: " + src);
    lines.push("kind: " + kind);
    if (this.isDiff) {
      var bsum = d.base_sum || 0, csum = d.compare_sum || d.total || 0;
      var bt = nd.base_total[i], ct = nd.total[i];
      lines.push("base: " + U.format(bt, u) + " (" + pct(bt, bsum) + ")  self " + U.format(nd.base_self[i], u) +
        U.samplesNote(bt, u));
      lines.push("compare: " + U.format(ct, u) + " (" + pct(ct, csum) + ")  self " + U.format(nd.self[i], u) +
        U.samplesNote(ct, u));
      if (this.diffModeUsed === "absolute") {
        lines.push("delta: " + U.formatDelta(ct - bt, u));
      } else {
        var ds = 100 * ((csum ? ct / csum : 0) - (bsum ? bt / bsum : 0));
        lines.push("delta: " + (ds >= 0 ? "+" : "") + ds.toFixed(2) + " pp of the whole");
      }
    } else {
      var tot = nd.total[0] || d.total || 0;
      lines.push("total: " + U.format(nd.total[i], u) + " (" + pct(nd.total[i], tot) + ")" + U.samplesNote(nd.total[i], u));
      lines.push("self: " + U.format(nd.self[i], u) + " (" + pct(nd.self[i], tot) + ")" + U.samplesNote(nd.self[i], u));
    }
    return lines;
  };

  FlameGraph.prototype._pos = function (e) {
    var r = this.canvas.getBoundingClientRect();
    return {x: e.clientX - r.left, y: e.clientY - r.top};
  };

  FlameGraph.prototype._onMove = function (e) {
    var p = this._pos(e);
    this._setHover(this.nodeAt(p.x, p.y), e);
  };

  FlameGraph.prototype._setHover = function (i, e) {
    var changed = i !== this.hover;
    this.hover = i;
    if (changed) {
      this.octx.clearRect(0, 0, this.cssW || 0, this.cssH || 0);
      if (i >= 0) this._drawHover();
      this.canvas.style.cursor = i >= 0 ? "pointer" : "default";
    }
    if (this.options.tooltip) this._showTip(i, e);
    if (this.cb.onHover && (changed || i >= 0)) this.cb.onHover(i, e);
  };

  FlameGraph.prototype._drawHover = function () {
    var dr = this.drawn, i = this.hover, octx = this.octx;
    octx.clearRect(0, 0, this.cssW, this.cssH);
    for (var k = 0; k < dr.count; k++) {
      if (dr.idx[k] !== i) continue;
      var y = this._rowY(this.nDepth[i], this.cssH) + 1;
      octx.strokeStyle = "#222";
      octx.lineWidth = 1.5;
      octx.strokeRect(dr.x[k] + 0.75, y + 0.75, Math.max(dr.w[k] - 2.5, 1), ROW - 2.5);
      return;
    }
  };

  FlameGraph.prototype._showTip = function (i, e) {
    var doc = this.container.ownerDocument || document;
    if (!this.tip) {
      var t = doc.createElement("div");
      t.className = "flamegraph-tip";
      var st = t.style;
      st.position = "fixed"; st.pointerEvents = "none"; st.zIndex = "1000";
      st.background = "rgba(255,255,250,0.97)"; st.border = "1px solid #aaa"; st.borderRadius = "3px";
      st.padding = "4px 7px"; st.font = "12px ui-monospace, \"DejaVu Sans Mono\", monospace";
      st.whiteSpace = "pre"; st.maxWidth = "70vw"; st.overflow = "hidden"; st.display = "none";
      st.boxShadow = "0 2px 6px rgba(0,0,0,0.15)"; st.color = "#111";
      doc.body.appendChild(t);
      this.tip = t;
    }
    if (i < 0 || !e) { this.tip.style.display = "none"; return; }
    this.tip.textContent = this.describe(i).join("\n");
    this.tip.style.display = "block";
    var vw = global.innerWidth, tw = this.tip.offsetWidth, th = this.tip.offsetHeight;
    var left = e.clientX + 14, top = e.clientY + 16;
    if (left + tw > vw - 4) left = Math.max(4, e.clientX - tw - 14);
    if (top + th > global.innerHeight - 4) top = Math.max(4, e.clientY - th - 10);
    this.tip.style.left = left + "px";
    this.tip.style.top = top + "px";
  };

  FlameGraph.prototype._onClick = function (e) {
    var p = this._pos(e), i = this.nodeAt(p.x, p.y);
    if (i < 0) return;
    if (this.cb.onSelect) this.cb.onSelect(String(this.data.names[this.nName[i]]), i);
    // Clicking the zoomed frame again (or the root) zooms back out one level / resets.
    if (i === this.zoom && i !== 0) this.zoomTo(this.nParent[i] >= 0 ? this.nParent[i] : 0);
    else this.zoomTo(i);
  };

  /** Remove the canvas, overlay and tooltip. */
  FlameGraph.prototype.destroy = function () {
    if (this._ro) this._ro.disconnect();
    if (this.tip && this.tip.parentNode) this.tip.parentNode.removeChild(this.tip);
    this.canvas.remove();
    this.overlay.remove();
  };

  global.FlameGraph = FlameGraph;
})(typeof window !== "undefined" ? window : this);
