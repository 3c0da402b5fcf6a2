//! The key manager's durable store (redb): link key pools and keys awaiting delivery.
//!
//! Link keys arrive from the quantum layer in blocks of [`BLOCK_BYTES`] bytes, numbered by a
//! per-link sequence. Both ends of a link hold the same blocks under the same numbers. To
//! allocate without coordination, even-numbered blocks belong to the link's transmitter end
//! and odd-numbered ones to its receiver end: each end only *takes* its own blocks, and only
//! *looks up* the peer's blocks by number when the peer references them.
//!
//! Blocks received but not yet confirmed by the transmitter wait in a pending table and are
//! not usable (see [`crate::quantum::emulated`]). Every consumption removes the blocks in the
//! same transaction as its effect, so a key is never used twice, also across a crash.

use std::path::Path;

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use uuid::Uuid;
use zeroize::Zeroizing;

/// Size of one link key block in bytes (256 bits: also one Poly1305 one-time key).
pub const BLOCK_BYTES: usize = 32;

/// One link key block, wiped from memory when dropped.
pub type Block = Zeroizing<[u8; BLOCK_BYTES]>;

const BLOCKS: TableDefinition<(&str, u8, u64), [u8; BLOCK_BYTES]> = TableDefinition::new("blocks");
const PENDING: TableDefinition<(&str, u64), [u8; BLOCK_BYTES]> = TableDefinition::new("pending");
const NEXT_SEQ: TableDefinition<&str, u64> = TableDefinition::new("next_seq");
const DELIVERIES: TableDefinition<(u128, &str), &[u8]> = TableDefinition::new("deliveries");

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

/// Which end of a link owns a block.
pub fn owner_parity(seq: u64) -> u8 {
    (seq % 2) as u8
}

/// A key held for a slave SAE until it fetches it with `dec_keys`.
pub struct Delivery {
    pub key_id: Uuid,
    pub master_sae: String,
    pub key: Zeroizing<Vec<u8>>,
}

/// The durable store of one KM.
#[derive(Clone)]
pub struct KeyStore {
    db: std::sync::Arc<Database>,
}

/// One write transaction: everything in it happens, or nothing.
pub struct Txn {
    txn: WriteTransaction,
}

impl KeyStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(BLOCKS)?;
        txn.open_table(PENDING)?;
        txn.open_table(NEXT_SEQ)?;
        txn.open_table(DELIVERIES)?;
        txn.commit()?;
        Ok(Self {
            db: std::sync::Arc::new(db),
        })
    }

    /// Runs `f` in one durable write transaction; an error aborts it.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&mut Txn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut txn = Txn {
            txn: self.db.begin_write()?,
        };
        let value = f(&mut txn)?;
        txn.txn.commit()?;
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

    /// Number of usable blocks of `link` owned by the end with `parity`.
    pub fn available(&self, link: &str, parity: u8) -> Result<usize, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BLOCKS)?;
        Ok(table
            .range((link, parity, 0)..=(link, parity, u64::MAX))?
            .count())
    }

    /// Number of blocks received and not yet confirmed on `link`.
    pub fn pending(&self, link: &str) -> Result<usize, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PENDING)?;
        Ok(table.range((link, 0)..=(link, u64::MAX))?.count())
    }

    /// The next block number expected on `link`.
    pub fn next_seq(&self, link: &str) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(NEXT_SEQ)?;
        Ok(table.get(link)?.map(|v| v.value()).unwrap_or(0))
    }

    /// Reads the peer's blocks `seqs` of `link` without consuming them (to verify a message
    /// before acting on it). `own_parity` is this end's parity: referenced blocks must be
    /// the peer's.
    pub fn peek_peer_blocks(
        &self,
        link: &str,
        own_parity: u8,
        seqs: &[u64],
    ) -> Result<Vec<Block>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BLOCKS)?;
        let pending = txn.open_table(PENDING)?;
        seqs.iter()
            .map(|&seq| {
                if owner_parity(seq) == own_parity {
                    return Err(StoreError::WrongOwner {
                        link: link.into(),
                        seq,
                    });
                }
                // A pending block the peer references is one the peer has stored.
                let value = match table.get((link, owner_parity(seq), seq))? {
                    Some(value) => value,
                    None => pending
                        .get((link, seq))?
                        .ok_or_else(|| StoreError::MissingBlock {
                            link: link.into(),
                            seq,
                        })?,
                };
                Ok(Zeroizing::new(value.value()))
            })
            .collect()
    }

    /// Total number of keys waiting for slave SAEs.
    pub fn deliveries_waiting(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(DELIVERIES)?.len()?)
    }
}

impl Txn {
    /// Removes and returns `n` blocks of `link` owned by the end with `parity`.
    pub fn take_own_blocks(
        &mut self,
        link: &str,
        parity: u8,
        n: usize,
    ) -> Result<Vec<(u64, Block)>, StoreError> {
        let mut table = self.txn.open_table(BLOCKS)?;
        let mut taken = Vec::with_capacity(n.min(4096));
        {
            let range = table.range((link, parity, 0)..=(link, parity, u64::MAX))?;
            for entry in range.take(n) {
                let (key, value) = entry?;
                taken.push((key.value().2, Zeroizing::new(value.value())));
            }
        }
        if taken.len() < n {
            return Err(StoreError::Exhausted {
                link: link.into(),
                wanted: n,
                available: taken.len(),
            });
        }
        for (seq, _) in &taken {
            table.remove((link, parity, *seq))?;
        }
        Ok(taken)
    }

    /// Removes the peer's blocks `seqs` of `link` (they were referenced by the peer, which
    /// removed its copies). Pending blocks count: the peer only references blocks it stored.
    pub fn remove_peer_blocks(
        &mut self,
        link: &str,
        own_parity: u8,
        seqs: &[u64],
    ) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(BLOCKS)?;
        let mut pending = self.txn.open_table(PENDING)?;
        for &seq in seqs {
            if owner_parity(seq) == own_parity {
                return Err(StoreError::WrongOwner {
                    link: link.into(),
                    seq,
                });
            }
            if table.remove((link, owner_parity(seq), seq))?.is_none()
                && pending.remove((link, seq))?.is_none()
            {
                return Err(StoreError::MissingBlock {
                    link: link.into(),
                    seq,
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
        own_parity: u8,
        seqs: &[u64],
    ) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(BLOCKS)?;
        let mut pending = self.txn.open_table(PENDING)?;
        for &seq in seqs.iter().filter(|s| owner_parity(**s) != own_parity) {
            table.remove((link, owner_parity(seq), seq))?;
            pending.remove((link, seq))?;
        }
        Ok(())
    }

    /// The next block number of `link` within this transaction.
    pub fn link_next_seq(&self, link: &str) -> Result<u64, StoreError> {
        self.next_seq(link)
    }

    fn next_seq(&self, link: &str) -> Result<u64, StoreError> {
        let table = self.txn.open_table(NEXT_SEQ)?;
        let value = table.get(link)?.map(|v| v.value()).unwrap_or(0);
        Ok(value)
    }

    fn check_sequence(&self, link: &str, first_seq: u64) -> Result<(), StoreError> {
        let expected = self.next_seq(link)?;
        if expected != first_seq {
            return Err(StoreError::OutOfSequence {
                link: link.into(),
                expected,
                got: first_seq,
            });
        }
        Ok(())
    }

    /// Stores blocks as usable (transmitter end, after the receiver confirmed them).
    pub fn store_blocks(
        &mut self,
        link: &str,
        first_seq: u64,
        blocks: &[Block],
    ) -> Result<(), StoreError> {
        self.check_sequence(link, first_seq)?;
        let mut table = self.txn.open_table(BLOCKS)?;
        for (i, block) in blocks.iter().enumerate() {
            let seq = first_seq + i as u64;
            table.insert((link, owner_parity(seq), seq), **block)?;
        }
        self.txn
            .open_table(NEXT_SEQ)?
            .insert(link, first_seq + blocks.len() as u64)?;
        Ok(())
    }

    /// Stores blocks as pending (receiver end, until the transmitter confirms them).
    pub fn store_pending(
        &mut self,
        link: &str,
        first_seq: u64,
        blocks: &[Block],
    ) -> Result<(), StoreError> {
        self.check_sequence(link, first_seq)?;
        let mut table = self.txn.open_table(PENDING)?;
        for (i, block) in blocks.iter().enumerate() {
            table.insert((link, first_seq + i as u64), **block)?;
        }
        self.txn
            .open_table(NEXT_SEQ)?
            .insert(link, first_seq + blocks.len() as u64)?;
        Ok(())
    }

    /// Makes pending blocks numbered below `upto` usable.
    pub fn commit_pending(&mut self, link: &str, upto: u64) -> Result<(), StoreError> {
        let mut pending = self.txn.open_table(PENDING)?;
        let mut blocks = self.txn.open_table(BLOCKS)?;
        let ready: Vec<(u64, Block)> = pending
            .range((link, 0)..(link, upto))?
            .map(|entry| entry.map(|(k, v)| (k.value().1, Zeroizing::new(v.value()))))
            .collect::<Result<_, _>>()?;
        for (seq, block) in ready {
            blocks.insert((link, owner_parity(seq), seq), *block)?;
            pending.remove((link, seq))?;
        }
        Ok(())
    }

    /// Resynchronises `link` with the peer that has generated up to `peer_next` (exclusive):
    /// drops what only this end has, confirms pending blocks both ends have, and returns the
    /// agreed next block number.
    pub fn resync(&mut self, link: &str, peer_next: u64) -> Result<u64, StoreError> {
        let own_next = self.next_seq(link)?;
        let agreed = own_next.min(peer_next);
        {
            let mut pending = self.txn.open_table(PENDING)?;
            pending.retain_in((link, agreed)..=(link, u64::MAX), |_, _| false)?;
            let mut blocks = self.txn.open_table(BLOCKS)?;
            for parity in [0u8, 1] {
                blocks.retain_in((link, parity, agreed)..=(link, parity, u64::MAX), |_, _| {
                    false
                })?;
            }
        }
        self.commit_pending(link, agreed)?;
        self.txn.open_table(NEXT_SEQ)?.insert(link, agreed)?;
        Ok(agreed)
    }

    /// Records keys for `slave_sae`, to be fetched once with `dec_keys`.
    pub fn insert_delivery(
        &mut self,
        slave_sae: &str,
        master_sae: &str,
        key_id: Uuid,
        key: &[u8],
    ) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(DELIVERIES)?;
        let master = master_sae.as_bytes();
        if master.len() > usize::from(u16::MAX) {
            return Err(StoreError::Db("master SAE id too long".into()));
        }
        if table.get((key_id.as_u128(), slave_sae))?.is_some() {
            return Err(StoreError::DuplicateKey(key_id));
        }
        let mut value = Zeroizing::new(Vec::with_capacity(2 + master.len() + key.len()));
        value.extend_from_slice(&(master.len() as u16).to_be_bytes());
        value.extend_from_slice(master);
        value.extend_from_slice(key);
        table.insert((key_id.as_u128(), slave_sae), value.as_slice())?;
        Ok(())
    }

    /// Removes and returns the keys `key_ids` of `slave_sae` from `master_sae`: all of them,
    /// or none if any is unknown or was meant for another master.
    pub fn take_deliveries(
        &mut self,
        slave_sae: &str,
        master_sae: &str,
        key_ids: &[Uuid],
    ) -> Result<Vec<Delivery>, StoreError> {
        let mut table = self.txn.open_table(DELIVERIES)?;
        let mut out = Vec::with_capacity(key_ids.len());
        for &key_id in key_ids {
            let Some(value) = table.remove((key_id.as_u128(), slave_sae))? else {
                let id = key_id.as_u128();
                let held_for_other = match table.range((id, "")..)?.next() {
                    Some(entry) => entry?.0.value().0 == id,
                    None => false,
                };
                return Err(if held_for_other {
                    StoreError::NotForThisSae(key_id)
                } else {
                    StoreError::UnknownKey(key_id)
                });
            };
            let bytes = Zeroizing::new(value.value().to_vec());
            let len = u16::from_be_bytes([bytes[0], bytes[1]]) as usize;
            let master = std::str::from_utf8(&bytes[2..2 + len]).unwrap_or_default();
            if master != master_sae {
                return Err(StoreError::NotForThisSae(key_id));
            }
            out.push(Delivery {
                key_id,
                master_sae: master.to_owned(),
                key: Zeroizing::new(bytes[2 + len..].to_vec()),
            });
        }
        Ok(out)
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

    fn store() -> (tempdir::Dir, KeyStore) {
        let dir = tempdir::Dir::new();
        let store = KeyStore::open(&dir.path.join("km.redb")).unwrap();
        (dir, store)
    }

    mod tempdir {
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

    #[test]
    fn blocks_are_taken_once_by_their_owner() {
        let (_dir, store) = store();
        store
            .write(|t| t.store_blocks("l", 0, &blocks(6, 0)))
            .unwrap();
        assert_eq!(store.available("l", 0).unwrap(), 3);
        assert_eq!(store.available("l", 1).unwrap(), 3);
        let taken = store.write(|t| t.take_own_blocks("l", 0, 2)).unwrap();
        assert_eq!(taken.iter().map(|b| b.0).collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(store.available("l", 0).unwrap(), 1);
        let err = store.write(|t| t.take_own_blocks("l", 0, 2)).unwrap_err();
        assert!(matches!(err, StoreError::Exhausted { available: 1, .. }));
        // the failed transaction changed nothing
        assert_eq!(store.available("l", 0).unwrap(), 1);
    }

    #[test]
    fn peer_blocks_are_referenced_by_number_only_once() {
        let (_dir, store) = store();
        store
            .write(|t| t.store_blocks("l", 0, &blocks(4, 7)))
            .unwrap();
        let peeked = store.peek_peer_blocks("l", 0, &[1, 3]).unwrap();
        assert_eq!(peeked[0][0], 8);
        assert!(matches!(
            store.peek_peer_blocks("l", 0, &[2]).unwrap_err(),
            StoreError::WrongOwner { .. }
        ));
        store
            .write(|t| t.remove_peer_blocks("l", 0, &[1, 3]))
            .unwrap();
        assert!(store.write(|t| t.remove_peer_blocks("l", 0, &[1])).is_err());
    }

    #[test]
    fn pending_blocks_wait_for_confirmation_and_resync_agrees() {
        let (_dir, store) = store();
        store
            .write(|t| t.store_pending("l", 0, &blocks(4, 0)))
            .unwrap();
        assert_eq!(store.available("l", 0).unwrap(), 0);
        // the transmitter may already reference a block that is still pending here
        assert_eq!(store.peek_peer_blocks("l", 1, &[0]).unwrap().len(), 1);
        store.write(|t| t.commit_pending("l", 2)).unwrap();
        assert_eq!(
            store.available("l", 0).unwrap() + store.available("l", 1).unwrap(),
            2
        );
        store
            .write(|t| t.store_pending("l", 4, &blocks(2, 0)))
            .unwrap();
        // the transmitter only kept blocks up to 3: 3 is confirmed, 4 and 5 dropped
        let agreed = store.write(|t| t.resync("l", 4)).unwrap();
        assert_eq!(agreed, 4);
        assert_eq!(store.pending("l").unwrap(), 0);
        assert_eq!(store.next_seq("l").unwrap(), 4);
        assert_eq!(
            store.available("l", 0).unwrap() + store.available("l", 1).unwrap(),
            4
        );
        assert!(matches!(
            store
                .write(|t| t.store_pending("l", 7, &blocks(1, 0)))
                .unwrap_err(),
            StoreError::OutOfSequence { expected: 4, .. }
        ));
    }

    #[test]
    fn deliveries_are_all_or_nothing_and_once() {
        let (_dir, store) = store();
        let (k1, k2) = (Uuid::new_v4(), Uuid::new_v4());
        store
            .write(|t| {
                t.insert_delivery("s2", "s1", k1, &[1; 32])?;
                t.insert_delivery("s2", "s1", k2, &[2; 32])
            })
            .unwrap();
        // wrong master: nothing taken
        assert!(store
            .write(|t| t.take_deliveries("s2", "s9", &[k1]))
            .is_err());
        // one unknown id: nothing taken
        assert!(store
            .write(|t| t.take_deliveries("s2", "s1", &[k1, Uuid::new_v4()]))
            .is_err());
        let got = store
            .write(|t| t.take_deliveries("s2", "s1", &[k1, k2]))
            .unwrap();
        assert_eq!(got[1].key.as_slice(), &[2; 32]);
        assert!(store
            .write(|t| t.take_deliveries("s2", "s1", &[k1]))
            .is_err());
        assert_eq!(store.deliveries_waiting().unwrap(), 0);
    }
}
