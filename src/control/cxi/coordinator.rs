//! Interworking through gateway nodes (Y.3818 9.1): the controller's part of key relay
//! between two QKDNs (procedure 1) and of coordinated rerouting (procedure 2).
//!
//! The domain of the master SAE coordinates. It reads the peer's abstract topology (border
//! nodes, Qx links, SAE reachability: never its internal links), ranks the gateway pairs,
//! and runs a two-phase exchange over Cxi for one of them: the peer prepares its segment
//! (computes and validates it) and votes; on `prepared`, the coordinator asks it to commit
//! (the peer installs its segment on its KMs, all or none) and then installs its own
//! segment; if that fails it aborts, and the peer undoes its commit. A peer that cannot be
//! reached means no new route anywhere: the session waits, unroutable, and is retried on
//! every topology change and poll until the peer answers again.
//!
//! This file holds what runs outside the instance (agreements, the abstract topology the
//! peer reads, reports to the peer); the receiving domain's handlers are in
//! [`crate::control::cxi::segments`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::control::controller::Controller;
use crate::control::cxi::peers::{differs, PeerDomain};
use crate::control::cxi::{
    AbstractTopology, BorderNode, BorderReach, CxiClient, Outcome, PrepareRequest, QxLinkState,
    SaeReach, StatusKind, StatusReport, TransactionResult, VoteKind, CXI_VERSION,
};
use crate::control::error::ControlError;
use crate::control::sessions::{Interworking, InterworkingRole, Session, SessionPath};
use crate::control::topology::Topology;

/// How often the abstract topology is sent again although it did not change (a restarted
/// peer learns it).
const PUSH_AGAIN: Duration = Duration::from_secs(30);
/// How long a segment fault waits for the coordinator's reroute before it is reported again.
pub const REPORT_AGAIN: Duration = Duration::from_secs(30);

/// Whether `session` is a segment of another domain's session.
pub fn is_segment(session: &Session) -> bool {
    session
        .interworking
        .as_ref()
        .is_some_and(|iw| iw.role == InterworkingRole::Segment)
}

/// A Qx link seen from this domain.
pub(in crate::control) struct Qx {
    pub id: String,
    pub local: String,
    pub peer: String,
    pub up: bool,
    pub rate_bps: f64,
}

impl Controller {
    fn gateways(&self) -> BTreeSet<String> {
        self.config
            .agents
            .iter()
            .filter(|a| a.role.is_border())
            .map(|a| a.node.clone())
            .collect()
    }

    pub(in crate::control) fn qx_links(&self, topology: &Topology) -> Vec<Qx> {
        let gateways = self.gateways();
        topology
            .links
            .values()
            .filter_map(|l| {
                let [a, b] = &l.nodes;
                let (local, peer) = if gateways.contains(a) && !topology.nodes.contains_key(b) {
                    (a, b)
                } else if gateways.contains(b) && !topology.nodes.contains_key(a) {
                    (b, a)
                } else {
                    return None;
                };
                Some(Qx {
                    id: l.id.clone(),
                    local: local.clone(),
                    peer: peer.clone(),
                    up: l.up,
                    rate_bps: l.rate_bps,
                })
            })
            .collect()
    }

    pub(in crate::control) fn peer(&self, domain: &str) -> Option<CxiClient> {
        self.peers()
            .iter()
            .find(|p| p.peer.domain == domain)
            .cloned()
    }

    /// The peer controller whose `identity` (certificate name, domain-qualified) called.
    pub fn peer_by_identity(&self, identity: &str) -> Option<CxiClient> {
        self.peers()
            .iter()
            .find(|p| crate::tls::foreign_identity(&p.peer.controller, &p.peer.domain) == identity)
            .cloned()
    }

    /// What this domain shares with its peers under its exposure policy (from the last
    /// published view: never waits).
    pub fn abstract_topology(&self) -> AbstractTopology {
        self.abstract_topology_with(self.interworking_settings().expose)
    }

    /// What this domain shares with peer `domain` under the exposure policy toward it.
    pub fn abstract_topology_for(&self, domain: &str) -> AbstractTopology {
        self.abstract_topology_with(self.expose_for(domain))
    }

    fn abstract_topology_with(
        &self,
        expose: crate::control::config::ExposePolicy,
    ) -> AbstractTopology {
        let view = self.view();
        let topology = &view.topology;
        let qx = self.qx_links(topology);
        let gateways = self.gateways();
        let border_nodes = gateways
            .iter()
            .map(|gw| BorderNode {
                node: gw.clone(),
                qx_links: qx
                    .iter()
                    .filter(|q| &q.local == gw)
                    .map(|q| QxLinkState {
                        id: q.id.clone(),
                        peer_node: q.peer.clone(),
                        up: q.up,
                        rate_bps: q.rate_bps,
                    })
                    .collect(),
            })
            .collect();
        let mut reachability = Vec::new();
        if expose.saes {
            for (sae, node) in &topology.saes {
                let via = gateways
                    .iter()
                    .filter_map(|gw| {
                        let (hops, rate) = if gw == node {
                            (0, f64::INFINITY)
                        } else {
                            let paths = self.route(topology, gw, node, 0.0).ok()?;
                            let rate = paths[0]
                                .links
                                .iter()
                                .filter_map(|l| topology.links.get(l))
                                .map(|l| l.rate_bps)
                                .fold(f64::INFINITY, f64::min);
                            (paths[0].links.len() as u32, rate)
                        };
                        Some(BorderReach {
                            border_node: gw.clone(),
                            hops: expose.key_rate.then_some(hops),
                            rate_bps: expose.key_rate.then_some(rate).filter(|r| r.is_finite()),
                        })
                    })
                    .collect();
                reachability.push(SaeReach {
                    sae: sae.clone(),
                    node: node.clone(),
                    via,
                });
            }
        }
        AbstractTopology {
            version: CXI_VERSION,
            domain: self.config.domain.clone(),
            border_nodes,
            reachability,
        }
    }

    /// The peer (and its abstract topology) that can reach SAE `sae`.
    async fn find_peer_of(
        &self,
        sae: &str,
        domain: Option<&str>,
    ) -> Result<(CxiClient, AbstractTopology, SaeReach), ControlError> {
        let mut unreachable = None;
        let peers = self.peers();
        for client in peers
            .iter()
            .filter(|p| domain.is_none_or(|d| d == p.peer.domain))
        {
            // what the peer pushed; asked for when it has not yet
            let topology = match self.peer_domains.topology(&client.peer.domain) {
                Some(topology) => Ok(topology),
                None => client
                    .abstract_topology()
                    .await
                    .inspect(|topology| self.peer_topology(&client.peer.domain, topology.clone())),
            };
            match topology {
                Ok(topology) => {
                    if let Some(reach) = topology.reachability.iter().find(|r| r.sae == sae) {
                        let reach = reach.clone();
                        return Ok((client.clone(), topology, reach));
                    }
                }
                Err(error) => unreachable = Some(error),
            }
        }
        match unreachable {
            Some(error) => Err(error.into()),
            None => Err(ControlError::UnknownSae(sae.to_owned())),
        }
    }

    /// Agrees a route for interworking session `session` (this domain is its origin) with
    /// the peer: returns this domain's paths (to the peer GWN across the Qx link) once the
    /// peer has committed its segment.
    pub(in crate::control) async fn route_interworking(
        &self,
        topology: &Topology,
        session: &Session,
        reason: &str,
    ) -> Result<(Vec<SessionPath>, Interworking), ControlError> {
        let domain = session
            .interworking
            .as_ref()
            .map(|iw| iw.peer_domain.as_str());
        let (client, peer_topology, reach) = self.find_peer_of(&session.slave_sae, domain).await?;
        if topology.nodes.contains_key(&reach.node) {
            return Err(ControlError::NoRoute(format!(
                "{}'s node {} has the name of a node of this domain",
                client.peer.domain, reach.node
            )));
        }
        let mut candidates = Vec::new();
        for q in self.qx_links(topology).into_iter().filter(|q| q.up) {
            let peer_up = peer_topology
                .border_nodes
                .iter()
                .filter(|b| b.node == q.peer)
                .flat_map(|b| &b.qx_links)
                .any(|l| l.id == q.id && l.up);
            let Some(via) = reach.via.iter().find(|v| v.border_node == q.peer) else {
                continue;
            };
            if !peer_up {
                continue;
            }
            let paths = if session.src == q.local {
                vec![SessionPath {
                    nodes: vec![q.local.clone()],
                    links: Vec::new(),
                    share_bps: session.rate_bps,
                }]
            } else {
                match self.route(topology, &session.src, &q.local, session.rate_bps) {
                    Ok(paths) => paths,
                    Err(_) => continue,
                }
            };
            let score = paths[0].links.len() as u32 + via.hops.unwrap_or(0);
            candidates.push((score, q, paths));
        }
        candidates.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
        if candidates.is_empty() {
            return Err(ControlError::NoRoute(format!(
                "no usable gateway pair toward {}",
                session.slave_sae
            )));
        }
        let mut refusals = Vec::new();
        // QoS admission on this domain's links (the peer admits on its own)
        let class = self.admission.class_of(
            &session.master_sae,
            &session.slave_sae,
            Some(&client.peer.domain),
            |s| topology.saes.contains_key(s),
        );
        let mut not_admitted = None;
        for (_, q, paths) in candidates {
            if let Some(class) = &class {
                let links = crate::control::admission::links_of(&paths);
                if let Err(refusal) = self.admission.admit(session.id, class, links, topology) {
                    self.event_in(
                        "interworking-refused",
                        format!("{reason}: not admitted via {}: {refusal}", q.id),
                        Some(session.id),
                        None,
                        None,
                    );
                    not_admitted.get_or_insert(refusal);
                    continue;
                }
            }
            let transaction = Uuid::new_v4();
            let request = PrepareRequest {
                version: CXI_VERSION,
                transaction,
                session: session.id,
                origin_domain: self.config.domain.clone(),
                master_sae: session.master_sae.clone(),
                slave_sae: session.slave_sae.clone(),
                origin_km: session.src.clone(),
                peer_gateway: q.local.clone(),
                entry_gateway: q.peer.clone(),
                qx_link: q.id.clone(),
                rate_bps: session.rate_bps,
                reason: reason.to_owned(),
                qos_class: class.as_ref().map(|c| c.name.clone()),
            };
            let proposal = format!("{} -[{}]-> {}", q.local, q.id, q.peer);
            self.event_in(
                "interworking-prepare",
                format!("{reason}: proposing {proposal} to {}", client.peer.domain),
                Some(session.id),
                None,
                Some(transaction),
            );
            let vote = client.prepare(&request).await.inspect_err(|error| {
                self.event_in(
                    "interworking-abort",
                    format!("{reason}: no agreement on {proposal}: {error}"),
                    Some(session.id),
                    None,
                    Some(transaction),
                )
            })?;
            if vote.vote == VoteKind::Refused {
                let why = vote.reason.unwrap_or_default();
                self.event_in(
                    "interworking-refused",
                    format!("{} refused {proposal}: {why}", client.peer.domain),
                    Some(session.id),
                    None,
                    Some(transaction),
                );
                refusals.push(why);
                continue;
            }
            match client.commit(transaction).await {
                Ok(TransactionResult {
                    outcome: Outcome::Committed,
                    ..
                }) => {
                    self.event_in(
                        "interworking-commit",
                        format!(
                            "{} committed its segment from {}; installing {proposal}",
                            client.peer.domain, q.peer
                        ),
                        Some(session.id),
                        None,
                        Some(transaction),
                    );
                    let paths = paths
                        .into_iter()
                        .map(|mut p| {
                            p.nodes.push(q.peer.clone());
                            p.links.push(q.id.clone());
                            p
                        })
                        .collect();
                    return Ok((
                        paths,
                        Interworking {
                            peer_domain: client.peer.domain.clone(),
                            role: InterworkingRole::Origin,
                            transaction,
                            local_gateway: q.local.clone(),
                            peer_gateway: q.peer.clone(),
                            qx_link: q.id.clone(),
                            peer_km: reach.node.clone(),
                        },
                    ));
                }
                Ok(result) => {
                    let why = result.reason.unwrap_or_default();
                    self.event_in(
                        "interworking-abort",
                        format!("{} could not commit {proposal}: {why}", client.peer.domain),
                        Some(session.id),
                        None,
                        Some(transaction),
                    );
                    refusals.push(why);
                }
                Err(error) => {
                    // the outcome is unknown: make sure nothing stays half-installed
                    let _ = client.abort(transaction).await;
                    self.event_in(
                        "interworking-abort",
                        format!("{reason}: commit of {proposal} unconfirmed: {error}"),
                        Some(session.id),
                        None,
                        Some(transaction),
                    );
                    return Err(error.into());
                }
            }
        }
        match not_admitted {
            Some(refusal) if refusals.is_empty() => Err(refusal.into()),
            _ => Err(ControlError::NoRoute(format!(
                "the peer refused every gateway pair: {}",
                refusals.join("; ")
            ))),
        }
    }

    /// Asks the peer to undo transaction `transaction` (best effort, logged).
    pub(in crate::control) async fn abort_at_peer(&self, domain: &str, transaction: Uuid) {
        if let Some(client) = self.peer(domain) {
            let result = client.abort(transaction).await;
            self.event_in(
                "interworking-abort",
                format!("asked {domain} to undo its segment: {result:?}"),
                None,
                None,
                Some(transaction),
            );
        }
    }

    /// Tells the peer that a session ended here.
    pub(in crate::control) async fn end_interworking(&self, session: &Session) {
        let Some(iw) = &session.interworking else {
            return;
        };
        if iw.role == InterworkingRole::Origin {
            if let Some(client) = self.peer(&iw.peer_domain) {
                if let Err(error) = client.delete_session(session.id).await {
                    tracing::warn!(%error, "the peer did not remove its segment");
                }
            }
        }
    }

    /// Reports a fault on segment `segment` to the coordinating domain (in the background).
    pub(in crate::control) fn report_segment_fault(&self, segment: &Session, trigger: &str) {
        let Some(iw) = &segment.interworking else {
            return;
        };
        self.event_in(
            "segment-fault",
            format!(
                "{trigger}: the segment {} of {}'s session fails; asking {} to reroute",
                segment.path.join(" -> "),
                iw.peer_domain,
                iw.peer_domain
            ),
            Some(segment.id),
            None,
            Some(iw.transaction),
        );
        let Some(client) = self.peer(&iw.peer_domain) else {
            return;
        };
        let report = StatusReport {
            version: CXI_VERSION,
            domain: self.config.domain.clone(),
            kind: StatusKind::SegmentFault,
            sessions: vec![segment.id],
            detail: trigger.to_owned(),
            topology: None,
        };
        tokio::spawn(async move {
            for attempt in 1..=5u64 {
                match client.status(&report).await {
                    Ok(_) => return,
                    Err(error) => tracing::warn!(%error, attempt, "cannot report a segment fault"),
                }
                tokio::time::sleep(Duration::from_secs(attempt)).await;
            }
        });
    }

    /// Sends every peer the complete list of this domain's interworking sessions with it, so
    /// that it drops left-over segments (called now and then).
    pub(in crate::control) async fn share_session_lists(&self) {
        let lists: Vec<(CxiClient, Vec<Uuid>)> = {
            let view = self.view();
            self.peers()
                .iter()
                .map(|peer| {
                    let ids = view
                        .sessions
                        .iter()
                        .filter(|s| {
                            s.interworking.as_ref().is_some_and(|iw| {
                                iw.role == InterworkingRole::Origin
                                    && iw.peer_domain == peer.peer.domain
                            })
                        })
                        .map(|s| s.id)
                        .collect();
                    (peer.clone(), ids)
                })
                .collect()
        };
        for (client, sessions) in lists {
            let report = StatusReport {
                version: CXI_VERSION,
                domain: self.config.domain.clone(),
                kind: StatusKind::Sessions,
                sessions,
                detail: "interworking sessions".into(),
                topology: None,
            };
            if let Err(error) = client.status(&report).await {
                tracing::debug!(%error, "session list not delivered; sent again later");
            }
        }
    }
}

impl Controller {
    /// What this controller knows of its peer domains, by domain.
    pub fn peer_domains(&self) -> BTreeMap<String, PeerDomain> {
        let peers = self.peers();
        self.peer_domains
            .of(peers.iter().map(|p| p.peer.domain.as_str()))
    }

    /// Records an exchange with peer `domain`'s controller.
    pub(in crate::control) fn peer_contact(&self, domain: &str, ok: bool) {
        self.peer_domains.contact(domain, ok);
    }

    /// Keeps peer `domain`'s abstract topology; tells operators when it changed.
    pub(in crate::control) fn peer_topology(&self, domain: &str, topology: AbstractTopology) {
        let qx: Vec<String> = topology
            .border_nodes
            .iter()
            .flat_map(|b| &b.qx_links)
            .map(|q| format!("{} {}", q.id, if q.up { "up" } else { "down" }))
            .collect();
        let detail = format!(
            "{domain}: {} border node(s) ({}), {} reachable SAE(s)",
            topology.border_nodes.len(),
            qx.join(", "),
            topology.reachability.len()
        );
        if self.peer_domains.keep(domain, topology) {
            self.event("peer-topology-change", detail, None, None);
        }
    }

    /// Pushes each peer the abstract topology its exposure policy allows when it changes
    /// (the domain or the interworking settings) and every [`PUSH_AGAIN`]; runs until the
    /// controller stops.
    pub(in crate::control) async fn push_abstract_topology(self: Arc<Self>) {
        if self.config.interworking.is_none() {
            return;
        }
        let mut views = self.view_changes();
        let mut settings = self.interworking_changes();
        let mut sent: BTreeMap<String, AbstractTopology> = BTreeMap::new();
        let mut again = tokio::time::interval(PUSH_AGAIN);
        loop {
            let timed = tokio::select! {
                changed = views.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    false
                }
                // a new exposure policy is sent whatever it changes
                changed = settings.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    true
                }
                _ = again.tick() => true,
            };
            let peers = self.peers();
            sent.retain(|domain, _| peers.iter().any(|p| &p.peer.domain == domain));
            for client in peers.iter() {
                let domain = &client.peer.domain;
                let topology = self.abstract_topology_for(domain);
                if !timed && sent.get(domain).is_some_and(|s| !differs(s, &topology)) {
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
                let result = client.status(&report).await;
                self.peer_contact(domain, result.is_ok());
                if let Err(error) = result {
                    tracing::debug!(%error, "abstract topology not delivered; sent again later");
                }
                sent.insert(domain.clone(), topology);
            }
        }
    }
}
