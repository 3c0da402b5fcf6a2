//! What a reservation decides and keeps: the plan of a relay (its next hops, each with its
//! keys and blocks) and the plans held for relays that have not arrived yet.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;
use std::time::Duration;

use uuid::Uuid;

use crate::km::config::LinkConfig;
use crate::km::store::Reservation;

/// How long a hop keeps the blocks it reserved for a relay that has not arrived.
pub const HOLD_FOR: Duration = Duration::from_secs(10);

/// The routing part of a relay, the same on every hop.
#[derive(Debug, Clone)]
pub struct Hop {
    pub relay_id: Uuid,
    pub origin_km: String,
    pub dest_km: String,
    pub master_sae: String,
    pub slave_saes: Vec<String>,
    pub key_size: u32,
    pub hops_left: u8,
    /// ETSI GS QKD 020 `extension_optional` members carried with the keys.
    pub extension_optional: Option<serde_json::Map<String, serde_json::Value>>,
    /// The IWN KM that brought the keys into this QKDN (see
    /// [`RelayBody::iwn_km`](crate::km::kma::relay::messages::RelayBody::iwn_km)).
    pub iwn_km: Option<String>,
}

/// One next hop of a planned relay: the keys (by position) it carries and the blocks set
/// aside for them (pads and the MAC block).
pub struct Part {
    pub link: LinkConfig,
    pub keys: Range<usize>,
    pub reservation: Reservation,
}

/// What this KM will do with one relay: its next hops, with their blocks reserved and the
/// rest of their paths confirmed.
pub struct Plan {
    pub parts: Vec<Part>,
}

impl Plan {
    fn keys(&self) -> usize {
        self.parts.iter().map(|p| p.keys.len()).sum()
    }
}

/// Plans of relays this KM reserved for on behalf of a previous hop, waiting for the relay.
#[derive(Default)]
pub struct Holds {
    plans: Mutex<HashMap<Uuid, (tokio::time::Instant, Plan)>>,
}

impl Holds {
    fn sweep(plans: &mut HashMap<Uuid, (tokio::time::Instant, Plan)>) {
        let now = tokio::time::Instant::now();
        plans.retain(|_, (until, _)| *until > now);
    }

    pub(super) fn hold(&self, relay_id: Uuid, plan: Plan) {
        let mut plans = self.plans.lock().expect("holds");
        Self::sweep(&mut plans);
        plans.insert(relay_id, (tokio::time::Instant::now() + HOLD_FOR, plan));
    }

    /// The plan held for `relay_id`, if it is still held and carries `keys` keys.
    pub fn take(&self, relay_id: Uuid, keys: usize) -> Option<Plan> {
        let mut plans = self.plans.lock().expect("holds");
        Self::sweep(&mut plans);
        let (_, plan) = plans.remove(&relay_id)?;
        (plan.keys() == keys).then_some(plan)
    }

    /// Number of relays held (for tests and state reports).
    pub fn len(&self) -> usize {
        let mut plans = self.plans.lock().expect("holds");
        Self::sweep(&mut plans);
        plans.len()
    }

    /// Whether no relay is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
