//! The controller's handle: what every face of the controller (REST, Cxi, NETCONF, the
//! agents' notifications, the poll) holds. Reads are answered from the last published
//! [`View`] at once; changes are inputs to the controller instance
//! ([`super::instance`]), the one task that owns the state, and wait for its answer.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qkdni_route_policy::{Catalog, Demand, RoutePolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use super::ck::southbound::Southbound;
use super::config::ControllerConfig;
use super::cxi::{aborted, refusal, PrepareRequest, StatusReport, TransactionResult, Vote};
pub use super::error::ControlError;
use super::messages::{Input, View};
use super::sessions::{Session, SessionPath, SessionStore};
use super::topology::{AgentView, Topology};
use crate::model::km_notifications::KmNotification;
use crate::netconf::server::now_rfc3339;

/// Most events kept for the REST API.
const EVENT_LOG: usize = 1000;

/// Something the controller did or saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ControllerEvent {
    /// RFC 3339 time.
    pub time: String,
    /// `session-created`, `session-deleted`, `link-state`, `reroute`, `reroute-failed`, ...
    pub kind: String,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<Uuid>,
    /// For reroutes: milliseconds from the agent's report to the new route committed on
    /// every KM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    /// For interworking steps: the Cxi transaction (the same id in both domains' logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<Uuid>,
}

/// A QKDN controller: its configuration, its I/O parts, and the way to its instance.
pub struct Controller {
    pub config: ControllerConfig,
    pub(super) southbound: Southbound,
    /// The Cxi peers, their clients and the exposure policy in effect (changed through
    /// NETCONF while the controller runs).
    pub(super) interworking_live: super::cxi::live::Live,
    /// The QoS policy (`controller/qos`) and the guarantees held by admitted sessions.
    pub admission: super::admission::Admission,
    pub(super) policies: Catalog,
    pub(super) policy: std::sync::RwLock<Box<dyn RoutePolicy>>,
    pub(super) poll_seconds: AtomicU64,
    pub(super) on_demand_idle_seconds: AtomicU64,
    pub(super) store: SessionStore,
    pub(super) events: std::sync::Mutex<VecDeque<ControllerEvent>>,
    /// Every new event, for NETCONF notifications.
    pub(super) published: tokio::sync::broadcast::Sender<ControllerEvent>,
    pub(super) inputs: mpsc::Sender<Input>,
    pub(super) view: watch::Receiver<Arc<View>>,
    /// What this controller knows of its peer domains.
    pub(super) peer_domains: super::cxi::peers::PeerDomains,
    /// Prometheus metrics.
    pub metrics: super::metrics::ControlMetrics,
    /// Refusals at the controller's reference points (Cxi, REST, NETCONF), with sources.
    pub refusals: Arc<crate::refusals::Refusals>,
    /// Transfer key life-cycle records reported by this domain's IWN KMs.
    pub transfers: super::transfers::TransferLog,
    /// The durable, hash-chained audit log ([`crate::audit`]).
    pub audit: crate::audit::AuditLog,
}

impl Controller {
    /// Sends an input to the instance.
    pub(super) async fn send(&self, input: Input) -> Result<(), ControlError> {
        self.inputs
            .send(input)
            .await
            .map_err(|_| ControlError::Stopped)
    }

    /// Sends an input that carries a reply channel and waits for the answer.
    pub(super) async fn ask<T>(
        &self,
        input: impl FnOnce(oneshot::Sender<T>) -> Input,
    ) -> Result<T, ControlError> {
        let (reply, answer) = oneshot::channel();
        self.send(input(reply)).await?;
        answer.await.map_err(|_| ControlError::Stopped)
    }

    /// The last published view of the domain and its sessions.
    pub fn view(&self) -> Arc<View> {
        self.view.borrow().clone()
    }

    /// The views as the instance publishes them.
    pub(super) fn view_changes(&self) -> watch::Receiver<Arc<View>> {
        self.view.clone()
    }

    /// Records an event.
    pub(super) fn event(
        &self,
        kind: &str,
        detail: String,
        session: Option<Uuid>,
        duration_ms: Option<f64>,
    ) {
        self.event_in(kind, detail, session, duration_ms, None)
    }

    /// Records an event of a Cxi transaction.
    pub(super) fn event_in(
        &self,
        kind: &str,
        detail: String,
        session: Option<Uuid>,
        duration_ms: Option<f64>,
        transaction: Option<Uuid>,
    ) {
        tracing::info!(kind, session = ?session, duration_ms, transaction = ?transaction, "{detail}");
        let mut events = self.events.lock().expect("events");
        if events.len() == EVENT_LOG {
            events.pop_front();
        }
        let event = ControllerEvent {
            time: now_rfc3339(),
            kind: kind.to_owned(),
            detail,
            session,
            duration_ms,
            transaction,
        };
        crate::audit::hooks::controller_event(&self.audit, &event);
        let _ = self.published.send(event.clone());
        events.push_back(event);
    }

    /// Events from now on, as they happen.
    pub fn subscribe_events(&self) -> tokio::sync::broadcast::Receiver<ControllerEvent> {
        self.published.subscribe()
    }

    /// Recent events, oldest first.
    pub fn events(&self) -> Vec<ControllerEvent> {
        self.events
            .lock()
            .expect("events")
            .iter()
            .cloned()
            .collect()
    }

    /// The current topology.
    pub async fn topology(&self) -> Topology {
        self.view().topology.clone()
    }

    /// The route policy in force.
    pub fn policy_name(&self) -> &'static str {
        self.policy.read().expect("policy").name()
    }

    /// Switches the route policy (for new sessions and reroutes).
    pub fn set_policy(&self, name: &str) -> Result<(), ControlError> {
        let policy = self.policies.policy(name).map_err(ControlError::Invalid)?;
        *self.policy.write().expect("policy") = policy;
        Ok(())
    }

    /// Seconds between polls of the agents.
    pub fn poll_seconds(&self) -> u64 {
        self.poll_seconds.load(Ordering::Relaxed)
    }

    /// Sets the poll interval.
    pub fn set_poll_seconds(&self, seconds: u64) {
        self.poll_seconds.store(seconds.max(1), Ordering::Relaxed);
    }

    /// Seconds without key requests after which an on-demand session goes (0: never).
    pub fn on_demand_idle_seconds(&self) -> u64 {
        self.on_demand_idle_seconds.load(Ordering::Relaxed)
    }

    /// Changes the on-demand idle time.
    pub fn set_on_demand_idle_seconds(&self, seconds: u64) {
        self.on_demand_idle_seconds
            .store(seconds, Ordering::Relaxed);
    }

    /// The topology and sessions (never waits on the instance).
    pub fn snapshot_blocking(&self) -> (Topology, Vec<Session>) {
        let view = self.view();
        (view.topology.clone(), view.sessions.clone())
    }

    /// Every session.
    pub async fn sessions(&self) -> Vec<Session> {
        self.view().sessions.clone()
    }

    /// One session.
    pub async fn session(&self, id: Uuid) -> Option<Session> {
        self.view().sessions.iter().find(|s| s.id == id).cloned()
    }

    /// Reads every agent at once (outside the instance: a slow agent delays nobody).
    pub(super) async fn read_agents(&self) -> Vec<(String, Result<AgentView, String>)> {
        let nodes: Vec<String> = self.southbound.nodes().cloned().collect();
        let views = futures::future::join_all(nodes.iter().map(|n| self.southbound.read(n))).await;
        nodes
            .into_iter()
            .zip(views)
            .map(|(node, view)| (node, view.map_err(|e| e.to_string())))
            .collect()
    }

    /// The route plan of a demand: its paths, widest first.
    pub(super) fn route(
        &self,
        topology: &Topology,
        src: &str,
        dst: &str,
        rate_bps: f64,
    ) -> Result<Vec<SessionPath>, ControlError> {
        if src == dst {
            return Ok(vec![SessionPath {
                nodes: vec![src.to_owned()],
                links: Vec::new(),
                share_bps: rate_bps,
            }]);
        }
        let plan = self
            .policy
            .read()
            .expect("policy")
            .route(&topology.network(), &Demand::new(src, dst, rate_bps, 0.0))
            .map_err(|e| ControlError::NoRoute(e.to_string()))?;
        let mut paths: Vec<SessionPath> = plan
            .paths
            .into_iter()
            .map(|p| SessionPath {
                nodes: p.nodes,
                links: p.links,
                share_bps: p.share_bps,
            })
            .collect();
        if paths.is_empty() {
            return Err(ControlError::NoRoute("empty plan".into()));
        }
        paths.sort_by(|a, b| b.share_bps.total_cmp(&a.share_bps));
        Ok(paths)
    }

    /// Creates a key supply session between two SAEs and installs its route (agreed with
    /// the peer domain when the slave SAE is one of its).
    pub async fn create_session(
        &self,
        master: &str,
        slave: &str,
        rate_bps: f64,
    ) -> Result<Session, ControlError> {
        if !(rate_bps.is_finite() && rate_bps >= 0.0) {
            return Err(ControlError::Invalid(
                "rate_bps must be a non-negative number".into(),
            ));
        }
        if master == slave {
            return Err(ControlError::Invalid(
                "master and slave SAE must differ".into(),
            ));
        }
        self.ask(|reply| Input::Create {
            master: master.to_owned(),
            slave: slave.to_owned(),
            rate_bps,
            reply,
        })
        .await?
    }

    /// Deletes a session and the routes only it needed.
    pub async fn delete_session(&self, id: Uuid) -> Result<(), ControlError> {
        self.ask(|reply| Input::Delete { id, reply }).await?
    }

    /// Handles a link state change reported by an agent at `reported`.
    pub async fn link_changed(&self, link: &str, up: bool, reported: Instant) {
        let _ = self
            .send(Input::LinkChanged {
                link: link.to_owned(),
                up,
                at: reported,
            })
            .await;
    }

    /// Procedure 1, asked by a KM: the active interworking session of `master` and `slave`,
    /// created (route agreed and installed) when there is none.
    pub async fn interworking_route(
        &self,
        km: &str,
        master: &str,
        slave: &str,
    ) -> Result<Session, ControlError> {
        self.ask(|reply| Input::KmRoute {
            km: km.to_owned(),
            master: master.to_owned(),
            slave: slave.to_owned(),
            reply,
        })
        .await?
    }

    /// Cxi phase 1 at the receiving domain: compute and hold the segment, and vote.
    pub async fn cxi_prepare(&self, from: &str, request: PrepareRequest) -> Vote {
        let transaction = request.transaction;
        // the segment starts at the entry gateway: read it now rather than vote on the last
        // poll's view of it (a KM that just died would otherwise be agreed on)
        if self.southbound.nodes().any(|n| n == &request.entry_gateway) {
            let installs = self.view().installs;
            let view = self
                .southbound
                .read(&request.entry_gateway)
                .await
                .map_err(|e| e.to_string());
            let _ = self
                .send(Input::Polled {
                    views: vec![(request.entry_gateway.clone(), view)],
                    installs,
                    started: Instant::now(),
                    trigger: None,
                })
                .await;
        }
        self.ask(|reply| Input::PeerPrepare {
            from: from.to_owned(),
            request,
            reply,
        })
        .await
        .unwrap_or_else(|error| refusal(transaction, error.to_string()))
    }

    /// Cxi phase 2 at the receiving domain: install the prepared segment.
    pub async fn cxi_commit(&self, from: &str, transaction: Uuid) -> TransactionResult {
        self.ask(|reply| Input::PeerCommit {
            from: from.to_owned(),
            transaction,
            reply,
        })
        .await
        .unwrap_or_else(|error| aborted(transaction, Some(error.to_string())))
    }

    /// Drops a prepared segment, or undoes a committed one.
    pub async fn cxi_abort(&self, from: &str, transaction: Uuid) -> TransactionResult {
        self.ask(|reply| Input::PeerAbort {
            from: from.to_owned(),
            transaction,
            reply,
        })
        .await
        .unwrap_or_else(|error| aborted(transaction, Some(error.to_string())))
    }

    /// The coordinating domain ended a session: remove its segment here.
    pub async fn cxi_delete_session(&self, from: &str, id: Uuid) -> bool {
        self.ask(|reply| Input::PeerDelete {
            from: from.to_owned(),
            id,
            reply,
        })
        .await
        .unwrap_or(false)
    }

    /// Status shared by peer `from`: its abstract topology is kept; a segment fault makes
    /// the sessions rerouted (agreed with the peer); a session list drops left-over segments.
    pub async fn cxi_status(&self, from: &str, mut report: StatusReport) {
        if let Some(topology) = report.topology.take() {
            if topology.domain == from {
                self.peer_topology(from, topology);
            }
        }
        if report.kind == super::cxi::StatusKind::BorderChange {
            return;
        }
        let _ = self
            .send(Input::PeerStatus {
                from: from.to_owned(),
                report,
                at: Instant::now(),
            })
            .await;
    }

    /// QCLM's diagnosis of an interworking relay failure (procedure 3): the sessions toward
    /// `destination` are re-agreed (origin) or reported to the coordinator (segment).
    pub async fn diagnosis(&self, destination: Option<&str>, detail: &str) -> String {
        let at = Instant::now();
        let installs = self.view().installs;
        let views = self.read_agents().await;
        let polled = self
            .send(Input::Polled {
                views,
                installs,
                started: at,
                trigger: None,
            })
            .await;
        let answer = match polled {
            Ok(()) => {
                self.ask(|reply| Input::Diagnosis {
                    destination: destination.map(str::to_owned),
                    detail: detail.to_owned(),
                    at,
                    reply,
                })
                .await
            }
            Err(error) => Err(error),
        };
        answer.unwrap_or_else(|error| error.to_string())
    }

    /// Follows every agent's notifications and polls their pools; reroutes on faults.
    pub fn spawn_watchers(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        for node in self.southbound.nodes().cloned().collect::<Vec<_>>() {
            let controller = self.clone();
            tasks.push(tokio::spawn(
                async move { controller.watch_agent(node).await },
            ));
        }
        tasks.push(tokio::spawn(self.clone().push_abstract_topology()));
        let controller = self.clone();
        tasks.push(tokio::spawn(async move {
            let mut last_lists: Option<Instant> = None;
            loop {
                tokio::time::sleep(Duration::from_secs(controller.poll_seconds())).await;
                // every half minute, peers learn which sessions this domain coordinates
                if last_lists.is_none_or(|at| at.elapsed() > Duration::from_secs(30)) {
                    last_lists = Some(Instant::now());
                    let controller = controller.clone();
                    tokio::spawn(async move { controller.share_session_lists().await });
                }
                let started = Instant::now();
                let installs = controller.view().installs;
                let views = controller.read_agents().await;
                let polled = Input::Polled {
                    views,
                    installs,
                    started,
                    trigger: Some("poll"),
                };
                if controller.send(polled).await.is_err() {
                    return;
                }
            }
        }));
        tasks
    }

    async fn watch_agent(self: Arc<Self>, node: String) {
        let Some((addr, options)) = self.southbound.notification_source(&node) else {
            return;
        };
        let who = format!("agent {node}");
        crate::netconf::client::follow_notifications(addr, options, &who, |message| {
            let controller = self.clone();
            let node = node.clone();
            async move {
                let received = Instant::now();
                match crate::model::km_notifications::parse_notification(&node, &message) {
                    Some(KmNotification::LinkStatus { link, state, .. }) => {
                        controller
                            .link_changed(&link, state == "up", received)
                            .await;
                    }
                    Some(KmNotification::KeyTransfer(report)) => {
                        controller.transfer_reported(report)
                    }
                    _ => {}
                }
            }
        })
        .await
    }
}

impl Controller {
    /// Controls key generation on QKD link `link` of this domain (Y.3818 9.2, procedure 2):
    /// pauses it (`enabled` false) or resumes it at both ends, through the KMs' NETCONF model;
    /// the KMs report the new link state and routes follow it.
    pub async fn set_generation(&self, link: &str, enabled: bool) -> Result<(), ControlError> {
        let view = self.view();
        let state = view
            .topology
            .links
            .get(link)
            .filter(|l| l.nodes.iter().all(|n| view.topology.nodes.contains_key(n)))
            .ok_or_else(|| ControlError::UnknownLink(link.to_owned()))?;
        let id = crate::etsi015::link_id(&self.config.domain, None, link);
        let results = futures::future::join_all(
            state
                .nodes
                .iter()
                .map(|node| self.southbound.set_generation(node, &id, enabled)),
        )
        .await;
        let done = if enabled { "resumed" } else { "paused" };
        let outcome = results.into_iter().collect::<Result<Vec<()>, _>>();
        match &outcome {
            Ok(_) => self.event(
                "key-generation",
                format!("key generation on {link} {done} at both ends"),
                None,
                None,
            ),
            Err(error) => self.event(
                "key-generation-failed",
                format!("key generation on {link} not {done}: {error}"),
                None,
                None,
            ),
        }
        outcome.map(|_| ()).map_err(ControlError::Install)
    }

    /// Keeps the life-cycle metadata an IWN KM reported of a key transfer, as an event too.
    fn transfer_reported(&self, report: crate::model::km_notifications::KeyTransferReport) {
        let _span =
            tracing::info_span!("transfer", relay_id = %report.relay_id, node = %report.node)
                .entered();
        self.event(
            "key-transfer",
            format!(
                "{} {} {} key(s) of {} for {} over {} ({})",
                report.node,
                report.state,
                report.key_ids.len(),
                report.master_sae,
                report.slave_saes.join(", "),
                report.link,
                report.role
            ),
            None,
            None,
        );
        self.transfers.record(report);
    }
}
