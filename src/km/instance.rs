//! A KM agent's start: its QKD modules, its listeners (ETSI 014, KMA with Kxi, NETCONF,
//! metrics) and its background tasks, served until the process is asked to stop.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::km::agent::{Agent, AgentError};
use crate::km::config::LinkEnd;
use crate::quantum::emulated::EmulatedTransmitter;
use crate::quantum::QkdModule;
use crate::tls;

/// Serves the agent until the process is asked to stop.
pub async fn run(agent: Arc<Agent>) -> Result<(), AgentError> {
    let server_tls = tls::server_config(&agent.config.tls)?;
    let issuers = tls::Issuers::load(&agent.config.tls)?;
    let etsi = bind(agent.config.etsi014_listen).await?;
    let kma = bind(agent.config.kma_listen).await?;
    let mut listening = vec![agent.config.etsi014_listen, agent.config.kma_listen];
    let mut tasks = Vec::new();
    for link in agent.links() {
        let reporter = agent.clone();
        let id = link.config.id.clone();
        let signal: crate::quantum::SignalReport = Arc::new(move |present| {
            reporter.set_signal(&id, present);
        });
        if link.config.end == LinkEnd::Tx {
            let module: Box<dyn QkdModule> = Box::new(EmulatedTransmitter {
                link: link.config.id.clone(),
                peer_kma: link.config.peer_kma.clone(),
                client: agent.client_for(&link.config).clone(),
            });
            tasks.push(module.start(Arc::new(agent.store.clone()), link.watch(), signal));
        } else {
            tasks.push(tokio::spawn(watch_transmitter(
                agent.clone(),
                link.config.id.clone(),
                signal,
            )));
        }
    }
    let limits = &agent.config.limits;
    let mut caps = vec![
        (
            "etsi014",
            limits.etsi014_listener.connections.max_connections,
        ),
        ("kma", limits.kma_listener.connections.max_connections),
    ];
    if let Some(netconf) = &agent.config.netconf {
        // connections logging in, and one per session
        caps.push((
            "netconf",
            netconf.limits.connections.max_connections + netconf.limits.max_sessions,
        ));
    }
    crate::conn_limit::check_fd_budget(&caps);
    tasks.push(tokio::spawn(crate::https::serve_watched(
        etsi,
        server_tls.clone(),
        issuers.clone(),
        crate::km::ksa::router(agent.clone()),
        limits.etsi014_listener.clone(),
        crate::https::ErrorStyle::Etsi014,
        Some(crate::https::Watch::of(
            agent.refusals.clone(),
            crate::refusals::Point::Etsi014,
        )),
    )));
    // the KMA's own errors are `{"message": ...}` bodies: the ETSI shape fits them
    tasks.push(tokio::spawn(crate::https::serve_watched(
        kma,
        server_tls,
        issuers,
        crate::km::kma::router(agent.clone()).merge(crate::km::kxi::server::router(agent.clone())),
        limits.kma_listener.clone(),
        crate::https::ErrorStyle::Etsi014,
        Some(crate::https::Watch::kma(agent.refusals.clone())),
    )));

    tasks.push(tokio::spawn(crate::km::ksa::expiry::sweep(agent.clone())));
    tasks.push(tokio::spawn(crate::km::accounting::prune(agent.clone())));
    tasks.push(tokio::spawn(compact_key_slots(agent.clone())));
    tasks.push(tokio::spawn(crate::km::local_control::run(agent.clone())));
    if let Some(speaker) = &agent.config.interworking {
        let listener = bind(speaker.cxi_listen).await?;
        listening.push(speaker.cxi_listen);
        tasks.push(tokio::spawn(crate::km::local_control::speak(
            agent.clone(),
            listener,
        )));
    }
    tasks.push(tokio::spawn(crate::km::key_alarm::watch_key_levels(
        agent.clone(),
    )));
    if let Some(netconf) = agent.config.netconf.clone() {
        let northbound = Arc::new(crate::km::northbound::Northbound::new(agent.clone()));
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
    if let Some(addr) = agent.config.metrics_listen {
        let listener = bind(addr).await?;
        let of = agent.clone();
        let mut exposition =
            crate::km::metrics::exposition(&agent.metrics, Box::new(move || link_figures(&of)));
        agent.refusals.register(&mut exposition.registry);
        listening.push(addr);
        tasks.push(tokio::spawn(async move {
            if let Err(error) = crate::metrics::serve(listener, Arc::new(exposition)).await {
                tracing::error!(%error, "metrics listener failed");
            }
        }));
    }
    tracing::info!(node = %agent.config.node, etsi014 = %agent.config.etsi014_listen, kma = %agent.config.kma_listen, "KM agent ready");
    // every listener is bound and served: whoever started the agent may use it
    crate::readiness::notify(&listening)?;
    crate::readiness::shutdown_signal().await;
    tracing::info!(node = %agent.config.node, "KM agent stopping");
    for task in tasks {
        task.abort();
    }
    // what is left in partly consumed key slots is re-sealed now, so that no consumed key
    // stays recoverable while the agent is down
    if let Err(error) = agent.store.run(|s| s.compact(true)).await {
        tracing::error!(%error, "compacting the key slots at shutdown");
    }
    Ok(())
}

/// Re-seals what is left in partly consumed key slots once their time is up, and makes
/// destroyed slots' zeros durable, also while no transaction runs.
async fn compact_key_slots(agent: Arc<Agent>) {
    let mut ticker = tokio::time::interval(crate::km::store::COMPACT_AFTER / 4);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Err(error) = agent.store.run(|s| s.compact(false)).await {
            tracing::warn!(%error, "compacting the key slots");
        }
    }
}

/// Every link's figures for the metrics: rate, QBER, state, pool fill.
fn link_figures(agent: &Agent) -> Vec<crate::km::metrics::LinkFigure> {
    agent
        .links()
        .map(|link| {
            let c = &link.config;
            let condition = link.condition();
            let held = [c.end.owner(), 1 - c.end.owner()]
                .into_iter()
                .filter_map(|owner| agent.store.available(&c.id, owner).ok())
                .sum::<usize>()
                + agent.store.pending(&c.id).unwrap_or(0);
            crate::km::metrics::LinkFigure {
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
        let (heard, ever) = link.heard();
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
