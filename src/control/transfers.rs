//! Transfer key life-cycle records (Y.3818 9.2, procedure 1): what the IWN KMs of this
//! domain reported of each key transfer over Kxi-1' (key IDs, sizes, SAE pair, time, state),
//! kept until the keys expire at the slave SAEs' KM. Never key material.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

/// One key transfer as this domain's IWN KM reported it.
pub use crate::model::km_notifications::KeyTransferReport as TransferRecord;

/// Most records kept (the oldest go first).
const MOST: usize = 10_000;

/// The records by relay id, each with when it was last recorded, and their order.
type Records = (BTreeMap<Uuid, (TransferRecord, Instant)>, VecDeque<Uuid>);

/// The records, newest last, each dropped once its keys have expired.
pub struct TransferLog {
    keep: Duration,
    records: Mutex<Records>,
}

impl TransferLog {
    /// A log keeping records for `keep` (the keys' lifetime at the slave SAEs' KM).
    pub fn new(keep: Duration) -> Self {
        Self {
            keep,
            records: Mutex::new(Default::default()),
        }
    }

    /// Records (or updates) what a KM reported.
    pub fn record(&self, record: TransferRecord) {
        let mut guard = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let (map, order) = &mut *guard;
        if map
            .insert(record.relay_id, (record.clone(), Instant::now()))
            .is_none()
        {
            order.push_back(record.relay_id);
        }
        while order.len() > MOST {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    /// The records whose keys have not expired, oldest first.
    pub fn records(&self) -> Vec<TransferRecord> {
        let mut guard = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let (map, order) = &mut *guard;
        while let Some(first) = order.front() {
            match map.get(first) {
                Some((_, at)) if at.elapsed() < self.keep => break,
                _ => {
                    map.remove(first);
                    order.pop_front();
                }
            }
        }
        order
            .iter()
            .filter_map(|id| map.get(id).map(|(r, _)| r.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(state: &str) -> TransferRecord {
        TransferRecord {
            node: "iwn1-a".into(),
            relay_id: Uuid::from_u128(7),
            link: "iwn1-kxi1p".into(),
            role: "sender".into(),
            state: state.into(),
            master_sae: "sae-a1-1".into(),
            slave_saes: vec!["sae-b1-1".into()],
            key_size: 256,
            key_ids: vec![Uuid::from_u128(1)],
            time: "2026-12-06T10:00:00Z".into(),
        }
    }

    #[test]
    fn the_api_documents_the_record_as_transfer_record() {
        use utoipa::OpenApi;
        let doc = crate::control::rest::ApiDoc::openapi();
        let schemas = &doc.components.expect("components").schemas;
        assert!(
            schemas.contains_key("TransferRecord"),
            "{:?}",
            schemas.keys()
        );
    }

    #[test]
    fn a_later_state_replaces_the_earlier_and_expired_records_go() {
        let log = TransferLog::new(Duration::from_secs(60));
        log.record(report("failed"));
        log.record(report("voided"));
        let records = log.records();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].state, "voided");
        let gone = TransferLog::new(Duration::ZERO);
        gone.record(report("transferred"));
        assert!(gone.records().is_empty());
    }
}
