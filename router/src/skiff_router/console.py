"""The network console: one hand-written page (HTML, CSS, JS, inline SVG), no
external assets. It polls ``/v1/network`` once a second and redraws the graph
and the per-key counts in place (no reload). Read-only: it only issues GETs. The page
is served without the admin token; its requests send the one given in the address's
fragment (``/console#token=...``).
Names from the network are set as text, never as markup."""

from __future__ import annotations

POLL_MS = 1000

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>skiff network console</title>
<style>
  body { font: 14px/1.4 sans-serif; margin: 16px; color: #1d2733; background: #f6f8fa; }
  h1 { font-size: 18px; margin: 0 0 4px; }
  #meta { color: #55606d; margin-bottom: 8px; }
  svg { background: #fff; border: 1px solid #d0d7de; border-radius: 6px; }
  .node circle { fill: #dbeafe; stroke: #1e40af; stroke-width: 2; }
  .node.here circle { fill: #bbf7d0; stroke: #166534; }
  .node.down circle { fill: #fee2e2; stroke: #991b1b; }
  .node .site { font-weight: bold; font-size: 15px; }
  .node .keys { font-size: 12px; fill: #374151; }
  .link { stroke-width: 3; }
  .link.up { stroke: #16a34a; }
  .link.one-way { stroke: #d97706; stroke-dasharray: 6 4; }
  .linklabel { font-size: 12px; fill: #374151; }
  table { border-collapse: collapse; margin-top: 12px; background: #fff; }
  th, td { border: 1px solid #d0d7de; padding: 4px 10px; text-align: left; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  .no { color: #991b1b; font-weight: bold; }
</style>
</head>
<body>
<h1>skiff network</h1>
<div id="meta">loading...</div>
<svg id="graph" width="960" height="560" viewBox="0 0 960 560" role="img"
     aria-label="network graph"></svg>
<table id="keys">
  <thead><tr><th>routing key</th><th>listeners at</th><th>connectors at</th>
  <th>reachable</th><th>flows open</th><th>flows total</th>
  <th>bytes out</th><th>bytes back</th></tr></thead>
  <tbody></tbody>
</table>
<script>
"use strict";
const NS = "http://www.w3.org/2000/svg";
let polls = 0;

function el(name, attrs, text) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
}

function draw(net) {
  const svg = document.getElementById("graph");
  svg.replaceChildren();
  const routers = net.routers;
  const pos = {};
  const cx = 480, cy = 270, r = routers.length > 1 ? 190 : 0;
  routers.forEach((rt, i) => {
    const a = -Math.PI / 2 + (2 * Math.PI * i) / routers.length;
    pos[rt.id] = [cx + r * Math.cos(a), cy + r * Math.sin(a)];
  });
  const drawn = new Set();
  for (const rt of routers) {
    for (const lk of rt.links) {
      if (!pos[lk.to]) continue;
      const pair = [rt.id, lk.to].sort().join(" ");
      if (drawn.has(pair) && lk.state === "up") continue;
      drawn.add(pair);
      const [x1, y1] = pos[rt.id], [x2, y2] = pos[lk.to];
      const line = el("line", {x1, y1, x2, y2, class: "link " + lk.state,
                               "data-from": rt.id, "data-to": lk.to});
      svg.appendChild(line);
      svg.appendChild(el("text", {x: (x1 + x2) / 2 + 6, y: (y1 + y2) / 2 - 6,
                                  class: "linklabel"}, "cost " + lk.cost + " \\u00b7 " + lk.state));
    }
  }
  for (const rt of routers) {
    const [x, y] = pos[rt.id];
    const g = el("g", {class: "node" + (rt.here ? " here" : "") + (rt.reachable ? "" : " down"),
                       "data-router": rt.id, "data-site": rt.site});
    g.appendChild(el("circle", {cx: x, cy: y, r: 34}));
    g.appendChild(el("text", {x, y: y + 5, "text-anchor": "middle", class: "site"}, rt.site));
    const lines = [rt.id + " (" + rt.mode + (rt.here ? ", here" : "") + ")"];
    if (rt.listeners.length) lines.push("listeners: " + rt.listeners.join(", "));
    if (rt.connectors.length) lines.push("connectors: " + rt.connectors.join(", "));
    lines.forEach((t, i) => g.appendChild(
      el("text", {x, y: y + 52 + 15 * i, "text-anchor": "middle", class: "keys"}, t)));
    svg.appendChild(g);
  }
  const body = document.querySelector("#keys tbody");
  body.replaceChildren();
  for (const [key, k] of Object.entries(net.routing_keys)) {
    const row = document.createElement("tr");
    row.dataset.key = key;
    cell(row, key);
    cell(row, k.listeners.join(", ") || "-");
    cell(row, k.connectors.join(", ") || "-");
    cell(row, k.reachable ? "yes" : "NO", k.reachable ? "" : "no");
    cell(row, String(k.flows_open), "num flows-open");
    cell(row, String(k.flows_total), "num flows-total");
    cell(row, String(k.bytes_out), "num bytes-out");
    cell(row, String(k.bytes_back), "num bytes-back");
    body.appendChild(row);
  }
  polls += 1;
  const meta = document.getElementById("meta");
  meta.textContent = "seen from " + net.router_id + " \\u00b7 " + routers.length +
    " routers \\u00b7 updated " + new Date().toLocaleTimeString() + " (" + polls + " polls)";
  meta.dataset.polls = String(polls);
}

// The admin token comes in the address's fragment (/console#token=...), which the
// browser never sends; it is kept for this tab only and removed from the address bar.
// Looked for at every poll, so a token typed into the address later is taken too.
function adminHeaders() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.has("token")) {
    sessionStorage.setItem("skiff-admin-token", fragment.get("token"));
    history.replaceState(null, "", location.pathname);
  }
  const token = sessionStorage.getItem("skiff-admin-token");
  return token ? {"Authorization": "Bearer " + token} : {};
}

async function poll() {
  try {
    const res = await fetch("/v1/network", {cache: "no-store", headers: adminHeaders()});
    if (res.ok) draw(await res.json());
    else if (res.status === 401)
      document.getElementById("meta").textContent =
        "this router asks for its admin token: open /console#token=<the token file's content>";
    else document.getElementById("meta").textContent = "network view: HTTP " + res.status;
  } catch (e) {
    document.getElementById("meta").textContent = "router not answering: " + e;
  }
  setTimeout(poll, __POLL_MS__);
}
poll();
</script>
</body>
</html>
"""


def page() -> bytes:
    return _PAGE.replace("__POLL_MS__", str(POLL_MS)).encode()
