//! Before a transaction commits: the records still live in every key slot it removed records
//! of are sealed again under another slot, so that each such slot is destroyed after the
//! commit and the records it removed — their ciphertext left in freed redb pages — open for
//! nobody any more. Slots are small ([`super::key_slots::Rotation`]) and a slot's records
//! are found through the slot index [`SLOT_RECORDS`] (slot, record number -> place), kept
//! in the same transactions as the records themselves and rebuilt from the tables at open,
//! so that compaction costs O(records of the slots consumed from), whatever the pool size;
//! a slot re-sealed is never its group's current slot again. A slot consumed from waits
//! [`super::key_slots::COMPACT_AFTER`] for the rest of its records to be consumed (they
//! mostly are: records are consumed in the order they were sealed) before they are re-sealed,
//! so that a stream of small requests does not re-seal a slot's records at each of them.

use redb::{ReadableTable, TableDefinition, TableHandle, WriteTransaction};
use zeroize::Zeroizing;

use super::deliveries::{self, DELIVERIES, FETCHED};
use super::sealing::{self, Header};
use super::{block_group, block_place, pending_group, Sealing, StoreError, Txn, BLOCKS, PENDING};

/// The live sealed records of every key slot: (slot, record number under the slot's data
/// key) -> the record's place (its associated data, which names its table and key there).
pub(super) const SLOT_RECORDS: TableDefinition<(u32, u64), &[u8]> =
    TableDefinition::new("slot_records");

/// A record of the store, as its place names it.
enum Record<'p> {
    Block {
        link: &'p str,
        owner: u8,
        seq: u64,
    },
    Pending {
        link: &'p str,
        owner: u8,
        seq: u64,
    },
    /// Waiting for its slave SAE (`head` 0) or fetched (`head` 8: the end of its refetch
    /// window first).
    Delivery {
        head: usize,
        id: u128,
        slave: &'p str,
        master: &'p str,
    },
}

fn record_at(place: &[u8]) -> Option<Record<'_>> {
    let parts = sealing::parts_of(place)?;
    let text = |i: usize| std::str::from_utf8(parts.get(i)?).ok();
    let seq = |i: usize| Some(u64::from_be_bytes(parts.get(i)?[..].try_into().ok()?));
    let table = text(0)?;
    if table == BLOCKS.name() || table == PENDING.name() {
        let (link, owner, seq) = (text(1)?, *parts.get(2)?.first()?, seq(3)?);
        return Some(if table == BLOCKS.name() {
            Record::Block { link, owner, seq }
        } else {
            Record::Pending { link, owner, seq }
        });
    }
    let head = if table == DELIVERIES.name() {
        0
    } else if table == FETCHED.name() {
        8
    } else {
        return None;
    };
    Some(Record::Delivery {
        head,
        id: u128::from_be_bytes(parts.get(1)?[..].try_into().ok()?),
        slave: text(2)?,
        master: text(3)?,
    })
}

/// Whether `record` is the one numbered `n` under `slot`.
fn is(record: &[u8], slot: u32, n: u64) -> bool {
    matches!(Header::of(record), Ok(Some(h)) if h.slot == slot && h.counter() == n)
}

/// Rebuilds the slot index from every table holding key records (at open).
pub(super) fn rebuild_index(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.delete_table(SLOT_RECORDS)?;
    let mut index = txn.open_table(SLOT_RECORDS)?;
    let mut add = |record: &[u8], place: &dyn Fn() -> Vec<u8>| -> Result<(), StoreError> {
        if let Some(h) = Header::of(record)? {
            index.insert((h.slot, h.counter()), place().as_slice())?;
        }
        Ok(())
    };
    for entry in txn.open_table(BLOCKS)?.iter()? {
        let (k, v) = entry?;
        let (link, owner, seq) = k.value();
        add(v.value(), &|| block_place(BLOCKS.name(), link, owner, seq))?;
    }
    for entry in txn.open_table(PENDING)?.iter()? {
        let (k, v) = entry?;
        let (link, seq) = k.value();
        let (owner, record) = v.value();
        add(record, &|| block_place(PENDING.name(), link, owner, seq))?;
    }
    for (def, head) in [(DELIVERIES, 0), (FETCHED, 8)] {
        for entry in txn.open_table(def)?.iter()? {
            let (k, v) = entry?;
            let (id, slave) = k.value();
            let rest = &v.value()[head..];
            let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
            let master = std::str::from_utf8(&rest[2..2 + len]).unwrap_or_default();
            add(deliveries::record_of(rest), &|| {
                deliveries::place(def.name(), id, slave, master)
            })?;
        }
    }
    Ok(())
}

/// The slots some of whose records are gone (fewer live records than numbers used): the
/// index names a slot's live records by number, numbered from 0 as they were sealed.
pub(super) fn partly_consumed(txn: &WriteTransaction) -> Result<Vec<u32>, StoreError> {
    let index = txn.open_table(SLOT_RECORDS)?;
    let mut seen: std::collections::BTreeMap<u32, (u64, u64)> = Default::default();
    for entry in index.iter()? {
        let (slot, n) = entry?.0.value();
        let (count, top) = seen.entry(slot).or_default();
        *count += 1;
        *top = (*top).max(n + 1);
    }
    Ok(seen
        .into_iter()
        .filter(|(_, (count, top))| count < top)
        .map(|(slot, _)| slot)
        .collect())
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
    /// Writes this transaction's changes of the slot index (before its commit).
    pub(super) fn write_index(&mut self) -> Result<(), StoreError> {
        if self.seal.index.is_empty() {
            return Ok(());
        }
        let mut table = self.txn.open_table(SLOT_RECORDS)?;
        for (key, place) in std::mem::take(&mut self.seal.index) {
            match place {
                Some(place) => table.insert(key, place.as_slice())?,
                None => table.remove(key)?,
            };
        }
        Ok(())
    }

    /// The places of the live records of `slot`: the index as committed, with this
    /// transaction's changes.
    fn records_of(&mut self, slot: u32) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut found = std::collections::BTreeMap::new();
        let table = self.txn.open_table(SLOT_RECORDS)?;
        for entry in table.range((slot, 0)..=(slot, u64::MAX))? {
            let (k, v) = entry?;
            found.insert(k.value().1, Some(v.value().to_vec()));
        }
        for ((_, n), place) in self.seal.index.range((slot, 0)..=(slot, u64::MAX)) {
            found.insert(*n, place.clone());
        }
        Ok(found
            .into_iter()
            .filter_map(|(n, place)| Some((n, place?)))
            .collect())
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
            for (n, place) in self.records_of(slot)? {
                let resealed = match record_at(&place) {
                    Some(Record::Block { link, owner, seq }) => {
                        self.reseal_block(slot, n, &place, link, owner, seq)?
                    }
                    Some(Record::Pending { link, owner, seq }) => {
                        self.reseal_pending(slot, n, &place, link, owner, seq)?
                    }
                    Some(Record::Delivery {
                        head,
                        id,
                        slave,
                        master,
                    }) => self.reseal_delivery(slot, n, &place, head, id, slave, master)?,
                    None => false,
                };
                if !resealed {
                    // not expected: the index is kept with the records; forget the entry
                    tracing::error!(slot, %group, "slot index names a record that is not there");
                    self.seal.index.insert((slot, n), None);
                }
            }
        }
        // the slots re-sealed into take no records away: nothing more to compact
        self.seal.consumed.clear();
        Ok(())
    }

    fn reseal_block(
        &mut self,
        slot: u32,
        n: u64,
        place: &[u8],
        link: &str,
        owner: u8,
        seq: u64,
    ) -> Result<bool, StoreError> {
        let mut table = self.txn.open_table(BLOCKS)?;
        let old = match table.get((link, owner, seq))? {
            Some(v) if is(v.value(), slot, n) => v.value().to_vec(),
            _ => return Ok(false),
        };
        let record = reseal(&mut self.seal, &old, place, &block_group(link, owner))?;
        table.insert((link, owner, seq), record.as_slice())?;
        Ok(true)
    }

    fn reseal_pending(
        &mut self,
        slot: u32,
        n: u64,
        place: &[u8],
        link: &str,
        owner: u8,
        seq: u64,
    ) -> Result<bool, StoreError> {
        let mut table = self.txn.open_table(PENDING)?;
        let old = match table.get((link, seq))? {
            Some(v) if v.value().0 == owner && is(v.value().1, slot, n) => v.value().1.to_vec(),
            _ => return Ok(false),
        };
        let record = reseal(&mut self.seal, &old, place, &pending_group(link))?;
        table.insert((link, seq), (owner, record.as_slice()))?;
        Ok(true)
    }

    #[allow(clippy::too_many_arguments)]
    fn reseal_delivery(
        &mut self,
        slot: u32,
        n: u64,
        place: &[u8],
        head: usize,
        id: u128,
        slave: &str,
        master: &str,
    ) -> Result<bool, StoreError> {
        let def = if head == 0 { DELIVERIES } else { FETCHED };
        let mut table = self.txn.open_table(def)?;
        let value = match table.get((id, slave))? {
            Some(v) if is(deliveries::record_of(&v.value()[head..]), slot, n) => {
                Zeroizing::new(v.value().to_vec())
            }
            _ => return Ok(false),
        };
        let old = deliveries::record_of(&value[head..]);
        let group = if head == 0 {
            deliveries::waiting_group(self.seal.serial)
        } else {
            deliveries::fetched_group(self.seal.serial)
        };
        let record = reseal(&mut self.seal, old, place, &group)?;
        let mut out = Zeroizing::new(value[..head].to_vec());
        out.extend_from_slice(&deliveries::value_of(master, &record));
        table.insert((id, slave), out.as_slice())?;
        Ok(true)
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
        // the index moved with them: the first slot names nothing any more
        let slot = Header::of(&before[0].1).unwrap().unwrap().slot;
        let txn = store.db.begin_read().unwrap();
        let index = txn.open_table(SLOT_RECORDS).unwrap();
        assert_eq!(
            index.range((slot, 0)..=(slot, u64::MAX)).unwrap().count(),
            0
        );
        assert_eq!(index.iter().unwrap().count(), 319);
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

    #[test]
    fn places_name_their_records() {
        let at = block_place(BLOCKS.name(), "l/1", 1, 42);
        assert!(matches!(
            record_at(&at),
            Some(Record::Block {
                link: "l/1",
                owner: 1,
                seq: 42
            })
        ));
        let at = block_place(PENDING.name(), "l", 0, 7);
        assert!(matches!(
            record_at(&at),
            Some(Record::Pending {
                link: "l",
                owner: 0,
                seq: 7
            })
        ));
        let at = deliveries::place(FETCHED.name(), 9, "s", "m");
        assert!(matches!(
            record_at(&at),
            Some(Record::Delivery {
                head: 8,
                id: 9,
                slave: "s",
                master: "m"
            })
        ));
        assert!(record_at(&sealing::place("other", &[b"x"])).is_none());
        assert!(record_at(b"junk").is_none());
    }
}
