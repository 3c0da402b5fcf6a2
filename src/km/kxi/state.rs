//! A GWN's Kxi state: the acknowledgements it awaits, the relays it received (for Kxi-2).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::oneshot;
use uuid::Uuid;

use super::messages::{ExtKeysAck, RelayStatus};

/// Most interworking relays whose outcome a GWN remembers for Kxi-2.
const REMEMBERED: usize = 10_000;

pub(super) struct Received {
    pub(super) sender: String,
    pub(super) key_ids: Vec<Uuid>,
    pub(super) status: RelayStatus,
}

/// A GWN's Kxi state: acknowledgements awaited and relays received.
#[derive(Default)]
pub struct KxiState {
    pub(super) awaiting: Mutex<HashMap<(Uuid, String), oneshot::Sender<ExtKeysAck>>>,
    pub(super) received: Mutex<(HashMap<Uuid, Received>, VecDeque<Uuid>)>,
}

impl KxiState {
    pub(super) fn remember(&self, relay_id: Uuid, sender: &str, key_ids: Vec<Uuid>) {
        let mut guard = self.received.lock().expect("kxi");
        let (map, order) = &mut *guard;
        map.insert(
            relay_id,
            Received {
                sender: sender.to_owned(),
                key_ids,
                status: RelayStatus::InProgress,
            },
        );
        order.push_back(relay_id);
        while order.len() > REMEMBERED {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    /// Moves a relay from in-progress to `status`; returns false if it was voided meanwhile.
    pub(super) fn settle(&self, relay_id: Uuid, status: RelayStatus) -> bool {
        let mut guard = self.received.lock().expect("kxi");
        match guard.0.get_mut(&relay_id) {
            Some(r) if r.status == RelayStatus::InProgress => {
                r.status = status;
                true
            }
            _ => false,
        }
    }

    pub(super) fn status(&self, relay_id: Uuid, sender: &str) -> RelayStatus {
        let guard = self.received.lock().expect("kxi");
        match guard.0.get(&relay_id) {
            Some(r) if r.sender == sender => r.status,
            _ => RelayStatus::Unknown,
        }
    }
}

/// Removes an awaited acknowledgement's entry when dropped.
pub(super) struct Awaiting<'a> {
    pub(super) kxi: &'a KxiState,
    pub(super) key: (Uuid, String),
}

impl Drop for Awaiting<'_> {
    fn drop(&mut self) {
        self.kxi.awaiting.lock().expect("kxi").remove(&self.key);
    }
}
