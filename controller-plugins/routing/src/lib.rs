//! Route policies of the qkdni QKDN controller, behind the `qkdni-route-policy` trait.
//!
//! | name | policy |
//! |---|---|
//! | `shortest` | [`Shortest`]: least total link weight (Dijkstra / ALT) |
//! | `fewest-hops` | [`FewestHops`]: fewest links (breadth-first search) |
//! | `key-aware` | [`KeyAware`]: only links that can serve the demand, preferring well-stocked ones |
//! | `multipath` | [`Multipath`]: splits the demand over paths up to the max-flow bound |
//!
//! Every policy avoids down links; the single-path ones return exactly one path.
//!
//! `shortest` and `key-aware` search goal-directed on large snapshots: A* with lower bounds
//! from landmark distances (ALT), computed per prepared snapshot on a cost that never
//! exceeds the policy's, once the snapshot has answered enough queries or when
//! [`RoutePolicy::prepare`] asks for them.

mod alt;
mod fewest_hops;
mod key_aware;
mod multipath;
mod search;
mod shortest;

pub use fewest_hops::FewestHops;
pub use key_aware::KeyAware;
pub use multipath::Multipath;
pub use qkdni_route_policy::{
    Demand, KeyNetwork, Link, Path, PreparedNetwork, RouteError, RoutePlan, RoutePolicy,
};
pub use shortest::Shortest;

use petgraph::graph::{EdgeIndex, NodeIndex};

/// Names of the policies of this crate, as [`by_name`] accepts them.
pub const NAMES: &[&str] = &["shortest", "fewest-hops", "key-aware", "multipath"];

/// Every policy of this crate, for a controller.
pub const CATALOG: qkdni_route_policy::Catalog = qkdni_route_policy::Catalog {
    names: NAMES,
    make: by_name,
};

/// The policy called `name` (one of [`NAMES`]).
pub fn by_name(name: &str) -> Option<Box<dyn RoutePolicy>> {
    Some(match name {
        "shortest" => Box::new(Shortest),
        "fewest-hops" => Box::new(FewestHops),
        "key-aware" => Box::new(KeyAware),
        "multipath" => Box::new(Multipath),
        _ => return None,
    })
}

/// A plan of one path from `src` along `edges` carrying the whole demand.
fn single_path(
    net: &PreparedNetwork<'_>,
    src: NodeIndex,
    edges: &[EdgeIndex],
    demand: &Demand,
) -> RoutePlan {
    RoutePlan {
        paths: vec![net.path(src, edges, demand.rate_bps)],
    }
}

fn no_route(demand: &Demand) -> RouteError {
    RouteError::NoRoute {
        src: demand.src.clone(),
        dst: demand.dst.clone(),
    }
}

/// Checks shared by the policies' tests.
#[cfg(test)]
mod checks {
    use std::collections::{HashMap, HashSet};

    use super::*;

    /// Asserts the structural properties every plan must have; panics with a reason.
    pub fn assert_valid_plan(net: &KeyNetwork, demand: &Demand, plan: &RoutePlan) {
        let links: HashMap<&str, &Link> = net.links.iter().map(|l| (l.id.as_str(), l)).collect();
        assert!(!plan.paths.is_empty(), "empty plan");
        for path in &plan.paths {
            assert_eq!(path.nodes.first(), Some(&demand.src), "{path:?}");
            assert_eq!(path.nodes.last(), Some(&demand.dst), "{path:?}");
            assert_eq!(path.nodes.len(), path.links.len() + 1, "{path:?}");
            let distinct: HashSet<&String> = path.nodes.iter().collect();
            assert_eq!(distinct.len(), path.nodes.len(), "not simple: {path:?}");
            for (i, id) in path.links.iter().enumerate() {
                let link = links[id.as_str()];
                assert!(link.up, "down link {id} in {path:?}");
                let (u, v) = (&path.nodes[i], &path.nodes[i + 1]);
                assert!(
                    (&link.a == u && &link.b == v) || (&link.a == v && &link.b == u),
                    "link {id} does not join {u} and {v}"
                );
            }
            assert!(path.share_bps >= 0.0 && path.share_bps.is_finite());
        }
    }

    /// Whether `dst` is reachable from `src` over links `usable` accepts (an independent
    /// oracle: plain graph search over the snapshot, without petgraph).
    pub fn connected(net: &KeyNetwork, demand: &Demand, usable: impl Fn(&Link) -> bool) -> bool {
        let mut seen = HashSet::from([demand.src.as_str()]);
        let mut stack = vec![demand.src.as_str()];
        while let Some(u) = stack.pop() {
            for l in net.links.iter().filter(|l| usable(l)) {
                for (x, y) in [(&l.a, &l.b), (&l.b, &l.a)] {
                    if x == u && seen.insert(y.as_str()) {
                        stack.push(y);
                    }
                }
            }
        }
        seen.contains(demand.dst.as_str())
    }

    #[test]
    fn names_resolve() {
        for name in NAMES {
            assert_eq!(by_name(name).unwrap().name(), *name);
        }
        assert!(by_name("nope").is_none());
    }
}
