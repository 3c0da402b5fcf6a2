//! The receiving domain's part of interworking (Y.3818 9.1, 9.2): segments of a peer's
//! sessions, prepared and committed in the peer's two-phase transactions, undone on abort,
//! removed when the peer ends the session or no longer names it; faults the peer reports and
//! the QCLM's diagnoses. Every handler runs in the instance and answers without waiting on
//! the network: a peer's request is never refused as "busy".

use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use uuid::Uuid;

use crate::control::cxi::{
    aborted, refusal, Outcome, PrepareRequest, StatusKind, StatusReport, TransactionResult, Vote,
    VoteKind, CXI_VERSION,
};
use crate::control::error::ControlError;
use crate::control::instance::Instance;
use crate::control::messages::{Job, Then};
use crate::control::sessions::{
    Interworking, InterworkingRole, Session, SessionEvent, SessionPath, SessionState,
};
use crate::control::state::State;
use crate::netconf::server::now_rfc3339;

/// How long a committed segment is safe from a session list that does not name it yet.
const LIST_GRACE: Duration = Duration::from_secs(60);
/// How long a prepared segment waits for its commit.
const PREPARED_FOR: Duration = Duration::from_secs(30);
/// How many committed transactions can still be undone by an abort.
const UNDOABLE: usize = 256;

/// Whether `s` is a segment of `from`'s session.
fn segment_of(s: &Session, from: &str) -> bool {
    s.interworking
        .as_ref()
        .is_some_and(|iw| iw.peer_domain == from && iw.role == InterworkingRole::Segment)
}

impl Instance {
    /// Cxi phase 1 at the receiving domain: compute and hold the segment, and vote.
    pub(in crate::control) fn peer_prepare(&mut self, from: &str, request: PrepareRequest) -> Vote {
        let now = Instant::now();
        self.state
            .interworking
            .prepared
            .retain(|_, (_, at)| now.duration_since(*at) < PREPARED_FOR);
        let refuse = |reason: String| {
            self.c.event_in(
                "interworking-refused",
                format!(
                    "{from} proposed entry at {}: {reason}",
                    request.entry_gateway
                ),
                Some(request.session),
                None,
                Some(request.transaction),
            );
            refusal(request.transaction, reason)
        };
        let topology = &self.state.topology;
        if request.origin_domain != from {
            return refuse(format!("the proposal is not {from}'s"));
        }
        // the peer's names must not shadow this domain's: its SAE and KM would take the
        // place of ours on our KMs
        if topology.saes.contains_key(&request.master_sae) {
            return refuse(format!(
                "SAE {} is an SAE of this domain",
                request.master_sae
            ));
        }
        if topology.nodes.contains_key(&request.origin_km) {
            return refuse(format!("{} is a node of this domain", request.origin_km));
        }
        if self
            .state
            .sessions
            .get(&request.session)
            .is_some_and(|s| !segment_of(s, from))
        {
            return refuse(format!(
                "session {} is not a segment of {from}'s",
                request.session
            ));
        }
        let qx = self.c.qx_links(topology);
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
        if topology
            .nodes
            .get(&request.entry_gateway)
            .is_some_and(|n| !n.reachable)
        {
            return refuse(format!(
                "border node {} does not answer",
                request.entry_gateway
            ));
        }
        let Some(dst) = topology.saes.get(&request.slave_sae).cloned() else {
            return refuse(format!("unknown SAE {}", request.slave_sae));
        };
        let paths = if dst == request.entry_gateway {
            vec![SessionPath {
                nodes: vec![dst.clone()],
                links: Vec::new(),
                share_bps: request.rate_bps,
            }]
        } else {
            match self
                .c
                .route(topology, &request.entry_gateway, &dst, request.rate_bps)
            {
                Ok(paths) => paths,
                Err(error) => return refuse(error.to_string()),
            }
        };
        // QoS: the class must be one the peer's agreement exposes, and fit on our links
        let exposed = self
            .c
            .interworking_settings()
            .peers
            .into_iter()
            .find(|(p, _)| p.domain == from)
            .map(|(_, policy)| policy.qos_classes)
            .unwrap_or_default();
        let class = match crate::control::admission::peer_class(
            &self.c.admission.policy(),
            &exposed,
            from,
            request.qos_class.as_deref(),
            &request.master_sae,
            &request.slave_sae,
        ) {
            Ok(class) => class,
            Err(refusal) => return refuse(refusal.to_string()),
        };
        if let Some(class) = &class {
            let links = crate::control::admission::links_of(&paths);
            if let Err(refusal) = self
                .c
                .admission
                .admit(request.session, class, links, topology)
            {
                return refuse(refusal.to_string());
            }
        }
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
            on_demand: false,
        };
        self.c.event_in(
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
        self.state
            .interworking
            .prepared
            .insert(request.transaction, (segment, now));
        Vote {
            version: CXI_VERSION,
            transaction: request.transaction,
            vote: VoteKind::Prepared,
            reason: None,
            segment_hops: Some(hops),
        }
    }

    /// Cxi phase 2 at the receiving domain: put the prepared segment in place for install.
    pub(in crate::control) fn start_peer_commit(
        &mut self,
        from: &str,
        transaction: Uuid,
        reply: oneshot::Sender<TransactionResult>,
    ) -> Option<Then> {
        let prepared = &mut self.state.interworking.prepared;
        if !prepared
            .get(&transaction)
            .is_some_and(|(s, _)| segment_of(s, from))
        {
            let _ = reply.send(aborted(
                transaction,
                Some("unknown or expired transaction".into()),
            ));
            return None;
        }
        let (mut segment, _) = prepared.remove(&transaction).expect("checked");
        let previous = self.state.sessions.get(&segment.id).cloned();
        if let Some(previous) = &previous {
            let mut history = previous.history.clone();
            history.append(&mut segment.history);
            segment.history = history;
        }
        self.show_as(segment.id, previous.clone());
        self.state.put(segment.clone());
        // a session list the peer sent before this commit must not drop the segment while
        // it is being installed
        let iw = &mut self.state.interworking;
        iw.committed_at.insert(segment.id, Instant::now());
        iw.committing.insert(transaction, None);
        Some(Then::PeerCommitted {
            transaction,
            segment,
            previous,
            reply,
        })
    }

    /// The segment is installed (committed), or put back as it was (aborted).
    pub(in crate::control) fn finish_peer_commit(
        &mut self,
        transaction: Uuid,
        segment: Session,
        previous: Option<Session>,
        installed: Result<(), ControlError>,
    ) -> TransactionResult {
        // an abort that came while the commit was installed undoes it now
        if let Some(Some((from, reply))) = self.state.interworking.committing.remove(&transaction) {
            self.push(Job::PeerAbort {
                from,
                transaction,
                reply,
            });
        }
        if let Err(error) = installed {
            restore(&mut self.state, segment.id, previous);
            // all or none: the KMs still hold what they held
            self.c.event_in(
                "interworking-abort",
                format!("segment install failed: {error}"),
                Some(segment.id),
                None,
                Some(transaction),
            );
            return aborted(transaction, Some(error.to_string()));
        }
        if let Err(error) = self.c.store.save(&segment) {
            tracing::error!(%error, "cannot save the segment");
        }
        let iw = &mut self.state.interworking;
        iw.notified.remove(&segment.id);
        iw.committed_at.insert(segment.id, Instant::now());
        iw.committed.insert(transaction, previous);
        iw.committed_order.push_back(transaction);
        while iw.committed_order.len() > UNDOABLE {
            if let Some(old) = iw.committed_order.pop_front() {
                iw.committed.remove(&old);
            }
        }
        self.c.event_in(
            "interworking-commit",
            format!("segment installed: {}", segment.path.join(" -> ")),
            Some(segment.id),
            None,
            Some(transaction),
        );
        TransactionResult {
            version: CXI_VERSION,
            transaction,
            outcome: Outcome::Committed,
            reason: None,
        }
    }

    /// Drops a prepared segment, or undoes a committed one.
    pub(in crate::control) fn start_peer_abort(
        &mut self,
        from: &str,
        transaction: Uuid,
        reply: oneshot::Sender<TransactionResult>,
    ) -> Option<Then> {
        let of_transaction = |s: &Session| {
            s.interworking
                .as_ref()
                .is_some_and(|iw| iw.transaction == transaction)
        };
        let state = &mut self.state;
        let owned = match state.interworking.prepared.get(&transaction) {
            Some((segment, _)) => segment_of(segment, from),
            None => state
                .sessions
                .values()
                .any(|s| segment_of(s, from) && of_transaction(s)),
        };
        if !owned {
            let _ = reply.send(aborted(
                transaction,
                Some("no such transaction of yours".into()),
            ));
            return None;
        }
        if let Some(pending) = state.interworking.committing.get_mut(&transaction) {
            // its commit is being installed: undone once it is
            *pending = Some((from.to_owned(), reply));
            return None;
        }
        if let Some((segment, _)) = state.interworking.prepared.remove(&transaction) {
            if !state.sessions.contains_key(&segment.id) {
                self.c.admission.release(segment.id);
            }
            self.c.event_in(
                "interworking-abort",
                "prepared segment dropped".into(),
                Some(segment.id),
                None,
                Some(transaction),
            );
            let _ = reply.send(aborted(transaction, None));
            return None;
        }
        let undone = state
            .interworking
            .committed
            .remove(&transaction)
            .and_then(|previous| {
                let id = state.sessions.values().find(|s| of_transaction(s))?.id;
                Some((id, previous))
            });
        let Some((id, previous)) = undone else {
            let _ = reply.send(aborted(transaction, None));
            return None;
        };
        restore(state, id, previous.clone());
        let stored = match &previous {
            Some(p) => self.c.store.save(p),
            None => self.c.store.delete(id),
        };
        if let Err(error) = stored {
            tracing::error!(%error, "cannot store the undone segment");
        }
        self.c.event_in(
            "interworking-abort",
            "committed segment undone".into(),
            Some(id),
            None,
            Some(transaction),
        );
        Some(Then::PeerAborted { transaction, reply })
    }

    /// The coordinating domain ended a session: removes its segment here.
    pub(in crate::control) fn remove_segment(&mut self, from: &str, id: Uuid) -> bool {
        if !self
            .state
            .sessions
            .get(&id)
            .is_some_and(|s| segment_of(s, from))
        {
            return false;
        }
        self.state.take(id);
        let _ = self.c.store.delete(id);
        self.c.event(
            "session-deleted",
            format!("segment removed at {from}'s request"),
            Some(id),
            None,
        );
        true
    }

    /// Status shared by peer `from`: a segment fault makes the sessions rerouted (agreed
    /// with the peer); a session list drops left-over segments.
    pub(in crate::control) fn peer_status(
        &mut self,
        from: String,
        report: StatusReport,
        at: Instant,
    ) {
        if report.kind == StatusKind::Sessions {
            self.push(Job::DropLeftOver {
                from,
                live: report.sessions,
            });
            return;
        }
        self.c.event(
            "peer-status",
            format!("{from}: {:?} {}", report.kind, report.detail),
            report.sessions.first().copied(),
            None,
        );
        if report.kind == StatusKind::SegmentFault {
            for id in &report.sessions {
                let origin = self.state.sessions.get(id).is_some_and(|s| {
                    s.interworking.as_ref().is_some_and(|iw| {
                        iw.role == InterworkingRole::Origin && iw.peer_domain == from
                    })
                });
                if origin {
                    self.state.interworking.suspect.insert(*id);
                }
            }
        }
        self.reroute(format!("{from} reported a fault"), at);
    }

    /// Removes the segments of `from`'s sessions that its complete list `live` does not name
    /// (and that were not committed moments ago).
    pub(in crate::control) fn drop_left_over_segments(
        &mut self,
        from: &str,
        live: &[Uuid],
    ) -> Option<Then> {
        let stale: Vec<Uuid> = self
            .state
            .sessions
            .values()
            .filter(|s| segment_of(s, from) && !live.contains(&s.id))
            .filter(|s| {
                self.state
                    .interworking
                    .committed_at
                    .get(&s.id)
                    .is_none_or(|at| at.elapsed() > LIST_GRACE)
            })
            .map(|s| s.id)
            .collect();
        if stale.is_empty() {
            return None;
        }
        for id in stale {
            self.state.take(id);
            let _ = self.c.store.delete(id);
            self.c.event(
                "session-deleted",
                format!("left-over segment removed: {from} has no such session"),
                Some(id),
                None,
            );
        }
        Some(Then::Nothing)
    }

    /// QCLM's diagnosis of an interworking relay failure (procedure 3): the sessions toward
    /// `destination` are re-agreed (origin) or reported to the coordinator (segment).
    pub(in crate::control) fn diagnosis(
        &mut self,
        destination: Option<&str>,
        detail: &str,
        at: Instant,
    ) -> String {
        let mut origins = Vec::new();
        let mut segments = Vec::new();
        for session in self.state.sessions.values() {
            let Some(iw) = &session.interworking else {
                continue;
            };
            if !destination.is_none_or(|d| d == session.dst || d == iw.peer_km) {
                continue;
            }
            match iw.role {
                InterworkingRole::Origin => origins.push(session.id),
                InterworkingRole::Segment => segments.push(session.clone()),
            }
        }
        let origins_count = origins.len();
        self.state.interworking.suspect.extend(origins);
        for segment in &segments {
            self.c
                .report_segment_fault(segment, &format!("QCLM diagnosis: {detail}"));
        }
        let decision = format!(
            "re-agree the route of {origins_count} session(s); reported {} segment(s) to their coordinator",
            segments.len()
        );
        self.c
            .event("qclm-decision", format!("{detail}: {decision}"), None, None);
        self.reroute("QCLM diagnosis".into(), at);
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
