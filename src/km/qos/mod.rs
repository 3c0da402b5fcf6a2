//! Policy-based control with QoS classes (ITU-T Y.3818 clause 7: "shares QKDN resources
//! based on QoS between QKDNs") at a KM: when link key is scarce, which request gets it.
//!
//! - [`policy`] — the classes (priority, guaranteed and maximum rate, quota per period) and
//!   which application pairs and peer domains belong to which;
//! - [`scheduler`] — one link's scheduler: guarantees first, then weighted deficit round
//!   robin over token buckets (pure, property-tested);
//! - [`quota`] — the quota windows of every class (pure, property-tested);
//! - [`gate`] — the running KM's gate: every reservation of link key waits for its turn,
//!   every supply holds its class's quota;
//! - [`yang`] — the policy under NETCONF (`key-manager/qos`, and the controller's
//!   `controller/qos` of the same shape).
//!
//! Where it applies: the origin KM of an ETSI GS QKD 014 Get key (`enc_keys`, also when its
//! route was set up on demand) and every KM a relay crosses reserve their blocks through
//! [`reserve_turn`] (see [`crate::km::kma::reserve`]). `dec_keys` hands out keys that were
//! scheduled and charged when their master SAE asked for them, so it is not charged again.
//! A quota refusal is the ETSI GS QKD 014 answer for unavailable keys (503, `Retry-After`)
//! with the reason in its details.

pub mod gate;
pub mod policy;
pub mod quota;
pub mod scheduler;
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
    let Some(class) = class_of(agent, master, slaves) else {
        return Ok(None);
    };
    let qos = agent.qos.clone();
    let turn = qos.turn(link, &class, bits, wait).await;
    if let Err(refusal) = &turn {
        tracing::info!(%master, %class, link = link.unwrap_or("-"), %refusal, "QoS refused a request");
    }
    turn
}
