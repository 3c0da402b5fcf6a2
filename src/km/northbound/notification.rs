//! The KM agent's events as NETCONF notifications: qkdni's own (`qkdni-km`:
//! `link-status-change`, `low-key-alarm`, `relay-failure`, `security-event`) and the ETSI
//! GS QKD 015 ones ([`super::etsi_notification`]), on one stream.

use std::sync::Arc;

use tokio::sync::broadcast;

use super::etsi_notification;
use crate::km::agent::Agent;
use crate::km::events::Event;
use crate::model::km::{
    self as model, link_state_value as state_name, link_status_change, low_key_alarm,
    relay_failure, security_event,
};
use crate::model::km_notifications::{AUTH_FAILURE, FAULT, KEY_EXHAUSTED};
use crate::model::notification_name;
use crate::netconf::server::{now_rfc3339, Notification};

/// Starts turning the agent's events into notifications; subscribe to the sender returned.
pub(super) fn start(agent: Arc<Agent>) -> broadcast::Sender<Notification> {
    let (notifications, _) = broadcast::channel(1024);
    let sender = notifications.clone();
    let mut events = agent.events();
    let source = agent.clone();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(event) => {
                    let etsi = etsi_notification::notifications(&source, &event);
                    match own(&event).and_then(|own| {
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
    etsi_notification::watch_performance(agent, notifications.clone());
    notifications
}

/// The event as a `qkdni-km` notification, if it has one.
pub fn own(event: &Event) -> Result<Option<Notification>, yang2::Error> {
    let (parent, leaves): (&'static str, Vec<(&str, String)>) = match event {
        Event::ApplicationNew(_) | Event::ApplicationGone(_) => return Ok(None),
        // TODO(iwn): the key-transfer notification
        Event::KeyTransfer(_) => return Ok(None),
        Event::LinkState {
            link,
            state,
            previous,
        } => (
            link_status_change::PARENT,
            vec![
                (link_status_change::LINK_ID, link.clone()),
                (link_status_change::OPER_STATE, state_name(*state).into()),
                (
                    link_status_change::PREVIOUS_STATE,
                    state_name(*previous).into(),
                ),
            ],
        ),
        Event::LowKey {
            link,
            own_blocks,
            threshold_percent,
        } => (
            low_key_alarm::PARENT,
            vec![
                (low_key_alarm::LINK_ID, link.clone()),
                (low_key_alarm::OWN_BLOCKS, own_blocks.to_string()),
                (
                    low_key_alarm::THRESHOLD_PERCENT,
                    threshold_percent.to_string(),
                ),
            ],
        ),
        Event::RelayFailure {
            relay_id,
            destination,
            reason,
            exhausted,
        } => (
            relay_failure::PARENT,
            vec![
                (relay_failure::RELAY_ID, relay_id.to_string()),
                (relay_failure::DESTINATION, destination.clone()),
                (relay_failure::REASON, reason.clone()),
                (
                    relay_failure::CAUSE,
                    if *exhausted { KEY_EXHAUSTED } else { FAULT }.to_owned(),
                ),
            ],
        ),
        Event::Security(crate::netconf::server::SecurityEvent::AuthFailure {
            user,
            source,
            method,
            failures_from_source,
            failures_for_user,
            delay_ms,
        }) => (
            security_event::PARENT,
            vec![
                (security_event::KIND, AUTH_FAILURE.into()),
                (security_event::USER, user.clone()),
                (security_event::SOURCE, source.to_string()),
                (security_event::METHOD, (*method).into()),
                (
                    security_event::FAILURES_FROM_SOURCE,
                    failures_from_source.to_string(),
                ),
                (
                    security_event::FAILURES_FOR_USER,
                    failures_for_user.to_string(),
                ),
                (
                    security_event::DELAY,
                    delay_ms.min(&u64::from(u32::MAX)).to_string(),
                ),
            ],
        ),
    };
    Notification::from_leaves(
        model::MODULE,
        model::NAMESPACE,
        notification_name(parent),
        &leaves,
        now_rfc3339(),
    )
    .map(Some)
}
