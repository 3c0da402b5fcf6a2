//! `fewest-hops`: the path with the fewest key relays.

use qkdni_route_policy::{Demand, PreparedNetwork, RouteError, RoutePlan, RoutePolicy};

use crate::{no_route, search, single_path};

/// Path with the fewest links (breadth-first search) over the up links. Key rates and stored
/// key are not looked at: the one path carries the whole demand.
#[derive(Debug, Clone, Copy, Default)]
pub struct FewestHops;

impl RoutePolicy for FewestHops {
    fn name(&self) -> &'static str {
        "fewest-hops"
    }

    fn route_prepared(
        &self,
        net: &PreparedNetwork<'_>,
        demand: &Demand,
    ) -> Result<RoutePlan, RouteError> {
        let (src, dst) = net.endpoints(demand)?;
        let edges = search::bfs(net, src, dst, |_| true).ok_or_else(|| no_route(demand))?;
        Ok(single_path(net, src, &edges, demand))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use qkdni_route_policy::testing::arb_network_and_demand;

    use super::*;
    use crate::checks::{assert_valid_plan, connected};
    use crate::Shortest;

    proptest! {
        #[test]
        fn one_valid_path_iff_connected((net, demand) in arb_network_and_demand(2..30)) {
            match FewestHops.route(&net, &demand) {
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

        #[test]
        fn no_longer_than_unit_weight_shortest((mut net, demand) in arb_network_and_demand(2..30)) {
            for link in &mut net.links {
                link.weight = None;
            }
            if let (Ok(hops), Ok(shortest)) = (FewestHops.route(&net, &demand), Shortest.route(&net, &demand)) {
                prop_assert_eq!(hops.paths[0].links.len(), shortest.paths[0].links.len());
            }
        }
    }
}
