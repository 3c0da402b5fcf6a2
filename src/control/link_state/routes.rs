//! Relay next hops from the link-state database: every node runs the domain's route policy
//! (the same plugins as a central controller) from itself to every other node and keeps the
//! first hop of each path the policy returns.

use std::collections::BTreeMap;

use qkdni_route_policy::{Demand, KeyNetwork, PreparedNetwork, RoutePolicy};

use crate::km::agent::NextHops;

/// Key rate asked of the policy for a destination: one 256-bit key per second. Policies that
/// weigh capacity (key-aware, multipath) then prefer links with key; all avoid down links.
const DEMAND_BPS: f64 = 256.0;

/// The next hops of `own` toward every node the policy can route to in `net`, primary first
/// with the share of the demand it carries as weight, and the hop count of the primary path;
/// destinations without a route are left out.
pub fn compute(
    own: &str,
    net: &KeyNetwork,
    policy: &dyn RoutePolicy,
) -> (BTreeMap<String, NextHops>, BTreeMap<String, u32>) {
    let mut routes = BTreeMap::new();
    let mut counts = BTreeMap::new();
    if !net.nodes.iter().any(|n| n == own) {
        return (routes, counts);
    }
    let prepared = match PreparedNetwork::new(net) {
        Ok(prepared) => prepared,
        Err(error) => {
            tracing::warn!(%error, "link-state database does not make a network");
            return (routes, counts);
        }
    };
    for dst in net.nodes.iter().filter(|n| n.as_str() != own) {
        let demand = Demand::new(own, dst.clone(), DEMAND_BPS, 0.0);
        let Ok(plan) = policy.route_prepared(&prepared, &demand) else {
            continue;
        };
        let mut hops: NextHops = Vec::new();
        for path in &plan.paths {
            let Some(hop) = path.nodes.get(1) else {
                continue;
            };
            let weight = (path.share_bps.max(1.0)).round() as u32;
            match hops.iter_mut().find(|(h, _)| h == hop) {
                Some((_, w)) => *w = w.saturating_add(weight),
                None => hops.push((hop.clone(), weight.max(1))),
            }
        }
        if !hops.is_empty() {
            if let Some(first) = plan.paths.first() {
                counts.insert(dst.clone(), first.links.len() as u32);
            }
            routes.insert(dst.clone(), hops);
        }
    }
    (routes, counts)
}

/// Fewest hops from `a` to `b` over up links of `net` (breadth-first), if connected.
pub fn hops_between(net: &KeyNetwork, a: &str, b: &str) -> Option<u32> {
    links_between(net, a, b).map(|links| links.len() as u32)
}

/// The links of a path with the fewest hops from `a` to `b` over up links of `net`
/// (breadth-first; among equals, the links in the order `net` lists them), if connected.
pub fn links_between(net: &KeyNetwork, a: &str, b: &str) -> Option<Vec<String>> {
    if a == b {
        return net.nodes.iter().any(|n| n == a).then(Vec::new);
    }
    // node -> (the node before it, the link from there)
    let mut parent: std::collections::BTreeMap<String, (String, String)> = Default::default();
    let mut seen = std::collections::BTreeSet::from([a.to_owned()]);
    let mut frontier = vec![a.to_owned()];
    while !frontier.is_empty() {
        let mut next = Vec::new();
        for node in &frontier {
            for link in net.links.iter().filter(|l| l.up) {
                let other = if &link.a == node {
                    &link.b
                } else if &link.b == node {
                    &link.a
                } else {
                    continue;
                };
                if !seen.insert(other.clone()) {
                    continue;
                }
                parent.insert(other.clone(), (node.clone(), link.id.clone()));
                if other == b {
                    let mut links = Vec::new();
                    let mut at = b.to_owned();
                    while let Some((before, link)) = parent.get(&at) {
                        links.push(link.clone());
                        at = before.clone();
                    }
                    links.reverse();
                    return Some(links);
                }
                next.push(other.clone());
            }
        }
        frontier = next;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use qkdni_route_policy::Link;

    fn ring(down: &[&str]) -> KeyNetwork {
        let mut net = KeyNetwork::new();
        for n in ["a", "b", "c", "d"] {
            net.add_node(n);
        }
        for (id, a, b) in [
            ("ab", "a", "b"),
            ("bc", "b", "c"),
            ("cd", "c", "d"),
            ("da", "d", "a"),
        ] {
            let mut link = Link::new(id, a, b, 1000.0);
            link.up = !down.contains(&id);
            net.add_link(link);
        }
        net
    }

    #[test]
    fn next_hops_follow_the_policy_and_avoid_down_links() {
        let policy = qkdni_routing::FewestHops;
        let (routes, hops) = compute("a", &ring(&[]), &policy);
        assert_eq!(hops["c"], 2);
        assert_eq!(routes["b"], vec![("b".to_string(), 256)]);
        assert_eq!(routes["d"], vec![("d".to_string(), 256)]);
        let (routes, _) = compute("a", &ring(&["ab"]), &policy);
        assert_eq!(routes["b"][0].0, "d");
        assert_eq!(routes["c"][0].0, "d");
        assert_eq!(hops_between(&ring(&["ab"]), "a", "b"), Some(3));
        assert_eq!(
            links_between(&ring(&["ab"]), "a", "b").unwrap(),
            vec!["da", "cd", "bc"]
        );
        assert_eq!(
            links_between(&ring(&[]), "a", "a").unwrap(),
            Vec::<String>::new()
        );
        let (routes, _) = compute("a", &ring(&["ab", "da"]), &policy);
        assert_eq!(hops_between(&ring(&["ab", "da"]), "a", "c"), None);
        assert!(routes.is_empty());
    }
}
