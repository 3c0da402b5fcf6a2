//! `multipath`: splits a demand over several paths, up to the max-flow / min-cut bound.

use petgraph::graph::{EdgeIndex, NodeIndex};
use petgraph::visit::EdgeRef;
use qkdni_route_policy::{max_flow, Demand, PreparedNetwork, RouteError, RoutePlan, RoutePolicy};

use crate::{no_route, search, single_path};

/// Paths whose share is below this fraction of the flow are dropped (rounding residue).
const NEGLIGIBLE_SHARE: f64 = 1e-9;

/// Multipath: a maximum flow of the demanded rate over the up links' key rates (augmenting
/// paths with the fewest hops first, Edmonds-Karp), decomposed into simple paths, each with
/// the rate it carries as `share_bps`.
///
/// The shares sum to min(demanded rate, max-flow): no link carries more than its key rate
/// and the total never exceeds the min cut. When the network cannot give the whole rate, the
/// plan delivers what it can (compare `RoutePlan::total_bps` with the demand). Stored key
/// (`available_bits`) is not looked at. A demand of rate 0 gets one fewest-hop path.
///
/// Errors: `NoRoute` when the ends are not connected over up links;
/// `InsufficientCapacity { available: 0 }` when they are, but every path has a link without
/// key rate.
#[derive(Debug, Clone, Copy, Default)]
pub struct Multipath;

impl RoutePolicy for Multipath {
    fn name(&self) -> &'static str {
        "multipath"
    }

    fn route_prepared(
        &self,
        net: &PreparedNetwork<'_>,
        demand: &Demand,
    ) -> Result<RoutePlan, RouteError> {
        let (src, dst) = net.endpoints(demand)?;
        if src == dst || demand.rate_bps == 0.0 {
            let edges = search::bfs(net, src, dst, |_| true).ok_or_else(|| no_route(demand))?;
            return Ok(single_path(net, src, &edges, demand));
        }
        let flow = max_flow(net, src, dst, demand.rate_bps);
        if flow.value <= 0.0 {
            return match search::bfs(net, src, dst, |_| true) {
                Some(_) => Err(RouteError::InsufficientCapacity { available: 0.0 }),
                None => Err(no_route(demand)),
            };
        }
        let paths = decompose(net, src, dst, flow.edge_flow)
            .into_iter()
            .filter(|(_, share)| *share > flow.value * NEGLIGIBLE_SHARE)
            .map(|(edges, share)| net.path(src, &edges, share))
            .collect();
        Ok(RoutePlan { paths })
    }
}

/// Splits a `src`-`dst` flow into simple paths with their rates, cancelling any cycles.
///
/// Walks from `src` along edges with flow leaving the current node; a node met again closes
/// a cycle, whose flow is removed; reaching `dst` closes a path, whose bottleneck rate is
/// taken off its edges. Each step sets at least one edge's flow to exactly 0, so it ends.
fn decompose(
    net: &PreparedNetwork<'_>,
    src: NodeIndex,
    dst: NodeIndex,
    mut flow: Vec<f64>,
) -> Vec<(Vec<EdgeIndex>, f64)> {
    let graph = net.graph();
    // Flow leaving `from` along `edge`.
    let out = |flow: &[f64], edge: EdgeIndex, from: NodeIndex| {
        let (a, _) = graph.edge_endpoints(edge).expect("edge of this graph");
        if a == from {
            flow[edge.index()]
        } else {
            -flow[edge.index()]
        }
    };
    // Takes `delta` off the flow along a walk (edge, node it leaves); zeroes `exhausted`.
    let take =
        |flow: &mut [f64], walk: &[(EdgeIndex, NodeIndex)], delta: f64, exhausted: EdgeIndex| {
            for &(edge, from) in walk {
                let (a, _) = graph.edge_endpoints(edge).expect("edge of this graph");
                flow[edge.index()] -= if a == from { delta } else { -delta };
            }
            flow[exhausted.index()] = 0.0;
        };
    const OFF: u32 = u32::MAX;
    let mut position = vec![OFF; graph.node_count()];
    let mut paths = Vec::new();
    loop {
        // The current walk: (edge, node it leaves) pairs, and the node reached.
        let mut walk: Vec<(EdgeIndex, NodeIndex)> = Vec::new();
        let mut u = src;
        position[src.index()] = 0;
        let finished = loop {
            if u == dst {
                let (delta, exhausted) = bottleneck(&flow, &walk, out);
                take(&mut flow, &walk, delta, exhausted);
                paths.push((walk.iter().map(|&(e, _)| e).collect(), delta));
                break false;
            }
            let next = graph.edges(u).find(|e| out(&flow, e.id(), u) > 0.0);
            let Some(edge) = next else {
                // Rounding residue ends here: drop the edge that led in, start over.
                if let Some(&(last, _)) = walk.last() {
                    flow[last.index()] = 0.0;
                }
                break walk.is_empty();
            };
            let v = edge.target();
            walk.push((edge.id(), u));
            let seen_at = position[v.index()];
            if seen_at == OFF {
                position[v.index()] = walk.len() as u32;
                u = v;
                continue;
            }
            // A cycle back to v: cancel it and continue from v.
            let cycle = walk.split_off(seen_at as usize);
            let (delta, exhausted) = bottleneck(&flow, &cycle, out);
            take(&mut flow, &cycle, delta, exhausted);
            for &(_, node) in &cycle[1..] {
                position[node.index()] = OFF;
            }
            u = v;
        };
        for &(_, node) in &walk {
            position[node.index()] = OFF;
        }
        position[u.index()] = OFF;
        if finished {
            return paths;
        }
    }
}

/// The smallest flow along a walk and the edge that carries it.
fn bottleneck(
    flow: &[f64],
    walk: &[(EdgeIndex, NodeIndex)],
    out: impl Fn(&[f64], EdgeIndex, NodeIndex) -> f64,
) -> (f64, EdgeIndex) {
    walk.iter()
        .map(|&(edge, from)| (out(flow, edge, from), edge))
        .min_by(|x, y| x.0.total_cmp(&y.0))
        .expect("a walk has edges")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;
    use qkdni_route_policy::testing::arb_network_and_demand;
    use qkdni_route_policy::{min_cut_bps, KeyNetwork, Link};

    use super::*;
    use crate::checks::{assert_valid_plan, connected};

    #[test]
    fn splits_over_parallel_routes() {
        let mut net = KeyNetwork::new();
        for id in ["a", "b", "c", "d"] {
            net.add_node(id);
        }
        for (id, a, b, rate) in [
            ("ab", "a", "b", 10.0),
            ("bd", "b", "d", 10.0),
            ("ac", "a", "c", 5.0),
            ("cd", "c", "d", 7.0),
        ] {
            net.add_link(Link::new(id, a, b, rate));
        }
        let plan = Multipath
            .route(&net, &Demand::new("a", "d", 12.0, 0.0))
            .unwrap();
        assert_eq!(plan.paths.len(), 2);
        assert_eq!(plan.total_bps(), 12.0);
        let plan = Multipath
            .route(&net, &Demand::new("a", "d", 100.0, 0.0))
            .unwrap();
        assert_eq!(plan.total_bps(), 15.0);
        let plan = Multipath
            .route(&net, &Demand::new("a", "d", 8.0, 0.0))
            .unwrap();
        assert_eq!(plan.paths.len(), 1);
    }

    proptest! {
        #[test]
        fn respects_capacities_and_reaches_the_bound(
            (net, demand) in arb_network_and_demand(2..30)
        ) {
            let cut = min_cut_bps(&net, &demand.src, &demand.dst).unwrap();
            match Multipath.route(&net, &demand) {
                Ok(plan) => {
                    assert_valid_plan(&net, &demand, &plan);
                    let total = plan.total_bps();
                    let tolerance = 1e-9 * cut.max(1.0);
                    prop_assert!(total <= cut + tolerance, "total {total} > min cut {cut}");
                    prop_assert!(total <= demand.rate_bps + tolerance);
                    prop_assert!(total >= 0.95 * cut.min(demand.rate_bps), "total {total}, cut {cut}");
                    let mut load: HashMap<&str, f64> = HashMap::new();
                    for path in &plan.paths {
                        for id in &path.links {
                            *load.entry(id).or_default() += path.share_bps;
                        }
                    }
                    for link in &net.links {
                        let used = load.get(link.id.as_str()).copied().unwrap_or(0.0);
                        prop_assert!(used <= link.key_rate_bps * (1.0 + 1e-9), "{} overloaded", link.id);
                    }
                }
                Err(RouteError::NoRoute { .. }) => {
                    prop_assert!(!connected(&net, &demand, |l| l.up));
                }
                Err(RouteError::InsufficientCapacity { available }) => {
                    prop_assert_eq!(available, 0.0);
                    prop_assert_eq!(cut, 0.0);
                }
                Err(e) => prop_assert!(false, "{e}"),
            }
        }
    }
}
