//! The interworking function of a distributed QKDN's control layer, carried by its gateway
//! nodes (Y.3818 clause 8: GWN model with a distributed domain). Without a central
//! controller, the domain's Cxi is spoken by one gateway node's KM process, the domain's
//! *speaker*: it agrees interworking routes with the peer domain's controller (or speaker)
//! in the same two-phase transactions, exposes the abstract topology its policy allows from
//! the link-state database, and places each session's border crossing on a gateway node.
//! Every gateway node holds the crossings placed on it ([`Entry`]: the other QKDN's SAE, its
//! node, the Qx link) and advertises those SAEs into the domain's link state, as a border
//! router redistributes external routes; every node then routes toward them by itself.
//!
//! - `admission` — QoS admission of sessions on the domain's links;
//! - [`origin`] — sessions this domain originates: route agreement and reroutes;
//! - [`segment`] — sessions of the peer: the Cxi endpoint (prepare, commit, abort, ...).

mod admission;
pub mod origin;
pub mod segment;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::control::config::{CxiPeer, ExposePolicy};
use crate::control::cxi::{
    AbstractTopology, BorderNode, BorderReach, CxiClient, QxLinkState, SaeReach, CXI_VERSION,
};
use crate::km::agent::{Agent, NextHops};

/// How long an installation at another gateway node may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A gateway node's interworking configuration (KM config `interworking`): present on the
/// domain's speaker only.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeakerConfig {
    /// Address of the Cxi server (HTTPS, mutual TLS with the peer domains' CAs).
    pub cxi_listen: SocketAddr,
    /// The peer QKDNs' controllers (or speakers).
    pub peers: Vec<CxiPeer>,
    #[serde(default)]
    pub expose: ExposePolicy,
    /// Key rate (bit/s) asked for interworking sessions.
    #[serde(default = "default_rate")]
    pub default_rate_bps: f64,
    /// Bearer tokens the domain's manager (its QCLM) presents with a diagnosis.
    #[serde(default)]
    pub bearer_tokens: Vec<String>,
    /// The QoS classes each peer domain's agreement exposes to it, by domain (a peer not
    /// listed, or listed with none: any class).
    #[serde(default)]
    pub qos_exposed: BTreeMap<String, Vec<String>>,
}

fn default_rate() -> f64 {
    1000.0
}

/// A border crossing placed on a gateway node: keys for (or from) another QKDN's SAE cross
/// the Qx link `link` to `across`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The other QKDN's SAE.
    pub sae: String,
    /// The node (in `domain`) whose KM serves it.
    pub node: String,
    pub domain: String,
    /// The peer gateway node across the Qx link.
    pub across: String,
    /// The Qx link.
    pub link: String,
    /// Whether keys toward `node` leave here (a session of this domain); otherwise keys of
    /// `sae` only come in here (the peer's session).
    pub outbound: bool,
}

/// Which end of a session this domain is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The master SAE is here: this domain coordinates.
    Origin,
    /// The slave SAE is here: the peer coordinates.
    Segment,
}

/// An interworking session as the speaker knows it.
#[derive(Debug, Clone, Serialize)]
pub struct GatewaySession {
    pub id: Uuid,
    pub role: Role,
    pub peer_domain: String,
    pub master_sae: String,
    pub slave_sae: String,
    /// The gateway node of this domain the keys cross, and the crossing.
    pub gateway: String,
    pub entry: Entry,
    /// The transaction that agreed the current placement.
    pub transaction: Uuid,
}

/// A prepared segment waiting for its commit.
struct Prepared {
    from: String,
    session: Uuid,
    master_sae: String,
    slave_sae: String,
    gateway: String,
    entry: Entry,
    at: Instant,
}

#[derive(Default)]
struct SpeakerState {
    prepared: BTreeMap<Uuid, Prepared>,
    sessions: BTreeMap<Uuid, GatewaySession>,
    /// Committed transactions, for an abort that undoes one.
    committed: BTreeMap<Uuid, Uuid>,
}

/// The domain's speaker: its Cxi clients and sessions.
pub struct Speaker {
    pub config: SpeakerConfig,
    peers: Vec<CxiClient>,
    state: Mutex<SpeakerState>,
    /// Serializes the agreements this speaker coordinates (one transaction at a time). The
    /// peer's commits and aborts never wait on it: two speakers coordinating at once would
    /// otherwise each hold its own while waiting for the other's commit.
    agreeing: tokio::sync::Mutex<()>,
    /// QoS admission of sessions on the domain's links (`admission`).
    admission: crate::control::admission::Admission,
}

/// The interworking function of one gateway node.
pub struct Gateway {
    agent: Weak<Agent>,
    node: String,
    domain: String,
    /// Crossings placed on this node, by session.
    entries: Mutex<BTreeMap<Uuid, Entry>>,
    /// Set on the domain's speaker.
    pub speaker: Option<Speaker>,
}

/// Gateway errors.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("unknown SAE {0}")]
    UnknownSae(String),
    #[error("no interworking route: {0}")]
    NoRoute(String),
    #[error("peer domain unreachable: {0}")]
    PeerUnreachable(String),
    #[error("installing at gateway node {node}: {reason}")]
    Install { node: String, reason: String },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Cxi(#[from] crate::control::cxi::CxiError),
}

impl Gateway {
    /// The interworking function of `agent`'s node; a speaker when `speaker` is given.
    pub fn new(agent: &Arc<Agent>, speaker: Option<SpeakerConfig>) -> Result<Self, GatewayError> {
        let speaker = match speaker {
            Some(config) => {
                let peers = config
                    .peers
                    .iter()
                    .map(|p| CxiClient::new(p.clone(), &agent.config.tls))
                    .collect::<Result<Vec<_>, _>>()?;
                Some(Speaker {
                    config,
                    peers,
                    state: Mutex::default(),
                    agreeing: tokio::sync::Mutex::new(()),
                    admission: Default::default(),
                })
            }
            None => None,
        };
        Ok(Self {
            agent: Arc::downgrade(agent),
            node: agent.config.node.clone(),
            domain: agent.config.domain.clone(),
            entries: Mutex::default(),
            speaker,
        })
    }

    fn agent(&self) -> Option<Arc<Agent>> {
        self.agent.upgrade()
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<Uuid, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The crossings placed on this node.
    pub fn placed(&self) -> Vec<(Uuid, Entry)> {
        self.entries()
            .iter()
            .map(|(id, e)| (*id, e.clone()))
            .collect()
    }

    /// The node of another QKDN's SAE crossing here.
    pub fn sae_node(&self, sae: &str) -> Option<String> {
        self.entries()
            .values()
            .find(|e| e.sae == sae)
            .map(|e| e.node.clone())
    }

    /// The QKDN of another QKDN's SAE crossing here.
    pub fn sae_domain(&self, sae: &str) -> Option<String> {
        self.entries()
            .values()
            .find(|e| e.sae == sae)
            .map(|e| e.domain.clone())
    }

    /// The next hop toward another QKDN's node whose keys cross here: across the Qx link.
    pub fn route(&self, dest: &str) -> Option<NextHops> {
        self.entries()
            .values()
            .find(|e| e.node == dest && e.outbound)
            .map(|e| vec![(e.across.clone(), 1)])
    }

    /// Places `entry` of `session` on this node and advertises it at once.
    pub fn place(&self, session: Uuid, entry: Entry) {
        tracing::info!(%session, sae = %entry.sae, link = %entry.link, "interworking crossing placed");
        self.entries().insert(session, entry);
        self.advertise();
    }

    /// Removes the crossing of `session` from this node; whether there was one.
    pub fn unplace(&self, session: Uuid) -> bool {
        let removed = self.entries().remove(&session).is_some();
        if removed {
            tracing::info!(%session, "interworking crossing removed");
            self.advertise();
        }
        removed
    }

    fn advertise(&self) {
        if let Some(agent) = self.agent() {
            if let Some(control) = agent.local_control() {
                control.update(crate::km::local_control::local_view(&agent));
            }
        }
    }

    /// Places (or removes, `entry` None) a crossing on gateway node `node`: here, or at that
    /// node's KM over its KMA (mutual TLS inside the domain).
    async fn install(
        &self,
        node: &str,
        session: Uuid,
        entry: Option<&Entry>,
    ) -> Result<(), GatewayError> {
        if node == self.node {
            match entry {
                Some(entry) => self.place(session, entry.clone()),
                None => {
                    self.unplace(session);
                }
            }
            return Ok(());
        }
        let fail = |reason: String| GatewayError::Install {
            node: node.to_owned(),
            reason,
        };
        let agent = self.agent().ok_or_else(|| fail("stopping".into()))?;
        let kma = agent
            .local_control()
            .and_then(|c| c.kma_of(node))
            .ok_or_else(|| fail("not in the link-state database".into()))?;
        let url = format!("{kma}/kma/v1/interworking/crossings/{session}");
        let request = match entry {
            Some(entry) => agent.peers.put(url).json(entry),
            None => agent.peers.delete(url),
        };
        let response = request
            .timeout(INSTALL_TIMEOUT)
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        let status = response.status();
        if status.is_success() || (entry.is_none() && status == reqwest::StatusCode::NOT_FOUND) {
            Ok(())
        } else {
            Err(fail(format!("answered {status}")))
        }
    }

    /// What the domain's exposure policy shares with `peer`: its gateway nodes toward it
    /// with their Qx links, and (when allowed) which SAEs are reachable from which of them.
    pub fn abstract_topology(&self, peer: &str) -> AbstractTopology {
        let mut topology = AbstractTopology {
            version: CXI_VERSION,
            domain: self.domain.clone(),
            border_nodes: Vec::new(),
            reachability: Vec::new(),
        };
        let (Some(agent), Some(speaker)) = (self.agent(), self.speaker.as_ref()) else {
            return topology;
        };
        let Some(control) = agent.local_control() else {
            return topology;
        };
        let gateways = control.gateways_to(peer);
        topology.border_nodes = gateways
            .iter()
            .map(|(node, qx)| BorderNode {
                node: node.clone(),
                qx_links: qx
                    .iter()
                    .map(|q| QxLinkState {
                        id: q.id.clone(),
                        peer_node: q.peer_node.clone(),
                        up: q.up,
                        rate_bps: q.key_rate_bps,
                    })
                    .collect(),
            })
            .collect();
        if speaker.config.expose.saes {
            let net = control.network();
            let foreign = control.foreign();
            for (sae, node) in control.saes() {
                if foreign.contains_key(&sae) {
                    continue;
                }
                let via = gateways
                    .iter()
                    .filter_map(|(gw, _)| {
                        let hops =
                            crate::control::link_state::routes::hops_between(&net, gw, &node)?;
                        Some(BorderReach {
                            border_node: gw.clone(),
                            hops: speaker.config.expose.key_rate.then_some(hops),
                            rate_bps: None,
                        })
                    })
                    .collect();
                topology.reachability.push(SaeReach { sae, node, via });
            }
        }
        topology
    }
}

impl Speaker {
    fn state(&self) -> std::sync::MutexGuard<'_, SpeakerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The sessions the speaker agreed.
    pub fn sessions(&self) -> Vec<GatewaySession> {
        self.state().sessions.values().cloned().collect()
    }

    fn client_of(&self, domain: &str) -> Option<&CxiClient> {
        self.peers.iter().find(|p| p.peer.domain == domain)
    }
}
