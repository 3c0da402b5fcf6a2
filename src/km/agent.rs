//! The KM agent daemon: one per QKD node.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use super::config::{Etsi014Limits, KmConfig, LinkConfig, LinkEnd};
use super::store::{KeyStore, StoreError};
use crate::quantum::emulated::EmulatedTransmitter;
use crate::quantum::{LinkCondition, LinkState, QkdModule, RateSpec};
use crate::tls::{self, TlsError};

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("NETCONF: {0}")]
    Netconf(#[from] crate::netconf::server::ServerError),
    #[error("creating {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Readiness(#[from] crate::readiness::ReadinessError),
}

/// What operators set on a link at run time.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkSettings {
    pub rate: RateSpec,
    pub admin: LinkState,
    pub capacity_blocks: usize,
}

/// Run-time state of one QKD link.
pub struct LinkRuntime {
    /// The link's identity (id, peer, ends): fixed while the agent runs.
    pub config: LinkConfig,
    settings: Mutex<LinkSettings>,
    control: watch::Sender<LinkCondition>,
    /// Blocks of this link consumed by key supply and relay since start.
    pub consumed_blocks: AtomicU64,
    /// Whether the module hears its peer (false: loss of signal, the link is down whatever
    /// its admin state).
    signal: std::sync::atomic::AtomicBool,
    /// When the peer transmitter was last heard (receiver end; start time until it is), and
    /// whether it ever was.
    heard: Mutex<(tokio::time::Instant, bool)>,
    /// The emulated quantum channel's current session (receiver end), see
    /// [`SyncRequest::epoch`](crate::quantum::emulated::SyncRequest::epoch).
    pub epoch: Mutex<u64>,
}

impl LinkRuntime {
    /// The link's current condition.
    pub fn condition(&self) -> LinkCondition {
        *self.control.borrow()
    }

    /// Follows the link's condition (state, key rate, QBER) as it changes.
    pub fn watch(&self) -> watch::Receiver<LinkCondition> {
        self.control.subscribe()
    }

    /// The link's current settings.
    pub fn settings(&self) -> LinkSettings {
        self.settings.lock().expect("link settings").clone()
    }
}

/// Settings of the agent that change at run time (through NETCONF).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Every SAE of the domain and the node whose KM serves it.
    pub saes: BTreeMap<String, String>,
    /// The SAEs of other QKDNs among them (registered by the controller for interworking
    /// sessions) and their QKDN.
    pub foreign_saes: BTreeMap<String, String>,
    /// Key relay routes: destination node -> next hops with their weights (the first is
    /// the primary; keys are split over all of them in proportion to the weights).
    pub routes: BTreeMap<String, NextHops>,
    pub etsi014: Etsi014Limits,
    /// Low-key alarm threshold, percent of this end's share of a link pool.
    pub low_key_threshold_percent: u8,
}

/// Next hops toward one destination with their weights, the primary first.
pub type NextHops = Vec<(String, u32)>;

/// Counters of key supply.
#[derive(Debug, Default)]
pub struct Counters {
    /// Keys handed to master SAEs.
    pub keys_supplied: AtomicU64,
    /// Keys handed to slave SAEs.
    pub keys_delivered: AtomicU64,
    /// Keys erased because their slave SAE did not fetch them in time.
    pub keys_expired: AtomicU64,
    /// ETSI 014 requests answered 503 by admission control.
    pub requests_shed: AtomicU64,
    /// Get key requests served and keys supplied per (master SAE, slave SAE) pair: what
    /// tells the controller that a pair's on-demand route is still in use.
    pub pairs: Mutex<BTreeMap<(String, String), PairUse>>,
}

/// Use of one (master SAE, slave SAE) pair at the master's KM.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PairUse {
    pub requests: u64,
    pub keys: u64,
}

impl Counters {
    /// Counts a Get key request of `master` served with `keys` keys for each of `slaves`.
    pub fn supplied(&self, master: &str, slaves: &[String], keys: u64) {
        self.keys_supplied.fetch_add(keys, Ordering::Relaxed);
        let mut pairs = self.pairs.lock().unwrap_or_else(|p| p.into_inner());
        for slave in slaves {
            let pair = pairs.entry((master.to_owned(), slave.clone())).or_default();
            pair.requests += 1;
            pair.keys += keys;
        }
    }
}

/// The shared state of a KM agent.
pub struct Agent {
    pub config: KmConfig,
    pub store: KeyStore,
    /// HTTPS client with this KM's identity, for peer KMs of this domain.
    pub peers: reqwest::Client,
    /// HTTPS clients with this KM's identity for the peer GWNs of other domains (Qx, Kxi),
    /// each trusting only that domain's CA.
    pub foreign: BTreeMap<String, reqwest::Client>,
    links: HashMap<String, LinkRuntime>,
    settings: RwLock<Settings>,
    pub counters: Counters,
    /// Prometheus metrics (requests, keys, relays; links at each scrape).
    pub metrics: super::metrics::KmMetrics,
    events: tokio::sync::broadcast::Sender<super::events::Event>,
    /// Kxi-1/Kxi-2 state of a gateway node.
    pub kxi: super::kxi::KxiState,
    /// Relays this KM reserved its part of the path for, waiting for their keys.
    pub holds: super::reserve::Holds,
    /// ETSI 014 requests in progress, for admission control.
    pub admission: super::admission::RequestAdmission,
    /// Key streams served to this node's SAEs (ETSI GS QKD 015 applications).
    pub applications: super::applications::Applications,
}

impl Agent {
    /// Opens the store and prepares the agent (no sockets yet).
    pub fn new(config: KmConfig) -> Result<Arc<Self>, AgentError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| AgentError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let store = KeyStore::open(&config.data_dir.join("keys.redb"))?;
        let peers = tls::https_client(&config.tls, Duration::from_secs(10))?;
        let mut foreign = BTreeMap::new();
        for peer in &config.tls.peer_cas {
            foreign.insert(
                peer.domain.clone(),
                tls::https_client_to_peer(&config.tls, &peer.domain, Duration::from_secs(10))?,
            );
        }
        let links = config
            .links
            .iter()
            .map(|link| {
                let settings = LinkSettings {
                    rate: link.rate_spec(),
                    admin: LinkState::Up,
                    capacity_blocks: link.capacity_blocks,
                };
                let (control, _) =
                    watch::channel(settings.rate.condition(LinkState::Up, link.capacity_blocks));
                (
                    link.id.clone(),
                    LinkRuntime {
                        config: link.clone(),
                        settings: Mutex::new(settings),
                        control,
                        consumed_blocks: AtomicU64::new(0),
                        signal: std::sync::atomic::AtomicBool::new(true),
                        heard: Mutex::new((tokio::time::Instant::now(), false)),
                        epoch: Mutex::new(0),
                    },
                )
            })
            .collect();
        let settings = Settings {
            saes: config.saes.clone(),
            foreign_saes: BTreeMap::new(),
            routes: config
                .routes
                .iter()
                .map(|(dest, hop)| (dest.clone(), vec![(hop.clone(), 1)]))
                .collect(),
            etsi014: config.etsi014.clone(),
            low_key_threshold_percent: 10,
        };
        let (events, _) = tokio::sync::broadcast::channel(1024);
        Ok(Arc::new(Self {
            settings: RwLock::new(settings),
            store,
            peers,
            foreign,
            links,
            counters: Counters::default(),
            metrics: super::metrics::KmMetrics::new(),
            events,
            kxi: Default::default(),
            holds: Default::default(),
            admission: super::admission::RequestAdmission::new(&config.limits),
            applications: Default::default(),
            config,
        }))
    }

    /// The HTTPS client for the peer KM of `link`: this domain's, or the one trusting only
    /// the peer domain's CA across a Qx link.
    pub fn client_for(&self, link: &LinkConfig) -> &reqwest::Client {
        match &link.peer_domain {
            Some(domain) => self.foreign.get(domain).unwrap_or(&self.peers),
            None => &self.peers,
        }
    }

    /// The configuration of link `id`.
    pub fn link_config(&self, id: &str) -> Option<&LinkConfig> {
        self.links.get(id).map(|l| &l.config)
    }

    /// Every link, by id.
    pub fn links(&self) -> impl Iterator<Item = &LinkRuntime> {
        self.links.values()
    }

    /// Link `id`'s run-time state.
    pub fn link(&self, id: &str) -> Option<&LinkRuntime> {
        self.links.get(id)
    }

    /// Puts new settings of link `id` into effect; returns its new condition.
    pub fn set_link(&self, id: &str, settings: LinkSettings) -> Option<LinkCondition> {
        let link = self.links.get(id)?;
        *link.settings.lock().expect("link settings") = settings;
        self.update_condition(id)
    }

    /// Records whether link `id`'s module hears its peer; loss of signal takes the link down.
    pub fn set_signal(&self, id: &str, present: bool) -> Option<LinkCondition> {
        let link = self.links.get(id)?;
        if link.signal.swap(present, Ordering::Relaxed) == present {
            return Some(link.condition());
        }
        tracing::warn!(link = id, present, "signal of the QKD link's peer module");
        self.update_condition(id)
    }

    /// Records that the peer transmitter of link `id` was heard now (receiver end).
    pub fn heard_peer(&self, id: &str) {
        if let Some(link) = self.links.get(id) {
            *link.heard.lock().expect("heard") = (tokio::time::Instant::now(), true);
        }
    }

    /// Recomputes link `id`'s condition from its settings and signal, and publishes it.
    fn update_condition(&self, id: &str) -> Option<LinkCondition> {
        let link = self.links.get(id)?;
        // computed and published under the settings lock: concurrent changes of the settings
        // and of the signal publish in the order they happen
        let guard = link.settings.lock().expect("link settings");
        let settings = guard.clone();
        let state = if link.signal.load(Ordering::Relaxed) {
            settings.admin
        } else {
            LinkState::Down
        };
        let condition = settings.rate.condition(state, settings.capacity_blocks);
        let previous = link.control.send_replace(condition);
        drop(guard);
        if previous.state != condition.state {
            tracing::info!(link = id, from = ?previous.state, to = ?condition.state, "link state changed");
            self.emit(super::events::Event::LinkState {
                link: id.to_owned(),
                state: condition.state,
                previous: previous.state,
            });
        }
        Some(condition)
    }

    /// Sets link `id`'s operational state, keeping its other settings.
    pub fn set_link_state(&self, id: &str, state: LinkState) -> Option<LinkCondition> {
        let mut settings = self.links.get(id)?.settings();
        settings.admin = state;
        self.set_link(id, settings)
    }

    /// Counts `blocks` consumed on link `id`.
    pub fn count_consumed(&self, id: &str, blocks: usize) {
        if let Some(link) = self.links.get(id) {
            link.consumed_blocks
                .fetch_add(blocks as u64, Ordering::Relaxed);
        }
    }

    /// The agent's current settings.
    pub fn settings(&self) -> Settings {
        self.settings.read().expect("settings").clone()
    }

    /// Replaces the agent's settings.
    pub fn set_settings(&self, settings: Settings) {
        *self.settings.write().expect("settings") = settings;
    }

    /// The current ETSI GS QKD 014 limits.
    pub fn limits(&self) -> Etsi014Limits {
        self.settings.read().expect("settings").etsi014.clone()
    }

    /// The node whose KM serves SAE `sae`.
    pub fn sae_node(&self, sae: &str) -> Option<String> {
        self.settings
            .read()
            .expect("settings")
            .saes
            .get(sae)
            .cloned()
    }

    /// Whether `sae` is served by this KM.
    pub fn is_local_sae(&self, sae: &str) -> bool {
        let settings = self.settings.read().expect("settings");
        settings.saes.get(sae) == Some(&self.config.node)
            && !settings.foreign_saes.contains_key(sae)
    }

    /// The QKDN of `sae` when it is registered as another QKDN's SAE.
    pub fn sae_domain(&self, sae: &str) -> Option<String> {
        self.settings
            .read()
            .expect("settings")
            .foreign_saes
            .get(sae)
            .cloned()
    }

    /// The link of the first hop towards node `dest`: the primary next hop of a configured
    /// route, or the direct link.
    pub fn next_hop(&self, dest: &str) -> Option<LinkConfig> {
        self.next_hops(dest)
            .into_iter()
            .next()
            .map(|(link, _)| link)
    }

    /// The links of every next hop towards node `dest` with their weights: a configured
    /// route (primary first), or the direct link.
    pub fn next_hops(&self, dest: &str) -> Vec<(LinkConfig, u32)> {
        let settings = self.settings.read().expect("settings");
        match settings.routes.get(dest) {
            Some(hops) => hops
                .iter()
                .filter_map(|(hop, weight)| self.config.link_to(hop).map(|l| (l.clone(), *weight)))
                .collect(),
            None => self
                .config
                .link_to(dest)
                .map(|l| vec![(l.clone(), 1)])
                .unwrap_or_default(),
        }
    }

    /// Publishes an event (notifications, logs).
    pub fn emit(&self, event: super::events::Event) {
        let _ = self.events.send(event);
    }

    /// Every link's figures for the metrics: rate, QBER, state, pool fill.
    fn link_figures(&self) -> Vec<super::metrics::LinkFigure> {
        self.links()
            .map(|link| {
                let c = &link.config;
                let condition = link.condition();
                let held = [c.end.owner(), 1 - c.end.owner()]
                    .into_iter()
                    .filter_map(|owner| self.store.available(&c.id, owner).ok())
                    .sum::<usize>()
                    + self.store.pending(&c.id).unwrap_or(0);
                super::metrics::LinkFigure {
                    link: c.id.clone(),
                    peer: c.peer.clone(),
                    rate_bps: condition.rate_bps,
                    qber: condition.qber,
                    state: condition.state,
                    fill_ratio: held as f64 / condition.capacity_blocks.max(1) as f64,
                }
            })
            .collect()
    }

    /// Subscribes to the agent's events.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<super::events::Event> {
        self.events.subscribe()
    }

    /// Serves the agent until the process is asked to stop.
    pub async fn run(self: Arc<Self>) -> Result<(), AgentError> {
        let server_tls = tls::server_config(&self.config.tls)?;
        let issuers = tls::Issuers::load(&self.config.tls)?;
        let etsi = bind(self.config.etsi014_listen).await?;
        let kma = bind(self.config.kma_listen).await?;
        let mut listening = vec![self.config.etsi014_listen, self.config.kma_listen];
        let mut tasks = Vec::new();
        for link in self.links.values() {
            let agent = self.clone();
            let id = link.config.id.clone();
            let signal: crate::quantum::SignalReport = Arc::new(move |present| {
                agent.set_signal(&id, present);
            });
            if link.config.end == LinkEnd::Tx {
                let module: Box<dyn QkdModule> = Box::new(EmulatedTransmitter {
                    link: link.config.id.clone(),
                    peer_kma: link.config.peer_kma.clone(),
                    client: self.client_for(&link.config).clone(),
                });
                tasks.push(module.start(self.store.clone(), link.control.subscribe(), signal));
            } else {
                tasks.push(tokio::spawn(watch_transmitter(
                    self.clone(),
                    link.config.id.clone(),
                    signal,
                )));
            }
        }
        let limits = &self.config.limits;
        let mut caps = vec![
            (
                "etsi014",
                limits.etsi014_listener.connections.max_connections,
            ),
            ("kma", limits.kma_listener.connections.max_connections),
        ];
        if let Some(netconf) = &self.config.netconf {
            // connections logging in, and one per session
            caps.push((
                "netconf",
                netconf.limits.connections.max_connections + netconf.limits.max_sessions,
            ));
        }
        crate::conn_limit::check_fd_budget(&caps);
        tasks.push(tokio::spawn(crate::https::serve(
            etsi,
            server_tls.clone(),
            issuers.clone(),
            super::ksa::router(self.clone()),
            limits.etsi014_listener.clone(),
            crate::https::ErrorStyle::Etsi014,
        )));
        // the KMA's own errors are `{"message": ...}` bodies: the ETSI shape fits them
        tasks.push(tokio::spawn(crate::https::serve(
            kma,
            server_tls,
            issuers,
            super::kma::router(self.clone()).merge(super::kxi::router(self.clone())),
            limits.kma_listener.clone(),
            crate::https::ErrorStyle::Etsi014,
        )));
        tasks.push(tokio::spawn(super::expiry::sweep(self.clone())));
        tasks.push(tokio::spawn(super::events::watch_key_levels(self.clone())));
        if let Some(netconf) = self.config.netconf.clone() {
            let northbound = Arc::new(super::northbound::Northbound::new(self.clone()));
            let server = crate::netconf::server::NetconfServer::new(netconf, northbound)?;
            let listener = TcpListener::bind(server_listen(&server))
                .await
                .map_err(|source| AgentError::Bind {
                    addr: server_listen(&server),
                    source,
                })?;
            listening.push(server_listen(&server));
            tasks.push(server.start_on(listener)?);
        }
        if let Some(addr) = self.config.metrics_listen {
            let listener = bind(addr).await?;
            let agent = self.clone();
            let exposition =
                super::metrics::exposition(&self.metrics, Box::new(move || agent.link_figures()));
            listening.push(addr);
            tasks.push(tokio::spawn(async move {
                if let Err(error) = crate::metrics::serve(listener, Arc::new(exposition)).await {
                    tracing::error!(%error, "metrics listener failed");
                }
            }));
        }
        tracing::info!(node = %self.config.node, etsi014 = %self.config.etsi014_listen, kma = %self.config.kma_listen, "KM agent ready");
        // every listener is bound and served: whoever started the agent may use it
        crate::readiness::notify(&listening)?;
        shutdown_signal().await;
        tracing::info!(node = %self.config.node, "KM agent stopping");
        for task in tasks {
            task.abort();
        }
        Ok(())
    }
}

/// Receiver end of a link: loss of signal when the peer transmitter has not been heard for
/// [`LOSS_OF_SIGNAL_AFTER`](crate::quantum::emulated::LOSS_OF_SIGNAL_AFTER).
async fn watch_transmitter(agent: Arc<Agent>, id: String, signal: crate::quantum::SignalReport) {
    let mut present = true;
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    loop {
        ticker.tick().await;
        let Some(link) = agent.link(&id) else {
            return;
        };
        let (heard, ever) = *link.heard.lock().expect("heard");
        let now_present = crate::quantum::emulated::signal_present(heard, ever);
        if now_present != present {
            present = now_present;
            signal(present);
        }
    }
}

fn server_listen(server: &crate::netconf::server::NetconfServer) -> std::net::SocketAddr {
    server.listen()
}

async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, AgentError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AgentError::Bind { addr, source })
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
