//! The chaos bench's account of every key: what each master SAE was given by `enc_keys`, what
//! its slave got by `dec_keys`, and every way the two can disagree.
//!
//! Key material stays in memory, in [`Zeroizing`] buffers, and is only compared: nothing here
//! writes a key anywhere. Key IDs are not secret and are logged with each anomaly.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::time::Duration;

use base64::Engine;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::etsi014::KeyContainer;

/// Size of every key the bench asks for, bytes.
pub const KEY_BYTES: usize = 32;

/// Where a key issued to a master stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not yet obtained by the slave.
    Pending,
    /// Obtained by the slave with the master's bytes.
    Delivered,
    /// Obtained by the slave with other bytes.
    Mismatched,
    /// Definitively refused to the slave, or never obtained.
    Lost,
}

struct Issued {
    direction: usize,
    master: String,
    slave: String,
    key: Zeroizing<Vec<u8>>,
    state: State,
    /// A `dec_keys` that asked for this key got no answer (the KM may have handed it out).
    unanswered: bool,
}

/// Why keys were lost.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Lost {
    /// `dec_keys` answered "unknown key_ID" (or expired, or not for this SAE) for a key the
    /// master was given, and no `dec_keys` asking for it had gone unanswered before.
    pub refused_by_slave_km: u64,
    /// The same after a `dec_keys` asking for the key got no answer (a KM killed, or a
    /// connection cut, between taking the key and answering): the KM may have handed the
    /// key out on a request whose answer never arrived.
    pub refused_after_unanswered_dec_keys: u64,
    /// Still not obtainable after the final sweep's retries.
    pub not_obtained_after_sweep: u64,
    /// The refusals, by the KM's message.
    pub reasons: BTreeMap<String, u64>,
}

/// The whole account.
pub struct Ledger {
    keys: HashMap<String, Issued>,
    /// Key IDs by a keyed hash of their bytes, to find the same material under two IDs.
    by_material: HashMap<u64, Vec<String>>,
    hasher: RandomState,
    pub issued: [u64; 2],
    pub delivered: [u64; 2],
    pub served_twice: u64,
    pub material_reused: u64,
    pub mismatched: u64,
    /// `dec_keys` answers that left out requested IDs without an error.
    pub short_answers: u64,
    pub lost: Lost,
}

/// An anomaly, for the log.
fn anomaly(at: Duration, what: std::fmt::Arguments) {
    eprintln!("[{:7.1}s] ANOMALY: {what}", at.as_secs_f64());
}

fn decode(key: &str) -> Option<Zeroizing<Vec<u8>>> {
    let bytes = Zeroizing::new(base64::engine::general_purpose::STANDARD.decode(key).ok()?);
    (bytes.len() == KEY_BYTES).then_some(bytes)
}

impl Ledger {
    pub fn new() -> Self {
        Self {
            keys: HashMap::new(),
            by_material: HashMap::new(),
            hasher: RandomState::new(),
            issued: [0; 2],
            delivered: [0; 2],
            served_twice: 0,
            material_reused: 0,
            mismatched: 0,
            short_answers: 0,
            lost: Lost::default(),
        }
    }

    /// Records the keys `enc_keys` gave `master` for `slave`; returns the IDs to fetch at
    /// the slave's KM (those seen for the first time, with well-formed keys).
    pub fn issue(
        &mut self,
        at: Duration,
        direction: usize,
        master: &str,
        slave: &str,
        container: &KeyContainer,
    ) -> Vec<String> {
        let mut fresh = Vec::new();
        for key in &container.keys {
            let id = &key.key_ID;
            if let Some(earlier) = self.keys.get(id) {
                self.served_twice += 1;
                anomaly(
                    at,
                    format_args!(
                        "SERVED TWICE: enc_keys gave {master} key {id} (for {slave}), which {} was given before (for {})",
                        earlier.master, earlier.slave
                    ),
                );
                continue;
            }
            let Some(bytes) = decode(&key.key) else {
                self.mismatched += 1;
                anomaly(
                    at,
                    format_args!(
                        "MISMATCHED: enc_keys gave {master} key {id} not of {KEY_BYTES} bytes"
                    ),
                );
                continue;
            };
            let digest = self.hasher.hash_one(&bytes[..]);
            let same = self.by_material.entry(digest).or_default();
            if let Some(other) = same.iter().find(|o| self.keys[*o].key[..] == bytes[..]) {
                self.material_reused += 1;
                anomaly(
                    at,
                    format_args!("KEY MATERIAL REUSED: key {id} given to {master} has the bytes of key {other}"),
                );
            }
            same.push(id.clone());
            self.keys.insert(
                id.clone(),
                Issued {
                    direction,
                    master: master.to_owned(),
                    slave: slave.to_owned(),
                    key: bytes,
                    state: State::Pending,
                    unanswered: false,
                },
            );
            self.issued[direction] += 1;
            fresh.push(id.clone());
        }
        fresh
    }

    /// Checks what `dec_keys` for `requested` gave `slave`; returns the requested IDs it
    /// answered (delivered or not: none is to be asked for again).
    pub fn receive(
        &mut self,
        at: Duration,
        slave: &str,
        requested: &[String],
        container: &KeyContainer,
    ) -> Vec<String> {
        let mut answered = Vec::new();
        for key in &container.keys {
            let id = &key.key_ID;
            if !requested.contains(id) {
                self.mismatched += 1;
                anomaly(
                    at,
                    format_args!(
                        "MISMATCHED: dec_keys gave {slave} key {id}, which it did not ask for"
                    ),
                );
                continue;
            }
            answered.push(id.clone());
            let Some(state) = self.keys.get(id).map(|e| e.state) else {
                self.mismatched += 1;
                anomaly(
                    at,
                    format_args!(
                        "MISMATCHED: dec_keys gave {slave} key {id}, never given to a master"
                    ),
                );
                continue;
            };
            match state {
                State::Delivered | State::Mismatched => {
                    self.served_twice += 1;
                    anomaly(
                        at,
                        format_args!("SERVED TWICE: dec_keys gave {slave} key {id} a second time"),
                    );
                    continue;
                }
                State::Lost => {
                    // refused before, given now: not lost after all
                    anomaly(
                        at,
                        format_args!(
                            "dec_keys gave {slave} key {id}, which its KM had refused before"
                        ),
                    );
                    self.unlose(id);
                }
                State::Pending => {}
            }
            let entry = self.keys.get_mut(id).expect("present");
            let same = decode(&key.key).is_some_and(|bytes| bytes[..] == entry.key[..]);
            if same {
                entry.state = State::Delivered;
                self.delivered[entry.direction] += 1;
            } else {
                entry.state = State::Mismatched;
                self.mismatched += 1;
                anomaly(
                    at,
                    format_args!(
                        "MISMATCHED: dec_keys gave {slave} other bytes for key {id} than {} got",
                        entry.master
                    ),
                );
            }
        }
        if answered.len() < requested.len() {
            self.short_answers += 1;
            anomaly(
                at,
                format_args!(
                    "dec_keys answered {slave} {} of {} requested keys without an error",
                    answered.len(),
                    requested.len()
                ),
            );
        }
        answered
    }

    /// Notes that a `dec_keys` asking for `ids` got no answer.
    pub fn unanswered(&mut self, ids: &[String]) {
        for id in ids {
            if let Some(entry) = self.keys.get_mut(id) {
                entry.unanswered = true;
            }
        }
    }

    /// Records the slave KM's definitive refusal of key `id` (`reason`: its message).
    pub fn refused(&mut self, at: Duration, id: &str, reason: &str) {
        let Some(entry) = self.keys.get_mut(id) else {
            return;
        };
        if entry.state != State::Pending {
            return;
        }
        entry.state = State::Lost;
        if entry.unanswered {
            self.lost.refused_after_unanswered_dec_keys += 1;
        } else {
            self.lost.refused_by_slave_km += 1;
        }
        *self.lost.reasons.entry(reason.to_owned()).or_default() += 1;
        let unanswered = if entry.unanswered {
            " (a dec_keys asking for it had gone unanswered)"
        } else {
            ""
        };
        anomaly(
            at,
            format_args!(
                "LOST: {}'s KM refuses key {id} of {}: {reason}{unanswered}",
                entry.slave, entry.master
            ),
        );
    }

    fn unlose(&mut self, id: &str) {
        // only called for a key in State::Lost, refused earlier
        let entry = &self.keys[id];
        if entry.unanswered {
            self.lost.refused_after_unanswered_dec_keys -= 1;
        } else {
            self.lost.refused_by_slave_km -= 1;
        }
    }

    /// Keys not yet obtained, grouped by (master, slave), in batches of at most `batch`.
    pub fn pending(&self, batch: usize) -> Vec<(String, String, Vec<String>)> {
        let mut groups: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for (id, entry) in &self.keys {
            if entry.state == State::Pending {
                groups
                    .entry((entry.master.clone(), entry.slave.clone()))
                    .or_default()
                    .push(id.clone());
            }
        }
        let mut batches = Vec::new();
        for ((master, slave), ids) in groups {
            for chunk in ids.chunks(batch) {
                batches.push((master.clone(), slave.clone(), chunk.to_vec()));
            }
        }
        batches
    }

    /// Declares every key still pending lost; returns how many.
    pub fn give_up(&mut self, at: Duration) -> u64 {
        let mut count = 0;
        for (id, entry) in &mut self.keys {
            if entry.state == State::Pending {
                entry.state = State::Lost;
                count += 1;
                anomaly(
                    at,
                    format_args!(
                        "LOST: {} never obtained key {id} of {}",
                        entry.slave, entry.master
                    ),
                );
            }
        }
        self.lost.not_obtained_after_sweep += count;
        count
    }

    /// Keys lost, all causes.
    pub fn lost_total(&self) -> u64 {
        self.lost.refused_by_slave_km
            + self.lost.refused_after_unanswered_dec_keys
            + self.lost.not_obtained_after_sweep
    }

    /// Pending keys.
    pub fn pending_count(&self) -> usize {
        self.keys
            .values()
            .filter(|e| e.state == State::Pending)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etsi014::Key;

    fn container(keys: &[(&str, [u8; KEY_BYTES])]) -> KeyContainer {
        KeyContainer {
            keys: keys
                .iter()
                .map(|(id, bytes)| Key {
                    key_ID: (*id).to_owned(),
                    key_ID_extension: None,
                    key: base64::engine::general_purpose::STANDARD.encode(bytes),
                    key_extension: None,
                })
                .collect(),
            key_container_extension: None,
        }
    }

    #[test]
    fn every_disagreement_is_counted() {
        let at = Duration::ZERO;
        let mut ledger = Ledger::new();
        let fresh = ledger.issue(
            at,
            0,
            "m",
            "s",
            &container(&[("k1", [1; 32]), ("k2", [2; 32])]),
        );
        assert_eq!(fresh, ["k1", "k2"]);
        // the same ID again, and the same bytes under another ID
        let fresh = ledger.issue(
            at,
            0,
            "m",
            "s",
            &container(&[("k1", [9; 32]), ("k3", [2; 32])]),
        );
        assert_eq!(fresh, ["k3"]);
        assert_eq!((ledger.served_twice, ledger.material_reused), (1, 1));
        // k1 right, k2 with other bytes, k3 left out
        let asked = ["k1", "k2", "k3"].map(String::from);
        let got = ledger.receive(
            at,
            "s",
            &asked,
            &container(&[("k1", [1; 32]), ("k2", [7; 32])]),
        );
        assert_eq!(got, ["k1", "k2"]);
        assert_eq!((ledger.delivered[0], ledger.mismatched), (1, 1));
        assert_eq!(ledger.short_answers, 1);
        // k1 a second time
        ledger.receive(at, "s", &asked[..1], &container(&[("k1", [1; 32])]));
        assert_eq!(ledger.served_twice, 2);
        // k3 refused after a dec_keys for it went unanswered
        ledger.unanswered(&asked[2..]);
        ledger.refused(at, "k3", "unknown key_ID");
        assert_eq!(ledger.lost.refused_after_unanswered_dec_keys, 1);
        assert_eq!(ledger.pending_count(), 0);
        assert_eq!(ledger.lost_total(), 1);
    }

    #[test]
    fn keys_never_obtained_are_lost_at_the_end() {
        let mut ledger = Ledger::new();
        ledger.issue(Duration::ZERO, 1, "m", "s", &container(&[("k1", [1; 32])]));
        assert_eq!(ledger.pending(8).len(), 1);
        assert_eq!(ledger.give_up(Duration::ZERO), 1);
        assert_eq!(ledger.lost_total(), 1);
    }
}
