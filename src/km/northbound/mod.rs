//! The KM agent's NETCONF northbound: its configuration and state in the `etsi-qkd-sdn-node`
//! (ETSI GS QKD 015, [`etsi_node`]), `qkdni-etsi-ids` and `qkdni-km` models, applied as one
//! transaction (validate whole, check, apply), and its notifications.
//!
//! - [`configuration`] — the tree the agent starts with; a new configuration checked and applied;
//! - [`state`] — links, key pools, ETSI GS QKD 014 counters;
//! - [`notification`] — the agent's events as `qkdni-km` notifications, and
//!   [`etsi_notification`] the ETSI GS QKD 015 ones;
//! - [`etsi_node`] — the node as ETSI GS QKD 015 models it;
//! - [`transfer`] — the transfer links of a KM in an interworking node;
//! - [`local_control`] — the local controller of a node in a distributed QKDN: its route
//!   policy, link-state database and computed routes.

use std::sync::Arc;

use tokio::sync::broadcast;
use yang2::data::DataTree;

use crate::km::agent::Agent;
use crate::km::events::Event;
use crate::model::etsi_node as etsi;
use crate::netconf::datastore::leaf as value;
use crate::netconf::server::{Application, Notification, SecurityEvent};
use crate::netconf::RpcError;

pub mod configuration;
pub mod etsi_node;
pub mod etsi_notification;
pub mod local_control;
pub mod notification;
pub mod state;
pub mod transfer;

/// The agent behind its NETCONF server.
pub struct Northbound {
    agent: Arc<Agent>,
    notifications: broadcast::Sender<Notification>,
}

impl Northbound {
    /// Wraps the agent and starts turning its events into notifications.
    pub fn new(agent: Arc<Agent>) -> Self {
        let notifications = notification::start(agent.clone());
        Self {
            agent,
            notifications,
        }
    }
}

impl Application for Northbound {
    fn audit(&self) -> Option<&crate::audit::AuditLog> {
        Some(&self.agent.audit)
    }

    fn initial_config(&self) -> String {
        configuration::initial(&self.agent)
    }

    fn apply(&self, _old: &DataTree<'static>, new: &DataTree<'static>) -> Result<(), RpcError> {
        configuration::apply(&self.agent, new)
    }

    fn state(&self) -> Result<DataTree<'static>, RpcError> {
        state::state(&self.agent)
    }

    fn notifications(&self) -> broadcast::Receiver<Notification> {
        self.notifications.subscribe()
    }

    fn security_event(&self, event: SecurityEvent) {
        let SecurityEvent::AuthFailure {
            user,
            source,
            method,
            ..
        } = &event;
        self.agent.refusals.record(
            crate::refusals::Point::Netconf,
            "authentication-failed",
            crate::refusals::Source::new(*source, Some(user.clone())),
            &format!("{method} login of {user} failed"),
        );
        self.agent.emit(Event::Security(event));
    }
}

/// Path of the `qkd_link` entry of link `name` (by its `qkdl_id`).
pub(crate) fn link_path(agent: &Agent, name: &str) -> String {
    match agent.link_config(name) {
        Some(c) => etsi_node::link_path(&etsi_node::link_uuid(agent, c)),
        None => etsi::link_entry_named(name),
    }
}

pub(crate) fn number<T: std::str::FromStr>(tree: &DataTree<'static>, path: &str) -> Option<T> {
    value(tree, path).and_then(|v| v.parse().ok())
}

/// The number at `{entry}/{leaf}`, else the default the YANG module gives the leaf at
/// `{schema}/{leaf}`.
pub(crate) fn number_or_default<T: std::str::FromStr>(
    tree: &DataTree<'static>,
    entry: &str,
    schema: &str,
    leaf: &str,
) -> T {
    number(tree, &format!("{entry}/{leaf}")).unwrap_or_else(|| {
        crate::model::default_of(&format!("{schema}/{leaf}"))
            .parse()
            .unwrap_or_else(|_| panic!("the YANG default of {schema}/{leaf} is a number"))
    })
}

/// A decimal64 literal for libyang: no exponent, at most `digits` fraction digits (the
/// leaf's `fraction-digits`).
pub(crate) fn decimal(v: f64, digits: usize) -> String {
    let s = format!("{v:.digits$}");
    let s = s.trim_end_matches('0');
    if s.ends_with('.') {
        format!("{s}0")
    } else {
        s.to_owned()
    }
}
