//! The `interworking` subtree of `qkdni-controller`: the Cxi peers and the exposure policy
//! (configuration, fixed while the controller runs), and both QKDNs as this controller sees
//! them (state): each peer's abstract topology, its controller's status, and the
//! interworking sessions with their Cxi transaction, gateway pair and Qx link.

use std::collections::BTreeSet;

use uuid::Uuid;
use yang2::data::{Data, DataTree};

use super::config::ControllerConfig;
use super::controller::Controller;
use super::sessions::{InterworkingRole, Session, SessionState};
use crate::netconf::datastore::set_leaf as set;
use crate::netconf::xml::quote;
use crate::netconf::{ErrorTag, RpcError};

const BASE: &str = "/qkdni-controller:controller/interworking";

/// Writes the configured peers and exposure policy.
pub fn configuration(
    tree: &mut DataTree<'static>,
    config: &ControllerConfig,
) -> Result<(), RpcError> {
    let Some(iw) = &config.interworking else {
        return Ok(());
    };
    let flag = |b: bool| if b { "true" } else { "false" };
    set(tree, &format!("{BASE}/expose/saes"), flag(iw.expose.saes))?;
    set(
        tree,
        &format!("{BASE}/expose/key-rate"),
        flag(iw.expose.key_rate),
    )?;
    for peer in &iw.peers {
        let base = format!("{BASE}/peer[domain={}]", quote(&peer.domain));
        set(tree, &format!("{base}/url"), &peer.url)?;
        set(tree, &format!("{base}/controller"), &peer.controller)?;
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
        for path in [format!("{BASE}/peer"), format!("{BASE}/expose")] {
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
        let base = format!("{BASE}/peer[domain={}]", quote(&domain));
        if let Some(reachable) = peer.reachable {
            set(
                tree,
                &format!("{base}/reachable"),
                if reachable { "true" } else { "false" },
            )?;
        }
        if let Some(at) = &peer.last_contact {
            set(tree, &format!("{base}/last-contact"), at)?;
        }
        let Some(topology) = &peer.topology else {
            continue;
        };
        let at = format!("{base}/abstract-topology");
        if let Some(received) = &peer.topology_time {
            set(tree, &format!("{at}/received"), received)?;
        }
        for border in &topology.border_nodes {
            let node = format!("{at}/border-node[node={}]", quote(&border.node));
            set(tree, &format!("{node}/node"), &border.node)?;
            for qx in &border.qx_links {
                let link = format!("{node}/qx-link[id={}]", quote(&qx.id));
                set(tree, &format!("{link}/peer-node"), &qx.peer_node)?;
                set(
                    tree,
                    &format!("{link}/up"),
                    if qx.up { "true" } else { "false" },
                )?;
                set(tree, &format!("{link}/rate-bps"), &decimal(qx.rate_bps))?;
            }
        }
        for reach in &topology.reachability {
            let sae = format!("{at}/sae[id={}]", quote(&reach.sae));
            set(tree, &format!("{sae}/node"), &reach.node)?;
            for via in &reach.via {
                let v = format!("{sae}/via[border-node={}]", quote(&via.border_node));
                set(tree, &format!("{v}/border-node"), &via.border_node)?;
                if let Some(hops) = via.hops {
                    set(tree, &format!("{v}/hops"), &hops.to_string())?;
                }
                if let Some(rate) = via.rate_bps.filter(|r| r.is_finite()) {
                    set(tree, &format!("{v}/rate-bps"), &decimal(rate))?;
                }
            }
        }
    }
    for session in sessions {
        let Some(iw) = &session.interworking else {
            continue;
        };
        let base = format!("{BASE}/session[id='{}']", session.id);
        set(tree, &format!("{base}/peer-domain"), &iw.peer_domain)?;
        let role = match iw.role {
            InterworkingRole::Origin => "origin",
            InterworkingRole::Segment => "segment",
        };
        set(tree, &format!("{base}/role"), role)?;
        set(
            tree,
            &format!("{base}/transaction"),
            &iw.transaction.to_string(),
        )?;
        for (leaf, value) in [
            ("local-gateway", &iw.local_gateway),
            ("peer-gateway", &iw.peer_gateway),
            ("qx-link", &iw.qx_link),
        ] {
            if !value.is_empty() {
                set(tree, &format!("{base}/{leaf}"), value)?;
            }
        }
        let state = match session.state {
            SessionState::Active => "active",
            SessionState::Unroutable => "unroutable",
        };
        set(tree, &format!("{base}/state"), state)?;
        let agreeing = agreeing.contains(&session.id);
        set(
            tree,
            &format!("{base}/agreeing"),
            if agreeing { "true" } else { "false" },
        )?;
    }
    Ok(())
}
