// Where each node of a snapshot goes on the map (viewBox 1000 x 560), deterministic: the
// same topology always gets the same picture. The domain's nodes take the left part, laid
// out by a small force simulation (links pull, nodes push apart) with its gateway nodes
// pinned on the border; each peer domain takes a band of the right part: its border nodes
// facing the gateways they are linked to, the nodes of its reachable SAEs behind them.
"use strict";

const QkdniLayout = (() => {
  const W = 1000, H = 560, PAD = 50;

  // The peer domains' nodes and the far ends of Qx links, by domain.
  function peerNodes(snapshot) {
    const local = new Set(snapshot.nodes.map((n) => n.id));
    const domains = new Map();
    const of = (d) => {
      if (!domains.has(d)) domains.set(d, { border: new Set(), inner: new Set() });
      return domains.get(d);
    };
    for (const p of snapshot.peers) {
      const d = of(p.domain);
      p.border_nodes.forEach((b) => d.border.add(b));
      p.nodes.forEach((n) => { if (!p.border_nodes.includes(n.id)) d.inner.add(n.id); });
    }
    for (const l of snapshot.links) {
      for (const n of l.nodes) {
        if (!local.has(n)) of(l.peer_domain || "?").border.add(n);
      }
    }
    return domains;
  }

  function spread(ids, x, top, bottom, at) {
    const sorted = [...ids].sort();
    sorted.forEach((id, i) => at.set(id, { x, y: top + ((i + 1) * (bottom - top)) / (sorted.length + 1) }));
  }

  // A force layout of the domain's nodes inside [x0, x1] x [PAD, H - PAD], gateways fixed.
  function force(snapshot, x0, x1, pinned, at) {
    const free = snapshot.nodes.map((n) => n.id).filter((id) => !pinned.has(id)).sort();
    const cx = (x0 + x1) / 2, cy = H / 2;
    const r = Math.min(x1 - x0, H - 2 * PAD) / 3;
    free.forEach((id, i) => {
      const a = (2 * Math.PI * i) / Math.max(free.length, 1) - Math.PI / 2;
      at.set(id, { x: cx + r * Math.cos(a), y: cy + r * Math.sin(a) });
    });
    const ids = snapshot.nodes.map((n) => n.id).sort();
    const edges = snapshot.links
      .filter((l) => at.has(l.nodes[0]) && at.has(l.nodes[1]) && !l.peer_domain)
      .map((l) => l.nodes);
    const area = (x1 - x0) * (H - 2 * PAD);
    const k = 0.9 * Math.sqrt(area / Math.max(ids.length, 1));
    let temperature = (x1 - x0) / 8;
    for (let round = 0; round < 300; round++) {
      const move = new Map(ids.map((id) => [id, { x: 0, y: 0 }]));
      for (let i = 0; i < ids.length; i++) {
        for (let j = i + 1; j < ids.length; j++) {
          const a = at.get(ids[i]), b = at.get(ids[j]);
          let dx = a.x - b.x, dy = a.y - b.y;
          let d = Math.hypot(dx, dy);
          if (d < 0.01) { dx = 0.01 * (i - j); dy = 0.01; d = Math.hypot(dx, dy); }
          const push = (k * k) / d;
          move.get(ids[i]).x += (dx / d) * push; move.get(ids[i]).y += (dy / d) * push;
          move.get(ids[j]).x -= (dx / d) * push; move.get(ids[j]).y -= (dy / d) * push;
        }
      }
      for (const [u, v] of edges) {
        const a = at.get(u), b = at.get(v);
        const dx = a.x - b.x, dy = a.y - b.y;
        const d = Math.max(Math.hypot(dx, dy), 0.01);
        const pull = (d * d) / k;
        move.get(u).x -= (dx / d) * pull; move.get(u).y -= (dy / d) * pull;
        move.get(v).x += (dx / d) * pull; move.get(v).y += (dy / d) * pull;
      }
      for (const id of free) {
        const m = move.get(id), p = at.get(id);
        const len = Math.max(Math.hypot(m.x, m.y), 0.01);
        p.x = Math.min(x1, Math.max(x0, p.x + (m.x / len) * Math.min(len, temperature)));
        p.y = Math.min(H - PAD - 20, Math.max(PAD + 10, p.y + (m.y / len) * Math.min(len, temperature)));
      }
      temperature *= 0.985;
    }
  }

  // Positions of every node: a Map id -> {x, y, domain}; and the peer regions.
  function place(snapshot) {
    const at = new Map();
    const domains = peerNodes(snapshot);
    const split = domains.size > 0 ? 640 : W - PAD;
    const gateways = snapshot.nodes.filter((n) => n.role === "gateway").map((n) => n.id);
    const pinned = new Set(domains.size > 0 ? gateways : []);
    if (pinned.size > 0) spread(pinned, split - 60, PAD, H - PAD, at);
    force(snapshot, PAD + 40, pinned.size > 0 ? split - 140 : split - 40, pinned, at);
    const regions = [];
    const band = (H - 20) / Math.max(domains.size, 1);
    [...domains.keys()].sort().forEach((domain, i) => {
      const d = domains.get(domain);
      const top = 10 + i * band, bottom = top + band;
      // border nodes face the gateways they are linked to
      const border = [...d.border].sort();
      const wanted = border.map((b) => {
        const ys = snapshot.links
          .filter((l) => l.nodes.includes(b))
          .map((l) => at.get(l.nodes.find((n) => n !== b)))
          .filter(Boolean)
          .map((p) => p.y);
        return ys.length ? ys.reduce((s, y) => s + y, 0) / ys.length : (top + bottom) / 2;
      });
      const order = border.map((b, j) => [b, wanted[j]]).sort((p, q) => p[1] - q[1]);
      let last = -Infinity;
      for (const [b, y] of order) {
        const placed = Math.min(bottom - 40, Math.max(top + 40, y, last + 70));
        at.set(b, { x: split + 90, y: placed });
        last = placed;
      }
      spread(d.inner, W - 90, top, bottom, at);
      regions.push({ domain, x: split + 30, y: top, width: W - split - 40, height: band - 10 });
    });
    return { at, regions, split };
  }

  return { place, width: W, height: H };
})();
