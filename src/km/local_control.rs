//! The local controller of a node in a distributed QKDN, run inside its KM process: the
//! node's link-state routing ([`crate::control::link_state`]) fed with the KM's own links,
//! flooding to the KMs at the other end of its QKD links over their KMA servers (HTTPS,
//! the domain's mutual TLS: only a link peer is heard), its routes used by the relay.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use qkdni_route_policy::Catalog;

use crate::control::gateway::Gateway;
use crate::control::link_state::lsa::{External, QxAdvert};
use crate::control::link_state::{Flood, LinkState, Local, LsaLink, Transport};
use crate::km::agent::{Agent, AgentError};
use crate::quantum::LinkState as QkdLinkState;

/// The key rate advertised for an interworking node's transfer link (keys pass it as fast as
/// the KMs hand them over: the QKD links on either side bound the rate).
const TRANSFER_RATE_BPS: f64 = 1e9;

/// How long a neighbour may take to answer a flood.
const FLOOD_TIMEOUT: Duration = Duration::from_secs(3);

/// Floods over the KMA servers of the link peers.
struct KmaTransport {
    agent: std::sync::Weak<Agent>,
}

impl Transport for KmaTransport {
    fn send(&self, neighbour: &str, flood: Flood) -> BoxFuture<'static, Result<Flood, String>> {
        let agent = self.agent.upgrade();
        let neighbour = neighbour.to_owned();
        Box::pin(async move {
            let agent = agent.ok_or("stopping")?;
            let link = domain_links(&agent)
                .find(|l| l.peer == neighbour)
                .ok_or_else(|| format!("no link to {neighbour}"))?;
            let response = agent
                .peers
                .post(format!("{}/kma/v1/link-state", link.peer_kma))
                .timeout(FLOOD_TIMEOUT)
                .json(&flood)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("answered {}", response.status()));
            }
            response.json().await.map_err(|e| e.to_string())
        })
    }
}

/// The KM's QKD links inside its domain.
fn domain_links(agent: &Agent) -> impl Iterator<Item = &crate::km::config::LinkConfig> {
    agent
        .links()
        .map(|l| &l.config)
        .filter(|c| c.peer_domain.is_none())
}

/// Starts the local controller if the configuration asks for one; the KM then routes with it.
pub fn attach(agent: &Arc<Agent>, catalog: Catalog) -> Result<(), AgentError> {
    let Some(config) = &agent.config.local_control else {
        return Ok(());
    };
    let transport = Arc::new(KmaTransport {
        agent: Arc::downgrade(agent),
    });
    let control = LinkState::new(&agent.config.node, catalog, &config.policy, transport)
        .map_err(AgentError::LocalControl)?;
    agent.attach_local_control(control);
    // a gateway node carries the domain's interworking function
    // (a Qx link, or an interworking node's transfer link)
    let gateway_node = agent.config.links.iter().any(|l| l.peer_domain.is_some());
    if gateway_node || agent.config.interworking.is_some() {
        let gateway = Gateway::new(agent, agent.config.interworking.clone())
            .map_err(|e| AgentError::LocalControl(e.to_string()))?;
        agent.attach_gateway(Arc::new(gateway));
    }
    Ok(())
}

/// Serves Cxi for the domain on the speaker and follows its Qx links, until dropped.
pub async fn speak(agent: Arc<Agent>, listener: tokio::net::TcpListener) {
    let Some(gateway) = agent.gateway().cloned() else {
        return;
    };
    let (Ok(config), Ok(issuers)) = (
        crate::tls::server_config(&agent.config.tls),
        crate::tls::Issuers::load(&agent.config.tls),
    ) else {
        tracing::error!("Cxi server: TLS material not usable");
        return;
    };
    tokio::spawn(gateway.clone().watch_faults());
    let router = crate::control::cxi::server::router_for(gateway, None);
    crate::https::serve_https_with(
        listener,
        config,
        issuers,
        router,
        agent.config.limits.kma_listener.clone(),
    )
    .await;
}

/// What the node advertises: its links inside the domain, as they are now, and its SAEs.
pub fn local_view(agent: &Agent) -> Local {
    let links = agent
        .links()
        .filter(|l| l.config.peer_domain.is_none())
        .map(|l| {
            let condition = l.condition();
            let blocks = agent
                .store
                .available(&l.config.id, l.config.end.owner())
                .unwrap_or(0);
            LsaLink {
                id: l.config.id.clone(),
                peer: l.config.peer.clone(),
                up: condition.state == QkdLinkState::Up,
                key_rate_bps: condition.rate_bps,
                available_bits: blocks as f64 * 256.0,
                qber: condition.qber.unwrap_or(0.0),
            }
        })
        .collect();
    let saes = agent
        .config
        .saes
        .iter()
        .filter(|(_, node)| **node == agent.config.node)
        .map(|(sae, _)| sae.clone())
        .collect();
    let qx_links = agent
        .links()
        .filter_map(|l| {
            let peer_domain = l.config.peer_domain.clone()?;
            let condition = l.condition();
            Some(QxAdvert {
                id: l.config.id.clone(),
                peer_node: l.config.peer.clone(),
                peer_domain,
                up: condition.state == QkdLinkState::Up,
                key_rate_bps: condition.rate_bps,
            })
        })
        .chain(agent.transfer_links().filter_map(|l| {
            // an interworking node's transfer link: no QKD module, no rate limit of its own
            Some(QxAdvert {
                id: l.id.clone(),
                peer_node: l.peer.clone(),
                peer_domain: l.peer_domain.clone()?,
                up: true,
                key_rate_bps: TRANSFER_RATE_BPS,
            })
        }))
        .collect();
    Local {
        links,
        saes,
        kma: advertised_kma(agent),
        qx_links,
        externals: externals(agent),
        speaks_for: agent
            .gateway()
            .and_then(|g| g.speaker.as_ref())
            .map(|s| s.config.peers.iter().map(|p| p.domain.clone()).collect())
            .unwrap_or_default(),
    }
}

/// The URL other nodes reach this KM's KMA server at.
fn advertised_kma(agent: &Agent) -> String {
    match agent
        .config
        .local_control
        .as_ref()
        .and_then(|c| c.kma_url.clone())
    {
        Some(url) => url,
        None => format!("https://{}", agent.config.kma_listen),
    }
}

/// Other QKDNs' SAEs whose keys cross this node's Qx or transfer links: registered here
/// with a route whose next hop is across the border.
fn externals(agent: &Agent) -> Vec<External> {
    let settings = agent.settings();
    let placed = agent.gateway().map(|g| g.placed()).unwrap_or_default();
    let placed = placed.into_iter().map(|(_, e)| External {
        sae: e.sae,
        node: e.node,
        domain: e.domain,
        outbound: e.outbound,
    });
    settings
        .foreign_saes
        .iter()
        .filter_map(|(sae, domain)| {
            let node = settings.saes.get(sae)?;
            let hop = settings
                .routes
                .get(node)
                .and_then(|hops| hops.first().map(|(h, _)| h.clone()))
                .unwrap_or_else(|| node.clone());
            let across = agent
                .config
                .link_to(&hop)
                .is_some_and(|l| l.peer_domain.is_some());
            across.then(|| External {
                sae: sae.clone(),
                node: node.clone(),
                domain: domain.clone(),
                outbound: true,
            })
        })
        .chain(placed)
        .collect()
}

/// Feeds the local controller: at once on every change of a link's condition, and every
/// second (stored key, refresh, aging, resynchronization).
pub async fn run(agent: Arc<Agent>) {
    let Some(control) = agent.local_control().cloned() else {
        return;
    };
    let notify = Arc::new(tokio::sync::Notify::new());
    for link in agent.links() {
        let mut watch = link.watch();
        let notify = notify.clone();
        tokio::spawn(async move {
            while watch.changed().await.is_ok() {
                notify.notify_one();
            }
        });
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = notify.notified() => {}
            _ = tick.tick() => {}
        }
        let span = tracing::debug_span!("link-state", node = %agent.config.node);
        let _entered = span.enter();
        control.update(local_view(&agent));
    }
}
