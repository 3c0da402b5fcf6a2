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
//! Beside this file: `arrival` (blocks from the quantum layer), `reservation`, `peer_blocks`
//! (the peer's blocks, by number), `deliveries` (keys awaiting their slave SAE) and
//! `transfers` (key transfers of an interworking node, and who may withdraw their keys).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};
use uuid::Uuid;

mod arrival;
mod deliveries;
mod peer_blocks;
mod reservation;
mod transfers;
pub use arrival::frame_owner;
pub use deliveries::{now_ms as deliveries_now_ms, Delivery, DeliveryTerms};
pub use reservation::Reservation;
use reservation::ReservedSets;
pub use transfers::{Phase, Side, TransferRecord, Withdrawable, Withdrawn};

/// The block, its size and the owner indices are the quantum layer's, which hands blocks in.
pub use crate::quantum::sink::{Block, BLOCK_BYTES, RX, TX};

/// Index under which [`COUNTS`] keeps a link's number of pending blocks.
const PENDING_COUNT: u8 = 2;

const BLOCKS: TableDefinition<(&str, u8, u64), [u8; BLOCK_BYTES]> = TableDefinition::new("blocks");
/// Pending blocks with their owner.
const PENDING: TableDefinition<(&str, u64), (u8, [u8; BLOCK_BYTES])> =
    TableDefinition::new("pending_owned");
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
    reserved: ReservedSets,
    /// Woken when blocks become usable or reserved blocks are released.
    arrived: Arc<tokio::sync::Notify>,
}

/// One write transaction: everything in it happens, or nothing.
pub struct Txn {
    txn: WriteTransaction,
    /// Whether the transaction makes blocks usable (waiters are woken after its commit).
    added: bool,
}

impl KeyStore {
    /// Opens (or creates) the store at `path`, recounting its pools.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(NEXT_SEQ)?;
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
        txn.commit()?;
        Ok(Self {
            db: Arc::new(db),
            reserved: Arc::default(),
            arrived: Arc::default(),
        })
    }

    /// Runs `f` in one durable write transaction; an error aborts it.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&mut Txn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut txn = Txn {
            txn: self.db.begin_write()?,
            added: false,
        };
        let value = f(&mut txn)?;
        let added = txn.added;
        txn.txn.commit()?;
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
