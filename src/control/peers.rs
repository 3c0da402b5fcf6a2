//! The peer domains as this controller knows them (Y.3818 9.2, status sharing over Cxi):
//! each peer's abstract topology as it pushed it (border nodes, Qx links, reachable SAEs:
//! never its internal links), its controller's status and last contact; and the push of this
//! domain's own abstract topology to its peers whenever a border node, a Qx link or an
//! exposed key rate changes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::controller::Controller;
use super::cxi::{AbstractTopology, StatusKind, StatusReport, CXI_VERSION};
use super::reroute::RATE_HYSTERESIS;
use crate::netconf::server::now_rfc3339;

/// How often the abstract topology is sent again although it did not change (a restarted
/// peer learns it).
const PUSH_AGAIN: Duration = Duration::from_secs(30);

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

impl Controller {
    /// What this controller knows of its peer domains, by domain.
    pub fn peer_domains(&self) -> BTreeMap<String, PeerDomain> {
        let known = self.peer_domains.lock().expect("peer domains");
        self.peers
            .iter()
            .map(|p| {
                let domain = p.peer.domain.clone();
                let seen = known.get(&domain).cloned().unwrap_or_default();
                (domain, seen)
            })
            .collect()
    }

    /// Records an exchange with peer `domain`'s controller.
    pub(super) fn peer_contact(&self, domain: &str, ok: bool) {
        let mut known = self.peer_domains.lock().expect("peer domains");
        let peer = known.entry(domain.to_owned()).or_default();
        peer.reachable = Some(ok);
        if ok {
            peer.last_contact = Some(now_rfc3339());
        }
    }

    /// Keeps peer `domain`'s abstract topology; tells operators when it changed.
    pub(super) fn peer_topology(&self, domain: &str, topology: AbstractTopology) {
        let changed = {
            let mut known = self.peer_domains.lock().expect("peer domains");
            let peer = known.entry(domain.to_owned()).or_default();
            let changed = peer
                .topology
                .as_ref()
                .is_none_or(|old| differs(old, &topology));
            peer.topology = Some(topology.clone());
            peer.topology_time = Some(now_rfc3339());
            peer.reachable = Some(true);
            peer.last_contact = peer.topology_time.clone();
            changed
        };
        if changed {
            let qx: Vec<String> = topology
                .border_nodes
                .iter()
                .flat_map(|b| &b.qx_links)
                .map(|q| format!("{} {}", q.id, if q.up { "up" } else { "down" }))
                .collect();
            self.event(
                "peer-topology-change",
                format!(
                    "{domain}: {} border node(s) ({}), {} reachable SAE(s)",
                    topology.border_nodes.len(),
                    qx.join(", "),
                    topology.reachability.len()
                ),
                None,
                None,
            );
        }
    }

    /// The abstract topology peer `domain` last shared, if any.
    pub(super) fn known_peer_topology(&self, domain: &str) -> Option<AbstractTopology> {
        let known = self.peer_domains.lock().expect("peer domains");
        known.get(domain).and_then(|p| p.topology.clone())
    }

    /// Pushes this domain's abstract topology to every peer when it changes (and every
    /// [`PUSH_AGAIN`]); runs until the controller stops.
    pub(super) async fn push_abstract_topology(self: Arc<Self>) {
        if self.peers.is_empty() {
            return;
        }
        let mut views = self.view_changes();
        let mut sent: Option<AbstractTopology> = None;
        let mut again = tokio::time::interval(PUSH_AGAIN);
        loop {
            let timed = tokio::select! {
                changed = views.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    false
                }
                _ = again.tick() => true,
            };
            let topology = self.abstract_topology();
            if !timed && sent.as_ref().is_some_and(|s| !differs(s, &topology)) {
                continue;
            }
            let report = StatusReport {
                version: CXI_VERSION,
                domain: self.config.domain.clone(),
                kind: StatusKind::BorderChange,
                sessions: Vec::new(),
                detail: "abstract topology".into(),
                topology: Some(topology.clone()),
            };
            for client in &self.peers {
                let result = client.status(&report).await;
                self.peer_contact(&client.peer.domain, result.is_ok());
                if let Err(error) = result {
                    tracing::debug!(%error, "abstract topology not delivered; sent again later");
                }
            }
            sent = Some(topology);
        }
    }
}

/// Whether two abstract topologies differ in what a peer routes by: border nodes, Qx links
/// and their state, reachable SAEs and hop counts, or a key rate by more than the
/// hysteresis margin.
pub fn differs(a: &AbstractTopology, b: &AbstractTopology) -> bool {
    let rate = |x: f64, y: f64| (x - y).abs() > RATE_HYSTERESIS * x.abs().max(y.abs());
    fn qx(t: &AbstractTopology) -> Vec<(&String, &super::cxi::QxLinkState)> {
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
    use crate::control::cxi::{BorderNode, BorderReach, QxLinkState, SaeReach};

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
