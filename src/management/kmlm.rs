//! The key management layer manager (KMLM): follows the NETCONF notifications of every KM
//! agent of the domain (`qkdni-km`: `link-status-change`, `low-key-alarm`,
//! `relay-failure`, `security-event`), hands relay failures to the XLMO as fault reports and counts events
//! for the performance report.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::events::{self, Refs, SecurityCounters};
use super::mxi::messages::KeyManagementReport;
use super::Manager;
use crate::netconf::client::ClientOptions;

pub use crate::model::km_notifications::{parse_notification, KmNotification, RelayFailure};

/// The KMLM of one domain.
pub struct Kmlm {
    agents: Vec<(String, SocketAddr)>,
    options: ClientOptions,
    link_status_changes: AtomicU64,
    low_key_alarms: AtomicU64,
    relay_failures: AtomicU64,
    interworking_relay_failures: AtomicU64,
}

impl Kmlm {
    /// A KMLM of `agents` (node, NETCONF address), logging in with `options`.
    pub fn new(agents: Vec<(String, SocketAddr)>, options: ClientOptions) -> Self {
        Self {
            agents,
            options,
            link_status_changes: AtomicU64::new(0),
            low_key_alarms: AtomicU64::new(0),
            relay_failures: AtomicU64::new(0),
            interworking_relay_failures: AtomicU64::new(0),
        }
    }

    /// The counters, for the performance report.
    pub fn report(&self) -> KeyManagementReport {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        KeyManagementReport {
            link_status_changes: get(&self.link_status_changes),
            low_key_alarms: get(&self.low_key_alarms),
            relay_failures: get(&self.relay_failures),
            interworking_relay_failures: get(&self.interworking_relay_failures),
        }
    }

    /// Follows every agent's notifications, one task per agent.
    pub fn spawn_watchers(manager: &Arc<Manager>) -> Vec<tokio::task::JoinHandle<()>> {
        manager
            .kmlm
            .agents
            .iter()
            .map(|(node, addr)| {
                let (manager, node, addr) = (manager.clone(), node.clone(), *addr);
                tokio::spawn(async move { Self::watch(manager, node, addr).await })
            })
            .collect()
    }

    /// Follows one agent's notifications and handles them (subscribing again when the
    /// session ends).
    async fn watch(manager: Arc<Manager>, node: String, addr: SocketAddr) {
        let options = manager.kmlm.options.clone();
        let who = format!("KMLM: agent {node}");
        crate::netconf::client::follow_notifications(addr, options, &who, |xml| {
            if let Some(notification) = parse_notification(&node, &xml) {
                Self::handle(&manager, &node, notification);
            }
            std::future::ready(())
        })
        .await
    }

    /// Counts a notification of KM `node`; a relay failure that is a route fault (not pool
    /// exhaustion) goes to the XLMO.
    pub fn handle(manager: &Arc<Manager>, node: &str, notification: KmNotification) {
        let kmlm = &manager.kmlm;
        match notification {
            KmNotification::LinkStatus {
                link,
                state,
                previous,
            } => {
                kmlm.link_status_changes.fetch_add(1, Ordering::Relaxed);
                manager.events.record(
                    events::KMLM_LINK_STATUS,
                    format!("{node}: link {link} {previous} -> {state}"),
                    Refs::default(),
                );
            }
            KmNotification::LowKey { link, own_blocks } => {
                kmlm.low_key_alarms.fetch_add(1, Ordering::Relaxed);
                manager.events.record(
                    events::KMLM_LOW_KEY,
                    format!("{node}: link {link} low on key ({own_blocks} blocks)"),
                    Refs::default(),
                );
            }
            KmNotification::AuthFailure {
                user,
                source,
                failures_from_source,
            } => {
                SecurityCounters::bump(&manager.security.netconf_authentication_failures);
                manager.events.record(
                    events::KMLM_SECURITY_EVENT,
                    format!(
                        "{node}: NETCONF login as {user:?} from {source} failed ({failures_from_source} failures from the source)"
                    ),
                    Refs::default(),
                );
            }
            KmNotification::RefusalAlarm {
                point,
                per_minute,
                threshold,
                reason,
                source,
                identity,
            } => {
                SecurityCounters::bump(&manager.security.km_refusal_alarms);
                manager.events.record(
                    events::REFUSAL_ALARM,
                    format!(
                        "{node}: {per_minute} refusals at {point} within a minute (threshold {threshold}), the last from {source} ({identity}): {reason}"
                    ),
                    Refs::default(),
                );
            }
            KmNotification::KeyTransfer(transfer) => {
                // a failed transfer also fails its relay: the relay-failure notification of
                // the same relay id takes it to the XLMO
                manager.events.record(
                    events::KMLM_KEY_TRANSFER,
                    format!(
                        "{node}: {} key(s) {} over {} ({}, {} -> {})",
                        transfer.key_ids.len(),
                        transfer.state,
                        transfer.link,
                        transfer.role,
                        transfer.master_sae,
                        transfer.slave_saes.join(", ")
                    ),
                    Refs {
                        relay_id: Some(transfer.relay_id),
                        message: None,
                    },
                );
            }
            KmNotification::RelayFailure(failure) => {
                kmlm.relay_failures.fetch_add(1, Ordering::Relaxed);
                let interworking = !manager.config.is_own_node(&failure.destination);
                if interworking {
                    kmlm.interworking_relay_failures
                        .fetch_add(1, Ordering::Relaxed);
                }
                if failure.is_authentication_failure() {
                    SecurityCounters::bump(&manager.security.relay_authentication_failures);
                }
                manager.events.record(
                    events::KMLM_RELAY_FAILURE,
                    format!(
                        "{node}: {} relay to {} failed: {}{}",
                        if interworking {
                            "interworking"
                        } else {
                            "local"
                        },
                        failure.destination,
                        failure.reason,
                        if failure.exhausted {
                            " (key exhausted, not a route fault: no diagnosis)"
                        } else {
                            ""
                        }
                    ),
                    Refs {
                        relay_id: failure.relay_id,
                        message: None,
                    },
                );
                // pool exhaustion is not a route fault: the route stays, no diagnosis
                if failure.exhausted {
                    return;
                }
                let manager = manager.clone();
                tokio::spawn(async move { manager.xlmo.local_fault(&manager, failure).await });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn wrap(inner: &str) -> String {
        format!(
            r#"<notification xmlns="urn:ietf:params:xml:ns:netconf:notification:1.0"><eventTime>2026-01-01T00:00:00Z</eventTime>{inner}</notification>"#
        )
    }

    #[test]
    fn relay_failures_are_read() {
        let id = Uuid::new_v4();
        let xml = wrap(&format!(
            r#"<relay-failure xmlns="urn:qkdni:yang:qkdni-km"><relay-id>{id}</relay-id><destination>b2</destination><reason>next hop gb1 refused the relay (HTTP 401): message authentication failed</reason></relay-failure>"#
        ));
        let Some(KmNotification::RelayFailure(failure)) = parse_notification("ga1", &xml) else {
            panic!("not a relay failure");
        };
        assert_eq!(failure.node, "ga1");
        assert_eq!(failure.relay_id, Some(id));
        assert_eq!(failure.destination, "b2");
        assert!(failure.is_authentication_failure());
        // a relay id that is not a UUID does not lose the failure
        let xml = wrap(
            r#"<relay-failure xmlns="urn:qkdni:yang:qkdni-km"><relay-id>x</relay-id><destination>a3</destination><reason>no relay route to node a3</reason></relay-failure>"#,
        );
        let Some(KmNotification::RelayFailure(failure)) = parse_notification("a1", &xml) else {
            panic!("not a relay failure");
        };
        assert_eq!(failure.relay_id, None);
        assert!(!failure.is_authentication_failure());
        assert!(!failure.exhausted);
        // a KM tells pool exhaustion from a route fault
        let xml = wrap(
            r#"<relay-failure xmlns="urn:qkdni:yang:qkdni-km"><relay-id>x</relay-id><destination>a3</destination><reason>not enough key material</reason><cause>key-exhausted</cause></relay-failure>"#,
        );
        let Some(KmNotification::RelayFailure(failure)) = parse_notification("a1", &xml) else {
            panic!("not a relay failure");
        };
        assert!(failure.exhausted);
    }

    #[test]
    fn other_notifications_are_read_or_ignored() {
        let xml = wrap(
            r#"<link-status-change xmlns="urn:qkdni:yang:qkdni-km"><link-id>a1-a2</link-id><oper-state>down</oper-state><previous-state>up</previous-state></link-status-change>"#,
        );
        assert_eq!(
            parse_notification("a1", &xml),
            Some(KmNotification::LinkStatus {
                link: "a1-a2".into(),
                state: "down".into(),
                previous: "up".into()
            })
        );
        let xml = wrap(
            r#"<low-key-alarm xmlns="urn:qkdni:yang:qkdni-km"><link-id>a1-a2</link-id><own-blocks>3</own-blocks><threshold-percent>10</threshold-percent></low-key-alarm>"#,
        );
        assert_eq!(
            parse_notification("a1", &xml),
            Some(KmNotification::LowKey {
                link: "a1-a2".into(),
                own_blocks: 3
            })
        );
        assert_eq!(parse_notification("a1", &wrap("<other/>")), None);
        assert_eq!(parse_notification("a1", "<notification"), None);
        assert_eq!(
            parse_notification(
                "a1",
                &wrap("<relay-failure><reason>r</reason></relay-failure>")
            ),
            None
        );
    }

    #[test]
    fn failed_logins_the_km_reports_are_read() {
        // as the KM prints it (validated against qkdni-km)
        let event = crate::km::events::Event::Security(
            crate::netconf::server::SecurityEvent::AuthFailure {
                user: "root".into(),
                source: "192.0.2.7".parse().unwrap(),
                method: "password",
                failures_from_source: 12,
                failures_for_user: 4,
                delay_ms: 2000,
            },
        );
        let notification = crate::km::northbound::notification::own(&event)
            .unwrap()
            .unwrap();
        assert_eq!(
            parse_notification("a1", &wrap(&notification.xml)),
            Some(KmNotification::AuthFailure {
                user: "root".into(),
                source: "192.0.2.7".into(),
                failures_from_source: 12,
            })
        );
    }
}
