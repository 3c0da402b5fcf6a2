//! The KM agent as an SD-QKD node of ETSI GS QKD 015 (`etsi-qkd-sdn-node`, revision
//! 2022-01-30): its identifiers (UUIDv5 of its names, [`crate::etsi015`]), the node and
//! link configuration it starts with, and its state: node status, one QKD interface per
//! link (the link's emulated QKD module at this end), link status and performance, and the
//! applications it serves. qkdni's names travel beside the UUIDs in `qkdni-etsi-ids`.

use uuid::Uuid;
use yang2::data::DataTree;

use crate::km::agent::Agent;
use crate::km::config::{LinkConfig, LinkEnd};
use crate::netconf::datastore::set_leaf as set;
use crate::netconf::RpcError;
use crate::quantum::LinkState;

use crate::model::etsi_node::{
    self as model, application, identity, interface, link, link_qber, node, NODE,
};

/// `qkdn_id` of this node.
pub fn node_uuid(agent: &Agent) -> Uuid {
    crate::etsi015::node_id(&agent.config.domain, &agent.config.node)
}

/// `qkdl_id` of one of this node's links.
pub fn link_uuid(agent: &Agent, link: &LinkConfig) -> Uuid {
    crate::etsi015::link_id(&agent.config.domain, link.peer_domain.as_deref(), &link.id)
}

/// `qkdn_id` of the node at the other end of `link`.
pub fn peer_uuid(agent: &Agent, link: &LinkConfig) -> Uuid {
    let domain = link.peer_domain.as_deref().unwrap_or(&agent.config.domain);
    crate::etsi015::node_id(domain, &link.peer)
}

/// Path of the `qkd_link` entry with identifier `id`.
pub fn link_path(id: &Uuid) -> String {
    model::link_entry(id)
}

/// The name of the link whose `qkdl_id` is `id`.
pub fn link_name(agent: &Agent, id: &str) -> Option<String> {
    agent
        .links()
        .find(|l| link_uuid(agent, &l.config).to_string() == id)
        .map(|l| l.config.id.clone())
}

/// The node's and its links' ETSI configuration (identifiers, ends, type, role), to which
/// the caller adds qkdni's own link settings.
pub fn write_config(tree: &mut DataTree<'static>, agent: &Agent) -> Result<(), RpcError> {
    let node_id = node_uuid(agent).to_string();
    let at = |leaf: &str| format!("{NODE}/{leaf}");
    set(tree, &at(node::QKDN_ID), &node_id)?;
    set(tree, &at(node::NODE_NAME), &agent.config.node)?;
    set(tree, &at(node::DOMAIN), &agent.config.domain)?;
    // qkdni reports no per-period key consumption of applications.
    set(tree, &at(node::APPLICATION_STATS_SUPPORT), "false")?;
    for link in agent.links() {
        let c = &link.config;
        let id = link_uuid(agent, c);
        let base = link_path(&id);
        let interface = crate::etsi015::interface_id(&id).to_string();
        let at = |leaf: &str| format!("{base}/{leaf}");
        set(tree, &at(link::LINK_NAME), &c.id)?;
        set(tree, &at(link::TYPE), &identity("PHYS"))?;
        set(tree, &at(link::LOCAL_NODE), &node_id)?;
        set(tree, &at(link::LOCAL_INTERFACE), &interface)?;
        set(
            tree,
            &at(link::REMOTE_NODE),
            &peer_uuid(agent, c).to_string(),
        )?;
        // The peer's module on the link has the same number: it is derived from the link.
        set(tree, &at(link::REMOTE_INTERFACE), &interface)?;
        set(tree, &at(link::ROLE), role(c.end))?;
    }
    Ok(())
}

fn role(end: LinkEnd) -> &'static str {
    match end {
        LinkEnd::Tx => "etsi-qkd-node-types:TRANSMITTER",
        LinkEnd::Rx => "etsi-qkd-node-types:RECEIVER",
    }
}

/// `qkdl_status` of a link in `state`.
pub fn link_status(state: LinkState) -> &'static str {
    match state {
        LinkState::Up => "etsi-qkd-node-types:ACTIVE",
        LinkState::Degraded => "etsi-qkd-node-types:PASSIVE",
        LinkState::Down => "etsi-qkd-node-types:OFF",
    }
}

/// `skr` of a link: its key rate while it produces key, else 0.
pub fn skr(state: LinkState, rate_bps: f64) -> String {
    if state == LinkState::Up {
        (rate_bps.max(0.0).min(f64::from(u32::MAX)) as u32).to_string()
    } else {
        "0".into()
    }
}

/// A QBER as the `value` of a `phys_perf` entry (decimal64, 3 fraction digits).
pub fn qber_value(qber: f64) -> String {
    format!("{:.3}", qber.clamp(0.0, 1.0))
}

/// The node's ETSI state: status, version, interfaces, link status and performance, and
/// applications.
pub fn write_state(tree: &mut DataTree<'static>, agent: &Agent) -> Result<(), RpcError> {
    set(
        tree,
        &format!("{NODE}/{}", node::STATUS),
        &identity("OPERATING"),
    )?;
    set(
        tree,
        &format!("{NODE}/{}", node::VERSION),
        concat!("qkdni ", env!("CARGO_PKG_VERSION")),
    )?;
    for link in agent.links() {
        let c = &link.config;
        let id = link_uuid(agent, c);
        let condition = link.condition();
        let base = link_path(&id);
        let at = |leaf: &str| format!("{base}/{leaf}");
        set(tree, &at(link::STATUS), link_status(condition.state))?;
        set(
            tree,
            &at(link::SKR),
            &skr(condition.state, condition.rate_bps),
        )?;
        if let Some(qber) = condition.qber {
            set(tree, &at(&link_qber()), &qber_value(qber))?;
        }
        let entry = model::interface_entry(&crate::etsi015::interface_id(&id));
        let at = |leaf: &str| format!("{entry}/{leaf}");
        set(
            tree,
            &at(interface::MODEL),
            "qkdni emulated decoy-state BB84 module",
        )?;
        set(tree, &at(interface::TYPE), &identity("DV-QKD"))?;
        set(tree, &at(interface::ROLE_SUPPORT), role(c.end))?;
        let status = match condition.state {
            LinkState::Down if link.settings().admin == LinkState::Down => "DISABLED",
            _ => "ENABLED",
        };
        set(tree, &at(interface::STATUS), &identity(status))?;
        set(tree, &at(interface::LINK_NAME), &c.id)?;
    }
    let node = node_uuid(agent).to_string();
    for app in agent.applications.list() {
        let entry = model::application_entry(&app.id);
        let at = |leaf: &str| format!("{entry}/{leaf}");
        set(tree, &at(application::STATUS), &identity("ON"))?;
        set(tree, &at(application::TYPE), &identity("CLIENT"))?;
        set(tree, &at(application::SERVER), &app.master)?;
        for slave in &app.slaves {
            set(tree, &at(application::CLIENT), slave)?;
        }
        set(tree, &at(application::CREATION_TIME), &app.created)?;
        set(tree, &at(application::LOCAL_NODE), &node)?;
        if let Some(remote) = remote_node(agent, &app.slaves[0]) {
            set(tree, &at(application::REMOTE_NODE), &remote.to_string())?;
        }
    }
    Ok(())
}

/// `qkdn_id` of the node serving SAE `sae`, when this KM knows it.
pub fn remote_node(agent: &Agent, sae: &str) -> Option<Uuid> {
    let node = agent.sae_node(sae)?;
    let domain = agent
        .sae_domain(sae)
        .unwrap_or_else(|| agent.config.domain.clone());
    Some(crate::etsi015::node_id(&domain, &node))
}
