//! The QKDN manager of one domain: its roles (KMLM, QLM, XLMO, QCLM), event log, security
//! counters and metrics, and its start (listeners, servers, tasks, readiness).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::config::ManagerConfig;
use super::events::{EventLog, SecurityCounters};
use super::kmlm::Kmlm;
use super::qclm::Qclm;
use super::qlm::Qlm;
use super::xlmo::Xlmo;

use super::{mxi, rest, ManagementError};

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
    /// The QCLM's reading of the controller's figures and refusals for the report packs.
    pub control_layer: super::control_layer::ControlLayerReader,
    /// Prometheus metrics.
    pub metrics: ManagerMetrics,
    /// Accounting: the KMs' usage and its reconciliation with the peer domain.
    pub accounting: super::accounting::Accounting,
    /// The durable, hash-chained audit log ([`crate::audit`]).
    pub audit: crate::audit::AuditLog,
    /// What operators configure at run time (NETCONF) and who changed what.
    pub configuration: super::northbound::Settings,
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
        // the Mxi signing key and evidence store, before the Mxi client and server exist
        crate::nonrepudiation::install(&config.tls, &config.nonrepudiation, None).map_err(|e| {
            crate::config_file::ConfigError::Invalid(format!("non-repudiation: {e}"))
        })?;
        // a manager has no data directory: `ManagerConfig::load` puts its audit log beside
        // the configuration file; one built in code without `audit.dir` writes none
        let audit = match &config.audit.dir {
            Some(dir) => crate::audit::AuditLog::for_daemon(
                dir,
                format!("manager {}", config.domain),
                &config.audit,
            )
            .map_err(|e| crate::config_file::ConfigError::Invalid(format!("audit log: {e}")))?,
            None => crate::audit::AuditLog::disabled(),
        };
        let mut read_options = options.clone();
        read_options.timeout = read_timeout;
        read_options.connect_timeout = read_options.connect_timeout.min(read_timeout);
        Ok(Arc::new(Self {
            kmlm: Kmlm::new(agents.clone(), options),
            accounting: super::accounting::Accounting::new(agents.clone(), read_options.clone()),
            qlm: Qlm::new(agents, read_options),
            xlmo: Xlmo::new(&config)?,
            qclm: Qclm::new(&config)?,
            control_layer: super::control_layer::ControlLayerReader::new(&config, read_timeout)?,
            events: EventLog::with_audit(audit.clone()),
            audit,
            security: SecurityCounters::with_refusals(&config.refusals),
            metrics: ManagerMetrics::default(),
            configuration: super::northbound::Settings::new(&config),
            config,
        }))
    }

    /// Starts the KMLM's watchers and the XLMO's report loop.
    pub fn spawn_tasks(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        let mut tasks = Kmlm::spawn_watchers(self);
        tasks.push(tokio::spawn(Xlmo::report_loop(self.clone())));
        tasks.push(tokio::spawn(refusal_alarms(self.clone())));
        tasks.push(tokio::spawn(super::accounting::Accounting::run(
            self.clone(),
        )));
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
        let mut exposition = manager.metrics.exposition();
        manager.security.refusals.register(&mut exposition.registry);
        let exposition = Arc::new(exposition);
        servers.push(tokio::spawn(async move {
            crate::metrics::serve(metrics, exposition)
                .await
                .map_err(ManagementError::Io)
        }));
    }
    if let Some((address, server)) = super::northbound::start(&manager).await? {
        listening.push(address);
        servers.push(tokio::spawn(async move {
            // the server runs until aborted
            let _ = server.await;
            Ok(())
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

/// Records the manager's own refusal alarms as `refusal-alarm` events.
async fn refusal_alarms(manager: Arc<Manager>) {
    let mut alarms = manager.security.refusals.alarms();
    loop {
        match alarms.recv().await {
            Ok(alarm) => manager.events.record(
                super::events::REFUSAL_ALARM,
                format!(
                    "manager: {} refusals at {} within a minute (threshold {}), the last from {} ({}): {}",
                    alarm.per_minute,
                    alarm.point,
                    alarm.threshold,
                    alarm.last.source.as_deref().unwrap_or("?"),
                    alarm.last.identity.as_deref().unwrap_or("unidentified"),
                    alarm.last.reason
                ),
                super::events::Refs::default(),
            ),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
        }
    }
}
