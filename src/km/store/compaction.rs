//! Before a transaction commits: the records still live in every key slot it removed records
//! of are sealed again under another slot, so that each such slot is destroyed after the
//! commit and the records it removed — their ciphertext left in freed redb pages — open for
//! nobody any more. Slots are small ([`super::key_slots::Rotation`]) and the records of a
//! group are found by range (a link's blocks of one owner, a link's pending blocks) or, for
//! keys waiting for or fetched by slave SAEs, whose slots are one transaction's, by a scan
//! of their table; a slot re-sealed is never its group's current slot again.

use redb::{ReadableTable, TableHandle};
use zeroize::Zeroizing;

use super::deliveries::{self, DELIVERIES, FETCHED};
use super::sealing::Header;
use super::{block_group, block_place, pending_group, StoreError, Txn, BLOCKS, PENDING};

/// Where a group's records are.
enum Group<'g> {
    Blocks { link: &'g str, owner: u8 },
    Pending { link: &'g str },
    Deliveries,
    Fetched,
}

fn group_of(name: &str) -> Option<Group<'_>> {
    let (kind, rest) = name.split_once('/')?;
    match kind {
        "blocks" => {
            let (owner, link) = rest.split_once('/')?;
            Some(Group::Blocks {
                link,
                owner: owner.parse().ok()?,
            })
        }
        "pending" => Some(Group::Pending { link: rest }),
        "deliveries" => Some(Group::Deliveries),
        "fetched" => Some(Group::Fetched),
        _ => None,
    }
}

fn in_slot(record: &[u8], slot: u32) -> bool {
    matches!(Header::of(record), Ok(Some(h)) if h.slot == slot)
}

impl Txn {
    /// Re-seals what is left in the slots this transaction consumed from.
    pub(super) fn compact(&mut self) -> Result<(), StoreError> {
        if self.seal.consumed.is_empty() {
            return Ok(());
        }
        let consumed = std::mem::take(&mut self.seal.consumed);
        let slots = self
            .seal
            .slots
            .partly_consumed(&consumed, &self.seal.deltas);
        for (slot, name) in slots {
            let Some(group) = group_of(&name) else {
                tracing::error!(slot, group = %name, "key slot of an unknown group kept");
                continue;
            };
            match group {
                Group::Blocks { link, owner } => self.reseal_blocks(slot, link, owner)?,
                Group::Pending { link } => self.reseal_pending(slot, link)?,
                Group::Deliveries => self.reseal_deliveries(slot, 0)?,
                Group::Fetched => self.reseal_deliveries(slot, 8)?,
            }
        }
        // the slots re-sealed into take no records away: nothing more to compact
        self.seal.consumed.clear();
        Ok(())
    }

    fn reseal_blocks(&mut self, slot: u32, link: &str, owner: u8) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(BLOCKS)?;
        let mut found = Vec::new();
        for entry in table.range((link, owner, 0)..=(link, owner, u64::MAX))? {
            let (k, v) = entry?;
            if in_slot(v.value(), slot) {
                found.push((k.value().2, v.value().to_vec()));
            }
        }
        let group = block_group(link, owner);
        for (seq, old) in found {
            let place = block_place(BLOCKS.name(), link, owner, seq);
            let bytes = self.seal.open(&old, &place)?;
            let record = self.seal.seal(&group, &place, &bytes)?;
            self.seal.release(&old)?;
            table.insert((link, owner, seq), record.as_slice())?;
        }
        Ok(())
    }

    fn reseal_pending(&mut self, slot: u32, link: &str) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(PENDING)?;
        let mut found = Vec::new();
        for entry in table.range((link, 0)..=(link, u64::MAX))? {
            let (k, v) = entry?;
            let (owner, record) = v.value();
            if in_slot(record, slot) {
                found.push((k.value().1, owner, record.to_vec()));
            }
        }
        let group = pending_group(link);
        for (seq, owner, old) in found {
            let place = block_place(PENDING.name(), link, owner, seq);
            let bytes = self.seal.open(&old, &place)?;
            let record = self.seal.seal(&group, &place, &bytes)?;
            self.seal.release(&old)?;
            table.insert((link, seq), (owner, record.as_slice()))?;
        }
        Ok(())
    }

    /// Keys waiting (`head` 0) or fetched (`head` 8: the end of the refetch window first).
    fn reseal_deliveries(&mut self, slot: u32, head: usize) -> Result<(), StoreError> {
        let def = if head == 0 { DELIVERIES } else { FETCHED };
        let mut table = self.txn.open_table(def)?;
        let mut found = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            if in_slot(deliveries::record_of(&v.value()[head..]), slot) {
                let (id, slave) = k.value();
                found.push((id, slave.to_owned(), Zeroizing::new(v.value().to_vec())));
            }
        }
        let group = if head == 0 {
            deliveries::waiting_group(self.seal.serial)
        } else {
            deliveries::fetched_group(self.seal.serial)
        };
        for (id, slave, value) in found {
            let rest = &value[head..];
            let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
            let master = std::str::from_utf8(&rest[2..2 + len]).unwrap_or_default();
            let old = deliveries::record_of(rest);
            let place = deliveries::place(def.name(), id, &slave, master);
            let bytes = self.seal.open(old, &place)?;
            let record = self.seal.seal(&group, &place, &bytes)?;
            self.seal.release(old)?;
            let mut out = Zeroizing::new(value[..head].to_vec());
            out.extend_from_slice(&deliveries::value_of(master, &record));
            table.insert((id, slave.as_str()), out.as_slice())?;
        }
        Ok(())
    }
}
