/*
 * flamewatch viewer page. Talks to the aggregator only through /api/v1/*.
 *
 * Order of work on load: read the view state from the URL, fetch the Flame
 * JSON and paint it on the canvas, and only then fetch plotly.js (for the
 * timeline), label values and tables. Frame names and label values are
 * untrusted: they are only ever set with textContent or drawn on a canvas.
 */
(function () {
  "use strict";

  // pyroscope_spy: the producer filter; naming one shows its series even where the aggregator would
  // prefer the agent's (docs/aggregator.md, "Producers").
  var LABELS = ["namespace", "pod", "container", "node", "service_name", "pyroscope_spy"];
  var PRESETS = {"5m": "now-5m", "15m": "now-15m", "1h": "now-1h", "6h": "now-6h", "24h": "now-24h",
    "7d": "now-7d"};
  var TOP_LIMIT = 500;
  // The API's default profile type (docs/architecture.md); replaced by the server's "default".
  var DEFAULT_TYPE = "process_cpu:cpu:nanoseconds:cpu:nanoseconds";
  var U = window.FlameUnits; // units.js: one formatter for the page and the renderer

  // ------------------------------------------------------------------ state

  var DEFAULTS = {
    mode: "flame", from: "now-1h", until: "now", sel: "", gb: "namespace",
    meta: true, line: false, inv: false, search: "", hl: "", auto: false, every: 30,
    bfrom: "", buntil: "", cfrom: "", cuntil: "", bsel: "", csel: "", dmode: "share",
    tab: "top", fn: "", rx: false, focus: "", span: "", sptype: "", rname: "", sort: "self", zoom: "", max: "", type: ""
  };
  var state = {};
  var filters = {}; // label -> [values]

  function readURL() {
    var q = new URLSearchParams(location.search);
    Object.keys(DEFAULTS).forEach(function (k) {
      var d = DEFAULTS[k];
      if (!q.has(k)) { state[k] = d; return; }
      var v = q.get(k);
      if (typeof d === "boolean") state[k] = v === "1" || v === "true";
      else if (typeof d === "number") state[k] = Number(v) || d;
      else state[k] = v;
    });
    if (state.mode !== "diff" && state.mode !== "requests") state.mode = "flame";
    if (state.dmode !== "absolute") state.dmode = "share";
    LABELS.forEach(function (l) { filters[l] = q.getAll(l).filter(Boolean); });
  }

  function writeURL() {
    var q = new URLSearchParams();
    Object.keys(DEFAULTS).forEach(function (k) {
      var v = state[k], d = DEFAULTS[k];
      if (v === d) return;
      q.set(k, typeof d === "boolean" ? (v ? "1" : "0") : String(v));
    });
    LABELS.forEach(function (l) { (filters[l] || []).forEach(function (v) { q.append(l, v); }); });
    var s = q.toString();
    history.replaceState(null, "", location.pathname + (s ? "?" + s : ""));
  }

  // ------------------------------------------------------------------ helpers

  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
  var fmtInt = U.fmtInt, pct = U.pct;

  // ------------------------------------------------------------------ profile types

  var typesSupported = null; // null: not asked yet; false: the server has no /api/v1/profile_types
  var profileTypes = [];     // [{id, label, unit, ...}] present in the range
  var serverDefault = DEFAULT_TYPE;

  /** The profile type every query asks for: the picker's, else the server's default (CPU). */
  function ptype() { return state.type || serverDefault; }

  /** Adds profile_type to a query's parameters (both sides of a diff share it). */
  function typed(params) { params.profile_type = ptype(); return params; }

  /** A short label for a type id, from the server's list or from the id itself. */
  function typeLabel(id) {
    for (var k = 0; k < profileTypes.length; k++) if (profileTypes[k].id === id) return String(profileTypes[k].label || id);
    var p = String(id).split(":");
    return p.length === 5 ? p[0] + " " + p[1].replace(/_/g, " ") : String(id);
  }

  function loadProfileTypes() {
    if (state.mode === "diff") fillDiffDefaults();
    var from = apiTime(state.mode === "diff" ? minTime() : state.from);
    var until = apiTime(state.mode === "diff" ? maxTime() : state.until);
    return api("types", "/api/v1/profile_types", {from: from, until: until}).then(function (d) {
      typesSupported = true;
      profileTypes = (d && d.profile_types) || [];
      if (d && d.default) serverDefault = String(d.default);
      renderTypePicker();
      paintFlameStatus();
    }).catch(function (e) {
      if (isStale(e)) return;
      // An older aggregator (404): no picker, the page behaves as before profile types.
      typesSupported = false;
      profileTypes = [];
      renderTypePicker();
    });
  }

  function renderTypePicker() {
    var box = $("type-field"), sel = $("profile-type");
    box.hidden = !typesSupported;
    if (!typesSupported) return;
    clear(sel);
    var list = profileTypes.slice(), cur = ptype();
    var ids = list.map(function (t) { return t.id; });
    // The chosen type stays selectable even when the range has none of it.
    if (ids.indexOf(cur) < 0) list.push({id: cur, label: typeLabel(cur), absent: true});
    // Two types with one label (e.g. "alloc space" of two names) get their name added.
    var seen = {};
    list.forEach(function (t) { var l = String(t.label || t.id); seen[l] = (seen[l] || 0) + 1; });
    list.forEach(function (t) {
      var l = String(t.label || t.id);
      if (seen[l] > 1) l += " (" + String(t.name || String(t.id).split(":")[0]) + ")";
      if (t.absent) l += " (no data in range)";
      var o = el("option", "", l);
      o.value = String(t.id);
      o.title = String(t.id);
      sel.appendChild(o);
    });
    sel.value = cur;
    sel.title = cur;
  }

  function quote(v) {
    return "\"" + String(v).replace(/\\/g, "\\\\").replace(/"/g, "\\\"").replace(/\n/g, "\\n") + "\"";
  }
  function reEscape(v) { return String(v).replace(/[.*+?^${}()|[\]\\]/g, "\\$&"); }

  /** The selector from the filter widgets plus the free-form box (matchers are ANDed). */
  function buildSelector(except) {
    var parts = [];
    LABELS.forEach(function (l) {
      if (l === except) return;
      var vals = filters[l] || [];
      if (vals.length === 1) parts.push(l + "=" + quote(vals[0]));
      else if (vals.length > 1) parts.push(l + "=~" + quote(vals.map(reEscape).join("|")));
    });
    var free = (state.sel || "").trim().replace(/^\{/, "").replace(/\}$/, "").trim();
    if (free) parts.push(free);
    return "{" + parts.join(", ") + "}";
  }

  /** Time text for the API: now-expressions and unix seconds pass; dates become unix seconds (UTC). */
  function apiTime(t) {
    t = String(t || "").trim();
    if (!t || /^now/.test(t) || /^\d+$/.test(t)) return t;
    var s = /[zZ]|[+-]\d\d:?\d\d$/.test(t) ? t : t + "Z";
    var ms = Date.parse(s);
    return isNaN(ms) ? t : String(Math.floor(ms / 1000));
  }

  /** Absolute unix seconds for a time text (client-side, for chart shapes). */
  function absTime(t, now) {
    t = apiTime(t);
    if (/^\d+$/.test(t)) { var v = Number(t); return v > 1e12 ? v / 1000 : v; }
    var m = /^now((?:[+-]\d+[smhdw])*)$/.exec(t.replace(/\s+/g, ""));
    if (!m) return NaN;
    var out = now, re = /([+-])(\d+)([smhdw])/g, g;
    var unit = {s: 1, m: 60, h: 3600, d: 86400, w: 604800};
    while ((g = re.exec(m[1]))) out += (g[1] === "-" ? -1 : 1) * Number(g[2]) * unit[g[3]];
    return out;
  }
  /** A label value as plain text for plotly, which reads names (legend, hover) as a subset of HTML
   * (<a href>, <span style>, <br>): escaped, it draws the characters themselves (issue 24, cause 9). */
  function plotlyText(v) {
    return String(v).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }
  function isoUTC(sec) { return new Date(sec * 1000).toISOString().replace(/\.\d+Z$/, "Z"); }

  // --read-token (issue 24, cause 11): the token is kept for this tab only (sessionStorage, never
  // localStorage or a cookie) and sent on every API call; a 401 opens the sign-in form.
  var TOKEN_KEY = "flamewatch.readToken";
  function readToken() {
    try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch (e) { return ""; }
  }
  function authHeaders(extra) {
    var h = Object.assign({}, extra || {});
    var t = readToken();
    if (t) h.Authorization = "Bearer " + t;
    return h;
  }
  function showSignIn(why) {
    var f = $("signin");
    if (!f || !f.hidden) return;
    $("signin-why").textContent = why || "This server needs a read token.";
    f.hidden = false;
    $("signin-token").focus();
  }
  function wireSignIn() {
    var f = $("signin");
    if (!f) return;
    f.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var t = $("signin-token").value.trim();
      if (!t) return;
      try { sessionStorage.setItem(TOKEN_KEY, t); } catch (e) { /* storage refused: nothing to keep */ }
      location.reload();
    });
  }
  /** Export links carry no header: with a token, fetch the file with it and hand over a blob. */
  function wireTokenDownloads() {
    ["exp-folded", "exp-pprof", "exp-speedscope", "exp-html"].forEach(function (id) {
      var a = $(id);
      if (!a) return;
      a.addEventListener("click", function (ev) {
        if (!readToken() || a.dataset.blob) return;
        ev.preventDefault();
        fetch(a.href, {headers: authHeaders()}).then(function (r) {
          if (r.status === 401) { showSignIn("The read token was refused; enter it again."); throw new Error("401"); }
          return r.blob();
        }).then(function (b) {
          var tmp = document.createElement("a");
          tmp.href = URL.createObjectURL(b);
          tmp.download = a.getAttribute("download") || (id.replace("exp-", "profile.") + ".html");
          document.body.appendChild(tmp);
          tmp.click();
          document.body.removeChild(tmp);
          setTimeout(function () { URL.revokeObjectURL(tmp.href); }, 10000);
        }).catch(function () { /* shown by the sign-in form */ });
      });
    });
  }

  var pending = {};
  var inflight = {}; // key -> AbortController of the request in flight
  var busySince = 0, busyTimer = null;
  /** The progress line: how many queries run and for how long; hidden when none does. */
  function paintProgress() {
    var n = Object.keys(inflight).length, p = $("progress");
    if (!p) return;
    if (!n) { p.hidden = true; clearInterval(busyTimer); busyTimer = null; busySince = 0; delete document.body.dataset.busy; return; }
    if (!busySince) busySince = performance.now();
    if (!busyTimer) busyTimer = setInterval(paintProgress, 500);
    var secs = (performance.now() - busySince) / 1000;
    p.hidden = false;
    p.textContent = "loading " + n + (n === 1 ? " query" : " queries") + (secs >= 1 ? ", " + secs.toFixed(0) + " s" : "") + "…";
    document.body.dataset.busy = String(n);
  }
  /** GET an API path; resolves JSON, rejects with the server's {"error"} message. A newer request
   * with the same key aborts the one in flight (the server stops its work when the client goes),
   * and stale replies are dropped. */
  function api(key, path, params) {
    var seq = (pending[key] || 0) + 1;
    pending[key] = seq;
    if (inflight[key]) inflight[key].abort();
    var ctl = typeof AbortController === "function" ? new AbortController() : null;
    if (ctl) inflight[key] = ctl;
    paintProgress();
    var done = function () { if (inflight[key] === ctl) { delete inflight[key]; paintProgress(); } };
    var url = path + "?" + new URLSearchParams(params).toString();
    return fetch(url, {headers: authHeaders({Accept: "application/json"}),
                       signal: ctl ? ctl.signal : undefined}).then(function (r) {
      return r.text().then(function (text) {
        done();
        var body = null;
        try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
        if (r.status === 401) showSignIn(readToken() ? "The read token was refused; enter it again." : null);
        if (pending[key] !== seq) throw {stale: true};
        if (!r.ok) throw new Error((body && body.error) || ("HTTP " + r.status + " from " + path));
        return body;
      });
    }).catch(function (e) {
      // An abort may land while the body is being read, not only while fetch waits for the
      // headers: either way a superseded request is stale and must not paint its error.
      done();
      if (e && e.stale) throw e;
      if (pending[key] !== seq || (e && e.name === "AbortError")) throw {stale: true};
      throw e;
    });
  }
  function isStale(e) { return e && e.stale; }

  function setStatus(node, text, isError) {
    node.textContent = text || "";
    node.classList.toggle("error", !!isError);
  }

  // ------------------------------------------------------------------ flamegraph

  var fg = null;
  var flameSeq = 0;

  function zoomPath(i) {
    var d = fg.data, path = [];
    while (i > 0) { path.unshift(String(d.names[d.nodes.name[i]])); i = fg.nParent[i]; }
    return path;
  }
  function findPath(path) {
    if (!fg.n || !path.length) return 0;
    var d = fg.data, names = d.names, nn = d.nodes.name, depth = d.nodes.depth;
    var cur = 0;
    for (var k = 0; k < path.length; k++) {
      var found = -1;
      for (var i = cur + 1; i < fg.nEnd[cur]; i = fg.nEnd[i]) {
        if (depth[i] === k + 1 && String(names[nn[i]]) === path[k]) { found = i; break; }
      }
      if (found < 0) return cur;
      cur = found;
    }
    return cur;
  }

  function renderLegend() {
    var leg = $("legend");
    clear(leg);
    var items = state.mode === "diff"
      ? [["grew", "#e0443c"], ["shrank", "#3c78e0"], ["unchanged", "#d8d8d8"]]
      : [["metadata", "#4796c1"], ["user", "#31d0f3"], ["kernel", "#98df8a"], ["other", "#c8c8c8"]];
    items.push(["search match", FlameGraph.COLORS.search]);
    items.forEach(function (it) {
      var s = el("span");
      var sw = el("span", "swatch");
      sw.style.background = it[1];
      s.appendChild(sw);
      s.appendChild(document.createTextNode(it[0]));
      leg.appendChild(s);
    });
  }

  function flameStatus(d) {
    var u = U.unitOf(d), what = typesSupported || d.profile_type ? typeLabel(d.profile_type || ptype()) + " " : "";
    if (state.mode === "diff") {
      return what + d.mode + " diff: base " + U.formatLong(d.base_sum || 0, u) + ", compare " +
        U.formatLong(d.compare_sum || 0, u) + "; red grew, blue shrank";
    }
    var s = what + U.formatLong(d.total || 0, u) + ", " + fmtInt(d.nodes.name.length) + " frames";
    if (d.span_id) s = "request " + d.span_id + ": " + s;
    var p = d.pruned || {};
    if (p.nodes_before > p.nodes_after) s += " (pruned from " + fmtInt(p.nodes_before) + ")";
    // pruned.cut: the heaviest frames folded into "other" (a deep path keeps its frames above that depth)
    if (p.cut && p.cut.share > 0) s += "; cut: frames of " + (100 * p.cut.share).toFixed(1) + "% from depth " + p.cut.depth;
    if (!d.total) s = "no " + (what || "samples ") + "data in this range for this selector";
    return s;
  }

  var lastFlame = null;
  // The status line under the controls; repainted when the type labels arrive after the graph.
  function paintFlameStatus() {
    if (lastFlame && document.body.dataset.flame !== "error") setStatus($("status"), flameStatus(lastFlame.doc) + lastFlame.timing);
  }

  function loadFlame() {
    var params, path;
    if (state.mode === "diff") {
      fillDiffDefaults();
      path = "/api/v1/diff";
      params = {
        base: state.bsel || buildSelector(), compare: state.csel || buildSelector(),
        base_from: apiTime(state.bfrom), base_until: apiTime(state.buntil),
        compare_from: apiTime(state.cfrom), compare_until: apiTime(state.cuntil),
        mode: state.dmode, format: "json", metadata: state.meta ? "1" : "0"
      };
      typed(params);
    } else if (state.mode === "requests" && state.span) {
      // A request picked in the Requests table: the flame graph of that span's samples.
      path = "/api/v1/span_profile";
      params = {span_id: state.span, format: "json"};
      if (state.sptype) params.profile_type = state.sptype;
      if (state.line) params.aggregate = "line"; // the "by line" toggle holds here too
    } else {
      path = "/api/v1/render";
      params = typed({query: buildSelector(), from: apiTime(state.from), until: apiTime(state.until),
        format: "json", metadata: state.meta ? "1" : "0"});
      // Focus: the server merges every occurrence of that exact function into one tree.
      if (state.focus) { params.focus = state.focus; params.match = "exact"; }
      else if (state.line) params.aggregate = "line"; // one frame per file:line
    }
    if (state.max) params.max_nodes = state.max;
    document.body.dataset.flame = "loading";
    var t0 = performance.now();
    return api("flame", path, params).then(function (d) {
      var t1 = performance.now();
      fg.setData(d);
      fg.setOptions({invert: state.inv, search: state.search, highlight: state.hl,
        diffMode: state.mode === "diff" ? state.dmode : null});
      if (state.zoom) {
        try {
          var z = findPath(JSON.parse(state.zoom));
          if (z > 0) fg.zoomTo(z);
        } catch (e) { state.zoom = ""; }
      }
      lastFlame = {doc: d, timing: "  ·  fetched in " + Math.round(t1 - t0) + " ms, drawn in " +
        fg.lastDrawMs.toFixed(1) + " ms"};
      paintFlameStatus();
      updateSearchStats();
      flameSeq++;
      // Read-only timings for bench/viewer.py: ms since navigation start, fetch and draw times.
      window.__fwTimings = {ready: performance.now(), fetchMs: t1 - t0, drawMs: fg.lastDrawMs,
        nodes: d.nodes.name.length, seq: flameSeq};
      document.body.dataset.flame = "ready";
      document.body.dataset.flameSeq = String(flameSeq);
      if (state.mode === "diff") renderDiffTable(d.table, U.unitOf(d));
    }).catch(function (e) {
      if (isStale(e)) return;
      lastFlame = null;
      fg.setData(null);
      setStatus($("status"), String(e.message || e), true);
      document.body.dataset.flame = "error";
    });
  }

  function updateSearchStats() {
    var box = $("search"), out = $("search-stats");
    if (!state.search) { out.textContent = ""; box.classList.remove("bad"); return; }
    var s = fg.searchStats();
    if (s.error) { box.classList.add("bad"); out.textContent = "invalid regex"; return; }
    box.classList.remove("bad");
    var u = fg.unit();
    out.textContent = "matched " + U.format(s.matched, u) + " of " + U.format(s.total, u) + " (" +
      (100 * s.share).toFixed(2) + "%)";
  }

  // ------------------------------------------------------------------ filters

  var widgets = {};

  /** A multi-select with type-to-filter; values only ever reach textContent / input.value. */
  function MultiSelect(label, onChange) {
    var self = this;
    this.label = label;
    this.values = [];
    this.root = el("div", "ms");
    this.root.dataset.label = label;
    this.btn = el("button");
    this.btn.type = "button";
    this.pop = el("div", "ms-pop");
    this.pop.hidden = true;
    this.search = el("input");
    this.search.type = "search";
    this.search.placeholder = "type to filter " + label;
    this.list = el("div", "ms-list");
    var actions = el("div", "ms-actions");
    var none = el("button", "", "clear");
    none.type = "button";
    var done = el("button", "", "done");
    done.type = "button";
    actions.appendChild(none);
    actions.appendChild(done);
    this.pop.appendChild(this.search);
    this.pop.appendChild(this.list);
    this.pop.appendChild(actions);
    this.root.appendChild(this.btn);
    this.root.appendChild(this.pop);
    this.btn.addEventListener("click", function () { self.toggle(); });
    this.search.addEventListener("input", function () { self.renderList(); });
    none.addEventListener("click", function () { filters[label] = []; self.renderList(); self.renderBtn(); onChange(); });
    done.addEventListener("click", function () { self.toggle(false); });
    document.addEventListener("mousedown", function (e) {
      if (!self.pop.hidden && !self.root.contains(e.target)) self.toggle(false);
    });
    this.onChange = onChange;
    this.renderBtn();
  }
  MultiSelect.prototype.toggle = function (open) {
    var o = open === undefined ? this.pop.hidden : open;
    this.pop.hidden = !o;
    if (o) { this.renderList(); this.search.focus(); }
  };
  MultiSelect.prototype.setValues = function (vals) {
    this.values = vals || [];
    if (!this.pop.hidden) this.renderList();
  };
  MultiSelect.prototype.renderBtn = function () {
    var sel = filters[this.label] || [];
    var txt = this.label + ": " + (sel.length === 0 ? "any" : sel.length === 1 ? sel[0] : sel[0] + " +" + (sel.length - 1));
    this.btn.textContent = txt;
    this.btn.title = sel.length ? this.label + " = " + sel.join(" | ") : "any " + this.label;
    this.btn.classList.toggle("active", sel.length > 0);
  };
  MultiSelect.prototype.renderList = function () {
    var self = this, label = this.label;
    var sel = filters[label] || [];
    var needle = this.search.value.toLowerCase();
    var all = this.values.slice();
    sel.forEach(function (v) { if (all.indexOf(v) < 0) all.push(v); });
    all.sort();
    clear(this.list);
    var shown = 0;
    all.forEach(function (v) {
      if (needle && String(v).toLowerCase().indexOf(needle) < 0) return;
      if (shown >= 300) return;
      shown++;
      var row = el("label");
      var cb = el("input");
      cb.type = "checkbox";
      cb.checked = sel.indexOf(v) >= 0;
      cb.value = v;
      cb.addEventListener("change", function () {
        var cur = (filters[label] || []).filter(function (x) { return x !== v; });
        if (cb.checked) cur.push(v);
        filters[label] = cur;
        self.renderBtn();
        self.onChange();
      });
      row.appendChild(cb);
      row.appendChild(el("span", "", v));
      row.title = v;
      self.list.appendChild(row);
    });
    if (!shown) this.list.appendChild(el("div", "empty", all.length ? "no match" : "no values in this range"));
  };

  function buildFilterWidgets() {
    var box = $("filters");
    clear(box);
    LABELS.forEach(function (l) {
      var w = new MultiSelect(l, debounce(function () { onSelectorChange(); }, 250));
      widgets[l] = w;
      box.appendChild(w.root);
    });
  }

  function loadLabelValues() {
    var from = apiTime(state.mode === "diff" ? minTime() : state.from);
    var until = apiTime(state.mode === "diff" ? maxTime() : state.until);
    LABELS.forEach(function (l) {
      // Each list is narrowed by the other filters, so pods follow the chosen namespace.
      api("labels-" + l, "/api/v1/label/" + encodeURIComponent(l) + "/values",
        typed({query: buildSelector(l), from: from, until: until})).then(function (d) {
        widgets[l].setValues((d && d.values) || []);
      }).catch(function (e) { if (!isStale(e)) widgets[l].setValues([]); });
    });
  }

  function minTime() {
    var now = Date.now() / 1000;
    var a = absTime(state.bfrom, now), b = absTime(state.cfrom, now);
    return String(Math.floor(Math.min(a, b)));
  }
  function maxTime() {
    var now = Date.now() / 1000;
    var a = absTime(state.buntil, now), b = absTime(state.cuntil, now);
    return String(Math.ceil(Math.max(a, b)));
  }

  function onSelectorChange() {
    state.zoom = "";
    $("effective").textContent = buildSelector();
    writeURL();
    updateExports();
    loadFlame();
    loadLabelValues();
    loadTimeline();
    loadTables();
  }

  function debounce(fn, ms) {
    var t = null;
    return function () { clearTimeout(t); t = setTimeout(fn, ms); };
  }

  // ------------------------------------------------------------------ timeline (plotly, lazy)

  var plotlyState = "none"; // none | loading | ready | failed
  var timelineData = null;
  var dragTarget = "base";

  function loadPlotly() {
    if (plotlyState !== "none") return;
    plotlyState = "loading";
    var s = document.createElement("script");
    s.src = "/static/plotly.min.js";
    s.async = true;
    s.onload = function () { plotlyState = "ready"; drawTimeline(); };
    s.onerror = function () {
      plotlyState = "failed";
      var t = $("timeline");
      clear(t);
      t.appendChild(el("div", "placeholder", "plotly.js could not be loaded; the timeline is unavailable"));
    };
    document.head.appendChild(s);
  }

  function loadTimeline() {
    var params = typed({query: buildSelector(), from: apiTime(state.from), until: apiTime(state.until),
      group_by: state.gb});
    return api("timeline", "/api/v1/timeline", params).then(function (d) {
      timelineData = d;
      drawTimeline();
    }).catch(function (e) {
      if (isStale(e)) return;
      timelineData = null;
      var t = $("timeline");
      if (window.Plotly) window.Plotly.purge(t);
      clear(t);
      t.appendChild(el("div", "placeholder error", String(e.message || e)));
    });
  }

  var PALETTE = ["#1f77b4", "#31b4d8", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
    "#7f7f7f", "#bcbd22", "#17becf", "#4796c1", "#d62728"];

  function timelineShapes() {
    if (state.mode === "requests") return requestShapes();
    var shapes = [];
    if (state.mode !== "diff" || !timelineData) return shapes;
    var now = Date.now() / 1000;
    [["b", "rgba(60,120,224,0.18)", "#3c78e0"], ["c", "rgba(224,68,60,0.18)", "#e0443c"]].forEach(function (s) {
      var f = absTime(state[s[0] + "from"], now), u = absTime(state[s[0] + "until"], now);
      if (isNaN(f) || isNaN(u)) return;
      shapes.push({type: "rect", xref: "x", yref: "paper", x0: isoUTC(f), x1: isoUTC(u), y0: 0, y1: 1,
        fillcolor: s[1], line: {color: s[2], width: 1}, layer: "below"});
    });
    return shapes;
  }

  function drawTimeline() {
    if (plotlyState !== "ready" || !timelineData || !window.Plotly) return;
    var t = $("timeline");
    var ph = t.querySelector(".placeholder");
    if (ph) t.removeChild(ph);
    var d = timelineData, u = U.unitOf(d);
    // One scale for the whole chart, picked by the largest stacked bar (plotly has no binary prefixes).
    var stack = {};
    (d.series || []).forEach(function (s) { s.points.forEach(function (p) { stack[p[0]] = (stack[p[0]] || 0) + p[1]; }); });
    var peak = 0;
    Object.keys(stack).forEach(function (k) { if (stack[k] > peak) peak = stack[k]; });
    var ax = U.axis(peak, u);
    var traces = (d.series || []).map(function (s, k) {
      return {
        type: "bar", name: plotlyText(s.group === "" ? "(no " + (state.gb || "label") + ")" : String(s.group)),
        x: s.points.map(function (p) { return isoUTC(p[0] + (d.window || 30) / 2); }),
        y: s.points.map(function (p) { return p[1] * ax.mul / ax.div; }),
        customdata: s.points.map(function (p) { return U.formatLong(p[1], u); }),
        marker: {color: PALETTE[k % PALETTE.length]},
        hovertemplate: "%{customdata}<extra>%{fullData.name}</extra>"
      };
    });
    var what = typesSupported ? typeLabel(d.profile_type || ptype()) : "";
    $("timeline-title").textContent = (what ? what + ", " : "") +
      // the axis's own unit (a quiet range of CPU time reads in ms, not seconds)
      (u.kind === "samples" ? "samples" : u.kind === "time" ? (ax.suffix || "seconds") :
        u.kind === "bytes" ? "bytes" : "count") +
      " per " + (d.window || 30) + " s";
    var layout = {
      barmode: "stack", bargap: 0.05, height: 150, margin: {l: 50, r: 10, t: 6, b: 26},
      dragmode: "select", selectdirection: "h", showlegend: true,
      legend: {orientation: "v", x: 1.01, y: 1, font: {size: 11}},
      xaxis: {type: "date", range: [isoUTC(d.from), isoUTC(d.until)], fixedrange: true, title: {text: ""}},
      yaxis: {fixedrange: true, title: {text: ax.suffix || "count", font: {size: 11}}, rangemode: "tozero"},
      shapes: timelineShapes(), font: {family: "system-ui, sans-serif", size: 11},
      paper_bgcolor: "#fff", plot_bgcolor: "#fff"
    };
    window.Plotly.react(t, traces, layout, {displayModeBar: false, responsive: true});
    if (!t.__fwBound) {
      t.__fwBound = true;
      t.on("plotly_selected", function (ev) {
        if (!ev || !ev.range || !ev.range.x) return;
        var a = parseChartTime(ev.range.x[0]), b = parseChartTime(ev.range.x[1]);
        if (isNaN(a) || isNaN(b) || b <= a) return;
        // Drop plotly's own selection box and dimming: the chosen range is shown as shapes instead.
        setTimeout(function () {
          window.Plotly.relayout(t, {selections: []});
          window.Plotly.restyle(t, {selectedpoints: [null]});
        }, 0);
        onTimelineRange(Math.floor(a), Math.ceil(b));
      });
    }
    document.body.dataset.timeline = "ready";
  }

  function parseChartTime(v) {
    if (typeof v === "number") return v / 1000;
    var s = String(v).replace(" ", "T");
    if (!/[zZ]$/.test(s)) s += "Z";
    return Date.parse(s) / 1000;
  }

  function onTimelineRange(a, b) {
    if (state.mode === "diff") {
      state[dragTarget === "base" ? "bfrom" : "cfrom"] = isoUTC(a);
      state[dragTarget === "base" ? "buntil" : "cuntil"] = isoUTC(b);
      // After picking the base, the next drag picks the compare window.
      if (dragTarget === "base") setDragTarget("compare");
      syncControls();
      writeURL();
      updateExports();
      if (window.Plotly) window.Plotly.relayout($("timeline"), {shapes: timelineShapes()});
      loadFlame();
      loadTables();
    } else {
      state.from = isoUTC(a);
      state.until = isoUTC(b);
      state.auto = false;
      refreshAll();
    }
  }

  function setDragTarget(t) {
    dragTarget = t;
    Array.prototype.forEach.call(document.querySelectorAll("#drag-target .seg"), function (b) {
      b.classList.toggle("on", b.dataset.target === t);
    });
  }

  // ------------------------------------------------------------------ tables

  var topRows = [];
  var topTotal = 0;
  var topUnit = U.unitOf(null);

  function loadTables() {
    if (state.mode !== "diff") loadTop();
    if (state.tab === "sandwich" && state.fn) loadSandwich();
  }

  /** With a request open, the flame graph is that span's and the table still the range's: say so. */
  function labelTop() {
    var tab = document.querySelector('.tab[data-tab="top"]');
    if (tab) tab.textContent = state.mode === "requests" && state.span ? "Top functions (whole range)" : "Top functions";
  }

  function loadTop() {
    labelTop();
    var params = typed({query: buildSelector(), from: apiTime(state.from),
      until: apiTime(state.until), limit: String(TOP_LIMIT)});
    if (state.line) params.aggregate = "line";
    return api("top", "/api/v1/top", params).then(function (d) {
      topRows = (d && d.rows) || [];
      topTotal = (d && d.total) || 0;
      topUnit = U.unitOf(d);
      renderTop();
    }).catch(function (e) {
      if (isStale(e)) return;
      topRows = [];
      renderTop(String(e.message || e));
    });
  }

  function kindBadge(kind) { return el("span", "kind " + (["user", "kernel", "metadata", "other"].indexOf(kind) >= 0 ? kind : "other"), kind); }

  function pickFunction(name, tr) {
    state.hl = state.hl === name ? "" : name;
    state.fn = name;
    $("sandwich-fn").value = name;
    syncFocus();
    fg.highlight(state.hl);
    Array.prototype.forEach.call(document.querySelectorAll(".grid tbody tr.sel"), function (r) { r.classList.remove("sel"); });
    if (tr && state.hl) tr.classList.add("sel");
    writeURL();
  }

  function renderTop(err) {
    var tbody = document.querySelector("#top-table tbody");
    clear(tbody);
    Array.prototype.forEach.call(document.querySelectorAll("#top-table th[data-sort]"), function (th) {
      th.classList.toggle("sorted", th.dataset.sort === state.sort);
    });
    if (err) {
      messageRow(tbody, err, 6);
      return;
    }
    var key = state.sort, needle = $("table-filter").value.toLowerCase();
    var rows = topRows.filter(function (r) { return !needle || String(r.name).toLowerCase().indexOf(needle) >= 0; });
    rows.sort(function (a, b) {
      if (key === "name") return String(a.name) < String(b.name) ? -1 : String(a.name) > String(b.name) ? 1 : 0;
      return b[key] - a[key] || b.self - a.self || b.total - a.total;
    });
    rows.slice(0, 300).forEach(function (r) {
      var name = String(r.name), tr = functionRow(name, r.kind);
      if (r.location) { // by line: the function's file:line beside its name
        tr.firstChild.appendChild(el("span", "loc", " " + r.location));
        tr.firstChild.title = name + " at " + r.location;
      }
      tr.appendChild(el("td", "num", U.format(r.self, topUnit)));
      tr.appendChild(el("td", "num", pct(r.self, topTotal)));
      tr.appendChild(el("td", "num", U.format(r.total, topUnit)));
      tr.appendChild(el("td", "num", pct(r.total, topTotal)));
      if (name === state.hl) tr.classList.add("sel");
      tr.addEventListener("click", function () { pickFunction(name, tr); });
      tbody.appendChild(tr);
    });
  }

  // A table row that spans every column with one message (an error, "none").
  function messageRow(tbody, text, cols) {
    var tr = el("tr"), td = el("td", "", text);
    td.colSpan = cols;
    tr.appendChild(td);
    tbody.appendChild(tr);
  }

  // A new row starting with the function-name and kind cells shared by the top and diff tables.
  function functionRow(name, kind) {
    var tr = el("tr"), tdn = el("td", "name", name), tk = el("td");
    tdn.title = name;
    tr.appendChild(tdn);
    tk.appendChild(kindBadge(kind));
    tr.appendChild(tk);
    return tr;
  }

  function renderDiffTable(table, u) {
    var specs = [["self", "regressions", "dt-self-reg"], ["self", "improvements", "dt-self-imp"],
      ["total", "regressions", "dt-total-reg"], ["total", "improvements", "dt-total-imp"]];
    var unit = (table && table.mode) === "absolute" ? "Δ " + U.quantity(u) : "Δ pp";
    specs.forEach(function (s) {
      var t = $(s[2]), thead = t.querySelector("thead"), tbody = t.querySelector("tbody");
      clear(thead);
      clear(tbody);
      var hr = el("tr");
      ["function", "kind", "base %", "compare %", unit].forEach(function (h, k) { hr.appendChild(el("th", k > 1 ? "num" : "", h)); });
      thead.appendChild(hr);
      var rows = (table && table[s[0]] && table[s[0]][s[1]]) || [];
      if (!rows.length) messageRow(tbody, "none", 5);
      rows.slice(0, 20).forEach(function (r) {
        var name = String(r.name), tr = functionRow(name, r.kind);
        tr.appendChild(el("td", "num", Number(r.base_pct).toFixed(2) + "%"));
        tr.appendChild(el("td", "num", Number(r.compare_pct).toFixed(2) + "%"));
        var dv = Number(r.delta);
        var txt = table.mode === "absolute" ? U.formatDelta(dv, u) : (dv > 0 ? "+" : "") + dv.toFixed(2);
        tr.appendChild(el("td", "num " + (dv > 0 ? "pos" : "neg"), txt));
        tr.addEventListener("click", function () { pickFunction(name, tr); });
        tbody.appendChild(tr);
      });
    });
  }

  var sandwichCallers = null, sandwichCallees = null;

  function loadSandwich() {
    var fn = state.fn;
    var st = $("sandwich-status");
    if (!fn) { setStatus(st, "pick a function: click a frame or a table row"); return null; }
    var side = state.mode === "diff"
      ? {query: state.csel || buildSelector(), from: apiTime(state.cfrom), until: apiTime(state.cuntil)}
      : {query: buildSelector(), from: apiTime(state.from), until: apiTime(state.until)};
    side.function = fn;
    side.match = state.rx ? "regex" : "name";
    typed(side);
    setStatus(st, "loading…");
    return api("sandwich", "/api/v1/sandwich", side).then(function (d) {
      if (!sandwichCallers) {
        sandwichCallers = new FlameGraph($("sandwich-callers"), {});
        sandwichCallees = new FlameGraph($("sandwich-callees"), {});
        sandwichCallers.setOptions({tooltip: true});
        sandwichCallees.setOptions({tooltip: true, invert: true});
        window.__sandwich = {callers: sandwichCallers, callees: sandwichCallees};
      }
      // Callers grow upwards from the function, callees hang below it: the function meets in the middle.
      // The unit is on the answer; the two trees inherit it when they do not carry their own.
      [d.callers, d.callees].forEach(function (t) {
        if (t && !t.unit) t.unit = d.unit;
        if (t && t.period_ns === undefined) t.period_ns = d.period_ns;
      });
      sandwichCallers.setData(d.callers);
      sandwichCallees.setData(d.callees);
      var names = d.matched && d.matched.length > 1 ? " (" + d.matched.length + " functions: " +
        d.matched.slice(0, 5).join(", ") + (d.matched.length > 5 ? ", …" : "") + ")" : "";
      setStatus(st, "function " + (d.function || fn) + names + ": " + U.formatLong(d.callers.total || 0, U.unitOf(d.callers)) +
        " in stacks containing it");
    }).catch(function (e) {
      if (isStale(e)) return;
      setStatus(st, String(e.message || e), true);
    });
  }

  function showTab(tab) {
    if (state.mode === "diff" && tab === "top") tab = "difftable";
    if (state.mode !== "diff" && tab === "difftable") tab = "top";
    state.tab = tab;
    ["top", "difftable", "sandwich"].forEach(function (t) { $("tab-" + t).hidden = t !== tab; });
    Array.prototype.forEach.call(document.querySelectorAll(".tabs .tab"), function (b) {
      b.classList.toggle("on", b.dataset.tab === tab);
    });
    if (tab === "sandwich" && state.fn) loadSandwich();
  }

  // ------------------------------------------------------------------ exports

  function updateExports() {
    var base, params;
    if (state.mode === "diff") {
      base = "/api/v1/diff";
      params = {base: state.bsel || buildSelector(), compare: state.csel || buildSelector(),
        base_from: apiTime(state.bfrom), base_until: apiTime(state.buntil),
        compare_from: apiTime(state.cfrom), compare_until: apiTime(state.cuntil), mode: state.dmode};
      typed(params);
    } else {
      base = "/api/v1/render";
      params = typed({query: buildSelector(), from: apiTime(state.from), until: apiTime(state.until),
        metadata: state.meta ? "1" : "0"});
      if (state.line) params.aggregate = "line"; // exports keep lines too
    }
    function href(fmt) {
      var p = Object.assign({}, params, {format: fmt});
      return base + "?" + new URLSearchParams(p).toString();
    }
    $("exp-folded").href = href("folded");
    $("exp-folded").setAttribute("download", state.mode === "diff" ? "diff.folded.txt" : "profile.folded.txt");
    $("exp-pprof").href = href("pprof");
    $("exp-pprof").setAttribute("download", "profile.pb.gz");
    $("exp-speedscope").href = href("speedscope");
    $("exp-speedscope").setAttribute("download", "profile.speedscope.json");
    // The HTML page of a diff is the flame page of the compare side (the API has no HTML diff).
    $("exp-html").href = state.mode === "diff"
      ? "/api/v1/render?" + new URLSearchParams({query: state.csel || buildSelector(), from: apiTime(state.cfrom),
        until: apiTime(state.cuntil), metadata: state.meta ? "1" : "0", format: "html",
        profile_type: ptype()}).toString()
      : href("html");
  }

  function exportPNG() {
    var a = document.createElement("a");
    a.href = fg.toPNG();
    a.download = state.mode === "diff" ? "flamegraph-diff.png" : "flamegraph.png";
    document.body.appendChild(a);
    a.click();
    document.body.removeChild(a);
  }

  // ------------------------------------------------------------------ controls

  function fillDiffDefaults() {
    // Default diff: the first and second halves of the current range.
    var now = Math.floor(Date.now() / 1000);
    var f = absTime(state.from, now), u = absTime(state.until, now);
    if (isNaN(f) || isNaN(u)) { f = now - 3600; u = now; }
    var mid = Math.floor((f + u) / 2);
    if (!state.bfrom) state.bfrom = isoUTC(f);
    if (!state.buntil) state.buntil = isoUTC(mid);
    if (!state.cfrom) state.cfrom = isoUTC(mid);
    if (!state.cuntil) state.cuntil = isoUTC(u);
  }

  // Inputs that show a state field: [element id, state key]; checkboxes separately.
  var CONTROL_FIELDS = [["from", "from"], ["until", "until"], ["selector", "sel"], ["group-by", "gb"],
    ["search", "search"], ["auto-every", "every"], ["base-from", "bfrom"], ["base-until", "buntil"],
    ["compare-from", "cfrom"], ["compare-until", "cuntil"], ["base-sel", "bsel"], ["compare-sel", "csel"],
    ["sandwich-fn", "fn"]];
  var CONTROL_CHECKS = [["metadata", "meta"], ["by-line", "line"], ["invert", "inv"], ["auto", "auto"], ["sandwich-rx", "rx"]];

  function syncControls() {
    syncFocus();
    document.body.classList.toggle("diff", state.mode === "diff");
    document.body.classList.toggle("requests", state.mode === "requests");
    $("mode-flame").classList.toggle("on", state.mode === "flame");
    $("mode-diff").classList.toggle("on", state.mode === "diff");
    $("mode-requests").classList.toggle("on", state.mode === "requests");
    $("req-name").value = state.rname;
    CONTROL_FIELDS.forEach(function (f) { $(f[0]).value = String(state[f[1]]); });
    CONTROL_CHECKS.forEach(function (f) { $(f[0]).checked = state[f[1]]; });
    $("effective").textContent = buildSelector();
    Array.prototype.forEach.call(document.querySelectorAll("#presets .seg"), function (b) {
      b.classList.toggle("on", state.until === "now" && PRESETS[b.dataset.preset] === state.from);
    });
    Array.prototype.forEach.call(document.querySelectorAll("[data-dmode]"), function (b) {
      b.classList.toggle("on", b.dataset.dmode === state.dmode);
    });
    LABELS.forEach(function (l) { if (widgets[l]) widgets[l].renderBtn(); });
    renderLegend();
  }

  function refreshAll() {
    syncControls();
    writeURL();
    updateExports();
    if (typesSupported !== false) loadProfileTypes();
    loadFlame();
    loadTimeline();
    loadLabelValues();
    loadTables();
    if (state.mode === "requests") loadRequests();
    scheduleAuto();
  }

  // ------------------------------------------------------------------ requests

  var requestRows = [];

  /** The slow-requests table: root spans of the range by wall time, from /api/v1/requests. */
  function loadRequests() {
    var st = $("requests-status");
    setStatus(st, "loading…");
    var params = {query: buildSelector(), from: apiTime(state.from), until: apiTime(state.until), limit: "100"};
    if (state.rname) params.span_name = state.rname;
    var t0 = performance.now();
    return api("requests", "/api/v1/requests", params).then(function (d) {
      requestRows = (d && d.rows) || [];
      // The ranking the server used: wall time where the spans have wall samples, else CPU time.
      var byWall = requestRows.some(function (r) { return Number(r.wall_ns) > 0; });
      $("requests-title").textContent = "Slowest requests (root spans by " +
        (byWall || !requestRows.length ? "wall time" : "CPU time: no wall samples") + ")";
      renderRequests();
      paintRequestShapes();
      setStatus(st, fmtInt(d.spans) + (Number(d.spans) === 1 ? " request" : " requests") +
        (d.truncated ? ", slowest " + requestRows.length + " shown" : "") +
        " · " + Math.round(performance.now() - t0) + " ms");
      document.body.dataset.requests = "ready";
    }).catch(function (e) {
      if (isStale(e)) return;
      requestRows = [];
      renderRequests(String(e.message || e));
      setStatus(st, String(e.message || e), true);
    });
  }

  function renderRequests(err) {
    var tbody = document.querySelector("#requests-table tbody");
    clear(tbody);
    if (err) { messageRow(tbody, err, 7); return; }
    if (!requestRows.length) {
      // A traced request shorter than the sampling interval often has no sample, so no row.
      messageRow(tbody, "no traced requests with samples in this range (span profiles need pyroscope-otel; " +
        "a request shorter than the sampling interval may have no sample)", 7);
      return;
    }
    var ns = U.unitOf({unit: "nanoseconds"});
    requestRows.forEach(function (r) {
      var tr = el("tr");
      tr.dataset.span = r.span_id;
      [r.span_name, r.service_name, r.pod].forEach(function (v) { tr.appendChild(el("td", "name", v)); });
      // A time the span has no samples of (CPU-only or wall-only SDKs) is blank, not "0 s".
      tr.appendChild(el("td", "num", r.wall_ns ? U.format(r.wall_ns, ns) : "–"));
      tr.appendChild(el("td", "num", r.cpu_ns ? U.format(r.cpu_ns, ns) : "–"));
      tr.appendChild(el("td", "mono", r.trace_id));
      tr.appendChild(el("td", "mono", r.span_id));
      if (r.span_id === state.span) tr.classList.add("sel");
      tr.addEventListener("click", function () { openRequest(r, tr); });
      tbody.appendChild(tr);
    });
  }

  /** The picked request on the chart: a band from the first to the last profile that holds its
   * samples (profiles are filed by their midpoint, so this is where its samples are, to a few s). */
  function requestShapes() {
    var r = null;
    requestRows.forEach(function (x) { if (x.span_id === state.span) r = x; });
    if (!r || !isFinite(r.first_seen) || !isFinite(r.last_seen)) return [];
    var a = Number(r.first_seen), b = Math.max(Number(r.last_seen), a + 1);
    return [{type: "rect", xref: "x", yref: "paper", x0: isoUTC(a - 1), x1: isoUTC(b + 1), y0: 0, y1: 1,
      fillcolor: "rgba(0,177,216,0.25)", line: {color: "#00b1d8", width: 2}, layer: "above", name: "request"}];
  }
  function paintRequestShapes() {
    if (window.Plotly && timelineData && document.body.dataset.timeline === "ready") {
      window.Plotly.relayout($("timeline"), {shapes: timelineShapes()});
    }
  }

  /** Open a request's flame graph (the link the API gives: its wall samples, else CPU). */
  function openRequest(r, tr) {
    var link = new URLSearchParams(String(r.flamegraph || "").split("?")[1] || "");
    state.span = r.span_id;
    state.sptype = link.get("profile_type") || "";
    state.zoom = "";
    Array.prototype.forEach.call(document.querySelectorAll("#requests-table tbody tr.sel"), function (x) { x.classList.remove("sel"); });
    if (tr) tr.classList.add("sel");
    writeURL();
    paintRequestShapes();
    loadFlame();
    labelTop();
  }

  var autoTimer = null;
  function scheduleAuto() {
    clearInterval(autoTimer);
    autoTimer = null;
    if (state.auto && /^now/.test(state.until)) {
      autoTimer = setInterval(function () {
        loadFlame();
        loadTimeline();
        if (state.mode !== "diff") loadTop();
        if (state.mode === "requests") loadRequests();
      }, Math.max(5, state.every) * 1000);
    }
  }

  // Run fn when Enter is pressed in any of the inputs named by id.
  function onEnter(ids, fn) {
    ids.forEach(function (id) {
      $(id).addEventListener("keydown", function (e) { if (e.key === "Enter") fn(); });
    });
  }

  function bind() {
    bindModes();
    bindTime();
    bindSelector();
    bindView();
    bindDiff();
    bindTables();
  }

  // The profile-type picker, flame/diff mode and the time presets.
  function bindModes() {
    $("profile-type").addEventListener("change", function () {
      // A new type: the zoom path, highlight and sandwich function belong to the old one's frames.
      state.type = $("profile-type").value === serverDefault ? "" : $("profile-type").value;
      state.zoom = ""; state.hl = "";
      refreshAll();
    });
    $("mode-flame").addEventListener("click", function () {
      state.mode = "flame"; state.zoom = ""; showTab(state.tab); refreshAll();
    });
    $("mode-requests").addEventListener("click", function () {
      state.mode = "requests"; state.zoom = ""; showTab(state.tab); refreshAll();
    });
    function applyReq() { state.rname = $("req-name").value.trim(); state.span = ""; writeURL(); loadRequests(); loadFlame(); }
    $("apply-req").addEventListener("click", applyReq);
    onEnter(["req-name"], applyReq);
    $("mode-diff").addEventListener("click", function () {
      state.mode = "diff"; state.zoom = ""; setDragTarget("base"); fillDiffDefaults(); showTab(state.tab); refreshAll();
    });
    Array.prototype.forEach.call(document.querySelectorAll("#presets .seg"), function (b) {
      b.addEventListener("click", function () {
        state.from = PRESETS[b.dataset.preset];
        state.until = "now";
        state.zoom = "";
        if (state.mode === "diff") { state.bfrom = state.buntil = state.cfrom = state.cuntil = ""; }
        refreshAll();
      });
    });
  }

  // The from/until fields, auto refresh and the copy-link button.
  function bindTime() {
    function applyTime() {
      state.from = $("from").value.trim() || DEFAULTS.from;
      state.until = $("until").value.trim() || DEFAULTS.until;
      state.zoom = "";
      refreshAll();
    }
    $("apply-time").addEventListener("click", applyTime);
    onEnter(["from", "until"], applyTime);
    $("auto").addEventListener("change", function () { state.auto = $("auto").checked; writeURL(); scheduleAuto(); });
    $("auto-every").addEventListener("change", function () { state.every = Number($("auto-every").value) || 30; writeURL(); scheduleAuto(); });
    $("copy-link").addEventListener("click", function () {
      writeURL();
      var btn = $("copy-link");
      var done = function () { btn.textContent = "Link copied"; setTimeout(function () { btn.textContent = "Copy link"; }, 1500); };
      if (navigator.clipboard && navigator.clipboard.writeText) {
        navigator.clipboard.writeText(location.href).then(done, function () { prompt("Link to this view", location.href); });
      } else {
        prompt("Link to this view", location.href);
      }
    });
  }

  // The selector box (also Pyroscope's TYPE{selector} form) and the group-by picker.
  function bindSelector() {
    function applySel() {
      var sel = $("selector").value.trim();
      // Pyroscope's TYPE{selector} form: the type goes to the picker, the rest stays a selector.
      var m = /^([A-Za-z0-9_.-]+(?::[A-Za-z0-9_.-]*){4})\s*(\{.*\})?$/.exec(sel);
      if (m) {
        state.type = m[1] === serverDefault ? "" : m[1];
        sel = m[2] || "";
        $("selector").value = sel;
        state.sel = sel;
        state.zoom = ""; state.hl = "";
        refreshAll();
        return;
      }
      state.sel = sel;
      onSelectorChange();
    }
    $("apply-selector").addEventListener("click", applySel);
    onEnter(["selector"], applySel);
    $("group-by").addEventListener("change", function () { state.gb = $("group-by").value; writeURL(); loadTimeline(); });
  }

  // Flame options: metadata, invert, search, reset zoom, PNG export.
  function bindView() {
    $("metadata").addEventListener("change", function () { state.meta = $("metadata").checked; state.zoom = ""; writeURL(); updateExports(); loadFlame(); });
    $("by-line").addEventListener("change", function () {
      state.line = $("by-line").checked; state.zoom = ""; showSource(""); writeURL(); updateExports(); loadFlame();
      if (state.mode !== "diff") loadTop();
    });
    $("invert").addEventListener("change", function () { state.inv = $("invert").checked; writeURL(); fg.setOptions({invert: state.inv}); });
    $("search").addEventListener("input", debounce(function () {
      state.search = $("search").value;
      writeURL();
      fg.setOptions({search: state.search});
      updateSearchStats();
    }, 120));
    $("reset-zoom").addEventListener("click", function () {
      state.zoom = ""; state.hl = ""; fg.setOptions({highlight: ""}); fg.reset(); writeURL();
      Array.prototype.forEach.call(document.querySelectorAll(".grid tbody tr.sel"), function (r) { r.classList.remove("sel"); });
    });
    $("exp-png").addEventListener("click", exportPNG);
    function setFocus(name) {
      state.focus = name; state.zoom = ""; writeURL(); syncFocus(); loadFlame();
    }
    $("focus-fn").addEventListener("click", function () { if (state.fn) setFocus(state.fn); });
    $("clear-focus").addEventListener("click", function () { setFocus(""); });
  }

  // The focus line: which function the flame graph is focused on, and the button that clears it.
  function syncFocus() {
    $("focus-info").hidden = !state.focus;
    $("focus-name").textContent = state.focus;
    $("focus-fn").disabled = !state.fn;
  }

  // The diff ranges, their selectors and the colour mode.
  function bindDiff() {
    function applyDiff() {
      state.bfrom = $("base-from").value.trim();
      state.buntil = $("base-until").value.trim();
      state.cfrom = $("compare-from").value.trim();
      state.cuntil = $("compare-until").value.trim();
      state.bsel = $("base-sel").value.trim();
      state.csel = $("compare-sel").value.trim();
      state.zoom = "";
      fillDiffDefaults();
      syncControls();
      writeURL();
      updateExports();
      if (window.Plotly && timelineData) window.Plotly.relayout($("timeline"), {shapes: timelineShapes()});
      loadFlame();
      loadTables();
    }
    $("apply-diff").addEventListener("click", applyDiff);
    onEnter(["base-from", "base-until", "compare-from", "compare-until", "base-sel", "compare-sel"], applyDiff);
    Array.prototype.forEach.call(document.querySelectorAll("[data-dmode]"), function (b) {
      b.addEventListener("click", function () {
        state.dmode = b.dataset.dmode; syncControls(); writeURL(); updateExports(); loadFlame();
      });
    });
    Array.prototype.forEach.call(document.querySelectorAll("#drag-target .seg"), function (b) {
      b.addEventListener("click", function () { setDragTarget(b.dataset.target); });
    });
  }

  // Tabs, the top table's sort and filter, and the sandwich function.
  function bindTables() {
    Array.prototype.forEach.call(document.querySelectorAll(".tabs .tab"), function (b) {
      b.addEventListener("click", function () { showTab(b.dataset.tab); writeURL(); });
    });
    Array.prototype.forEach.call(document.querySelectorAll("#top-table th[data-sort]"), function (th) {
      th.addEventListener("click", function () { state.sort = th.dataset.sort; writeURL(); renderTop(); });
    });
    $("table-filter").addEventListener("input", debounce(function () { renderTop(); }, 120));
    function applySandwich() {
      state.fn = $("sandwich-fn").value.trim(); state.rx = $("sandwich-rx").checked; writeURL(); syncFocus();
      showTab("sandwich");
    }
    $("sandwich-rx").addEventListener("change", applySandwich);
    $("apply-sandwich").addEventListener("click", applySandwich);
    onEnter(["sandwich-fn"], applySandwich);
  }

  // The link to the selected frame's source line (by line, with a repository and git ref known).
  function showSource(url, name, loc) {
    var a = $("frame-source");
    a.hidden = !url;
    if (url) { a.href = url; a.textContent = "source of " + name + " (" + loc + ")"; }
    else a.removeAttribute("href");
  }

  // ------------------------------------------------------------------ start

  function start() {
    wireSignIn();
    wireTokenDownloads();
    readURL();
    fg = new FlameGraph($("flame"), {
      onZoom: function (i) {
        state.zoom = i > 0 ? JSON.stringify(zoomPath(i)) : "";
        writeURL();
      },
      onSelect: function (name, i) {
        showSource(fg.sourceURL(i), name, fg.location(i));
        state.fn = name;
        $("sandwich-fn").value = name;
        syncFocus();
        if (state.tab === "sandwich") loadSandwich();
      }
    });
    fg.setOptions({tooltip: true});
    window.__flame = fg; // read-only debug hook for tests: frames(), searchStats(), lastDrawMs
    buildFilterWidgets();
    syncControls();
    showTab(state.tab);
    updateExports();
    bind();
    // The flamegraph first; plotly.js and the rest after its first paint. In the Requests view the
    // table is the first paint: the chart starts after the table or the flame graph, whichever
    // settles first, so a slow flame graph of the whole range does not hold it ("loading chart…").
    var started = false;
    var after = function () {
      if (started) return;
      started = true;
      requestAnimationFrame(function () {
        setTimeout(function () {
          loadPlotly();
          loadTimeline();
          loadLabelValues();
          loadTables();
          scheduleAuto();
        }, 0);
      });
    };
    loadProfileTypes();
    if (state.mode === "requests") loadRequests().then(after, after);
    loadFlame().then(after, after);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
