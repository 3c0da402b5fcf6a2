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

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};
use uuid::Uuid;
use zeroize::Zeroizing;

mod deliveries;
pub use deliveries::{now_ms as deliveries_now_ms, Delivery, DeliveryTerms};

/// Size of one link key block in bytes (256 bits: also one Poly1305 one-time key).
pub const BLOCK_BYTES: usize = 32;

/// One link key block, wiped from memory when dropped.
pub type Block = Zeroizing<[u8; BLOCK_BYTES]>;

/// Owner index of blocks owned by the link's transmitter end.
pub const TX: u8 = 0;
/// Owner index of blocks owned by the link's receiver end.
pub const RX: u8 = 1;
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

/// The owner of block `index` of a frame whose first `tx_owned` blocks are the
/// transmitter's.
pub fn frame_owner(index: usize, tx_owned: usize) -> u8 {
    if index < tx_owned {
        TX
    } else {
        RX
    }
}

/// Block numbers set aside in memory, per (link, owner).
type ReservedSets = Arc<Mutex<HashMap<(String, u8), HashSet<u64>>>>;

/// The durable store of one KM.
#[derive(Clone)]
pub struct KeyStore {
    db: Arc<Database>,
    reserved: ReservedSets,
    /// Woken when blocks become usable or reserved blocks are released.
    arrived: Arc<tokio::sync::Notify>,
}

/// Own blocks of one link set aside for one use: no other reservation gets them. Consumed
/// with [`Txn::take_reserved`]; dropping the reservation releases them (consumed or not).
pub struct Reservation {
    reserved: ReservedSets,
    arrived: Arc<tokio::sync::Notify>,
    link: String,
    owner: u8,
    seqs: Vec<u64>,
}

impl Reservation {
    /// The link whose blocks are reserved.
    pub fn link(&self) -> &str {
        &self.link
    }

    /// Number of blocks reserved.
    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    /// Whether nothing is reserved.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut sets = self.reserved.lock().expect("reservations");
        let key = (std::mem::take(&mut self.link), self.owner);
        if let Some(set) = sets.get_mut(&key) {
            for seq in &self.seqs {
                set.remove(seq);
            }
            if set.is_empty() {
                sets.remove(&key);
            }
        }
        drop(sets);
        // blocks not consumed are back for whoever waits
        self.arrived.notify_waiters();
    }
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

    /// Sets aside `n` usable blocks of `link` owned by `owner`, oldest first.
    pub fn reserve(&self, link: &str, owner: u8, n: usize) -> Result<Reservation, StoreError> {
        let exhausted = |available| StoreError::Exhausted {
            link: link.into(),
            wanted: n,
            available,
        };
        let mut sets = self.reserved.lock().expect("reservations");
        let key = (link.to_owned(), owner);
        let held = sets.get(&key).map_or(0, HashSet::len);
        let unreserved = self.count(link, owner)?.saturating_sub(held);
        if unreserved < n {
            return Err(exhausted(unreserved));
        }
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BLOCKS)?;
        let set = sets.entry(key).or_default();
        let mut seqs = Vec::with_capacity(n);
        for entry in table.range((link, owner, 0)..=(link, owner, u64::MAX))? {
            if seqs.len() == n {
                break;
            }
            let seq = entry?.0.value().2;
            if !set.contains(&seq) {
                seqs.push(seq);
            }
        }
        if seqs.len() < n {
            return Err(exhausted(seqs.len()));
        }
        set.extend(&seqs);
        Ok(Reservation {
            reserved: self.reserved.clone(),
            arrived: self.arrived.clone(),
            link: link.to_owned(),
            owner,
            seqs,
        })
    }

    /// Like [`reserve`](Self::reserve), waiting up to `wait` for the link to bring enough
    /// blocks (requests queue for key instead of failing while a link is momentarily empty).
    pub async fn reserve_within(
        &self,
        link: &str,
        owner: u8,
        n: usize,
        wait: std::time::Duration,
    ) -> Result<Reservation, StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // registered before trying, so blocks arriving meanwhile wake this waiter
            let notified = self.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let id = link.to_owned();
            match self.run(move |s| s.reserve(&id, owner, n)).await {
                Err(StoreError::Exhausted { .. }) if tokio::time::Instant::now() < deadline => {
                    let _ = tokio::time::timeout_at(deadline, notified).await;
                }
                other => return other,
            }
        }
    }

    /// The next block number expected on `link`.
    pub fn next_seq(&self, link: &str) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(NEXT_SEQ)?;
        Ok(table.get(link)?.map(|v| v.value()).unwrap_or(0))
    }

    /// Reads the peer's blocks `seqs` of `link` without consuming them (to verify a message
    /// before acting on it). `own` is this end's owner index: referenced blocks must be
    /// the peer's.
    pub fn peek_peer_blocks(
        &self,
        link: &str,
        own: u8,
        seqs: &[u64],
    ) -> Result<Vec<Block>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BLOCKS)?;
        let pending = txn.open_table(PENDING)?;
        let peer = 1 - own;
        seqs.iter()
            .map(|&seq| {
                if let Some(value) = table.get((link, peer, seq))? {
                    return Ok(Zeroizing::new(value.value()));
                }
                // a pending block the peer references is one the peer has stored
                if let Some(value) = pending.get((link, seq))? {
                    let (owner, block) = value.value();
                    if owner == peer {
                        return Ok(Zeroizing::new(block));
                    }
                    return Err(StoreError::WrongOwner {
                        link: link.into(),
                        seq,
                    });
                }
                Err(if table.get((link, own, seq))?.is_some() {
                    StoreError::WrongOwner {
                        link: link.into(),
                        seq,
                    }
                } else {
                    StoreError::MissingBlock {
                        link: link.into(),
                        seq,
                    }
                })
            })
            .collect()
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

    /// Removes and returns the reserved blocks (the reservation still has to be dropped,
    /// after the transaction, to release its marks).
    pub fn take_reserved(
        &mut self,
        reservation: &Reservation,
    ) -> Result<Vec<(u64, Block)>, StoreError> {
        let link = reservation.link.as_str();
        let mut taken = Vec::with_capacity(reservation.seqs.len());
        {
            let mut table = self.txn.open_table(BLOCKS)?;
            for &seq in &reservation.seqs {
                let Some(value) = table.remove((link, reservation.owner, seq))? else {
                    return Err(StoreError::MissingBlock {
                        link: link.into(),
                        seq,
                    });
                };
                taken.push((seq, Zeroizing::new(value.value())));
            }
        }
        self.add_count(link, reservation.owner, -(taken.len() as i64))?;
        Ok(taken)
    }

    /// Removes one of the peer's blocks, usable or pending; whether it was there.
    fn remove_peer_block(&mut self, link: &str, peer: u8, seq: u64) -> Result<bool, StoreError> {
        if self
            .txn
            .open_table(BLOCKS)?
            .remove((link, peer, seq))?
            .is_some()
        {
            self.add_count(link, peer, -1)?;
            return Ok(true);
        }
        let mut pending = self.txn.open_table(PENDING)?;
        let owner = pending.get((link, seq))?.map(|v| v.value().0);
        if owner == Some(peer) {
            pending.remove((link, seq))?;
            drop(pending);
            self.add_count(link, PENDING_COUNT, -1)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Removes the peer's blocks `seqs` of `link` (they were referenced by the peer, which
    /// removed its copies). Pending blocks count: the peer only references blocks it stored.
    pub fn remove_peer_blocks(
        &mut self,
        link: &str,
        own: u8,
        seqs: &[u64],
    ) -> Result<(), StoreError> {
        for &seq in seqs {
            if !self.remove_peer_block(link, 1 - own, seq)? {
                let own_block = self
                    .txn
                    .open_table(BLOCKS)?
                    .get((link, own, seq))?
                    .is_some();
                return Err(if own_block {
                    StoreError::WrongOwner {
                        link: link.into(),
                        seq,
                    }
                } else {
                    StoreError::MissingBlock {
                        link: link.into(),
                        seq,
                    }
                });
            }
        }
        Ok(())
    }

    /// Removes whichever of the peer's blocks `seqs` of `link` are still here (the blocks of
    /// an authenticated relay this end refused: the peer removed its copies).
    pub fn discard_peer_blocks(
        &mut self,
        link: &str,
        own: u8,
        seqs: &[u64],
    ) -> Result<(), StoreError> {
        for &seq in seqs {
            self.remove_peer_block(link, 1 - own, seq)?;
        }
        Ok(())
    }

    /// The next block number of `link` within this transaction.
    pub fn link_next_seq(&self, link: &str) -> Result<u64, StoreError> {
        let table = self.txn.open_table(NEXT_SEQ)?;
        let value = table.get(link)?.map(|v| v.value()).unwrap_or(0);
        Ok(value)
    }

    fn check_sequence(&self, link: &str, first_seq: u64) -> Result<(), StoreError> {
        let expected = self.link_next_seq(link)?;
        if expected != first_seq {
            return Err(StoreError::OutOfSequence {
                link: link.into(),
                expected,
                got: first_seq,
            });
        }
        Ok(())
    }

    /// Stores blocks as usable (transmitter end, after the receiver confirmed them); the
    /// first `tx_owned` are the transmitter's, the others the receiver's.
    pub fn store_blocks(
        &mut self,
        link: &str,
        first_seq: u64,
        blocks: &[Block],
        tx_owned: usize,
    ) -> Result<(), StoreError> {
        self.check_sequence(link, first_seq)?;
        {
            let mut table = self.txn.open_table(BLOCKS)?;
            for (i, block) in blocks.iter().enumerate() {
                table.insert(
                    (link, frame_owner(i, tx_owned), first_seq + i as u64),
                    **block,
                )?;
            }
        }
        let tx = tx_owned.min(blocks.len());
        self.added |= !blocks.is_empty();
        self.add_count(link, TX, tx as i64)?;
        self.add_count(link, RX, (blocks.len() - tx) as i64)?;
        self.txn
            .open_table(NEXT_SEQ)?
            .insert(link, first_seq + blocks.len() as u64)?;
        Ok(())
    }

    /// Stores blocks as pending (receiver end, until the transmitter confirms them); the
    /// first `tx_owned` are the transmitter's, the others the receiver's.
    pub fn store_pending(
        &mut self,
        link: &str,
        first_seq: u64,
        blocks: &[Block],
        tx_owned: usize,
    ) -> Result<(), StoreError> {
        self.check_sequence(link, first_seq)?;
        {
            let mut table = self.txn.open_table(PENDING)?;
            for (i, block) in blocks.iter().enumerate() {
                table.insert(
                    (link, first_seq + i as u64),
                    (frame_owner(i, tx_owned), **block),
                )?;
            }
        }
        self.add_count(link, PENDING_COUNT, blocks.len() as i64)?;
        self.txn
            .open_table(NEXT_SEQ)?
            .insert(link, first_seq + blocks.len() as u64)?;
        Ok(())
    }

    /// Makes pending blocks numbered below `upto` usable.
    pub fn commit_pending(&mut self, link: &str, upto: u64) -> Result<(), StoreError> {
        let ready: Vec<(u64, u8, Block)> = {
            let pending = self.txn.open_table(PENDING)?;
            pending
                .range((link, 0)..(link, upto))?
                .map(|entry| {
                    entry.map(|(k, v)| {
                        let (owner, block) = v.value();
                        (k.value().1, owner, Zeroizing::new(block))
                    })
                })
                .collect::<Result<_, _>>()?
        };
        if ready.is_empty() {
            return Ok(());
        }
        let mut per_owner = [0i64; 2];
        {
            let mut pending = self.txn.open_table(PENDING)?;
            let mut blocks = self.txn.open_table(BLOCKS)?;
            for (seq, owner, block) in &ready {
                blocks.insert((link, *owner, *seq), **block)?;
                pending.remove((link, *seq))?;
                per_owner[usize::from(*owner).min(1)] += 1;
            }
        }
        self.added = true;
        self.add_count(link, PENDING_COUNT, -(ready.len() as i64))?;
        self.add_count(link, TX, per_owner[0])?;
        self.add_count(link, RX, per_owner[1])?;
        Ok(())
    }

    /// Resynchronises `link` with the peer that has generated up to `peer_next` (exclusive):
    /// drops what only this end has, confirms pending blocks both ends have, and returns the
    /// agreed next block number.
    pub fn resync(&mut self, link: &str, peer_next: u64) -> Result<u64, StoreError> {
        let own_next = self.link_next_seq(link)?;
        let agreed = own_next.min(peer_next);
        {
            let mut pending = self.txn.open_table(PENDING)?;
            pending.retain_in((link, agreed)..=(link, u64::MAX), |_, _| false)?;
            let mut blocks = self.txn.open_table(BLOCKS)?;
            for owner in [TX, RX] {
                blocks.retain_in((link, owner, agreed)..=(link, owner, u64::MAX), |_, _| {
                    false
                })?;
            }
        }
        self.recount(link)?;
        self.commit_pending(link, agreed)?;
        self.txn.open_table(NEXT_SEQ)?.insert(link, agreed)?;
        Ok(agreed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(n: usize, fill: u8) -> Vec<Block> {
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
    fn take(store: &KeyStore, link: &str, owner: u8, n: usize) -> Result<Vec<u64>, StoreError> {
        let reservation = store.reserve(link, owner, n)?;
        let taken = store.write(|t| t.take_reserved(&reservation))?;
        Ok(taken.into_iter().map(|(seq, _)| seq).collect())
    }

    /// The counts kept in transactions equal a recount of the tables.
    fn assert_counts(store: &KeyStore, link: &str) {
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
    fn reserved_blocks_go_to_one_user_and_return_when_unused() {
        let (_dir, store) = store();
        store
            .write(|t| t.store_blocks("l", 0, &blocks(4, 0), 4))
            .unwrap();
        let first = store.reserve("l", TX, 3).unwrap();
        assert_eq!(store.available("l", TX).unwrap(), 1);
        assert!(store.reserve("l", TX, 2).is_err());
        let second = store.reserve("l", TX, 1).unwrap();
        drop(first); // never consumed: back in the pool
        assert_eq!(store.available("l", TX).unwrap(), 3);
        let taken = store.write(|t| t.take_reserved(&second)).unwrap();
        assert_eq!(taken[0].0, 3);
        drop(second);
        assert_eq!(store.available("l", TX).unwrap(), 3);
        // a reservation whose blocks were consumed otherwise cannot take them again
        let stale = store.reserve("l", TX, 1).unwrap();
        store.write(|t| t.take_reserved(&stale)).unwrap();
        assert!(store.write(|t| t.take_reserved(&stale)).is_err());
        assert_counts(&store, "l");
    }

    #[test]
    fn peer_blocks_are_referenced_by_number_only_once() {
        let (_dir, store) = store();
        store
            .write(|t| t.store_blocks("l", 0, &blocks(4, 7), 2))
            .unwrap();
        // this end is the transmitter: blocks 2 and 3 are the receiver's
        let peeked = store.peek_peer_blocks("l", TX, &[2, 3]).unwrap();
        assert_eq!(peeked[0][0], 9);
        assert!(matches!(
            store.peek_peer_blocks("l", TX, &[1]).unwrap_err(),
            StoreError::WrongOwner { .. }
        ));
        store
            .write(|t| t.remove_peer_blocks("l", TX, &[2, 3]))
            .unwrap();
        assert!(store
            .write(|t| t.remove_peer_blocks("l", TX, &[2]))
            .is_err());
        assert!(matches!(
            store
                .write(|t| t.remove_peer_blocks("l", TX, &[0]))
                .unwrap_err(),
            StoreError::WrongOwner { .. }
        ));
        assert_counts(&store, "l");
    }

    #[test]
    fn pending_blocks_wait_for_confirmation_and_resync_agrees() {
        let (_dir, store) = store();
        store
            .write(|t| t.store_pending("l", 0, &blocks(4, 0), 2))
            .unwrap();
        assert_eq!(store.available("l", TX).unwrap(), 0);
        // the transmitter may already reference its block that is still pending here
        assert_eq!(store.peek_peer_blocks("l", RX, &[0]).unwrap().len(), 1);
        assert!(store.peek_peer_blocks("l", RX, &[3]).is_err());
        store.write(|t| t.commit_pending("l", 2)).unwrap();
        assert_eq!(store.available("l", TX).unwrap(), 2);
        assert_eq!(store.available("l", RX).unwrap(), 0);
        store
            .write(|t| t.store_pending("l", 4, &blocks(2, 0), 0))
            .unwrap();
        // the transmitter only kept blocks up to 3: 2 and 3 are confirmed, 4 and 5 dropped
        let agreed = store.write(|t| t.resync("l", 4)).unwrap();
        assert_eq!(agreed, 4);
        assert_eq!(store.pending("l").unwrap(), 0);
        assert_eq!(store.next_seq("l").unwrap(), 4);
        assert_eq!(store.available("l", RX).unwrap(), 2);
        assert_counts(&store, "l");
        assert!(matches!(
            store
                .write(|t| t.store_pending("l", 7, &blocks(1, 0), 0))
                .unwrap_err(),
            StoreError::OutOfSequence { expected: 4, .. }
        ));
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
