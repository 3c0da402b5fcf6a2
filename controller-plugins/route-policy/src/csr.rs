//! Compressed sparse row (CSR) adjacency of a [`LinkGraph`]: flat arrays that a search walks
//! without following petgraph's linked edge lists.

use petgraph::visit::EdgeRef;

use crate::LinkGraph;

/// The adjacency of a [`LinkGraph`] in flat arrays, built once per prepared snapshot.
///
/// The incident edges of node `u` are the *slots* `offsets[u]..offsets[u + 1]`; slot `s`
/// leads to node `targets[s]` over graph edge `edges[s]`, which is the link
/// `links[s]` of the snapshot. Every undirected edge appears twice, once from each end.
#[derive(Debug, Clone, Default)]
pub struct Csr {
    offsets: Vec<u32>,
    targets: Vec<u32>,
    edges: Vec<u32>,
    links: Vec<u32>,
}

impl Csr {
    /// Builds the adjacency of `graph` (linear in its size).
    pub fn new(graph: &LinkGraph) -> Self {
        let n = graph.node_count();
        let mut offsets = vec![0u32; n + 1];
        for edge in graph.edge_references() {
            offsets[edge.source().index() + 1] += 1;
            offsets[edge.target().index() + 1] += 1;
        }
        for i in 0..n {
            offsets[i + 1] += offsets[i];
        }
        let slots = offsets[n] as usize;
        let mut next: Vec<u32> = offsets[..n].to_vec();
        let (mut targets, mut edges, mut links) = (vec![0; slots], vec![0; slots], vec![0; slots]);
        for edge in graph.edge_references() {
            let (a, b) = (edge.source().index(), edge.target().index());
            for (from, to) in [(a, b), (b, a)] {
                let s = next[from] as usize;
                next[from] += 1;
                targets[s] = to as u32;
                edges[s] = edge.id().index() as u32;
                links[s] = *edge.weight();
            }
        }
        Self {
            offsets,
            targets,
            edges,
            links,
        }
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Number of slots (twice the number of edges).
    pub fn slot_count(&self) -> usize {
        self.targets.len()
    }

    /// The slots of the edges incident to node `u`.
    #[inline]
    pub fn slots(&self, u: usize) -> std::ops::Range<usize> {
        self.offsets[u] as usize..self.offsets[u + 1] as usize
    }

    /// The node slot `s` leads to.
    #[inline]
    pub fn target(&self, s: usize) -> usize {
        self.targets[s] as usize
    }

    /// The graph edge (`EdgeIndex::index()`) of slot `s`.
    #[inline]
    pub fn edge(&self, s: usize) -> u32 {
        self.edges[s]
    }

    /// The index in `KeyNetwork::links` of the link of slot `s`.
    #[inline]
    pub fn link(&self, s: usize) -> usize {
        self.links[s] as usize
    }
}

#[cfg(test)]
mod tests {
    use petgraph::graph::NodeIndex;

    use super::*;

    #[test]
    fn lists_each_edge_from_both_ends() {
        let mut g = LinkGraph::new_undirected();
        let n: Vec<NodeIndex> = (0..4).map(|_| g.add_node(())).collect();
        g.add_edge(n[0], n[1], 7);
        g.add_edge(n[1], n[2], 8);
        g.add_edge(n[1], n[2], 9);
        let csr = Csr::new(&g);
        assert_eq!(csr.node_count(), 4);
        let around = |u: usize| -> Vec<(usize, u32, usize)> {
            let mut v: Vec<_> = csr
                .slots(u)
                .map(|s| (csr.target(s), csr.edge(s), csr.link(s)))
                .collect();
            v.sort();
            v
        };
        assert_eq!(around(0), [(1, 0, 7)]);
        assert_eq!(around(1), [(0, 0, 7), (2, 1, 8), (2, 2, 9)]);
        assert_eq!(around(2), [(1, 1, 8), (1, 2, 9)]);
        assert!(around(3).is_empty());
    }
}
