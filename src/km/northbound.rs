//! The KM agent's NETCONF northbound: its configuration and state in the `etsi-qkd-sdn-node`
//! (ETSI GS QKD 015, see [`super::etsi_node`]), `qkdni-etsi-ids` and `qkdni-km` models,
//! applied as one transaction (validate whole, check, apply).

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::broadcast;
use yang2::data::{Data, DataTree};

use super::agent::{Agent, LinkSettings, Settings};
use super::config::{Etsi014Limits, LinkEnd};
use crate::netconf::datastore::{leaf as value, set_leaf as set};
use crate::netconf::server::{Application, Notification};
use crate::netconf::{ErrorTag, RpcError};
use crate::quantum::link_model::LinkParams;
use crate::quantum::{LinkState, RateSpec};

use super::etsi_node::{self, NODE};

const KM: &str = "/etsi-qkd-sdn-node:qkd_node/qkdni-km:key-manager";

/// The agent behind its NETCONF server.
pub struct Northbound {
    agent: Arc<Agent>,
    notifications: broadcast::Sender<Notification>,
}

impl Northbound {
    /// Wraps the agent and starts turning its events into notifications.
    pub fn new(agent: Arc<Agent>) -> Self {
        let (notifications, _) = broadcast::channel(1024);
        let sender = notifications.clone();
        let mut events = agent.events();
        let source = agent.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) => {
                        let etsi = super::etsi_notify::notifications(&source, &event);
                        match event.to_notification().and_then(|own| {
                            etsi.map(|etsi| own.into_iter().chain(etsi).collect::<Vec<_>>())
                        }) {
                            Ok(all) => {
                                for n in all {
                                    let _ = sender.send(n);
                                }
                            }
                            Err(error) => tracing::error!(%error, "cannot build notification"),
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        super::etsi_notify::watch_performance(agent.clone(), notifications.clone());
        Self {
            agent,
            notifications,
        }
    }
}

/// Path of the `qkd_link` entry of link `name` (by its `qkdl_id`).
fn link_path(agent: &Agent, name: &str) -> String {
    match agent.link_config(name) {
        Some(c) => etsi_node::link_path(&etsi_node::link_uuid(agent, c)),
        None => format!(
            "{NODE}/qkd_links/qkd_link[qkdni-etsi-ids:link-name={}]",
            crate::netconf::xml::quote(name)
        ),
    }
}

fn state_name(state: LinkState) -> &'static str {
    match state {
        LinkState::Up => "up",
        LinkState::Down => "down",
        LinkState::Degraded => "degraded",
    }
}

fn number<T: std::str::FromStr>(tree: &DataTree<'static>, path: &str) -> Option<T> {
    value(tree, path).and_then(|v| v.parse().ok())
}

/// What a configuration tree asks of the agent.
struct Desired {
    settings: Settings,
    links: BTreeMap<String, (String, String, LinkEnd, LinkSettings)>,
}

/// Links are keyed by their names: an entry's `link-name`, else the name of the agent's
/// link with that `qkdl_id`, else the `qkdl_id` itself (a link the agent does not have).
fn read_desired(agent: &Agent, tree: &DataTree<'static>) -> Result<Desired, RpcError> {
    let mut links = BTreeMap::new();
    let set = tree
        .find_xpath(&format!("{NODE}/qkd_links/qkd_link"))
        .map_err(RpcError::from)?;
    for node in set {
        let Some(uuid) = node
            .find_path("qkdl_id")
            .ok()
            .and_then(|n| n.value_canonical())
        else {
            continue;
        };
        let base = format!("{NODE}/qkd_links/qkd_link[qkdl_id='{uuid}']");
        let named = value(tree, &format!("{base}/qkdni-etsi-ids:link-name"));
        let known = etsi_node::link_name(agent, &uuid);
        let id = match (named, known) {
            (Some(named), Some(known)) if named != known => {
                return Err(RpcError::application(
                    ErrorTag::InvalidValue,
                    format!("qkdl_id {uuid} is link {known}, not {named}"),
                )
                .path(format!("{base}/qkdni-etsi-ids:link-name")))
            }
            (_, Some(known)) => known,
            (Some(named), None) => named,
            (None, None) => uuid,
        };
        let Some(peer) = value(tree, &format!("{base}/qkdni-km:peer-node")) else {
            continue; // a virtual link: not managed by the quantum layer of this agent
        };
        let peer_kma = value(tree, &format!("{base}/qkdni-km:peer-kma")).unwrap_or_default();
        let end = match value(tree, &format!("{base}/qkdni-km:end")).as_deref() {
            Some("tx") => LinkEnd::Tx,
            _ => LinkEnd::Rx,
        };
        let admin = match value(tree, &format!("{base}/qkdni-km:admin-state")).as_deref() {
            Some("down") => LinkState::Down,
            Some("degraded") => LinkState::Degraded,
            _ => LinkState::Up,
        };
        let enabled = value(tree, &format!("{base}/qkdl_enable")).as_deref() != Some("false");
        let rate = match number::<f64>(tree, &format!("{base}/qkdni-km:rate-bps")) {
            Some(rate_bps) => RateSpec::Fixed { rate_bps },
            None => {
                let m = |leaf: &str, default: f64| {
                    number::<f64>(tree, &format!("{base}/qkdni-km:link-model/{leaf}"))
                        .unwrap_or(default)
                };
                let d = LinkParams::default();
                RateSpec::Model(LinkParams {
                    length_km: m("length-km", d.length_km),
                    attenuation_db_per_km: m("attenuation-db-per-km", d.attenuation_db_per_km),
                    detector_efficiency: m("detector-efficiency", d.detector_efficiency),
                    dark_count_prob: m("dark-count-prob", d.dark_count_prob),
                    misalignment: m("misalignment", d.misalignment),
                    ec_efficiency: m("ec-efficiency", d.ec_efficiency),
                    pulse_rate_hz: m("pulse-rate-hz", d.pulse_rate_hz),
                })
            }
        };
        if let RateSpec::Model(params) = &rate {
            params.validate().map_err(|e| {
                RpcError::application(ErrorTag::InvalidValue, format!("link {id}: {e}"))
                    .path(format!("{base}/qkdni-km:link-model"))
            })?;
        }
        let capacity_blocks =
            number(tree, &format!("{base}/qkdni-km:capacity-blocks")).unwrap_or(16_384);
        let settings = LinkSettings {
            rate,
            admin: if enabled { admin } else { LinkState::Down },
            capacity_blocks,
        };
        links.insert(id, (peer, peer_kma, end, settings));
    }
    let mut saes = BTreeMap::new();
    let mut foreign_saes = BTreeMap::new();
    for node in tree
        .find_xpath(&format!("{KM}/saes/sae"))
        .map_err(RpcError::from)?
    {
        let field = |name: &str| node.find_path(name).ok().and_then(|n| n.value_canonical());
        if let (Some(id), Some(at)) = (field("sae-id"), field("node")) {
            if let Some(domain) = field("domain") {
                foreign_saes.insert(id.clone(), domain);
            }
            saes.insert(id, at);
        }
    }
    let mut routes = BTreeMap::new();
    for node in tree
        .find_xpath(&format!("{KM}/relay-routes/route"))
        .map_err(RpcError::from)?
    {
        let dest = node
            .find_path("destination")
            .ok()
            .and_then(|n| n.value_canonical());
        let field = |node: &yang2::data::DataNodeRef<'_, '_>, name: &str| {
            node.find_path(name).ok().and_then(|n| n.value_canonical())
        };
        let weight = |node: &yang2::data::DataNodeRef<'_, '_>| {
            field(node, "weight")
                .and_then(|w| w.parse().ok())
                .unwrap_or(1)
        };
        if let (Some(dest), Some(hop)) = (dest, field(&node, "next-hop")) {
            let mut hops = vec![(hop, weight(&node))];
            for alternate in node.children().filter(|c| c.schema().name() == "alternate") {
                if let Some(hop) = field(&alternate, "next-hop") {
                    hops.push((hop, weight(&alternate)));
                }
            }
            routes.insert(dest, hops);
        }
    }
    let d = Etsi014Limits::default();
    let e =
        |leaf: &str, default: u32| number(tree, &format!("{KM}/etsi014/{leaf}")).unwrap_or(default);
    let etsi014 = Etsi014Limits {
        key_size: e("key-size", d.key_size),
        max_key_per_request: e("max-key-per-request", d.max_key_per_request),
        max_key_size: e("max-key-size", d.max_key_size),
        min_key_size: e("min-key-size", d.min_key_size),
        max_sae_id_count: e("max-sae-id-count", d.max_sae_id_count),
    };
    let low_key_threshold_percent =
        number(tree, &format!("{KM}/low-key-threshold-percent")).unwrap_or(10);
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

impl Application for Northbound {
    fn initial_config(&self) -> String {
        let agent = &self.agent;
        let build = || -> Result<String, RpcError> {
            let mut tree = crate::yang::empty();
            etsi_node::write_config(&mut tree, agent)?;
            for link in agent.links() {
                let c = &link.config;
                let base = link_path(agent, &c.id);
                let s = link.settings();
                set(&mut tree, &format!("{base}/qkdni-km:peer-node"), &c.peer)?;
                set(&mut tree, &format!("{base}/qkdni-km:peer-kma"), &c.peer_kma)?;
                set(
                    &mut tree,
                    &format!("{base}/qkdni-km:end"),
                    if c.end == LinkEnd::Tx { "tx" } else { "rx" },
                )?;
                set(
                    &mut tree,
                    &format!("{base}/qkdni-km:admin-state"),
                    state_name(s.admin),
                )?;
                match &s.rate {
                    RateSpec::Fixed { rate_bps } => set(
                        &mut tree,
                        &format!("{base}/qkdni-km:rate-bps"),
                        &format!("{rate_bps:.3}"),
                    )?,
                    RateSpec::Model(p) => {
                        let m = format!("{base}/qkdni-km:link-model");
                        set(
                            &mut tree,
                            &format!("{m}/length-km"),
                            &decimal(p.length_km, 3),
                        )?;
                        set(
                            &mut tree,
                            &format!("{m}/attenuation-db-per-km"),
                            &decimal(p.attenuation_db_per_km, 4),
                        )?;
                        set(
                            &mut tree,
                            &format!("{m}/detector-efficiency"),
                            &decimal(p.detector_efficiency, 6),
                        )?;
                        set(
                            &mut tree,
                            &format!("{m}/dark-count-prob"),
                            &decimal(p.dark_count_prob, 12),
                        )?;
                        set(
                            &mut tree,
                            &format!("{m}/misalignment"),
                            &decimal(p.misalignment, 6),
                        )?;
                        set(
                            &mut tree,
                            &format!("{m}/ec-efficiency"),
                            &decimal(p.ec_efficiency, 4),
                        )?;
                        set(
                            &mut tree,
                            &format!("{m}/pulse-rate-hz"),
                            &format!("{}", p.pulse_rate_hz as u64),
                        )?;
                    }
                }
                set(
                    &mut tree,
                    &format!("{base}/qkdni-km:capacity-blocks"),
                    &s.capacity_blocks.to_string(),
                )?;
            }
            let settings = agent.settings();
            for (sae, node) in &settings.saes {
                set(
                    &mut tree,
                    &format!(
                        "{KM}/saes/sae[sae-id={}]/node",
                        crate::netconf::xml::quote(sae)
                    ),
                    node,
                )?;
            }
            for (dest, hops) in &settings.routes {
                let route = format!(
                    "{KM}/relay-routes/route[destination={}]",
                    crate::netconf::xml::quote(dest)
                );
                for (i, (hop, weight)) in hops.iter().enumerate() {
                    let at = if i == 0 {
                        route.clone()
                    } else {
                        format!(
                            "{route}/alternate[next-hop={}]",
                            crate::netconf::xml::quote(hop)
                        )
                    };
                    if i == 0 {
                        set(&mut tree, &format!("{at}/next-hop"), hop)?;
                    }
                    set(&mut tree, &format!("{at}/weight"), &weight.to_string())?;
                }
            }
            let l = &settings.etsi014;
            set(
                &mut tree,
                &format!("{KM}/etsi014/key-size"),
                &l.key_size.to_string(),
            )?;
            set(
                &mut tree,
                &format!("{KM}/etsi014/max-key-per-request"),
                &l.max_key_per_request.to_string(),
            )?;
            set(
                &mut tree,
                &format!("{KM}/etsi014/max-key-size"),
                &l.max_key_size.to_string(),
            )?;
            set(
                &mut tree,
                &format!("{KM}/etsi014/min-key-size"),
                &l.min_key_size.to_string(),
            )?;
            set(
                &mut tree,
                &format!("{KM}/etsi014/max-sae-id-count"),
                &l.max_sae_id_count.to_string(),
            )?;
            crate::netconf::datastore::to_xml(&tree)
        };
        build().unwrap_or_else(|error| {
            tracing::error!(%error, "cannot express the agent configuration in YANG");
            String::new()
        })
    }

    fn apply(&self, _old: &DataTree<'static>, new: &DataTree<'static>) -> Result<(), RpcError> {
        let desired = read_desired(&self.agent, new)?;
        // prepare: every check before any change
        let uuid = etsi_node::node_uuid(&self.agent).to_string();
        let node = value(new, &format!("{NODE}/qkdn_id"));
        if node.as_deref().is_some_and(|n| n != uuid) {
            return Err(RpcError::application(
                ErrorTag::InvalidValue,
                format!("this node is {} ({uuid})", self.agent.config.node),
            )
            .path(format!("{NODE}/qkdn_id")));
        }
        let name = value(new, &format!("{NODE}/qkdni-etsi-ids:node-name"));
        if name.as_deref().is_some_and(|n| n != self.agent.config.node) {
            return Err(RpcError::application(
                ErrorTag::InvalidValue,
                format!("this node is {}", self.agent.config.node),
            )
            .path(format!("{NODE}/qkdni-etsi-ids:node-name")));
        }
        for link in self.agent.links() {
            let c = &link.config;
            match desired.links.get(&c.id) {
                None => {
                    return Err(RpcError::application(
                        ErrorTag::OperationNotSupported,
                        format!("link {} cannot be removed while the agent runs", c.id),
                    )
                    .path(link_path(&self.agent, &c.id)))
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
                    .path(link_path(&self.agent, &c.id)))
                }
                _ => {}
            }
        }
        if let Some(extra) = desired
            .links
            .keys()
            .find(|id| self.agent.link(id).is_none())
        {
            return Err(RpcError::application(
                ErrorTag::OperationNotSupported,
                format!("link {extra} is unknown to the quantum layer of this node"),
            )
            .path(link_path(&self.agent, extra)));
        }
        for (dest, hop) in desired
            .settings
            .routes
            .iter()
            .flat_map(|(dest, hops)| hops.iter().map(move |(hop, _)| (dest, hop)))
        {
            if self.agent.config.link_to(hop).is_none() {
                return Err(RpcError::application(
                    ErrorTag::InvalidValue,
                    format!("next hop {hop} of {dest} is not a link peer"),
                )
                .path(format!(
                    "{KM}/relay-routes/route[destination={}]",
                    crate::netconf::xml::quote(dest)
                )));
            }
        }
        if let Some(problem) = desired.settings.etsi014.beyond_relay_limits() {
            return Err(RpcError::application(ErrorTag::InvalidValue, problem)
                .path(format!("{KM}/etsi014")));
        }
        // apply
        let here = &self.agent.config.node;
        let registered = |sae: &str| desired.settings.saes.get(sae) == Some(here);
        let gone = self.agent.applications.retain(registered);
        self.agent.set_settings(desired.settings);
        for app in gone {
            self.agent.emit(super::events::Event::ApplicationGone(app));
        }
        for (id, (_, _, _, settings)) in desired.links {
            if self.agent.link(&id).map(|l| l.settings()) != Some(settings.clone()) {
                self.agent.set_link(&id, settings);
            }
        }
        tracing::info!("configuration applied");
        Ok(())
    }

    fn state(&self) -> Result<DataTree<'static>, RpcError> {
        let agent = &self.agent;
        let mut tree = crate::yang::empty();
        etsi_node::write_state(&mut tree, agent)?;
        let store_err = |e: super::store::StoreError| {
            RpcError::application(ErrorTag::OperationFailed, e.to_string())
        };
        for link in agent.links() {
            let c = &link.config;
            let base = link_path(agent, &c.id);
            let condition = link.condition();
            let own = agent
                .store
                .available(&c.id, c.end.owner())
                .map_err(store_err)?;
            let peer = agent
                .store
                .available(&c.id, 1 - c.end.owner())
                .map_err(store_err)?;
            let pending = agent.store.pending(&c.id).map_err(store_err)?;
            set(
                &mut tree,
                &format!("{base}/qkdni-km:oper-state"),
                state_name(condition.state),
            )?;
            if let Some(qber) = condition.qber {
                set(
                    &mut tree,
                    &format!("{base}/qkdni-km:qber"),
                    &decimal(qber, 6),
                )?;
            }
            set(
                &mut tree,
                &format!("{base}/qkdni-km:secret-key-rate-bps"),
                &format!("{:.3}", condition.rate_bps),
            )?;
            let pool = format!("{base}/qkdni-km:key-pool");
            set(&mut tree, &format!("{pool}/own-blocks"), &own.to_string())?;
            set(&mut tree, &format!("{pool}/peer-blocks"), &peer.to_string())?;
            set(
                &mut tree,
                &format!("{pool}/pending-blocks"),
                &pending.to_string(),
            )?;
            set(
                &mut tree,
                &format!("{pool}/capacity-blocks"),
                &condition.capacity_blocks.to_string(),
            )?;
            set(
                &mut tree,
                &format!("{pool}/consumed-blocks"),
                &link
                    .consumed_blocks
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .to_string(),
            )?;
            let fill =
                100.0 * (own + peer + pending) as f64 / condition.capacity_blocks.max(1) as f64;
            set(
                &mut tree,
                &format!("{pool}/fill-percent"),
                &format!("{:.2}", fill.min(100.0)),
            )?;
        }
        let counters = &agent.counters;
        set(
            &mut tree,
            &format!("{KM}/etsi014/keys-supplied"),
            &counters
                .keys_supplied
                .load(std::sync::atomic::Ordering::Relaxed)
                .to_string(),
        )?;
        set(
            &mut tree,
            &format!("{KM}/etsi014/keys-delivered"),
            &counters
                .keys_delivered
                .load(std::sync::atomic::Ordering::Relaxed)
                .to_string(),
        )?;
        let waiting = agent.store.deliveries_waiting().map_err(store_err)?;
        set(
            &mut tree,
            &format!("{KM}/etsi014/deliveries-waiting"),
            &waiting.to_string(),
        )?;
        for (leaf, counter) in [
            ("keys-expired", &counters.keys_expired),
            ("requests-shed", &counters.requests_shed),
        ] {
            set(
                &mut tree,
                &format!("{KM}/etsi014/{leaf}"),
                &counter
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .to_string(),
            )?;
        }
        let pairs = counters
            .pairs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for ((master, slave), used) in pairs {
            let base = format!(
                "{KM}/etsi014/pair[master-sae={}][slave-sae={}]",
                crate::netconf::xml::quote(&master),
                crate::netconf::xml::quote(&slave)
            );
            set(
                &mut tree,
                &format!("{base}/requests"),
                &used.requests.to_string(),
            )?;
            set(&mut tree, &format!("{base}/keys"), &used.keys.to_string())?;
        }
        Ok(tree)
    }

    fn notifications(&self) -> broadcast::Receiver<Notification> {
        self.notifications.subscribe()
    }

    fn security_event(&self, event: crate::netconf::server::SecurityEvent) {
        self.agent.emit(super::events::Event::Security(event));
    }
}

/// A decimal64 literal for libyang: no exponent, at most `digits` fraction digits (the
/// leaf's `fraction-digits`).
fn decimal(v: f64, digits: usize) -> String {
    let s = format!("{v:.digits$}");
    let s = s.trim_end_matches('0');
    if s.ends_with('.') {
        format!("{s}0")
    } else {
        s.to_owned()
    }
}
