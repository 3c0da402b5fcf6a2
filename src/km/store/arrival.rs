//! Blocks arriving from the quantum layer: numbered in sequence, pending at the receiver
//! until the transmitter confirms them, resynchronised after a fault. The store is the
//! quantum layer's [`KeySink`].

use redb::{ReadableTable, TableHandle};

use super::{
    block_group, block_place, pending_group, to_block, Block, KeyStore, StoreError, Txn, BLOCKS,
    NEXT_SEQ, PENDING, PENDING_COUNT, RX, TX,
};
use crate::quantum::sink::{KeySink, SinkError};

/// The owner of block `index` of a frame whose first `tx_owned` blocks are the
/// transmitter's.
pub fn frame_owner(index: usize, tx_owned: usize) -> u8 {
    if index < tx_owned {
        TX
    } else {
        RX
    }
}

impl KeyStore {
    /// The next block number expected on `link`.
    pub fn next_seq(&self, link: &str) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(NEXT_SEQ)?;
        Ok(table.get(link)?.map(|v| v.value()).unwrap_or(0))
    }
}

impl Txn {
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
            let groups = [block_group(link, TX), block_group(link, RX)];
            for (i, block) in blocks.iter().enumerate() {
                let (owner, seq) = (frame_owner(i, tx_owned), first_seq + i as u64);
                let record = self.seal.seal(
                    &groups[usize::from(owner).min(1)],
                    &block_place(BLOCKS.name(), link, owner, seq),
                    &block[..],
                )?;
                table.insert((link, owner, seq), record.as_slice())?;
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
            let group = pending_group(link);
            for (i, block) in blocks.iter().enumerate() {
                let (owner, seq) = (frame_owner(i, tx_owned), first_seq + i as u64);
                let record = self.seal.seal(
                    &group,
                    &block_place(PENDING.name(), link, owner, seq),
                    &block[..],
                )?;
                table.insert((link, seq), (owner, record.as_slice()))?;
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
            let mut ready = Vec::new();
            for entry in pending.range((link, 0)..(link, upto))? {
                let (k, v) = entry?;
                let seq = k.value().1;
                let (owner, record) = v.value();
                let bytes = self
                    .seal
                    .open(record, &block_place(PENDING.name(), link, owner, seq))?;
                self.seal.release(record)?;
                ready.push((seq, owner, to_block(&bytes, link, seq)?));
            }
            ready
        };
        if ready.is_empty() {
            return Ok(());
        }
        let mut per_owner = [0i64; 2];
        {
            let mut pending = self.txn.open_table(PENDING)?;
            let mut blocks = self.txn.open_table(BLOCKS)?;
            let groups = [block_group(link, TX), block_group(link, RX)];
            for (seq, owner, block) in &ready {
                // sealed again for its new place
                let record = self.seal.seal(
                    &groups[usize::from(*owner).min(1)],
                    &block_place(BLOCKS.name(), link, *owner, *seq),
                    &block[..],
                )?;
                blocks.insert((link, *owner, *seq), record.as_slice())?;
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
            for entry in pending.range((link, agreed)..=(link, u64::MAX))? {
                self.seal.release(entry?.1.value().1)?;
            }
            pending.retain_in((link, agreed)..=(link, u64::MAX), |_, _| false)?;
            let mut blocks = self.txn.open_table(BLOCKS)?;
            for owner in [TX, RX] {
                let range = (link, owner, agreed)..=(link, owner, u64::MAX);
                for entry in blocks.range(range.clone())? {
                    self.seal.release(entry?.1.value())?;
                }
                blocks.retain_in(range, |_, _| false)?;
            }
        }
        self.recount(link)?;
        self.commit_pending(link, agreed)?;
        self.txn.open_table(NEXT_SEQ)?.insert(link, agreed)?;
        Ok(agreed)
    }
}

impl From<StoreError> for SinkError {
    fn from(e: StoreError) -> Self {
        SinkError(Box::new(e))
    }
}

/// What a QKD module of the quantum layer does with the store.
impl KeySink for KeyStore {
    fn stored(&self, link: &str, owner: u8) -> Result<usize, SinkError> {
        Ok(KeyStore::stored(self, link, owner)?)
    }

    fn next_seq(&self, link: &str) -> Result<u64, SinkError> {
        Ok(KeyStore::next_seq(self, link)?)
    }

    fn store_blocks(
        &self,
        link: &str,
        first_seq: u64,
        blocks: &[Block],
        tx_owned: usize,
    ) -> Result<(), SinkError> {
        Ok(self.write(|txn| txn.store_blocks(link, first_seq, blocks, tx_owned))?)
    }

    fn resync(&self, link: &str, peer_next: u64) -> Result<u64, SinkError> {
        Ok(self.write(|txn| txn.resync(link, peer_next))?)
    }

    fn receive_frame(
        &self,
        link: &str,
        first_seq: u64,
        commit_upto: u64,
        blocks: &[Block],
        tx_owned: usize,
    ) -> Result<(), SinkError> {
        self.write(|txn| {
            // every frame, empty or not, continues the sequence: a stale or forged frame cannot
            // confirm blocks the transmitter never stored
            let expected = txn.link_next_seq(link)?;
            if first_seq != expected {
                return Err(StoreError::OutOfSequence {
                    link: link.into(),
                    expected,
                    got: first_seq,
                });
            }
            txn.commit_pending(link, commit_upto)?;
            if !blocks.is_empty() {
                txn.store_pending(link, first_seq, blocks, tx_owned)?;
            }
            Ok(())
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_counts, blocks, store};
    use super::super::{RX, TX};
    use super::*;

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
}
