// neuro-opt live session page: renders GET /api/sessions/{id}/state, then every `state`
// server-sent event of /api/sessions/{id}/events, without reloading. Plain JS + plotly.js.
"use strict";
(() => {
  const sid = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
  const api = `/api/sessions/${encodeURIComponent(sid)}`;
  const $ = (id) => document.getElementById(id);
  const PLOT = { displayModeBar: false, responsive: true };
  const UNITS = { uA: "µA", mA: "mA", hz: "Hz", Hz: "Hz", us: "µs", ms: "ms", s: "s", nC: "nC" };
  const paramsByPoint = new Map(); // asked params seen so far (pending, best), to check read-backs
  let lastSeq = -1;

  // ---- formatting --------------------------------------------------------------------------------
  function label(name) { // amplitude_uA -> "amplitude (µA)"
    const m = /^(.*)_(uA|mA|hz|Hz|us|ms|s|nC)$/.exec(name);
    const base = (m ? m[1] : name).replace(/_/g, " ");
    return m ? `${base} (${UNITS[m[2]]})` : base;
  }
  function fmt(v) {
    if (v === null || v === undefined) return "—";
    if (typeof v === "number") return Number.isInteger(v) ? String(v) : String(+v.toPrecision(4));
    if (Array.isArray(v)) return v.join(", ");
    return String(v);
  }
  function esc(s) {
    return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
  }
  function coordsText(coords) {
    return Object.entries(coords || {}).map(([k, v]) => `${esc(label(k))} = ${esc(fmt(v))}`).join(", ");
  }
  function kvTable(obj, highlight) {
    const rows = Object.entries(obj || {}).map(([k, v]) =>
      `<tr class="${highlight && highlight.has(k) ? "diff" : ""}"><th>${esc(label(k))}</th>` +
      `<td class="num">${esc(fmt(v))}</td></tr>`);
    return `<table class="kv">${rows.join("")}</table>`;
  }
  function runs(nums) { // [1,2,3,5] -> "1-3,5"
    const out = [];
    for (let i = 0; i < nums.length; i++) {
      let j = i;
      while (j + 1 < nums.length && nums[j + 1] === nums[j] + 1) j++;
      out.push(j > i + 1 ? `${nums[i]}-${nums[j]}` : j === i + 1 ? `${nums[i]},${nums[j]}` : `${nums[i]}`);
      i = j;
    }
    return out.join(",");
  }
  const unitOf = (s) => `${s.target_muscle || "target"} response`;

  // ---- header, pending, best, safety -------------------------------------------------------------
  function renderHeader(s) {
    $("name").textContent = s.name || "session";
    $("session-id").textContent = s.session_id;
    document.title = `${s.name} · ${s.n_done}/${s.n_queries} · ${s.status}`;
    const st = $("status");
    st.textContent = s.status;
    st.className = `badge ${s.status}`;
    $("mode").textContent = s.mode;
    $("confirmation").textContent = s.confirmation;
    $("muscle").textContent = s.target_muscle;
    $("count").textContent = `${s.n_done} / ${s.n_queries}`;
    $("bar-fill").style.width = `${Math.min(100, (100 * s.n_done) / Math.max(1, s.n_queries))}%`;
    $("updated").textContent = `last update ${new Date().toLocaleTimeString()}`;
    document.body.dataset.nDone = String(s.n_done);
  }

  function renderPending(s) {
    const p = s.pending;
    if (!p) {
      $("pending").innerHTML = `<p class="muted">No query pending (session ${esc(s.status)}` +
        `${s.status === "active" ? ": the next one is handed out on ask" : ""}).</p>`;
      return;
    }
    $("pending").innerHTML = `<div class="big">query #${p.query + 1} of ${s.n_queries}: ${coordsText(p.coords)}</div>` +
      kvTable(p.params) + `<div class="muted">query id ${esc(p.query_id)}</div>`;
  }

  function renderBest(s) {
    const b = s.best;
    if (!b) {
      $("best").innerHTML = '<p class="muted">No answered query yet.</p>';
      return;
    }
    $("best").innerHTML = `<div class="big">${coordsText(b.coords)}</div>` +
      `<div>estimated ${esc(unitOf(s))}: <b>${esc(fmt(b.estimate))}</b></div>` + kvTable(b.params);
  }

  function readbackDiff(asked, rb) { // keys whose read-back differs from the asked value
    const diff = new Set();
    for (const [k, v] of Object.entries(rb)) {
      if (!(k in asked)) continue;
      const a = asked[k];
      const same = typeof a === "number" && typeof v === "number"
        ? Math.abs(a - v) <= 1e-3 * Math.max(1, Math.abs(a)) : JSON.stringify(a) === JSON.stringify(v);
      if (!same) diff.add(k);
    }
    return diff;
  }

  function askedOf(s, point) { // [params asked at point, complete?]; without the rig's ch2xy the channel may be unknown
    if (paramsByPoint.has(point)) return [paramsByPoint.get(point), true];
    const tmpl = s.best ? s.best.params : s.pending ? s.pending.params : null, idx = s.space.points[point];
    if (!tmpl || !idx) return [null, false];
    const out = { ...tmpl };
    delete out.channel;
    s.space.names.forEach((n, d) => { if (n in out) out[n] = s.space.values[n][idx[d]]; });
    return [out, false];
  }

  function renderSafety(s) {
    const sf = s.safety || {};
    const limits = { ...(sf.limits || {}) };
    if ("allowed_channels" in limits && limits.allowed_channels === null) limits.allowed_channels = "all";
    const last = s.queries.length ? s.queries[s.queries.length - 1] : null;
    // the read-back answers the last answered query; its asked params are last_params when nothing is pending
    const [ref, whole] = !s.pending ? [sf.last_params, true] : last ? askedOf(s, last.point) : [null, false];
    const rb = sf.last_readback;
    let html = sf.refused ? `<div class="alert">${sf.refused} asked stimulation(s) refused by the limits</div>`
      : '<div class="muted">refused by the limits: 0</div>';
    const what = last ? `query #${last.query + 1}'s asked stimulation` : "the asked stimulation";
    const diff = rb && ref ? readbackDiff(ref, rb) : new Set();
    if (!rb) html += '<div class="muted">read-back from the stimulator: none reported</div>';
    else if (!ref) html += `<div class="muted">read-back not compared: ${what} is not known to this page</div>`;
    else if (diff.size) html += `<div class="alert">read-back differs from ${what}: ${[...diff].map(label).join(", ")}</div>`;
    else html += `<div class="ok">read-back matches ${what}${whole ? "" : " (channel not checked: seen by this page only from the next query on)"}</div>`;
    const cols = [];
    if (ref) cols.push([last ? `asked #${last.query + 1}` : "asked", ref]);
    cols.push(["read back", rb || {}]);
    if (s.pending && sf.last_params) cols.push([`pending #${s.pending.query + 1}`, sf.last_params]);
    const keys = [...new Set(cols.flatMap(([, o]) => Object.keys(o)))];
    html += `<table class="kv"><thead><tr><th></th>${cols.map(([h]) => `<th>${esc(h)}</th>`).join("")}</tr></thead>` +
      keys.map((k) => `<tr class="${diff.has(k) ? "diff" : ""}"><th>${esc(label(k))}</th>` +
        cols.map(([h, o]) => `<td class="num">${!rb && h === "read back" ? "—" : esc(fmt(o[k]))}</td>`).join("") + "</tr>").join("") +
      "</table>";
    html += '<div class="sub">Limits</div>' + kvTable(limits).replace('class="kv"', 'class="kv limits"');
    $("safety").innerHTML = html;
    $("safety-panel").classList.toggle("alarm", !!sf.refused || diff.size > 0);
  }

  // ---- the electrode-array heat maps -----------------------------------------------------------
  function axis(title, vals) {
    return { title: { text: title }, tickmode: "array", tickvals: vals.map((_, i) => i), ticktext: vals.map(fmt),
      showgrid: false, zeroline: false, range: [-0.5, vals.length - 0.5], constrain: "domain" };
  }

  function renderMaps(s) {
    const sp = s.space, names = sp.names;
    const el = (sp.electrode_dims || []).map((d) => names.indexOf(d));
    const has = el.length === 2 && el.every((i) => i >= 0);
    $("maps").hidden = !has;
    document.querySelector("main").classList.toggle("nomap", !has);
    if (!has) {
      $("map").dataset.nQueried = "0";
      return;
    }
    const [ex, ey] = el, xs = sp.values[names[ex]], ys = sp.values[names[ey]];
    const blank = () => ys.map(() => xs.map(() => null));
    const z = blank(), zs = blank(), hover = ys.map(() => xs.map(() => ""));
    const mean = s.posterior.mean || [], std = s.posterior.std || [];
    sp.points.forEach((idx, p) => {
      const i = idx[ex], j = idx[ey], m = mean[p];
      if (m === null || m === undefined || (z[j][i] !== null && m <= z[j][i])) return;
      z[j][i] = m;
      zs[j][i] = std[p] ?? null;
      hover[j][i] = `${coordsText(Object.fromEntries(names.map((n, d) => [n, sp.values[n][idx[d]]])))}` +
        `<br>mean ${fmt(m)}, std ${fmt(std[p])}`;
    });
    const extra = names.length > 2 ? " (max over " + names.filter((_, d) => !el.includes(d)).map(label).join(", ") + ")" : "";
    $("map-note").textContent = `${extra} · grey: no estimate or disabled electrode`;
    // queried points: one numbered marker per electrode, numbers = query order (1-based)
    const groups = new Map();
    for (const q of s.queries) {
      const idx = sp.points[q.point];
      if (!idx) continue;
      const key = `${idx[ex]},${idx[ey]}`;
      if (!groups.has(key)) groups.set(key, { i: idx[ex], j: idx[ey], n: [], r: [] });
      groups.get(key).n.push(q.query + 1);
      groups.get(key).r.push(q.response);
    }
    const g = [...groups.values()];
    const nQueried = g.reduce((a, x) => a + x.n.length, 0);
    const txt = g.map((x) => runs(x.n));
    const queried = { type: "scatter", mode: "markers+text", name: "queried (label: query #)", x: g.map((x) => x.i),
      y: g.map((x) => x.j), text: txt, textfont: { size: 11, color: "#111" },
      marker: { size: txt.map((t) => Math.max(20, 7 * t.length)), color: "rgba(255,255,255,0.85)", line: { color: "#333", width: 1 } },
      hovertext: g.map((x) => `queries ${x.n.join(", ")}<br>responses ${x.r.map(fmt).join(", ")}`), hoverinfo: "text" };
    const traces = [
      { type: "heatmap", z, text: hover, hoverinfo: "text", colorscale: "Viridis", xgap: 1, ygap: 1, name: "estimate",
        colorbar: { title: { text: unitOf(s), side: "right" }, thickness: 12 }, showscale: true },
      queried,
    ];
    const last = s.queries[s.queries.length - 1];
    if (last && sp.points[last.point]) {
      const idx = sp.points[last.point];
      traces.push({ type: "scatter", mode: "markers", name: `latest #${last.query + 1}`, x: [idx[ex]], y: [idx[ey]],
        marker: { symbol: "circle-open", size: 30, color: "#e4002b", line: { width: 3 } }, hoverinfo: "skip" });
    }
    if (s.pending && sp.points[s.pending.point]) {
      const idx = sp.points[s.pending.point];
      traces.push({ type: "scatter", mode: "markers", name: `pending #${s.pending.query + 1}`, x: [idx[ex]], y: [idx[ey]],
        marker: { symbol: "square-open", size: 36, color: "#c026d3", line: { width: 3 } }, hoverinfo: "skip" });
    }
    if (s.best && sp.points[s.best.point]) {
      const idx = sp.points[s.best.point];
      traces.push({ type: "scatter", mode: "markers", name: "best", x: [idx[ex] + 0.32], y: [idx[ey] + 0.3],
        marker: { symbol: "star", size: 17, color: "#ffd21f", line: { color: "#000", width: 1.5 } },
        hovertext: `best: ${coordsText(s.best.coords)}`, hoverinfo: "text" });
    }
    const base = (title) => ({
      title: { text: title, font: { size: 14 } }, margin: { l: 60, r: 10, t: 36, b: 50 }, plot_bgcolor: "#d9dde3",
      xaxis: axis(`electrode ${label(names[ex])}`, xs), yaxis: { ...axis(`electrode ${label(names[ey])}`, ys), scaleanchor: "x" },
      legend: { orientation: "h", y: -0.18, font: { size: 11 } }, uirevision: "keep",
    });
    const hasMean = z.some((row) => row.some((v) => v !== null));
    const lay = base(`Estimated ${unitOf(s)} (posterior mean)`);
    lay.margin.b = 90;
    if (!hasMean) lay.annotations = [{ text: "no estimate yet (waiting for the first answer)", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5 }];
    Plotly.react("map", traces, lay, PLOT);
    $("map").dataset.nQueried = String(nQueried);
    const dots = { type: "scatter", mode: "markers", name: "queried", showlegend: false, x: queried.x, y: queried.y, hoverinfo: "skip",
      marker: { size: 7, color: "#fff", line: { color: "#000", width: 1 } } };
    const layStd = base("Uncertainty (posterior std)");
    layStd.margin.b = 90;
    Plotly.react("map-std", [{ type: "heatmap", z: zs, text: hover, hoverinfo: "text", colorscale: "YlOrRd", reversescale: true, xgap: 1, ygap: 1,
      colorbar: { title: { text: "std", side: "right" }, thickness: 12 } }, dots], layStd, PLOT);
  }

  // ---- profiles along each dimension (more than two dims, or no electrode map) -------------------
  function renderProfiles(s) {
    const sp = s.space, names = sp.names;
    const show = names.length > 2 || (sp.electrode_dims || []).length !== 2;
    $("profiles-panel").hidden = !show;
    if (!show) return;
    const mean = s.posterior.mean || [], std = s.posterior.std || [];
    let ref = s.best ? s.best.point : null;
    if (ref === null) mean.forEach((m, p) => { if (m !== null && (ref === null || m > mean[ref])) ref = p; });
    const box = $("profiles");
    names.forEach((name, d) => {
      let div = $(`profile-${d}`);
      if (!div) {
        div = document.createElement("div");
        div.id = `profile-${d}`;
        div.className = "plot";
        box.appendChild(div);
      }
      const vals = sp.values[name], at = ref === null ? null : sp.points[ref];
      const onLine = (idx) => at && idx.every((v, k) => k === d || v === at[k]);
      const pts = sp.points.map((idx, p) => [idx, p]).filter(([idx]) => onLine(idx)).sort((a, b) => a[0][d] - b[0][d]);
      const x = pts.map(([idx]) => vals[idx[d]]), m = pts.map(([, p]) => mean[p]), sd = pts.map(([, p]) => std[p]);
      const hi = m.map((v, i) => (v === null || sd[i] === null ? null : v + sd[i]));
      const lo = m.map((v, i) => (v === null || sd[i] === null ? null : v - sd[i]));
      const byX = new Map();
      for (const q of s.queries) {
        const idx = sp.points[q.point];
        if (!idx || !onLine(idx) || q.response === null) continue;
        const v = vals[idx[d]];
        if (!byX.has(v)) byX.set(v, []);
        byX.get(v).push(q);
      }
      const qs = s.queries.filter((q) => sp.points[q.point] && onLine(sp.points[q.point]) && q.response !== null);
      const top = [...byX.entries()].map(([v, list]) => [v, Math.max(...list.map((q) => q.response)), runs(list.map((q) => q.query + 1))]);
      const others = at ? names.filter((_, k) => k !== d).map((n) => `${label(n)}=${fmt(sp.values[n][at[names.indexOf(n)]])}`).join(", ") : "";
      const dimTitle = (sp.electrode_dims || []).includes(name) ? `electrode ${label(name)}` : label(name);
      Plotly.react(div, [
        { x, y: hi, mode: "lines", line: { width: 0 }, hoverinfo: "skip", showlegend: false },
        { x, y: lo, mode: "lines", line: { width: 0 }, fill: "tonexty", fillcolor: "rgba(47,111,214,0.2)", name: "± std", hoverinfo: "skip" },
        { x, y: m, mode: "lines+markers", name: "mean", line: { color: "#2f6fd6" } },
        { x: qs.map((q) => vals[sp.points[q.point][d]]), y: qs.map((q) => q.response), mode: "markers", name: "responses (label: query #)",
          marker: { color: "#e4002b", size: 8 }, hovertext: qs.map((q) => `query ${q.query + 1}: ${fmt(q.response)}`), hoverinfo: "text" },
        { x: top.map((t) => t[0]), y: top.map((t) => t[1]), mode: "text", text: top.map((t) => t[2]), textposition: "top center",
          cliponaxis: false, showlegend: false, hoverinfo: "skip", textfont: { size: 11 } },
      ], {
        title: { text: `along ${dimTitle}${others ? ` <span style="font-size:11px">(${others})</span>` : ""}`, font: { size: 13 } },
        margin: { l: 55, r: 10, t: 44, b: 90 }, xaxis: { title: { text: dimTitle }, tickvals: vals, ticktext: vals.map(fmt) },
        yaxis: { title: { text: unitOf(s) } }, legend: { orientation: "h", y: -0.32, yanchor: "top", font: { size: 10 } }, uirevision: "keep",
        annotations: m.some((v) => v !== null) ? [] : [{ text: "no estimate yet", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5 }],
      }, PLOT);
    });
  }

  // ---- progress over query number ------------------------------------------------------------------
  function renderProgress(s) {
    const q = s.queries, n = q.map((r) => r.query + 1);
    const valid = q.filter((r) => r.valid && r.response !== null), invalid = q.filter((r) => !r.valid && r.response !== null);
    const xaxis = { title: { text: "query number" }, dtick: q.length > 30 ? undefined : 1, range: [0.5, Math.max(q.length, 1) + 0.5] };
    const lay = (title, ytitle) => ({ title: { text: title, font: { size: 14 } }, margin: { l: 60, r: 10, t: 36, b: 95 },
      xaxis, yaxis: { title: { text: ytitle }, rangemode: "tozero" }, legend: { orientation: "h", y: -0.3, yanchor: "top", font: { size: 11 } }, uirevision: "keep" });
    Plotly.react("chart-response", [
      { x: valid.map((r) => r.query + 1), y: valid.map((r) => r.response), mode: "lines+markers", name: "response", line: { color: "#e4002b" } },
      { x: invalid.map((r) => r.query + 1), y: invalid.map((r) => r.response), mode: "markers", name: "invalid trial", marker: { symbol: "x", color: "#888", size: 9 } },
      { x: n, y: q.map((r) => r.exploration), mode: "lines+markers", name: "exploration: estimate at the believed best", line: { color: "#2f6fd6" } },
    ], lay("Responses and exploration", unitOf(s)), PLOT);
    Plotly.react("chart-exploit", [
      { x: n, y: q.map((r) => r.exploitation), mode: "lines+markers", name: "exploitation: estimate at the queried point ÷ at the best", line: { color: "#1a8f3c" } },
    ], { ...lay("Exploitation", "fraction of the best estimate"), yaxis: { title: { text: "fraction of the best estimate" }, range: [0, 1.05] } }, PLOT);
  }

  // ---- state in ----------------------------------------------------------------------------------
  function render(s) {
    if (s.pending) paramsByPoint.set(s.pending.point, s.pending.params);
    if (s.best) paramsByPoint.set(s.best.point, s.best.params);
    renderHeader(s);
    renderPending(s);
    renderBest(s);
    renderSafety(s);
    renderMaps(s);
    renderProfiles(s);
    renderProgress(s);
  }
  function take(s, seq) {
    if (seq < lastSeq) return; // an older fetch answering after a newer event
    lastSeq = seq;
    try { render(s); } catch (err) { console.error(err); $("conn").textContent = `render error: ${err.message}`; }
  }
  function setConn(text, cls) {
    const c = $("conn");
    c.textContent = text;
    c.className = `conn ${cls}`;
  }
  let seq = 0;
  function connect() {
    const es = new EventSource(`${api}/events`, { withCredentials: true });
    es.addEventListener("state", (ev) => take(JSON.parse(ev.data), ++seq));
    es.onopen = () => setConn("live", "live");
    es.onerror = () => setConn(es.readyState === EventSource.CLOSED ? "disconnected: reload the page" : "reconnecting…", "lost");
  }
  const mine = ++seq;
  fetch(`${api}/state`, { credentials: "same-origin" })
    .then((r) => (r.ok ? r.json() : Promise.reject(new Error(`state: HTTP ${r.status}`))))
    .then((s) => take(s, mine))
    .catch((err) => setConn(String(err.message || err), "lost"));
  connect();
})();
