// Small hand-written SVG line plots for the popup: one or two series over the last 24 h, with
// optional horizontal colour bands behind (the EAQI bands for PM).
"use strict";
window.Plots = (function () {
  const NS = "http://www.w3.org/2000/svg";
  const W = 400, H = 130, L = 34, R = 16, T = 6, B = 18;

  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (parent) parent.appendChild(node);
    return node;
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  // series: [{name, points: [[t, v], ...], colour, dash}], bands: [{upper, colour}] (upper null = top)
  function line(opts) {
    const { series, from, to, bands, label, yMin } = opts;
    const values = series.flatMap((s) => s.points.map((p) => p[1]));
    let lo = yMin !== undefined ? yMin : Math.min(...values);
    let hi = Math.max(...values);
    if (yMin === undefined) { const pad = (hi - lo) * 0.1 || 1; lo = Math.floor(lo - pad); hi = hi + pad; }
    hi = yMin === 0 ? niceMax(hi * 1.1) : hi;
    if (opts.yMax !== undefined && hi > opts.yMax) hi = opts.yMax;
    const x = (t) => L + ((t - from) / (to - from)) * (W - L - R);
    const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label, class: "plot" });
    if (bands) {
      let below = lo;
      for (const band of bands) {
        const upper = band.upper === null ? hi : Math.min(band.upper, hi);
        if (upper > below) {
          el("rect", { x: L, width: W - L - R, y: y(upper), height: y(below) - y(upper),
            fill: band.colour, "fill-opacity": 0.35, class: "band", "data-band": band.key }, svg);
        }
        below = Math.max(below, band.upper === null ? hi : band.upper);
        if (below >= hi) break;
      }
    }
    el("rect", { x: L, y: T, width: W - L - R, height: H - T - B, fill: "none", stroke: "#888" }, svg);
    for (const v of [lo, (lo + hi) / 2, hi]) {
      const t = el("text", { x: L - 3, y: y(v) + 4, "text-anchor": "end", "font-size": 10 }, svg);
      t.textContent = Math.round(v * 10) / 10;
    }
    for (let h = 0; h <= 24; h += 6) {
      const t0 = from + (h / 24) * (to - from);
      const tx = el("text", { x: x(t0), y: H - 4, "text-anchor": "middle", "font-size": 10 }, svg);
      const d = new Date(t0 * 1000);
      tx.textContent = `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
    }
    for (const s of series) {
      if (!s.points.length) continue;
      const d = s.points.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
      el("path", { d, fill: "none", stroke: s.colour, "stroke-width": 1.8,
        "stroke-dasharray": s.dash || "", class: "series", "data-series": s.name,
        "data-points": s.points.length }, svg);
    }
    return svg;
  }
  return { line };
})();
