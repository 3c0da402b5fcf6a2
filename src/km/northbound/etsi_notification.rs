//! The ETSI GS QKD 015 notifications (`etsi-qkd-sdn-node`) of a KM agent, sent on its
//! NETCONF stream beside qkdni's own:
//!
//! | what the agent observes                        | notifications                          |
//! |------------------------------------------------|----------------------------------------|
//! | a link stops producing key (down, degraded)    | `sdqkdn_link_down`, `alarm` (link)     |
//! | a link produces key again                      | `event` (link)                         |
//! | a link's state or key rate (by > 10 %) changes | `sdqkdn_link_perf_update`              |
//! | a link's own key falls below the alarm level   | `sdqkdn_link_overloaded`               |
//! | an SAE obtains its first keys for a peer set   | `sdqkdn_application_new`               |
//! | that SAE is no longer registered at this node  | `sdqkdn_application_disconnected`      |
//!
//! Not sent, because nothing in qkdni produces them: `sdqkdn_application_qos_update` (no
//! application asks for a QoS), `sdqkdn_interface_new` and `sdqkdn_interface_out` (a node's
//! QKD modules are fixed while it runs) and `sdqkdn_interface_down` (an emulated module
//! fails only with its link, reported as `sdqkdn_link_down`).

use std::sync::Arc;

use tokio::sync::broadcast;

use super::etsi_node::{link_status, link_uuid, qber_value, skr};
use crate::km::agent::Agent;
use crate::km::events::Event;
use crate::netconf::server::{now_rfc3339, Notification};
use crate::quantum::{LinkCondition, LinkState};

use crate::model::etsi_node::{
    alarm, application_disconnected, application_new, event, identity, link_down, link_overloaded,
    link_perf_update, perf_update_qber, MODULE, NAMESPACE,
};
use crate::model::notification_name;

/// The notification of group `parent` with `leaves`.
fn notification(
    parent: &'static str,
    leaves: &[(&str, String)],
) -> Result<Notification, yang2::Error> {
    Notification::from_leaves(
        MODULE,
        NAMESPACE,
        notification_name(parent),
        leaves,
        now_rfc3339(),
    )
}

/// The ETSI notifications of one agent event.
pub fn notifications(agent: &Agent, event: &Event) -> Result<Vec<Notification>, yang2::Error> {
    let link_id = |name: &str| {
        agent
            .link_config(name)
            .map(|c| link_uuid(agent, c).to_string())
    };
    let mut out = Vec::new();
    match event {
        Event::LinkState { link, state, .. } => {
            let Some(id) = link_id(link) else {
                return Ok(out);
            };
            let status = link_status(*state).to_owned();
            match state {
                LinkState::Up => out.push(notification(
                    event::PARENT,
                    &[
                        (event::LINK_ID, id),
                        (event::LINK_STATUS, status),
                        (event::MESSAGE, format!("link {link} produces key again")),
                        (event::SEVERITY, identity("MINOR")),
                    ],
                )?),
                LinkState::Down | LinkState::Degraded => {
                    let reason = if *state == LinkState::Down {
                        format!("link {link}: no quantum signal or taken down")
                    } else {
                        format!("link {link}: QBER above the BB84 threshold")
                    };
                    out.push(notification(
                        link_down::PARENT,
                        &[
                            (link_down::LINK_ID, id.clone()),
                            (link_down::REASON, reason.clone()),
                        ],
                    )?);
                    out.push(notification(
                        alarm::PARENT,
                        &[
                            (alarm::LINK_ID, id),
                            (alarm::LINK_STATUS, status),
                            (alarm::MESSAGE, reason),
                            (alarm::SEVERITY, identity("MAJOR")),
                        ],
                    )?);
                }
            }
        }
        Event::LowKey { link, .. } => {
            if let (Some(id), Some(runtime)) = (link_id(link), agent.link(link)) {
                let c = runtime.condition();
                out.push(notification(
                    link_overloaded::PARENT,
                    &[
                        (link_overloaded::LINK_ID, id),
                        (link_overloaded::SKR, skr(c.state, c.rate_bps)),
                    ],
                )?);
            }
        }
        Event::ApplicationNew(app) => {
            let mut leaves = vec![
                (application_new::TYPE, identity("CLIENT")),
                (application_new::SERVER, app.master.clone()),
            ];
            for slave in &app.slaves {
                leaves.push((application_new::CLIENT, slave.clone()));
            }
            leaves.push((
                application_new::LOCAL_NODE,
                super::etsi_node::node_uuid(agent).to_string(),
            ));
            out.push(notification(application_new::PARENT, &leaves)?);
        }
        Event::ApplicationGone(app) => out.push(notification(
            application_disconnected::PARENT,
            &[(application_disconnected::ID, app.id.to_string())],
        )?),
        Event::RelayFailure { .. } | Event::Security(_) | Event::KeyTransfer(_) => {}
    }
    Ok(out)
}

/// `sdqkdn_link_perf_update` of link `link` in `condition`.
pub fn perf_update(
    agent: &Agent,
    link: &str,
    condition: &LinkCondition,
) -> Result<Option<Notification>, yang2::Error> {
    let Some(config) = agent.link_config(link) else {
        return Ok(None);
    };
    let qber_at = perf_update_qber();
    let mut leaves = vec![
        (
            link_perf_update::LINK_ID,
            link_uuid(agent, config).to_string(),
        ),
        (
            link_perf_update::SKR,
            skr(condition.state, condition.rate_bps),
        ),
    ];
    if let Some(qber) = condition.qber {
        leaves.push((qber_at.as_str(), qber_value(qber)));
    }
    notification(link_perf_update::PARENT, &leaves).map(Some)
}

/// Whether the change from `old` to `new` is one a controller should hear of: another
/// state, or a key rate that moved by more than 10 %.
fn marked(old: &LinkCondition, new: &LinkCondition) -> bool {
    old.state != new.state || (new.rate_bps - old.rate_bps).abs() > 0.1 * old.rate_bps.abs()
}

/// Sends `sdqkdn_link_perf_update` on `to` whenever a link's condition changes markedly.
pub fn watch_performance(agent: Arc<Agent>, to: broadcast::Sender<Notification>) {
    for link in agent.links() {
        let name = link.config.id.clone();
        let mut conditions = link.watch();
        let agent = agent.clone();
        let to = to.clone();
        tokio::spawn(async move {
            let mut last = *conditions.borrow_and_update();
            while conditions.changed().await.is_ok() {
                let now = *conditions.borrow_and_update();
                if !marked(&last, &now) {
                    continue;
                }
                last = now;
                match perf_update(&agent, &name, &now) {
                    Ok(Some(n)) => {
                        let _ = to.send(n);
                    }
                    Ok(None) => {}
                    Err(error) => tracing::error!(%error, "cannot build sdqkdn_link_perf_update"),
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(state: LinkState, rate_bps: f64) -> LinkCondition {
        LinkCondition {
            state,
            capacity_blocks: 64,
            rate_bps,
            qber: None,
        }
    }

    #[test]
    fn only_marked_changes_are_reported() {
        assert!(!marked(
            &at(LinkState::Up, 1000.0),
            &at(LinkState::Up, 1050.0)
        ));
        assert!(marked(
            &at(LinkState::Up, 1000.0),
            &at(LinkState::Up, 800.0)
        ));
        assert!(marked(
            &at(LinkState::Up, 1000.0),
            &at(LinkState::Down, 1000.0)
        ));
    }
}
