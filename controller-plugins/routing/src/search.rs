//! Single-path graph searches over a prepared network, with array-indexed state (no hashing)
//! so they stay fast on large graphs.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use petgraph::graph::{EdgeIndex, NodeIndex};
use petgraph::visit::EdgeRef;
use qkdni_route_policy::{Link, PreparedNetwork};

/// A heap entry ordered by `key` (ties by node), with `f64::total_cmp`.
#[derive(Clone, Copy, PartialEq)]
struct Entry {
    key: f64,
    node: NodeIndex,
}

impl Eq for Entry {}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key
            .total_cmp(&other.key)
            .then_with(|| self.node.cmp(&other.node))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Least-cost path from `src` to `dst` (Dijkstra, stopping when `dst` is settled) over the
/// links for which `cost` gives `Some(c)`, `c >= 0`. Returns its edges in order from `src`.
///
/// Plain, with fresh buffers and no bounds: the reference the goal-directed search
/// ([`crate::alt`]) is tested against.
#[cfg(test)]
pub fn dijkstra(
    net: &PreparedNetwork<'_>,
    src: NodeIndex,
    dst: NodeIndex,
    cost: impl Fn(&Link) -> Option<f64>,
) -> Option<Vec<EdgeIndex>> {
    let graph = net.graph();
    let n = graph.node_count();
    let mut dist = vec![f64::INFINITY; n];
    let mut pred = vec![EdgeIndex::end(); n];
    let mut heap = BinaryHeap::new();
    dist[src.index()] = 0.0;
    heap.push(std::cmp::Reverse(Entry {
        key: 0.0,
        node: src,
    }));
    while let Some(std::cmp::Reverse(Entry { key, node: u })) = heap.pop() {
        if u == dst {
            return net.trace_back(&pred, src, dst);
        }
        if key > dist[u.index()] {
            continue; // stale entry
        }
        for edge in graph.edges(u) {
            let Some(c) = cost(net.link(edge.id())) else {
                continue;
            };
            let v = edge.target();
            let d = key + c;
            if d < dist[v.index()] {
                dist[v.index()] = d;
                pred[v.index()] = edge.id();
                heap.push(std::cmp::Reverse(Entry { key: d, node: v }));
            }
        }
    }
    None
}

/// Path with the fewest links from `src` to `dst` (breadth-first search) over the links
/// `usable` accepts. Returns its edges in order from `src`.
pub fn bfs(
    net: &PreparedNetwork<'_>,
    src: NodeIndex,
    dst: NodeIndex,
    usable: impl Fn(&Link) -> bool,
) -> Option<Vec<EdgeIndex>> {
    let graph = net.graph();
    let n = graph.node_count();
    let mut pred = vec![EdgeIndex::end(); n];
    let mut seen = vec![false; n];
    let mut queue = Vec::new();
    seen[src.index()] = true;
    queue.push(src);
    let mut head = 0;
    while head < queue.len() {
        let u = queue[head];
        head += 1;
        if u == dst {
            return net.trace_back(&pred, src, dst);
        }
        for edge in graph.edges(u) {
            let v = edge.target();
            if !seen[v.index()] && usable(net.link(edge.id())) {
                seen[v.index()] = true;
                pred[v.index()] = edge.id();
                queue.push(v);
            }
        }
    }
    None
}

/// The largest bottleneck key rate of any path from `src` to `dst` (widest path), or `None`
/// when they are not connected.
pub fn widest_rate(net: &PreparedNetwork<'_>, src: NodeIndex, dst: NodeIndex) -> Option<f64> {
    let graph = net.graph();
    let mut width = vec![f64::NEG_INFINITY; graph.node_count()];
    let mut heap = BinaryHeap::new();
    width[src.index()] = f64::INFINITY;
    heap.push(Entry {
        key: f64::INFINITY,
        node: src,
    });
    while let Some(Entry { key, node: u }) = heap.pop() {
        if u == dst {
            return Some(key);
        }
        if key < width[u.index()] {
            continue;
        }
        for edge in graph.edges(u) {
            let v = edge.target();
            let w = key.min(net.link(edge.id()).key_rate_bps);
            if w > width[v.index()] {
                width[v.index()] = w;
                heap.push(Entry { key: w, node: v });
            }
        }
    }
    None
}
