/*
 * flamewatch unit formatting: window.FlameUnits (also module.exports under node).
 *
 * One place that turns stored values into what a person reads, used by
 * flame.js (tooltips, search stats) and app.js (status, tables, timeline).
 * A profile type's JSON answer carries "unit" and, for types stored as
 * sample counts, "period_ns" (docs/architecture.md, "Profile types"):
 *
 *   samples + period_ns  -> time (s / ms / min / h), plus the sample count
 *   samples, no period   -> "N samples"
 *   nanoseconds (or another time unit) -> time
 *   bytes                -> binary prefixes: B, KiB, MiB, GiB, TiB, PiB
 *   count (objects, contentions, anything else) -> plain count "1,234"
 *
 * Plain script, no modules, no DOM: loaded before flame.js by the page and
 * inlined with it by viewer/standalone.py.
 */
(function (global) {
  "use strict";

  var TIME_NS = {nanoseconds: 1, microseconds: 1e3, milliseconds: 1e6, seconds: 1e9};
  var BIN = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

  /** 1234567.8 -> "1,234,568" (rounded; "-1,234" for negatives). */
  function fmtInt(v) {
    v = Math.round(Number(v) || 0);
    var s = String(Math.abs(v)).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
    return v < 0 ? "-" + s : s;
  }

  /** Share of t as "12.34%", "-" when t is 0. */
  function pct(v, t) {
    return t ? (100 * v / t).toFixed(2) + "%" : "-";
  }

  // Three significant digits for 1 <= |x| < 1000: 1.50, 15.0, 150.
  function sig3(x) {
    var a = Math.abs(x);
    return a >= 100 ? x.toFixed(0) : a >= 10 ? x.toFixed(1) : x.toFixed(2);
  }

  /** Bytes with binary prefixes: 512 -> "512 B", 1572864 -> "1.50 MiB". */
  function fmtBytes(v) {
    v = Number(v) || 0;
    var a = Math.abs(v);
    if (a < 1024) return fmtInt(v) + " B";
    var k = 0;
    while (a >= 1024 && k < BIN.length - 1) { a /= 1024; k++; }
    // 1023.99 KiB would print as "1024 KiB": take the next prefix instead.
    if (Number(sig3(a)) >= 1024 && k < BIN.length - 1) { a /= 1024; k++; }
    return (v < 0 ? "-" : "") + sig3(a) + " " + BIN[k];
  }

  /** Nanoseconds as a duration: "850 ns", "12.0 µs", "3.40 ms", "1.50 s", "2.50 min", "1.20 h". */
  function fmtDuration(ns) {
    ns = Number(ns) || 0;
    var a = Math.abs(ns), sign = ns < 0 ? "-" : "";
    if (a === 0) return "0 s";
    var steps = [[3.6e12, "h"], [6e10, "min"], [1e9, "s"], [1e6, "ms"], [1e3, "µs"]];
    for (var k = 0; k < steps.length; k++) {
      if (a >= steps[k][0]) {
        var x = a / steps[k][0];
        // Rounding up to the next step (999.7 ms) reads better as the bigger unit.
        if (k > 0 && Number(sig3(x)) * steps[k][0] >= steps[k - 1][0]) return sign + sig3(a / steps[k - 1][0]) + " " + steps[k - 1][1];
        return sign + sig3(x) + " " + steps[k][1];
      }
    }
    return sign + fmtInt(a) + " ns";
  }

  /**
   * The unit description of a JSON answer (flame, diff, timeline, top, sandwich):
   * {unit, periodNs, kind} where kind is "time" (value * scale = ns), "samples"
   * (counts without a period), "bytes" or "count".
   */
  function unitOf(doc) {
    var unit = (doc && doc.unit) || "samples";
    var period = doc && Number(doc.period_ns) > 0 ? Number(doc.period_ns) : 0;
    var u = {unit: unit, periodNs: period, kind: "count", scale: 1};
    if (unit === "samples") {
      if (period) { u.kind = "time"; u.scale = period; } else u.kind = "samples";
    } else if (TIME_NS[unit]) {
      u.kind = "time"; u.scale = TIME_NS[unit];
    } else if (unit === "bytes") {
      u.kind = "bytes";
    }
    return u;
  }

  /** A stored value in its unit: "1.50 s", "1.50 MiB", "1,234", "1,234 samples". */
  function format(v, u) {
    u = u && u.kind ? u : unitOf(u);
    v = Number(v) || 0;
    if (u.kind === "time") return fmtDuration(v * u.scale);
    if (u.kind === "bytes") return fmtBytes(v);
    if (u.kind === "samples") return fmtInt(v) + " samples";
    return fmtInt(v);
  }

  /** Like format, with the sample count added for samples stored with a period: "1.50 s (150 samples)". */
  function formatLong(v, u) {
    u = u && u.kind ? u : unitOf(u);
    var s = format(v, u);
    if (u.kind === "time" && u.unit === "samples") s += " (" + fmtInt(v) + " samples)";
    return s;
  }

  /** The sample count behind a time shown for samples stored with a period: " · 150 samples", else "". */
  function samplesNote(v, u) {
    u = u && u.kind ? u : unitOf(u);
    return u.kind === "time" && u.unit === "samples" ? " · " + fmtInt(v) + " samples" : "";
  }

  /** A signed difference: "+1.50 MiB", "-300 ms", "+0 s". */
  function formatDelta(v, u) {
    v = Number(v) || 0;
    var s = format(Math.abs(v), u);
    return (v < 0 ? "-" : "+") + s;
  }

  /**
   * For charts (plotly cannot do binary prefixes): one divisor and suffix for a
   * whole series set, picked by its largest value. {div, suffix, title}; the
   * chart plots value * mul / div. Time -> seconds family, bytes -> KiB.., count -> 1.
   */
  function axis(maxValue, u) {
    u = u && u.kind ? u : unitOf(u);
    var m = Math.abs(Number(maxValue) || 0);
    if (u.kind === "time") {
      var ns = m * u.scale;
      var steps = [[3.6e12, "h"], [6e10, "min"], [1e9, "s"], [1e6, "ms"], [1e3, "µs"], [1, "ns"]];
      for (var k = 0; k < steps.length - 1 && ns < steps[k][0]; k++) { /* find the unit */ }
      return {mul: u.scale, div: steps[k][0], suffix: steps[k][1]};
    }
    if (u.kind === "bytes") {
      var j = 0;
      while (m >= 1024 && j < BIN.length - 1) { m /= 1024; j++; }
      return {mul: 1, div: Math.pow(1024, j), suffix: BIN[j]};
    }
    return {mul: 1, div: 1, suffix: u.kind === "samples" ? "samples" : ""};
  }

  /** What a value measures, for titles: "CPU time", "bytes", "samples", "count". */
  function quantity(u) {
    u = u && u.kind ? u : unitOf(u);
    return u.kind === "time" ? "time" : u.kind === "bytes" ? "bytes" : u.kind === "samples" ? "samples" : "count";
  }

  var FlameUnits = {
    fmtInt: fmtInt, pct: pct, fmtBytes: fmtBytes, fmtDuration: fmtDuration, unitOf: unitOf,
    format: format, formatLong: formatLong, samplesNote: samplesNote, formatDelta: formatDelta, axis: axis, quantity: quantity
  };
  global.FlameUnits = FlameUnits;
  if (typeof module !== "undefined" && module.exports) module.exports = FlameUnits;
})(typeof window !== "undefined" ? window : this);
