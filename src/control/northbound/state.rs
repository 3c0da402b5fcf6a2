//! The controller's state under NETCONF: its domain (agents, installed routes, links, SAEs,
//! sessions) and both QKDNs' interworking state ([`super::interworking`]).

use yang2::data::DataTree;

use super::interworking;
use crate::control::controller::Controller;
use crate::control::sessions::SessionState;
use crate::model::controller::{self as model, agent, root, session, topology_link, ROOT};
use crate::netconf::datastore::set_leaf as set;
use crate::netconf::RpcError;

/// The controller's state tree.
pub(super) fn state(controller: &Controller) -> Result<DataTree<'static>, RpcError> {
    let view = controller.view();
    let (topology, sessions) = (&view.topology, &view.sessions);
    let mut tree = crate::yang::empty();
    interworking::state(&mut tree, controller, sessions, &view.agreeing)?;
    set(
        &mut tree,
        &format!("{ROOT}/{}", root::DOMAIN),
        &controller.config.domain,
    )?;
    for (id, node) in &topology.nodes {
        let base = model::agent_entry(id);
        if controller.config.agents.iter().all(|a| &a.node != id) {
            continue;
        }
        set(
            &mut tree,
            &format!("{base}/{}", agent::REACHABLE),
            if node.reachable { "true" } else { "false" },
        )?;
        for (dest, hop) in &node.routes {
            set(&mut tree, &model::agent_route_next_hop(&base, dest), hop)?;
        }
    }
    for (id, link) in &topology.links {
        let base = model::topology_link_entry(id);
        set(
            &mut tree,
            &format!("{base}/{}", topology_link::UP),
            if link.up { "true" } else { "false" },
        )?;
        set(
            &mut tree,
            &format!("{base}/{}", topology_link::RATE_BPS),
            &format!("{:.3}", link.rate_bps),
        )?;
        for node in &link.nodes {
            set(&mut tree, &format!("{base}/{}", topology_link::NODE), node)?;
        }
    }
    for (sae, node) in &topology.saes {
        set(&mut tree, &model::topology_sae_node(sae), node)?;
    }
    for session in sessions {
        let base = model::session_entry(&session.id);
        set(
            &mut tree,
            &format!("{base}/{}", session::MASTER_SAE),
            &session.master_sae,
        )?;
        set(
            &mut tree,
            &format!("{base}/{}", session::SLAVE_SAE),
            &session.slave_sae,
        )?;
        let state = match session.state {
            SessionState::Active => "active",
            SessionState::Unroutable => "unroutable",
        };
        set(&mut tree, &format!("{base}/{}", session::STATE), state)?;
        for node in &session.path {
            set(&mut tree, &format!("{base}/{}", session::PATH), node)?;
        }
        set(
            &mut tree,
            &format!("{base}/{}", session::ON_DEMAND),
            &session.on_demand.to_string(),
        )?;
    }
    Ok(tree)
}
