//! The controller under NETCONF for operators: its configuration (route policy, poll
//! interval, agents) and its view of the domain (topology, installed routes, sessions) in the
//! `qkdni-controller` YANG model.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::broadcast;
use yang2::data::{Data, DataTree};

use super::controller::Controller;
use crate::netconf::datastore::{leaf as value, set_leaf as set};
use crate::netconf::server::{Application, Notification};
use crate::netconf::{ErrorTag, RpcError};

use crate::model::controller::{
    self as model, agent, controller_event as event, root, session, topology_link, ROOT,
};

/// The controller behind its operators' NETCONF server.
pub struct Operator {
    controller: Arc<Controller>,
    notifications: broadcast::Sender<Notification>,
}

impl Operator {
    /// Wraps the controller; its events become `controller-event` notifications (call from
    /// within the runtime).
    pub fn new(controller: Arc<Controller>) -> Self {
        let notifications = broadcast::channel(256).0;
        let sender: broadcast::Sender<Notification> = notifications.clone();
        let mut events = controller.subscribe_events();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) => match notification(&event) {
                        Ok(n) => {
                            let _ = sender.send(n);
                        }
                        Err(error) => tracing::warn!(%error, "event not expressible in YANG"),
                    },
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Self {
            controller,
            notifications,
        }
    }
}

/// A controller event as a `qkdni-controller:controller-event` notification.
fn notification(event: &super::controller::ControllerEvent) -> Result<Notification, yang2::Error> {
    let mut leaves = vec![
        (event::KIND, event.kind.clone()),
        (event::DETAIL, event.detail.clone()),
    ];
    if let Some(session) = event.session {
        leaves.push((event::SESSION, session.to_string()));
    }
    if let Some(transaction) = event.transaction {
        leaves.push((event::TRANSACTION, transaction.to_string()));
    }
    if let Some(ms) = event.duration_ms {
        leaves.push((event::DURATION_MS, format!("{ms:.3}")));
    }
    Notification::from_leaves(
        model::MODULE,
        model::NAMESPACE,
        crate::model::notification_name(event::PARENT),
        &leaves,
        event.time.clone(),
    )
}

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

impl Application for Operator {
    fn initial_config(&self) -> String {
        let build = || -> Result<String, RpcError> {
            let mut tree = crate::yang::empty();
            let config = &self.controller.config;
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
            super::interworking_yang::configuration(&mut tree, config)?;
            crate::netconf::datastore::to_xml(&tree)
        };
        build().unwrap_or_else(|error| {
            tracing::error!(%error, "cannot express the controller configuration in YANG");
            String::new()
        })
    }

    fn apply(&self, _old: &DataTree<'static>, new: &DataTree<'static>) -> Result<(), RpcError> {
        let configured: BTreeMap<String, (String, String)> = self
            .controller
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
        super::interworking_yang::check(new, &self.controller.config)?;
        let policy =
            value(new, &format!("{ROOT}/{}", root::POLICY)).unwrap_or_else(|| "key-aware".into());
        let poll = value(new, &format!("{ROOT}/{}", root::POLL_SECONDS))
            .and_then(|v| v.parse().ok())
            .unwrap_or(2);
        self.controller.set_policy(&policy).map_err(|e| {
            RpcError::application(ErrorTag::InvalidValue, e.to_string())
                .path(format!("{ROOT}/{}", root::POLICY))
        })?;
        self.controller.set_poll_seconds(poll);
        if let Some(idle) = value(new, &format!("{ROOT}/{}", root::ON_DEMAND_IDLE_SECONDS))
            .and_then(|v| v.parse().ok())
        {
            self.controller.set_on_demand_idle_seconds(idle);
        }
        tracing::info!(%policy, poll_seconds = poll, "controller configuration applied");
        Ok(())
    }

    fn state(&self) -> Result<DataTree<'static>, RpcError> {
        let view = self.controller.view();
        let (topology, sessions) = (&view.topology, &view.sessions);
        let mut tree = crate::yang::empty();
        super::interworking_yang::state(&mut tree, &self.controller, sessions, &view.agreeing)?;
        set(
            &mut tree,
            &format!("{ROOT}/{}", root::DOMAIN),
            &self.controller.config.domain,
        )?;
        for (id, node) in &topology.nodes {
            let base = model::agent_entry(id);
            if self.controller.config.agents.iter().all(|a| &a.node != id) {
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
                super::sessions::SessionState::Active => "active",
                super::sessions::SessionState::Unroutable => "unroutable",
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

    fn notifications(&self) -> broadcast::Receiver<Notification> {
        self.notifications.subscribe()
    }
}
