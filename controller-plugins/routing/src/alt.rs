//! Goal-directed least-cost search: ALT (A* with landmark lower bounds from the triangle
//! inequality) over the prepared snapshot's flat adjacency, with search buffers reused across
//! queries.

use petgraph::graph::{EdgeIndex, NodeIndex};
use qkdni_route_policy::{LandmarkKey, Landmarks, Link, PreparedNetwork, SearchScratch};

/// Least-cost path from `src` to `dst` over the CSR slots (see [`PreparedNetwork::csr`])
/// for which `cost` gives `Some(c)`, `c >= lower(link of the slot)`. Returns its edges in
/// order from `src`.
///
/// `lower` is the link cost function (named `key`, see [`PreparedNetwork::landmarks`]) the
/// landmarks are computed on: finite and `>= 0`, or infinite for links `cost` never takes.
/// The snapshot's landmarks for it are used once they pay off; before that, this is a plain
/// Dijkstra over the same structures.
pub fn least_cost(
    net: &PreparedNetwork<'_>,
    src: NodeIndex,
    dst: NodeIndex,
    key: LandmarkKey,
    lower: impl Fn(&Link) -> f64,
    cost: impl Fn(usize) -> Option<f64>,
) -> Option<Vec<EdgeIndex>> {
    let landmarks = net.landmarks(key, &lower);
    let (csr, links) = (net.csr(), &net.network().links);
    let checked = |slot: usize| {
        let c = cost(slot);
        debug_assert!(
            c.is_none_or(|c| c >= lower(&links[csr.link(slot)])),
            "slot {slot}: cost {c:?} below the {key:?} landmark cost",
        );
        c
    };
    alt(net, src, dst, landmarks.as_deref(), checked)
}

/// Least-cost path from `src` to `dst` over the CSR slots for which `cost` gives `Some(c)`,
/// `c >= 0`: A* guided by `landmarks`, or Dijkstra when `None`. Returns its edges in order
/// from `src`.
///
/// The landmarks must have been computed on this snapshot with, for every slot `cost`
/// accepts, a cost at most `cost`'s: then the bound `max |d(L, dst) - d(L, v)|` never
/// overestimates the cost left from `v` and the path is a least-cost one (up to
/// floating-point rounding). Nodes may be expanded more than once (there is no closed set),
/// so a bound that is admissible but, by rounding, not quite consistent still gives a
/// least-cost path. A pair the landmarks know to be disconnected is answered at once.
pub fn alt(
    net: &PreparedNetwork<'_>,
    src: NodeIndex,
    dst: NodeIndex,
    landmarks: Option<&Landmarks>,
    cost: impl Fn(usize) -> Option<f64>,
) -> Option<Vec<EdgeIndex>> {
    let csr = net.csr();
    let (s, t) = (csr.index_of(src), csr.index_of(dst));
    if landmarks.is_some_and(|lm| !lm.connected(s, t)) {
        return None;
    }
    net.with_scratch(|scratch| {
        scratch.begin(csr.node_count());
        // The bound is the largest gap of any landmark between `v` and `dst`; a landmark in
        // another component (or an unused lane) gives NaN (infinity - infinity), which the
        // comparison skips.
        let to_dst = landmarks.map(|lm| *lm.row(t));
        let bound = |v: usize| match (landmarks, &to_dst) {
            (Some(lm), Some(to_dst)) => {
                let from = lm.row(v);
                let mut gap = 0.0f32;
                for i in 0..to_dst.len() {
                    let d = (from[i] - to_dst[i]).abs();
                    if d > gap {
                        gap = d;
                    }
                }
                (f64::from(gap) - lm.slack()).max(0.0)
            }
            _ => 0.0,
        };
        scratch.reach(s, bound(s));
        scratch.set(s, 0.0, s, SearchScratch::NO_EDGE);
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
                let Some(c) = cost(slot) else {
                    continue;
                };
                let v = csr.target(slot);
                if !scratch.reached(v) {
                    scratch.reach(v, bound(v));
                }
                let d = g + c;
                if d < scratch.dist(v) {
                    scratch.set(v, d, u, csr.edge(slot));
                    scratch.push(d + scratch.bound(v), v);
                }
            }
        }
        if found {
            scratch.path(s, t)
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
    use crate::key_aware::{cost as key_cost, serves, DemandClass};
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
        let (csr, links) = (net.csr(), &net.network().links);
        let fast = alt(net, src, dst, landmarks, |slot| {
            cost(&links[csr.link(slot)])
        });
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
            let default = prepared.prepare_landmarks(("weight", 0), Link::cost).unwrap();
            let demand = Demand::new("", "", rate, bits);
            let class = DemandClass::of(&demand);
            let own = Landmarks::compute(prepared.csr(), |l| class.lower(&links[l]), k);
            let least = DemandClass::of(&Demand::new("", "", 0.0, 0.0));
            let least = Landmarks::compute(prepared.csr(), |l| least.lower(&links[l]), k);
            let key_aware = |l: &Link| serves(l, &demand).then(|| key_cost(l, &demand));
            for &pair in &pairs {
                for lm in [None, Some(&weight), Some(&*default)] {
                    same_as_dijkstra(&prepared, lm, pair, |l| Some(l.cost()))?;
                }
                for lm in [&own, &least] {
                    same_as_dijkstra(&prepared, Some(lm), pair, key_aware)?;
                }
                // A filtered search keeps bounds computed on all up links.
                same_as_dijkstra(&prepared, Some(&weight), pair, |l| {
                    (l.key_rate_bps >= rate).then(|| l.cost())
                })?;
            }
        }

        /// A demand's class bounds its costs from below, on every link the demand can use;
        /// so does any class of smaller numbers.
        #[test]
        fn key_aware_classes_bound_costs(
            rate in 0.0..1e9f64, bits in 0.0..1e12f64, have in 0.0..1e9f64, stock in 0.0..1e12f64,
            less in 0.0..1.0f64,
        ) {
            let mut link = Link::new("l", "a", "b", have);
            link.available_bits = stock;
            let demand = Demand::new("a", "b", rate, bits);
            let smaller = DemandClass::of(&Demand::new("a", "b", rate * less, bits * less));
            if serves(&link, &demand) {
                let c = key_cost(&link, &demand);
                prop_assert!(DemandClass::of(&demand).lower(&link) <= c);
                prop_assert!(smaller.lower(&link) <= c);
            }
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
            policy.prepare(&warm, &Demand::new("", "", 10.0, 100.0));
            for d in 1..30 {
                let demand = Demand::new("n0", format!("n{d}"), 10.0, 100.0);
                let plan = policy.route_prepared(&warm, &demand).unwrap();
                assert_eq!(plan, policy.route_prepared(&cold, &demand).unwrap());
                assert_eq!(plan.paths[0].links.len(), d);
            }
        }
    }
}
