//! The `interworking` subtree of `qkdni-controller`: the Cxi peers and the exposure policy
//! (configuration, fixed while the controller runs), and both QKDNs as this controller sees
//! them (state): each peer's abstract topology, its controller's status, and the
//! interworking sessions with their Cxi transaction, gateway pair and Qx link.

use std::collections::BTreeSet;

use uuid::Uuid;
use yang2::data::{Data, DataTree};

use crate::control::config::ControllerConfig;
use crate::control::controller::Controller;
use crate::control::sessions::{InterworkingRole, Session, SessionState};
use crate::model::controller::{
    self as model, interworking, interworking_session as iws, leaf, peer, INTERWORKING as BASE,
};
use crate::netconf::datastore::set_leaf as set;
use crate::netconf::{ErrorTag, RpcError};

/// Writes the configured peers and exposure policy.
pub fn configuration(
    tree: &mut DataTree<'static>,
    config: &ControllerConfig,
) -> Result<(), RpcError> {
    let Some(iw) = &config.interworking else {
        return Ok(());
    };
    let flag = |b: bool| if b { "true" } else { "false" };
    set(
        tree,
        &format!("{BASE}/{}", interworking::EXPOSE_SAES),
        flag(iw.expose.saes),
    )?;
    set(
        tree,
        &format!("{BASE}/{}", interworking::EXPOSE_KEY_RATE),
        flag(iw.expose.key_rate),
    )?;
    for peer in &iw.peers {
        let base = model::peer_entry(&peer.domain);
        set(tree, &format!("{base}/{}", peer::URL), &peer.url)?;
        set(
            tree,
            &format!("{base}/{}", peer::CONTROLLER),
            &peer.controller,
        )?;
    }
    Ok(())
}

/// Refuses an edit of the peers or the exposure policy: they are read at start.
pub fn check(new: &DataTree<'static>, config: &ControllerConfig) -> Result<(), RpcError> {
    let mut wanted = crate::yang::empty();
    configuration(&mut wanted, config)?;
    let read = |tree: &DataTree<'static>| -> Result<BTreeSet<(String, String)>, RpcError> {
        let mut leaves = BTreeSet::new();
        if tree.traverse().next().is_none() {
            // libyang finds nothing in an empty tree: it refuses the query
            return Ok(leaves);
        }
        for path in [
            model::PEER.to_owned(),
            format!("{BASE}/{}", interworking::EXPOSE),
        ] {
            for node in tree.find_xpath(&path)? {
                for leaf in node.traverse() {
                    if let Some(value) = leaf.value_canonical() {
                        if !leaf.is_default() {
                            leaves.insert((leaf.path(), value));
                        }
                    }
                }
            }
        }
        Ok(leaves)
    };
    if read(new)? != read(&wanted)? {
        return Err(RpcError::application(
            ErrorTag::OperationNotSupported,
            "the Cxi peers and the exposure policy of a running controller are fixed: change the configuration file and restart",
        )
        .path(BASE.to_owned()));
    }
    Ok(())
}

/// Writes the peers' state and the interworking sessions.
pub fn state(
    tree: &mut DataTree<'static>,
    controller: &Controller,
    sessions: &[Session],
    agreeing: &[Uuid],
) -> Result<(), RpcError> {
    let decimal = |v: f64| format!("{v:.3}");
    for (domain, peer) in controller.peer_domains() {
        let base = model::peer_entry(&domain);
        if let Some(reachable) = peer.reachable {
            set(
                tree,
                &format!("{base}/{}", peer::REACHABLE),
                if reachable { "true" } else { "false" },
            )?;
        }
        if let Some(at) = &peer.last_contact {
            set(tree, &format!("{base}/{}", peer::LAST_CONTACT), at)?;
        }
        let Some(topology) = &peer.topology else {
            continue;
        };
        if let Some(received) = &peer.topology_time {
            set(tree, &format!("{base}/{}", peer::RECEIVED), received)?;
        }
        for border in &topology.border_nodes {
            let node = model::border_node_entry(&base, &border.node);
            set(
                tree,
                &format!("{node}/{}", leaf(peer::BORDER_NODE)),
                &border.node,
            )?;
            for qx in &border.qx_links {
                let link = model::qx_link_entry(&node, &qx.id);
                set(
                    tree,
                    &format!("{link}/{}", leaf(peer::QX_PEER_NODE)),
                    &qx.peer_node,
                )?;
                set(
                    tree,
                    &format!("{link}/{}", leaf(peer::QX_UP)),
                    if qx.up { "true" } else { "false" },
                )?;
                set(
                    tree,
                    &format!("{link}/{}", leaf(peer::QX_RATE_BPS)),
                    &decimal(qx.rate_bps),
                )?;
            }
        }
        for reach in &topology.reachability {
            let sae = model::peer_sae_entry(&base, &reach.sae);
            set(
                tree,
                &format!("{sae}/{}", leaf(peer::SAE_NODE)),
                &reach.node,
            )?;
            for via in &reach.via {
                let v = model::via_entry(&sae, &via.border_node);
                set(
                    tree,
                    &format!("{v}/{}", leaf(peer::VIA_BORDER_NODE)),
                    &via.border_node,
                )?;
                if let Some(hops) = via.hops {
                    set(
                        tree,
                        &format!("{v}/{}", leaf(peer::VIA_HOPS)),
                        &hops.to_string(),
                    )?;
                }
                if let Some(rate) = via.rate_bps.filter(|r| r.is_finite()) {
                    set(
                        tree,
                        &format!("{v}/{}", leaf(peer::VIA_RATE_BPS)),
                        &decimal(rate),
                    )?;
                }
            }
        }
    }
    for session in sessions {
        let Some(iw) = &session.interworking else {
            continue;
        };
        let base = model::interworking_session_entry(&session.id);
        set(
            tree,
            &format!("{base}/{}", iws::PEER_DOMAIN),
            &iw.peer_domain,
        )?;
        let role = match iw.role {
            InterworkingRole::Origin => "origin",
            InterworkingRole::Segment => "segment",
        };
        set(tree, &format!("{base}/{}", iws::ROLE), role)?;
        set(
            tree,
            &format!("{base}/{}", iws::TRANSACTION),
            &iw.transaction.to_string(),
        )?;
        for (leaf, value) in [
            (iws::LOCAL_GATEWAY, &iw.local_gateway),
            (iws::PEER_GATEWAY, &iw.peer_gateway),
            (iws::QX_LINK, &iw.qx_link),
        ] {
            if !value.is_empty() {
                set(tree, &format!("{base}/{leaf}"), value)?;
            }
        }
        let state = match session.state {
            SessionState::Active => "active",
            SessionState::Unroutable => "unroutable",
        };
        set(tree, &format!("{base}/{}", iws::STATE), state)?;
        let agreeing = agreeing.contains(&session.id);
        set(
            tree,
            &format!("{base}/{}", iws::AGREEING),
            if agreeing { "true" } else { "false" },
        )?;
    }
    for record in controller.transfers.records() {
        use crate::model::controller::key_transfer as kt;
        let base = model::key_transfer_entry(&record.relay_id);
        let at = |leaf: &str| format!("{base}/{leaf}");
        set(tree, &at(kt::NODE), &record.node)?;
        set(tree, &at(kt::LINK), &record.link)?;
        set(tree, &at(kt::ROLE), &record.role)?;
        set(tree, &at(kt::STATE), &record.state)?;
        set(tree, &at(kt::MASTER_SAE), &record.master_sae)?;
        set(tree, &at(kt::KEY_SIZE), &record.key_size.to_string())?;
        if !record.time.is_empty() {
            set(tree, &at(kt::TIME), &record.time)?;
        }
        for slave in &record.slave_saes {
            let quoted = crate::netconf::xml::quote(slave);
            set(tree, &format!("{}[.={quoted}]", at(kt::SLAVE_SAE)), slave)?;
        }
        for id in &record.key_ids {
            set(
                tree,
                &format!("{}[.='{id}']", at(kt::KEY_ID)),
                &id.to_string(),
            )?;
        }
    }
    Ok(())
}
