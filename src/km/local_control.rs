//! The local controller of a node in a distributed QKDN, run inside its KM process: the
//! node's link-state routing ([`crate::control::link_state`]) fed with the KM's own links,
//! flooding to the KMs at the other end of its QKD links over their KMA servers (HTTPS,
//! the domain's mutual TLS: only a link peer is heard), its routes used by the relay.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use qkdni_route_policy::Catalog;

use crate::control::link_state::{Flood, LinkState, Local, LsaLink, Transport};
use crate::km::agent::{Agent, AgentError};
use crate::quantum::LinkState as QkdLinkState;

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
    Ok(())
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
    Local { links, saes }
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
