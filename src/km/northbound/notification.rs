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
    let mut alarms = agent.refusals.alarms();
    let sender = notifications.clone();
    tokio::spawn(async move {
        loop {
            match alarms.recv().await {
                Ok(alarm) => match refusal_alarm(&alarm) {
                    Ok(n) => {
                        let _ = sender.send(n);
                    }
                    Err(error) => tracing::error!(%error, "cannot build notification"),
                },
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    });
    etsi_notification::watch_performance(agent, notifications.clone());
    notifications
}

/// `security-event` of kind `refusal-threshold`: refusals at a reference point above its
/// threshold, with the source of the last one.
pub(crate) fn refusal_alarm(
    alarm: &crate::refusals::RefusalAlarm,
) -> Result<Notification, yang2::Error> {
    use security_event as leaf;
    let mut leaves = vec![
        (
            leaf::KIND,
            crate::model::km_notifications::REFUSAL_THRESHOLD.to_owned(),
        ),
        (leaf::REFERENCE_POINT, alarm.point.as_str().to_owned()),
        (leaf::REFUSALS_PER_MINUTE, alarm.per_minute.to_string()),
        (leaf::THRESHOLD, alarm.threshold.to_string()),
        (leaf::REASON, alarm.last.reason.clone()),
    ];
    if let Some(source) = alarm
        .last
        .source
        .as_ref()
        .filter(|s| s.parse::<std::net::IpAddr>().is_ok())
    {
        leaves.push((leaf::SOURCE, source.clone()));
    }
    if let Some(identity) = &alarm.last.identity {
        leaves.push((leaf::USER, identity.chars().take(64).collect()));
    }
    Notification::from_leaves(
        model::MODULE,
        model::NAMESPACE,
        notification_name(leaf::PARENT),
        &leaves,
        now_rfc3339(),
    )
}

/// `key-transfer`: the metadata for transfer key life-cycle management.
fn key_transfer(t: &crate::km::events::KeyTransfer) -> Result<Notification, yang2::Error> {
    use crate::km::events::{TransferRole, TransferState};
    use crate::model::km::key_transfer as leaf;
    let mut leaves: Vec<(String, String)> = vec![
        (leaf::RELAY_ID.into(), t.relay_id.to_string()),
        (leaf::LINK_ID.into(), t.link.clone()),
        (
            leaf::ROLE.into(),
            match t.role {
                TransferRole::Sender => "sender",
                TransferRole::Receiver => "receiver",
            }
            .into(),
        ),
        (
            leaf::STATE.into(),
            match t.state {
                TransferState::Transferred => "transferred",
                TransferState::Voided => "voided",
                TransferState::Failed => "failed",
                TransferState::FailedToVoid => "failed-to-void",
            }
            .into(),
        ),
        (leaf::MASTER_SAE.into(), t.master_sae.clone()),
        (leaf::KEY_SIZE.into(), t.key_size.to_string()),
        (
            leaf::TIME.into(),
            crate::netconf::server::rfc3339_ms(t.at_ms),
        ),
    ];
    // leaf-list entries, one instance each
    let quoted = |v: &str| crate::netconf::xml::quote(v);
    for slave in &t.slave_saes {
        leaves.push((
            format!("{}[.={}]", leaf::SLAVE_SAE, quoted(slave)),
            slave.clone(),
        ));
    }
    for id in &t.key_ids {
        let id = id.to_string();
        leaves.push((format!("{}[.={}]", leaf::KEY_ID, quoted(&id)), id));
    }
    let leaves: Vec<(&str, String)> = leaves
        .iter()
        .map(|(p, v)| (p.as_str(), v.clone()))
        .collect();
    Notification::from_leaves(
        model::MODULE,
        model::NAMESPACE,
        notification_name(leaf::PARENT),
        &leaves,
        now_rfc3339(),
    )
}

/// The event as a `qkdni-km` notification, if it has one.
pub fn own(event: &Event) -> Result<Option<Notification>, yang2::Error> {
    let (parent, leaves): (&'static str, Vec<(&str, String)>) = match event {
        Event::ApplicationNew(_) | Event::ApplicationGone(_) => return Ok(None),
        Event::KeyTransfer(transfer) => return key_transfer(transfer).map(Some),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::km::events::{KeyTransfer, TransferRole, TransferState};
    use crate::model::km_notifications::{parse_notification, KmNotification};

    #[test]
    fn a_key_transfer_names_every_key_and_slave_and_no_key_material() {
        let ids = [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()];
        let event = Event::KeyTransfer(KeyTransfer {
            relay_id: uuid::Uuid::new_v4(),
            link: "iwn1-kxi1p".into(),
            role: TransferRole::Receiver,
            key_ids: ids.to_vec(),
            key_size: 256,
            master_sae: "sae-a1-1".into(),
            slave_saes: vec!["sae-b1-1".into(), "sae-b1-2".into()],
            state: TransferState::Transferred,
            at_ms: 1_796_000_000_123,
        });
        let notification = own(&event).unwrap().unwrap();
        assert_eq!(notification.kind.1, "key-transfer");
        let xml = &notification.xml;
        for id in ids {
            assert!(xml.contains(&format!("<key-id>{id}</key-id>")), "{xml}");
        }
        assert!(xml.contains("<slave-sae>sae-b1-2</slave-sae>"), "{xml}");
        assert!(xml.contains("<role>receiver</role>"), "{xml}");
        assert!(xml.contains("<time>2026-"), "{xml}");
        // what controllers and managers read back
        let wrapped = format!(
            r#"<notification xmlns="urn:ietf:params:xml:ns:netconf:notification:1.0"><eventTime>{}</eventTime>{xml}</notification>"#,
            notification.event_time
        );
        let Some(KmNotification::KeyTransfer(report)) = parse_notification("iwn1-b", &wrapped)
        else {
            panic!("not read back: {wrapped}");
        };
        assert_eq!(report.key_ids, ids);
        assert_eq!(report.slave_saes, ["sae-b1-1", "sae-b1-2"]);
        assert_eq!(
            (report.role.as_str(), report.state.as_str()),
            ("receiver", "transferred")
        );
        assert_eq!(report.key_size, 256);
    }

    #[test]
    fn link_status_notifications_are_read_back() {
        let event = Event::LinkState {
            link: "a1-a2".into(),
            state: crate::quantum::LinkState::Down,
            previous: crate::quantum::LinkState::Up,
        };
        let n = own(&event).unwrap().unwrap();
        let wrapped = format!(
            r#"<notification xmlns="urn:ietf:params:xml:ns:netconf:notification:1.0"><eventTime>{}</eventTime>{}</notification>"#,
            n.event_time, n.xml
        );
        assert!(matches!(
            parse_notification("a1", &wrapped),
            Some(KmNotification::LinkStatus { link, state, .. }) if link == "a1-a2" && state == "down"
        ));
    }
}
