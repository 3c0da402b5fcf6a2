//! The controller instance: the one task that owns the controller's state (the holo shape:
//! one instance, one input enum, I/O in tasks).
//!
//! Everything that changes the state arrives as an [`Input`]: orchestrators' and KMs'
//! requests, agents' notifications, polls, the peer controller's Cxi messages, and the
//! outcomes of the network work the instance started. The instance never waits on the
//! network: route agreements with a peer and NETCONF installs run in tasks whose results
//! come back as inputs. Changes that need relay routes on the KMs are [`Job`]s, run one at a
//! time (installs never interleave); each job mutates the state when it starts, installs the
//! difference between what the KMs hold and what the sessions need, and finishes with its
//! continuation ([`Then`]), which commits or undoes what it started. Reads never wait: the
//! instance publishes a [`View`] after every input.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use qkdni_route_policy::Catalog;

use super::ck::southbound::{RouteChanges, Southbound, SouthboundError};
use super::config::ControllerConfig;
use super::controller::Controller;
use super::error::{ControlError, Reply};
pub use super::messages::View;
use super::messages::{Agreement, Input, Job, Then};
use super::sessions::{Session, SessionStore};
use super::state::State;
use super::topology::Topology;

/// Inputs waiting for the instance before senders wait.
const INPUT_QUEUE: usize = 4096;

/// The instance.
pub(super) struct Instance {
    pub(super) c: Arc<Controller>,
    pub(super) state: State,
    queue: VecDeque<Job>,
    /// The installs running (on disjoint sets of KMs), by id, with their jobs'
    /// continuations and the changes they make.
    pub(super) in_flight: BTreeMap<u64, (Then, BTreeMap<String, RouteChanges>)>,
    next_install: u64,
    /// Started jobs whose sessions' KMs an install in flight holds, in order.
    waiting: VecDeque<Then>,
    pub(super) installs: u64,
    /// Sessions whose route is being agreed with a peer controller.
    pub(super) agreeing: BTreeSet<Uuid>,
    /// Sessions asked to reroute again while they were being agreed.
    pub(super) again: BTreeSet<Uuid>,
    /// Sessions changed by jobs whose install is not done, as readers still see them (`None`:
    /// not shown yet): what is read is what the KMs hold.
    pub(super) shown: BTreeMap<Uuid, Option<Session>>,
    /// Waiters for a new interworking session being agreed, by (master, slave).
    pub(super) creating: BTreeMap<(String, String), Vec<Reply<Session>>>,
    /// When each SAE pair last asked for keys (on-demand sessions expire without use).
    pub(super) usage: super::state::PairUse,
    /// Answers to send once the view that shows their effect is published: whoever is told
    /// a change is done reads it at once.
    answers: Vec<Box<dyn FnOnce() + Send>>,
}

/// Opens the store, reads every agent, starts the instance with the stored sessions and
/// returns once it has rerouted what needs it and reconciled the KMs' relay routes.
pub async fn start(
    config: ControllerConfig,
    policies: Catalog,
) -> Result<Arc<Controller>, ControlError> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| ControlError::Invalid(format!("data dir: {e}")))?;
    let store = SessionStore::open(&config.data_dir.join("controller.redb"))?;
    let agents = config
        .agents
        .iter()
        .map(|a| (a.node.clone(), a.netconf))
        .collect();
    let southbound = Southbound::with_login(agents, &config.southbound)
        .map_err(|e| ControlError::Invalid(format!("southbound: {e}")))?;
    let policy = policies
        .policy(&config.policy)
        .map_err(ControlError::Invalid)?;
    let mut sessions = store.all()?;
    sessions.sort_by(|a, b| {
        a.history
            .first()
            .map(|h| &h.time)
            .cmp(&b.history.first().map(|h| &h.time))
    });
    let poll_seconds = config.poll_seconds.max(1);
    // the Cxi signing key and evidence store, before any Cxi client or server exists
    crate::nonrepudiation::install(
        &config.tls,
        &config.nonrepudiation,
        Some(&config.data_dir.join(crate::nonrepudiation::evidence::DIR)),
    )
    .map_err(|e| ControlError::Invalid(format!("non-repudiation: {e}")))?;
    let settings = super::cxi::live::InterworkingSettings::of_config(&config);
    let metrics = super::metrics::ControlMetrics::default();
    let peers =
        super::cxi::live::clients(&config, &settings, &[], &metrics.cxi_round_trip_seconds)?;
    let (inputs, received) = mpsc::channel(INPUT_QUEUE);
    let (publish, view) = watch::channel(Arc::new(View::default()));
    let on_demand_idle_seconds = config.on_demand_idle_seconds;
    let audit = crate::audit::AuditLog::for_daemon(
        &config.data_dir,
        format!("controller {}", config.domain),
        &config.audit,
    )
    .map_err(|e| ControlError::Invalid(format!("audit log: {e}")))?;
    let refusals = Arc::new(crate::refusals::Refusals::new(config.refusals.clone()));
    let controller = Arc::new(Controller {
        config,
        southbound,
        interworking_live: super::cxi::live::Live::new(settings, peers),
        admission: Default::default(),
        policies,
        policy: std::sync::RwLock::new(policy),
        poll_seconds: AtomicU64::new(poll_seconds),
        on_demand_idle_seconds: AtomicU64::new(on_demand_idle_seconds),
        store,
        events: std::sync::Mutex::new(VecDeque::new()),
        published: tokio::sync::broadcast::channel(256).0,
        inputs,
        view,
        peer_domains: Default::default(),
        metrics,
        refusals,
        transfers: super::transfers::TransferLog::new(std::time::Duration::from_secs(
            crate::km::limits::KmLimits::default().undelivered_key_ttl_seconds,
        )),
        audit,
    });
    spawn(controller.clone(), sessions, received, publish);
    tokio::spawn(refusal_alarms(controller.clone()));
    let started = Instant::now();
    let views = controller.read_agents().await;
    controller
        .send(Input::Polled {
            views,
            installs: 0,
            started,
            trigger: Some("controller start"),
        })
        .await?;
    controller.ask(|reply| Input::Flush { reply }).await?;
    Ok(controller)
}

/// Starts the instance with the stored sessions (oldest first).
pub(super) fn spawn(
    c: Arc<Controller>,
    sessions: Vec<Session>,
    inputs: mpsc::Receiver<Input>,
    publish: watch::Sender<Arc<View>>,
) {
    let instance = Instance {
        c,
        state: State {
            topology: Topology::default(),
            order: sessions.iter().map(|s| s.id).collect(),
            sessions: sessions.into_iter().map(|s| (s.id, s)).collect(),
            interworking: Default::default(),
            retired: Vec::new(),
        },
        queue: VecDeque::new(),
        in_flight: BTreeMap::new(),
        next_install: 0,
        waiting: VecDeque::new(),
        installs: 0,
        agreeing: BTreeSet::new(),
        again: BTreeSet::new(),
        creating: BTreeMap::new(),
        shown: BTreeMap::new(),
        usage: Default::default(),
        answers: Vec::new(),
    };
    tokio::spawn(instance.run(inputs, publish));
}

impl Instance {
    async fn run(mut self, mut inputs: mpsc::Receiver<Input>, publish: watch::Sender<Arc<View>>) {
        while let Some(input) = inputs.recv().await {
            self.handle(input);
            self.pump();
            self.sync_admission();
            publish.send_replace(Arc::new(self.view()));
            for answer in self.answers.drain(..) {
                answer();
            }
        }
    }

    /// Sends `value` on `reply` once the view after this input is published.
    pub(super) fn answer<T: Send + 'static>(
        &mut self,
        reply: tokio::sync::oneshot::Sender<T>,
        value: T,
    ) {
        self.answers.push(Box::new(move || {
            let _ = reply.send(value);
        }));
    }

    fn view(&self) -> View {
        View {
            topology: self.state.topology.clone(),
            sessions: self
                .state
                .order
                .iter()
                .filter_map(|id| match self.shown.get(id) {
                    Some(shown) => shown.clone(),
                    None => self.state.sessions.get(id).cloned(),
                })
                .collect(),
            agreeing: self.agreeing.iter().copied().collect(),
            installs: self.installs,
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Create {
                master,
                slave,
                rate_bps,
                reply,
            } => self.create(master, slave, rate_bps, reply),
            Input::KmRoute {
                km,
                master,
                slave,
                reply,
            } => self.km_route(km, master, slave, reply),
            Input::Delete { id, reply } => self.queue.push_back(Job::Delete { id, reply }),
            Input::LinkChanged { link, up, at } => {
                if self.state.topology.set_link_up(&link, up) {
                    let what = format!("link {link} {}", if up { "up" } else { "down" });
                    self.c.event("link-state", what.clone(), None, None);
                    self.reroute(what, at);
                }
            }
            Input::Polled {
                views,
                installs,
                started,
                trigger,
            } => {
                let changed = self.merge(views, installs);
                // the reroute pass this poll queues removes them from the KMs
                self.state.prune_retired(Instant::now());
                self.expire_idle(Instant::now());
                let trigger = match trigger {
                    Some("poll") if changed => "link state (poll)",
                    Some("poll") => "key rate (poll)",
                    Some(other) => other,
                    None => return,
                };
                self.reroute(trigger.to_owned(), started);
            }
            Input::Diagnosis {
                destination,
                detail,
                at,
                reply,
            } => {
                let decision = self.diagnosis(destination.as_deref(), &detail, at);
                let _ = reply.send(decision);
            }
            Input::PeerPrepare {
                from,
                request,
                reply,
            } => {
                let _ = reply.send(self.peer_prepare(&from, request));
            }
            Input::PeerCommit {
                from,
                transaction,
                reply,
            } => self.queue.push_back(Job::PeerCommit {
                from,
                transaction,
                reply,
            }),
            Input::PeerAbort {
                from,
                transaction,
                reply,
            } => self.queue.push_back(Job::PeerAbort {
                from,
                transaction,
                reply,
            }),
            Input::PeerDelete { from, id, reply } => {
                self.queue.push_back(Job::PeerDelete { from, id, reply })
            }
            Input::PeerStatus { from, report, at } => self.peer_status(from, report, at),
            Input::Installed { id, result } => {
                let (then, changes) = self.in_flight.remove(&id).expect("an install in flight");
                if let Err(SouthboundError::Agent { node, .. }) = &result {
                    // skipped by installs until a poll reads it again
                    if let Some(n) = self.state.topology.nodes.get_mut(node) {
                        n.reachable = false;
                    }
                }
                let retry = result.is_err() && !matches!(then, Then::Nothing);
                let result = result.map(|()| self.installed(changes));
                self.finish(then, result.map_err(ControlError::from));
                if retry {
                    // what the failed job left on the KMs it reached is set right
                    self.push(Job::Reconcile);
                }
            }
            Input::Agreed { agreement, result } => match agreement {
                Agreement::New { session, by } => self.agreed_new(session, by, result),
                Agreement::Reroute {
                    id,
                    trigger,
                    started,
                } => self.agreed_reroute(id, trigger, started, result),
            },
            Input::Flush { reply } => self.queue.push_back(Job::Flush(reply)),
        }
    }

    /// Queues a reroute pass unless one is queued already (it will see this change too).
    pub(super) fn reroute(&mut self, trigger: String, started: Instant) {
        if !self
            .queue
            .iter()
            .any(|job| matches!(job, Job::Reroute { .. }))
        {
            self.queue.push_back(Job::Reroute { trigger, started });
        }
    }

    /// Queues a job.
    pub(super) fn push(&mut self, job: Job) {
        self.queue.push_back(job);
    }

    /// Starts queued jobs in order, and installs for each the difference between what the
    /// KMs hold and what the sessions need, on the KMs no install in flight holds. A job
    /// whose sessions use a KM an install in flight holds waits for it; jobs on other KMs go
    /// ahead: a KM that does not answer delays only the changes that need it.
    fn pump(&mut self) {
        let mut i = 0;
        while i < self.waiting.len() {
            let then = self.waiting.remove(i).expect("in range");
            if let Some(then) = self.try_install(then, i == 0) {
                self.waiting.insert(i, then);
                i += 1;
            }
        }
        while let Some(job) = self.queue.pop_front() {
            let Some(then) = self.start(job) else {
                continue;
            };
            let first = self.waiting.is_empty();
            if let Some(then) = self.try_install(then, first) {
                self.waiting.push_back(then);
            }
        }
    }

    /// Installs what a started job needs, or finishes it when nothing is to install; gives it
    /// back when it must wait (`first`: no job started before it waits).
    fn try_install(&mut self, then: Then, first: bool) -> Option<Then> {
        if let Then::Flushed(reply) = then {
            if first && self.in_flight.is_empty() {
                let _ = reply.send(());
                return None;
            }
            return Some(Then::Flushed(reply));
        }
        let busy: BTreeSet<String> = self
            .in_flight
            .values()
            .flat_map(|(_, changes)| changes.keys().cloned())
            .collect();
        if self.relevant(&then).iter().any(|node| busy.contains(node)) {
            return Some(then);
        }
        let mut changes = self.changes();
        changes.retain(|node, _| !busy.contains(node));
        if changes.is_empty() {
            self.finish(then, Ok(()));
            return None;
        }
        let id = self.next_install;
        self.next_install += 1;
        let c = self.c.clone();
        let install = changes.clone();
        self.in_flight.insert(id, (then, changes));
        tokio::spawn(async move {
            let started = Instant::now();
            let result = c.southbound.install(&install).await;
            c.metrics
                .install(result.is_ok(), started.elapsed().as_secs_f64());
            let _ = c.send(Input::Installed { id, result }).await;
        });
        None
    }

    /// Keeps showing session `id` as it was (`None`: not at all) until its job finishes, and
    /// keeps its previous route on the KMs for a while (see [`State::retire`]).
    pub(super) fn show_as(&mut self, id: Uuid, before: Option<Session>) {
        if let Some(before) = &before {
            self.state.retire(before.clone());
        }
        self.shown.entry(id).or_insert(before);
    }

    /// Asks the peer to undo a transaction, in the background.
    pub(super) fn abort_at_peer(&self, domain: String, transaction: Uuid) {
        let c = self.c.clone();
        tokio::spawn(async move { c.abort_at_peer(&domain, transaction).await });
    }
}

/// Turns the controller's refusal alarms into `refusal-alarm` events (and so NETCONF
/// notifications).
async fn refusal_alarms(controller: Arc<Controller>) {
    let mut alarms = controller.refusals.alarms();
    loop {
        match alarms.recv().await {
            Ok(alarm) => controller.event(
                REFUSAL_ALARM,
                format!(
                    "{} refusals at {} within a minute (threshold {}), the last from {} ({}): {}",
                    alarm.per_minute,
                    alarm.point,
                    alarm.threshold,
                    alarm.last.source.as_deref().unwrap_or("?"),
                    alarm.last.identity.as_deref().unwrap_or("unidentified"),
                    alarm.last.reason
                ),
                None,
                None,
            ),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
        }
    }
}

/// The kind of the event of a refusal alarm.
pub const REFUSAL_ALARM: &str = "refusal-alarm";
