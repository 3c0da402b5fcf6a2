//! A GWN's Kxi state: the acknowledgements it awaits, the relays it received (for Kxi-2).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::oneshot;
use uuid::Uuid;

use super::messages::{AckContainer, RelayStatus};

/// Most interworking relays whose outcome a GWN remembers for Kxi-2.
const REMEMBERED: usize = 10_000;

pub(super) struct Received {
    pub(super) sender: String,
    pub(super) key_ids: Vec<Uuid>,
    pub(super) status: RelayStatus,
}

/// An acknowledgement awaited: from whom, for which keys.
pub(super) struct Awaited {
    pub(super) peer: String,
    pub(super) key_ids: Vec<Uuid>,
    pub(super) tx: oneshot::Sender<AckContainer>,
}

/// A KM's Kxi state: acknowledgements awaited (by relay and link) and relays received over
/// a Qx link (transfers over a transfer link are in the store).
#[derive(Default)]
pub struct KxiState {
    pub(super) awaiting: Mutex<HashMap<(Uuid, String), Awaited>>,
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

    pub(super) fn status(&self, relay_id: Uuid, sender: &str) -> (RelayStatus, Vec<Uuid>) {
        let guard = self.received.lock().expect("kxi");
        match guard.0.get(&relay_id) {
            Some(r) if r.sender == sender => (r.status, r.key_ids.clone()),
            _ => (RelayStatus::Unknown, Vec::new()),
        }
    }

    /// Hands `ack` from `peer` to the request awaiting it: the one its qkdni extension names,
    /// else the one of `peer` awaiting exactly its keys. Whether one awaited it.
    pub(super) fn deliver_ack(
        &self,
        peer: &str,
        named: Option<(Uuid, String)>,
        ack: AckContainer,
    ) -> bool {
        let mut awaiting = self.awaiting.lock().expect("kxi");
        let mut ids: Vec<Uuid> = ack.key_id_container.iter().map(|k| k.key_id).collect();
        ids.sort_unstable();
        let key = match named {
            Some(key) => Some(key),
            None => awaiting
                .iter()
                .find(|(_, a)| {
                    let mut ours = a.key_ids.clone();
                    ours.sort_unstable();
                    a.peer == peer && ours == ids
                })
                .map(|(k, _)| k.clone()),
        };
        match key {
            Some(key) if awaiting.get(&key).is_some_and(|a| a.peer == peer) => {
                let awaited = awaiting.remove(&key).expect("present");
                let _ = awaited.tx.send(ack);
                true
            }
            _ => false,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::km::kxi::messages::{AckStatus, KeyIdEntry};

    fn ack(ids: &[Uuid]) -> AckContainer {
        AckContainer {
            key_id_container: ids
                .iter()
                .map(|&key_id| KeyIdEntry {
                    key_id,
                    extension: None,
                })
                .collect(),
            ack_status: AckStatus::Relayed,
            initiator_sae_id: "m".into(),
            target_sae_ids: vec!["s".into()],
            message: None,
            extension: None,
        }
    }

    #[test]
    fn an_ack_without_qkdni_extension_finds_its_request_by_peer_and_keys() {
        let state = KxiState::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let relay = Uuid::new_v4();
        let (tx, mut rx) = oneshot::channel();
        state.awaiting.lock().unwrap().insert(
            (relay, "l".into()),
            Awaited {
                peer: "p@B".into(),
                key_ids: vec![a, b],
                tx,
            },
        );
        // another peer, or other keys, do not match
        assert!(!state.deliver_ack("q@B", None, ack(&[a, b])));
        assert!(!state.deliver_ack("p@B", None, ack(&[a])));
        assert!(!state.deliver_ack("q@B", Some((relay, "l".into())), ack(&[a, b])));
        assert!(state.deliver_ack("p@B", None, ack(&[b, a])));
        assert_eq!(rx.try_recv().unwrap().key_id_container.len(), 2);
        assert!(state.awaiting.lock().unwrap().is_empty());
    }
}
