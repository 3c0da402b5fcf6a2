//! The peer's blocks of a link, referenced by number: read to verify a message, removed
//! once used, so no block serves twice.

use redb::{ReadableTable, TableHandle};

use super::{
    block_place, to_block, Block, KeyStore, StoreError, Txn, BLOCKS, PENDING, PENDING_COUNT,
};

impl KeyStore {
    /// Reads the peer's blocks `seqs` of `link` without consuming them (to verify a message
    /// before acting on it). `own` is this end's owner index: referenced blocks must be
    /// the peer's.
    pub fn peek_peer_blocks(
        &self,
        link: &str,
        own: u8,
        seqs: &[u64],
    ) -> Result<Vec<Block>, StoreError> {
        // a record whose slot was destroyed since this read began was consumed or sealed
        // again meanwhile: a fresh read tells which
        let mut tries = 0;
        loop {
            match self.peek_once(link, own, seqs) {
                Err(StoreError::KeySlotGone { .. }) if tries < 3 => tries += 1,
                Err(StoreError::KeySlotGone { .. }) => {
                    return Err(StoreError::MissingBlock {
                        link: link.into(),
                        seq: seqs.first().copied().unwrap_or_default(),
                    })
                }
                other => return other,
            }
        }
    }

    fn peek_once(&self, link: &str, own: u8, seqs: &[u64]) -> Result<Vec<Block>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BLOCKS)?;
        let pending = txn.open_table(PENDING)?;
        let peer = 1 - own;
        let open = |record: &[u8], table: &str, seq: u64| {
            let bytes = self
                .slots
                .open(record, &block_place(table, link, peer, seq))?;
            to_block(&bytes, link, seq)
        };
        seqs.iter()
            .map(|&seq| {
                if let Some(value) = table.get((link, peer, seq))? {
                    return open(value.value(), BLOCKS.name(), seq);
                }
                // a pending block the peer references is one the peer has stored
                if let Some(value) = pending.get((link, seq))? {
                    let (owner, record) = value.value();
                    if owner == peer {
                        return open(record, PENDING.name(), seq);
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
    /// Removes one of the peer's blocks, usable or pending; whether it was there.
    fn remove_peer_block(&mut self, link: &str, peer: u8, seq: u64) -> Result<bool, StoreError> {
        let removed = self
            .txn
            .open_table(BLOCKS)?
            .remove((link, peer, seq))?
            .map(|v| v.value().to_vec());
        if let Some(record) = removed {
            self.seal.release(&record)?;
            self.add_count(link, peer, -1)?;
            return Ok(true);
        }
        let mut pending = self.txn.open_table(PENDING)?;
        let owner = pending.get((link, seq))?.map(|v| v.value().0);
        if owner == Some(peer) {
            if let Some(v) = pending.remove((link, seq))? {
                self.seal.release(v.value().1)?;
            }
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
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_counts, blocks, store};
    use super::super::TX;
    use super::*;

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
}
