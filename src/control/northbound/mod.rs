//! The controller under NETCONF for operators, in the `qkdni-controller` YANG model:
//!
//! - [`configuration`] — route policy, poll interval, agents (the tree it starts with; a new
//!   configuration checked and applied);
//! - [`state`] — its view of the domain (topology, installed routes, sessions);
//! - [`interworking`] — the `interworking` subtree: Cxi peers and exposure (configuration),
//!   both QKDNs as this controller sees them (state);
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
}

impl Operator {
    /// Wraps the controller; its events become `controller-event` notifications (call from
    /// within the runtime).
    pub fn new(controller: Arc<Controller>) -> Self {
        let notifications = notification::start(&controller);
        Self {
            controller,
            notifications,
        }
    }
}

impl Application for Operator {
    fn initial_config(&self) -> String {
        configuration::initial(&self.controller)
    }

    fn apply(&self, _old: &DataTree<'static>, new: &DataTree<'static>) -> Result<(), RpcError> {
        configuration::apply(&self.controller, new)
    }

    fn state(&self) -> Result<DataTree<'static>, RpcError> {
        state::state(&self.controller)
    }

    fn notifications(&self) -> broadcast::Receiver<Notification> {
        self.notifications.subscribe()
    }
}
