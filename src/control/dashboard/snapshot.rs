//! What the dashboard draws, in one JSON document: the domain's nodes and links with their
//! state, key rate and pool fill; the sessions and their routes; the peer domains' abstract
//! topologies (border nodes, Qx links, the nodes of reachable SAEs); the alarms in force.
//! Built from the controller's published view and what it knows of its peers: never waits
//! on the instance.

use std::collections::BTreeMap;

use serde::Serialize;
use uuid::Uuid;

use super::super::config::NodeRole;
use super::super::controller::Controller;
use super::super::cxi::peers::PeerDomain;
use super::super::sessions::{InterworkingRole, Session, SessionState};

/// The whole picture.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    pub domain: String,
    /// The route policy in force.
    pub policy: String,
    pub nodes: Vec<NodeView>,
    pub links: Vec<LinkView>,
    pub sessions: Vec<SessionView>,
    pub peers: Vec<PeerView>,
    /// Conditions in force that need an operator's eye.
    pub alarms: Vec<Alarm>,
}

/// A KM node of the domain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeView {
    pub id: String,
    /// `km` or `gateway`.
    pub role: &'static str,
    /// Whether the controller reaches its agent.
    pub reachable: bool,
    /// SAEs its KM serves.
    pub saes: Vec<String>,
}

/// A QKD link of the domain, or a Qx link to a peer domain's gateway.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkView {
    pub id: String,
    pub nodes: [String; 2],
    pub up: bool,
    pub rate_bps: f64,
    /// Blocks each end (of this domain) may allocate.
    pub own_blocks: BTreeMap<String, u64>,
    pub capacity_blocks: u64,
    /// The pool's fill: the ends' blocks over the capacity (0..1).
    pub fill: f64,
    /// For a Qx link: the domain of the far end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_domain: Option<String>,
}

/// A key supply session and its route.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionView {
    pub id: Uuid,
    pub master_sae: String,
    pub slave_sae: String,
    /// `active` or `unroutable`.
    pub state: &'static str,
    pub rate_bps: f64,
    pub on_demand: bool,
    /// Its route is being agreed with a peer controller.
    pub agreeing: bool,
    /// Every path of its route plan (nodes and links), widest first.
    pub paths: Vec<PathView>,
    /// For an interworking session: how it crosses the border.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interworking: Option<Crossing>,
}

/// One path of a route plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PathView {
    pub nodes: Vec<String>,
    pub links: Vec<String>,
    pub share_bps: f64,
}

/// Where an interworking session crosses into the peer domain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Crossing {
    pub peer_domain: String,
    /// `origin` (the master SAE is here) or `segment`.
    pub role: &'static str,
    pub local_gateway: String,
    pub peer_gateway: String,
    pub qx_link: String,
    /// The KM of the SAE in the peer domain.
    pub peer_km: String,
}

/// A peer domain as it shares itself: never its internal links.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerView {
    pub domain: String,
    /// Whether the peer has shared its abstract topology yet.
    pub shared: bool,
    pub reachable: Option<bool>,
    pub last_contact: Option<String>,
    pub border_nodes: Vec<String>,
    /// Nodes of the peer's reachable SAEs, with how each border node reaches them.
    pub nodes: Vec<PeerNode>,
}

/// A node of a peer domain known from its SAE reachability.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerNode {
    pub id: String,
    pub saes: Vec<String>,
    pub via: Vec<Via>,
}

/// How a peer's border node reaches one of its nodes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Via {
    pub border_node: String,
    pub hops: Option<u32>,
    pub rate_bps: Option<f64>,
}

/// A condition in force.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alarm {
    /// `link-down`, `agent-unreachable`, `session-unroutable`, `peer-unreachable`.
    pub kind: &'static str,
    /// The link, node, session or domain concerned.
    pub subject: String,
    pub detail: String,
}

impl Snapshot {
    /// The picture as of the controller's last published view.
    pub fn of(controller: &Controller) -> Self {
        let view = controller.view();
        let topology = &view.topology;
        let peers = controller.peer_domains();
        let roles: BTreeMap<&str, NodeRole> = controller
            .config
            .agents
            .iter()
            .map(|a| (a.node.as_str(), a.role))
            .collect();
        let nodes: Vec<NodeView> = topology
            .nodes
            .values()
            .map(|n| NodeView {
                id: n.id.clone(),
                role: roles.get(n.id.as_str()).copied().unwrap_or_default().name(),
                reachable: n.reachable,
                saes: topology
                    .saes
                    .iter()
                    .filter(|(_, at)| **at == n.id)
                    .map(|(sae, _)| sae.clone())
                    .collect(),
            })
            .collect();
        let links: Vec<LinkView> = topology
            .links
            .values()
            .map(|l| {
                let far = l.nodes.iter().find(|n| !topology.nodes.contains_key(*n));
                let held: u64 = l.own_blocks.values().sum();
                LinkView {
                    id: l.id.clone(),
                    nodes: l.nodes.clone(),
                    up: l.up,
                    rate_bps: l.rate_bps,
                    own_blocks: l.own_blocks.clone(),
                    capacity_blocks: l.capacity_blocks,
                    fill: (held as f64 / l.capacity_blocks.max(1) as f64).min(1.0),
                    peer_domain: far.map(|node| domain_of(&peers, node)),
                }
            })
            .collect();
        let sessions: Vec<SessionView> = view
            .sessions
            .iter()
            .map(|s| session(s, view.agreeing.contains(&s.id)))
            .collect();
        let peers: Vec<PeerView> = peers.iter().map(|(d, p)| peer(d, p)).collect();
        let alarms = alarms(&nodes, &links, &sessions, &peers);
        Self {
            domain: controller.config.domain.clone(),
            policy: controller.policy_name().to_owned(),
            nodes,
            links,
            sessions,
            peers,
            alarms,
        }
    }
}

/// The peer domain whose border node `node` is: the one whose abstract topology names it,
/// else the only peer domain there is (before its topology arrived), else `?`.
fn domain_of(peers: &BTreeMap<String, PeerDomain>, node: &str) -> String {
    let named = peers.iter().find(|(_, p)| {
        p.topology
            .as_ref()
            .is_some_and(|t| t.border_nodes.iter().any(|b| b.node == node))
    });
    match (named, peers.len()) {
        (Some((domain, _)), _) => domain.clone(),
        (None, 1) => peers.keys().next().cloned().unwrap_or_default(),
        (None, _) => "?".to_owned(),
    }
}

fn session(s: &Session, agreeing: bool) -> SessionView {
    SessionView {
        id: s.id,
        master_sae: s.master_sae.clone(),
        slave_sae: s.slave_sae.clone(),
        state: match s.state {
            SessionState::Active => "active",
            SessionState::Unroutable => "unroutable",
        },
        rate_bps: s.rate_bps,
        on_demand: s.on_demand,
        agreeing,
        paths: match s.state {
            SessionState::Active => s
                .routed_paths()
                .into_iter()
                .map(|p| PathView {
                    nodes: p.nodes,
                    links: p.links,
                    share_bps: p.share_bps,
                })
                .collect(),
            SessionState::Unroutable => Vec::new(),
        },
        interworking: s.interworking.as_ref().map(|iw| Crossing {
            peer_domain: iw.peer_domain.clone(),
            role: match iw.role {
                InterworkingRole::Origin => "origin",
                InterworkingRole::Segment => "segment",
            },
            local_gateway: iw.local_gateway.clone(),
            peer_gateway: iw.peer_gateway.clone(),
            qx_link: iw.qx_link.clone(),
            peer_km: iw.peer_km.clone(),
        }),
    }
}

fn peer(domain: &str, p: &PeerDomain) -> PeerView {
    let mut nodes: BTreeMap<String, PeerNode> = BTreeMap::new();
    let mut border_nodes = Vec::new();
    if let Some(t) = &p.topology {
        border_nodes = t.border_nodes.iter().map(|b| b.node.clone()).collect();
        for reach in &t.reachability {
            let node = nodes.entry(reach.node.clone()).or_insert_with(|| PeerNode {
                id: reach.node.clone(),
                saes: Vec::new(),
                via: reach
                    .via
                    .iter()
                    .map(|v| Via {
                        border_node: v.border_node.clone(),
                        hops: v.hops,
                        rate_bps: v.rate_bps,
                    })
                    .collect(),
            });
            node.saes.push(reach.sae.clone());
        }
    }
    PeerView {
        domain: domain.to_owned(),
        shared: p.topology.is_some(),
        reachable: p.reachable,
        last_contact: p.last_contact.clone(),
        border_nodes,
        nodes: nodes.into_values().collect(),
    }
}

fn alarms(
    nodes: &[NodeView],
    links: &[LinkView],
    sessions: &[SessionView],
    peers: &[PeerView],
) -> Vec<Alarm> {
    let mut alarms = Vec::new();
    for l in links.iter().filter(|l| !l.up) {
        alarms.push(Alarm {
            kind: "link-down",
            subject: l.id.clone(),
            detail: format!("QKD link {} ({} - {}) down", l.id, l.nodes[0], l.nodes[1]),
        });
    }
    for n in nodes.iter().filter(|n| !n.reachable) {
        alarms.push(Alarm {
            kind: "agent-unreachable",
            subject: n.id.clone(),
            detail: format!("the controller does not reach the KM agent of {}", n.id),
        });
    }
    for s in sessions.iter().filter(|s| s.state == "unroutable") {
        alarms.push(Alarm {
            kind: "session-unroutable",
            subject: s.id.to_string(),
            detail: format!("no route for {} -> {}", s.master_sae, s.slave_sae),
        });
    }
    for p in peers.iter().filter(|p| p.reachable == Some(false)) {
        alarms.push(Alarm {
            kind: "peer-unreachable",
            subject: p.domain.clone(),
            detail: format!("the controller of QKDN {} does not answer", p.domain),
        });
    }
    alarms
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::cxi::{AbstractTopology, BorderNode, BorderReach, SaeReach, CXI_VERSION};

    fn peer_b() -> PeerDomain {
        let reach = |sae: &str, node: &str| SaeReach {
            sae: sae.into(),
            node: node.into(),
            via: vec![BorderReach {
                border_node: "gb1".into(),
                hops: Some(2),
                rate_bps: Some(1000.0),
            }],
        };
        PeerDomain {
            topology: Some(AbstractTopology {
                version: CXI_VERSION,
                domain: "B".into(),
                border_nodes: vec![BorderNode {
                    node: "gb1".into(),
                    qx_links: Vec::new(),
                }],
                reachability: vec![reach("sae-b1-1", "b1"), reach("sae-b1-2", "b1")],
            }),
            reachable: Some(false),
            ..Default::default()
        }
    }

    #[test]
    fn a_peer_shows_its_border_and_the_nodes_of_its_saes() {
        let view = peer("B", &peer_b());
        assert!(view.shared);
        assert_eq!(view.border_nodes, ["gb1"]);
        assert_eq!(view.nodes.len(), 1, "two SAEs on one node");
        assert_eq!(view.nodes[0].saes, ["sae-b1-1", "sae-b1-2"]);
        assert_eq!(view.nodes[0].via[0].hops, Some(2));
        let alarms = alarms(&[], &[], &[], &[view]);
        assert_eq!(alarms[0].kind, "peer-unreachable");
    }

    #[test]
    fn a_qx_link_end_belongs_to_the_peer_that_names_it_or_the_only_one() {
        let mut peers = BTreeMap::from([("B".to_owned(), peer_b())]);
        assert_eq!(domain_of(&peers, "gb1"), "B");
        assert_eq!(domain_of(&peers, "gb2"), "B", "the only peer");
        peers.insert("C".into(), PeerDomain::default());
        assert_eq!(domain_of(&peers, "gb1"), "B");
        assert_eq!(domain_of(&peers, "gc1"), "?");
    }
}
