//! The local controller of a node in a distributed QKDN under NETCONF
//! (`key-manager/local-control`): its route policy (configuration), and its neighbours,
//! link-state database, computed routes and protocol figures (state). Only a node whose
//! configuration file asks for a local controller has the container; on any other node an
//! edit that sets something in it is refused.

use yang2::data::DataTree;

use super::decimal;
use crate::control::link_state::lsa::now_ms;
use crate::control::link_state::LinkState;
use crate::km::agent::Agent;
use crate::model::km::{
    self as model, advertisement as ad, computed_route as route, local_control as leaf,
    LOCAL_CONTROL,
};
use crate::netconf::datastore::{leaf as value, set_leaf as set};
use crate::netconf::server::rfc3339_ms;
use crate::netconf::{ErrorTag, RpcError};

/// The route policy the node starts with: its configuration file's.
pub(super) fn write_config(tree: &mut DataTree<'static>, agent: &Agent) -> Result<(), RpcError> {
    let (Some(_), Some(config)) = (agent.local_control(), &agent.config.local_control) else {
        return Ok(());
    };
    set(tree, &policy_path(), &config.policy)
}

/// The policy a configuration asks of the local controller: its `policy` leaf, else the
/// configuration file's; `None` on a node without a local controller. Refuses a
/// configuration that sets a policy on such a node.
pub(super) fn check(agent: &Agent, tree: &DataTree<'static>) -> Result<Option<String>, RpcError> {
    let asked = value(tree, &policy_path());
    match (agent.local_control(), asked) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(RpcError::application(
            ErrorTag::OperationNotSupported,
            format!(
                "node {} runs no local controller: its key manager's configuration file has \
                 no local_control",
                agent.config.node
            ),
        )
        .path(LOCAL_CONTROL.to_owned())),
        (Some(_), Some(policy)) => Ok(Some(policy)),
        (Some(control), None) => {
            Ok(Some(agent.config.local_control.as_ref().map_or_else(
                || control.policy().to_owned(),
                |c| c.policy.clone(),
            )))
        }
    }
}

/// Routes with `policy` from now on. The names are the local controller's catalog's, which
/// only [`LinkState::set_policy`] consults, and it checks and switches in one step: an
/// unknown name (`invalid-value`, naming the known ones) changes nothing. The caller runs
/// it after every other check and before any other change, so a refused edit leaves the
/// whole agent as it was.
pub(super) fn apply(agent: &Agent, policy: Option<&str>) -> Result<(), RpcError> {
    let (Some(control), Some(policy)) = (agent.local_control(), policy) else {
        return Ok(());
    };
    let before = control.policy();
    control.set_policy(policy).map_err(|message| {
        RpcError::application(ErrorTag::InvalidValue, message).path(policy_path())
    })?;
    if control.policy() != before {
        tracing::info!(from = before, to = control.policy(), "route policy changed");
    }
    Ok(())
}

/// The local controller's state: neighbours, link-state database, computed routes and
/// figures.
pub(super) fn write_state(tree: &mut DataTree<'static>, agent: &Agent) -> Result<(), RpcError> {
    let Some(control) = agent.local_control() else {
        return Ok(());
    };
    for neighbour in control.neighbours() {
        set(tree, &model::neighbour_entry(&neighbour), &neighbour)?;
    }
    write_database(tree, control)?;
    write_routes(tree, control)?;
    write_statistics(tree, control)
}

fn write_database(tree: &mut DataTree<'static>, control: &LinkState) -> Result<(), RpcError> {
    let now = now_ms();
    for entry in control.database() {
        let lsa = &entry.lsa;
        let base = model::advertisement_entry(&lsa.origin);
        let at = |leaf: &str| format!("{base}/{leaf}");
        set(tree, &at(ad::SEQUENCE), &lsa.seq.to_string())?;
        set(tree, &at(ad::ORIGINATED), &rfc3339_ms(lsa.originated_ms))?;
        set(tree, &at(ad::INSTALLED), &rfc3339_ms(entry.installed_ms))?;
        set(tree, &at(ad::AGE), &lsa.age_ms(now).to_string())?;
        if let Some(from) = &entry.from {
            set(tree, &at(ad::RECEIVED_FROM), from)?;
        }
        for link in &lsa.links {
            let entry = model::advertised_link_entry(&base, &link.id);
            let at = |leaf: &str| format!("{entry}/{}", model::local(leaf));
            set(tree, &at(ad::LINK_PEER_NODE), &link.peer)?;
            set(
                tree,
                &at(ad::LINK_UP),
                if link.up { "true" } else { "false" },
            )?;
            set(
                tree,
                &at(ad::LINK_KEY_RATE),
                &format!("{:.3}", finite(link.key_rate_bps).max(0.0)),
            )?;
            set(
                tree,
                &at(ad::LINK_AVAILABLE_BITS),
                &(finite(link.available_bits).max(0.0).round() as u64).to_string(),
            )?;
            set(
                tree,
                &at(ad::LINK_QBER),
                &decimal(finite(link.qber).clamp(0.0, 1.0), 6),
            )?;
        }
        for sae in &lsa.saes {
            set(tree, &model::advertised_sae_entry(&base, sae), sae)?;
        }
    }
    Ok(())
}

/// Written as the configured `relay-routes` are: the primary next hop on the entry, the
/// others as alternates.
fn write_routes(tree: &mut DataTree<'static>, control: &LinkState) -> Result<(), RpcError> {
    for (dest, hops) in control.routes() {
        let entry = model::computed_route_entry(&dest);
        for (i, (hop, weight)) in hops.iter().enumerate() {
            let at = if i == 0 {
                set(tree, &format!("{entry}/{}", route::NEXT_HOP), hop)?;
                entry.clone()
            } else {
                model::alternate_entry(&entry, hop)
            };
            set(
                tree,
                &format!("{at}/{}", route::WEIGHT),
                &(*weight).max(1).to_string(),
            )?;
        }
    }
    Ok(())
}

fn write_statistics(tree: &mut DataTree<'static>, control: &LinkState) -> Result<(), RpcError> {
    let stats = control.stats();
    for (path, count) in [
        (leaf::FLOODS_SENT, stats.floods_sent),
        (leaf::FLOODS_RECEIVED, stats.floods_received),
        (leaf::FLOODS_FAILED, stats.floods_failed),
        (leaf::BYTES_SENT, stats.bytes_sent),
        (leaf::ORIGINATED, stats.originated),
        (leaf::ROUTE_RUNS, stats.route_runs),
    ] {
        set(tree, &format!("{LOCAL_CONTROL}/{path}"), &count.to_string())?;
    }
    if stats.route_runs > 0 {
        set(
            tree,
            &format!("{LOCAL_CONTROL}/{}", leaf::LAST_ROUTE_RUN),
            &rfc3339_ms(stats.last_route_run_ms),
        )?;
    }
    Ok(())
}

fn policy_path() -> String {
    format!("{LOCAL_CONTROL}/{}", leaf::POLICY)
}

/// `v`, or 0 if it is not a number (a peer's advertisement is not trusted to be sane).
fn finite(v: f64) -> f64 {
    if v.is_finite() {
        v
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use yang2::data::{DataFormat, DataParserFlags, DataValidationFlags};

    use super::*;
    use crate::control::link_state::memory::{locals, Mesh};
    use crate::km::local_control::local_view;
    use crate::km::northbound::{configuration, state, Northbound};
    use crate::model::km::{advertisement_entry, computed_route_entry, key_manager, KEY_MANAGER};
    use crate::netconf::datastore::{duplicate, parse_config, to_xml};
    use crate::pki::{Authority, Role};

    const CATALOG: qkdni_route_policy::Catalog = qkdni_routing::CATALOG;

    /// KM agent `a1` with QKD links to `a2` and `a4`, in `dir`; with `[local_control]`
    /// (policy fewest-hops) when `local` is set.
    fn agent(dir: &std::path::Path, local: bool) -> Arc<Agent> {
        let ca = Authority::new("A").unwrap();
        let issued = ca.issue_to(dir, "a1", "a1", Role::Node).unwrap();
        std::fs::write(dir.join("ca.crt"), ca.cert_pem()).unwrap();
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        };
        let local_control = if local {
            "[local_control]\npolicy = \"fewest-hops\"\n"
        } else {
            ""
        };
        let text = format!(
            r#"
node = "a1"
domain = "A"
data_dir = "{data}"
etsi014_listen = "{etsi}"
kma_listen = "{kma}"
[tls]
cert = "{cert}"
key = "{key}"
ca = ["{ca}"]
[[links]]
id = "a1-a2"
peer = "a2"
peer_kma = "https://{nobody}"
end = "tx"
rate_bps = 10000.0
[[links]]
id = "a4-a1"
peer = "a4"
peer_kma = "https://{nobody}"
end = "rx"
rate_bps = 10000.0
[saes]
sae-a1 = "a1"
{local_control}"#,
            data = dir.join("data").display(),
            etsi = free(),
            kma = free(),
            nobody = free(),
            cert = issued.cert.display(),
            key = issued.key.display(),
            ca = dir.join("ca.crt").display(),
        );
        Agent::new(toml::from_str(&text).unwrap()).unwrap()
    }

    /// The ring a1-a2-a3-a4-a1: `a1` is the agent's local controller, the others run in
    /// memory. Returns every node's protocol (kept alive with the mesh).
    fn ring(agent: &Agent) -> (Arc<Mesh>, Vec<(String, Arc<LinkState>)>) {
        let mesh = Arc::new(Mesh::default());
        let mut nodes = Vec::new();
        for n in ["a1", "a2", "a3", "a4"] {
            nodes.push((n.to_owned(), mesh.node(n, CATALOG, "fewest-hops")));
        }
        agent.attach_local_control(nodes[0].1.clone());
        (mesh, nodes)
    }

    fn ring_links() -> Vec<(String, String, String)> {
        [
            ("a1-a2", "a1", "a2"),
            ("a2-a3", "a2", "a3"),
            ("a3-a4", "a3", "a4"),
        ]
        .into_iter()
        .chain([("a4-a1", "a4", "a1")])
        .map(|(id, a, b)| (id.to_owned(), a.to_owned(), b.to_owned()))
        .collect()
    }

    /// Feeds every node (the agent's with its own links) until the agent's controller holds
    /// every advertisement and a route to every other node.
    async fn converge(agent: &Agent, nodes: &[(String, Arc<LinkState>)]) {
        let views = locals(&ring_links(), &[]);
        let control = agent.local_control().unwrap().clone();
        let mut changes = control.changes();
        for _ in 0..200 {
            control.update(local_view(agent));
            for (name, node) in &nodes[1..] {
                node.update(views[name].clone());
            }
            if control.database().len() == 4 && control.routes().len() == 3 {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), changes.changed()).await;
        }
        panic!(
            "no convergence: database {:?}, routes {:?}",
            control.digest(),
            control.routes()
        );
    }

    /// The running configuration with its state, as `<get>` would return it, parsed back and
    /// validated as a whole datastore (config and state).
    fn datastore(agent: &Agent) -> DataTree<'static> {
        let mut tree = parse_config(&configuration::initial(agent)).unwrap();
        let state = state::state(agent).unwrap();
        tree.merge(&state).unwrap();
        let xml = to_xml(&tree).unwrap();
        crate::yang::parse_data(
            &xml,
            DataFormat::XML,
            DataParserFlags::STRICT,
            DataValidationFlags::PRESENT,
        )
        .unwrap_or_else(|e| panic!("{e}: {xml}"))
    }

    /// `running` with each leaf at a path set to its value (`None`: removed).
    fn edited(running: &DataTree<'static>, edits: &[(&str, Option<&str>)]) -> DataTree<'static> {
        let mut tree = duplicate(running).unwrap();
        for (path, v) in edits {
            match v {
                Some(v) => set(&mut tree, path, v).unwrap(),
                None => tree.remove(path).unwrap(),
            }
        }
        tree
    }

    fn threshold() -> String {
        format!("{KEY_MANAGER}/{}", key_manager::LOW_KEY_THRESHOLD_PERCENT)
    }

    #[tokio::test]
    async fn the_state_shows_the_database_neighbours_and_routes() {
        let dir = crate::km::store::test_dir();
        let agent = agent(&dir.path, true);
        let (_mesh, nodes) = ring(&agent);
        converge(&agent, &nodes).await;
        let tree = datastore(&agent);
        let at = |path: String| value(&tree, &path);
        assert_eq!(at(policy_path()).as_deref(), Some("fewest-hops"));
        for n in ["a2", "a4"] {
            assert_eq!(at(model::neighbour_entry(n)).as_deref(), Some(n));
        }
        assert_eq!(at(model::neighbour_entry("a3")), None);
        // the own advertisement: the agent's links and SAEs, received from nobody
        let own = advertisement_entry("a1");
        assert!(at(format!("{own}/{}", ad::SEQUENCE)).is_some());
        assert!(at(format!("{own}/{}", ad::ORIGINATED))
            .unwrap()
            .starts_with("20"));
        assert!(at(format!("{own}/{}", ad::AGE)).is_some());
        assert_eq!(at(format!("{own}/{}", ad::RECEIVED_FROM)), None);
        let link = model::advertised_link_entry(&own, "a1-a2");
        let of = |leaf: &str| at(format!("{link}/{}", model::local(leaf)));
        assert_eq!(of(ad::LINK_PEER_NODE).as_deref(), Some("a2"));
        assert_eq!(of(ad::LINK_UP).as_deref(), Some("true"));
        assert_eq!(of(ad::LINK_KEY_RATE).as_deref(), Some("10000.0"));
        assert_eq!(of(ad::LINK_AVAILABLE_BITS).as_deref(), Some("0"));
        assert!(of(ad::LINK_QBER).is_some());
        assert_eq!(
            at(model::advertised_sae_entry(&own, "sae-a1")).as_deref(),
            Some("sae-a1")
        );
        // another node's, flooded here by a neighbour
        let far = advertisement_entry("a3");
        let from = at(format!("{far}/{}", ad::RECEIVED_FROM)).unwrap();
        assert!(["a2", "a4"].contains(&from.as_str()), "{from}");
        assert!(at(format!("{far}/{}", ad::INSTALLED)).is_some());
        assert_eq!(
            at(model::advertised_sae_entry(&far, "sae-a3")).as_deref(),
            Some("sae-a3")
        );
        // the routes, shaped as relay-routes
        let hop = |dest: &str| {
            at(format!(
                "{}/{}",
                computed_route_entry(dest),
                route::NEXT_HOP
            ))
        };
        assert_eq!(hop("a2").as_deref(), Some("a2"));
        assert_eq!(hop("a4").as_deref(), Some("a4"));
        assert!(["a2", "a4"].contains(&hop("a3").unwrap().as_str()));
        assert!(at(format!("{}/{}", computed_route_entry("a2"), route::WEIGHT)).is_some());
        let stat = |leaf: &str| at(format!("{LOCAL_CONTROL}/{leaf}"));
        assert_ne!(stat(leaf::ROUTE_RUNS).as_deref(), Some("0"));
        assert_ne!(stat(leaf::FLOODS_SENT).as_deref(), Some("0"));
        assert!(stat(leaf::LAST_ROUTE_RUN).is_some());
        // as a NETCONF <get> prints it
        let xml = to_xml(&tree).unwrap();
        assert!(
            xml.contains("<local-control><policy>fewest-hops</policy>"),
            "{xml}"
        );
    }

    #[tokio::test]
    async fn a_policy_edit_applies_and_an_unknown_policy_changes_nothing() {
        let dir = crate::km::store::test_dir();
        let agent = agent(&dir.path, true);
        let (_mesh, nodes) = ring(&agent);
        converge(&agent, &nodes).await;
        let control = agent.local_control().unwrap().clone();
        let running = parse_config(&configuration::initial(&agent)).unwrap();
        let (policy, threshold) = (policy_path(), threshold());

        let new = edited(
            &running,
            &[(&policy, Some("key-aware")), (&threshold, Some("25"))],
        );
        configuration::apply(&agent, &new).unwrap();
        assert_eq!(control.policy(), "key-aware");
        assert_eq!(agent.settings().low_key_threshold_percent, 25);

        let refused = edited(
            &new,
            &[(&policy, Some("cheapest")), (&threshold, Some("40"))],
        );
        let error = configuration::apply(&agent, &refused).unwrap_err();
        assert_eq!(error.tag, ErrorTag::InvalidValue);
        assert_eq!(error.path.as_deref(), Some(policy.as_str()));
        for name in CATALOG.names {
            assert!(error.message.contains(name), "{}", error.message);
        }
        assert_eq!(control.policy(), "key-aware");
        assert_eq!(agent.settings().low_key_threshold_percent, 25);

        // every policy's routes fit the model (multipath ones with their alternates)
        for name in CATALOG.names {
            configuration::apply(&agent, &edited(&new, &[(&policy, Some(name))])).unwrap();
            assert_eq!(control.policy(), *name);
            datastore(&agent);
        }
        // no policy leaf: the configuration file's
        let unset = edited(&new, &[(&policy, None)]);
        configuration::apply(&agent, &unset).unwrap();
        assert_eq!(control.policy(), "fewest-hops");
    }

    #[tokio::test]
    async fn a_persisted_policy_is_applied_at_start() {
        let dir = crate::km::store::test_dir();
        let agent = agent(&dir.path, true);
        let (_mesh, _nodes) = ring(&agent);
        let running = parse_config(&configuration::initial(&agent)).unwrap();
        let persisted = edited(&running, &[(&policy_path(), Some("multipath"))]);
        let file = dir.path.join("running.xml");
        std::fs::write(&file, to_xml(&persisted).unwrap()).unwrap();
        let config = crate::netconf::server::NetconfConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            host_key: dir.path.join("host_key"),
            users: Vec::new(),
            max_message_bytes: 1 << 20,
            running_file: Some(file),
            limits: Default::default(),
        };
        let northbound = Arc::new(Northbound::new(agent.clone()));
        crate::netconf::server::NetconfServer::new(config, northbound).unwrap();
        assert_eq!(agent.local_control().unwrap().policy(), "multipath");
    }

    #[tokio::test]
    async fn a_node_without_local_control_shows_none_and_refuses_one() {
        let dir = crate::km::store::test_dir();
        let agent = agent(&dir.path, false);
        let initial = configuration::initial(&agent);
        assert!(!initial.contains("local-control"), "{initial}");
        let tree = datastore(&agent);
        assert_eq!(value(&tree, &policy_path()), None);
        let xml = to_xml(&tree).unwrap();
        assert!(!xml.contains("local-control"), "{xml}");

        let running = parse_config(&initial).unwrap();
        let edit = parse_config(&model::local_control_policy_config("fewest-hops")).unwrap();
        let mut new = duplicate(&running).unwrap();
        new.merge(&edit).unwrap();
        set(&mut new, &threshold(), "40").unwrap();
        let error = configuration::apply(&agent, &new).unwrap_err();
        assert_eq!(error.tag, ErrorTag::OperationNotSupported);
        assert_eq!(error.path.as_deref(), Some(LOCAL_CONTROL));
        assert!(
            error.message.contains("no local controller"),
            "{}",
            error.message
        );
        assert!(agent.local_control().is_none());
        assert_eq!(agent.settings().low_key_threshold_percent, 10);
    }
}
