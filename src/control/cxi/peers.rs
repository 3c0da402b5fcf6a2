//! The peer domains as this controller knows them (Y.3818 9.2, status sharing over Cxi):
//! each peer's abstract topology as it pushed it (border nodes, Qx links, reachable SAEs:
//! never its internal links), its controller's status and last contact.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;

use crate::control::cxi::AbstractTopology;
use crate::control::sessions::RATE_HYSTERESIS;
use crate::netconf::server::now_rfc3339;

/// What this controller knows of one peer domain.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct PeerDomain {
    /// The peer's abstract topology as it last pushed (or was asked for) it.
    pub topology: Option<AbstractTopology>,
    /// When that topology arrived (RFC 3339).
    pub topology_time: Option<String>,
    /// Whether the last exchange with the peer controller succeeded.
    pub reachable: Option<bool>,
    /// The last successful exchange, either way (RFC 3339).
    pub last_contact: Option<String>,
}

/// What this controller knows of every peer domain.
#[derive(Default)]
pub struct PeerDomains(Mutex<BTreeMap<String, PeerDomain>>);

impl PeerDomains {
    /// What is known of each of `domains`.
    pub fn of<'a>(&self, domains: impl Iterator<Item = &'a str>) -> BTreeMap<String, PeerDomain> {
        let known = self.0.lock().expect("peer domains");
        domains
            .map(|d| (d.to_owned(), known.get(d).cloned().unwrap_or_default()))
            .collect()
    }

    /// Records an exchange with `domain`'s controller.
    pub fn contact(&self, domain: &str, ok: bool) {
        let mut known = self.0.lock().expect("peer domains");
        let peer = known.entry(domain.to_owned()).or_default();
        peer.reachable = Some(ok);
        if ok {
            peer.last_contact = Some(now_rfc3339());
        }
    }

    /// Keeps `domain`'s abstract topology; returns whether it changed materially.
    pub fn keep(&self, domain: &str, topology: AbstractTopology) -> bool {
        let mut known = self.0.lock().expect("peer domains");
        let peer = known.entry(domain.to_owned()).or_default();
        let changed = peer
            .topology
            .as_ref()
            .is_none_or(|old| differs(old, &topology));
        peer.topology = Some(topology);
        peer.topology_time = Some(now_rfc3339());
        peer.reachable = Some(true);
        peer.last_contact = peer.topology_time.clone();
        changed
    }

    /// The abstract topology `domain` last shared, if any.
    pub fn topology(&self, domain: &str) -> Option<AbstractTopology> {
        let known = self.0.lock().expect("peer domains");
        known.get(domain).and_then(|p| p.topology.clone())
    }
}

/// Whether two abstract topologies differ in what a peer routes by: border nodes, Qx links
/// and their state, reachable SAEs and hop counts, or a key rate by more than the
/// hysteresis margin.
pub fn differs(a: &AbstractTopology, b: &AbstractTopology) -> bool {
    let rate = |x: f64, y: f64| (x - y).abs() > RATE_HYSTERESIS * x.abs().max(y.abs());
    fn qx(t: &AbstractTopology) -> Vec<(&String, &crate::control::cxi::QxLinkState)> {
        t.border_nodes
            .iter()
            .flat_map(|n| n.qx_links.iter().map(move |q| (&n.node, q)))
            .collect()
    }
    let (qa, qb) = (qx(a), qx(b));
    if a.domain != b.domain
        || a.border_nodes.len() != b.border_nodes.len()
        || qa.len() != qb.len()
        || a.reachability.len() != b.reachability.len()
    {
        return true;
    }
    let links_differ = qa.iter().zip(&qb).any(|((na, x), (nb, y))| {
        na != nb
            || x.id != y.id
            || x.peer_node != y.peer_node
            || x.up != y.up
            || rate(x.rate_bps, y.rate_bps)
    });
    let reach_differs = a.reachability.iter().zip(&b.reachability).any(|(x, y)| {
        x.sae != y.sae
            || x.node != y.node
            || x.via.len() != y.via.len()
            || x.via.iter().zip(&y.via).any(|(p, q)| {
                p.border_node != q.border_node
                    || p.hops != q.hops
                    || match (p.rate_bps, q.rate_bps) {
                        (Some(r), Some(s)) => rate(r, s),
                        (r, s) => r.is_some() != s.is_some(),
                    }
            })
    });
    links_differ || reach_differs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::cxi::{BorderNode, BorderReach, QxLinkState, SaeReach, CXI_VERSION};

    fn topology(up: bool, rate: f64) -> AbstractTopology {
        AbstractTopology {
            version: CXI_VERSION,
            domain: "A".into(),
            border_nodes: vec![BorderNode {
                node: "ga1".into(),
                qx_links: vec![QxLinkState {
                    id: "qx1".into(),
                    peer_node: "gb1".into(),
                    up,
                    rate_bps: rate,
                }],
            }],
            reachability: vec![SaeReach {
                sae: "sae-a1-1".into(),
                node: "a1".into(),
                via: vec![BorderReach {
                    border_node: "ga1".into(),
                    hops: Some(2),
                    rate_bps: Some(rate),
                }],
            }],
        }
    }

    #[test]
    fn only_material_changes_count() {
        let base = topology(true, 1000.0);
        assert!(
            !differs(&base, &topology(true, 1050.0)),
            "a 5 % rate change"
        );
        assert!(
            differs(&base, &topology(true, 1200.0)),
            "a 20 % rate change"
        );
        assert!(differs(&base, &topology(false, 1000.0)), "a Qx link down");
        let mut fewer = base.clone();
        fewer.reachability.clear();
        assert!(differs(&base, &fewer));
    }
}
