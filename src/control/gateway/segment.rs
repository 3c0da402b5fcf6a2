//! The speaker as the receiving domain of the peer's sessions: the Cxi endpoint. A prepare
//! is checked against the link-state database (the entry gateway's Qx link up, the slave SAE
//! served in the domain and reachable from the entry gateway) and held; the commit places
//! the crossing on the entry gateway node, which advertises the master SAE into the domain.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use uuid::Uuid;

use super::{Entry, Gateway, GatewaySession, Prepared, Role};
use crate::control::cxi::server::CxiEndpoint;
use crate::control::cxi::{
    aborted, refusal, AbstractTopology, Outcome, PrepareRequest, StatusKind, StatusReport,
    TransactionResult, Vote, VoteKind, CXI_VERSION,
};
use crate::tls::foreign_identity;

/// How long a prepared segment waits for its commit.
const PREPARED_FOR: Duration = Duration::from_secs(30);
/// How many committed transactions an abort can still undo.
const UNDOABLE: usize = 256;

impl Gateway {
    /// Checks a prepare against the link-state database, then admits its session's QoS
    /// class on the domain's links from the entry gateway to the slave's node.
    fn check_prepare(&self, from: &str, r: &PrepareRequest) -> Result<(Entry, u32), String> {
        let agent = self.agent().ok_or("stopping")?;
        let control = agent.local_control().ok_or("no link state")?;
        let gateways = control.gateways_to(from);
        let qx_up = gateways
            .iter()
            .filter(|(g, _)| g == &r.entry_gateway)
            .flat_map(|(_, qx)| qx)
            .any(|q| q.id == r.qx_link && q.peer_node == r.peer_gateway && q.up);
        if !qx_up {
            return Err(format!(
                "{} has no up Qx link {} to {}",
                r.entry_gateway, r.qx_link, r.peer_gateway
            ));
        }
        let node = control
            .saes()
            .get(&r.slave_sae)
            .cloned()
            .filter(|_| !control.foreign().contains_key(&r.slave_sae))
            .ok_or_else(|| format!("unknown SAE {}", r.slave_sae))?;
        let hops = crate::control::link_state::routes::hops_between(
            &control.network(),
            &r.entry_gateway,
            &node,
        )
        .ok_or_else(|| format!("no route from {} to {node}", r.entry_gateway))?;
        let exposed = self
            .speaker
            .as_ref()
            .and_then(|s| s.config.qos_exposed.get(from).cloned())
            .unwrap_or_default();
        let policy = agent.qos.policy();
        let class = crate::control::admission::peer_class(
            &policy,
            &exposed,
            from,
            r.qos_class.as_deref(),
            &r.master_sae,
            &r.slave_sae,
        )
        .map_err(|refusal| refusal.to_string())?;
        if let Some(class) = class {
            self.admit_between(r.session, &class, &r.entry_gateway, &node)?;
        }
        Ok((
            Entry {
                sae: r.master_sae.clone(),
                node: r.origin_km.clone(),
                domain: from.to_owned(),
                across: r.peer_gateway.clone(),
                link: r.qx_link.clone(),
                outbound: false,
            },
            hops,
        ))
    }

    async fn commit_segment(self: Arc<Self>, from: String, id: Uuid) -> TransactionResult {
        let Some(speaker) = self.speaker.as_ref() else {
            return aborted(id, Some("not the domain's speaker".into()));
        };
        let prepared = {
            let mut state = speaker.state();
            match state.prepared.remove(&id) {
                Some(p) if p.from == from && p.at.elapsed() < PREPARED_FOR => p,
                Some(_) | None => {
                    return aborted(id, Some("no such prepared transaction".into()));
                }
            }
        };
        let span = tracing::info_span!("relay", step = "interworking-commit", transaction = %id, session = %prepared.session);
        let _e = span.enter();
        if let Err(error) = self
            .install(&prepared.gateway, prepared.session, Some(&prepared.entry))
            .await
        {
            tracing::warn!(%error, "segment not installed");
            return aborted(id, Some(error.to_string()));
        }
        let previous = speaker.state().sessions.get(&prepared.session).cloned();
        if let Some(old) = previous.filter(|old| old.gateway != prepared.gateway) {
            // the session moved to another gateway node: its old crossing goes
            if let Err(error) = self.install(&old.gateway, old.id, None).await {
                tracing::warn!(%error, "old crossing not removed");
            }
        }
        let mut state = speaker.state();
        state.sessions.insert(
            prepared.session,
            GatewaySession {
                id: prepared.session,
                role: Role::Segment,
                peer_domain: from,
                master_sae: prepared.master_sae,
                slave_sae: prepared.slave_sae,
                gateway: prepared.gateway,
                entry: prepared.entry,
                transaction: id,
            },
        );
        state.committed.insert(id, prepared.session);
        while state.committed.len() > UNDOABLE {
            state.committed.pop_first();
        }
        tracing::info!("segment committed");
        TransactionResult {
            version: CXI_VERSION,
            transaction: id,
            outcome: Outcome::Committed,
            reason: None,
        }
    }

    async fn abort_segment(self: Arc<Self>, from: String, id: Uuid) -> TransactionResult {
        let Some(speaker) = self.speaker.as_ref() else {
            return aborted(id, None);
        };
        let undo = {
            let mut state = speaker.state();
            if let Some(p) = state.prepared.get(&id).filter(|p| p.from == from) {
                if !state.sessions.contains_key(&p.session) {
                    self.release(p.session);
                }
            }
            state.prepared.retain(|t, p| !(t == &id && p.from == from));
            match state.committed.remove(&id) {
                Some(session)
                    if state
                        .sessions
                        .get(&session)
                        .is_some_and(|s| s.transaction == id && s.peer_domain == from) =>
                {
                    state.sessions.remove(&session)
                }
                _ => None,
            }
        };
        if let Some(session) = undo {
            self.release(session.id);
            if let Err(error) = self.install(&session.gateway, session.id, None).await {
                tracing::warn!(%error, "committed segment not undone");
            }
        }
        aborted(id, Some("aborted by the coordinator".into()))
    }

    async fn end_segment(self: Arc<Self>, from: String, id: Uuid) -> bool {
        let Some(speaker) = self.speaker.as_ref() else {
            return false;
        };
        let session = {
            let mut state = speaker.state();
            match state.sessions.get(&id) {
                Some(s) if s.peer_domain == from && s.role == Role::Segment => {
                    state.sessions.remove(&id)
                }
                _ => None,
            }
        };
        match session {
            Some(session) => {
                self.release(id);
                let _ = self.install(&session.gateway, id, None).await;
                true
            }
            None => false,
        }
    }
}

impl CxiEndpoint for Gateway {
    fn notary(&self) -> Result<Arc<crate::nonrepudiation::Notary>, crate::nonrepudiation::NrError> {
        let agent = self.agent.upgrade().ok_or_else(|| {
            crate::nonrepudiation::NrError::Key("the KM agent has stopped".into())
        })?;
        crate::nonrepudiation::for_tls(&agent.config.tls)
    }

    fn audit(&self) -> crate::audit::AuditLog {
        self.agent
            .upgrade()
            .map(|agent| agent.audit.clone())
            .unwrap_or_default()
    }

    fn peer_domain(&self, identity: &str) -> Option<String> {
        self.speaker.as_ref()?.peers.iter().find_map(|p| {
            (foreign_identity(&p.peer.controller, &p.peer.domain) == identity)
                .then(|| p.peer.domain.clone())
        })
    }

    fn rejected(&self, detail: String) {
        tracing::warn!(%detail, "Cxi request refused");
    }

    fn abstract_topology(&self) -> AbstractTopology {
        let peer = self
            .speaker
            .as_ref()
            .and_then(|s| s.peers.first())
            .map(|p| p.peer.domain.clone())
            .unwrap_or_default();
        Gateway::abstract_topology(self, &peer)
    }

    fn prepare(self: Arc<Self>, from: String, request: PrepareRequest) -> BoxFuture<'static, Vote> {
        Box::pin(async move {
            let Some(speaker) = self.speaker.as_ref() else {
                return refusal(request.transaction, "not the domain's speaker".into());
            };
            match self.check_prepare(&from, &request) {
                Ok((entry, hops)) => {
                    let mut state = speaker.state();
                    // prepares never committed lapse, with what they held
                    let lapsed: Vec<Uuid> = state
                        .prepared
                        .values()
                        .filter(|p| p.at.elapsed() >= PREPARED_FOR)
                        .map(|p| p.session)
                        .filter(|s| !state.sessions.contains_key(s))
                        .collect();
                    for session in lapsed {
                        self.release(session);
                    }
                    state.prepared.retain(|_, p| p.at.elapsed() < PREPARED_FOR);
                    state.prepared.insert(
                        request.transaction,
                        Prepared {
                            from,
                            session: request.session,
                            master_sae: request.master_sae.clone(),
                            slave_sae: request.slave_sae.clone(),
                            gateway: request.entry_gateway.clone(),
                            entry,
                            at: Instant::now(),
                        },
                    );
                    Vote {
                        version: CXI_VERSION,
                        transaction: request.transaction,
                        vote: VoteKind::Prepared,
                        reason: None,
                        segment_hops: Some(hops),
                    }
                }
                Err(reason) => {
                    tracing::info!(%from, %reason, "interworking prepare refused");
                    refusal(request.transaction, reason)
                }
            }
        })
    }

    fn commit(self: Arc<Self>, from: String, id: Uuid) -> BoxFuture<'static, TransactionResult> {
        Box::pin(self.commit_segment(from, id))
    }

    fn abort(self: Arc<Self>, from: String, id: Uuid) -> BoxFuture<'static, TransactionResult> {
        Box::pin(self.abort_segment(from, id))
    }

    fn status(self: Arc<Self>, from: String, report: StatusReport) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            tracing::info!(%from, kind = ?report.kind, detail = %report.detail, "peer status");
            if report.kind == StatusKind::SegmentFault {
                // the peer's segment of sessions coordinated here failed: reroute them
                for id in report.sessions {
                    self.clone().reroute(id, "peer segment fault").await;
                }
            }
        })
    }

    fn delete_session(self: Arc<Self>, from: String, id: Uuid) -> BoxFuture<'static, bool> {
        Box::pin(self.end_segment(from, id))
    }
}
