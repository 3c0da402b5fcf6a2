//! The key manager's durable store (redb): link key pools and keys awaiting delivery.
//!
//! Link keys arrive from the quantum layer in blocks of [`BLOCK_BYTES`] bytes, numbered by a
//! per-link sequence. Both ends of a link hold the same blocks under the same numbers. To
//! allocate without coordination, every block belongs to one end ([`TX`] or [`RX`]): the
//! transmitter module decides, when it generates a block, which end will own it, and both
//! ends store that owner with the block. Each end only *takes* its own blocks, and only
//! *looks up* the peer's blocks by number when the peer references them. Because ownership
//! is decided at generation (the transmitter gives new blocks to the end that holds fewer),
//! a flow in one direction gets the link's whole key rate, not half of it.
//!
//! Blocks received but not yet confirmed by the transmitter wait in a pending table and are
//! not usable (see [`crate::quantum::emulated`]). Every consumption removes the blocks in the
//! same transaction as its effect, so a key is never used twice, also across a crash.
//!
//! Counts of usable blocks per link and owner, and of pending blocks, are kept in the same
//! transactions as the blocks themselves, so pool accounting costs O(1) whatever the pool
//! size. A [`Reservation`] sets blocks aside in memory (a relay that first makes sure the
//! whole path can serve it); nothing else may take them until it is consumed or dropped,
//! and a crash simply returns them to the pool.
//!
//! Key bytes (blocks, pending blocks, keys awaiting or fetched by their slave SAE) are sealed
//! at rest under data keys kept in key slots outside redb, destroyed once their records are
//! consumed, so that a consumed key cannot be recovered from the store files shortly after
//! (at most [`key_slots::COMPACT_AFTER`] and a sweep; [`KeyStore::compact`]), even with the
//! store key (`sealing`, `key_slots`; `forensics` is the attacker's view, for tests).
//! Transfer records hold ids and states only.
//!
//! Beside this file: `arrival` (blocks from the quantum layer), `reservation`, `peer_blocks`
//! (the peer's blocks, by number), `deliveries` (keys awaiting their slave SAE) and
//! `transfers` (key transfers of an interworking node, and who may withdraw their keys).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};
use uuid::Uuid;

mod arrival;
mod compaction;
mod deliveries;
pub mod forensics;
mod key_slots;
mod migrate;
mod peer_blocks;
mod reservation;
mod sealing;
mod slot_index;
mod transfers;
pub use arrival::frame_owner;
pub use deliveries::{now_ms as deliveries_now_ms, Delivery, DeliveryTerms, ExpiredKey};
pub use key_slots::{slot_path, COMPACT_AFTER};
use key_slots::{Deltas, Rotation, Slots};
pub use reservation::Reservation;
use reservation::ReservedSets;
pub use sealing::{AtRestConfig, StoreKey, STORE_KEY_FILE};
pub use transfers::{Phase, Side, TransferRecord, Withdrawable, Withdrawn};

/// The block, its size and the owner indices are the quantum layer's, which hands blocks in.
pub use crate::quantum::sink::{Block, BLOCK_BYTES, RX, TX};

/// Index under which [`COUNTS`] keeps a link's number of pending blocks.
const PENDING_COUNT: u8 = 2;

/// Usable blocks: (link, owner, number) -> sealed block.
const BLOCKS: TableDefinition<(&str, u8, u64), &[u8]> = TableDefinition::new("sealed_blocks");
/// Pending blocks: (link, number) -> owner and sealed block.
const PENDING: TableDefinition<(&str, u64), (u8, &[u8])> = TableDefinition::new("sealed_pending");
/// Usable blocks per (link, owner); pending blocks per (link, [`PENDING_COUNT`]).
const COUNTS: TableDefinition<(&str, u8), u64> = TableDefinition::new("counts");
const NEXT_SEQ: TableDefinition<&str, u64> = TableDefinition::new("next_seq");

/// Errors of the key store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(String),
    #[error("link {link}: block {seq} is not available")]
    MissingBlock { link: String, seq: u64 },
    #[error("link {link}: block {seq} belongs to this end and cannot be referenced by the peer")]
    WrongOwner { link: String, seq: u64 },
    #[error("link {link}: {wanted} blocks wanted, {available} available")]
    Exhausted {
        link: String,
        wanted: usize,
        available: usize,
    },
    #[error("link {link}: blocks out of sequence (expected {expected}, got {got})")]
    OutOfSequence {
        link: String,
        expected: u64,
        got: u64,
    },
    #[error("relay {0} was voided: its keys are refused")]
    Voided(Uuid),
    #[error("key {0} is already held for this SAE")]
    DuplicateKey(Uuid),
    #[error("key {0} is not known")]
    UnknownKey(Uuid),
    #[error("key {0} was not issued for this SAE pair")]
    NotForThisSae(Uuid),
    #[error("key {0} expired before it was fetched")]
    ExpiredKey(Uuid),
    #[error("{waiting} keys already wait for SAE {slave} from SAE {master} (at most {max})")]
    Backlog {
        slave: String,
        master: String,
        waiting: u64,
        max: u64,
    },
    /// The store key, the key slot file or a sealed record.
    #[error("key material at rest: {0}")]
    AtRest(String),
    /// A record names a key slot that was destroyed (its record was consumed meanwhile).
    #[error("key slot {slot} is destroyed")]
    KeySlotGone { slot: u32 },
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.to_string())
            }
        }
    )*};
}
db_err!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// The durable store of one KM.
#[derive(Clone)]
pub struct KeyStore {
    db: Arc<Database>,
    slots: Arc<Slots>,
    /// Held from the start of a write transaction until its key slots are settled, so that
    /// slot counts change in commit order.
    writing: Arc<Mutex<()>>,
    reserved: ReservedSets,
    /// Woken when blocks become usable or reserved blocks are released.
    arrived: Arc<tokio::sync::Notify>,
}

/// One write transaction: everything in it happens, or nothing.
pub struct Txn {
    txn: WriteTransaction,
    /// Whether the transaction makes blocks usable (waiters are woken after its commit).
    added: bool,
    seal: Sealing,
}

/// Sealing and opening of key records within one transaction.
pub(crate) struct Sealing {
    slots: Arc<Slots>,
    /// Live records added (sealed) and removed per key slot, applied after the commit.
    deltas: Deltas,
    /// Slots this transaction removed records of (what is left in them is re-sealed).
    consumed: BTreeSet<u32>,
    /// This transaction's number (its deliveries get slots of their own).
    serial: u64,
    /// The records this transaction sealed, by slot (added to the slot index after its
    /// commit).
    index: HashMap<u32, slot_index::Members>,
}

impl Sealing {
    /// Seals `bytes` for `place` in `group` (records consumed together).
    fn seal(&mut self, group: &str, place: &[u8], bytes: &[u8]) -> Result<Vec<u8>, StoreError> {
        let record = self.slots.seal(group, place, bytes, &mut self.deltas)?;
        if let Some(header) = sealing::Header::of(&record)? {
            let members = self.index.entry(header.slot).or_default();
            if !members.add(place) {
                // a place of no table: the slot's compaction could not find the record
                return Err(StoreError::AtRest("a key record sealed at no place".into()));
            }
        }
        Ok(record)
    }

    /// Opens `record` for `place`.
    fn open(&self, record: &[u8], place: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, StoreError> {
        self.slots.open(record, place)
    }

    /// Counts `record` as removed from the store.
    fn release(&mut self, record: &[u8]) -> Result<(), StoreError> {
        if let Some(slot) = self.slots.release(record, &mut self.deltas)? {
            self.consumed.insert(slot);
        }
        Ok(())
    }

    fn new(slots: &Arc<Slots>) -> Self {
        Self {
            slots: slots.clone(),
            deltas: Deltas::new(),
            consumed: BTreeSet::new(),
            serial: slots.serial(),
            index: HashMap::new(),
        }
    }
}

/// The place (associated data) of block `seq` of `link` owned by `owner`, usable or pending.
fn block_place(table: &str, link: &str, owner: u8, seq: u64) -> Vec<u8> {
    sealing::place(table, &[link.as_bytes(), &[owner], &seq.to_be_bytes()])
}

/// The slot group of `link`'s usable blocks of `owner`.
fn block_group(link: &str, owner: u8) -> String {
    format!("blocks/{owner}/{link}")
}

/// The slot group of `link`'s pending blocks.
fn pending_group(link: &str) -> String {
    format!("pending/{link}")
}

/// A block of opened bytes.
fn to_block(bytes: &[u8], link: &str, seq: u64) -> Result<Block, StoreError> {
    let mut block = zeroize::Zeroizing::new([0u8; BLOCK_BYTES]);
    if bytes.len() != BLOCK_BYTES {
        return Err(StoreError::AtRest(format!(
            "link {link}: block {seq} has {} bytes",
            bytes.len()
        )));
    }
    block.copy_from_slice(bytes);
    Ok(block)
}

impl KeyStore {
    /// Opens (or creates) the store at `path` with at-rest encryption on and the store key
    /// `store.key` beside it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, &AtRestConfig::default())
    }

    /// Opens (or creates) the store at `path`, recounting its pools and its key slots'
    /// records; the store key and sealing as `at_rest` says.
    pub fn open_with(path: &Path, at_rest: &AtRestConfig) -> Result<Self, StoreError> {
        Self::open_rotating(path, at_rest, Rotation::default())
    }

    fn open_rotating(
        path: &Path,
        at_rest: &AtRestConfig,
        rotation: Rotation,
    ) -> Result<Self, StoreError> {
        let store_key = StoreKey::load_or_create(&at_rest.key_path(path))?;
        let slots = Arc::new(Slots::load(
            &slot_path(path),
            &store_key,
            at_rest.encrypt,
            rotation,
        )?);
        drop(store_key);
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(NEXT_SEQ)?;
        let mut seal = Sealing::new(&slots);
        migrate::tables(&txn, &mut seal)?;
        slots.sync()?;
        deliveries::open(&txn)?;
        {
            // counts are kept in every transaction; recounting once at start also covers a
            // store written before they existed
            let blocks = txn.open_table(BLOCKS)?;
            let pending = txn.open_table(PENDING)?;
            let mut counts: HashMap<(String, u8), u64> = HashMap::new();
            for entry in blocks.iter()? {
                let (key, _) = entry?;
                let (link, owner, _) = key.value();
                *counts.entry((link.to_owned(), owner)).or_default() += 1;
            }
            for entry in pending.iter()? {
                let (key, _) = entry?;
                *counts
                    .entry((key.value().0.to_owned(), PENDING_COUNT))
                    .or_default() += 1;
            }
            let mut table = txn.open_table(COUNTS)?;
            table.retain(|_, _| false)?;
            for ((link, which), n) in &counts {
                table.insert((link.as_str(), *which), *n)?;
            }
        }
        // the slots' records and where they are (the slot index), from the tables
        let found = slot_index::scan(&txn)?;
        txn.commit()?;
        let partial: Vec<u32> = found
            .iter()
            .filter(|(_, f)| f.partly_consumed())
            .map(|(slot, _)| *slot)
            .collect();
        let orphans = slots.recount(found);
        // slots a crash left partly consumed are compacted at the first sweep
        slots.partly_consumed_at_open(partial);
        if orphans > 0 {
            tracing::error!(
                records = orphans,
                "key records whose key slot is gone: they cannot be opened"
            );
        }
        Ok(Self {
            db: Arc::new(db),
            slots,
            writing: Arc::default(),
            reserved: Arc::default(),
            arrived: Arc::default(),
        })
    }

    /// Runs `f` in one durable write transaction; an error aborts it.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&mut Txn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.write_compacting(f, false)
    }

    /// Re-seals the records left in partly consumed key slots whose time is up (in all of
    /// them with `everything`, as at shutdown) and destroys those slots, then makes the
    /// zeros of destroyed slots durable; nothing when nothing is due.
    pub fn compact(&self, everything: bool) -> Result<(), StoreError> {
        if self.slots.compaction_due(everything) {
            self.write_compacting(|_| Ok(()), everything)?;
        }
        self.slots.sync_zeros()
    }

    fn write_compacting<T>(
        &self,
        f: impl FnOnce(&mut Txn) -> Result<T, StoreError>,
        everything: bool,
    ) -> Result<T, StoreError> {
        let writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let mut txn = Txn {
            txn: self.db.begin_write()?,
            added: false,
            seal: Sealing::new(&self.slots),
        };
        // what is left in slots consumed from is re-sealed once their time is up, so that
        // they are destroyed after the commit; new slots are durable before it
        let value = match f(&mut txn).and_then(|value| {
            txn.compact(everything)?;
            self.slots.sync()?;
            Ok(value)
        }) {
            Ok(value) => value,
            Err(e) => {
                drop(txn);
                self.slots.settle(None);
                return Err(e);
            }
        };
        let Txn {
            txn, added, seal, ..
        } = txn;
        if let Err(e) = txn.commit() {
            self.slots.settle(None);
            return Err(e.into());
        }
        // after the commit: a slot whose last record this transaction removed is destroyed
        self.slots.settle(Some((seal.deltas, seal.index)));
        drop(writing);
        if added {
            self.arrived.notify_waiters();
        }
        Ok(value)
    }

    /// Runs a blocking store operation off the async executor.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&KeyStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Db(format!("store task: {e}")))?
    }

    fn count(&self, link: &str, which: u8) -> Result<usize, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(COUNTS)?;
        Ok(table.get((link, which))?.map_or(0, |v| v.value()) as usize)
    }

    fn reserved_count(&self, link: &str, owner: u8) -> usize {
        self.reserved
            .lock()
            .expect("reservations")
            .get(&(link.to_owned(), owner))
            .map_or(0, HashSet::len)
    }

    /// Number of usable blocks of `link` owned by `owner` and not reserved (O(1)).
    pub fn available(&self, link: &str, owner: u8) -> Result<usize, StoreError> {
        Ok(self
            .count(link, owner)?
            .saturating_sub(self.reserved_count(link, owner)))
    }

    /// Number of usable blocks of `link` owned by `owner`, reserved ones included (O(1)).
    pub fn stored(&self, link: &str, owner: u8) -> Result<usize, StoreError> {
        self.count(link, owner)
    }

    /// Number of blocks received and not yet confirmed on `link` (O(1)).
    pub fn pending(&self, link: &str) -> Result<usize, StoreError> {
        self.count(link, PENDING_COUNT)
    }
}

impl Txn {
    fn add_count(&mut self, link: &str, which: u8, delta: i64) -> Result<(), StoreError> {
        if delta == 0 {
            return Ok(());
        }
        let mut table = self.txn.open_table(COUNTS)?;
        let current = table.get((link, which))?.map_or(0, |v| v.value());
        let next = current.saturating_add_signed(delta);
        if next == 0 {
            table.remove((link, which))?;
        } else {
            table.insert((link, which), next)?;
        }
        Ok(())
    }

    fn recount(&mut self, link: &str) -> Result<(), StoreError> {
        let (tx, rx, pending) = {
            let blocks = self.txn.open_table(BLOCKS)?;
            let pending = self.txn.open_table(PENDING)?;
            (
                blocks.range((link, TX, 0)..=(link, TX, u64::MAX))?.count(),
                blocks.range((link, RX, 0)..=(link, RX, u64::MAX))?.count(),
                pending.range((link, 0)..=(link, u64::MAX))?.count(),
            )
        };
        let mut table = self.txn.open_table(COUNTS)?;
        for (which, n) in [(TX, tx), (RX, rx), (PENDING_COUNT, pending)] {
            table.insert((link, which), n as u64)?;
        }
        Ok(())
    }
}

/// A directory removed when dropped, for tests of other modules that need a store.
#[cfg(test)]
pub fn test_dir() -> tests::tempdir::Dir {
    tests::tempdir::Dir::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    pub(super) fn blocks(n: usize, fill: u8) -> Vec<Block> {
        (0..n)
            .map(|i| Zeroizing::new([fill.wrapping_add(i as u8); BLOCK_BYTES]))
            .collect()
    }

    pub(super) fn store() -> (tempdir::Dir, KeyStore) {
        let dir = tempdir::Dir::new();
        let store = KeyStore::open(&dir.path.join("km.redb")).unwrap();
        (dir, store)
    }

    pub(super) mod tempdir {
        pub struct Dir {
            pub path: std::path::PathBuf,
        }
        impl Dir {
            pub fn new() -> Self {
                let path =
                    std::env::temp_dir().join(format!("qkdni-store-{}", uuid::Uuid::new_v4()));
                std::fs::create_dir_all(&path).unwrap();
                Self { path }
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.path);
            }
        }
    }

    /// Takes `n` own blocks the way every consumer does: reserve, take, drop.
    pub(super) fn take(
        store: &KeyStore,
        link: &str,
        owner: u8,
        n: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let reservation = store.reserve(link, owner, n)?;
        let taken = store.write(|t| t.take_reserved(&reservation))?;
        Ok(taken.into_iter().map(|(seq, _)| seq).collect())
    }

    /// The counts kept in transactions equal a recount of the tables.
    pub(super) fn assert_counts(store: &KeyStore, link: &str) {
        let txn = store.db.begin_read().unwrap();
        let blocks = txn.open_table(BLOCKS).unwrap();
        let pending = txn.open_table(PENDING).unwrap();
        for owner in [TX, RX] {
            let n = blocks
                .range((link, owner, 0)..=(link, owner, u64::MAX))
                .unwrap()
                .count();
            assert_eq!(store.stored(link, owner).unwrap(), n, "owner {owner}");
        }
        let n = pending.range((link, 0)..=(link, u64::MAX)).unwrap().count();
        assert_eq!(store.pending(link).unwrap(), n);
    }

    #[test]
    fn blocks_are_taken_once_by_their_owner() {
        let (_dir, store) = store();
        // the first two blocks are the transmitter's, the other four the receiver's
        store
            .write(|t| t.store_blocks("l", 0, &blocks(6, 0), 2))
            .unwrap();
        assert_eq!(store.available("l", TX).unwrap(), 2);
        assert_eq!(store.available("l", RX).unwrap(), 4);
        assert_eq!(take(&store, "l", RX, 3).unwrap(), vec![2, 3, 4]);
        assert_eq!(store.available("l", RX).unwrap(), 1);
        let err = take(&store, "l", RX, 2).unwrap_err();
        assert!(matches!(err, StoreError::Exhausted { available: 1, .. }));
        // the failed attempt changed nothing
        assert_eq!(store.available("l", RX).unwrap(), 1);
        assert_counts(&store, "l");
    }

    #[test]
    fn counts_survive_a_reopen() {
        let dir = tempdir::Dir::new();
        let path = dir.path.join("km.redb");
        {
            let store = KeyStore::open(&path).unwrap();
            store
                .write(|t| t.store_blocks("l", 0, &blocks(10, 0), 7))
                .unwrap();
            take(&store, "l", TX, 5).unwrap();
        }
        let store = KeyStore::open(&path).unwrap();
        assert_eq!(store.available("l", TX).unwrap(), 2);
        assert_eq!(store.available("l", RX).unwrap(), 3);
        assert_counts(&store, "l");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Whatever the operations, the kept counts equal a recount and no block is taken
        /// twice (a resync gives the numbers it drops to new blocks).
        #[test]
        fn counts_always_match_the_tables(ops in proptest::collection::vec((0u8..6, 0usize..20, 0usize..20), 1..40)) {
            let (_dir, store) = store();
            let mut taken = std::collections::HashSet::new();
            for (op, a, b) in ops {
                let next = store.next_seq("l").unwrap();
                if op == 3 {
                    if let Ok(seqs) = take(&store, "l", (a % 2) as u8, b) {
                        for seq in seqs {
                            proptest::prop_assert!(taken.insert(seq), "block {} taken twice", seq);
                        }
                    }
                    assert_counts(&store, "l");
                    continue;
                }
                let _ = match op {
                    0 => store.write(|t| t.store_blocks("l", next, &blocks(a, 1), b)),
                    1 => store.write(|t| t.store_pending("l", next, &blocks(a, 1), b)),
                    2 => store.write(|t| t.commit_pending("l", next.saturating_sub(a as u64))),
                    4 => store.write(|t| t.remove_peer_blocks("l", (a % 2) as u8, &[b as u64])),
                    _ => {
                        // numbers from the agreed one on are given to new blocks again
                        let agreed = next.saturating_sub(a as u64);
                        taken.retain(|seq| *seq < agreed);
                        store.write(|t| t.resync("l", agreed).map(|_| ()))
                    }
                };
                assert_counts(&store, "l");
            }
        }
    }
}
