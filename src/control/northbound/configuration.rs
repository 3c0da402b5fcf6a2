//! The controller's configuration under NETCONF: route policy, poll interval, on-demand
//! idle time and the interworking subtree (changed at run time), agents (fixed while it
//! runs).

use std::collections::BTreeMap;

use yang2::data::{Data, DataTree};

use super::interworking;
use crate::control::controller::Controller;
use crate::model::controller::{self as model, agent, root, ROOT};
use crate::netconf::datastore::{leaf as value, set_leaf as set};
use crate::netconf::{ErrorTag, RpcError};

/// node -> (host, port) of every configured agent.
fn agents(tree: &DataTree<'static>) -> Result<BTreeMap<String, (String, String)>, RpcError> {
    let mut out = BTreeMap::new();
    for node in tree.find_xpath(model::AGENT)? {
        let field = |name: &str| node.find_path(name).ok().and_then(|n| n.value_canonical());
        if let (Some(id), Some(host), Some(port)) = (
            field(agent::NODE),
            field(agent::NETCONF_HOST),
            field(agent::NETCONF_PORT),
        ) {
            out.insert(id, (host, port));
        }
    }
    Ok(out)
}

/// The configuration the controller starts with (XML), from its configuration file.
pub(super) fn initial(controller: &Controller) -> String {
    let build = || -> Result<String, RpcError> {
        let mut tree = crate::yang::empty();
        let config = &controller.config;
        set(
            &mut tree,
            &format!("{ROOT}/{}", root::POLICY),
            &config.policy,
        )?;
        set(
            &mut tree,
            &format!("{ROOT}/{}", root::POLL_SECONDS),
            &config.poll_seconds.max(1).to_string(),
        )?;
        set(
            &mut tree,
            &format!("{ROOT}/{}", root::ON_DEMAND_IDLE_SECONDS),
            &config.on_demand_idle_seconds.to_string(),
        )?;
        for agent in &config.agents {
            let base = model::agent_entry(&agent.node);
            set(
                &mut tree,
                &format!("{base}/{}", agent::NETCONF_HOST),
                &agent.netconf.ip().to_string(),
            )?;
            set(
                &mut tree,
                &format!("{base}/{}", agent::NETCONF_PORT),
                &agent.netconf.port().to_string(),
            )?;
            set(
                &mut tree,
                &format!("{base}/{}", agent::ROLE),
                agent.role.name(),
            )?;
        }
        interworking::configuration(&mut tree, config)?;
        crate::netconf::datastore::to_xml(&tree)
    };
    build().unwrap_or_else(|error| {
        tracing::error!(%error, "cannot express the controller configuration in YANG");
        String::new()
    })
}

/// A change of the interworking settings that [`apply`] put in effect.
pub(super) struct InterworkingChange {
    /// What changed, for people.
    pub summary: Vec<String>,
    /// The operator on the manager the change was provisioned for, if any.
    pub operator: Option<String>,
}

/// Checks a new, schema-valid running configuration whole, then applies it; returns the
/// change of the interworking settings, if they changed.
pub(super) fn apply(
    controller: &Controller,
    new: &DataTree<'static>,
) -> Result<Option<InterworkingChange>, RpcError> {
    let configured: BTreeMap<String, (String, String)> = controller
        .config
        .agents
        .iter()
        .map(|a| {
            (
                a.node.clone(),
                (a.netconf.ip().to_string(), a.netconf.port().to_string()),
            )
        })
        .collect();
    if agents(new)? != configured {
        return Err(RpcError::application(
            ErrorTag::OperationNotSupported,
            "the agents of a running controller are fixed: change the configuration file and restart",
        )
        .path(format!("{ROOT}/{}", root::AGENTS)));
    }
    let (settings, operator) = interworking::settings(controller, new)?;
    // the QoS classes, checked whole before anything is applied
    let qos = crate::km::qos::yang::read(new, crate::model::qos::CONTROLLER_QOS)?;
    // absent leaves take the module's defaults
    let leaf = |name: &str| {
        let path = format!("{ROOT}/{name}");
        value(new, &path).unwrap_or_else(|| crate::model::default_of(&path))
    };
    let policy = leaf(root::POLICY);
    let poll = leaf(root::POLL_SECONDS)
        .parse()
        .map_err(|_| RpcError::application(ErrorTag::InvalidValue, "poll-seconds is a number"))?;
    controller.set_policy(&policy).map_err(|e| {
        RpcError::application(ErrorTag::InvalidValue, e.to_string())
            .path(format!("{ROOT}/{}", root::POLICY))
    })?;
    controller.set_poll_seconds(poll);
    if let Ok(idle) = leaf(root::ON_DEMAND_IDLE_SECONDS).parse() {
        controller.set_on_demand_idle_seconds(idle);
    }
    let before = controller.interworking_settings();
    let summary = interworking::summary(&before, &settings);
    controller.set_interworking(settings).map_err(|e| {
        RpcError::application(ErrorTag::InvalidValue, e.to_string())
            .path(crate::model::controller::INTERWORKING.to_owned())
    })?;
    if controller.admission.set_policy(qos) {
        tracing::info!("QoS classes of session admission changed");
    }
    tracing::info!(%policy, poll_seconds = poll, "controller configuration applied");
    Ok((!summary.is_empty()).then_some(InterworkingChange { summary, operator }))
}
