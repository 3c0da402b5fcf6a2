//! The shared state of a KM agent (one per QKD node): its links, settings, counters and the
//! state of each reference point; every part of the KM holds it. The daemon's start is
//! [`crate::km::instance`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use crate::km::config::{Etsi014Limits, KmConfig, LinkConfig};
use crate::km::store::{KeyStore, StoreError};
use crate::quantum::{LinkCondition, LinkState, RateSpec};
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
    #[error("local control: {0}")]
    LocalControl(String),
    #[error("audit log: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error(transparent)]
    Accounting(#[from] crate::km::accounting::AccountingError),
    #[error(transparent)]
    QosStore(#[from] crate::km::qos::store::QosStoreError),
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

    /// When the peer transmitter was last heard (receiver end), and whether it ever was.
    pub fn heard(&self) -> (tokio::time::Instant, bool) {
        *self.heard.lock().expect("heard")
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
    /// Keys sent and received over each transfer link (an IWN's KM).
    transfers: Mutex<BTreeMap<String, (u64, u64)>>,
}

/// Use of one (master SAE, slave SAE) pair at the master's KM.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PairUse {
    pub requests: u64,
    pub keys: u64,
}

impl Counters {
    /// Keys sent and received over transfer link `link`.
    pub fn transferred(&self, link: &str) -> (u64, u64) {
        let transfers = self.transfers.lock().unwrap_or_else(|p| p.into_inner());
        transfers.get(link).copied().unwrap_or_default()
    }

    fn count_transfer(&self, transfer: &crate::km::events::KeyTransfer) {
        use crate::km::events::{TransferRole, TransferState};
        if transfer.state != TransferState::Transferred {
            return;
        }
        let mut transfers = self.transfers.lock().unwrap_or_else(|p| p.into_inner());
        let entry = transfers.entry(transfer.link.clone()).or_default();
        let keys = transfer.key_ids.len() as u64;
        match transfer.role {
            TransferRole::Sender => entry.0 += keys,
            TransferRole::Receiver => entry.1 += keys,
        }
    }

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
    /// Usage records per SAE and peer domain ([`crate::km::accounting`]).
    pub accounting: crate::km::accounting::Accounting,
    /// Prometheus metrics (requests, keys, relays; links at each scrape).
    pub metrics: crate::km::metrics::KmMetrics,
    events: tokio::sync::broadcast::Sender<crate::km::events::Event>,
    /// Kxi-1/Kxi-2 state of a gateway node.
    pub kxi: crate::km::kxi::state::KxiState,
    /// Relays this KM reserved its part of the path for, waiting for their keys.
    pub holds: crate::km::kma::reserve::plan::Holds,
    /// ETSI 014 requests in progress, for admission control.
    pub admission: crate::km::ksa::admission::RequestAdmission,
    /// Key streams served to this node's SAEs (ETSI GS QKD 015 applications).
    pub applications: crate::km::ksa::applications::Applications,
    /// Refusals at the KM's reference points (ETSI 014, KMA, Kxi, NETCONF), with sources.
    pub refusals: Arc<crate::refusals::Refusals>,
    /// QoS classes: the order in which link key goes to requests, and quotas.
    pub qos: Arc<crate::km::qos::Qos>,
    /// The node's local controller in a distributed QKDN (link-state routing), once attached.
    local_control: std::sync::OnceLock<Arc<crate::control::link_state::LinkState>>,
    /// A distributed QKDN's gateway node: its interworking function, once attached.
    gateway: std::sync::OnceLock<Arc<crate::control::gateway::Gateway>>,
    /// The durable, hash-chained audit log ([`crate::audit`]).
    pub audit: crate::audit::AuditLog,
}

impl Agent {
    /// Opens the store and prepares the agent (no sockets yet).
    pub fn new(config: KmConfig) -> Result<Arc<Self>, AgentError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| AgentError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let store = KeyStore::open_with(&config.data_dir.join("keys.redb"), &config.key_store)?;
        let accounting = crate::km::accounting::Accounting::open(
            &config.data_dir.join("accounting.redb"),
            config.accounting.clone(),
        )?;
        let peers = tls::https_client(&config.tls, Duration::from_secs(10))?;
        // the Kxi/Cxi signing key and evidence store, before any client or server exists
        crate::nonrepudiation::install(
            &config.tls,
            &config.nonrepudiation,
            Some(&config.data_dir.join(crate::nonrepudiation::evidence::DIR)),
        )
        .map_err(|e| AgentError::Tls(TlsError::Verifier(format!("non-repudiation: {e}"))))?;
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
            .filter(|link| link.kind.is_qkd())
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
        let audit = crate::audit::AuditLog::for_daemon(
            &config.data_dir,
            format!("km {}/{}", config.domain, config.node),
            &config.audit,
        )?;
        Ok(Arc::new(Self {
            audit,
            settings: RwLock::new(settings),
            store,
            peers,
            foreign,
            links,
            counters: Counters::default(),
            accounting,
            metrics: crate::km::metrics::KmMetrics::new(),
            events,
            kxi: Default::default(),
            holds: Default::default(),
            admission: crate::km::ksa::admission::RequestAdmission::new(&config.limits),
            applications: Default::default(),
            refusals: Arc::new(crate::refusals::Refusals::new(config.refusals.clone())),
            qos: Arc::new(crate::km::qos::Qos::open(
                &config.data_dir.join("qos.redb"),
            )?),
            local_control: std::sync::OnceLock::new(),
            gateway: std::sync::OnceLock::new(),
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

    /// The configuration of link `id`: a QKD link or a transfer link.
    pub fn link_config(&self, id: &str) -> Option<&LinkConfig> {
        match self.links.get(id) {
            Some(l) => Some(&l.config),
            None => self.transfer_links().find(|l| l.id == id),
        }
    }

    /// Every QKD link, by id.
    pub fn links(&self) -> impl Iterator<Item = &LinkRuntime> {
        self.links.values()
    }

    /// The transfer links of an interworking node's KM (Kxi-1' to the KM of the other QKDN
    /// in the same node).
    pub fn transfer_links(&self) -> impl Iterator<Item = &LinkConfig> {
        self.config
            .links
            .iter()
            .filter(|l| l.kind == crate::km::config::LinkKind::Transfer)
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
            self.emit(crate::km::events::Event::LinkState {
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

    /// The node whose KM serves SAE `sae`: configured, or advertised in a distributed
    /// QKDN's link-state database.
    pub fn sae_node(&self, sae: &str) -> Option<String> {
        let configured = self
            .settings
            .read()
            .expect("settings")
            .saes
            .get(sae)
            .cloned();
        configured
            .or_else(|| self.gateway()?.sae_node(sae))
            .or_else(|| self.local_control()?.sae_node(sae))
    }

    /// Waits up to `timeout` until `holds` holds, as the node's link state learns more (a
    /// distributed QKDN); at once without local control. Returns whether it holds.
    pub async fn learned(&self, timeout: Duration, holds: impl Fn(&Self) -> bool) -> bool {
        let Some(control) = self.local_control() else {
            return holds(self);
        };
        let mut changes = control.changes();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if holds(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .map_or(true, |r| r.is_err())
            {
                return holds(self);
            }
        }
    }

    /// The interworking function of a distributed QKDN's gateway node, if this is one.
    pub fn gateway(&self) -> Option<&Arc<crate::control::gateway::Gateway>> {
        self.gateway.get()
    }

    /// Attaches the gateway node's interworking function (once).
    pub fn attach_gateway(&self, gateway: Arc<crate::control::gateway::Gateway>) {
        let _ = self.gateway.set(gateway);
    }

    /// The node's local controller (distributed control), if it runs one.
    pub fn local_control(&self) -> Option<&Arc<crate::control::link_state::LinkState>> {
        self.local_control.get()
    }

    /// Attaches the node's local controller (once).
    pub fn attach_local_control(&self, control: Arc<crate::control::link_state::LinkState>) {
        let _ = self.local_control.set(control);
    }

    /// Whether `sae` is served by this KM.
    pub fn is_local_sae(&self, sae: &str) -> bool {
        let settings = self.settings.read().expect("settings");
        settings.saes.get(sae) == Some(&self.config.node)
            && !settings.foreign_saes.contains_key(sae)
    }

    /// The QKDN of `sae` when it is registered as another QKDN's SAE, or advertised as one
    /// by a gateway node of a distributed QKDN.
    pub fn sae_domain(&self, sae: &str) -> Option<String> {
        let configured = self
            .settings
            .read()
            .expect("settings")
            .foreign_saes
            .get(sae)
            .cloned();
        configured
            .or_else(|| self.gateway()?.sae_domain(sae))
            .or_else(|| self.local_control()?.sae_domain(sae))
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
    /// route (primary first), the route computed by the node's local controller (distributed
    /// control; a configured route, like a router's static route, takes precedence), or the
    /// direct link.
    pub fn next_hops(&self, dest: &str) -> Vec<(LinkConfig, u32)> {
        let settings = self.settings.read().expect("settings");
        let computed = match settings.routes.contains_key(dest) {
            true => None,
            false => self
                .gateway()
                .and_then(|g| g.route(dest))
                .or_else(|| self.local_control().and_then(|c| c.next_hops(dest))),
        };
        match settings.routes.get(dest).or(computed.as_ref()) {
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
    pub fn emit(&self, event: crate::km::events::Event) {
        if let crate::km::events::Event::KeyTransfer(transfer) = &event {
            self.counters.count_transfer(transfer);
            crate::km::accounting::transferred(self, transfer);
        }
        crate::audit::hooks::km_event(&self.audit, &event);
        let _ = self.events.send(event);
    }

    /// Subscribes to the agent's events.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<crate::km::events::Event> {
        self.events.subscribe()
    }
}
