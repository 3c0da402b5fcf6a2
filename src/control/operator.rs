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
use crate::netconf::xml::quote;
use crate::netconf::{ErrorTag, RpcError};

const ROOT: &str = "/qkdni-controller:controller";

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
        ("kind", event.kind.clone()),
        ("detail", event.detail.clone()),
    ];
    if let Some(session) = event.session {
        leaves.push(("session", session.to_string()));
    }
    if let Some(transaction) = event.transaction {
        leaves.push(("transaction", transaction.to_string()));
    }
    if let Some(ms) = event.duration_ms {
        leaves.push(("duration-ms", format!("{ms:.3}")));
    }
    Notification::from_leaves(
        "qkdni-controller",
        "urn:qkdni:yang:qkdni-controller",
        "controller-event",
        &leaves,
        event.time.clone(),
    )
}

/// node -> (host, port) of every configured agent.
fn agents(tree: &DataTree<'static>) -> Result<BTreeMap<String, (String, String)>, RpcError> {
    let mut out = BTreeMap::new();
    for node in tree.find_xpath(&format!("{ROOT}/agents/agent"))? {
        let field = |name: &str| node.find_path(name).ok().and_then(|n| n.value_canonical());
        if let (Some(id), Some(host), Some(port)) =
            (field("node"), field("netconf-host"), field("netconf-port"))
        {
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
            set(&mut tree, &format!("{ROOT}/policy"), &config.policy)?;
            set(
                &mut tree,
                &format!("{ROOT}/poll-seconds"),
                &config.poll_seconds.max(1).to_string(),
            )?;
            set(
                &mut tree,
                &format!("{ROOT}/on-demand-idle-seconds"),
                &config.on_demand_idle_seconds.to_string(),
            )?;
            for agent in &config.agents {
                let base = format!("{ROOT}/agents/agent[node={}]", quote(&agent.node));
                set(
                    &mut tree,
                    &format!("{base}/netconf-host"),
                    &agent.netconf.ip().to_string(),
                )?;
                set(
                    &mut tree,
                    &format!("{base}/netconf-port"),
                    &agent.netconf.port().to_string(),
                )?;
                set(&mut tree, &format!("{base}/role"), agent.role.name())?;
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
            .path(format!("{ROOT}/agents")));
        }
        super::interworking_yang::check(new, &self.controller.config)?;
        let policy = value(new, &format!("{ROOT}/policy")).unwrap_or_else(|| "key-aware".into());
        let poll = value(new, &format!("{ROOT}/poll-seconds"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(2);
        self.controller.set_policy(&policy).map_err(|e| {
            RpcError::application(ErrorTag::InvalidValue, e.to_string())
                .path(format!("{ROOT}/policy"))
        })?;
        self.controller.set_poll_seconds(poll);
        if let Some(idle) =
            value(new, &format!("{ROOT}/on-demand-idle-seconds")).and_then(|v| v.parse().ok())
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
            &format!("{ROOT}/domain"),
            &self.controller.config.domain,
        )?;
        for (id, node) in &topology.nodes {
            let base = format!("{ROOT}/agents/agent[node={}]", quote(id));
            if self.controller.config.agents.iter().all(|a| &a.node != id) {
                continue;
            }
            set(
                &mut tree,
                &format!("{base}/reachable"),
                if node.reachable { "true" } else { "false" },
            )?;
            for (dest, hop) in &node.routes {
                set(
                    &mut tree,
                    &format!("{base}/route[destination={}]/next-hop", quote(dest)),
                    hop,
                )?;
            }
        }
        for (id, link) in &topology.links {
            let base = format!("{ROOT}/topology/link[id={}]", quote(id));
            set(
                &mut tree,
                &format!("{base}/up"),
                if link.up { "true" } else { "false" },
            )?;
            set(
                &mut tree,
                &format!("{base}/rate-bps"),
                &format!("{:.3}", link.rate_bps),
            )?;
            for node in &link.nodes {
                set(&mut tree, &format!("{base}/node"), node)?;
            }
        }
        for (sae, node) in &topology.saes {
            set(
                &mut tree,
                &format!("{ROOT}/topology/sae[id={}]/node", quote(sae)),
                node,
            )?;
        }
        for session in sessions {
            let base = format!("{ROOT}/sessions/session[id='{}']", session.id);
            set(
                &mut tree,
                &format!("{base}/master-sae"),
                &session.master_sae,
            )?;
            set(&mut tree, &format!("{base}/slave-sae"), &session.slave_sae)?;
            let state = match session.state {
                super::sessions::SessionState::Active => "active",
                super::sessions::SessionState::Unroutable => "unroutable",
            };
            set(&mut tree, &format!("{base}/state"), state)?;
            for node in &session.path {
                set(&mut tree, &format!("{base}/path"), node)?;
            }
            set(
                &mut tree,
                &format!("{base}/on-demand"),
                &session.on_demand.to_string(),
            )?;
        }
        Ok(tree)
    }

    fn notifications(&self) -> broadcast::Receiver<Notification> {
        self.notifications.subscribe()
    }
}
