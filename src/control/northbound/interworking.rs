//! The `interworking` subtree of `qkdni-controller`: the Cxi peers and the exposure policy,
//! per peer exposure and QoS class names (configuration, put in effect at once: see
//! [`crate::control::cxi::live`]), and both QKDNs as this controller sees them (state): each peer's abstract topology, its controller's status, and the
//! interworking sessions with their Cxi transaction, gateway pair and Qx link.

use uuid::Uuid;
use yang2::data::{Data, DataTree};

use crate::control::config::{ControllerConfig, CxiPeer, ExposePolicy};
use crate::control::controller::Controller;
use crate::control::cxi::live::{InterworkingSettings, PeerPolicy};
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

/// The interworking settings of a schema-valid configuration (the module's defaults for
/// absent leaves), checked against what the controller can do (a Cxi server, a CA of
/// every peer's domain): the peers, the exposure policy, per peer exposure and QoS class
/// names; and who the domain's manager provisioned them for.
pub fn settings(
    controller: &Controller,
    new: &DataTree<'static>,
) -> Result<(InterworkingSettings, Option<String>), RpcError> {
    let text = |path: &str| crate::netconf::datastore::leaf(new, path);
    let flag = |path: &str| text(path).map(|v| v == "true");
    let mut settings = InterworkingSettings {
        peers: Vec::new(),
        expose: ExposePolicy {
            saes: flag(&format!("{BASE}/{}", interworking::EXPOSE_SAES)).unwrap_or(true),
            key_rate: flag(&format!("{BASE}/{}", interworking::EXPOSE_KEY_RATE)).unwrap_or(true),
        },
    };
    // libyang finds nothing in an empty tree: it refuses the query
    let peers = if new.traverse().next().is_none() {
        Vec::new()
    } else {
        new.find_xpath(model::PEER)?.collect::<Vec<_>>()
    };
    for node in peers {
        let field = |name: &str| node.find_path(name).ok().and_then(|n| n.value_canonical());
        let (Some(domain), Some(url), Some(name)) = (
            field(peer::DOMAIN),
            field(peer::URL),
            field(peer::CONTROLLER),
        ) else {
            continue;
        };
        let qos_classes = node
            .find_xpath(peer::QOS_CLASS)
            .map(|set| set.filter_map(|n| n.value_canonical()).collect())
            .unwrap_or_default();
        settings.peers.push((
            CxiPeer {
                domain,
                url,
                controller: name,
            },
            PeerPolicy {
                saes: field(peer::EXPOSE_SAES).map(|v| v == "true"),
                key_rate: field(peer::EXPOSE_KEY_RATE).map(|v| v == "true"),
                qos_classes,
            },
        ));
    }
    if let Some((peer, _)) = settings
        .peers
        .iter()
        .find(|(p, _)| p.domain == controller.config.domain)
    {
        return Err(RpcError::application(
            ErrorTag::InvalidValue,
            format!(
                "{} is this controller's own domain, not a peer",
                peer.domain
            ),
        )
        .path(model::peer_entry(&peer.domain)));
    }
    if let Some((peer, _)) = settings
        .peers
        .iter()
        .find(|(p, _)| !p.url.starts_with("https://"))
    {
        return Err(RpcError::application(
            ErrorTag::InvalidValue,
            format!("the Cxi URL of {} must be an https:// URL", peer.domain),
        )
        .path(format!("{}/{}", model::peer_entry(&peer.domain), peer::URL)));
    }
    controller.check_interworking(&settings).map_err(|e| {
        RpcError::application(ErrorTag::InvalidValue, e.to_string()).path(BASE.to_owned())
    })?;
    let operator = text(&format!("{BASE}/{}", interworking::PROVISIONED_BY_OPERATOR));
    Ok((settings, operator))
}

/// What changed between two interworking settings, for people (empty: nothing).
pub fn summary(old: &InterworkingSettings, new: &InterworkingSettings) -> Vec<String> {
    let mut out = Vec::new();
    if old.expose != new.expose {
        out.push(format!(
            "exposure policy: saes {} key-rate {}",
            new.expose.saes, new.expose.key_rate
        ));
    }
    for (peer, policy) in &new.peers {
        match old.peers.iter().find(|(p, _)| p.domain == peer.domain) {
            None => out.push(format!("peer {} added ({})", peer.domain, peer.url)),
            Some((was, was_policy)) => {
                if was.url != peer.url || was.controller != peer.controller {
                    out.push(format!(
                        "peer {}: Cxi {} ({})",
                        peer.domain, peer.url, peer.controller
                    ));
                }
                if was_policy != policy {
                    out.push(format!(
                        "peer {}: exposure saes {:?} key-rate {:?}, QoS classes [{}]",
                        peer.domain,
                        policy.saes,
                        policy.key_rate,
                        policy.qos_classes.join(", ")
                    ));
                }
            }
        }
    }
    for (peer, _) in &old.peers {
        if !new.peers.iter().any(|(p, _)| p.domain == peer.domain) {
            out.push(format!("peer {} removed", peer.domain));
        }
    }
    out
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
