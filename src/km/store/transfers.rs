//! Durable records of key transfers over an interworking node's transfer link (Kxi-1'),
//! so that both KMs settle every transfer the same way across a crash: the sender's
//! ("sent, awaiting the acknowledgement" until relayed, failed or voided) and the
//! receiver's ("received" until forwarded/delivered, failed or voided). A record holds ids
//! and states, never key material. The destination KM of such keys also records who may
//! withdraw them ([`Withdrawable`]).

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{KeyStore, StoreError, Txn};

const SENT: TableDefinition<u128, &[u8]> = TableDefinition::new("transfers_sent");
const RECEIVED: TableDefinition<u128, &[u8]> = TableDefinition::new("transfers_received");
const WITHDRAWABLE: TableDefinition<u128, &[u8]> = TableDefinition::new("transfer_withdrawable");

/// Settled records are kept this long (for the peer's Kxi-2' questions), then pruned.
pub const KEEP_SETTLED_MS: u64 = 24 * 3600 * 1000;
/// Above this many records, settled ones past [`KEEP_SETTLED_MS`] are pruned on insert.
const PRUNE_ABOVE: u64 = 1000;

/// Which side of a transfer this KM is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Sent,
    Received,
}

impl Side {
    fn table(self) -> TableDefinition<'static, u128, &'static [u8]> {
        match self {
            Side::Sent => SENT,
            Side::Received => RECEIVED,
        }
    }
}

/// Where a transfer stands at one KM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Sent and not acknowledged yet / received and not decided yet.
    InFlight,
    /// Acknowledged `relayed` / forwarded or delivered (final unless voided).
    Relayed,
    /// Nothing was released.
    Failed,
    /// Must be voided: the sender retries its void until the receiver answers; the receiver
    /// withdraws the keys it passed on.
    VoidPending,
    Voided,
    /// The void came too late: a slave SAE already fetched keys.
    FailedToVoid,
}

impl Phase {
    /// Whether nothing more will happen to the transfer but a void.
    pub fn settled(self) -> bool {
        matches!(self, Phase::Failed | Phase::Voided | Phase::FailedToVoid)
    }
}

/// One transfer as one of the IWN's KMs knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferRecord {
    pub relay_id: Uuid,
    pub link: String,
    /// The identity of the KM at the other end of the transfer link.
    pub peer: String,
    pub key_ids: Vec<Uuid>,
    pub key_size: u32,
    pub master_sae: String,
    pub slave_saes: Vec<String>,
    pub dest_km: String,
    pub phase: Phase,
    /// Unix time of the phase, in milliseconds.
    pub at_ms: u64,
    /// Receiver: the links of the next hops the keys were forwarded over (empty when
    /// delivered here).
    #[serde(default)]
    pub next_links: Vec<String>,
}

/// Who may withdraw keys delivered at a destination KM after a transfer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Withdrawable {
    /// The previous hops the keys came from (several when the relay was split).
    pub previous_hops: Vec<String>,
    pub key_ids: Vec<Uuid>,
    pub slave_saes: Vec<String>,
    pub at_ms: u64,
    /// Withdrawn before any of its keys arrived: keys of this relay arriving later are
    /// refused.
    #[serde(default)]
    pub voided: bool,
}

/// What became of one key withdrawn from a slave SAE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Withdrawn {
    /// Removed before it was fetched.
    Removed,
    /// Already fetched by the slave SAE.
    Fetched,
    /// Not held (never delivered, expired, or long fetched).
    Absent,
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Db(e.to_string()))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Db(e.to_string()))
}

impl Txn {
    /// Records (or replaces) a transfer record.
    pub fn put_transfer(&mut self, side: Side, record: &TransferRecord) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(side.table())?;
        let bytes = encode(record)?;
        table.insert(record.relay_id.as_u128(), bytes.as_slice())?;
        if table.len()? > PRUNE_ABOVE {
            let horizon = record.at_ms.saturating_sub(KEEP_SETTLED_MS);
            table.retain(|_, v| {
                decode::<TransferRecord>(v).is_ok_and(|r| !(r.phase.settled() && r.at_ms < horizon))
            })?;
        }
        Ok(())
    }

    /// Whether transfer `relay_id` is recorded.
    pub fn transfer_exists(&mut self, side: Side, relay_id: Uuid) -> Result<bool, StoreError> {
        let table = self.txn.open_table(side.table())?;
        let found = table.get(relay_id.as_u128())?.is_some();
        Ok(found)
    }

    /// Whether a transfer of `side` already carried one of `key_ids`.
    pub fn transfer_key_seen(&mut self, side: Side, key_ids: &[Uuid]) -> Result<bool, StoreError> {
        let table = self.txn.open_table(side.table())?;
        for entry in table.iter()? {
            let record: TransferRecord = decode(entry?.1.value())?;
            if record.key_ids.iter().any(|k| key_ids.contains(k)) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Moves transfer `relay_id` to `phase` at `at_ms`, if it exists and `allowed` lets it
    /// leave its current phase; returns the record as it is now.
    pub fn set_transfer_phase(
        &mut self,
        side: Side,
        relay_id: Uuid,
        phase: Phase,
        at_ms: u64,
        allowed: impl Fn(Phase) -> bool,
    ) -> Result<Option<TransferRecord>, StoreError> {
        let mut record = {
            let table = self.txn.open_table(side.table())?;
            let Some(value) = table.get(relay_id.as_u128())? else {
                return Ok(None);
            };
            decode::<TransferRecord>(value.value())?
        };
        if allowed(record.phase) {
            record.phase = phase;
            record.at_ms = at_ms;
            self.put_transfer(side, &record)?;
        }
        Ok(Some(record))
    }

    /// Records that keys of relay `relay_id` delivered here may be withdrawn through
    /// `previous_hop`.
    pub fn put_withdrawable(
        &mut self,
        relay_id: Uuid,
        previous_hop: &str,
        key_ids: &[Uuid],
        slave_saes: &[String],
        at_ms: u64,
    ) -> Result<(), StoreError> {
        let mut table = self.txn.open_table(WITHDRAWABLE)?;
        let mut entry = match table.get(relay_id.as_u128())? {
            Some(v) => decode::<Withdrawable>(v.value())?,
            None => Withdrawable {
                previous_hops: Vec::new(),
                key_ids: Vec::new(),
                slave_saes: slave_saes.to_vec(),
                at_ms,
                voided: false,
            },
        };
        if entry.voided {
            return Err(StoreError::Voided(relay_id));
        }
        if !entry.previous_hops.iter().any(|h| h == previous_hop) {
            entry.previous_hops.push(previous_hop.to_owned());
        }
        entry.key_ids.extend_from_slice(key_ids);
        let bytes = encode(&entry)?;
        table.insert(relay_id.as_u128(), bytes.as_slice())?;
        if table.len()? > PRUNE_ABOVE {
            let horizon = at_ms.saturating_sub(KEEP_SETTLED_MS);
            table.retain(|_, v| decode::<Withdrawable>(v).is_ok_and(|w| w.at_ms >= horizon))?;
        }
        Ok(())
    }

    /// Withdraws the keys of relay `relay_id` named in `key_ids` from their slave SAEs, when
    /// `caller` is one of the hops they came from; `None` when it may not. A relay none of
    /// whose keys arrived yet is marked voided (its keys are refused if they come later):
    /// every key is then [`Withdrawn::Absent`].
    pub fn withdraw(
        &mut self,
        relay_id: Uuid,
        caller: &str,
        key_ids: &[Uuid],
        now_ms: u64,
    ) -> Result<Option<Vec<(Uuid, Withdrawn)>>, StoreError> {
        let found = {
            let table = self.txn.open_table(WITHDRAWABLE)?;
            let found = table.get(relay_id.as_u128())?;
            match found {
                Some(v) => Some(decode::<Withdrawable>(v.value())?),
                None => None,
            }
        };
        let Some(entry) = found else {
            let tombstone = Withdrawable {
                previous_hops: Vec::new(),
                key_ids: Vec::new(),
                slave_saes: Vec::new(),
                at_ms: now_ms,
                voided: true,
            };
            let bytes = encode(&tombstone)?;
            let mut table = self.txn.open_table(WITHDRAWABLE)?;
            table.insert(relay_id.as_u128(), bytes.as_slice())?;
            return Ok(Some(
                key_ids.iter().map(|k| (*k, Withdrawn::Absent)).collect(),
            ));
        };
        if entry.voided {
            return Ok(Some(
                key_ids.iter().map(|k| (*k, Withdrawn::Absent)).collect(),
            ));
        }
        if !entry.previous_hops.iter().any(|h| h == caller) {
            return Ok(None);
        }
        let mut out = Vec::new();
        for key_id in key_ids.iter().filter(|k| entry.key_ids.contains(k)) {
            out.push((*key_id, self.withdraw_for(&entry.slave_saes, *key_id)?));
        }
        Ok(Some(out))
    }

    /// Withdraws key `key_id` from every one of `slaves`: fetched by any of them is fetched.
    pub fn withdraw_for(
        &mut self,
        slaves: &[String],
        key_id: Uuid,
    ) -> Result<Withdrawn, StoreError> {
        let mut outcome = Withdrawn::Absent;
        for slave in slaves {
            match self.withdraw_delivery(slave, key_id)? {
                Withdrawn::Fetched => outcome = Withdrawn::Fetched,
                Withdrawn::Removed if outcome == Withdrawn::Absent => outcome = Withdrawn::Removed,
                _ => {}
            }
        }
        Ok(outcome)
    }
}

impl KeyStore {
    /// Transfer `relay_id`'s record.
    pub fn transfer(
        &self,
        side: Side,
        relay_id: Uuid,
    ) -> Result<Option<TransferRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(side.table()) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        table
            .get(relay_id.as_u128())?
            .map(|v| decode(v.value()))
            .transpose()
    }

    /// Every transfer record of `side` that `wanted` selects.
    pub fn transfers(
        &self,
        side: Side,
        wanted: impl Fn(&TransferRecord) -> bool,
    ) -> Result<Vec<TransferRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(side.table()) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for entry in table.iter()? {
            let record: TransferRecord = decode(entry?.1.value())?;
            if wanted(&record) {
                out.push(record);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::store;
    use super::*;
    use crate::km::store::DeliveryTerms;
    use zeroize::Zeroizing;

    fn record(phase: Phase) -> TransferRecord {
        TransferRecord {
            relay_id: Uuid::new_v4(),
            link: "t1".into(),
            peer: "iwn1-b@B".into(),
            key_ids: vec![Uuid::new_v4(), Uuid::new_v4()],
            key_size: 256,
            master_sae: "sae-a".into(),
            slave_saes: vec!["sae-b".into()],
            dest_km: "b1".into(),
            phase,
            at_ms: 1_000,
            next_links: vec![],
        }
    }

    #[test]
    fn records_survive_reopening_and_move_only_where_allowed() {
        let (dir, store) = store();
        let r = record(Phase::InFlight);
        store.write(|t| t.put_transfer(Side::Sent, &r)).unwrap();
        let seen = |ids: &[Uuid]| {
            store
                .write(|t| t.transfer_key_seen(Side::Sent, ids))
                .unwrap()
        };
        assert!(seen(&[Uuid::new_v4(), r.key_ids[1]]));
        assert!(!seen(&[Uuid::new_v4()]));
        assert_eq!(store.transfer(Side::Received, r.relay_id).unwrap(), None);
        drop(store);
        // a crash: the store is opened again
        let store = KeyStore::open(&dir.path.join("km.redb")).unwrap();
        assert_eq!(
            store.transfer(Side::Sent, r.relay_id).unwrap(),
            Some(r.clone())
        );
        let in_flight = store
            .transfers(Side::Sent, |r| r.phase == Phase::InFlight)
            .unwrap();
        assert_eq!(in_flight.len(), 1);
        // a relayed acknowledgement is final: a later void request does not undo it here
        let moved = store
            .write(|t| {
                t.set_transfer_phase(Side::Sent, r.relay_id, Phase::Relayed, 2_000, |p| {
                    p == Phase::InFlight
                })
            })
            .unwrap()
            .unwrap();
        assert_eq!(moved.phase, Phase::Relayed);
        let kept = store
            .write(|t| {
                t.set_transfer_phase(Side::Sent, r.relay_id, Phase::VoidPending, 3_000, |p| {
                    p == Phase::InFlight
                })
            })
            .unwrap()
            .unwrap();
        assert_eq!((kept.phase, kept.at_ms), (Phase::Relayed, 2_000));
        assert!(store
            .write(|t| t.set_transfer_phase(Side::Sent, Uuid::new_v4(), Phase::Voided, 1, |_| true))
            .unwrap()
            .is_none());
    }

    #[test]
    fn settled_records_are_pruned_and_pending_ones_are_not() {
        let (_dir, store) = store();
        let pending = record(Phase::VoidPending);
        store
            .write(|t| t.put_transfer(Side::Received, &pending))
            .unwrap();
        store
            .write(|t| {
                for _ in 0..PRUNE_ABOVE {
                    t.put_transfer(Side::Received, &record(Phase::Voided))?;
                }
                Ok(())
            })
            .unwrap();
        let mut late = record(Phase::InFlight);
        late.at_ms = KEEP_SETTLED_MS + 10_000;
        store
            .write(|t| t.put_transfer(Side::Received, &late))
            .unwrap();
        let left = store.transfers(Side::Received, |_| true).unwrap();
        assert_eq!(left.len(), 2);
    }

    #[test]
    fn only_a_previous_hop_withdraws_and_fetched_keys_stay_fetched() {
        let (_dir, store) = store();
        let relay = Uuid::new_v4();
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let slaves = vec!["sae-b".to_owned()];
        let terms = DeliveryTerms {
            expires_ms: u64::MAX,
            max_per_pair: 100,
        };
        store
            .write(|t| {
                let entries = vec![
                    (a, Zeroizing::new(vec![1u8; 32])),
                    (b, Zeroizing::new(vec![2u8; 32])),
                ];
                t.insert_deliveries(&slaves, "sae-a", &entries, terms)?;
                t.put_withdrawable(relay, "b2", &[a, b], &slaves, 1)
            })
            .unwrap();
        // the slave SAE fetches b
        store
            .write(|t| t.take_deliveries("sae-b", "sae-a", &[b], 10, 1_000))
            .unwrap();
        assert_eq!(
            store.write(|t| t.withdraw(relay, "b9", &[a], 5)).unwrap(),
            None
        );
        let outcome = store
            .write(|t| t.withdraw(relay, "b2", &[a, b, c], 5))
            .unwrap()
            .unwrap();
        assert_eq!(
            outcome,
            vec![(a, Withdrawn::Removed), (b, Withdrawn::Fetched)]
        );
        // a is gone for good
        assert!(store
            .write(|t| t.take_deliveries("sae-b", "sae-a", &[a], 20, 1_000))
            .is_err());
        let again = store
            .write(|t| t.withdraw(relay, "b2", &[a], 5))
            .unwrap()
            .unwrap();
        assert_eq!(again, vec![(a, Withdrawn::Absent)]);
    }

    #[test]
    fn keys_withdrawn_before_they_arrive_are_refused_when_they_do() {
        let (_dir, store) = store();
        let (relay, a) = (Uuid::new_v4(), Uuid::new_v4());
        let outcome = store.write(|t| t.withdraw(relay, "b2", &[a], 5)).unwrap();
        assert_eq!(outcome, Some(vec![(a, Withdrawn::Absent)]));
        let late = store.write(|t| t.put_withdrawable(relay, "b2", &[a], &["s".into()], 6));
        assert!(matches!(late, Err(StoreError::Voided(r)) if r == relay));
    }
}
