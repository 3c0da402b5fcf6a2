//! The controller's events as `qkdni-controller:controller-event` notifications.

use tokio::sync::broadcast;

use crate::control::controller::{Controller, ControllerEvent};
use crate::model::controller::{self as model, controller_event as event};
use crate::netconf::server::Notification;

/// Starts turning the controller's events into notifications (call from within the
/// runtime); subscribe to the sender returned.
pub(super) fn start(controller: &Controller) -> broadcast::Sender<Notification> {
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
    notifications
}

/// A controller event as a `qkdni-controller:controller-event` notification.
pub fn notification(event: &ControllerEvent) -> Result<Notification, yang2::Error> {
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
