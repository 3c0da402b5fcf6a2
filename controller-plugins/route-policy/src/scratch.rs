//! Per-node search state reused across queries, cleared in O(1) by generation stamps.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use petgraph::graph::EdgeIndex;

use crate::landmarks::key_bits;

/// What a search knows of one node; only meaningful when `stamp` is the current generation.
#[derive(Debug, Clone, Copy, Default)]
struct NodeState {
    stamp: u32,
    pred: u32,
    from: u32,
    dist: f64,
    bound: f64,
}

/// Buffers of a single-pair search (distance, predecessor edge and node, and a per-node
/// bound for every node, plus a min-heap), reused from one query to the next. Nodes are
/// numbered as in [`Csr`](crate::Csr).
///
/// [`begin`](Self::begin) starts a new query by bumping a generation number: a node whose
/// stamp is older counts as not reached yet, so nothing of size O(nodes) is cleared per
/// query. Get one with [`PreparedNetwork::with_scratch`](crate::PreparedNetwork::with_scratch).
#[derive(Debug, Clone, Default)]
pub struct SearchScratch {
    nodes: Vec<NodeState>,
    generation: u32,
    heap: BinaryHeap<Reverse<(u64, u32)>>,
}

impl SearchScratch {
    /// The `edge` of [`set`](Self::set) for "no predecessor" (the source).
    pub const NO_EDGE: u32 = u32::MAX;

    /// Starts a new query over a graph of `n` nodes: every node unreached, heap empty.
    pub fn begin(&mut self, n: usize) {
        if self.nodes.len() != n {
            self.nodes = vec![NodeState::default(); n];
            self.generation = 0;
        }
        if self.generation == u32::MAX {
            self.nodes.fill(NodeState::default());
            self.generation = 0;
        }
        self.generation += 1;
        self.heap.clear();
    }

    /// Whether `v` was reached in this query.
    #[inline]
    pub fn reached(&self, v: usize) -> bool {
        self.nodes[v].stamp == self.generation
    }

    /// Marks `v` reached, with no distance yet (infinite), no predecessor and `bound`.
    #[inline]
    pub fn reach(&mut self, v: usize, bound: f64) {
        self.nodes[v] = NodeState {
            stamp: self.generation,
            pred: SearchScratch::NO_EDGE,
            from: 0,
            dist: f64::INFINITY,
            bound,
        };
    }

    /// The distance recorded for `v` in this query, infinite when not reached.
    #[inline]
    pub fn dist(&self, v: usize) -> f64 {
        let state = &self.nodes[v];
        if state.stamp == self.generation {
            state.dist
        } else {
            f64::INFINITY
        }
    }

    /// The bound given to [`reach`](Self::reach) for `v` (only meaningful once reached).
    #[inline]
    pub fn bound(&self, v: usize) -> f64 {
        self.nodes[v].bound
    }

    /// Records distance `dist` for the reached node `v`, arrived at from node `from` over
    /// graph edge `edge` (`EdgeIndex::index()`, or [`NO_EDGE`](Self::NO_EDGE)).
    #[inline]
    pub fn set(&mut self, v: usize, dist: f64, from: usize, edge: u32) {
        debug_assert!(self.reached(v));
        let state = &mut self.nodes[v];
        state.dist = dist;
        state.pred = edge;
        state.from = from as u32;
    }

    /// Pushes `v` with priority `key` (`>= 0`, not NaN) on the min-heap.
    #[inline]
    pub fn push(&mut self, key: f64, v: usize) {
        debug_assert!(key >= 0.0);
        self.heap.push(Reverse((key_bits(key), v as u32)));
    }

    /// Pops the entry of least key (ties: lowest node), as `(key, node)`.
    #[inline]
    pub fn pop(&mut self) -> Option<(f64, usize)> {
        self.heap
            .pop()
            .map(|Reverse((key, v))| (f64::from_bits(key), v as usize))
    }

    /// The edges from `src` to `dst` along the recorded predecessors, in order from `src`;
    /// `None` when `dst` was not reached from `src` in this query.
    pub fn path(&self, src: usize, dst: usize) -> Option<Vec<EdgeIndex>> {
        let mut edges = Vec::new();
        let mut node = dst;
        while node != src {
            let state = &self.nodes[node];
            if state.stamp != self.generation || state.pred == SearchScratch::NO_EDGE {
                return None;
            }
            edges.push(EdgeIndex::new(state.pred as usize));
            node = state.from as usize;
        }
        edges.reverse();
        Some(edges)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_generation_forgets_the_last_query() {
        let mut s = SearchScratch::default();
        s.begin(3);
        s.reach(1, 2.0);
        s.set(1, 5.0, 0, 7);
        s.push(5.0, 1);
        s.push(-0.0, 2);
        assert_eq!((s.dist(1), s.bound(1)), (5.0, 2.0));
        assert_eq!(s.pop(), Some((0.0, 2)));
        s.reach(0, 0.0);
        s.set(0, 0.0, 0, SearchScratch::NO_EDGE);
        assert_eq!(s.path(0, 1), Some(vec![EdgeIndex::new(7)]));
        assert_eq!(s.path(0, 2), None);
        s.begin(3);
        assert!(!s.reached(1));
        assert_eq!(s.dist(1), f64::INFINITY);
        assert_eq!(s.pop(), None);
        s.generation = u32::MAX;
        s.begin(3);
        assert_eq!(s.generation, 1);
        assert!(!s.reached(1));
    }
}
