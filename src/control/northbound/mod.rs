//! The controller under NETCONF for operators, in the `qkdni-controller` YANG model:
//!
//! - [`configuration`] — route policy, poll interval, agents (the tree it starts with; a new
//!   configuration checked and applied);
//! - [`state`] — its view of the domain (topology, installed routes, sessions);
//! - [`interworking`] — the `interworking` subtree: Cxi peers, exposure and QoS class names
//!   (configuration, changed at run time, also by the domain's manager: who changed them
//!   last is `interworking/last-change`), both QKDNs as this controller sees them (state);
//! - [`notification`] — its events as `controller-event` notifications.

use std::sync::Arc;

use tokio::sync::broadcast;
use yang2::data::DataTree;

use super::controller::Controller;
use crate::netconf::server::{Application, Notification};
use crate::netconf::RpcError;

pub mod configuration;
pub mod interworking;
pub mod notification;
pub mod state;

/// The controller behind its operators' NETCONF server.
pub struct Operator {
    controller: Arc<Controller>,
    notifications: broadcast::Sender<Notification>,
    /// The last change of the interworking settings while the controller runs.
    last_change: std::sync::Mutex<Option<LastChange>>,
}

/// Who changed the interworking settings last, when and what.
struct LastChange {
    time: String,
    user: String,
    operator: Option<String>,
    summary: String,
}

impl Operator {
    /// Wraps the controller; its events become `controller-event` notifications (call from
    /// within the runtime).
    pub fn new(controller: Arc<Controller>) -> Self {
        let notifications = notification::start(&controller);
        Self {
            controller,
            notifications,
            last_change: Default::default(),
        }
    }
}

impl Application for Operator {
    fn audit(&self) -> Option<&crate::audit::AuditLog> {
        Some(&self.controller.audit)
    }

    fn security_event(&self, event: crate::netconf::server::SecurityEvent) {
        let crate::netconf::server::SecurityEvent::AuthFailure {
            user,
            source,
            method,
            ..
        } = &event;
        self.controller.refusals.record(
            crate::refusals::Point::Netconf,
            "authentication-failed",
            crate::refusals::Source::new(*source, Some(user.clone())),
            &format!("{method} login of {user} failed"),
        );
    }

    fn initial_config(&self) -> String {
        configuration::initial(&self.controller)
    }

    fn apply(&self, _old: &DataTree<'static>, new: &DataTree<'static>) -> Result<(), RpcError> {
        let Some(change) = configuration::apply(&self.controller, new)? else {
            return Ok(());
        };
        // the session's user; none at start (a persisted configuration restored) or for a
        // confirmed commit rolled back on its timeout
        let user = crate::netconf::server::current_user().unwrap_or_else(|| "system".into());
        let summary = change.summary.join("; ");
        let on_behalf = change
            .operator
            .as_deref()
            .map(|o| format!(" for operator {o}"))
            .unwrap_or_default();
        self.controller.event(
            "interworking-configuration",
            format!("by {user}{on_behalf}: {summary}"),
            None,
            None,
        );
        *self.last_change.lock().expect("last change") = Some(LastChange {
            time: crate::netconf::server::now_rfc3339(),
            user,
            operator: change.operator,
            summary,
        });
        Ok(())
    }

    fn state(&self) -> Result<DataTree<'static>, RpcError> {
        let mut tree = state::state(&self.controller)?;
        crate::control::admission::write_state(&mut tree, &self.controller.admission)?;
        if let Some(last) = &*self.last_change.lock().expect("last change") {
            use crate::model::controller::{interworking as iw, INTERWORKING};
            let set = crate::netconf::datastore::set_leaf;
            set(
                &mut tree,
                &format!("{INTERWORKING}/{}", iw::LAST_CHANGE_TIME),
                &last.time,
            )?;
            set(
                &mut tree,
                &format!("{INTERWORKING}/{}", iw::LAST_CHANGE_USER),
                &last.user,
            )?;
            if let Some(operator) = &last.operator {
                set(
                    &mut tree,
                    &format!("{INTERWORKING}/{}", iw::LAST_CHANGE_OPERATOR),
                    operator,
                )?;
            }
            set(
                &mut tree,
                &format!("{INTERWORKING}/{}", iw::LAST_CHANGE_SUMMARY),
                &last.summary,
            )?;
        }
        Ok(tree)
    }

    fn notifications(&self) -> broadcast::Receiver<Notification> {
        self.notifications.subscribe()
    }
}
