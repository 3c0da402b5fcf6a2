//! The speaker as the coordinating domain: a node of the domain asks it for the route of
//! keys to another QKDN's SAE; it finds the peer that reaches the SAE, proposes a crossing
//! over one of the domain's up Qx links (nearest gateway node first) in a two-phase
//! transaction, and once the peer committed its segment places the crossing on that gateway
//! node. A Qx link going down moves the sessions crossing it the same way, both domains
//! agreeing; a peer that cannot be reached leaves nothing agreed on either side.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::{Entry, Gateway, GatewayError, GatewaySession, Role};
use crate::control::cxi::{
    CxiClient, Outcome, PrepareRequest, StatusKind, StatusReport, VoteKind, CXI_VERSION,
};

impl Gateway {
    /// The peer that reaches `sae` and its abstract topology.
    async fn peer_of(
        &self,
        sae: &str,
    ) -> Result<
        (
            CxiClient,
            crate::control::cxi::AbstractTopology,
            crate::control::cxi::SaeReach,
        ),
        GatewayError,
    > {
        let speaker = self.speaker.as_ref().ok_or_else(|| {
            GatewayError::NoRoute("this gateway node is not the domain's speaker".into())
        })?;
        let mut unreachable = None;
        for client in &speaker.peers {
            match client.abstract_topology().await {
                Ok(topology) => {
                    if let Some(reach) = topology.reachability.iter().find(|r| r.sae == sae) {
                        let reach = reach.clone();
                        return Ok((client.clone(), topology, reach));
                    }
                }
                Err(error) => unreachable = Some(error.to_string()),
            }
        }
        match unreachable {
            Some(reason) => Err(GatewayError::PeerUnreachable(reason)),
            None => Err(GatewayError::UnknownSae(sae.to_owned())),
        }
    }

    /// Agrees and places the route of keys from `master` (served by `origin_km` in this
    /// domain) to another QKDN's SAE `slave`.
    pub async fn request_route(
        self: &Arc<Self>,
        origin_km: &str,
        master: &str,
        slave: &str,
    ) -> Result<(), GatewayError> {
        let speaker = self.speaker.as_ref().ok_or_else(|| {
            GatewayError::NoRoute("this gateway node is not the domain's speaker".into())
        })?;
        let existing = speaker
            .state()
            .sessions
            .values()
            .find(|s| s.role == Role::Origin && s.master_sae == master && s.slave_sae == slave)
            .cloned();
        match existing {
            // agreed already: a node asks again when the crossing left its link state (the
            // border KM restarted and forgot it): placed again, the same
            Some(session) => {
                self.install(&session.gateway, session.id, Some(&session.entry))
                    .await
            }
            None => {
                self.agree(
                    Uuid::new_v4(),
                    origin_km,
                    master,
                    slave,
                    None,
                    "new session",
                )
                .await
            }
        }
    }

    /// One agreement for session `id`: candidates over the domain's up Qx links, except
    /// `avoid`; the first the peer votes for is committed and placed.
    async fn agree(
        self: &Arc<Self>,
        id: Uuid,
        origin_km: &str,
        master: &str,
        slave: &str,
        avoid: Option<&str>,
        reason: &str,
    ) -> Result<(), GatewayError> {
        let speaker = self.speaker.as_ref().expect("speaker");
        let agent = self
            .agent()
            .ok_or_else(|| GatewayError::NoRoute("stopping".into()))?;
        let control = agent
            .local_control()
            .cloned()
            .ok_or_else(|| GatewayError::NoRoute("no link state".into()))?;
        let (client, peer_topology, reach) = self.peer_of(slave).await?;
        let peer = client.peer.domain.clone();
        let _agreeing = speaker.agreeing.lock().await;
        let net = control.network();
        let mut candidates = Vec::new();
        for (gateway, qx) in control.gateways_to(&peer) {
            let Some(to_gateway) =
                crate::control::link_state::routes::hops_between(&net, origin_km, &gateway)
            else {
                continue;
            };
            for q in qx
                .into_iter()
                .filter(|q| q.up && Some(q.id.as_str()) != avoid)
            {
                let peer_up = peer_topology
                    .border_nodes
                    .iter()
                    .filter(|b| b.node == q.peer_node)
                    .flat_map(|b| &b.qx_links)
                    .any(|l| l.id == q.id && l.up);
                let Some(via) = reach.via.iter().find(|v| v.border_node == q.peer_node) else {
                    continue;
                };
                if peer_up {
                    candidates.push((to_gateway + via.hops.unwrap_or(0), gateway.clone(), q));
                }
            }
        }
        candidates.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.2.id.cmp(&b.2.id)));
        if candidates.is_empty() {
            return Err(GatewayError::NoRoute(format!(
                "no usable gateway pair toward {slave}"
            )));
        }
        let mut refusals = Vec::new();
        // QoS admission on this domain's links (the peer admits on its own); an agreement
        // that fails, however, leaves the session's reservation as it was
        let held = self.hold(id);
        let class = self.admission().and_then(|a| {
            a.class_of(master, slave, Some(&peer), |s| {
                control.saes().contains_key(s)
            })
        });
        for (_, gateway, q) in candidates {
            if let Some(class) = &class {
                if let Err(refusal) = self.admit_between(id, class, origin_km, &gateway) {
                    refusals.push(format!("not admitted via {}: {refusal}", q.id));
                    continue;
                }
            }
            let transaction = Uuid::new_v4();
            let span = tracing::info_span!("relay", step = "interworking-route", session = %id, %transaction, link = %q.id);
            let _e = span.enter();
            let request = PrepareRequest {
                version: CXI_VERSION,
                transaction,
                session: id,
                origin_domain: self.domain.clone(),
                master_sae: master.to_owned(),
                slave_sae: slave.to_owned(),
                origin_km: origin_km.to_owned(),
                peer_gateway: gateway.clone(),
                entry_gateway: q.peer_node.clone(),
                qx_link: q.id.clone(),
                rate_bps: speaker.config.default_rate_bps,
                reason: reason.to_owned(),
                qos_class: class.as_ref().map(|c| c.name.clone()),
            };
            let vote = client.prepare(&request).await?;
            if vote.vote == VoteKind::Refused {
                let why = vote.reason.unwrap_or_default();
                tracing::info!(%why, "peer refused the crossing");
                refusals.push(why);
                continue;
            }
            let result = match client.commit(transaction).await {
                Ok(result) => result,
                Err(error) => {
                    // no half-agreed route: the peer drops (or undoes) what it prepared
                    let _ = client.abort(transaction).await;
                    return Err(error.into());
                }
            };
            if result.outcome != Outcome::Committed {
                refusals.push(result.reason.unwrap_or_default());
                continue;
            }
            let entry = Entry {
                sae: slave.to_owned(),
                node: reach.node.clone(),
                domain: peer.clone(),
                across: q.peer_node.clone(),
                link: q.id.clone(),
                outbound: true,
            };
            if let Err(error) = self.install(&gateway, id, Some(&entry)).await {
                let _ = client.abort(transaction).await;
                return Err(error);
            }
            let previous = speaker.state().sessions.get(&id).cloned();
            if let Some(old) = previous.filter(|old| old.gateway != gateway) {
                let _ = self.install(&old.gateway, id, None).await;
            }
            speaker.state().sessions.insert(
                id,
                GatewaySession {
                    id,
                    role: Role::Origin,
                    peer_domain: peer.clone(),
                    master_sae: master.to_owned(),
                    slave_sae: slave.to_owned(),
                    gateway: gateway.clone(),
                    entry,
                    transaction,
                },
            );
            tracing::info!(%gateway, "interworking route agreed and placed");
            held.keep();
            return Ok(());
        }
        Err(GatewayError::NoRoute(format!(
            "{peer} refused every crossing: {}",
            refusals.join("; ")
        )))
    }

    /// Moves session `id` (coordinated here) off its current Qx link.
    pub async fn reroute(self: Arc<Self>, id: Uuid, reason: &str) {
        let Some(speaker) = self.speaker.as_ref() else {
            return;
        };
        let Some(session) = speaker.state().sessions.get(&id).cloned() else {
            return;
        };
        if session.role != Role::Origin {
            return;
        }
        let Some(origin_km) = self.agent().and_then(|a| {
            a.local_control()
                .and_then(|c| c.saes().get(&session.master_sae).cloned())
        }) else {
            return;
        };
        let span = tracing::info_span!("reroute", session = %id, from_link = %session.entry.link);
        let _e = span.enter();
        match self
            .agree(
                id,
                &origin_km,
                &session.master_sae,
                &session.slave_sae,
                Some(&session.entry.link),
                reason,
            )
            .await
        {
            Ok(()) => tracing::info!("interworking session rerouted"),
            Err(error) => tracing::warn!(%error, "interworking reroute failed"),
        }
    }

    /// A QCLM's diagnosis of an interworking relay failure toward node `destination` (Y.3818
    /// 9.1 procedure 3): sessions coordinated here whose keys go there are moved off their
    /// crossing; for the peer's sessions ending there, the peer is told of a segment fault.
    /// Returns what was decided.
    pub async fn diagnose(self: Arc<Self>, destination: Option<&str>, detail: &str) -> String {
        let Some(speaker) = self.speaker.as_ref() else {
            return "not the domain's speaker".into();
        };
        let nodes = self
            .agent()
            .and_then(|a| a.local_control().map(|c| c.saes()))
            .unwrap_or_default();
        let mut rerouted = Vec::new();
        let mut reported = Vec::new();
        for session in speaker.sessions() {
            match session.role {
                Role::Origin if destination.is_none_or(|d| d == session.entry.node) => {
                    let link = session.entry.link.clone();
                    self.clone().reroute(session.id, detail).await;
                    let moved = speaker
                        .state()
                        .sessions
                        .get(&session.id)
                        .is_some_and(|s| s.entry.link != link);
                    rerouted.push(format!(
                        "{} ({})",
                        session.id,
                        if moved { "moved" } else { "not moved" }
                    ));
                }
                Role::Segment
                    if destination
                        .is_none_or(|d| nodes.get(&session.slave_sae).is_some_and(|n| n == d)) =>
                {
                    let taken = self.report_segment_fault(&session, detail).await;
                    if taken {
                        reported.push(session.id.to_string());
                    }
                }
                _ => {}
            }
        }
        format!(
            "rerouted: [{}]; segment faults reported to the coordinator: [{}]",
            rerouted.join(", "),
            reported.join(", ")
        )
    }

    /// Tells the coordinator of the peer's session `session` that its segment here failed
    /// (it reroutes); whether it took the report.
    async fn report_segment_fault(&self, session: &GatewaySession, detail: &str) -> bool {
        let Some(client) = self
            .speaker
            .as_ref()
            .and_then(|s| s.client_of(&session.peer_domain))
        else {
            return false;
        };
        let report = StatusReport {
            version: CXI_VERSION,
            domain: self.domain.clone(),
            kind: StatusKind::SegmentFault,
            sessions: vec![session.id],
            detail: detail.to_owned(),
            topology: None,
        };
        match client.status(&report).await {
            Ok(_) => true,
            Err(error) => {
                tracing::warn!(%error, "segment fault not reported");
                false
            }
        }
    }

    /// Follows the domain's Qx links: sessions coordinated here whose crossing went down are
    /// rerouted; the peer is told of a fault on the segments it coordinates.
    pub async fn watch_faults(self: Arc<Self>) {
        let Some(speaker) = self.speaker.as_ref() else {
            return;
        };
        let Some(control) = self.agent().and_then(|a| a.local_control().cloned()) else {
            return;
        };
        let mut changes = control.changes();
        let mut reported = std::collections::BTreeSet::new();
        loop {
            let down: Vec<GatewaySession> = speaker
                .sessions()
                .into_iter()
                .filter(|s| {
                    !control
                        .gateways_to(&s.peer_domain)
                        .iter()
                        .filter(|(g, _)| g == &s.gateway)
                        .flat_map(|(_, qx)| qx)
                        .any(|q| q.id == s.entry.link && q.up)
                })
                .collect();
            for session in down {
                match session.role {
                    Role::Origin => self.clone().reroute(session.id, "Qx link down").await,
                    Role::Segment if reported.insert(session.transaction) => {
                        let detail = format!("Qx link {} down", session.entry.link);
                        self.report_segment_fault(&session, &detail).await;
                    }
                    Role::Segment => {}
                }
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
