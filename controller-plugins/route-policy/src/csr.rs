//! Compressed sparse row (CSR) adjacency of a [`LinkGraph`]: flat arrays that a search walks
//! without following petgraph's linked edge lists.

use petgraph::graph::NodeIndex;
use petgraph::visit::EdgeRef;

use crate::{Link, LinkGraph};

/// The adjacency of a [`LinkGraph`] in flat arrays, built once per prepared snapshot.
///
/// The incident edges of node `u` are the *slots* `offsets[u]..offsets[u + 1]`; a slot
/// holds the node it leads to, its graph edge, the index of its link in the snapshot, and the
/// link numbers searches look at (weight, key rate, stored key), so that a search reads a
/// node's edges from one place instead of from each `Link`. Every undirected edge appears
/// twice, once from each end.
///
/// Nodes are numbered anew, in breadth-first order, so that neighbours sit close together in
/// memory (in this CSR and in every per-node array a search keeps): node and slot arguments
/// and results of `Csr`, [`Landmarks`](crate::Landmarks) and
/// [`SearchScratch`](crate::SearchScratch) are in this numbering; [`index_of`](Self::index_of)
/// and [`node_of`](Self::node_of) convert.
#[derive(Debug, Clone, Default)]
pub struct Csr {
    offsets: Vec<u32>,
    slots: Vec<Slot>,
    /// Link index of each slot (apart: searches rarely need it).
    links: Vec<u32>,
    /// Graph node of each CSR node.
    order: Vec<u32>,
    /// CSR node of each graph node.
    rank: Vec<u32>,
}

/// One direction of one edge (32 bytes: two per cache line).
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    target: u32,
    edge: u32,
    weight: f64,
    key_rate_bps: f64,
    available_bits: f64,
}

impl Csr {
    /// Builds the adjacency of `graph`, whose edge weights index `links` (linear in its size).
    pub fn new(graph: &LinkGraph, links: &[Link]) -> Self {
        let n = graph.node_count();
        let order = breadth_first_order(graph);
        let mut rank = vec![0u32; n];
        for (i, &v) in order.iter().enumerate() {
            rank[v as usize] = i as u32;
        }
        let mut offsets = vec![0u32; n + 1];
        for edge in graph.edge_references() {
            offsets[rank[edge.source().index()] as usize + 1] += 1;
            offsets[rank[edge.target().index()] as usize + 1] += 1;
        }
        for i in 0..n {
            offsets[i + 1] += offsets[i];
        }
        let mut next: Vec<u32> = offsets[..n].to_vec();
        let mut slots = vec![Slot::default(); offsets[n] as usize];
        let mut slot_links = vec![0u32; offsets[n] as usize];
        for edge in graph.edge_references() {
            let (a, b) = (
                rank[edge.source().index()] as usize,
                rank[edge.target().index()] as usize,
            );
            let link = &links[*edge.weight() as usize];
            for (from, to) in [(a, b), (b, a)] {
                slot_links[next[from] as usize] = *edge.weight();
                slots[next[from] as usize] = Slot {
                    target: to as u32,
                    edge: edge.id().index() as u32,
                    weight: link.cost(),
                    key_rate_bps: link.key_rate_bps,
                    available_bits: link.available_bits,
                };
                next[from] += 1;
            }
        }
        Self {
            offsets,
            slots,
            links: slot_links,
            order,
            rank,
        }
    }

    /// The CSR node of graph node `node`.
    #[inline]
    pub fn index_of(&self, node: NodeIndex) -> usize {
        self.rank[node.index()] as usize
    }

    /// The graph node of CSR node `u`.
    #[inline]
    pub fn node_of(&self, u: usize) -> NodeIndex {
        NodeIndex::new(self.order[u] as usize)
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Number of slots (twice the number of edges).
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// The slots of the edges incident to node `u`.
    #[inline]
    pub fn slots(&self, u: usize) -> std::ops::Range<usize> {
        self.offsets[u] as usize..self.offsets[u + 1] as usize
    }

    /// The node slot `s` leads to.
    #[inline]
    pub fn target(&self, s: usize) -> usize {
        self.slots[s].target as usize
    }

    /// The graph edge (`EdgeIndex::index()`) of slot `s`.
    #[inline]
    pub fn edge(&self, s: usize) -> u32 {
        self.slots[s].edge
    }

    /// The index in `KeyNetwork::links` of the link of slot `s`.
    #[inline]
    pub fn link(&self, s: usize) -> usize {
        self.links[s] as usize
    }

    /// The weight ([`Link::cost`]) of the link of slot `s`.
    #[inline]
    pub fn weight(&self, s: usize) -> f64 {
        self.slots[s].weight
    }

    /// The key rate (`Link::key_rate_bps`) of the link of slot `s`.
    #[inline]
    pub fn key_rate_bps(&self, s: usize) -> f64 {
        self.slots[s].key_rate_bps
    }

    /// The stored key (`Link::available_bits`) of the link of slot `s`.
    #[inline]
    pub fn available_bits(&self, s: usize) -> f64 {
        self.slots[s].available_bits
    }
}

/// The graph's nodes in breadth-first order (from each not yet reached node, in index
/// order, neighbours in petgraph's order).
fn breadth_first_order(graph: &LinkGraph) -> Vec<u32> {
    let n = graph.node_count();
    let mut seen = vec![false; n];
    let mut order = Vec::with_capacity(n);
    for root in 0..n {
        if seen[root] {
            continue;
        }
        seen[root] = true;
        let mut head = order.len();
        order.push(root as u32);
        while head < order.len() {
            let u = NodeIndex::new(order[head] as usize);
            head += 1;
            for v in graph.neighbors(u) {
                if !seen[v.index()] {
                    seen[v.index()] = true;
                    order.push(v.index() as u32);
                }
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_each_edge_from_both_ends() {
        let mut g = LinkGraph::new_undirected();
        let n: Vec<NodeIndex> = (0..4).map(|_| g.add_node(())).collect();
        g.add_edge(n[0], n[1], 7);
        g.add_edge(n[1], n[2], 8);
        g.add_edge(n[1], n[2], 9);
        let links: Vec<Link> = (0..10)
            .map(|i| {
                let mut link = Link::new(format!("l{i}"), "a", "b", 2.0 * i as f64);
                link.weight = Some(i as f64);
                link.available_bits = 3.0 * i as f64;
                link
            })
            .collect();
        let csr = Csr::new(&g, &links);
        assert_eq!(csr.node_count(), 4);
        // Breadth-first from 0 keeps this graph's numbering.
        for (i, &node) in n.iter().enumerate() {
            assert_eq!((csr.index_of(node), csr.node_of(i)), (i, node));
        }
        let around = |u: usize| -> Vec<(usize, u32, usize)> {
            let mut v: Vec<_> = csr
                .slots(u)
                .map(|s| (csr.target(s), csr.edge(s), csr.link(s)))
                .collect();
            v.sort();
            v
        };
        assert_eq!(around(0), [(1, 0, 7)]);
        assert!(csr.slots(1).all(|s| csr.weight(s) == csr.link(s) as f64
            && csr.key_rate_bps(s) == 2.0 * csr.weight(s)
            && csr.available_bits(s) == 3.0 * csr.weight(s)));
        assert_eq!(around(1), [(0, 0, 7), (2, 1, 8), (2, 2, 9)]);
        assert_eq!(around(2), [(1, 1, 8), (1, 2, 9)]);
        assert!(around(3).is_empty());
    }

    #[test]
    fn numbers_nodes_breadth_first() {
        let mut g = LinkGraph::new_undirected();
        let n: Vec<NodeIndex> = (0..5).map(|_| g.add_node(())).collect();
        g.add_edge(n[0], n[4], 0);
        g.add_edge(n[4], n[2], 0);
        g.add_edge(n[1], n[3], 0);
        let csr = Csr::new(&g, &[Link::new("l", "a", "b", 1.0)]);
        let order: Vec<usize> = (0..5).map(|u| csr.node_of(u).index()).collect();
        assert_eq!(order, [0, 4, 2, 1, 3]);
        for u in 0..5 {
            assert_eq!(csr.index_of(csr.node_of(u)), u);
        }
        let targets: Vec<usize> = csr.slots(1).map(|s| csr.target(s)).collect();
        assert_eq!(targets.len(), 2);
        assert!(targets.contains(&0) && targets.contains(&2));
    }
}
