//! Policy-based control with QoS classes (ITU-T Y.3818 clause 7: "shares QKDN resources
//! based on QoS between QKDNs") at a KM: when link key is scarce, which request gets it.
//!
//! - [`policy`] — the classes (priority, guaranteed and maximum rate, quota per period) and
//!   which application pairs and peer domains belong to which;
//! - [`scheduler`] — one link's scheduler: guarantees first, then weighted deficit round
//!   robin over token buckets (pure, property-tested);
//! - [`quota`] — the quota windows of every class (pure, property-tested);
//! - [`store`] — the quota usage kept on disk (`<data_dir>/qos.redb`), so quotas hold across
//!   a KM's restart or crash;
//! - [`gate`] — the running KM's gate: every reservation of link key waits for its turn,
//!   every supply holds its class's quota;
//! - [`yang`] — the policy under NETCONF (`key-manager/qos`, and the controller's
//!   `controller/qos` of the same shape).
//!
//! Where it applies: the origin KM of an ETSI GS QKD 014 Get key (`enc_keys`, also when its
//! route was set up on demand) and every KM a relay crosses reserve their blocks through
//! [`reserve_turn`] (see [`crate::km::kma::reserve`]), on a QKD link, a Qx link (Kxi-1) or an
//! interworking node's transfer link (Kxi-1', which has no key pool but takes its class's
//! turn all the same); over a link into a peer domain a slave SAE of unknown domain is of
//! that peer domain. `dec_keys` hands out keys that were
//! scheduled and charged when their master SAE asked for them, so it is not charged again.
//! A quota refusal is the ETSI GS QKD 014 answer for unavailable keys (503, `Retry-After`)
//! with the reason in its details.

pub mod gate;
pub mod policy;
pub mod quota;
pub mod scheduler;
pub mod store;
pub mod yang;

pub use gate::{Qos, QosRefusal, Turn};
pub use policy::{ClassSpec, QosPolicy};

use std::sync::Arc;
use std::time::Duration;

use crate::km::agent::Agent;

/// The class of a request of `master` for `slaves` at this KM (the first slave names the
/// pair); `None` when QoS is off.
pub fn class_of(agent: &Agent, master: &str, slaves: &[String]) -> Option<String> {
    let slave = slaves.first()?;
    agent.qos.class_of(master, slave, |s| agent.sae_domain(s))
}

/// The class of a request of `master` for `slaves` drawing key on `link`: as
/// [`class_of`], but a slave SAE whose domain this KM does not know, reached over a link
/// into a peer domain (a Qx link, or an interworking node's transfer link: Kxi-1/Kxi-1'), is
/// of that peer domain.
fn class_on(agent: &Agent, link: Option<&str>, master: &str, slaves: &[String]) -> Option<String> {
    let slave = slaves.first()?;
    let peer_domain = link
        .and_then(|l| agent.link_config(l))
        .and_then(|l| l.peer_domain.clone());
    agent.qos.class_of(master, slave, |s| {
        agent
            .sae_domain(s)
            .or_else(|| (s == slave.as_str()).then(|| peer_domain.clone()).flatten())
    })
}

/// Waits for the turn of a request of `master` for `slaves` drawing `bits` of key on `link`
/// (`None`: key made here, only the quota applies). `Ok(None)`: QoS is off.
pub async fn reserve_turn(
    agent: &Arc<Agent>,
    link: Option<&str>,
    master: &str,
    slaves: &[String],
    bits: u64,
    wait: Duration,
) -> Result<Option<Turn>, QosRefusal> {
    let Some(class) = class_on(agent, link, master, slaves) else {
        return Ok(None);
    };
    let qos = agent.qos.clone();
    let turn = qos.turn(link, &class, bits, wait).await;
    if let Err(refusal) = &turn {
        tracing::info!(%master, %class, link = link.unwrap_or("-"), %refusal, "QoS refused a request");
    }
    turn
}
