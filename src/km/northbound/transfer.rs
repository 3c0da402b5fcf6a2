//! The transfer links of a KM in an interworking node (Y.3818 6.2) under NETCONF: set by the
//! configuration file (an edit may not add, remove or change one), their state and the
//! keys that crossed them.

use yang2::data::{Data, DataTree};

use crate::km::agent::Agent;
use crate::model::km::{transfer_link as leaf, transfer_link_entry, TRANSFER_LINK};
use crate::netconf::datastore::set_leaf as set;
use crate::netconf::{ErrorTag, RpcError};

/// The transfer links' configuration.
pub(super) fn write_config(tree: &mut DataTree<'static>, agent: &Agent) -> Result<(), RpcError> {
    for link in agent.transfer_links() {
        let base = transfer_link_entry(&link.id);
        let domain = link.peer_domain.as_deref().unwrap_or_default();
        set(tree, &format!("{base}/{}", leaf::PEER_NODE), &link.peer)?;
        set(tree, &format!("{base}/{}", leaf::PEER_DOMAIN), domain)?;
        set(tree, &format!("{base}/{}", leaf::PEER_KMA), &link.peer_kma)?;
    }
    Ok(())
}

/// The transfer links' state: served, and the keys sent and received.
pub(super) fn write_state(tree: &mut DataTree<'static>, agent: &Agent) -> Result<(), RpcError> {
    for link in agent.transfer_links() {
        let base = transfer_link_entry(&link.id);
        let (sent, received) = agent.counters.transferred(&link.id);
        set(tree, &format!("{base}/{}", leaf::OPER_STATE), "up")?;
        set(
            tree,
            &format!("{base}/{}", leaf::KEYS_SENT),
            &sent.to_string(),
        )?;
        set(
            tree,
            &format!("{base}/{}", leaf::KEYS_RECEIVED),
            &received.to_string(),
        )?;
    }
    Ok(())
}

/// Refuses a configuration whose transfer links differ from the agent's.
pub(super) fn check(agent: &Agent, tree: &DataTree<'static>) -> Result<(), RpcError> {
    let mut asked = std::collections::BTreeMap::new();
    for node in tree.find_xpath(TRANSFER_LINK).map_err(RpcError::from)? {
        let field = |name: &str| node.find_path(name).ok().and_then(|n| n.value_canonical());
        if let Some(id) = field(leaf::ID) {
            let entry = (
                field(leaf::PEER_NODE).unwrap_or_default(),
                field(leaf::PEER_DOMAIN).unwrap_or_default(),
                field(leaf::PEER_KMA).unwrap_or_default(),
            );
            asked.insert(id, entry);
        }
    }
    let have: std::collections::BTreeMap<String, (String, String, String)> = agent
        .transfer_links()
        .map(|l| {
            let domain = l.peer_domain.clone().unwrap_or_default();
            (l.id.clone(), (l.peer.clone(), domain, l.peer_kma.clone()))
        })
        .collect();
    let differing = asked
        .keys()
        .chain(have.keys())
        .find(|id| asked.get(*id) != have.get(*id));
    match differing {
        None => Ok(()),
        Some(id) => Err(RpcError::application(
            ErrorTag::OperationNotSupported,
            format!("transfer link {id} is set by the key manager's configuration file"),
        )
        .path(transfer_link_entry(id))),
    }
}
