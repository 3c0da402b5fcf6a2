//! Reservations: own blocks of a link set aside in memory for one use (a relay that first
//! makes sure its whole path can serve it), taken in a transaction, released when dropped.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use redb::TableHandle;

use super::{block_place, to_block, Block, KeyStore, StoreError, Txn, BLOCKS};

/// Block numbers set aside in memory, per (link, owner).
pub(super) type ReservedSets = Arc<Mutex<HashMap<(String, u8), HashSet<u64>>>>;

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

impl KeyStore {
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
}

impl Txn {
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
                let record = value.value();
                let bytes = self.seal.open(
                    record,
                    &block_place(BLOCKS.name(), link, reservation.owner, seq),
                )?;
                self.seal.release(record)?;
                taken.push((seq, to_block(&bytes, link, seq)?));
            }
        }
        self.add_count(link, reservation.owner, -(taken.len() as i64))?;
        Ok(taken)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_counts, blocks, store};
    use super::super::TX;

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
}
