//! Before a transaction commits: the records still live in every key slot it removed records
//! of are sealed again under another slot, so that each such slot is destroyed after the
//! commit and the records it removed — their ciphertext left in freed redb pages — open for
//! nobody any more. Slots are small ([`super::key_slots::Rotation`]) and a slot's records
//! are found through the slot index ([`super::slot_index`], in memory with the slot), so that
//! compaction costs O(records of the slots consumed from), whatever the pool size; a slot
//! re-sealed is never its group's current slot again. A slot consumed from waits
//! [`super::key_slots::COMPACT_AFTER`] for the rest of its records to be consumed (they
//! mostly are: records are consumed in the order they were sealed) before they are re-sealed,
//! so that a stream of small requests does not re-seal a slot's records at each of them.

use redb::{ReadableTable, TableHandle};
use zeroize::Zeroizing;

use super::deliveries::{self, DELIVERIES, FETCHED};
use super::sealing::Header;
use super::slot_index::{DeliveryAt, Members, Run};
use super::{block_group, block_place, pending_group, Sealing, StoreError, Txn, BLOCKS, PENDING};

/// Whether `record` is sealed under `slot`.
fn in_slot(record: &[u8], slot: u32) -> bool {
    matches!(Header::of(record), Ok(Some(h)) if h.slot == slot)
}

/// The record `old` at `place` sealed again under `group`'s current slot (`old` counted as
/// gone from its slot).
fn reseal(
    seal: &mut Sealing,
    old: &[u8],
    place: &[u8],
    group: &str,
) -> Result<Vec<u8>, StoreError> {
    let bytes = seal.open(old, place)?;
    let record = seal.seal(group, place, &bytes)?;
    seal.release(old)?;
    Ok(record)
}

impl Txn {
    /// Where the live records of `slot` are: the index as committed, with this transaction's
    /// additions.
    fn members_of(&self, slot: u32) -> Members {
        let mut members = self.seal.slots.members(slot).unwrap_or_default();
        if let Some(added) = self.seal.index.get(&slot) {
            members.extend(added.clone());
        }
        members
    }

    /// Notes the slots this transaction consumed from and left records in, then re-seals
    /// what is left in every partly consumed slot whose time is up (in all of them with
    /// `everything`), so that those slots are destroyed after the commit.
    pub(super) fn compact(&mut self, everything: bool) -> Result<(), StoreError> {
        let consumed = std::mem::take(&mut self.seal.consumed);
        if consumed.is_empty() && !self.seal.slots.compaction_due(everything) {
            return Ok(());
        }
        let slots = self
            .seal
            .slots
            .due(&consumed, &self.seal.deltas, everything);
        for (slot, group) in slots {
            let members = self.members_of(slot);
            for ((link, owner), run) in &members.blocks {
                self.reseal_blocks(slot, link, *owner, *run)?;
            }
            for (link, run) in &members.pending {
                self.reseal_pending(slot, link, *run)?;
            }
            for at in &members.deliveries {
                self.reseal_delivery(slot, at)?;
            }
            if self.seal.slots.records_left(slot, &self.seal.deltas) > 0 {
                // not expected: the index names every record sealed under the slot
                tracing::error!(slot, %group, "records of a key slot not found by its index");
                debug_assert!(false, "slot {slot}: records not found by its index");
            }
        }
        // the slots re-sealed into take no records away: nothing more to compact
        self.seal.consumed.clear();
        Ok(())
    }

    /// Re-seals the usable blocks of `link` owned by `owner` numbered in `run` that are
    /// still sealed under `slot`.
    fn reseal_blocks(
        &mut self,
        slot: u32,
        link: &str,
        owner: u8,
        run: Run,
    ) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(BLOCKS)?;
        let found: Vec<(u64, Zeroizing<Vec<u8>>)> = table
            .range((link, owner, run.first)..=(link, owner, run.last))?
            .filter_map(|entry| match entry {
                Ok((k, v)) if in_slot(v.value(), slot) => {
                    Some(Ok((k.value().2, Zeroizing::new(v.value().to_vec()))))
                }
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<_, _>>()?;
        let group = block_group(link, owner);
        for (seq, old) in found {
            let place = block_place(BLOCKS.name(), link, owner, seq);
            let record = reseal(&mut self.seal, &old, &place, &group)?;
            table.insert((link, owner, seq), record.as_slice())?;
        }
        Ok(())
    }

    /// Re-seals the pending blocks of `link` numbered in `run` still sealed under `slot`.
    fn reseal_pending(&mut self, slot: u32, link: &str, run: Run) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(PENDING)?;
        let found: Vec<(u64, u8, Zeroizing<Vec<u8>>)> = table
            .range((link, run.first)..=(link, run.last))?
            .filter_map(|entry| match entry {
                Ok((k, v)) if in_slot(v.value().1, slot) => {
                    let (owner, record) = v.value();
                    Some(Ok((k.value().1, owner, Zeroizing::new(record.to_vec()))))
                }
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<_, _>>()?;
        let group = pending_group(link);
        for (seq, owner, old) in found {
            let place = block_place(PENDING.name(), link, owner, seq);
            let record = reseal(&mut self.seal, &old, &place, &group)?;
            table.insert((link, seq), (owner, record.as_slice()))?;
        }
        Ok(())
    }

    /// Re-seals the delivery `at`, if it is still sealed under `slot`.
    fn reseal_delivery(&mut self, slot: u32, at: &DeliveryAt) -> Result<(), StoreError> {
        let head = at.head;
        let def = if head == 0 { DELIVERIES } else { FETCHED };
        let mut table = self.txn.open_table(def)?;
        let value = match table.get((at.id, at.slave.as_str()))? {
            Some(v) if in_slot(deliveries::record_of(&v.value()[head..]), slot) => {
                Zeroizing::new(v.value().to_vec())
            }
            _ => return Ok(()),
        };
        let master = deliveries::master_of(&value[head..]);
        let place = deliveries::place(def.name(), at.id, &at.slave, master);
        let old = deliveries::record_of(&value[head..]);
        let group = if head == 0 {
            deliveries::waiting_group(self.seal.serial)
        } else {
            deliveries::fetched_group(self.seal.serial)
        };
        let record = reseal(&mut self.seal, old, &place, &group)?;
        let mut out = Zeroizing::new(value[..head].to_vec());
        out.extend_from_slice(&deliveries::value_of(master, &record));
        table.insert((at.id, at.slave.as_str()), out.as_slice())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{blocks, take, tempdir};
    use super::super::{KeyStore, TX};
    use super::*;

    /// The sealed records of `link`'s blocks owned by `owner`, by number.
    fn records(store: &KeyStore, link: &str, owner: u8) -> Vec<(u64, Vec<u8>)> {
        let txn = store.db.begin_read().unwrap();
        let table = txn.open_table(BLOCKS).unwrap();
        let out = table
            .range((link, owner, 0)..=(link, owner, u64::MAX))
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.value().2, v.value().to_vec())
            })
            .collect();
        out
    }

    #[test]
    fn the_rest_of_a_slot_is_resealed_once_its_time_is_up_and_only_it() {
        let dir = tempdir::Dir::new();
        let path = dir.path.join("km.redb");
        let store = KeyStore::open(&path).unwrap();
        // ten slots of 32 blocks (the default rotation)
        for batch in 0..10u64 {
            store
                .write(|t| t.store_blocks("l", batch * 32, &blocks(32, batch as u8), 32))
                .unwrap();
        }
        let before = records(&store, "l", TX);
        assert_eq!(take(&store, "l", TX, 1).unwrap(), vec![0]);
        // the slot waits for the rest of its records: nothing re-sealed yet, not due yet
        assert_eq!(records(&store, "l", TX)[..], before[1..]);
        assert!(!store.slots.compaction_due(false));
        assert!(store.slots.compaction_due(true));
        // a store reopened after a crash finds the slot partly consumed, due at once
        drop(store);
        let store = KeyStore::open(&path).unwrap();
        assert!(store.slots.compaction_due(false));
        store.compact(false).unwrap();
        assert!(!store.slots.compaction_due(true));
        let after = records(&store, "l", TX);
        assert_eq!(after.len(), 319);
        let changed: Vec<u64> = after
            .iter()
            .zip(&before[1..])
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, _)| a.0)
            .collect();
        assert_eq!(changed, (1..32).collect::<Vec<u64>>());
        // the first slot is gone with its index entry; the records re-sealed are indexed
        // under their new slot
        let slot = Header::of(&before[0].1).unwrap().unwrap().slot;
        assert!(store.slots.members(slot).is_none());
        for (seq, record) in &after[..31] {
            let new = Header::of(record).unwrap().unwrap().slot;
            let place = block_place(BLOCKS.name(), "l", TX, *seq);
            assert!(store.slots.members(new).unwrap().covers(&place));
        }
    }

    #[test]
    fn a_slot_emptied_by_the_next_takes_is_destroyed_with_nothing_resealed() {
        let dir = tempdir::Dir::new();
        let store = KeyStore::open(&dir.path.join("km.redb")).unwrap();
        for batch in 0..3u64 {
            store
                .write(|t| t.store_blocks("l", batch * 32, &blocks(32, batch as u8), 32))
                .unwrap();
        }
        let before = records(&store, "l", TX);
        let first = Header::of(&before[0].1).unwrap().unwrap().slot;
        for _ in 0..4 {
            take(&store, "l", TX, 8).unwrap();
        }
        // the first slot's 32 records went in four takes: nothing was re-sealed, it is gone
        assert_eq!(records(&store, "l", TX)[..], before[32..]);
        assert!(!store.slots.live_slots().contains(&first));
        assert!(!store.slots.compaction_due(true));
    }

    /// `cargo test --release --lib compaction_cost -- --ignored --nocapture`: the time of a
    /// one-block take with a small and a large pool (figures only; nothing is asserted on
    /// them).
    #[test]
    #[ignore]
    fn compaction_cost_with_the_pool_size() {
        for pool in [1_000u64, 100_000] {
            let dir = tempdir::Dir::new();
            let store = KeyStore::open(&dir.path.join("km.redb")).unwrap();
            for first in (0..pool).step_by(1_000) {
                store
                    .write(|t| t.store_blocks("l", first, &blocks(1_000, 0), 1_000))
                    .unwrap();
            }
            let takes = 200;
            let started = std::time::Instant::now();
            for _ in 0..takes {
                take(&store, "l", TX, 1).unwrap();
            }
            println!(
                "pool {pool}: {:?} per one-block take",
                started.elapsed() / takes
            );
        }
    }
}
