//! The KM agent's configuration under NETCONF: the tree it starts with, and a new running
//! configuration read whole, checked against what the agent can do, then applied.

use std::collections::BTreeMap;

use yang2::data::{Data, DataTree};

use super::{decimal, etsi_node, link_path, number, number_or_default};
use crate::km::agent::{Agent, LinkSettings, Settings};
use crate::km::config::{Etsi014Limits, LinkEnd};
use crate::km::events::Event;
use crate::model::etsi_node::{self as etsi, link as etsi_link, node, LINK, NODE};
use crate::model::km::{
    self as model, etsi014, key_manager, link, link_state, link_state_value as state_name, route,
    sae, KEY_MANAGER as KM,
};
use crate::netconf::datastore::{leaf as value, set_leaf as set, to_xml};
use crate::netconf::{ErrorTag, RpcError};
use crate::quantum::link_model::LinkParams;
use crate::quantum::{LinkState, RateSpec};

/// What a configuration tree asks of the agent.
struct Desired {
    settings: Settings,
    links: BTreeMap<String, (String, String, LinkEnd, LinkSettings)>,
}

/// Links are keyed by their names: an entry's `link-name`, else the name of the agent's
/// link with that `qkdl_id`, else the `qkdl_id` itself (a link the agent does not have).
fn read_desired(agent: &Agent, tree: &DataTree<'static>) -> Result<Desired, RpcError> {
    let mut links = BTreeMap::new();
    let set = tree.find_xpath(LINK).map_err(RpcError::from)?;
    for node in set {
        let Some(uuid) = node
            .find_path(etsi_link::ID)
            .ok()
            .and_then(|n| n.value_canonical())
        else {
            continue;
        };
        let base = etsi::link_entry(&uuid);
        let named = value(tree, &format!("{base}/{}", etsi_link::LINK_NAME));
        let known = etsi_node::link_name(agent, &uuid);
        let id = match (named, known) {
            (Some(named), Some(known)) if named != known => {
                return Err(RpcError::application(
                    ErrorTag::InvalidValue,
                    format!("qkdl_id {uuid} is link {known}, not {named}"),
                )
                .path(format!("{base}/{}", etsi_link::LINK_NAME)))
            }
            (_, Some(known)) => known,
            (Some(named), None) => named,
            (None, None) => uuid,
        };
        let Some(peer) = value(tree, &format!("{base}/{}", link::PEER_NODE)) else {
            continue; // a virtual link: not managed by the quantum layer of this agent
        };
        let peer_kma = value(tree, &format!("{base}/{}", link::PEER_KMA)).unwrap_or_default();
        let end = match value(tree, &format!("{base}/{}", link::END)).as_deref() {
            Some("tx") => LinkEnd::Tx,
            _ => LinkEnd::Rx,
        };
        let admin = value(tree, &format!("{base}/{}", link::ADMIN_STATE))
            .and_then(|v| link_state(&v))
            .unwrap_or_else(|| {
                link_state(&crate::model::default_of(&format!(
                    "{LINK}/{}",
                    link::ADMIN_STATE
                )))
                .expect("the default admin-state is a link state")
            });
        let enabled =
            value(tree, &format!("{base}/{}", etsi_link::ENABLE)).as_deref() != Some("false");
        let rate = match number::<f64>(tree, &format!("{base}/{}", link::RATE_BPS)) {
            Some(rate_bps) => RateSpec::Fixed { rate_bps },
            None => {
                let m = |leaf: &str| number_or_default::<f64>(tree, &base, LINK, leaf);
                RateSpec::Model(LinkParams {
                    length_km: m(link::LENGTH_KM),
                    attenuation_db_per_km: m(link::ATTENUATION_DB_PER_KM),
                    detector_efficiency: m(link::DETECTOR_EFFICIENCY),
                    dark_count_prob: m(link::DARK_COUNT_PROB),
                    misalignment: m(link::MISALIGNMENT),
                    ec_efficiency: m(link::EC_EFFICIENCY),
                    pulse_rate_hz: m(link::PULSE_RATE_HZ),
                })
            }
        };
        if let RateSpec::Model(params) = &rate {
            params.validate().map_err(|e| {
                RpcError::application(ErrorTag::InvalidValue, format!("link {id}: {e}"))
                    .path(format!("{base}/{}", link::LINK_MODEL))
            })?;
        }
        let capacity_blocks = number_or_default(tree, &base, LINK, link::CAPACITY_BLOCKS);
        let settings = LinkSettings {
            rate,
            admin: if enabled { admin } else { LinkState::Down },
            capacity_blocks,
        };
        links.insert(id, (peer, peer_kma, end, settings));
    }
    let mut saes = BTreeMap::new();
    let mut foreign_saes = BTreeMap::new();
    for node in tree.find_xpath(model::SAE).map_err(RpcError::from)? {
        let field = |name: &str| node.find_path(name).ok().and_then(|n| n.value_canonical());
        if let (Some(id), Some(at)) = (field(sae::ID), field(sae::NODE)) {
            if let Some(domain) = field(sae::DOMAIN) {
                foreign_saes.insert(id.clone(), domain);
            }
            saes.insert(id, at);
        }
    }
    let mut routes = BTreeMap::new();
    for node in tree.find_xpath(model::ROUTE).map_err(RpcError::from)? {
        let dest = node
            .find_path(route::DESTINATION)
            .ok()
            .and_then(|n| n.value_canonical());
        let field = |node: &yang2::data::DataNodeRef<'_, '_>, name: &str| {
            node.find_path(name).ok().and_then(|n| n.value_canonical())
        };
        let weight = |node: &yang2::data::DataNodeRef<'_, '_>| {
            field(node, route::WEIGHT)
                .and_then(|w| w.parse().ok())
                .unwrap_or_else(|| {
                    crate::model::default_of(&format!("{}/{}", model::ROUTE, route::WEIGHT))
                        .parse()
                        .expect("the default weight is a number")
                })
        };
        if let (Some(dest), Some(hop)) = (dest, field(&node, route::NEXT_HOP)) {
            let mut hops = vec![(hop, weight(&node))];
            for alternate in node
                .children()
                .filter(|c| c.schema().name() == route::ALTERNATE)
            {
                if let Some(hop) = field(&alternate, route::NEXT_HOP) {
                    hops.push((hop, weight(&alternate)));
                }
            }
            routes.insert(dest, hops);
        }
    }
    let e = |leaf: &str| number_or_default(tree, model::ETSI014, model::ETSI014, leaf);
    let etsi014 = Etsi014Limits {
        key_size: e(etsi014::KEY_SIZE),
        max_key_per_request: e(etsi014::MAX_KEY_PER_REQUEST),
        max_key_size: e(etsi014::MAX_KEY_SIZE),
        min_key_size: e(etsi014::MIN_KEY_SIZE),
        max_sae_id_count: e(etsi014::MAX_SAE_ID_COUNT),
    };
    let low_key_threshold_percent =
        number_or_default(tree, KM, KM, key_manager::LOW_KEY_THRESHOLD_PERCENT);
    Ok(Desired {
        settings: Settings {
            saes,
            foreign_saes,
            routes,
            etsi014,
            low_key_threshold_percent,
        },
        links,
    })
}

/// The configuration the agent starts with (XML), from its configuration file.
pub(super) fn initial(agent: &Agent) -> String {
    let build = || -> Result<String, RpcError> {
        let mut tree = crate::yang::empty();
        etsi_node::write_config(&mut tree, agent)?;
        super::transfer::write_config(&mut tree, agent)?;
        super::local_control::write_config(&mut tree, agent)?;
        crate::km::qos::yang::write(&mut tree, crate::model::qos::KM_QOS, &agent.qos.policy())?;
        for link in agent.links() {
            let c = &link.config;
            let base = link_path(agent, &c.id);
            let s = link.settings();
            set(&mut tree, &format!("{base}/{}", link::PEER_NODE), &c.peer)?;
            set(
                &mut tree,
                &format!("{base}/{}", link::PEER_KMA),
                &c.peer_kma,
            )?;
            set(
                &mut tree,
                &format!("{base}/{}", link::END),
                if c.end == LinkEnd::Tx { "tx" } else { "rx" },
            )?;
            set(
                &mut tree,
                &format!("{base}/{}", link::ADMIN_STATE),
                state_name(s.admin),
            )?;
            match &s.rate {
                RateSpec::Fixed { rate_bps } => set(
                    &mut tree,
                    &format!("{base}/{}", link::RATE_BPS),
                    &format!("{rate_bps:.3}"),
                )?,
                RateSpec::Model(p) => {
                    set(
                        &mut tree,
                        &format!("{base}/{}", link::LENGTH_KM),
                        &decimal(p.length_km, 3),
                    )?;
                    set(
                        &mut tree,
                        &format!("{base}/{}", link::ATTENUATION_DB_PER_KM),
                        &decimal(p.attenuation_db_per_km, 4),
                    )?;
                    set(
                        &mut tree,
                        &format!("{base}/{}", link::DETECTOR_EFFICIENCY),
                        &decimal(p.detector_efficiency, 6),
                    )?;
                    set(
                        &mut tree,
                        &format!("{base}/{}", link::DARK_COUNT_PROB),
                        &decimal(p.dark_count_prob, 12),
                    )?;
                    set(
                        &mut tree,
                        &format!("{base}/{}", link::MISALIGNMENT),
                        &decimal(p.misalignment, 6),
                    )?;
                    set(
                        &mut tree,
                        &format!("{base}/{}", link::EC_EFFICIENCY),
                        &decimal(p.ec_efficiency, 4),
                    )?;
                    set(
                        &mut tree,
                        &format!("{base}/{}", link::PULSE_RATE_HZ),
                        &format!("{}", p.pulse_rate_hz as u64),
                    )?;
                }
            }
            set(
                &mut tree,
                &format!("{base}/{}", link::CAPACITY_BLOCKS),
                &s.capacity_blocks.to_string(),
            )?;
        }
        let settings = agent.settings();
        for (sae, node) in &settings.saes {
            set(
                &mut tree,
                &format!("{}/{}", model::sae_entry(sae), sae::NODE),
                node,
            )?;
        }
        for (dest, hops) in &settings.routes {
            let route = model::route_entry(dest);
            for (i, (hop, weight)) in hops.iter().enumerate() {
                let at = if i == 0 {
                    route.clone()
                } else {
                    model::alternate_entry(&route, hop)
                };
                if i == 0 {
                    set(&mut tree, &format!("{at}/{}", route::NEXT_HOP), hop)?;
                }
                set(
                    &mut tree,
                    &format!("{at}/{}", route::WEIGHT),
                    &weight.to_string(),
                )?;
            }
        }
        let l = &settings.etsi014;
        set(
            &mut tree,
            &model::etsi014_leaf(etsi014::KEY_SIZE),
            &l.key_size.to_string(),
        )?;
        set(
            &mut tree,
            &model::etsi014_leaf(etsi014::MAX_KEY_PER_REQUEST),
            &l.max_key_per_request.to_string(),
        )?;
        set(
            &mut tree,
            &model::etsi014_leaf(etsi014::MAX_KEY_SIZE),
            &l.max_key_size.to_string(),
        )?;
        set(
            &mut tree,
            &model::etsi014_leaf(etsi014::MIN_KEY_SIZE),
            &l.min_key_size.to_string(),
        )?;
        set(
            &mut tree,
            &model::etsi014_leaf(etsi014::MAX_SAE_ID_COUNT),
            &l.max_sae_id_count.to_string(),
        )?;
        to_xml(&tree)
    };
    build().unwrap_or_else(|error| {
        tracing::error!(%error, "cannot express the agent configuration in YANG");
        String::new()
    })
}

/// Checks a new, schema-valid running configuration whole, then applies it.
pub(super) fn apply(agent: &Agent, new: &DataTree<'static>) -> Result<(), RpcError> {
    let desired = read_desired(agent, new)?;
    // prepare: every check before any change
    let uuid = etsi_node::node_uuid(agent).to_string();
    let node_id = value(new, &format!("{NODE}/{}", node::QKDN_ID));
    if node_id.as_deref().is_some_and(|n| n != uuid) {
        return Err(RpcError::application(
            ErrorTag::InvalidValue,
            format!("this node is {} ({uuid})", agent.config.node),
        )
        .path(format!("{NODE}/{}", node::QKDN_ID)));
    }
    let name = value(new, &format!("{NODE}/{}", node::NODE_NAME));
    if name.as_deref().is_some_and(|n| n != agent.config.node) {
        return Err(RpcError::application(
            ErrorTag::InvalidValue,
            format!("this node is {}", agent.config.node),
        )
        .path(format!("{NODE}/{}", node::NODE_NAME)));
    }
    for link in agent.links() {
        let c = &link.config;
        match desired.links.get(&c.id) {
            None => {
                return Err(RpcError::application(
                    ErrorTag::OperationNotSupported,
                    format!("link {} cannot be removed while the agent runs", c.id),
                )
                .path(link_path(agent, &c.id)))
            }
            Some((peer, peer_kma, end, _))
                if *peer != c.peer || *peer_kma != c.peer_kma || *end != c.end =>
            {
                return Err(RpcError::application(
                    ErrorTag::OperationNotSupported,
                    format!(
                        "the peer, peer-kma and end of link {} are fixed while the agent runs",
                        c.id
                    ),
                )
                .path(link_path(agent, &c.id)))
            }
            _ => {}
        }
    }
    super::transfer::check(agent, new)?;
    let policy = super::local_control::check(agent, new)?;
    let qos = crate::km::qos::yang::read(new, crate::model::qos::KM_QOS)?;
    if let Some(extra) = desired.links.keys().find(|id| agent.link(id).is_none()) {
        return Err(RpcError::application(
            ErrorTag::OperationNotSupported,
            format!("link {extra} is unknown to the quantum layer of this node"),
        )
        .path(link_path(agent, extra)));
    }
    for (dest, hop) in desired
        .settings
        .routes
        .iter()
        .flat_map(|(dest, hops)| hops.iter().map(move |(hop, _)| (dest, hop)))
    {
        if agent.config.link_to(hop).is_none() {
            return Err(RpcError::application(
                ErrorTag::InvalidValue,
                format!("next hop {hop} of {dest} is not a link peer"),
            )
            .path(model::route_entry(dest)));
        }
    }
    if let Some(problem) = desired.settings.etsi014.beyond_relay_limits() {
        return Err(
            RpcError::application(ErrorTag::InvalidValue, problem).path(model::ETSI014.to_owned())
        );
    }
    // apply: the route policy first, the one step that may still refuse (changing nothing)
    super::local_control::apply(agent, policy.as_deref())?;
    let here = &agent.config.node;
    let registered = |sae: &str| desired.settings.saes.get(sae) == Some(here);
    let gone = agent.applications.retain(registered);
    agent.set_settings(desired.settings);
    agent.qos.set_policy(qos);
    for app in gone {
        agent.emit(Event::ApplicationGone(app));
    }
    for (id, (_, _, _, settings)) in desired.links {
        if agent.link(&id).map(|l| l.settings()) != Some(settings.clone()) {
            agent.set_link(&id, settings);
        }
    }
    tracing::info!("configuration applied");
    Ok(())
}
