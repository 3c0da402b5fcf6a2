//! The KM agent daemon: one per QKD node.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use super::config::{KmConfig, LinkConfig, LinkEnd};
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
    #[error("creating {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Run-time state of one QKD link.
pub struct LinkRuntime {
    pub config: LinkConfig,
    pub rate: RateSpec,
    control: watch::Sender<LinkCondition>,
}

impl LinkRuntime {
    /// The link's current condition.
    pub fn condition(&self) -> LinkCondition {
        *self.control.borrow()
    }
}

/// The shared state of a KM agent.
pub struct Agent {
    pub config: KmConfig,
    pub store: KeyStore,
    /// HTTPS client with this KM's identity, for peer KMs.
    pub peers: reqwest::Client,
    links: HashMap<String, LinkRuntime>,
    routes: RwLock<BTreeMap<String, String>>,
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
        let links = config
            .links
            .iter()
            .map(|link| {
                let rate = link.rate_spec();
                let (control, _) = watch::channel(rate.condition(LinkState::Up));
                (
                    link.id.clone(),
                    LinkRuntime {
                        config: link.clone(),
                        rate,
                        control,
                    },
                )
            })
            .collect();
        Ok(Arc::new(Self {
            routes: RwLock::new(config.routes.clone()),
            config,
            store,
            peers,
            links,
        }))
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

    /// Sets link `id`'s state; returns its new condition.
    pub fn set_link_state(&self, id: &str, state: LinkState) -> Option<LinkCondition> {
        let link = self.links.get(id)?;
        let condition = link.rate.condition(state);
        link.control.send_replace(condition);
        tracing::info!(link = id, ?state, "link state changed");
        Some(condition)
    }

    /// The node whose KM serves SAE `sae`.
    pub fn sae_node(&self, sae: &str) -> Option<&str> {
        self.config.saes.get(sae).map(String::as_str)
    }

    /// Whether `sae` is served by this KM.
    pub fn is_local_sae(&self, sae: &str) -> bool {
        self.sae_node(sae) == Some(self.config.node.as_str())
    }

    /// The link of the first hop towards node `dest`: a configured route, or the direct link.
    pub fn next_hop(&self, dest: &str) -> Option<LinkConfig> {
        let routes = self.routes.read().expect("routes lock");
        let hop = routes.get(dest).map(String::as_str).unwrap_or(dest);
        self.config.link_to(hop).cloned()
    }

    /// Serves the agent until the process is asked to stop.
    pub async fn run(self: Arc<Self>) -> Result<(), AgentError> {
        let server_tls = tls::server_config(&self.config.tls)?;
        let etsi = bind(self.config.etsi014_listen).await?;
        let kma = bind(self.config.kma_listen).await?;
        let mut tasks = Vec::new();
        for link in self.links.values() {
            if link.config.end == LinkEnd::Tx {
                let module: Box<dyn QkdModule> = Box::new(EmulatedTransmitter {
                    link: link.config.id.clone(),
                    peer_kma: link.config.peer_kma.clone(),
                    client: self.peers.clone(),
                    capacity_blocks: link.config.capacity_blocks,
                });
                tasks.push(module.start(self.store.clone(), link.control.subscribe()));
            }
        }
        tasks.push(tokio::spawn(tls::serve_https(
            etsi,
            server_tls.clone(),
            super::ksa::router(self.clone()),
        )));
        tasks.push(tokio::spawn(tls::serve_https(
            kma,
            server_tls,
            super::kma::router(self.clone()),
        )));
        tracing::info!(node = %self.config.node, etsi014 = %self.config.etsi014_listen, kma = %self.config.kma_listen, "KM agent ready");
        shutdown_signal().await;
        tracing::info!(node = %self.config.node, "KM agent stopping");
        for task in tasks {
            task.abort();
        }
        Ok(())
    }
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
