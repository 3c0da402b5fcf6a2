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

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::config::NodeRole;
use super::controller::{ControlError, Controller, State};
use super::cxi::{
    AbstractTopology, BorderNode, BorderReach, CxiClient, Outcome, PrepareRequest, QxLinkState,
    SaeReach, StatusKind, StatusReport, TransactionResult, Vote, VoteKind, CXI_VERSION,
};
use super::sessions::{
    Interworking, InterworkingRole, Session, SessionEvent, SessionPath, SessionState,
};
use super::topology::{ForeignSae, Topology};
use crate::netconf::server::now_rfc3339;

/// How long a segment fault waits for the coordinator's reroute before it is reported again.
pub const REPORT_AGAIN: Duration = Duration::from_secs(30);
/// How long a committed segment is safe from a session list that does not name it yet.
const LIST_GRACE: Duration = Duration::from_secs(60);
/// How long a prepared segment waits for its commit.
const PREPARED_FOR: Duration = Duration::from_secs(30);
/// How long a peer's request waits for this controller's lock: two controllers that
/// coordinate sessions in opposite directions at once must not wait on each other for good.
const PEER_LOCK_WAIT: Duration = Duration::from_secs(3);
/// How many committed transactions can still be undone by an abort.
const UNDOABLE: usize = 256;

/// Interworking state of a controller.
#[derive(Default)]
pub struct InterworkingState {
    /// Segments prepared for a peer's transaction, awaiting commit or abort.
    prepared: BTreeMap<Uuid, (Session, Instant)>,
    /// Committed transactions and the segment each replaced (for an abort after commit).
    committed: BTreeMap<Uuid, Option<Session>>,
    committed_order: VecDeque<Uuid>,
    /// Sessions the peer reported faults on: rerouted on the next pass.
    pub suspect: BTreeSet<Uuid>,
    /// When segments were last committed (since start): a session list sent before a commit
    /// must not remove it.
    pub committed_at: BTreeMap<Uuid, Instant>,
    /// Segments whose fault was reported to the coordinator, and when (reported again after
    /// [`REPORT_AGAIN`] until it reroutes them).
    pub notified: BTreeMap<Uuid, Instant>,
}

/// Whether `session` is a segment of another domain's session.
pub fn is_segment(session: &Session) -> bool {
    session
        .interworking
        .as_ref()
        .is_some_and(|iw| iw.role == InterworkingRole::Segment)
}

/// The entries of other domains' SAEs every KM needs: the slave's at the master's KM of an
/// origin session; the master's at every KM of a segment (relays are checked against it).
pub(super) fn desired_foreign_saes(
    state: &State,
) -> BTreeMap<String, BTreeMap<String, ForeignSae>> {
    let mut wanted: BTreeMap<String, BTreeMap<String, ForeignSae>> = BTreeMap::new();
    for session in state.sessions.values() {
        let Some(iw) = session
            .interworking
            .as_ref()
            .filter(|_| session.state == SessionState::Active)
        else {
            continue;
        };
        let (sae, nodes) = match iw.role {
            InterworkingRole::Origin => (&session.slave_sae, vec![session.src.clone()]),
            InterworkingRole::Segment => (&session.master_sae, session.path.clone()),
        };
        for node in nodes {
            wanted.entry(node).or_default().insert(
                sae.clone(),
                ForeignSae {
                    node: iw.peer_km.clone(),
                    domain: iw.peer_domain.clone(),
                },
            );
        }
    }
    wanted
}

/// A Qx link seen from this domain.
struct Qx {
    id: String,
    local: String,
    peer: String,
    up: bool,
    rate_bps: f64,
}

impl Controller {
    fn gateways(&self) -> BTreeSet<String> {
        self.config
            .agents
            .iter()
            .filter(|a| a.role == NodeRole::Gateway)
            .map(|a| a.node.clone())
            .collect()
    }

    fn qx_links(&self, topology: &Topology) -> Vec<Qx> {
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

    pub(super) fn peer(&self, domain: &str) -> Option<&CxiClient> {
        self.peers.iter().find(|p| p.peer.domain == domain)
    }

    /// The peer controller whose `identity` (certificate name, domain-qualified) called.
    pub fn peer_by_identity(&self, identity: &str) -> Option<&CxiClient> {
        self.peers
            .iter()
            .find(|p| crate::tls::foreign_identity(&p.peer.controller, &p.peer.domain) == identity)
    }

    /// What this domain shares with its peers under its exposure policy (`None` while the
    /// controller is too busy to answer).
    pub async fn abstract_topology(&self) -> Option<AbstractTopology> {
        let state = tokio::time::timeout(PEER_LOCK_WAIT, self.state.lock())
            .await
            .ok()?;
        let expose = self
            .config
            .interworking
            .as_ref()
            .map(|iw| iw.expose.clone())
            .unwrap_or_default();
        let qx = self.qx_links(&state.topology);
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
            for (sae, node) in &state.topology.saes {
                let via = gateways
                    .iter()
                    .filter_map(|gw| {
                        let (hops, rate) = if gw == node {
                            (0, f64::INFINITY)
                        } else {
                            let paths = self.route(&state.topology, gw, node, 0.0).ok()?;
                            let rate = paths[0]
                                .links
                                .iter()
                                .filter_map(|l| state.topology.links.get(l))
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
        Some(AbstractTopology {
            version: CXI_VERSION,
            domain: self.config.domain.clone(),
            border_nodes,
            reachability,
        })
    }

    /// The peer (and its abstract topology) that can reach SAE `sae`.
    async fn find_peer_of(
        &self,
        sae: &str,
        domain: Option<&str>,
    ) -> Result<(CxiClient, AbstractTopology, SaeReach), ControlError> {
        let mut unreachable = None;
        for client in self
            .peers
            .iter()
            .filter(|p| domain.is_none_or(|d| d == p.peer.domain))
        {
            match client.abstract_topology().await {
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
    pub(super) async fn route_interworking(
        &self,
        state: &State,
        session: &Session,
        reason: &str,
    ) -> Result<(Vec<SessionPath>, Interworking), ControlError> {
        let domain = session
            .interworking
            .as_ref()
            .map(|iw| iw.peer_domain.as_str());
        let (client, peer_topology, reach) = self.find_peer_of(&session.slave_sae, domain).await?;
        if state.topology.nodes.contains_key(&reach.node) {
            return Err(ControlError::NoRoute(format!(
                "{}'s node {} has the name of a node of this domain",
                client.peer.domain, reach.node
            )));
        }
        let mut candidates = Vec::new();
        for q in self.qx_links(&state.topology).into_iter().filter(|q| q.up) {
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
                match self.route(&state.topology, &session.src, &q.local, session.rate_bps) {
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
        for (_, q, paths) in candidates {
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
        Err(ControlError::NoRoute(format!(
            "the peer refused every gateway pair: {}",
            refusals.join("; ")
        )))
    }

    /// Asks the peer to undo transaction `transaction` (best effort, logged).
    pub(super) async fn abort_at_peer(&self, domain: &str, transaction: Uuid) {
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

    /// Creates an interworking session from `master` (an SAE of this domain) to `slave` (an
    /// SAE of a peer domain) and installs its agreed route.
    pub(super) async fn create_interworking_locked(
        &self,
        state: &mut State,
        master: &str,
        slave: &str,
        rate_bps: f64,
        by: &str,
    ) -> Result<Session, ControlError> {
        let src = state
            .topology
            .saes
            .get(master)
            .cloned()
            .ok_or_else(|| ControlError::UnknownSae(master.into()))?;
        let mut session = Session {
            id: Uuid::new_v4(),
            master_sae: master.into(),
            slave_sae: slave.into(),
            src,
            dst: String::new(),
            rate_bps,
            state: SessionState::Active,
            path: Vec::new(),
            links: Vec::new(),
            paths: Vec::new(),
            history: Vec::new(),
            interworking: None,
        };
        let (paths, iw) = self
            .route_interworking(state, &session, &format!("new session ({by})"))
            .await?;
        session.dst = iw.peer_km.clone();
        session.path = paths[0].nodes.clone();
        session.links = paths[0].links.clone();
        session.history.push(SessionEvent {
            time: now_rfc3339(),
            what: format!(
                "created by {by} with route {} (agreed with {} in transaction {})",
                session.path.join(" -> "),
                iw.peer_domain,
                iw.transaction
            ),
        });
        session.paths = paths;
        let (domain, transaction) = (iw.peer_domain.clone(), iw.transaction);
        session.interworking = Some(iw);
        if let Err(error) = self.install_new(state, &session).await {
            self.abort_at_peer(&domain, transaction).await;
            return Err(error);
        }
        self.event_in(
            "session-created",
            format!(
                "{master} -> {slave} ({domain}) via {}",
                session.path.join(" -> ")
            ),
            Some(session.id),
            None,
            Some(transaction),
        );
        Ok(session)
    }

    /// Procedure 1, asked by a KM: the active interworking session of `master` and `slave`,
    /// created (route agreed and installed) when there is none.
    pub async fn interworking_route(
        &self,
        km: &str,
        master: &str,
        slave: &str,
    ) -> Result<Session, ControlError> {
        let mut state = self.state.lock().await;
        if state.topology.saes.get(master).map(String::as_str) != Some(km) {
            return Err(ControlError::Invalid(format!(
                "SAE {master} is not served by KM {km}"
            )));
        }
        if let Some(session) = state
            .sessions
            .values()
            .find(|s| s.master_sae == master && s.slave_sae == slave)
        {
            // one session per pair: an unroutable one is retried by the controller itself
            return match session.state {
                SessionState::Active => Ok(session.clone()),
                SessionState::Unroutable => Err(ControlError::NoRoute(format!(
                    "session {} waits for a route",
                    session.id
                ))),
            };
        }
        if self.peers.is_empty() || state.topology.saes.contains_key(slave) {
            return Err(ControlError::UnknownSae(slave.into()));
        }
        let rate = self
            .config
            .interworking
            .as_ref()
            .map_or(0.0, |iw| iw.default_rate_bps);
        self.create_interworking_locked(&mut state, master, slave, rate, &format!("KM {km}"))
            .await
    }

    /// Tells the peer that a session ended here.
    pub(super) async fn end_interworking(&self, session: &Session) {
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
    pub(super) fn report_segment_fault(&self, segment: &Session, trigger: &str) {
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
        let Some(client) = self.peer(&iw.peer_domain).cloned() else {
            return;
        };
        let report = StatusReport {
            version: CXI_VERSION,
            domain: self.config.domain.clone(),
            kind: StatusKind::SegmentFault,
            sessions: vec![segment.id],
            detail: trigger.to_owned(),
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

    /// Cxi phase 1 at the receiving domain: compute and hold the segment, and vote.
    pub async fn cxi_prepare(&self, from: &str, request: PrepareRequest) -> Vote {
        let Ok(mut state) = tokio::time::timeout(PEER_LOCK_WAIT, self.state.lock()).await else {
            return Vote {
                version: CXI_VERSION,
                transaction: request.transaction,
                vote: VoteKind::Refused,
                reason: Some("busy: try again".into()),
                segment_hops: None,
            };
        };
        let now = Instant::now();
        state
            .interworking
            .prepared
            .retain(|_, (_, at)| now.duration_since(*at) < PREPARED_FOR);
        let vote = |vote, reason: Option<String>, hops| Vote {
            version: CXI_VERSION,
            transaction: request.transaction,
            vote,
            reason,
            segment_hops: hops,
        };
        let refuse = |reason: String| {
            self.event_in(
                "interworking-refused",
                format!(
                    "{from} proposed entry at {}: {reason}",
                    request.entry_gateway
                ),
                Some(request.session),
                None,
                Some(request.transaction),
            );
            vote(VoteKind::Refused, Some(reason), None)
        };
        if request.origin_domain != from {
            return refuse(format!("the proposal is not {from}'s"));
        }
        // the peer's names must not shadow this domain's: its SAE and KM would take the
        // place of ours on our KMs
        if state.topology.saes.contains_key(&request.master_sae) {
            return refuse(format!(
                "SAE {} is an SAE of this domain",
                request.master_sae
            ));
        }
        if state.topology.nodes.contains_key(&request.origin_km) {
            return refuse(format!("{} is a node of this domain", request.origin_km));
        }
        if state.sessions.get(&request.session).is_some_and(|s| {
            !s.interworking
                .as_ref()
                .is_some_and(|iw| iw.role == InterworkingRole::Segment && iw.peer_domain == from)
        }) {
            return refuse(format!(
                "session {} is not a segment of {from}'s",
                request.session
            ));
        }
        let qx = self.qx_links(&state.topology);
        let Some(link) = qx
            .iter()
            .find(|q| q.id == request.qx_link && q.local == request.entry_gateway)
        else {
            return refuse(format!(
                "{} is no Qx link of border node {}",
                request.qx_link, request.entry_gateway
            ));
        };
        if !link.up {
            return refuse(format!("Qx link {} is down here", link.id));
        }
        let Some(dst) = state.topology.saes.get(&request.slave_sae).cloned() else {
            return refuse(format!("unknown SAE {}", request.slave_sae));
        };
        let paths = if dst == request.entry_gateway {
            vec![SessionPath {
                nodes: vec![dst.clone()],
                links: Vec::new(),
                share_bps: request.rate_bps,
            }]
        } else {
            match self.route(
                &state.topology,
                &request.entry_gateway,
                &dst,
                request.rate_bps,
            ) {
                Ok(paths) => paths,
                Err(error) => return refuse(error.to_string()),
            }
        };
        let hops = paths[0].links.len() as u32;
        let segment = Session {
            id: request.session,
            master_sae: request.master_sae.clone(),
            slave_sae: request.slave_sae.clone(),
            src: request.entry_gateway.clone(),
            dst,
            rate_bps: request.rate_bps,
            state: SessionState::Active,
            path: paths[0].nodes.clone(),
            links: paths[0].links.clone(),
            paths,
            history: vec![SessionEvent {
                time: now_rfc3339(),
                what: format!(
                    "segment prepared for {from} ({}) in transaction {}",
                    request.reason, request.transaction
                ),
            }],
            interworking: Some(Interworking {
                peer_domain: from.to_owned(),
                role: InterworkingRole::Segment,
                transaction: request.transaction,
                local_gateway: request.entry_gateway.clone(),
                peer_gateway: request.peer_gateway.clone(),
                qx_link: request.qx_link.clone(),
                peer_km: request.origin_km.clone(),
            }),
        };
        self.event_in(
            "interworking-prepare",
            format!(
                "{from} proposed entry at {} over {} ({}): prepared {}",
                request.entry_gateway,
                request.qx_link,
                request.reason,
                segment.path.join(" -> ")
            ),
            Some(request.session),
            None,
            Some(request.transaction),
        );
        state
            .interworking
            .prepared
            .insert(request.transaction, (segment, now));
        vote(VoteKind::Prepared, None, Some(hops))
    }

    /// Cxi phase 2 at the receiving domain: install the prepared segment.
    pub async fn cxi_commit(&self, from: &str, transaction: Uuid) -> TransactionResult {
        let result = |outcome, reason: Option<String>| TransactionResult {
            version: CXI_VERSION,
            transaction,
            outcome,
            reason,
        };
        let Ok(mut state) = tokio::time::timeout(PEER_LOCK_WAIT, self.state.lock()).await else {
            // the prepared segment expires by itself
            return result(Outcome::Aborted, Some("busy: try again".into()));
        };
        let theirs = |s: &Session| {
            s.interworking
                .as_ref()
                .is_some_and(|iw| iw.peer_domain == from)
        };
        if !state
            .interworking
            .prepared
            .get(&transaction)
            .is_some_and(|(s, _)| theirs(s))
        {
            return result(
                Outcome::Aborted,
                Some("unknown or expired transaction".into()),
            );
        }
        let Some((mut segment, _)) = state.interworking.prepared.remove(&transaction) else {
            return result(
                Outcome::Aborted,
                Some("unknown or expired transaction".into()),
            );
        };
        let previous = state.sessions.get(&segment.id).cloned();
        if let Some(previous) = &previous {
            let mut history = previous.history.clone();
            history.append(&mut segment.history);
            segment.history = history;
        }
        state.put(segment.clone());
        if let Err(error) = self.reconcile(&mut state).await {
            restore(&mut state, segment.id, previous);
            if let Err(again) = self.reconcile(&mut state).await {
                tracing::warn!(%again, "restoring the previous segment failed; retried later");
            }
            self.event_in(
                "interworking-abort",
                format!("segment install failed: {error}"),
                Some(segment.id),
                None,
                Some(transaction),
            );
            return result(Outcome::Aborted, Some(error.to_string()));
        }
        if let Err(error) = self.store.save(&segment) {
            tracing::error!(%error, "cannot save the segment");
        }
        state.interworking.notified.remove(&segment.id);
        state
            .interworking
            .committed_at
            .insert(segment.id, Instant::now());
        state.interworking.committed.insert(transaction, previous);
        state.interworking.committed_order.push_back(transaction);
        while state.interworking.committed_order.len() > UNDOABLE {
            if let Some(old) = state.interworking.committed_order.pop_front() {
                state.interworking.committed.remove(&old);
            }
        }
        self.event_in(
            "interworking-commit",
            format!("segment installed: {}", segment.path.join(" -> ")),
            Some(segment.id),
            None,
            Some(transaction),
        );
        result(Outcome::Committed, None)
    }

    /// Drops a prepared segment, or undoes a committed one.
    pub async fn cxi_abort(&self, from: &str, transaction: Uuid) -> TransactionResult {
        let mut state = self.state.lock().await;
        let theirs = |s: &Session| {
            s.interworking
                .as_ref()
                .is_some_and(|iw| iw.peer_domain == from && iw.role == InterworkingRole::Segment)
        };
        let owned = match state.interworking.prepared.get(&transaction) {
            Some((segment, _)) => theirs(segment),
            None => state.sessions.values().any(|s| {
                theirs(s)
                    && s.interworking
                        .as_ref()
                        .is_some_and(|iw| iw.transaction == transaction)
            }),
        };
        if !owned {
            return TransactionResult {
                version: CXI_VERSION,
                transaction,
                outcome: Outcome::Aborted,
                reason: Some("no such transaction of yours".into()),
            };
        }
        let detail = if let Some((segment, _)) = state.interworking.prepared.remove(&transaction) {
            Some((segment.id, "prepared segment dropped".to_owned()))
        } else if let Some(previous) = state.interworking.committed.remove(&transaction) {
            let id = state
                .sessions
                .values()
                .find(|s| {
                    s.interworking
                        .as_ref()
                        .is_some_and(|iw| iw.transaction == transaction)
                })
                .map(|s| s.id);
            match id {
                Some(id) => {
                    restore(&mut state, id, previous.clone());
                    match &previous {
                        Some(p) => {
                            let _ = self.store.save(p);
                        }
                        None => {
                            let _ = self.store.delete(id);
                        }
                    }
                    if let Err(error) = self.reconcile(&mut state).await {
                        tracing::warn!(%error, "undoing a segment failed; retried later");
                    }
                    Some((id, "committed segment undone".to_owned()))
                }
                None => None,
            }
        } else {
            None
        };
        if let Some((session, what)) = detail {
            self.event_in(
                "interworking-abort",
                what,
                Some(session),
                None,
                Some(transaction),
            );
        }
        TransactionResult {
            version: CXI_VERSION,
            transaction,
            outcome: Outcome::Aborted,
            reason: None,
        }
    }

    /// The coordinating domain ended a session: remove its segment here.
    pub async fn cxi_delete_session(&self, from: &str, id: Uuid) -> bool {
        let mut state = self.state.lock().await;
        let ours = state.sessions.get(&id).is_some_and(|s| {
            s.interworking
                .as_ref()
                .is_some_and(|iw| iw.role == InterworkingRole::Segment && iw.peer_domain == from)
        });
        if !ours {
            return false;
        }
        state.take(id);
        let _ = self.store.delete(id);
        if let Err(error) = self.reconcile(&mut state).await {
            tracing::warn!(%error, "removing a segment's routes failed; retried later");
        }
        self.event(
            "session-deleted",
            format!("segment removed at {from}'s request"),
            Some(id),
            None,
        );
        true
    }

    /// Status shared by peer `from`: a segment fault makes the sessions rerouted (agreed
    /// with the peer); a border change is checked against this domain's own view.
    pub async fn cxi_status(self: &Arc<Self>, from: &str, report: StatusReport) {
        if report.kind != StatusKind::Sessions {
            self.event(
                "peer-status",
                format!("{from}: {:?} {}", report.kind, report.detail),
                report.sessions.first().copied(),
                None,
            );
        }
        let received = Instant::now();
        let controller = self.clone();
        let from = from.to_owned();
        tokio::spawn(async move {
            let mut state = controller.state.lock().await;
            if report.kind == StatusKind::Sessions {
                controller
                    .drop_left_over_segments(&mut state, &from, &report.sessions)
                    .await;
                return;
            }
            if report.kind == StatusKind::SegmentFault {
                for id in &report.sessions {
                    let origin = state.sessions.get(id).is_some_and(|s| {
                        s.interworking.as_ref().is_some_and(|iw| {
                            iw.role == InterworkingRole::Origin && iw.peer_domain == from
                        })
                    });
                    if origin {
                        state.interworking.suspect.insert(*id);
                    }
                }
            }
            controller
                .reroute_locked(&mut state, &format!("{from} reported a fault"), received)
                .await;
        });
    }

    /// Removes the segments of `from`'s sessions that its complete list `live` does not name
    /// (and that were not committed moments ago).
    async fn drop_left_over_segments(&self, state: &mut State, from: &str, live: &[Uuid]) {
        let stale: Vec<Uuid> = state
            .sessions
            .values()
            .filter(|s| {
                s.interworking.as_ref().is_some_and(|iw| {
                    iw.role == InterworkingRole::Segment && iw.peer_domain == from
                })
            })
            .filter(|s| !live.contains(&s.id))
            .filter(|s| {
                state
                    .interworking
                    .committed_at
                    .get(&s.id)
                    .is_none_or(|at| at.elapsed() > LIST_GRACE)
            })
            .map(|s| s.id)
            .collect();
        if stale.is_empty() {
            return;
        }
        for id in &stale {
            state.take(*id);
            let _ = self.store.delete(*id);
            self.event(
                "session-deleted",
                format!("left-over segment removed: {from} has no such session"),
                Some(*id),
                None,
            );
        }
        if let Err(error) = self.reconcile(state).await {
            tracing::warn!(%error, "removing left-over segments failed; retried later");
        }
    }

    /// Sends every peer the complete list of this domain's interworking sessions with it, so
    /// that it drops left-over segments (called now and then, without the state lock).
    pub(super) async fn share_session_lists(&self) {
        let lists: Vec<(CxiClient, Vec<Uuid>)> = {
            let state = self.state.lock().await;
            self.peers
                .iter()
                .map(|peer| {
                    let ids = state
                        .sessions
                        .values()
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
            };
            if let Err(error) = client.status(&report).await {
                tracing::debug!(%error, "session list not delivered; sent again later");
            }
        }
    }

    /// QCLM's diagnosis of an interworking relay failure (procedure 3): the sessions toward
    /// `destination` are re-agreed (origin) or reported to the coordinator (segment).
    pub async fn diagnosis(self: &Arc<Self>, destination: Option<&str>, detail: &str) -> String {
        let received = Instant::now();
        self.refresh().await;
        let mut state = self.state.lock().await;
        let mut origins = Vec::new();
        let mut segments = Vec::new();
        for session in state.sessions.values() {
            let Some(iw) = &session.interworking else {
                continue;
            };
            let concerned = destination.is_none_or(|d| d == session.dst || d == iw.peer_km);
            if !concerned {
                continue;
            }
            match iw.role {
                InterworkingRole::Origin => origins.push(session.id),
                InterworkingRole::Segment => segments.push(session.clone()),
            }
        }
        let origins_count = origins.len();
        state.interworking.suspect.extend(origins);
        for segment in &segments {
            self.report_segment_fault(segment, &format!("QCLM diagnosis: {detail}"));
        }
        let decision = format!(
            "re-agree the route of {origins_count} session(s); reported {} segment(s) to their coordinator",
            segments.len()
        );
        self.event("qclm-decision", format!("{detail}: {decision}"), None, None);
        self.reroute_locked(&mut state, "QCLM diagnosis", received)
            .await;
        decision
    }
}

/// Puts back the segment a transaction replaced (or removes the new one).
fn restore(state: &mut State, id: Uuid, previous: Option<Session>) {
    match previous {
        Some(previous) => state.put(previous),
        None => {
            state.take(id);
        }
    }
}
