//! At open: key records of a store written before sealing existed (tables of plain arrays)
//! or while sealing was switched off (plain records) are sealed, and the slot index table of
//! earlier versions (now kept in memory, [`super::slot_index`]) is dropped.
//!
//! Sealing a plain record at open protects it from then on, but the plain bytes it had stay
//! in freed redb pages until redb reuses them: a store that ever held plain keys should be
//! started afresh when that matters (see the README).

use redb::{ReadableTable, TableDefinition, TableHandle, WriteTransaction};
use zeroize::Zeroizing;

use super::deliveries::{self, DELIVERIES, FETCHED};
use super::{
    block_group, block_place, pending_group, Sealing, StoreError, BLOCKS, BLOCK_BYTES, PENDING,
};

const OLD_BLOCKS: TableDefinition<(&str, u8, u64), [u8; BLOCK_BYTES]> =
    TableDefinition::new("blocks");
const OLD_PENDING: TableDefinition<(&str, u64), (u8, [u8; BLOCK_BYTES])> =
    TableDefinition::new("pending_owned");
const OLD_DELIVERIES: TableDefinition<(u128, &str), &[u8]> = TableDefinition::new("deliveries");
const OLD_FETCHED: TableDefinition<(u128, &str), &[u8]> = TableDefinition::new("delivery_fetched");
/// The slot index of earlier versions: one entry per sealed record.
const OLD_SLOT_RECORDS: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("slot_records");

/// Moves the tables of a store written before sealing into the sealed ones, and seals the
/// plain records of a run with sealing off (when sealing is on now).
pub(super) fn tables(txn: &WriteTransaction, seal: &mut Sealing) -> Result<(), StoreError> {
    let names: Vec<String> = txn.list_tables()?.map(|t| t.name().to_owned()).collect();
    let has = |name: &str| names.iter().any(|n| n == name);
    if has(OLD_SLOT_RECORDS.name()) {
        txn.delete_table(OLD_SLOT_RECORDS)?;
    }
    let mut moved = 0usize;
    if has(OLD_BLOCKS.name()) {
        let old = txn.open_table(OLD_BLOCKS)?;
        let mut new = txn.open_table(BLOCKS)?;
        for entry in old.iter()? {
            let (k, v) = entry?;
            let (link, owner, seq) = k.value();
            let block = Zeroizing::new(v.value());
            let record = seal.seal(
                &block_group(link, owner),
                &block_place(BLOCKS.name(), link, owner, seq),
                &block[..],
            )?;
            new.insert((link, owner, seq), record.as_slice())?;
            moved += 1;
        }
        drop(old);
        txn.delete_table(OLD_BLOCKS)?;
    }
    if has(OLD_PENDING.name()) {
        let old = txn.open_table(OLD_PENDING)?;
        let mut new = txn.open_table(PENDING)?;
        for entry in old.iter()? {
            let (k, v) = entry?;
            let (link, seq) = k.value();
            let (owner, block) = v.value();
            let block = Zeroizing::new(block);
            let record = seal.seal(
                &pending_group(link),
                &block_place(PENDING.name(), link, owner, seq),
                &block[..],
            )?;
            new.insert((link, seq), (owner, record.as_slice()))?;
            moved += 1;
        }
        drop(old);
        txn.delete_table(OLD_PENDING)?;
    }
    for (old_def, new_def, head) in [(OLD_DELIVERIES, DELIVERIES, 0), (OLD_FETCHED, FETCHED, 8)] {
        if !has(old_def.name()) {
            continue;
        }
        let old = txn.open_table(old_def)?;
        let mut new = txn.open_table(new_def)?;
        for entry in old.iter()? {
            let (k, v) = entry?;
            let (id, slave) = k.value();
            let value = v.value();
            // old values: [until (8)] ‖ master (u16 length, bytes) ‖ the key itself
            let rest = &value[head..];
            let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
            let master = std::str::from_utf8(&rest[2..2 + len]).unwrap_or_default();
            let key = Zeroizing::new(rest[2 + len..].to_vec());
            let record = seal.seal(
                &if head == 0 {
                    deliveries::waiting_group(seal.serial)
                } else {
                    deliveries::fetched_group(seal.serial)
                },
                &deliveries::place(new_def.name(), id, slave, master),
                &key,
            )?;
            let mut out = Zeroizing::new(value[..head].to_vec());
            out.extend_from_slice(&deliveries::value_of(master, &record));
            new.insert((id, slave), out.as_slice())?;
            moved += 1;
        }
        drop(old);
        txn.delete_table(old_def)?;
    }
    if seal.slots.seals() {
        moved += seal_plain(txn, seal)?;
    }
    if moved > 0 {
        tracing::warn!(
            records = moved,
            "plain key records sealed at open; their plain bytes may remain in freed pages"
        );
    }
    Ok(())
}

/// Seals the plain records of the sealed tables; returns how many.
fn seal_plain(txn: &WriteTransaction, seal: &mut Sealing) -> Result<usize, StoreError> {
    let mut sealed = 0;
    let plain = |record: &[u8]| record.first() == Some(&super::sealing::PLAIN);
    {
        let mut table = txn.open_table(BLOCKS)?;
        let mut found = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            if plain(v.value()) {
                let (link, owner, seq) = k.value();
                found.push((
                    link.to_owned(),
                    owner,
                    seq,
                    Zeroizing::new(v.value()[1..].to_vec()),
                ));
            }
        }
        for (link, owner, seq, bytes) in &found {
            let record = seal.seal(
                &block_group(link, *owner),
                &block_place(BLOCKS.name(), link, *owner, *seq),
                bytes,
            )?;
            table.insert((link.as_str(), *owner, *seq), record.as_slice())?;
        }
        sealed += found.len();
    }
    {
        let mut table = txn.open_table(PENDING)?;
        let mut found = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            let (owner, record) = v.value();
            if plain(record) {
                let (link, seq) = k.value();
                found.push((
                    link.to_owned(),
                    seq,
                    owner,
                    Zeroizing::new(record[1..].to_vec()),
                ));
            }
        }
        for (link, seq, owner, bytes) in &found {
            let record = seal.seal(
                &pending_group(link),
                &block_place(PENDING.name(), link, *owner, *seq),
                bytes,
            )?;
            table.insert((link.as_str(), *seq), (*owner, record.as_slice()))?;
        }
        sealed += found.len();
    }
    for (def, head) in [(DELIVERIES, 0usize), (FETCHED, 8)] {
        let mut table = txn.open_table(def)?;
        let mut found = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            let value = v.value();
            if plain(deliveries::record_of(&value[head..])) {
                let (id, slave) = k.value();
                found.push((id, slave.to_owned(), Zeroizing::new(value.to_vec())));
            }
        }
        for (id, slave, value) in &found {
            let rest = &value[head..];
            let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
            let master = std::str::from_utf8(&rest[2..2 + len]).unwrap_or_default();
            let record = seal.seal(
                &if head == 0 {
                    deliveries::waiting_group(seal.serial)
                } else {
                    deliveries::fetched_group(seal.serial)
                },
                &deliveries::place(def.name(), *id, slave, master),
                &deliveries::record_of(rest)[1..],
            )?;
            let mut out = Zeroizing::new(value[..head].to_vec());
            out.extend_from_slice(&deliveries::value_of(master, &record));
            table.insert((*id, slave.as_str()), out.as_slice())?;
        }
        sealed += found.len();
    }
    Ok(sealed)
}
