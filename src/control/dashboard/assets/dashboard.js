// The controller dashboard: follows the controller's live stream (server-sent events) and
// draws each snapshot as SVG (no library, nothing fetched from elsewhere). Marks the tests
// read: every node is a `g[data-node]`, every link a `line[data-link]` with `data-state`
// (`up`/`down`) and `data-sessions` (the sessions whose route uses it); links of the shown
// routes have the class `on-route`.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const state = { snapshot: null, events: [], selected: null, layout: null, signature: "" };

function el(tag, attrs = {}, text) {
  const node = tag === "svg-text" || SVG_TAGS.has(tag)
    ? document.createElementNS(SVG, tag === "svg-text" ? "text" : tag)
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v);
  }
  if (text !== undefined) node.textContent = text;
  return node;
}
const SVG_TAGS = new Set(["g", "line", "circle", "rect", "title", "path"]);

function rate(bps) {
  if (bps === null || bps === undefined || !isFinite(bps)) return "–";
  if (bps >= 1e6) return (bps / 1e6).toFixed(1) + " Mbit/s";
  if (bps >= 1e3) return Math.round(bps / 1e3) + " kbit/s";
  return Math.round(bps) + " bit/s";
}
const percent = (x) => Math.round(100 * x) + " %";
const fillClass = (x) => (x >= 0.5 ? "high" : x >= 0.1 ? "mid" : "low");

// Which sessions use each link and node, and which routes are shown.
function routes(snapshot) {
  const byLink = new Map(), shownLinks = new Set(), shownNodes = new Set(), shownAbstract = new Set();
  for (const s of snapshot.sessions) {
    const shown = state.selected === null || state.selected === s.id;
    for (const p of s.paths) {
      for (const l of p.links) {
        if (!byLink.has(l)) byLink.set(l, []);
        byLink.get(l).push(s.id);
        if (shown) shownLinks.add(l);
      }
      if (shown) p.nodes.forEach((n) => shownNodes.add(n));
    }
    const iw = s.interworking;
    if (shown && iw && s.paths.length > 0) {
      shownNodes.add(iw.peer_gateway);
      if (iw.peer_km && iw.peer_km !== iw.peer_gateway) {
        shownNodes.add(iw.peer_km);
        shownAbstract.add(iw.peer_gateway + ">" + iw.peer_km);
      }
    }
  }
  return { byLink, shownLinks, shownNodes, shownAbstract };
}

function signature(snapshot) {
  return JSON.stringify([
    snapshot.nodes.map((n) => n.id + "/" + n.role),
    snapshot.links.map((l) => l.id + ":" + l.nodes.join("-")),
    snapshot.peers.map((p) => [p.domain, p.border_nodes, p.nodes.map((n) => n.id)]),
  ]);
}

function drawMap(snapshot) {
  const sig = signature(snapshot);
  if (sig !== state.signature) {
    state.layout = QkdniLayout.place(snapshot);
    state.signature = sig;
  }
  const { at, regions, split } = state.layout;
  const r = routes(snapshot);
  const map = document.getElementById("map");
  const layers = ["regions", "halos", "abstract", "links", "labels", "nodes"].map((id) => el("g", { class: id }));
  const [regionLayer, haloLayer, abstractLayer, linkLayer, labelLayer, nodeLayer] = layers;

  if (regions.length > 0) {
    regionLayer.append(el("rect", { class: "region", x: 10, y: 10, width: split - 20, height: 540, rx: 8 }));
    regionLayer.append(el("svg-text", { class: "region-label", x: 24, y: 30 }, "QKDN " + snapshot.domain));
  }
  for (const g of regions) {
    regionLayer.append(el("rect", { class: "region peer", x: g.x, y: g.y, width: g.width, height: g.height, rx: 8 }));
    const peer = snapshot.peers.find((p) => p.domain === g.domain);
    const reach = peer && peer.reachable === false ? " (controller unreachable)"
      : peer && !peer.shared ? " (not shared yet)" : "";
    regionLayer.append(el("svg-text", { class: "region-label", x: g.x + 12, y: g.y + 20 },
      "QKDN " + g.domain + ": abstract topology" + reach));
  }

  // the peers' abstract paths: border node to the node of a reachable SAE
  for (const p of snapshot.peers) {
    for (const n of p.nodes) {
      for (const v of n.via) {
        const a = at.get(v.border_node), b = at.get(n.id);
        if (!a || !b || v.border_node === n.id) continue;
        const key = v.border_node + ">" + n.id;
        abstractLayer.append(el("line", {
          class: "abstract" + (r.shownAbstract.has(key) ? " on-route" : ""),
          "data-abstract": key, x1: a.x, y1: a.y, x2: b.x, y2: b.y,
        }));
        const hops = v.hops === null || v.hops === undefined ? "" : v.hops + " hop" + (v.hops === 1 ? "" : "s");
        const text = [hops, v.rate_bps === null || v.rate_bps === undefined ? "" : rate(v.rate_bps)]
          .filter(Boolean).join(" · ");
        if (text) {
          labelLayer.append(el("svg-text", {
            class: "label abstract-label", x: a.x + (b.x - a.x) * 0.55, y: a.y + (b.y - a.y) * 0.55 - 4,
          }, text));
        }
      }
    }
  }

  for (const l of snapshot.links) {
    const a = at.get(l.nodes[0]), b = at.get(l.nodes[1]);
    if (!a || !b) continue;
    const sessions = r.byLink.get(l.id) || [];
    if (r.shownLinks.has(l.id)) {
      haloLayer.append(el("line", { class: "route-halo", "data-route-link": l.id, x1: a.x, y1: a.y, x2: b.x, y2: b.y }));
    }
    const line = el("line", {
      class: ["link", l.up ? "up" : "down", l.peer_domain ? "qx" : "", r.shownLinks.has(l.id) ? "on-route" : ""]
        .filter(Boolean).join(" "),
      "data-link": l.id, "data-state": l.up ? "up" : "down", "data-sessions": sessions.join(" "),
      x1: a.x, y1: a.y, x2: b.x, y2: b.y,
    });
    line.append(el("title", {}, `${l.id}: ${l.up ? "up" : "DOWN"}, ${rate(l.rate_bps)}, pool ${percent(l.fill)}`));
    linkLayer.append(line);
    const mx = (a.x + b.x) / 2, my = (a.y + b.y) / 2;
    labelLayer.append(el("svg-text", { class: "label", x: mx, y: my - 11 }, l.up ? rate(l.rate_bps) : l.id + " down"));
    labelLayer.append(el("rect", { class: "pool-bg", x: mx - 20, y: my - 4, width: 40, height: 8, rx: 2 }));
    labelLayer.append(el("rect", {
      class: "pool-fill " + fillClass(l.fill), "data-pool": l.id, x: mx - 19, y: my - 3,
      width: (38 * l.fill).toFixed(1), height: 6, rx: 1,
    }));
  }

  const drawNode = (id, kind, classes, saes, title) => {
    const p = at.get(id);
    if (!p) return;
    const g = el("g", { class: ["node", kind, ...classes, r.shownNodes.has(id) ? "on-route" : ""].filter(Boolean).join(" "),
      "data-node": id, transform: `translate(${p.x.toFixed(1)},${p.y.toFixed(1)})` });
    g.append(kind.includes("gateway") || kind.includes("iwn")
      ? el("rect", { x: -19, y: -19, width: 38, height: 38, rx: 4, transform: "rotate(45)" })
      : el("circle", { r: 20 }));
    g.append(el("svg-text", {}, id));
    if (saes.length) g.append(el("svg-text", { class: "saes", y: 32 }, saes.join(", ")));
    g.append(el("title", {}, title));
    nodeLayer.append(g);
  };
  for (const n of snapshot.nodes) {
    drawNode(n.id, n.role, [n.reachable ? "" : "unreachable"], n.saes,
      `${n.id} (${n.role})${n.reachable ? "" : ": agent unreachable"}`);
  }
  for (const p of snapshot.peers) {
    for (const b of p.border_nodes) drawNode(b, "peer gateway", [], [], `${b}: gateway node of QKDN ${p.domain}`);
    for (const n of p.nodes) {
      if (!p.border_nodes.includes(n.id)) drawNode(n.id, "peer", [], n.saes, `${n.id}: node of QKDN ${p.domain} serving ${n.saes.join(", ")}`);
    }
  }
  // far ends of Qx links whose domain has not shared its topology yet
  for (const l of snapshot.links) {
    for (const n of l.nodes) {
      if (at.has(n) && !nodeLayer.querySelector(`[data-node="${CSS.escape(n)}"]`)) {
        drawNode(n, "peer gateway", [], [], `${n}: gateway node of QKDN ${l.peer_domain || "?"}`);
      }
    }
  }
  map.replaceChildren(...layers);
}

function drawSessions(snapshot) {
  const list = document.getElementById("sessions");
  document.getElementById("session-count").textContent = snapshot.sessions.length;
  if (state.selected !== null && !snapshot.sessions.some((s) => s.id === state.selected)) state.selected = null;
  list.replaceChildren(...snapshot.sessions.map((s) => {
    const li = el("li", { "data-session": s.id, class: [s.state, state.selected === s.id ? "selected" : ""].join(" ") });
    li.append(el("span", { class: "state" }, s.agreeing ? "agreeing…" : s.state));
    li.append(el("b", {}, `${s.master_sae} → ${s.slave_sae}`));
    const iw = s.interworking;
    const tail = iw && s.paths.length ? ` ⇢ ${iw.peer_gateway !== iw.peer_km && iw.role === "origin" ? iw.peer_km : ""}` : "";
    const path = s.paths.map((p) => p.nodes.join(" → ")).join(" | ") || "no route";
    li.append(el("div", { class: "path", "data-path": s.id }, path + (iw && iw.role === "origin" ? tail : "")));
    const what = [s.rate_bps > 0 ? rate(s.rate_bps) + " demanded" : "best effort", s.on_demand ? "on demand" : "",
      iw ? `interworking (${iw.role}) with QKDN ${iw.peer_domain} over ${iw.qx_link}` : ""].filter(Boolean);
    li.append(el("div", { class: "path" }, what.join(", ")));
    li.addEventListener("click", () => {
      state.selected = state.selected === s.id ? null : s.id;
      render();
    });
    return li;
  }));
}

function drawAlarms(snapshot) {
  document.getElementById("alarm-count").textContent = snapshot.alarms.length;
  const items = snapshot.alarms.map((a) => el("li", { "data-alarm": a.kind, "data-subject": a.subject }, a.detail));
  if (items.length === 0) items.push(el("li", { class: "none" }, "none"));
  document.getElementById("alarms").replaceChildren(...items);
}

function drawLinks(snapshot) {
  const rows = snapshot.links.map((l) => {
    const tr = el("tr", { "data-link-row": l.id });
    const ends = Object.entries(l.own_blocks).map(([n, b]) => `${n}: ${b}`).join(", ");
    tr.append(el("td", {}, l.id), el("td", {}, l.nodes.join(" – ") + (l.peer_domain ? ` (Qx to QKDN ${l.peer_domain})` : "")),
      el("td", { class: l.up ? "up" : "down" }, l.up ? "up" : "down"), el("td", {}, rate(l.rate_bps)),
      el("td", {}, percent(l.fill)),
      el("td", {}, `${ends} of ${l.capacity_blocks}` + (l.peer_domain ? `; QKDN ${l.peer_domain}'s end not shared` : "")));
    return tr;
  });
  document.querySelector("#links tbody").replaceChildren(...rows);
}

const ALARM_KINDS = /down|fail|fault|refused|abort|rejected|unroutable|malformed/;

function eventItem(e, fresh) {
  const alarm = ALARM_KINDS.test(e.kind) || / down\b/.test(e.detail);
  const li = el("li", { class: [alarm ? "alarm" : "", fresh ? "fresh" : ""].join(" "), "data-kind": e.kind });
  li.append(el("span", { class: "time" }, (e.time || "").slice(11, 19)), el("span", { class: "kind" }, e.kind),
    document.createTextNode(e.detail + (e.duration_ms ? ` (${e.duration_ms.toFixed(1)} ms)` : "")));
  if (fresh) setTimeout(() => li.classList.remove("fresh"), 3000);
  return li;
}

function drawEvents() {
  const newest = state.events.slice(-200).reverse();
  const items = newest.map((e) => eventItem(e, false));
  if (items.length === 0) items.push(el("li", { class: "none" }, "none since the controller started"));
  document.getElementById("events").replaceChildren(...items);
}

function render() {
  const s = state.snapshot;
  if (!s) return;
  document.getElementById("domain").textContent = s.domain;
  document.getElementById("policy").textContent = s.policy;
  document.getElementById("updated").textContent = new Date().toLocaleTimeString();
  document.title = `qkdni dashboard · QKDN ${s.domain}`;
  drawMap(s);
  drawSessions(s);
  drawAlarms(s);
  drawLinks(s);
}

function setStatus(text, kind) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.className = "status " + kind;
}

function connect() {
  const source = new EventSource("api/stream");
  source.addEventListener("open", () => setStatus("live", "live"));
  source.addEventListener("snapshot", (m) => {
    state.snapshot = JSON.parse(m.data);
    render();
  });
  source.addEventListener("events", (m) => {
    state.events = JSON.parse(m.data);
    drawEvents();
  });
  source.addEventListener("event", (m) => {
    const e = JSON.parse(m.data);
    state.events.push(e);
    if (state.events.length > 500) state.events.splice(0, state.events.length - 500);
    const list = document.getElementById("events");
    list.querySelectorAll("li.none").forEach((li) => li.remove());
    list.prepend(eventItem(e, true));
    while (list.children.length > 200) list.lastChild.remove();
  });
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      setStatus("disconnected: log in again", "closed");
    } else {
      setStatus("reconnecting", "connecting");
    }
  });
}

connect();
