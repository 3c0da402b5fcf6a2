//! Keys awaiting delivery: handed to a master SAE, held for each slave SAE until it fetches
//! them with `dec_keys`, or until they expire.
//!
//! Invariants, kept in one transaction each:
//! - a key held for a slave SAE is obtainable by it alone, and only with the master SAE it
//!   was issued to, until its deadline;
//! - once fetched, it stays obtainable by the same slave SAE with the same master SAE under
//!   its key ID for a refetch window only (an answer lost to a crash of the KM or a broken
//!   connection costs no key: the SAE asks again), then it is erased; it is never handed to
//!   anyone else;
//! - at and after its deadline a key is never handed out (refused as expired until the sweep
//!   erases it);
//! - the number of keys waiting per (slave, master) pair is counted in [`PAIR_COUNTS`] with
//!   every insertion and removal, and never exceeds the bound given at insertion.
//!
//! Deadlines are wall-clock milliseconds since the Unix epoch, so that they hold across a
//! restart. Keys stored before deadlines existed have none and wait until fetched.

use redb::{
    ReadableTable, ReadableTableMetadata, Table, TableDefinition, TableHandle, WriteTransaction,
};
use uuid::Uuid;
use zeroize::Zeroizing;

use super::{sealing, KeyStore, Sealing, StoreError, Txn};

/// Key id and slave SAE -> master SAE (u16 length, bytes) followed by the sealed key.
pub(super) const DELIVERIES: TableDefinition<(u128, &str), &[u8]> =
    TableDefinition::new("sealed_deliveries");
/// Key id and slave SAE -> deadline (ms since the epoch).
const DEADLINES: TableDefinition<(u128, &str), u64> = TableDefinition::new("delivery_deadlines");
/// Deadline, key id, slave SAE: the sweep's order.
const EXPIRY_QUEUE: TableDefinition<(u64, u128, &str), ()> =
    TableDefinition::new("delivery_expiry");
/// (slave SAE, master SAE) -> keys waiting.
const PAIR_COUNTS: TableDefinition<(&str, &str), u64> = TableDefinition::new("delivery_pairs");
/// Key id and slave SAE -> end of its refetch window (ms since the epoch, 8 bytes) followed by
/// a value as in [`DELIVERIES`] (the key sealed for this table): keys fetched once.
pub(super) const FETCHED: TableDefinition<(u128, &str), &[u8]> =
    TableDefinition::new("sealed_delivery_fetched");
/// End of the refetch window, key id, slave SAE: the sweep's order for fetched keys.
const FETCHED_QUEUE: TableDefinition<(u64, u128, &str), ()> =
    TableDefinition::new("delivery_fetched_expiry");

/// A key held for a slave SAE until it fetches it with `dec_keys`.
pub struct Delivery {
    pub key_id: Uuid,
    pub master_sae: String,
    pub key: Zeroizing<Vec<u8>>,
    /// Fetched before, handed out again within its refetch window.
    pub refetched: bool,
}

/// How long new keys wait and how many may wait per SAE pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryTerms {
    /// Deadline of the keys, milliseconds since the Unix epoch.
    pub expires_ms: u64,
    /// Most keys waiting for one slave SAE from one master SAE.
    pub max_per_pair: u64,
}

/// Creates the tables and recounts the pairs (a store written before the counts existed).
pub(super) fn open(txn: &WriteTransaction) -> Result<(), StoreError> {
    let deliveries = txn.open_table(DELIVERIES)?;
    txn.open_table(DEADLINES)?;
    txn.open_table(EXPIRY_QUEUE)?;
    txn.open_table(FETCHED)?;
    txn.open_table(FETCHED_QUEUE)?;
    let mut counts = std::collections::HashMap::<(String, String), u64>::new();
    for entry in deliveries.iter()? {
        let (key, value) = entry?;
        let master = master_of(value.value()).to_owned();
        *counts
            .entry((key.value().1.to_owned(), master))
            .or_default() += 1;
    }
    let mut pairs = txn.open_table(PAIR_COUNTS)?;
    pairs.retain(|_, _| false)?;
    for ((slave, master), n) in &counts {
        pairs.insert((slave.as_str(), master.as_str()), *n)?;
    }
    Ok(())
}

/// The master SAE of a [`DELIVERIES`] value.
pub(super) fn master_of(value: &[u8]) -> &str {
    let len = u16::from_be_bytes([value[0], value[1]]) as usize;
    std::str::from_utf8(&value[2..2 + len]).unwrap_or_default()
}

/// The key record of a [`DELIVERIES`] value (after the master SAE).
pub(super) fn record_of(value: &[u8]) -> &[u8] {
    let len = u16::from_be_bytes([value[0], value[1]]) as usize;
    &value[2 + len..]
}

/// The place (associated data) of key `id` for `slave` from `master` in `table`.
pub(super) fn place(table: &str, id: u128, slave: &str, master: &str) -> Vec<u8> {
    sealing::place(
        table,
        &[&id.to_be_bytes(), slave.as_bytes(), master.as_bytes()],
    )
}

/// A [`DELIVERIES`] value: the master SAE, then the key's record.
pub(super) fn value_of(master: &str, record: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut value = Zeroizing::new(Vec::with_capacity(2 + master.len() + record.len()));
    value.extend_from_slice(&(master.len() as u16).to_be_bytes());
    value.extend_from_slice(master.as_bytes());
    value.extend_from_slice(record);
    value
}

/// The slot group of the keys a transaction stores for slave SAEs (its own: the keys of one
/// request are fetched together).
pub(super) fn waiting_group(serial: u64) -> String {
    format!("deliveries/{serial}")
}

/// The slot group of the keys a transaction fetches (they end their window together).
pub(super) fn fetched_group(serial: u64) -> String {
    format!("fetched/{serial}")
}

/// Milliseconds since the Unix epoch now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl KeyStore {
    /// Total number of keys waiting for slave SAEs.
    pub fn deliveries_waiting(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(DELIVERIES)?.len()?)
    }

    /// Whether some key's deadline is at or before `now_ms` (a read: the sweep writes only
    /// when there is something to erase).
    pub fn deliveries_due(&self, now_ms: u64) -> Result<bool, StoreError> {
        let txn = self.db.begin_read()?;
        let due = |first: Option<u64>| first.is_some_and(|deadline| deadline <= now_ms);
        let queue = txn.open_table(EXPIRY_QUEUE)?;
        let fetched = txn.open_table(FETCHED_QUEUE)?;
        Ok(due(queue.first()?.map(|(key, _)| key.value().0))
            || due(fetched.first()?.map(|(key, _)| key.value().0)))
    }

    /// Keys waiting for `slave_sae` from `master_sae`.
    pub fn pair_waiting(&self, slave_sae: &str, master_sae: &str) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PAIR_COUNTS)?;
        Ok(table.get((slave_sae, master_sae))?.map_or(0, |v| v.value()))
    }
}

/// A removed entry: its stored value and its deadline, if it had one.
type Removed = (Zeroizing<Vec<u8>>, Option<u64>);

/// The delivery tables of one transaction, opened once.
struct Tables<'t> {
    seal: &'t mut Sealing,
    deliveries: Table<'t, (u128, &'static str), &'static [u8]>,
    deadlines: Table<'t, (u128, &'static str), u64>,
    queue: Table<'t, (u64, u128, &'static str), ()>,
    pairs: Table<'t, (&'static str, &'static str), u64>,
    fetched: Table<'t, (u128, &'static str), &'static [u8]>,
    fetched_queue: Table<'t, (u64, u128, &'static str), ()>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction, seal: &'t mut Sealing) -> Result<Self, StoreError> {
        Ok(Self {
            seal,
            deliveries: txn.open_table(DELIVERIES)?,
            deadlines: txn.open_table(DEADLINES)?,
            queue: txn.open_table(EXPIRY_QUEUE)?,
            pairs: txn.open_table(PAIR_COUNTS)?,
            fetched: txn.open_table(FETCHED)?,
            fetched_queue: txn.open_table(FETCHED_QUEUE)?,
        })
    }

    fn add_pair(&mut self, slave: &str, master: &str, delta: i64) -> Result<u64, StoreError> {
        let now = self.pairs.get((slave, master))?.map_or(0, |v| v.value());
        let new = now.saturating_add_signed(delta);
        if new == 0 {
            self.pairs.remove((slave, master))?;
        } else {
            self.pairs.insert((slave, master), new)?;
        }
        Ok(new)
    }

    fn insert(
        &mut self,
        slave_sae: &str,
        master_sae: &str,
        key_id: Uuid,
        key: &[u8],
        terms: DeliveryTerms,
    ) -> Result<(), StoreError> {
        let master = master_sae.as_bytes();
        if master.len() > usize::from(u16::MAX) {
            return Err(StoreError::Db("master SAE id too long".into()));
        }
        let id = key_id.as_u128();
        if self.deliveries.get((id, slave_sae))?.is_some() {
            return Err(StoreError::DuplicateKey(key_id));
        }
        let record = self.seal.seal(
            &waiting_group(self.seal.serial),
            &place(DELIVERIES.name(), id, slave_sae, master_sae),
            key,
        )?;
        let value = value_of(master_sae, &record);
        self.deliveries.insert((id, slave_sae), value.as_slice())?;
        self.deadlines.insert((id, slave_sae), terms.expires_ms)?;
        self.queue.insert((terms.expires_ms, id, slave_sae), ())?;
        let waiting = self.add_pair(slave_sae, master_sae, 1)?;
        if waiting > terms.max_per_pair {
            return Err(StoreError::Backlog {
                slave: slave_sae.to_owned(),
                master: master_sae.to_owned(),
                waiting: waiting - 1,
                max: terms.max_per_pair,
            });
        }
        Ok(())
    }

    /// Removes one key's entry from every table; returns its value and deadline.
    fn remove(&mut self, id: u128, slave: &str) -> Result<Option<Removed>, StoreError> {
        let Some(value) = self
            .deliveries
            .remove((id, slave))?
            .map(|v| Zeroizing::new(v.value().to_vec()))
        else {
            return Ok(None);
        };
        self.seal.release(record_of(&value))?;
        let deadline = self.deadlines.remove((id, slave))?.map(|d| d.value());
        if let Some(deadline) = deadline {
            self.queue.remove((deadline, id, slave))?;
        }
        let master = master_of(&value).to_owned();
        self.add_pair(slave, &master, -1)?;
        Ok(Some((value, deadline)))
    }
}

/// The first `max` entries of a (time, key id, slave SAE) queue due at or before `now_ms`.
fn up_to(
    queue: &Table<'_, (u64, u128, &'static str), ()>,
    now_ms: u64,
    max: usize,
) -> Result<Vec<(u64, u128, String)>, StoreError> {
    let mut due = Vec::new();
    for entry in queue
        .range(..(now_ms.saturating_add(1), 0u128, ""))?
        .take(max)
    {
        let (key, _) = entry?;
        let (at, id, slave) = key.value();
        due.push((at, id, slave.to_owned()));
    }
    Ok(due)
}

impl Txn {
    /// Records a key for `slave_sae`, to be fetched once with `dec_keys` before
    /// `terms.expires_ms`; refused when `terms.max_per_pair` keys already wait for the pair.
    pub fn insert_delivery(
        &mut self,
        slave_sae: &str,
        master_sae: &str,
        key_id: Uuid,
        key: &[u8],
        terms: DeliveryTerms,
    ) -> Result<(), StoreError> {
        Tables::open(&self.txn, &mut self.seal)?.insert(slave_sae, master_sae, key_id, key, terms)
    }

    /// Records every key of `entries` for every one of `slaves` ([`Self::insert_delivery`]
    /// for each, the tables opened once).
    pub fn insert_deliveries(
        &mut self,
        slaves: &[String],
        master_sae: &str,
        entries: &[(Uuid, Zeroizing<Vec<u8>>)],
        terms: DeliveryTerms,
    ) -> Result<(), StoreError> {
        let mut tables = Tables::open(&self.txn, &mut self.seal)?;
        for slave in slaves {
            for (id, key) in entries {
                tables.insert(slave, master_sae, *id, key, terms)?;
            }
        }
        Ok(())
    }

    /// Returns the keys `key_ids` of `slave_sae` from `master_sae`: all of them, or none if
    /// any is unknown, meant for another master, or expired at `now_ms`. A key fetched for
    /// the first time is kept until `refetch_until_ms` for the same request again (none when
    /// it is not after `now_ms`); a key fetched before is handed out again until then.
    pub fn take_deliveries(
        &mut self,
        slave_sae: &str,
        master_sae: &str,
        key_ids: &[Uuid],
        now_ms: u64,
        refetch_until_ms: u64,
    ) -> Result<Vec<Delivery>, StoreError> {
        let mut tables = Tables::open(&self.txn, &mut self.seal)?;
        let mut out = Vec::with_capacity(key_ids.len());
        for &key_id in key_ids {
            let id = key_id.as_u128();
            let (bytes, refetched) = match tables.remove(id, slave_sae)? {
                Some((bytes, deadline)) => {
                    if deadline.is_some_and(|d| d <= now_ms) {
                        return Err(StoreError::ExpiredKey(key_id));
                    }
                    (bytes, false)
                }
                None => match tables.fetched.get((id, slave_sae))?.map(|v| {
                    let value = v.value();
                    let until = u64::from_be_bytes(value[..8].try_into().expect("8 bytes"));
                    (until, Zeroizing::new(value[8..].to_vec()))
                }) {
                    Some((until, bytes)) if until > now_ms => (bytes, true),
                    _ => {
                        let held_for_other = match tables.deliveries.range((id, "")..)?.next() {
                            Some(entry) => entry?.0.value().0 == id,
                            None => false,
                        };
                        return Err(if held_for_other {
                            StoreError::NotForThisSae(key_id)
                        } else {
                            StoreError::UnknownKey(key_id)
                        });
                    }
                },
            };
            let master = master_of(&bytes);
            if master != master_sae {
                return Err(StoreError::NotForThisSae(key_id));
            }
            let table = if refetched { FETCHED } else { DELIVERIES };
            let key = tables.seal.open(
                record_of(&bytes),
                &place(table.name(), id, slave_sae, master),
            )?;
            if !refetched && refetch_until_ms > now_ms {
                // sealed again for its new place
                let record = tables.seal.seal(
                    &fetched_group(tables.seal.serial),
                    &place(FETCHED.name(), id, slave_sae, master),
                    &key,
                )?;
                let value = value_of(master, &record);
                let mut kept = Zeroizing::new(Vec::with_capacity(8 + value.len()));
                kept.extend_from_slice(&refetch_until_ms.to_be_bytes());
                kept.extend_from_slice(&value);
                tables.fetched.insert((id, slave_sae), kept.as_slice())?;
                tables
                    .fetched_queue
                    .insert((refetch_until_ms, id, slave_sae), ())?;
            }
            out.push(Delivery {
                key_id,
                master_sae: master.to_owned(),
                key,
                refetched,
            });
        }
        Ok(out)
    }

    /// Withdraws key `key_id` from `slave_sae` (a voided transfer): removed when it waits,
    /// [`Withdrawn::Fetched`] when the SAE already has it.
    pub fn withdraw_delivery(
        &mut self,
        slave_sae: &str,
        key_id: Uuid,
    ) -> Result<super::Withdrawn, StoreError> {
        let mut tables = Tables::open(&self.txn, &mut self.seal)?;
        let id = key_id.as_u128();
        if tables.remove(id, slave_sae)?.is_some() {
            return Ok(super::Withdrawn::Removed);
        }
        if tables.fetched.get((id, slave_sae))?.is_some() {
            return Ok(super::Withdrawn::Fetched);
        }
        Ok(super::Withdrawn::Absent)
    }

    /// Erases up to `max` keys whose deadline is at or before `now_ms` (their slave SAE did
    /// not fetch them in time); returns which.
    pub fn expire_deliveries(
        &mut self,
        now_ms: u64,
        max: usize,
    ) -> Result<Vec<ExpiredKey>, StoreError> {
        let mut tables = Tables::open(&self.txn, &mut self.seal)?;
        let due = up_to(&tables.queue, now_ms, max)?;
        // fetched keys at the end of their refetch window go too (not counted: delivered)
        let done = up_to(&tables.fetched_queue, now_ms, max)?;
        for (until, id, slave) in &done {
            tables.fetched_queue.remove((*until, *id, slave.as_str()))?;
            let removed = tables
                .fetched
                .remove((*id, slave.as_str()))?
                .map(|v| Zeroizing::new(v.value().to_vec()));
            if let Some(value) = removed {
                tables.seal.release(record_of(&value[8..]))?;
            }
        }
        let mut erased = Vec::new();
        for (deadline, id, slave) in &due {
            if let Some((value, _)) = tables.remove(*id, slave)? {
                erased.push(ExpiredKey {
                    key_id: Uuid::from_u128(*id),
                    slave_sae: slave.clone(),
                    master_sae: master_of(&value).to_owned(),
                    key_bits: sealing::content_len(record_of(&value))? as u32 * 8,
                });
            } else {
                // a deadline whose key is gone (not expected): forget it all the same
                tables.queue.remove((*deadline, *id, slave.as_str()))?;
                tables.deadlines.remove((*id, slave.as_str()))?;
            }
        }
        Ok(erased)
    }
}

/// A key erased because its slave SAE did not fetch it in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredKey {
    pub key_id: Uuid,
    pub slave_sae: String,
    pub master_sae: String,
    /// Its size.
    pub key_bits: u32,
}

#[cfg(test)]
mod tests {
    use super::super::tests::store;
    use super::*;

    const TERMS: DeliveryTerms = DeliveryTerms {
        expires_ms: u64::MAX,
        max_per_pair: 100,
    };

    #[test]
    fn deliveries_are_all_or_nothing_and_once() {
        let (_dir, store) = store();
        let (k1, k2) = (Uuid::new_v4(), Uuid::new_v4());
        store
            .write(|t| {
                t.insert_delivery("s2", "s1", k1, &[1; 32], TERMS)?;
                t.insert_delivery("s2", "s1", k2, &[2; 32], TERMS)
            })
            .unwrap();
        assert_eq!(store.pair_waiting("s2", "s1").unwrap(), 2);
        // wrong master: nothing taken
        assert!(store
            .write(|t| t.take_deliveries("s2", "s9", &[k1], 0, 0))
            .is_err());
        // one unknown id: nothing taken
        assert!(store
            .write(|t| t.take_deliveries("s2", "s1", &[k1, Uuid::new_v4()], 0, 0))
            .is_err());
        assert_eq!(store.pair_waiting("s2", "s1").unwrap(), 2);
        let got = store
            .write(|t| t.take_deliveries("s2", "s1", &[k1, k2], 0, 0))
            .unwrap();
        assert_eq!(got[1].key.as_slice(), &[2; 32]);
        assert!(store
            .write(|t| t.take_deliveries("s2", "s1", &[k1], 0, 0))
            .is_err());
        assert_eq!(store.deliveries_waiting().unwrap(), 0);
        assert_eq!(store.pair_waiting("s2", "s1").unwrap(), 0);
    }

    #[test]
    fn expired_keys_are_never_handed_out_and_are_erased() {
        let (_dir, store) = store();
        let (k1, k2) = (Uuid::new_v4(), Uuid::new_v4());
        let soon = DeliveryTerms {
            expires_ms: 1_000,
            max_per_pair: 100,
        };
        store
            .write(|t| {
                t.insert_delivery("s2", "s1", k1, &[1; 32], soon)?;
                t.insert_delivery("s2", "s1", k2, &[2; 32], TERMS)
            })
            .unwrap();
        // at its deadline, before any sweep: refused, nothing taken
        let refused = store.write(|t| t.take_deliveries("s2", "s1", &[k2, k1], 1_000, 0));
        assert!(matches!(refused, Err(StoreError::ExpiredKey(id)) if id == k1));
        assert_eq!(store.pair_waiting("s2", "s1").unwrap(), 2);
        // the sweep erases the expired key only
        assert_eq!(
            store.write(|t| t.expire_deliveries(999, 10)).unwrap().len(),
            0
        );
        let expired = store.write(|t| t.expire_deliveries(1_000, 10)).unwrap();
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].key_bits, 8 * 32, "{expired:?}");
        assert_eq!(store.pair_waiting("s2", "s1").unwrap(), 1);
        assert!(matches!(
            store.write(|t| t.take_deliveries("s2", "s1", &[k1], 0, 0)),
            Err(StoreError::UnknownKey(_))
        ));
        let got = store
            .write(|t| t.take_deliveries("s2", "s1", &[k2], 5_000, 0))
            .unwrap();
        assert_eq!(got[0].key.as_slice(), &[2; 32]);
        assert_eq!(
            store
                .write(|t| t.expire_deliveries(u64::MAX, 10))
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn the_backlog_of_a_pair_is_bounded() {
        let (_dir, store) = store();
        let two = DeliveryTerms {
            expires_ms: u64::MAX,
            max_per_pair: 2,
        };
        store
            .write(|t| {
                t.insert_delivery("s2", "s1", Uuid::new_v4(), &[1; 32], two)?;
                t.insert_delivery("s2", "s1", Uuid::new_v4(), &[1; 32], two)
            })
            .unwrap();
        let third = store.write(|t| t.insert_delivery("s2", "s1", Uuid::new_v4(), &[1; 32], two));
        assert!(matches!(third, Err(StoreError::Backlog { waiting: 2, .. })));
        assert_eq!(
            store.pair_waiting("s2", "s1").unwrap(),
            2,
            "refused: nothing stored"
        );
        // another pair is not affected
        store
            .write(|t| t.insert_delivery("s3", "s1", Uuid::new_v4(), &[1; 32], two))
            .unwrap();
        // the counts survive a reopen
        drop(store);
        let store = KeyStore::open(&_dir.path.join("km.redb")).unwrap();
        assert_eq!(store.pair_waiting("s2", "s1").unwrap(), 2);
        assert_eq!(store.pair_waiting("s3", "s1").unwrap(), 1);
    }

    #[test]
    fn a_fetched_key_can_be_fetched_again_by_its_slave_within_the_window_only() {
        let (_dir, store) = store();
        let (k1, k2) = (Uuid::new_v4(), Uuid::new_v4());
        store
            .write(|t| {
                t.insert_delivery("s2", "s1", k1, &[1; 32], TERMS)?;
                t.insert_delivery("s3", "s1", k2, &[2; 32], TERMS)
            })
            .unwrap();
        let first = store
            .write(|t| t.take_deliveries("s2", "s1", &[k1], 100, 1_100))
            .unwrap();
        assert!(!first[0].refetched);
        assert_eq!(store.pair_waiting("s2", "s1").unwrap(), 0);
        // the answer was lost: the same request gets the same key
        let again = store
            .write(|t| t.take_deliveries("s2", "s1", &[k1], 500, 1_500))
            .unwrap();
        assert!(again[0].refetched);
        assert_eq!(again[0].key.as_slice(), &[1; 32]);
        // never for another master or another slave
        assert!(matches!(
            store.write(|t| t.take_deliveries("s2", "s9", &[k1], 500, 0)),
            Err(StoreError::NotForThisSae(_))
        ));
        assert!(store
            .write(|t| t.take_deliveries("s3", "s1", &[k1], 500, 0))
            .is_err());
        // the window ends at the first fetch's end; the sweep erases it, and nothing expired
        assert!(store
            .write(|t| t.take_deliveries("s2", "s1", &[k1], 1_100, 0))
            .is_err());
        assert!(store.deliveries_due(1_100).unwrap());
        assert_eq!(
            store
                .write(|t| t.expire_deliveries(1_100, 10))
                .unwrap()
                .len(),
            0
        );
        assert!(!store.deliveries_due(1_100).unwrap());
        // no window: fetched once and gone
        store
            .write(|t| t.take_deliveries("s3", "s1", &[k2], 100, 0))
            .unwrap();
        assert!(store
            .write(|t| t.take_deliveries("s3", "s1", &[k2], 100, 0))
            .is_err());
    }
}
