//! Landmark distances for goal-directed search (ALT: A*, landmarks, triangle inequality).
//!
//! For a landmark `L` and any nodes `v`, `t`, the triangle inequality gives
//! `d(v, t) >= |d(L, t) - d(L, v)|` (the graph is undirected). So the distances from a few
//! well-spread landmarks to every node give a lower bound of the remaining distance to the
//! destination at every node, which A* uses to head for the destination instead of searching
//! a disc around the source.
//!
//! The bound only holds for the link costs the distances were computed with, and for any
//! search whose links each cost *at least* as much: a search over fewer links (some filtered
//! out), or with higher costs, may use it; one with any lower cost may not.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::Csr;

/// Number of landmarks policies use, and the most a [`Landmarks`] holds.
pub const LANDMARK_COUNT: usize = 32;

/// The distances of one node to every landmark, in two cache lines.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Row([f32; LANDMARK_COUNT]);

/// Distances from a set of landmark nodes to every node of a [`Csr`] graph, for one link
/// cost function. Nodes are numbered as in the [`Csr`].
///
/// Distances are kept as `f32` rounded down (one 128-byte row per node), so the bounds read
/// half the memory; [`slack`](Self::slack) covers that rounding.
#[derive(Clone)]
pub struct Landmarks {
    nodes: Vec<u32>,
    component: Vec<u32>,
    /// `rows[v].0[i]` = distance from landmark `i` to `v` rounded down, infinite when they
    /// are not connected.
    rows: Vec<Row>,
    slack: f64,
}

impl std::fmt::Debug for Landmarks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Landmarks")
            .field("nodes", &self.nodes)
            .field("graph_nodes", &self.component.len())
            .finish_non_exhaustive()
    }
}

impl Landmarks {
    /// Chooses up to `count` landmarks by farthest-point selection and computes their
    /// distances, with `cost(link)` the cost of the link of index `link` in
    /// `KeyNetwork::links`: `>= 0`, or infinite for a link the searches using these
    /// landmarks never take (it is then left out, also of [`connected`](Self::connected)).
    ///
    /// The first landmark is the node farthest from the first node of the largest connected
    /// component; each next one is the node farthest from all landmarks chosen so far (a node
    /// no landmark reaches counts as infinitely far, so every component gets a landmark
    /// before any gets a second one, as long as there are landmarks left). Components of
    /// fewer than `nodes / (4 * count)` nodes get none. Selection stops early when every
    /// node is at distance 0 from a landmark. Costs `count + 1` full Dijkstra runs. At most
    /// [`LANDMARK_COUNT`] landmarks are chosen.
    pub fn compute(csr: &Csr, cost: impl Fn(usize) -> f64, count: usize) -> Self {
        let n = csr.node_count();
        let slot_cost: Vec<f64> = (0..csr.slot_count()).map(|s| cost(csr.link(s))).collect();
        let component = components(csr, &slot_cost);
        let mut size = vec![0usize; n];
        for &c in &component {
            size[c as usize] += 1;
        }
        let size_of = |v: usize| size[component[v] as usize];
        let k = count.min(n).min(LANDMARK_COUNT);
        // Components of fewer nodes get no landmark: a search in one stays small anyway,
        // and landmarks are not spent on nodes cut off by left-out links.
        let min_size = (n / (4 * k.max(1))).max(1);
        let eligible = |v: usize| size_of(v) >= min_size;
        let mut columns: Vec<Vec<f64>> = Vec::new();
        let mut nodes = Vec::new();
        let start = (0..n).max_by_key(|&v| (size_of(v), Reverse(v)));
        if let Some(start) = start.filter(|&v| k > 0 && eligible(v)) {
            let mut dist = vec![f64::INFINITY; n];
            let mut heap = BinaryHeap::new();
            sssp(csr, &slot_cost, start, &mut dist, &mut heap);
            let mut next = farthest(&dist, |v| dist[v].is_finite());
            let mut closest = vec![f64::INFINITY; n];
            while let Some(landmark) = next {
                sssp(csr, &slot_cost, landmark, &mut dist, &mut heap);
                for (c, &d) in closest.iter_mut().zip(&dist) {
                    *c = c.min(d);
                }
                nodes.push(landmark as u32);
                columns.push(dist.clone());
                next = farthest(&closest, eligible).filter(|&v| closest[v] > 0.0);
                if nodes.len() == k {
                    break;
                }
            }
        }
        let mut rows = vec![Row([f32::INFINITY; LANDMARK_COUNT]); n];
        let mut largest = 0.0f64;
        for (i, column) in columns.iter().enumerate() {
            for (row, &d) in rows.iter_mut().zip(column) {
                row.0[i] = round_down(d);
                if d.is_finite() {
                    largest = largest.max(d);
                }
            }
        }
        Self {
            nodes,
            component,
            rows,
            // Each stored distance is below the exact one by less than its f32 ulp, at most
            // 2^-23 of the largest distance, and so is the difference of two; an f32
            // subtraction adds at most 2^-24 of it. Twice the sum leaves room for the f64
            // rounding of the distances themselves.
            slack: largest * f64::powi(2.0, -21),
        }
    }

    /// The landmark nodes (CSR node numbers), in the order they were chosen.
    pub fn nodes(&self) -> &[u32] {
        &self.nodes
    }

    /// Whether `u` and `v` are connected in the graph the landmarks were computed on. When
    /// they are not, no search over a subgraph can connect them either.
    #[inline]
    pub fn connected(&self, u: usize, v: usize) -> bool {
        self.component[u] == self.component[v]
    }

    /// The distances from each landmark to `v` (`nodes().len()` of them, in the order of
    /// [`nodes`](Self::nodes)), rounded down to `f32`; infinite for landmarks in another
    /// component.
    #[inline]
    pub fn distances(&self, v: usize) -> &[f32] {
        &self.rows[v].0[..self.nodes.len()]
    }

    /// All [`LANDMARK_COUNT`] distances of `v`, those past `nodes().len()` infinite: a fixed
    /// size lets a bound be computed with SIMD over the whole row.
    #[inline]
    pub fn row(&self, v: usize) -> &[f32; LANDMARK_COUNT] {
        &self.rows[v].0
    }

    /// How much `|a - b|`, for two entries `a`, `b` of [`distances`](Self::distances) of the
    /// same landmark, may exceed the exact difference, also when computed in `f32`: subtract
    /// it from a bound.
    #[inline]
    pub fn slack(&self) -> f64 {
        self.slack
    }

    /// The lower bound of the distance between `v` and `t` (0 when nothing is known,
    /// infinite when they are not connected).
    pub fn lower_bound(&self, v: usize, t: usize) -> f64 {
        if !self.connected(v, t) {
            return f64::INFINITY;
        }
        let gap = self
            .distances(v)
            .iter()
            .zip(self.distances(t))
            .filter(|(a, b)| a.is_finite() && b.is_finite())
            .fold(0.0f64, |m, (&a, &b)| {
                m.max((f64::from(a) - f64::from(b)).abs())
            });
        (gap - self.slack).max(0.0)
    }
}

/// The largest `f32` not above `x`.
fn round_down(x: f64) -> f32 {
    let y = x as f32;
    if f64::from(y) > x {
        y.next_down()
    } else {
        y
    }
}

/// Non-negative `f64` as a heap key: for those, the bit patterns order like the numbers
/// (`+ 0.0` turns `-0.0` into `0.0`).
#[inline]
pub(crate) fn key_bits(x: f64) -> u64 {
    (x + 0.0).to_bits()
}

/// Distances from `src` to every node (Dijkstra) into `dist`, infinite when unreachable.
fn sssp(
    csr: &Csr,
    slot_cost: &[f64],
    src: usize,
    dist: &mut [f64],
    heap: &mut BinaryHeap<Reverse<(u64, u32)>>,
) {
    dist.fill(f64::INFINITY);
    heap.clear();
    dist[src] = 0.0;
    heap.push(Reverse((key_bits(0.0), src as u32)));
    while let Some(Reverse((key, u))) = heap.pop() {
        let u = u as usize;
        let d = dist[u];
        if key > key_bits(d) {
            continue;
        }
        for s in csr.slots(u) {
            let v = csr.target(s);
            let nd = d + slot_cost[s];
            if nd < dist[v] {
                dist[v] = nd;
                heap.push(Reverse((key_bits(nd), v as u32)));
            }
        }
    }
}

/// Among the nodes `ok` accepts, the one of largest distance (infinite counts as largest),
/// lowest index among equals.
fn farthest(dist: &[f64], ok: impl Fn(usize) -> bool) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (v, &d) in dist.iter().enumerate() {
        if ok(v) && best.is_none_or(|b| d > dist[b]) {
            best = Some(v);
        }
    }
    best
}

/// Connected component label of every node (the smallest node index in it), over the slots
/// of finite cost.
fn components(csr: &Csr, slot_cost: &[f64]) -> Vec<u32> {
    let n = csr.node_count();
    let mut label = vec![u32::MAX; n];
    let mut stack = Vec::new();
    for root in 0..n {
        if label[root] != u32::MAX {
            continue;
        }
        label[root] = root as u32;
        stack.push(root);
        while let Some(u) = stack.pop() {
            for s in csr.slots(u) {
                let v = csr.target(s);
                if label[v] == u32::MAX && slot_cost[s].is_finite() {
                    label[v] = root as u32;
                    stack.push(v);
                }
            }
        }
    }
    label
}

#[cfg(test)]
mod tests {
    use petgraph::graph::NodeIndex;

    use super::*;
    use crate::{Link, LinkGraph};

    /// A path 0-1-2-3 (costs 1, 2, 3 by link index 0, 1, 2) and an isolated pair 4-5.
    fn graph() -> Csr {
        let mut g = LinkGraph::new_undirected();
        let n: Vec<NodeIndex> = (0..6).map(|_| g.add_node(())).collect();
        for (i, (a, b)) in [(0, 1), (1, 2), (2, 3), (4, 5)].into_iter().enumerate() {
            g.add_edge(n[a], n[b], i as u32);
        }
        let links: Vec<Link> = (0..4)
            .map(|i| Link::new(format!("l{i}"), "", "", 1.0))
            .collect();
        Csr::new(&g, &links)
    }

    #[test]
    fn farthest_points_cover_components_and_bound_distances() {
        let csr = graph();
        let lm = Landmarks::compute(&csr, |l| [1.0, 2.0, 3.0, 5.0][l], 3);
        // Farthest from 0 is 3; then 4 (unreached), then 0 (6 away from 3, none in 4-5 is
        // farther than 5).
        assert_eq!(lm.nodes(), [3, 4, 0]);
        assert_eq!(lm.distances(1), [5.0, f32::INFINITY, 1.0]);
        assert!(lm.slack() > 0.0 && lm.slack() < 1e-5);
        let near = |a: f64, b: f64| (a - b).abs() < 1e-5 && a <= b;
        assert!(near(lm.lower_bound(1, 3), 5.0));
        assert!(near(lm.lower_bound(0, 2), 3.0));
        assert!(near(lm.lower_bound(4, 5), 5.0));
        assert_eq!(lm.lower_bound(0, 5), f64::INFINITY);
        assert!(lm.connected(0, 3) && !lm.connected(3, 4));
    }

    #[test]
    fn stops_when_every_node_is_a_landmark_or_zero_away() {
        let csr = graph();
        let lm = Landmarks::compute(&csr, |_| 0.0, 16);
        assert_eq!(lm.nodes(), [0, 4]);
        let lm = Landmarks::compute(&csr, |_| 1.0, 16);
        assert_eq!(lm.nodes().len(), 6);
        assert_eq!(lm.lower_bound(2, 2), 0.0);
    }

    #[test]
    fn small_components_get_no_landmarks() {
        // A path of 40 nodes and 20 isolated ones: 4 landmarks, none on an isolated node.
        let mut g = LinkGraph::new_undirected();
        let n: Vec<NodeIndex> = (0..60).map(|_| g.add_node(())).collect();
        for i in 20..59 {
            g.add_edge(n[i], n[i + 1], 0);
        }
        let csr = Csr::new(&g, &[Link::new("l", "", "", 1.0)]);
        let lm = Landmarks::compute(&csr, |_| 1.0, 4);
        assert_eq!(lm.nodes().len(), 4);
        let on_path = |u: u32| (20..60).contains(&csr.node_of(u as usize).index());
        assert!(lm.nodes().iter().all(|&u| on_path(u)), "{:?}", lm.nodes());
        let (a, b) = (csr.index_of(n[20]), csr.index_of(n[59]));
        assert!(lm.lower_bound(a, b) > 38.99);
        let (x, y) = (csr.index_of(n[0]), csr.index_of(n[1]));
        assert_eq!(lm.lower_bound(x, y), f64::INFINITY);
        assert_eq!(lm.lower_bound(x, x), 0.0);
    }

    #[test]
    fn links_of_infinite_cost_are_left_out() {
        let csr = graph();
        let lm = Landmarks::compute(&csr, |l| if l == 1 { f64::INFINITY } else { 1.0 }, 16);
        assert!(lm.connected(0, 1) && lm.connected(2, 3) && !lm.connected(1, 2));
        assert_eq!(lm.lower_bound(0, 3), f64::INFINITY);
        assert!(lm.lower_bound(0, 1) <= 1.0 && lm.lower_bound(0, 1) > 0.99);
    }

    #[test]
    fn rounds_down_to_f32() {
        assert_eq!(round_down(f64::INFINITY), f32::INFINITY);
        for x in [0.0, 0.1, 1.0 / 3.0, 1e10 + 1.0, 123.456] {
            let y = round_down(x);
            assert!(f64::from(y) <= x && f64::from(y.next_up()) > x, "{x}");
        }
    }
}
