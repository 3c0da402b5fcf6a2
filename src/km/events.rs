//! Events of a KM agent (link state changes, low key, relay failures, security events), published to
//! NETCONF subscribers as notifications, and the task that watches key levels.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::agent::Agent;
use crate::model::km::{
    self as model, link_state_value as state_name, link_status_change, low_key_alarm,
    relay_failure, security_event,
};
use crate::model::km_notifications::{AUTH_FAILURE, FAULT, KEY_EXHAUSTED};
use crate::model::notification_name;
use crate::netconf::server::{now_rfc3339, Notification};
use crate::quantum::LinkState;

/// Something operators want to hear about.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A QKD link's operational state changed.
    LinkState {
        link: String,
        state: LinkState,
        previous: LinkState,
    },
    /// This end's usable blocks of a link fell below the alarm threshold.
    LowKey {
        link: String,
        own_blocks: usize,
        threshold_percent: u8,
    },
    /// A key relay failed.
    RelayFailure {
        relay_id: uuid::Uuid,
        destination: String,
        reason: String,
        /// The route is sound but a link holds too little key for now.
        exhausted: bool,
    },
    /// A security-relevant event of the KM's management interface.
    Security(crate::netconf::server::SecurityEvent),
    /// An application (ETSI GS QKD 015 sense) obtained its first keys from this KM.
    ApplicationNew(super::applications::Application),
    /// An application is gone: its master SAE is no longer registered at this node.
    ApplicationGone(super::applications::Application),
}

impl Event {
    /// The event as a `qkdni-km` YANG notification, if it has one (the ETSI GS QKD 015
    /// notifications of an event are [`super::etsi_notify::notifications`]).
    pub fn to_notification(&self) -> Result<Option<Notification>, yang2::Error> {
        let (parent, leaves): (&'static str, Vec<(&str, String)>) = match self {
            Event::ApplicationNew(_) | Event::ApplicationGone(_) => return Ok(None),
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
}

/// Raises a low-key alarm when a link's usable blocks at this end fall below the threshold
/// (once per crossing), checking every second.
pub async fn watch_key_levels(agent: Arc<Agent>) {
    // Pools start empty: an alarm is raised when a pool *falls* below the threshold.
    let mut alarmed: HashSet<String> = agent.links().map(|l| l.config.id.clone()).collect();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticker.tick().await;
        let threshold = agent.settings().low_key_threshold_percent;
        if threshold == 0 {
            alarmed.clear();
            continue;
        }
        let links: Vec<(String, u8, usize)> = agent
            .links()
            .map(|l| {
                (
                    l.config.id.clone(),
                    l.config.end.owner(),
                    l.settings().capacity_blocks,
                )
            })
            .collect();
        for (id, owner, capacity) in links {
            let link = id.clone();
            let Ok(own) = agent.store.run(move |s| s.available(&link, owner)).await else {
                continue;
            };
            let limit = capacity / 2 * usize::from(threshold) / 100;
            if own < limit {
                if alarmed.insert(id.clone()) {
                    tracing::warn!(link = %id, own_blocks = own, threshold_percent = threshold, "low key");
                    agent.emit(Event::LowKey {
                        link: id,
                        own_blocks: own,
                        threshold_percent: threshold,
                    });
                }
            } else {
                alarmed.remove(&id);
            }
        }
    }
}
