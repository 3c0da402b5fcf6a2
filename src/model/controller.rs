//! `qkdni-controller`: the controller's configuration (policy, poll interval, agents, Cxi
//! peers and exposure) and its view of both QKDNs (topology, installed routes, sessions,
//! the peers' abstract topology, interworking sessions), and its `controller-event`.

use super::{schema_group, Group};
use crate::netconf::xml::quote;

/// The module's XML namespace.
pub const NAMESPACE: &str = "urn:qkdni:yang:qkdni-controller";
/// The module's name (notifications are sent under it).
pub const MODULE: &str = "qkdni-controller";

/// The controller container.
pub const ROOT: &str = "/qkdni-controller:controller";

schema_group! {
    /// Leaves of the controller container.
    pub mod root under super::ROOT;
    DOMAIN = "domain";
    POLICY = "policy";
    POLL_SECONDS = "poll-seconds";
    ON_DEMAND_IDLE_SECONDS = "on-demand-idle-seconds";
    AGENTS = "agents";
}

/// The configuration (for `<edit-config>`) that sets the route policy to `policy`.
pub fn policy_config(policy: &str) -> String {
    format!(
        "<controller xmlns=\"{NAMESPACE}\"><{p}>{}</{p}></controller>",
        crate::netconf::client::text(policy),
        p = root::POLICY
    )
}

/// The configured agents.
pub const AGENT: &str = "/qkdni-controller:controller/agents/agent";

schema_group! {
    /// Leaves of an agent entry.
    pub mod agent under super::AGENT;
    NODE = "node";
    NETCONF_HOST = "netconf-host";
    NETCONF_PORT = "netconf-port";
    ROLE = "role";
    REACHABLE = "reachable";
    ROUTE_NEXT_HOP = "route/next-hop";
}

/// The entry of agent `node`.
pub fn agent_entry(node: &str) -> String {
    format!("{AGENT}[{}={}]", agent::NODE, quote(node))
}

/// The next hop of the route to `destination` installed on the agent at `agent_entry`.
pub fn agent_route_next_hop(agent_entry: &str, destination: &str) -> String {
    format!(
        "{agent_entry}/route[destination={}]/next-hop",
        quote(destination)
    )
}

/// The domain's links.
pub const TOPOLOGY_LINK: &str = "/qkdni-controller:controller/topology/link";

schema_group! {
    /// Leaves of a topology link entry.
    pub mod topology_link under super::TOPOLOGY_LINK;
    ID = "id";
    NODE = "node";
    UP = "up";
    RATE_BPS = "rate-bps";
}

/// The entry of link `id`.
pub fn topology_link_entry(id: &str) -> String {
    format!("{TOPOLOGY_LINK}[{}={}]", topology_link::ID, quote(id))
}

/// The domain's SAEs.
pub const TOPOLOGY_SAE: &str = "/qkdni-controller:controller/topology/sae";

schema_group! {
    /// Leaves of a topology SAE entry.
    pub mod topology_sae under super::TOPOLOGY_SAE;
    ID = "id";
    NODE = "node";
}

/// The node serving SAE `id`.
pub fn topology_sae_node(id: &str) -> String {
    format!(
        "{TOPOLOGY_SAE}[{}={}]/{}",
        topology_sae::ID,
        quote(id),
        topology_sae::NODE
    )
}

/// The domain's sessions.
pub const SESSION: &str = "/qkdni-controller:controller/sessions/session";

schema_group! {
    /// Leaves of a session entry.
    pub mod session under super::SESSION;
    ID = "id";
    MASTER_SAE = "master-sae";
    SLAVE_SAE = "slave-sae";
    STATE = "state";
    PATH = "path";
    ON_DEMAND = "on-demand";
}

/// The entry of session `id`.
pub fn session_entry(id: &impl std::fmt::Display) -> String {
    format!("{SESSION}[{}='{id}']", session::ID)
}

/// The interworking container.
pub const INTERWORKING: &str = "/qkdni-controller:controller/interworking";

schema_group! {
    /// The exposure policy and the containers of the interworking subtree.
    pub mod interworking under super::INTERWORKING;
    EXPOSE = "expose";
    EXPOSE_SAES = "expose/saes";
    EXPOSE_KEY_RATE = "expose/key-rate";
    PEER = "peer";
    SESSION = "session";
    PROVISIONED_BY = "provisioned-by";
    PROVISIONED_BY_OPERATOR = "provisioned-by/operator";
    PROVISIONED_BY_CHANGE = "provisioned-by/change";
    LAST_CHANGE_TIME = "last-change/time";
    LAST_CHANGE_USER = "last-change/user";
    LAST_CHANGE_OPERATOR = "last-change/operator";
    LAST_CHANGE_SUMMARY = "last-change/summary";
}

/// The Cxi peers.
pub const PEER: &str = "/qkdni-controller:controller/interworking/peer";

schema_group! {
    /// Leaves of a peer entry.
    pub mod peer under super::PEER;
    DOMAIN = "domain";
    URL = "url";
    CONTROLLER = "controller";
    REACHABLE = "reachable";
    LAST_CONTACT = "last-contact";
    ABSTRACT_TOPOLOGY = "abstract-topology";
    RECEIVED = "abstract-topology/received";
    BORDER_NODE = "abstract-topology/border-node/node";
    QX_PEER_NODE = "abstract-topology/border-node/qx-link/peer-node";
    QX_UP = "abstract-topology/border-node/qx-link/up";
    QX_RATE_BPS = "abstract-topology/border-node/qx-link/rate-bps";
    SAE_NODE = "abstract-topology/sae/node";
    VIA_BORDER_NODE = "abstract-topology/sae/via/border-node";
    VIA_HOPS = "abstract-topology/sae/via/hops";
    VIA_RATE_BPS = "abstract-topology/sae/via/rate-bps";
    EXPOSE = "expose";
    EXPOSE_SAES = "expose/saes";
    EXPOSE_KEY_RATE = "expose/key-rate";
    QOS_CLASS = "qos-class";
}

/// The entry of peer domain `domain`.
pub fn peer_entry(domain: &str) -> String {
    format!("{PEER}[{}={}]", peer::DOMAIN, quote(domain))
}

/// The border node `node` of the abstract topology of the peer at `peer_entry`.
pub fn border_node_entry(peer_entry: &str, node: &str) -> String {
    format!(
        "{peer_entry}/{}/border-node[node={}]",
        peer::ABSTRACT_TOPOLOGY,
        quote(node)
    )
}

/// Qx link `id` of the border node at `border_entry`.
pub fn qx_link_entry(border_entry: &str, id: &str) -> String {
    format!("{border_entry}/qx-link[id={}]", quote(id))
}

/// SAE `id` of the abstract topology of the peer at `peer_entry`.
pub fn peer_sae_entry(peer_entry: &str, id: &str) -> String {
    format!(
        "{peer_entry}/{}/sae[id={}]",
        peer::ABSTRACT_TOPOLOGY,
        quote(id)
    )
}

/// The way through `border_node` to the SAE at `sae_entry`.
pub fn via_entry(sae_entry: &str, border_node: &str) -> String {
    format!("{sae_entry}/via[border-node={}]", quote(border_node))
}

/// The last step of a relative path (a leaf name under the entry it is relative to).
pub fn leaf(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The interworking sessions.
pub const INTERWORKING_SESSION: &str = "/qkdni-controller:controller/interworking/session";

schema_group! {
    /// Leaves of an interworking session entry.
    pub mod interworking_session under super::INTERWORKING_SESSION;
    ID = "id";
    PEER_DOMAIN = "peer-domain";
    ROLE = "role";
    TRANSACTION = "transaction";
    LOCAL_GATEWAY = "local-gateway";
    PEER_GATEWAY = "peer-gateway";
    QX_LINK = "qx-link";
    STATE = "state";
    AGREEING = "agreeing";
}

/// The entry of interworking session `id`.
pub fn interworking_session_entry(id: &impl std::fmt::Display) -> String {
    format!(
        "{INTERWORKING_SESSION}[{}='{id}']",
        interworking_session::ID
    )
}

/// The transfer key life-cycle records.
pub const KEY_TRANSFER: &str = "/qkdni-controller:controller/interworking/key-transfer";

schema_group! {
    /// Leaves of a key transfer record.
    pub mod key_transfer under super::KEY_TRANSFER;
    RELAY_ID = "relay-id";
    NODE = "node";
    LINK = "link";
    ROLE = "role";
    STATE = "state";
    MASTER_SAE = "master-sae";
    SLAVE_SAE = "slave-sae";
    KEY_SIZE = "key-size";
    KEY_ID = "key-id";
    TIME = "time";
}

/// The record of the transfer in relay `id`.
pub fn key_transfer_entry(id: &impl std::fmt::Display) -> String {
    format!("{KEY_TRANSFER}[{}='{id}']", key_transfer::RELAY_ID)
}

schema_group! {
    /// `controller-event`.
    pub mod controller_event under "/qkdni-controller:controller-event";
    KIND = "kind";
    DETAIL = "detail";
    SESSION = "session";
    TRANSACTION = "transaction";
    DURATION_MS = "duration-ms";
}

/// Every group of this module.
pub const GROUPS: &[Group] = &[
    root::GROUP,
    agent::GROUP,
    topology_link::GROUP,
    topology_sae::GROUP,
    session::GROUP,
    interworking::GROUP,
    peer::GROUP,
    interworking_session::GROUP,
    key_transfer::GROUP,
    controller_event::GROUP,
];
