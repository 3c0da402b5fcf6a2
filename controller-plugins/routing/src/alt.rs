//! Goal-directed least-cost search: ALT (A* with landmark lower bounds from the triangle
//! inequality) over the prepared snapshot's flat adjacency, with search buffers reused across
//! queries.

use petgraph::graph::{EdgeIndex, NodeIndex};
use qkdni_route_policy::{Landmarks, Link, PreparedNetwork, SearchScratch};

/// A link cost function that landmarks are computed on, and that bounds the costs of the
/// searches using it from below.
#[derive(Clone, Copy)]
pub struct LowerCost {
    /// Names `cost` in the snapshot's landmark cache (one name, one function).
    pub key: &'static str,
    /// For every link: finite, `>= 0`, and at most the cost any search using this
    /// `LowerCost` gives the link (or the search does not use the link at all).
    pub cost: fn(&Link) -> f64,
}

/// Least-cost path from `src` to `dst` over the links for which `cost` gives `Some(c)`,
/// `c >= lower.cost(link)`. Returns its edges in order from `src`.
///
/// Uses the snapshot's landmarks for `lower` once they pay off (see
/// [`PreparedNetwork::landmarks`]); before that, a plain Dijkstra over the same structures.
pub fn least_cost(
    net: &PreparedNetwork<'_>,
    src: NodeIndex,
    dst: NodeIndex,
    lower: LowerCost,
    cost: impl Fn(&Link) -> Option<f64>,
) -> Option<Vec<EdgeIndex>> {
    let landmarks = net.landmarks(lower.key, lower.cost);
    let checked = |link: &Link| {
        let c = cost(link);
        debug_assert!(
            c.is_none_or(|c| c >= (lower.cost)(link)),
            "link {:?}: cost {c:?} below the {} landmark cost",
            link.id,
            lower.key
        );
        c
    };
    alt(net, src, dst, landmarks.as_deref(), checked)
}

/// Least-cost path from `src` to `dst` over the links for which `cost` gives `Some(c)`,
/// `c >= 0`: A* guided by `landmarks`, or Dijkstra when `None`. Returns its edges in order
/// from `src`.
///
/// The landmarks must have been computed on this snapshot with, for every link `cost`
/// accepts, a cost at most `cost`'s: then the bound `max |d(L, dst) - d(L, v)|` never
/// overestimates the cost left from `v` and the path is a least-cost one (up to
/// floating-point rounding). A pair the landmarks know to be disconnected is answered at
/// once.
pub fn alt(
    net: &PreparedNetwork<'_>,
    src: NodeIndex,
    dst: NodeIndex,
    landmarks: Option<&Landmarks>,
    cost: impl Fn(&Link) -> Option<f64>,
) -> Option<Vec<EdgeIndex>> {
    let (s, t) = (src.index(), dst.index());
    if landmarks.is_some_and(|lm| !lm.connected(s, t)) {
        return None;
    }
    let csr = net.csr();
    let links = &net.network().links;
    net.with_scratch(|scratch| {
        scratch.begin(csr.node_count());
        // The landmarks that reach `dst`, with their distance to it.
        let mut active = std::mem::take(&mut scratch.landmarks);
        active.clear();
        if let Some(lm) = landmarks {
            let to_dst = lm.distances(t).iter().enumerate();
            active.extend(
                to_dst
                    .filter(|(_, d)| d.is_finite())
                    .map(|(i, &d)| (i as u32, d)),
            );
        }
        let bound = |v: usize| match landmarks {
            Some(lm) => {
                let from = lm.distances(v);
                active.iter().fold(0.0f64, |m, &(i, to_dst)| {
                    m.max((from[i as usize] - to_dst).abs())
                })
            }
            None => 0.0,
        };
        scratch.reach(s, bound(s));
        scratch.set(s, 0.0, SearchScratch::NO_EDGE);
        scratch.push(scratch.bound(s), s);
        let mut found = false;
        while let Some((key, u)) = scratch.pop() {
            if u == t {
                found = true;
                break;
            }
            let g = scratch.dist(u);
            if key > g + scratch.bound(u) {
                continue; // stale entry
            }
            for slot in csr.slots(u) {
                let Some(c) = cost(&links[csr.link(slot)]) else {
                    continue;
                };
                let v = csr.target(slot);
                if !scratch.reached(v) {
                    scratch.reach(v, bound(v));
                }
                let d = g + c;
                if d < scratch.dist(v) {
                    scratch.set(v, d, csr.edge(slot));
                    scratch.push(d + scratch.bound(v), v);
                }
            }
        }
        scratch.landmarks = active;
        if found {
            scratch.path(net, s, t)
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use qkdni_route_policy::testing::arb_network;
    use qkdni_route_policy::{Demand, KeyNetwork};

    use super::*;
    use crate::key_aware::{cost as key_cost, least_cost as key_least, serves};
    use crate::search::dijkstra;

    /// Total cost of `edges` (which must form a walk from `src` to `dst`).
    fn walk_cost(
        net: &PreparedNetwork<'_>,
        src: NodeIndex,
        dst: NodeIndex,
        edges: &[EdgeIndex],
        cost: &impl Fn(&Link) -> Option<f64>,
    ) -> f64 {
        let mut at = src;
        let mut total = 0.0;
        for &e in edges {
            at = net.other_end(e, at);
            total += cost(net.link(e)).expect("only usable links");
        }
        assert_eq!(at, dst, "walk ends elsewhere");
        total
    }

    /// ALT and plain Dijkstra agree on reachability and on the least cost.
    fn same_as_dijkstra(
        net: &PreparedNetwork<'_>,
        landmarks: Option<&Landmarks>,
        (s, d): (usize, usize),
        cost: impl Fn(&Link) -> Option<f64>,
    ) -> Result<(), TestCaseError> {
        let (src, dst) = (NodeIndex::new(s), NodeIndex::new(d));
        let fast = alt(net, src, dst, landmarks, &cost);
        let reference = dijkstra(net, src, dst, &cost);
        match (fast, reference) {
            (None, None) => {}
            (Some(fast), Some(reference)) => {
                let a = walk_cost(net, src, dst, &fast, &cost);
                let b = walk_cost(net, src, dst, &reference, &cost);
                prop_assert!((a - b).abs() <= 1e-9 * b.max(1.0), "{s}->{d}: {a} vs {b}");
            }
            (fast, reference) => {
                prop_assert!(false, "{s}->{d}: alt {fast:?}, dijkstra {reference:?}")
            }
        }
        Ok(())
    }

    fn arb_case() -> impl Strategy<Value = (KeyNetwork, Vec<(usize, usize)>, usize, f64, f64)> {
        arb_network(2..40).prop_flat_map(|net| {
            let n = net.nodes.len();
            (
                Just(net),
                prop::collection::vec((0..n, 0..n), 1..12),
                0..6usize,
                0.0..1000.0f64,
                0.0..1e5f64,
            )
        })
    }

    proptest! {
        /// Random graphs (down links, parallel links, self-loops, disconnected pairs), several
        /// random pairs per snapshot (reused buffers), 0 to 5 landmarks and the default set.
        #[test]
        fn alt_cost_equals_dijkstra((net, pairs, k, rate, bits) in arb_case()) {
            let prepared = PreparedNetwork::new(&net).unwrap();
            let links = &net.links;
            let weight = Landmarks::compute(prepared.csr(), |l| links[l].cost(), k);
            let least = Landmarks::compute(prepared.csr(), |l| key_least(&links[l]), k);
            let default = prepared.prepare_landmarks("weight", Link::cost);
            let demand = Demand::new("", "", rate, bits);
            let key_aware = |l: &Link| serves(l, &demand).then(|| key_cost(l, &demand));
            for &pair in &pairs {
                for lm in [None, Some(&weight), Some(&*default)] {
                    same_as_dijkstra(&prepared, lm, pair, |l| Some(l.cost()))?;
                }
                same_as_dijkstra(&prepared, Some(&least), pair, key_aware)?;
                // A filtered search keeps bounds computed on all up links.
                same_as_dijkstra(&prepared, Some(&weight), pair, |l| {
                    (l.key_rate_bps >= rate).then(|| l.cost())
                })?;
            }
        }

        /// The key-aware least cost is below the cost for any demand.
        #[test]
        fn key_aware_least_cost_is_a_floor(
            rate in 0.0..1e9f64, bits in 0.0..1e12f64, have in 0.0..1e9f64, stock in 0.0..1e12f64,
        ) {
            let mut link = Link::new("l", "a", "b", have);
            link.available_bits = stock;
            prop_assert!(key_least(&link) <= key_cost(&link, &Demand::new("a", "b", rate, bits)));
        }
    }

    #[test]
    fn policies_route_the_same_with_landmarks() {
        use crate::{KeyAware, RoutePolicy, Shortest};
        let mut net = KeyNetwork::new();
        for i in 0..30 {
            net.add_node(format!("n{i}"));
        }
        for i in 0..29 {
            let mut link = Link::new(format!("l{i}"), format!("n{i}"), format!("n{}", i + 1), 1e3);
            link.weight = Some(1.0 + (i % 3) as f64);
            link.available_bits = 1e6;
            net.add_link(link);
        }
        let cold = PreparedNetwork::new(&net).unwrap();
        let warm = PreparedNetwork::new(&net).unwrap();
        for policy in [&Shortest as &dyn RoutePolicy, &KeyAware] {
            policy.prepare(&warm);
            for d in 1..30 {
                let demand = Demand::new("n0", format!("n{d}"), 10.0, 100.0);
                let plan = policy.route_prepared(&warm, &demand).unwrap();
                assert_eq!(plan, policy.route_prepared(&cold, &demand).unwrap());
                assert_eq!(plan.paths[0].links.len(), d);
            }
        }
    }
}
