//! `shortest`: the path of least total link weight.

use qkdni_route_policy::{Demand, Link, PreparedNetwork, RouteError, RoutePlan, RoutePolicy};

use crate::{alt, no_route, single_path};

/// Names the landmarks of `shortest`: on the link weight itself.
const LINK_WEIGHT: qkdni_route_policy::LandmarkKey = ("link-weight", 0);

/// Weighted shortest path over the up links; a link's weight is its `weight`, 1 when unset.
/// Key rates and stored key are not looked at: the one path carries the whole demand
/// (`share_bps` = the demanded rate).
///
/// The search is ALT (A* with landmark lower bounds) once the snapshot has landmarks for the
/// link weights (computed on those same weights), Dijkstra before.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shortest;

impl RoutePolicy for Shortest {
    fn name(&self) -> &'static str {
        "shortest"
    }

    fn route_prepared(
        &self,
        net: &PreparedNetwork<'_>,
        demand: &Demand,
    ) -> Result<RoutePlan, RouteError> {
        let (src, dst) = net.endpoints(demand)?;
        let csr = net.csr();
        let edges = alt::least_cost(net, src, dst, LINK_WEIGHT, Link::cost, |slot| {
            Some(csr.weight(slot))
        })
        .ok_or_else(|| no_route(demand))?;
        Ok(single_path(net, src, &edges, demand))
    }

    fn prepare(&self, net: &PreparedNetwork<'_>, _demand: &Demand) {
        net.prepare_landmarks(LINK_WEIGHT, Link::cost);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use qkdni_route_policy::testing::arb_network_and_demand;
    use qkdni_route_policy::{KeyNetwork, Link};

    use super::*;
    use crate::checks::{assert_valid_plan, connected};

    #[test]
    fn takes_the_lighter_route() {
        let mut net = KeyNetwork::new();
        for id in ["a", "b", "c", "d"] {
            net.add_node(id);
        }
        for (id, a, b, w) in [
            ("ad", "a", "d", 10.0),
            ("ab", "a", "b", 2.0),
            ("bc", "b", "c", 2.0),
            ("cd", "c", "d", 2.0),
        ] {
            let mut link = Link::new(id, a, b, 1.0);
            link.weight = Some(w);
            net.add_link(link);
        }
        let plan = Shortest
            .route(&net, &Demand::new("a", "d", 5.0, 0.0))
            .unwrap();
        assert_eq!(plan.paths[0].links, ["ab", "bc", "cd"]);
        assert_eq!(plan.paths[0].share_bps, 5.0);
        net.links[2].up = false;
        let plan = Shortest
            .route(&net, &Demand::new("a", "d", 5.0, 0.0))
            .unwrap();
        assert_eq!(plan.paths[0].links, ["ad"]);
        let plan = Shortest
            .route(&net, &Demand::new("a", "a", 5.0, 0.0))
            .unwrap();
        assert_eq!(plan.paths[0].nodes, ["a"]);
    }

    /// Least path weight from `src` to every node over up links (Bellman-Ford).
    fn bellman_ford(net: &KeyNetwork, src: &str) -> std::collections::HashMap<String, f64> {
        let mut dist: std::collections::HashMap<String, f64> = net
            .nodes
            .iter()
            .map(|n| (n.clone(), f64::INFINITY))
            .collect();
        dist.insert(src.to_string(), 0.0);
        for _ in 0..net.nodes.len() {
            for l in net.links.iter().filter(|l| l.up) {
                for (u, v) in [(&l.a, &l.b), (&l.b, &l.a)] {
                    let d = dist[u] + l.cost();
                    if d < dist[v] {
                        dist.insert(v.clone(), d);
                    }
                }
            }
        }
        dist
    }

    proptest! {
        #[test]
        fn path_weight_is_least((net, demand) in arb_network_and_demand(2..30)) {
            if let Ok(plan) = Shortest.route(&net, &demand) {
                let weight: f64 = plan.paths[0]
                    .links
                    .iter()
                    .map(|id| net.links.iter().find(|l| &l.id == id).unwrap().cost())
                    .sum();
                let best = bellman_ford(&net, &demand.src)[&demand.dst];
                prop_assert!((weight - best).abs() <= 1e-9 * best.max(1.0), "{weight} vs {best}");
            }
        }

        #[test]
        fn one_valid_path_iff_connected((net, demand) in arb_network_and_demand(2..30)) {
            match Shortest.route(&net, &demand) {
                Ok(plan) => {
                    prop_assert_eq!(plan.paths.len(), 1);
                    assert_valid_plan(&net, &demand, &plan);
                }
                Err(e) => {
                    prop_assert!(matches!(e, RouteError::NoRoute { .. }), "{e}");
                    prop_assert!(!connected(&net, &demand, |l| l.up));
                }
            }
        }
    }
}
