// The citizens' map: one marker per node, coloured by its current European Air Quality Index
// band with the band's number on it (never colour alone), grey and dashed when stale or offline;
// a click opens the node's last 24 h. Everything comes from this service's JSON API.
"use strict";
(function () {
  const params = new URLSearchParams(location.search);
  const DARK_BANDS = new Set(["poor", "very_poor", "extremely_poor"]);
  const REFRESH_MS = Number(params.get("refresh_s") || 60) * 1000;
  let lang = pickLang();
  let T = I18N[lang];
  let data = null;
  let config = null;
  const markers = new Map();

  function pickLang() {
    const asked = params.get("lang") || localStorage.getItem("edge-node-lang") || navigator.language || "en";
    const short = asked.slice(0, 2).toLowerCase();
    return I18N[short] ? short : "en";
  }

  const map = L.map("map", { zoomControl: true, preferCanvas: false }).setView([41.5636, 2.0111], 14);
  L.control.scale({ imperial: false }).addTo(map);
  const streetLayer = L.layerGroup().addTo(map);

  function fmtTime(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return d.toLocaleString(lang, { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit" });
  }

  function bandName(key) { return key ? T.bands[key] : T.no_band; }

  function describe(node) {
    // The accessible name and the visible state line: id, band or state, since when.
    if (node.state === "offline" || node.state === "stale") {
      const since = node.since ? ` ${T.since} ${fmtTime(node.since)}` : "";
      return `${T.states[node.state]}${since}`;
    }
    if (node.state === "no_data") return T.states.no_data;
    if (!node.band) return `${T.no_band} (${node.reason || ""})`;
    return `${bandName(node.band)} (${node.band_index}/6)`;
  }

  function markerHtml(node) {
    const inactive = node.state !== "live";
    const text = inactive ? (node.state === "offline" ? "×" : "?") : node.band_index || "–";
    const style = inactive || !node.band ? "" :
      `background:${node.colour};color:${DARK_BANDS.has(node.band) ? "#fff" : "#1a1a1a"}`;
    const alerting = node.alerts && node.alerts.length ? '<span class="alerting" aria-hidden="true">!</span>' : "";
    return `<div class="dot" style="${style}" aria-hidden="true">${text}</div>${alerting}`;
  }

  function iconFor(node) {
    const classes = ["node-marker"];
    if (node.state !== "live") classes.push("inactive");
    else if (!node.band) classes.push("noband");
    return L.divIcon({ className: classes.join(" "), html: markerHtml(node), iconSize: [30, 30],
      iconAnchor: [15, 15], popupAnchor: [0, -14] });
  }

  function label(node) {
    let what = describe(node);
    if (node.alerts && node.alerts.length) what += `; ${T.alerts}: ${node.alerts.join(", ")}`;
    return T.marker(node.node, what);
  }

  function placeMarker(node) {
    if (node.lat === null || node.lon === null) return;
    let m = markers.get(node.node);
    if (!m) {
      m = L.marker([node.lat, node.lon], { keyboard: true, riseOnHover: true });
      m.on("click", () => openPopup(node.node));
      m.addTo(map);
      markers.set(node.node, m);
    }
    m.setLatLng([node.lat, node.lon]);
    m.setIcon(iconFor(node));
    const elm = m.getElement();
    if (elm) {
      const name = label(node);
      elm.setAttribute("aria-label", name);
      elm.setAttribute("title", name);
      elm.setAttribute("role", "button");
      elm.dataset.node = node.node;
      elm.dataset.state = node.state;
      elm.dataset.band = node.band || "";
      elm.onkeydown = (ev) => {
        if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); openPopup(node.node); }
      };
    }
  }

  function renderStatic() {
    document.documentElement.lang = lang;
    document.title = `Terrassa: ${T.title}`;
    document.getElementById("title").textContent = T.title;
    document.getElementById("map").setAttribute("aria-label", T.map);
    document.getElementById("langs").setAttribute("aria-label", T.lang);
    for (const b of document.querySelectorAll("#langs button")) {
      b.setAttribute("aria-pressed", String(b.dataset.lang === lang));
    }
    document.getElementById("summary-title").textContent = T.summary;
    document.getElementById("worst-title").textContent = T.worst;
    document.getElementById("alerts-title").textContent = T.alerts;
    document.getElementById("legend-title").textContent = T.legend;
    document.getElementById("indicative").textContent = T.indicative;
    document.getElementById("nodes-title").textContent = T.node_list;
  }

  function swatch(colour, text, dark) {
    const s = document.createElement("span");
    s.className = "swatch";
    s.style.background = colour;
    s.style.color = dark ? "#fff" : "#1a1a1a";
    s.textContent = text;
    s.setAttribute("aria-hidden", "true");
    return s;
  }

  function renderPanel() {
    const legend = document.getElementById("legend");
    legend.replaceChildren();
    data.bands.forEach((b, i) => {
      const li = document.createElement("li");
      li.append(swatch(b.colour, String(i + 1), DARK_BANDS.has(b.key)));
      const upper = b.pm2_5_upper === null ? `> ${data.bands[i - 1].pm2_5_upper}` : `≤ ${b.pm2_5_upper}`;
      const upper10 = b.pm10_upper === null ? `> ${data.bands[i - 1].pm10_upper}` : `≤ ${b.pm10_upper}`;
      li.append(`${i + 1} ${bandName(b.key)} · PM2.5 ${upper}, PM10 ${upper10} µg/m³`);
      legend.append(li);
    });
    const grey = document.createElement("li");
    grey.append(swatch("#9e9e9e", "×"), `${T.states.offline} / ${T.states.stale}`);
    legend.append(grey);

    const s = data.summary;
    document.getElementById("reporting").textContent = T.reporting(s.nodes);
    const worst = document.getElementById("worst");
    worst.replaceChildren();
    for (const area of s.worst_areas) {
      const li = document.createElement("li");
      const band = data.bands.find((b) => b.key === area.band);
      li.append(swatch(band.colour, String(area.band_index), DARK_BANDS.has(area.band)),
        `${area.area}: ${bandName(area.band)} (${area.nodes.length} ${T.alert_nodes})`);
      worst.append(li);
    }
    const alerts = document.getElementById("alerts");
    alerts.replaceChildren();
    if (!data.alerts.length) {
      const li = document.createElement("li");
      li.className = "none";
      li.textContent = T.no_alerts;
      alerts.append(li);
    }
    for (const a of data.alerts) {
      const li = document.createElement("li");
      li.dataset.alert = a.id;
      li.textContent = alertText(a);
      alerts.append(li);
    }
    document.getElementById("updated").textContent = `${T.updated}: ${fmtTime(data.generated_at)}`;
  }

  function duration(seconds) {
    return seconds >= 3600 && seconds % 3600 === 0 ? `${seconds / 3600} h` : `${Math.round(seconds / 60)} min`;
  }

  function alertText(a) {
    const bandKey = (i) => data.bands[Math.round(i) - 1].key;
    const value = a.kind === "eaqi" ? bandName(bandKey(a.value)) : `${a.value} ${a.unit}`;
    const clear = a.kind === "eaqi" ? bandName(bandKey(a.clear_at)) : a.clear_at;
    const ends = T.ends[a.kind](clear, duration(a.window_s), duration(a.clear_after_s));
    return `${a.title} — ${a.area}, ${T.since} ${fmtTime(a.since)}: ${value} (${a.nodes.join(", ")}). ` +
      `${T.alert_ends} ${ends}.`;
  }

  function drawStreets() {
    // With no tiles (offline, or no tile server configured) the streets the nodes stand on
    // still give the map its shape.
    streetLayer.clearLayers();
    for (const street of config.streets || []) {
      L.polyline(street.axis, { color: "#7d8a96", weight: 3, opacity: 0.6, interactive: false })
        .bindTooltip(street.name, { sticky: true }).addTo(streetLayer);
    }
  }

  function render() {
    renderStatic();
    renderPanel();
    const alertsByNode = new Map();
    for (const a of data.alerts) for (const n of a.nodes) {
      alertsByNode.set(n, (alertsByNode.get(n) || []).concat(a.title));
    }
    const list = document.getElementById("node-list");
    list.replaceChildren();
    for (const node of data.nodes) {
      node.alerts = alertsByNode.get(node.node) || [];
      placeMarker(node);
      const li = document.createElement("li");
      li.dataset.node = node.node;
      li.textContent = label(node).replace(/^[^ ]+ /, "");  // "trs-007: ..." without the word "Node"
      list.append(li);
    }
  }

  async function getJSON(path) {
    const r = await fetch(path, { cache: "no-store" });
    if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
    return r.json();
  }

  async function refresh() {
    try {
      data = await getJSON("api/map");
      render();
      document.body.dataset.loaded = "true";
    } catch (err) {
      document.getElementById("updated").textContent = String(err);
    }
  }

  function plotFigure(caption, svg) {
    const fig = document.createElement("figure");
    const cap = document.createElement("figcaption");
    cap.textContent = caption;
    fig.append(cap, svg);
    return fig;
  }

  function pmBands(pollutant) {
    return data.bands.map((b) => ({ key: b.key, colour: b.colour, upper: b[`${pollutant}_upper`] }));
  }

  async function openPopup(id) {
    const m = markers.get(id);
    const box = document.createElement("div");
    box.className = "popup";
    box.dataset.node = id;
    box.textContent = T.loading;
    m.bindPopup(box, { maxWidth: 440, autoPanPadding: [10, 10] }).openPopup();
    let day;
    try {
      day = await getJSON(`api/nodes/${encodeURIComponent(id)}/day`);
    } catch (err) {
      box.textContent = String(err);
      return;
    }
    box.replaceChildren();
    const node = day.node;
    const h = document.createElement("h3");
    h.textContent = `${T.node} ${node.node}`;
    const site = document.createElement("div");
    site.textContent = node.site || "";
    const state = document.createElement("p");
    state.className = "state";
    state.textContent = describe(node) + (node.hour && node.band ? ` · ${T.at} ${fmtTime(node.hour)}` : "") +
      (node.partial ? ` (${T.partial})` : "") + (node.band ? ` · ${T.indicative_short}` : "");
    box.append(h, site, state);
    const facts = document.createElement("p");
    facts.className = "facts";
    const bits = [];
    if (node.humid_share) bits.push(T.humid(Math.round(node.humid_share * 100)));
    const last = day.hours.length ? day.hours[day.hours.length - 1] : null;
    if (last && last.running_24h && last.running_24h.pm2_5 !== undefined) {
      bits.push(T.running(last.running_24h.pm2_5, last.running_24h.pm10));
    }
    if (day.heat) bits.push(`${T.heat} ${day.heat.heat_index} °C · ${T.humidex} ${day.heat.humidex}`);
    const den = day.noise && day.noise.den;
    if (den && den.lden !== null) {
      bits.push(`${T.lden} ${den.lden} dB (${T.who}: ${den.who_road_lden_db} dB)`);
    } else if (den) {
      const parts = [["Lday", den.lday], ["Levening", den.levening], ["Lnight", den.lnight]]
        .filter(([, v]) => v !== null).map(([k, v]) => `${k} ${v}`);
      if (parts.length) bits.push(`${parts.join(" · ")} dB(A)`);
    }
    facts.textContent = bits.join(" · ");
    box.append(facts);
    const from = Date.parse(day.from) / 1000, to = Date.parse(day.to) / 1000;
    const s = day.series;
    for (const p of ["pm2_5", "pm10"]) {
      const series = [];
      if (s[p]) series.push({ name: `${p} ${T.raw}`, points: s[p], colour: "#555", dash: "4 3" });
      if (s[`${p}_corrected`]) series.push({ name: `${p} ${T.corrected}`, points: s[`${p}_corrected`], colour: "#0b3d91" });
      if (series.length) {
        const caption = `${T.plots[p]} — ${T.corrected} (—), ${T.raw} (- -)`;
        box.append(plotFigure(caption, Plots.line({ series, from, to, bands: pmBands(p), label: caption, yMin: 0 })));
      }
    }
    for (const [p, colour, yMax] of [["temperature", "#c0392b"], ["humidity", "#2471a3", 100], ["laeq", "#6c3483"]]) {
      if (s[p]) {
        box.append(plotFigure(T.plots[p], Plots.line({ series: [{ name: p, points: s[p], colour }], from, to,
          label: T.plots[p], yMax })));
      }
    }
    const flags = document.createElement("p");
    flags.className = "flags";
    const entries = Object.entries(day.flags);
    flags.textContent = `${T.flags}: ` + (entries.length ? entries.map(([k, v]) => `${k} ×${v}`).join(", ") : T.no_flags);
    box.append(flags);
    // Laid out again once the plots have their size, so that the open popup pans into view.
    const popup = m.getPopup();
    popup.update();
    requestAnimationFrame(() => { if (popup.isOpen()) popup.update(); });
  }

  document.getElementById("langs").addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-lang]");
    if (!b) return;
    lang = b.dataset.lang;
    T = I18N[lang];
    localStorage.setItem("edge-node-lang", lang);
    if (data) render();
  });

  (async function start() {
    renderStatic();
    const first = refresh();  // both at once: the markers need not wait for the streets
    config = await getJSON("api/config");
    if (config.tiles && config.tiles.url) {
      L.tileLayer(config.tiles.url, { attribution: config.tiles.attribution || "", maxZoom: 19 }).addTo(map);
    }
    drawStreets();
    await first;
    const located = data.nodes.filter((n) => n.lat !== null && n.lon !== null);
    if (located.length) map.fitBounds(located.map((n) => [n.lat, n.lon]), { padding: [30, 30], maxZoom: 16 });
    setInterval(refresh, REFRESH_MS);
  })();
})();
