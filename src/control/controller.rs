//! The controller actor: one lock serialises every change of sessions and routes (sessions
//! created or deleted by orchestrators, link faults reported by the agents), so route
//! installs never interleave.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qkdni_route_policy::{Demand, RoutePolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::Instrument;
use uuid::Uuid;

use super::config::ControllerConfig;
use super::sessions::{Session, SessionEvent, SessionPath, SessionState, SessionStore};
use super::southbound::{RouteChanges, Southbound, SouthboundError};
use super::topology::{Topology, WeightedHop};
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

/// Controller errors, as the northbound reports them.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("unknown SAE {0}")]
    UnknownSae(String),
    #[error("unknown session {0}")]
    UnknownSession(Uuid),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("no route: {0}")]
    NoRoute(String),
    #[error("route install failed: {0}")]
    Install(#[from] SouthboundError),
    #[error("store: {0}")]
    Store(#[from] super::sessions::StoreError),
    #[error("interworking: {0}")]
    Cxi(#[from] super::cxi::CxiError),
}

pub(super) struct State {
    pub(super) topology: Topology,
    pub(super) sessions: BTreeMap<Uuid, Session>,
    /// Creation order of sessions (later sessions win where routes to one destination meet).
    pub(super) order: Vec<Uuid>,
    /// Interworking state (Cxi transactions, faults reported by the peer).
    pub(super) interworking: super::interworking::InterworkingState,
}

impl State {
    /// Adds or replaces a session (a new one comes last in the order: its routes win where
    /// they meet others').
    pub(super) fn put(&mut self, session: Session) {
        if !self.sessions.contains_key(&session.id) {
            self.order.push(session.id);
        }
        self.sessions.insert(session.id, session);
    }

    /// Removes a session from the sessions and their order.
    pub(super) fn take(&mut self, id: Uuid) -> Option<Session> {
        self.order.retain(|s| *s != id);
        self.sessions.remove(&id)
    }
}

/// A QKDN controller.
pub struct Controller {
    pub config: ControllerConfig,
    pub(super) southbound: Southbound,
    /// Clients of the peer domains' controllers (Cxi).
    pub(super) peers: Vec<super::cxi::CxiClient>,
    policy: std::sync::RwLock<Box<dyn RoutePolicy>>,
    poll_seconds: std::sync::atomic::AtomicU64,
    pub(super) state: Mutex<State>,
    pub(super) store: SessionStore,
    events: std::sync::Mutex<VecDeque<ControllerEvent>>,
    /// Every new event, for NETCONF notifications.
    published: tokio::sync::broadcast::Sender<ControllerEvent>,
}

impl Controller {
    /// Opens the store, reads every agent, resumes the stored sessions and reconciles the
    /// KMs' relay routes with them.
    pub async fn start(config: ControllerConfig) -> Result<Arc<Self>, ControlError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| ControlError::Invalid(format!("data dir: {e}")))?;
        let store = SessionStore::open(&config.data_dir.join("controller.redb"))?;
        let agents = config
            .agents
            .iter()
            .map(|a| (a.node.clone(), a.netconf))
            .collect();
        let southbound = Southbound::new(
            agents,
            &config.southbound.username,
            &config.southbound.password,
        );
        let policy = qkdni_routing::by_name(&config.policy)
            .ok_or_else(|| ControlError::Invalid(format!("unknown policy {}", config.policy)))?;
        let mut sessions = store.all()?;
        sessions.sort_by(|a, b| {
            a.history
                .first()
                .map(|h| &h.time)
                .cmp(&b.history.first().map(|h| &h.time))
        });
        let poll_seconds = config.poll_seconds.max(1);
        let peers = match &config.interworking {
            Some(iw) => iw
                .peers
                .iter()
                .map(|p| super::cxi::CxiClient::new(p.clone(), &config.tls))
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        let controller = Arc::new(Self {
            config,
            southbound,
            peers,
            policy: std::sync::RwLock::new(policy),
            poll_seconds: std::sync::atomic::AtomicU64::new(poll_seconds),
            state: Mutex::new(State {
                topology: Topology::default(),
                order: sessions.iter().map(|s| s.id).collect(),
                sessions: sessions.into_iter().map(|s| (s.id, s)).collect(),
                interworking: Default::default(),
            }),
            store,
            events: std::sync::Mutex::new(VecDeque::new()),
            published: tokio::sync::broadcast::channel(256).0,
        });
        controller.refresh().await;
        {
            let mut state = controller.state.lock().await;
            // resume: recompute routes of sessions whose path is gone, then reconcile
            controller
                .reroute_locked(&mut state, "controller start", Instant::now())
                .await;
            if let Err(error) = controller.reconcile(&mut state).await {
                tracing::warn!(%error, "reconciling relay routes at start failed; retried on the next change");
            }
        }
        Ok(controller)
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
        self.state.lock().await.topology.clone()
    }

    /// The route policy in force.
    pub fn policy_name(&self) -> &'static str {
        self.policy.read().expect("policy").name()
    }

    /// Switches the route policy (for new sessions and reroutes).
    pub fn set_policy(&self, name: &str) -> Result<(), ControlError> {
        let policy = qkdni_routing::by_name(name)
            .ok_or_else(|| ControlError::Invalid(format!("unknown policy {name}")))?;
        *self.policy.write().expect("policy") = policy;
        Ok(())
    }

    /// Seconds between polls of the agents.
    pub fn poll_seconds(&self) -> u64 {
        self.poll_seconds.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets the poll interval.
    pub fn set_poll_seconds(&self, seconds: u64) {
        self.poll_seconds
            .store(seconds.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// The topology and sessions, from outside the runtime (blocking).
    pub fn snapshot_blocking(&self) -> (Topology, Vec<Session>) {
        let state = self.state.blocking_lock();
        let sessions = state
            .order
            .iter()
            .filter_map(|id| state.sessions.get(id).cloned())
            .collect();
        (state.topology.clone(), sessions)
    }

    /// Every session.
    pub async fn sessions(&self) -> Vec<Session> {
        let state = self.state.lock().await;
        state
            .order
            .iter()
            .filter_map(|id| state.sessions.get(id).cloned())
            .collect()
    }

    /// One session.
    pub async fn session(&self, id: Uuid) -> Option<Session> {
        self.state.lock().await.sessions.get(&id).cloned()
    }

    /// Reads every agent into the topology; returns whether any link changed up/down.
    pub(super) async fn refresh(&self) -> bool {
        let nodes: Vec<String> = self.southbound.nodes().cloned().collect();
        let views = futures::future::join_all(nodes.iter().map(|n| self.southbound.read(n))).await;
        let mut state = self.state.lock().await;
        let before: BTreeMap<String, bool> = state
            .topology
            .links
            .iter()
            .map(|(id, l)| (id.clone(), l.up))
            .collect();
        for (node, view) in nodes.iter().zip(views) {
            match view {
                Ok(view) => state.topology.update(&view),
                Err(error) => {
                    tracing::debug!(%node, %error, "agent unreachable");
                    if let Some(n) = state.topology.nodes.get_mut(node) {
                        n.reachable = false;
                    }
                }
            }
        }
        state
            .topology
            .links
            .iter()
            .any(|(id, l)| before.get(id).is_some_and(|up| *up != l.up))
    }

    /// The relay routes every KM should hold for the active sessions: per node and
    /// destination, every next hop with its weight (the session's key rate share on that
    /// path, at least 1), the heaviest first. Where single-path sessions to one destination
    /// meet, the later session's next hop wins.
    fn desired(state: &State) -> BTreeMap<String, BTreeMap<String, Vec<WeightedHop>>> {
        let mut tables: BTreeMap<String, BTreeMap<String, Vec<WeightedHop>>> = BTreeMap::new();
        // routes toward this domain's own nodes first: an interworking destination is a node
        // of the peer domain and never collides with them
        for id in &state.order {
            let Some(session) = state
                .sessions
                .get(id)
                .filter(|s| s.state == SessionState::Active)
            else {
                continue;
            };
            let mut hops: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
            for path in session.routed_paths() {
                let weight = (path.share_bps.round() as u64).max(1);
                for hop in path.nodes.windows(2) {
                    *hops
                        .entry(hop[0].clone())
                        .or_default()
                        .entry(hop[1].clone())
                        .or_default() += weight;
                }
            }
            for (node, next) in hops {
                let mut next: Vec<WeightedHop> = next
                    .into_iter()
                    .map(|(node, weight)| WeightedHop { node, weight })
                    .collect();
                next.sort_by(|a, b| b.weight.cmp(&a.weight).then_with(|| a.node.cmp(&b.node)));
                tables
                    .entry(node)
                    .or_default()
                    .insert(session.dst.clone(), next);
            }
        }
        tables
    }

    /// Installs the difference between what the KMs hold and what the sessions need.
    pub(super) async fn reconcile(&self, state: &mut State) -> Result<(), ControlError> {
        let desired = Self::desired(state);
        let desired_saes = super::interworking::desired_foreign_saes(state);
        let mut changes: BTreeMap<String, RouteChanges> = BTreeMap::new();
        for (node, info) in &state.topology.nodes {
            if !info.reachable {
                continue;
            }
            let want = desired.get(node).cloned().unwrap_or_default();
            let mut change = RouteChanges::default();
            for (dest, hops) in &want {
                if info.next_hops.get(dest) != Some(hops) {
                    change.routes.insert(dest.clone(), Some(hops.clone()));
                }
            }
            for dest in info.next_hops.keys() {
                if !want.contains_key(dest) {
                    change.routes.insert(dest.clone(), None);
                }
            }
            let want_saes = desired_saes.get(node).cloned().unwrap_or_default();
            for (sae, entry) in &want_saes {
                if info.foreign_saes.get(sae) != Some(entry) {
                    change.foreign_saes.insert(sae.clone(), Some(entry.clone()));
                }
            }
            for sae in info.foreign_saes.keys() {
                if !want_saes.contains_key(sae) {
                    change.foreign_saes.insert(sae.clone(), None);
                }
            }
            if !change.is_empty() {
                changes.insert(node.clone(), change);
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        self.southbound.install(&changes).await?;
        self.event(
            "routes-installed",
            format!(
                "relay routes installed on {}",
                changes.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
            None,
            None,
        );
        for (node, change) in changes {
            if let Some(info) = state.topology.nodes.get_mut(&node) {
                for (sae, entry) in change.foreign_saes {
                    match entry {
                        Some(entry) => info.foreign_saes.insert(sae, entry),
                        None => info.foreign_saes.remove(&sae),
                    };
                }
                let mut routes = info.next_hops.clone();
                for (dest, hops) in change.routes {
                    match hops {
                        Some(hops) => routes.insert(dest, hops),
                        None => routes.remove(&dest),
                    };
                }
                info.set_routes(routes);
            }
        }
        Ok(())
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

    /// Creates a key supply session between two SAEs and installs its route.
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
        let mut state = self.state.lock().await;
        let src = state
            .topology
            .saes
            .get(master)
            .cloned()
            .ok_or_else(|| ControlError::UnknownSae(master.into()))?;
        let Some(dst) = state.topology.saes.get(slave).cloned() else {
            if self.peers.is_empty() {
                return Err(ControlError::UnknownSae(slave.into()));
            }
            return self
                .create_interworking_locked(&mut state, master, slave, rate_bps, "orchestrator")
                .await;
        };
        let paths = self.route(&state.topology, &src, &dst, rate_bps)?;
        let (path, links) = (paths[0].nodes.clone(), paths[0].links.clone());
        let session = Session {
            id: Uuid::new_v4(),
            master_sae: master.into(),
            slave_sae: slave.into(),
            src,
            dst,
            rate_bps,
            state: SessionState::Active,
            history: vec![SessionEvent {
                time: now_rfc3339(),
                what: format!("created with route {}", describe(&paths)),
            }],
            path,
            links,
            paths,
            interworking: None,
        };
        self.install_new(&mut state, &session).await?;
        self.event(
            "session-created",
            format!("{master} -> {slave} via {}", session.path.join(" -> ")),
            Some(session.id),
            None,
        );
        Ok(session)
    }

    /// Adds a new session, installs the routes it needs and saves it; on failure nothing of
    /// it remains.
    pub(super) async fn install_new(
        &self,
        state: &mut State,
        session: &Session,
    ) -> Result<(), ControlError> {
        state.put(session.clone());
        if let Err(error) = self.reconcile(state).await {
            state.take(session.id);
            return Err(error);
        }
        self.store.save(session)?;
        Ok(())
    }

    /// Deletes a session and the routes only it needed.
    pub async fn delete_session(&self, id: Uuid) -> Result<(), ControlError> {
        let mut state = self.state.lock().await;
        let session = state.take(id).ok_or(ControlError::UnknownSession(id))?;
        self.store.delete(id)?;
        self.end_interworking(&session).await;
        if let Err(error) = self.reconcile(&mut state).await {
            tracing::warn!(%error, "removing the routes of a deleted session failed; retried on the next change");
        }
        self.event(
            "session-deleted",
            format!("{} -> {}", session.master_sae, session.slave_sae),
            Some(id),
            None,
        );
        Ok(())
    }

    /// Handles a link state change reported by an agent at `reported`.
    pub async fn link_changed(&self, link: &str, up: bool, reported: Instant) {
        let mut state = self.state.lock().await;
        if state.topology.set_link_up(link, up) {
            self.event(
                "link-state",
                format!("link {link} {}", if up { "up" } else { "down" }),
                None,
                None,
            );
            self.reroute_locked(
                &mut state,
                &format!("link {link} {}", if up { "up" } else { "down" }),
                reported,
            )
            .await;
        }
    }

    /// Recomputes the routes of sessions that cross a down link (or have none) and installs
    /// the changes; `started` is when the triggering report arrived.
    pub(super) async fn reroute_locked(&self, state: &mut State, trigger: &str, started: Instant) {
        let span = tracing::info_span!("reroute", %trigger);
        async {
            // a link fails a session when it is down or its key rate falls clearly below the
            // session's demand (a dip within the hysteresis margin changes nothing)
            let fails = |link: &str, demand: f64| {
                state
                    .topology
                    .links
                    .get(link)
                    .is_none_or(|l| !l.up || l.rate_bps < demand * (1.0 - RATE_HYSTERESIS))
            };
            let failing = |s: &Session| {
                s.routed_paths()
                    .iter()
                    .any(|p| p.links.iter().any(|l| fails(l, p.share_bps)))
            };
            let broken = |s: &Session| {
                s.routed_paths().iter().any(|p| {
                    p.links
                        .iter()
                        .any(|l| state.topology.links.get(l).is_none_or(|link| !link.up))
                })
            };
            // a segment of another domain's session is rerouted by that domain, with this one
            // agreeing: report the fault to it
            let faulty_segments: Vec<Session> = state
                .sessions
                .values()
                .filter(|s| super::interworking::is_segment(s) && failing(s))
                .filter(|s| {
                    state
                        .interworking
                        .notified
                        .get(&s.id)
                        .is_none_or(|at| at.elapsed() > super::interworking::REPORT_AGAIN)
                })
                .cloned()
                .collect();
            let affected: Vec<Uuid> = state
                .order
                .iter()
                .filter(|id| {
                    state.sessions.get(id).is_some_and(|s| {
                        !super::interworking::is_segment(s)
                            && (s.state == SessionState::Unroutable
                                || state.interworking.suspect.contains(&s.id)
                                || failing(s))
                    })
                })
                .copied()
                .collect();
            for segment in faulty_segments {
                state
                    .interworking
                    .notified
                    .insert(segment.id, Instant::now());
                self.report_segment_fault(&segment, trigger);
            }
            if affected.is_empty() {
                return;
            }
            let mut changed = Vec::new();
            let mut transactions = Vec::new();
            for id in &affected {
                let session = state.sessions[id].clone();
                state.interworking.suspect.remove(id);
                let result = match &session.interworking {
                    Some(_) => self.route_interworking(state, &session, trigger).await.map(
                        |(paths, iw)| {
                            transactions.push((
                                iw.peer_domain.clone(),
                                iw.transaction,
                                session.clone(),
                            ));
                            (paths, Some(iw))
                        },
                    ),
                    None => self
                        .route(
                            &state.topology,
                            &session.src,
                            &session.dst,
                            session.rate_bps,
                        )
                        .map(|paths| (paths, None)),
                };
                // a plan that only answers a key rate shortfall replaces the current one when
                // it is different and clearly better; otherwise nothing changes and nothing is
                // installed (a demand the network cannot meet does not churn the KMs)
                let keep = match &result {
                    Ok((paths, None))
                        if session.state == SessionState::Active && !broken(&session) =>
                    {
                        let current = session.routed_paths();
                        same_plan(&current, paths)
                            || plan_rate(&state.topology, paths)
                                < plan_rate(&state.topology, &current) * (1.0 + RATE_HYSTERESIS)
                    }
                    // no plan meets the demand any more: the current one still carries keys
                    Err(_) if session.state == SessionState::Active && !broken(&session) => true,
                    _ => false,
                };
                if keep {
                    continue;
                }
                let s = state.sessions.get_mut(id).expect("affected session");
                match result {
                    Ok((paths, iw)) => {
                        if iw.is_some() {
                            s.interworking = iw;
                        }
                        s.history.push(SessionEvent {
                            time: now_rfc3339(),
                            what: format!(
                                "{trigger}: rerouted from {} to {}",
                                describe(&s.routed_paths()),
                                describe(&paths)
                            ),
                        });
                        s.path = paths[0].nodes.clone();
                        s.links = paths[0].links.clone();
                        s.paths = paths;
                        s.state = SessionState::Active;
                        changed.push((*id, true));
                    }
                    // an unroutable session is retried on every change; report it once
                    Err(_) if s.state == SessionState::Unroutable => {}
                    Err(error) => {
                        s.history.push(SessionEvent {
                            time: now_rfc3339(),
                            what: format!("{trigger}: no route ({error})"),
                        });
                        s.state = SessionState::Unroutable;
                        changed.push((*id, false));
                    }
                }
            }
            let installed = self.reconcile(state).await;
            if installed.is_err() {
                // the peer committed its part of a route this domain could not install: it
                // undoes it, and this domain keeps the plan both had agreed before, to be
                // agreed again on the next pass
                for (domain, transaction, previous) in transactions {
                    self.abort_at_peer(&domain, transaction).await;
                    state.interworking.suspect.insert(previous.id);
                    state.sessions.insert(previous.id, previous);
                }
            }
            let elapsed = started.elapsed().as_secs_f64() * 1e3;
            for (id, routed) in changed {
                let session = state.sessions[&id].clone();
                if let Err(error) = self.store.save(&session) {
                    tracing::error!(%error, "cannot save session");
                }
                let transaction = session.interworking.as_ref().map(|iw| iw.transaction);
                match (&installed, routed) {
                    (Ok(()), true) => self.event_in(
                        "reroute",
                        format!(
                            "{trigger}: {} now via {}",
                            session.slave_sae,
                            session.path.join(" -> ")
                        ),
                        Some(id),
                        Some(elapsed),
                        transaction,
                    ),
                    (Ok(()), false) => self.event(
                        "reroute-failed",
                        format!(
                            "{trigger}: no route for {} -> {} ({})",
                            session.master_sae,
                            session.slave_sae,
                            session.history.last().map_or("", |h| h.what.as_str())
                        ),
                        Some(id),
                        None,
                    ),
                    (Err(error), _) => self.event(
                        "reroute-failed",
                        format!("{trigger}: install failed: {error}"),
                        Some(id),
                        None,
                    ),
                }
            }
        }
        .instrument(span)
        .await
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
        let controller = self.clone();
        tasks.push(tokio::spawn(async move {
            let mut last_lists: Option<Instant> = None;
            loop {
                tokio::time::sleep(Duration::from_secs(controller.poll_seconds())).await;
                // every half minute, peers learn which sessions this domain coordinates
                if last_lists.is_none_or(|at| at.elapsed() > Duration::from_secs(30)) {
                    last_lists = Some(Instant::now());
                    controller.share_session_lists().await;
                }
                let started = Instant::now();
                let changed = controller.refresh().await;
                let mut state = controller.state.lock().await;
                let trigger = if changed {
                    "link state (poll)"
                } else {
                    "key rate (poll)"
                };
                controller
                    .reroute_locked(&mut state, trigger, started)
                    .await;
                drop(state);
                let mut state = controller.state.lock().await;
                if let Err(error) = controller.reconcile(&mut state).await {
                    tracing::debug!(%error, "reconcile failed; retrying");
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
            async move {
                let received = Instant::now();
                if let Some((link, up)) = parse_link_status(&message) {
                    controller.link_changed(&link, up, received).await;
                }
            }
        })
        .await
    }
}

/// Fraction by which a link's key rate must fall below a session's demand before the session
/// is rerouted for it, and by which a new plan must beat the current one to replace it.
pub const RATE_HYSTERESIS: f64 = 0.1;

/// Whether two plans use the same paths over the same links.
fn same_plan(a: &[SessionPath], b: &[SessionPath]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.nodes == y.nodes && x.links == y.links)
}

/// The key rate a plan can carry: the sum of its paths' bottleneck link rates.
fn plan_rate(topology: &Topology, paths: &[SessionPath]) -> f64 {
    paths
        .iter()
        .map(|p| {
            p.links
                .iter()
                .map(|l| {
                    topology
                        .links
                        .get(l)
                        .map_or(0.0, |l| if l.up { l.rate_bps } else { 0.0 })
                })
                .fold(f64::INFINITY, f64::min)
        })
        .filter(|r| r.is_finite())
        .sum()
}

/// A route plan for people: its paths (with their shares when there are several).
fn describe(paths: &[SessionPath]) -> String {
    match paths {
        [only] => only.nodes.join(" -> "),
        _ => paths
            .iter()
            .map(|p| format!("{} ({:.0} bit/s)", p.nodes.join(" -> "), p.share_bps))
            .collect::<Vec<_>>()
            .join(" + "),
    }
}

/// The link and its new state from a `link-status-change` notification.
fn parse_link_status(message: &str) -> Option<(String, bool)> {
    let doc = crate::netconf::limits::parse(message).ok()?;
    let change = doc
        .descendants()
        .find(|n| n.tag_name().name() == "link-status-change")?;
    let field = |name: &str| {
        change
            .children()
            .find(|c| c.tag_name().name() == name)
            .and_then(|c| c.text())
            .map(str::to_owned)
    };
    Some((field("link-id")?, field("oper-state")? == "up"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_status_notifications_are_read() {
        let n = r#"<notification xmlns="urn:ietf:params:xml:ns:netconf:notification:1.0"><eventTime>2026-01-01T00:00:00Z</eventTime><link-status-change xmlns="urn:qkdni:yang:qkdni-km"><link-id>a1-a2</link-id><oper-state>down</oper-state><previous-state>up</previous-state></link-status-change></notification>"#;
        assert_eq!(parse_link_status(n), Some(("a1-a2".into(), false)));
        assert_eq!(parse_link_status("<notification/>"), None);
    }
}
