// fl-kafka dashboard: renders the server's live state (server-sent events from events) into plain DOM and SVG.
// Read-only: it only ever GETs. Every text from the server goes through textContent, never innerHTML.
"use strict";

const TOKEN = new URLSearchParams(location.hash.slice(1)).get("token");
const PAST_COLOURS = ["#d97706", "#7c3aed", "#0d9488", "#db2777", "#65a30d", "#475569"];
const overlays = new Map();  // history file name -> {points, colour, label}
let latest = null;

function withToken(url) {
  return TOKEN ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(TOKEN) : url;
}

async function getJSON(url) {
  const headers = TOKEN ? {Authorization: "Bearer " + TOKEN} : {};
  const response = await fetch(url, {headers, cache: "no-store"});
  if (!response.ok) throw new Error(url + ": HTTP " + response.status);
  return response.json();
}

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function svgEl(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

function fmt(value, digits) {
  return value === null || value === undefined ? "-" : Number(value).toFixed(digits);
}

function setText(id, value) {
  document.getElementById(id).textContent = String(value);
}

function badge(text, cls) {
  const span = el("span", {class: "badge " + (cls || text)}, text.replace(/_/g, " "));
  return span;
}

function renderSession(s) {
  setText("session-id", s.id);
  setText("strategy", s.strategy);
  setText("model", s.model || "-");
  setText("dataset", s.dataset || "-");
  setText("round-current", s.round);
  setText("rounds-total", s.rounds);
  const status = document.getElementById("status");
  status.className = "badge " + s.status;
  status.textContent = s.status.replace(/_/g, " ");
  document.title = `round ${s.round}/${s.rounds} · ${s.status} · fl-kafka`;
  document.body.dataset.status = s.status;  // for scripts and tests that watch the page (CSS selectors)
  document.body.dataset.round = s.round;
}

function renderNodes(nodes) {
  const body = document.querySelector("#nodes tbody");
  body.replaceChildren();
  for (const n of nodes) {
    const row = el("tr", {"data-node": n.id, "data-state": n.state});
    row.append(el("td", {}, n.id));
    row.append(el("td", {}, n.connected ? "connected" : "gone"));
    const state = el("td");
    state.append(badge(n.state));
    row.append(state, el("td", {class: "muted"}, n.reason || ""));
    body.append(row);
  }
  setText("nodes-count", `(${nodes.filter((n) => n.connected).length} connected)`);
}

function renderRounds(rounds) {
  const body = document.querySelector("#rounds tbody");
  body.replaceChildren();
  for (const r of rounds.slice().reverse()) {
    const row = el("tr", {"data-round": r.round});
    row.append(el("td", {class: "num"}, r.round));
    const status = el("td");
    status.append(badge(r.status));
    if (r.failure) status.title = r.failure;
    row.append(status);
    row.append(el("td", {class: "num"}, `${r.accepted}/${r.participants}`));
    row.append(el("td", {class: "num"}, r.rejected));
    row.append(el("td", {class: "num"}, fmt(r.train_loss, 4)));
    row.append(el("td", {class: "num"}, fmt(r.holdout_loss, 4)));
    row.append(el("td", {class: "num"}, fmt(r.holdout_accuracy, 4)));
    row.append(el("td", {class: "num"}, fmt(r.total_s, 2)));
    row.append(el("td", {class: "num"}, fmt(r.epsilon, 3)));
    body.append(row);
  }
}

function renderReasons(id, counts) {
  const list = document.getElementById(id);
  list.replaceChildren();
  const entries = Object.entries(counts);
  if (!entries.length) list.append(el("li", {class: "muted"}, "none"));
  for (const [reason, count] of entries) {
    const item = el("li", {"data-reason": reason});
    item.append(el("span", {}, reason.replace(/_/g, " ")), el("b", {}, count));
    list.append(item);
  }
}

function renderLinks(links) {
  for (const name of ["history", "model"]) {
    const a = document.getElementById("link-" + name);
    a.classList.toggle("disabled", !links[name]);
    a.href = withToken("files/" + name);
  }
  document.getElementById("link-metrics").href = withToken("../metrics");
}

// One line chart: the live series (solid, with a point per round) and the overlaid past sessions (dashed).
function drawChart(id, key, live, fixedMax) {
  const svg = document.getElementById(id);
  svg.replaceChildren();
  const W = 420, H = 220, L = 44, R = 12, T = 10, B = 28;
  const series = [{points: live.map((r) => ({x: r.round, y: r[key]})), cls: "live"}];
  for (const o of overlays.values()) {
    series.push({points: o.points.map((p) => ({x: p.round, y: key === "holdout_accuracy" ? p.accuracy : p.loss})),
                 cls: "past", colour: o.colour});
  }
  const all = series.flatMap((s) => s.points).filter((p) => p.y !== null && p.x !== null);
  const xMax = Math.max(1, ...all.map((p) => p.x), latest ? latest.session.rounds : 1);
  let yMin = 0, yMax = fixedMax || Math.max(1e-9, ...all.map((p) => p.y));
  if (!fixedMax) yMax *= 1.1;
  const sx = (x) => L + (W - L - R) * (xMax <= 1 ? 0.5 : (x - 1) / (xMax - 1));
  const sy = (y) => T + (H - T - B) * (1 - (y - yMin) / (yMax - yMin));
  for (let i = 0; i <= 4; i++) {
    const y = yMin + (yMax - yMin) * i / 4;
    svg.append(svgEl("line", {x1: L, x2: W - R, y1: sy(y), y2: sy(y), class: "grid"}));
    const label = svgEl("text", {x: L - 4, y: sy(y) + 3, "text-anchor": "end"});
    label.textContent = y.toFixed(yMax < 10 ? 2 : 0);
    svg.append(label);
  }
  svg.append(svgEl("line", {x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis"}));
  svg.append(svgEl("line", {x1: L, x2: L, y1: T, y2: H - B, class: "axis"}));
  const ticks = Math.min(xMax, 10);
  for (let i = 0; i < ticks; i++) {
    const x = Math.round(1 + (xMax - 1) * (ticks <= 1 ? 0 : i / (ticks - 1)));
    const label = svgEl("text", {x: sx(x), y: H - B + 14, "text-anchor": "middle"});
    label.textContent = x;
    svg.append(label);
  }
  const caption = svgEl("text", {x: (W + L) / 2, y: H - 2, "text-anchor": "middle"});
  caption.textContent = "round";
  svg.append(caption);
  for (const s of series.slice().reverse()) {
    const pts = s.points.filter((p) => p.y !== null && p.x !== null);
    if (!pts.length) continue;
    const path = svgEl("polyline", {points: pts.map((p) => `${sx(p.x)},${sy(p.y)}`).join(" "), class: s.cls});
    if (s.colour) path.setAttribute("stroke", s.colour);
    svg.append(path);
    if (s.cls === "live") {
      for (const p of pts) {
        const dot = svgEl("circle", {cx: sx(p.x), cy: sy(p.y), r: 3.5, class: "point", "data-round": p.x});
        const tip = svgEl("title");
        tip.textContent = `round ${p.x}: ${p.y.toFixed(4)}`;
        dot.append(tip);
        svg.append(dot);
      }
    }
  }
}

function renderCharts() {
  const rounds = latest ? latest.rounds : [];
  drawChart("acc-chart", "holdout_accuracy", rounds, 1);
  drawChart("loss-chart", "holdout_loss", rounds, null);
  const legend = document.getElementById("legend");
  legend.replaceChildren();
  const item = el("span");
  const own = el("i");
  own.style.background = "#2c6bed";  // CSSOM, not a style attribute: the page's CSP allows no inline styles
  item.append(own, document.createTextNode("this session"));
  legend.append(item);
  for (const o of overlays.values()) {
    const entry = el("span");
    const swatch = el("i");
    swatch.style.background = o.colour;
    entry.append(swatch, document.createTextNode(o.label));
    legend.append(entry);
  }
}

function render(state) {
  latest = state;
  renderSession(state.session);
  renderNodes(state.nodes);
  renderRounds(state.rounds);
  renderReasons("rejections", state.rejected_by_reason);
  renderReasons("refusals", state.refused_connections_by_reason);
  renderLinks(state.links);
  renderCharts();
  document.body.dataset.version = state.version;
}

async function toggleOverlay(name, on, colour) {
  if (!on) {
    overlays.delete(name);
  } else {
    const run = await getJSON("api/runs/" + encodeURIComponent(name));
    overlays.set(name, {points: run.points, colour, label: run.session_id});
  }
  renderCharts();
}

async function loadRuns() {
  let listing;
  try {
    listing = await getJSON("api/runs");
  } catch (err) {
    console.warn("past sessions unavailable:", err.message);
    return;
  }
  const body = document.querySelector("#runs tbody");
  body.replaceChildren();
  listing.runs.forEach((run, index) => {
    const row = el("tr", {"data-run": run.name});
    const pick = el("td");
    if (run.error) {
      row.append(pick, el("td", {}, run.name), el("td", {colspan: 5, class: "muted"}, run.error));
    } else {
      const box = el("input", {type: "checkbox", "aria-label": "overlay " + run.session_id});
      const colour = PAST_COLOURS[index % PAST_COLOURS.length];
      box.addEventListener("change", () => toggleOverlay(run.name, box.checked, colour).catch(
        (err) => console.warn("overlay failed:", err.message)));
      pick.append(box);
      row.append(pick, el("td", {}, run.session_id), el("td", {}, run.strategy), el("td", {}, run.status),
                 el("td", {class: "num"}, run.rounds), el("td", {class: "num"}, fmt(run.final_accuracy, 4)),
                 el("td", {class: "num"}, fmt(run.best_accuracy, 4)));
    }
    body.append(row);
  });
}

function connect() {
  const live = document.getElementById("live");
  const source = new EventSource(withToken("events"));
  source.addEventListener("state", (event) => {
    live.className = "badge on";
    live.textContent = "live";
    document.body.dataset.live = "on";
    render(JSON.parse(event.data));
  });
  source.addEventListener("error", () => {
    live.className = "badge off";
    live.textContent = "offline (retrying)";
    document.body.dataset.live = "off";
  });
}

async function start() {
  try {
    render(await getJSON("api/state"));
  } catch (err) {
    console.warn("state unavailable:", err.message);
    setText("status", "no access: " + err.message);
  }
  connect();
  loadRuns();
  setInterval(loadRuns, 30000);  // sessions that ended meanwhile (this one included)
}

document.addEventListener("DOMContentLoaded", start);
