//! The slot index: where the live records of each key slot are, so that compaction finds what
//! is left in a slot in O(its records), whatever the pool size.
//!
//! It is kept in memory with the slot ([`super::key_slots`]): extended after each commit by
//! the records the transaction sealed, dropped with the slot when it is destroyed, and built
//! from the tables at open. A slot's [`Members`] may name more than its live records (records
//! consumed since are not removed from it: compaction looks each one up and takes only those
//! whose header still names the slot), never fewer. Pool blocks are sealed in number order,
//! so a slot's blocks are a few runs of consecutive numbers: the index writes nothing per key
//! (an index table in redb doubled the B-tree writes of every block that arrived).

use std::collections::HashMap;

use redb::{ReadableTable, TableHandle, WriteTransaction};

use super::deliveries::{self, DELIVERIES, FETCHED};
use super::sealing::{self, Header};
use super::{block_group, pending_group, StoreError, BLOCKS, PENDING};

/// A record of the store, as its place (associated data) names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Record<'p> {
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

/// The record named by `place`, if it names one.
pub(super) fn record_at(place: &[u8]) -> Option<Record<'_>> {
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

/// A run of consecutive block numbers, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Run {
    pub first: u64,
    pub last: u64,
}

/// A delivery record's key: its table (`head` as in [`Record::Delivery`]), key ID and slave
/// SAE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DeliveryAt {
    pub head: usize,
    pub id: u128,
    pub slave: String,
}

/// Where one slot's records are.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Members {
    /// Usable blocks, by (link, owner).
    pub blocks: Vec<((String, u8), Run)>,
    /// Pending blocks, by link (their owner is in the table's value).
    pub pending: Vec<(String, Run)>,
    /// Keys waiting for their slave SAE or fetched.
    pub deliveries: Vec<DeliveryAt>,
}

/// Adds `seq` to the runs of the key `is` matches (made by `key` if it has none): extends its
/// last run when `seq` follows it.
fn add_seq<K>(
    runs: &mut Vec<(K, Run)>,
    is: impl Fn(&K) -> bool,
    key: impl FnOnce() -> K,
    seq: u64,
) {
    match runs.iter_mut().rev().find(|(k, _)| is(k)) {
        Some((_, run)) if run.last.checked_add(1) == Some(seq) => run.last = seq,
        Some((_, run)) if (run.first..=run.last).contains(&seq) => {}
        _ => runs.push((
            key(),
            Run {
                first: seq,
                last: seq,
            },
        )),
    }
}

/// Adds `more` to `runs`, a run that continues the last one of its key joining it.
fn extend_runs<K: PartialEq>(runs: &mut Vec<(K, Run)>, more: Vec<(K, Run)>) {
    for (key, run) in more {
        match runs.iter_mut().rev().find(|(k, _)| *k == key) {
            Some((_, last)) if last.last.checked_add(1) == Some(run.first) => last.last = run.last,
            _ => runs.push((key, run)),
        }
    }
}

impl Members {
    /// Adds the record at `place`; false when `place` names no record of the store.
    pub fn add(&mut self, place: &[u8]) -> bool {
        match record_at(place) {
            Some(record) => {
                self.add_record(record);
                true
            }
            None => false,
        }
    }

    fn add_record(&mut self, record: Record<'_>) {
        match record {
            Record::Block { link, owner, seq } => add_seq(
                &mut self.blocks,
                |(l, o)| l == link && *o == owner,
                || (link.to_owned(), owner),
                seq,
            ),
            Record::Pending { link, seq, .. } => {
                add_seq(&mut self.pending, |l| l == link, || link.to_owned(), seq)
            }
            Record::Delivery {
                head, id, slave, ..
            } => self.deliveries.push(DeliveryAt {
                head,
                id,
                slave: slave.to_owned(),
            }),
        }
    }

    /// Adds everything `other` names.
    pub fn extend(&mut self, other: Members) {
        extend_runs(&mut self.blocks, other.blocks);
        extend_runs(&mut self.pending, other.pending);
        self.deliveries.extend(other.deliveries);
    }

    /// Whether the record at `place` is among these.
    #[cfg(test)]
    pub fn covers(&self, place: &[u8]) -> bool {
        let within = |run: &Run, seq: u64| (run.first..=run.last).contains(&seq);
        match record_at(place) {
            Some(Record::Block { link, owner, seq }) => self
                .blocks
                .iter()
                .any(|((l, o), r)| l == link && *o == owner && within(r, seq)),
            Some(Record::Pending { link, seq, .. }) => self
                .pending
                .iter()
                .any(|(l, r)| l == link && within(r, seq)),
            Some(Record::Delivery {
                head, id, slave, ..
            }) => self
                .deliveries
                .iter()
                .any(|d| d.head == head && d.id == id && d.slave == slave),
            None => false,
        }
    }
}

/// What the tables hold under one slot, found at open.
#[derive(Debug, Default)]
pub(super) struct Found {
    /// Live records.
    pub records: u64,
    /// The group whose records they are.
    pub group: String,
    pub members: Members,
    /// One more than the highest record number (nonce counter) among them.
    pub top: u64,
}

impl Found {
    /// Whether some of the slot's records are gone (fewer live records than numbers used:
    /// records are numbered from 0 as they are sealed).
    pub fn partly_consumed(&self) -> bool {
        self.records < self.top
    }
}

/// Every slot the tables name, with its records (at open).
pub(super) fn scan(txn: &WriteTransaction) -> Result<HashMap<u32, Found>, StoreError> {
    let mut found: HashMap<u32, Found> = HashMap::new();
    let mut add = |record: &[u8], group: &dyn Fn() -> String, at: Record<'_>| {
        if let Some(header) = Header::of(record)? {
            let slot = found.entry(header.slot).or_insert_with(|| Found {
                group: group(),
                ..Found::default()
            });
            slot.records += 1;
            slot.top = slot.top.max(header.counter() + 1);
            slot.members.add_record(at);
        }
        Ok::<_, StoreError>(())
    };
    for entry in txn.open_table(BLOCKS)?.iter()? {
        let (k, v) = entry?;
        let (link, owner, seq) = k.value();
        add(
            v.value(),
            &|| block_group(link, owner),
            Record::Block { link, owner, seq },
        )?;
    }
    for entry in txn.open_table(PENDING)?.iter()? {
        let (k, v) = entry?;
        let (link, seq) = k.value();
        let (owner, record) = v.value();
        add(
            record,
            &|| pending_group(link),
            Record::Pending { link, owner, seq },
        )?;
    }
    for (def, head, group) in [
        (DELIVERIES, 0, "deliveries/open"),
        (FETCHED, 8, "fetched/open"),
    ] {
        for entry in txn.open_table(def)?.iter()? {
            let (k, v) = entry?;
            let (id, slave) = k.value();
            let rest = &v.value()[head..];
            add(
                deliveries::record_of(rest),
                &|| group.to_owned(),
                Record::Delivery {
                    head,
                    id,
                    slave,
                    master: deliveries::master_of(rest),
                },
            )?;
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::super::block_place;
    use super::*;

    #[test]
    fn places_name_their_records() {
        let at = block_place(BLOCKS.name(), "l/1", 1, 42);
        assert_eq!(
            record_at(&at),
            Some(Record::Block {
                link: "l/1",
                owner: 1,
                seq: 42
            })
        );
        let at = block_place(PENDING.name(), "l", 0, 7);
        assert_eq!(
            record_at(&at),
            Some(Record::Pending {
                link: "l",
                owner: 0,
                seq: 7
            })
        );
        let at = deliveries::place(FETCHED.name(), 9, "s", "m");
        assert_eq!(
            record_at(&at),
            Some(Record::Delivery {
                head: 8,
                id: 9,
                slave: "s",
                master: "m"
            })
        );
        assert!(record_at(&sealing::place("other", &[b"x"])).is_none());
        assert!(record_at(b"junk").is_none());
    }

    #[test]
    fn consecutive_blocks_make_one_run_per_link_and_owner() {
        let mut members = Members::default();
        for seq in (0..32).chain(40..42) {
            assert!(members.add(&block_place(BLOCKS.name(), "l", 0, seq)));
        }
        // another owner between: its own run; the first owner's run goes on
        assert!(members.add(&block_place(BLOCKS.name(), "l", 1, 42)));
        assert!(members.add(&block_place(BLOCKS.name(), "l", 0, 42)));
        assert_eq!(
            members.blocks,
            vec![
                (("l".into(), 0), Run { first: 0, last: 31 }),
                (
                    ("l".into(), 0),
                    Run {
                        first: 40,
                        last: 42
                    }
                ),
                (
                    ("l".into(), 1),
                    Run {
                        first: 42,
                        last: 42
                    }
                ),
            ]
        );
        let mut pending = Members::default();
        for seq in 5..9 {
            pending.add(&block_place(PENDING.name(), "l", (seq % 2) as u8, seq));
        }
        assert_eq!(
            pending.pending,
            vec![("l".into(), Run { first: 5, last: 8 })]
        );
        // a later transaction's runs continue the committed ones
        let mut later = Members::default();
        later.add(&block_place(PENDING.name(), "l", 0, 9));
        later.add(&deliveries::place(DELIVERIES.name(), 3, "s", "m"));
        pending.extend(later);
        assert_eq!(
            pending.pending,
            vec![("l".into(), Run { first: 5, last: 9 })]
        );
        assert!(pending.covers(&block_place(PENDING.name(), "l", 1, 9)));
        assert!(!pending.covers(&block_place(PENDING.name(), "l", 1, 10)));
        assert!(pending.covers(&deliveries::place(DELIVERIES.name(), 3, "s", "x")));
        assert!(!pending.covers(&deliveries::place(FETCHED.name(), 3, "s", "m")));
        assert!(!members.add(b"junk"));
    }
}
