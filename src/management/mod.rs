//! The management layer: the QKDN manager of one domain (`qkdni manager --config <file>`),
//! with the roles Y.3818 names for fault management of interworking key relay (9.1 item 3):
//!
//! - [`kmlm`] — key management layer manager: follows the KMs' NETCONF notifications and
//!   reports relay failures to the XLMO;
//! - [`qlm`] — quantum layer manager: reads the QKD links' state and key rates;
//! - [`xlmo`] — cross-layer management orchestrator: shares interworking faults and report
//!   packs (performance and security) with the peer domain's XLMO over [`mxi`];
//! - [`qclm`] — QKDN control layer manager: decides on diagnoses, asking the domain's
//!   controller to check and reroute;
//! - [`mxi`] — the Mxi server and client (HTTPS, mutual TLS), messages in [`messages`]
//!   (JSON Schemas in `schemas/mxi/v1/`, see [`schemas`]);
//! - [`rest`] — the manager's REST API (health, events, latest reports);
//! - [`events`] — the event log and security counters; [`config`] — the configuration.
//!
//! Procedure (domains A and B): a KM of A emits `relay-failure` toward a node outside A →
//! KMLM-A (`kmlm-relay-failure`) → XLMO-A sends a fault report to XLMO-B
//! (`xlmo-fault-sent`) and gives QCLM-A a diagnosis (`qclm-diagnosis`); XLMO-B receives it
//! (`xlmo-fault-received`) and gives QCLM-B a diagnosis; each QCLM asks its controller
//! (`qclm-decision`). Every `report_seconds` each XLMO sends a report pack
//! (`xlmo-reports-sent`, `xlmo-reports-received`).

pub mod config;
pub mod events;
pub mod kmlm;
pub mod messages;
pub mod mxi;
pub mod qclm;
pub mod qlm;
pub mod rest;
pub mod schemas;
pub mod xlmo;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::tls::TlsError;
use config::ManagerConfig;
use events::{EventLog, SecurityCounters};
use kmlm::Kmlm;
use qclm::Qclm;
use qlm::Qlm;
use xlmo::Xlmo;

/// Errors that stop a manager.
#[derive(Debug, thiserror::Error)]
pub enum ManagementError {
    #[error("configuration: {0}")]
    Config(#[from] crate::config_file::ConfigError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("southbound: {0}")]
    HostKeys(#[from] crate::netconf::known_hosts::HostKeyError),
    #[error(transparent)]
    Readiness(#[from] crate::readiness::ReadinessError),
}

/// The QKDN manager of one domain: its roles, event log and security counters.
pub struct Manager {
    /// The configuration.
    pub config: ManagerConfig,
    /// What happened, for the REST API.
    pub events: EventLog,
    /// Security counts for the report packs.
    pub security: SecurityCounters,
    /// Key management layer manager.
    pub kmlm: Kmlm,
    /// Quantum layer manager.
    pub qlm: Qlm,
    /// Cross-layer management orchestrator.
    pub xlmo: Xlmo,
    /// QKDN control layer manager.
    pub qclm: Qclm,
    /// Prometheus metrics.
    pub metrics: ManagerMetrics,
}

/// The manager's Prometheus metrics: the Mxi messages of the peer domain's manager.
#[derive(Default)]
pub struct ManagerMetrics {
    /// Mxi requests answered, by method, route and HTTP status.
    pub mxi: crate::metrics::Counters,
}

impl ManagerMetrics {
    fn exposition(&self) -> crate::metrics::Exposition {
        let mut registry = prometheus_client::registry::Registry::with_prefix("qkdni_manager");
        registry.register(
            "mxi_requests",
            "Mxi requests of the peer domain's manager answered, by method, route and HTTP status",
            self.mxi.clone(),
        );
        crate::metrics::Exposition {
            registry,
            refresh: Box::new(|| {}),
        }
    }
}

impl Manager {
    /// A manager of `config` (validated here); loads the TLS material of its clients.
    pub fn new(config: ManagerConfig) -> Result<Arc<Self>, ManagementError> {
        config.validate()?;
        let agents: Vec<_> = config
            .agents
            .iter()
            .map(|a| (a.node.clone(), a.netconf))
            .collect();
        // the agents' host keys are checked against the known hosts file, read here once
        // so that a missing or bad file stops the manager at start
        let options = config.southbound.client_options(Duration::from_secs(10))?;
        // a reading must not outlast the report period by much
        let read_timeout = Duration::from_secs(config.report_seconds.clamp(2, 10));
        let mut read_options = options.clone();
        read_options.timeout = read_timeout;
        read_options.connect_timeout = read_options.connect_timeout.min(read_timeout);
        Ok(Arc::new(Self {
            kmlm: Kmlm::new(agents.clone(), options),
            qlm: Qlm::new(agents, read_options),
            xlmo: Xlmo::new(&config)?,
            qclm: Qclm::new(&config)?,
            events: EventLog::default(),
            security: SecurityCounters::default(),
            metrics: ManagerMetrics::default(),
            config,
        }))
    }

    /// Starts the KMLM's watchers and the XLMO's report loop.
    pub fn spawn_tasks(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        let mut tasks = Kmlm::spawn_watchers(self);
        tasks.push(tokio::spawn(Xlmo::report_loop(self.clone())));
        tasks
    }
}

/// Runs a manager until `shutdown` completes: binds the REST and Mxi listeners, serves
/// both and runs the KMLM, QLM and XLMO tasks.
pub async fn run(
    config: ManagerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ManagementError> {
    let manager = Manager::new(config)?;
    let mxi = TcpListener::bind(manager.config.mxi_listen).await?;
    let rest = TcpListener::bind(manager.config.rest_listen).await?;
    let mut listening = vec![mxi.local_addr()?, rest.local_addr()?];
    tracing::info!(domain = %manager.config.domain, peer = %manager.config.peer.domain, "QKDN manager starting");
    let mut servers = vec![
        tokio::spawn(mxi::serve(manager.clone(), mxi)),
        tokio::spawn(rest::serve(manager.clone(), rest)),
    ];
    if let Some(metrics) = crate::metrics::bind(manager.config.metrics_listen).await? {
        listening.push(metrics.local_addr()?);
        let exposition = Arc::new(manager.metrics.exposition());
        servers.push(tokio::spawn(async move {
            crate::metrics::serve(metrics, exposition)
                .await
                .map_err(ManagementError::Io)
        }));
    }
    let tasks = manager.spawn_tasks();
    // both listeners are bound; the servers load this TLS material (again) before they
    // answer: a bad one stops the manager before it reports readiness
    crate::tls::server_config(&manager.config.tls)?;
    crate::tls::Issuers::load(&manager.config.tls)?;
    crate::readiness::notify(&listening)?;
    let result = tokio::select! {
        _ = shutdown => Ok(()),
        // a server returns only when it cannot start
        (ended, _, _) = futures::future::select_all(servers.iter_mut()) => match ended {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error),
            Err(join) => Err(ManagementError::Io(std::io::Error::other(join))),
        },
    };
    tracing::info!("QKDN manager stopping");
    for server in servers {
        server.abort();
    }
    for task in tasks {
        task.abort();
    }
    result
}
