//! Accounting management (Y.3818 clause 7: "shares the usage of key supply services and
//! supports charging"): every KM records the keys it supplies, delivers, receives, relays
//! and transfers, per application (SAE) and per peer domain, and summarizes them per period.
//!
//! - A **record** ([`Record`]) is one event: its time, its kind, the SAE served, the SAE at
//!   the other end, the peer domain, the key size and the key IDs (never key material).
//!   Records are durable: `accounting.redb` in the KM's data directory, its own file beside
//!   the key store, written right after the store transaction that commits the delivery and
//!   before the answer leaves (so an SAE never holds a key that is not accounted, unless the
//!   record write itself fails, which is logged and counted in `write-failures`). A crash
//!   between the store commit and the record loses the record of keys nobody received: a
//!   master SAE's keys whose answer was never sent, or keys that arrived at a destination KM
//!   before its acknowledgement (the origin then fails the request too). A crash after the
//!   record and before the answer leaves accounts keys the application never got; at the
//!   peer domain they wait unfetched and expire, which the summaries show (`pending`, then
//!   nothing fetched).
//! - **Summaries** ([`summary`]) give per period (`[accounting] period_seconds`, 1 h by
//!   default) and per (kind, SAE, peer SAE, peer domain) the keys, their bits and a digest
//!   of their sorted key IDs. A key belongs to the period of its issue (the time in its
//!   UUIDv7 key ID); a period is *closed* at this KM once it is over and no supply that
//!   began in it is still in progress.
//! - Exposed as YANG state (`qkdni-km:accounting`, [`yang`]) and on the admin API
//!   (`GET /admin/v1/accounting`, [`rest`], JSON or CSV); the manager reads the state and
//!   reconciles it with the peer domain's (`crate::management::accounting`).

pub mod rest;
pub mod summary;
pub mod yang;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::km::agent::Agent;

const RECORDS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("records");

/// The `[accounting]` table of a KM's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountingConfig {
    /// Length of a summary period, seconds (3600: one hour).
    #[serde(default = "default_period")]
    pub period_seconds: u64,
    /// How many periods back the summaries (YANG state, manager) cover.
    #[serde(default = "default_retention")]
    pub retention_periods: u64,
    /// How long records are kept, days (the admin API serves them until then; a billing
    /// system exports them before); 0 keeps them forever. At least the summaries' window.
    #[serde(default = "default_keep_days")]
    pub keep_records_days: u64,
}

fn default_keep_days() -> u64 {
    90
}

fn default_period() -> u64 {
    3600
}

fn default_retention() -> u64 {
    24
}

impl Default for AccountingConfig {
    fn default() -> Self {
        Self {
            period_seconds: default_period(),
            retention_periods: default_retention(),
            keep_records_days: default_keep_days(),
        }
    }
}

/// What a record counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Keys given to a master SAE of this KM (ETSI 014 `enc_keys`), per slave SAE.
    Supplied,
    /// Keys given to a slave SAE of this KM (ETSI 014 `dec_keys`); a refetch is recorded
    /// again and counted once.
    Delivered,
    /// Keys that arrived at this KM (the destination) for a slave SAE of this KM.
    Received,
    /// Keys this KM relayed on toward their destination (KMA relay, Kxi).
    Relayed,
    /// Keys this interworking node's KM transferred to the other QKDN's KM (Kxi-1').
    TransferredOut,
    /// Keys this interworking node's KM took over from the other QKDN's KM.
    TransferredIn,
    /// Keys that arrived at this KM for a slave SAE of this KM and were erased unfetched
    /// when their time ran out (`received` and never `delivered`: nothing to charge).
    Expired,
}

impl Kind {
    /// The name in YANG, JSON and CSV.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Supplied => "supplied",
            Kind::Delivered => "delivered",
            Kind::Received => "received",
            Kind::Relayed => "relayed",
            Kind::TransferredOut => "transferred-out",
            Kind::TransferredIn => "transferred-in",
            Kind::Expired => "expired",
        }
    }

    /// The kind named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Kind::Supplied,
            Kind::Delivered,
            Kind::Received,
            Kind::Relayed,
            Kind::TransferredOut,
            Kind::TransferredIn,
            Kind::Expired,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }
}

/// One accounting record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// When it happened at this KM, Unix milliseconds.
    pub at_ms: u64,
    pub kind: Kind,
    /// The SAE served: the master SAE (`supplied`, `relayed`, transfers) or the slave SAE
    /// (`received`, `delivered`).
    pub sae: String,
    /// The SAE at the other end.
    pub peer_sae: String,
    /// The domain of whichever SAE is another QKDN's; this KM's domain when neither is.
    pub peer_domain: String,
    /// Size of each key, bits.
    pub key_bits: u32,
    /// The keys' IDs.
    pub key_ids: Vec<Uuid>,
    /// The link the keys left or came over (`relayed`, transfers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// Why accounting failed.
#[derive(Debug, thiserror::Error)]
pub enum AccountingError {
    #[error("accounting store: {0}")]
    Db(String),
}

macro_rules! db_error {
    ($($t:ty),*) => {$(
        impl From<$t> for AccountingError {
            fn from(e: $t) -> Self {
                AccountingError::Db(e.to_string())
            }
        }
    )*};
}
db_error!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    serde_json::Error
);

/// A KM's accounting: its durable records and the supplies in progress.
pub struct Accounting {
    writer: Writer,
    /// Settings.
    pub config: AccountingConfig,
    /// Supplies in progress: id -> when they began (Unix ms).
    in_progress: Arc<Mutex<BTreeMap<u64, u64>>>,
    next_supply: AtomicU64,
    /// Summaries of the periods that can no longer change, so that a summary (a NETCONF
    /// `get`, polled by the controller) reads only the records of the later periods.
    settled: Mutex<Settled>,
}

/// Summaries of settled periods: over (ended more than a key's life and the clock slack
/// ago, so every record of their keys is written and none is in flight) and closed.
#[derive(Default)]
struct Settled {
    /// The period length they were made with.
    period_ms: u64,
    /// Every period starting before this (and within the window) is in `periods`; a period
    /// without usage is absent.
    through_ms: u64,
    periods: BTreeMap<u64, summary::PeriodSummary>,
}

/// Writes records (a handle a blocking task can own).
#[derive(Clone)]
pub struct Writer {
    db: Arc<Database>,
    next_seq: Arc<AtomicU64>,
    /// Records that could not be written.
    pub write_failures: Arc<AtomicU64>,
}

impl Writer {
    /// Writes `records` in one transaction (blocking: call from a blocking task).
    pub fn write(&self, records: &[Record]) -> Result<(), AccountingError> {
        if records.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(RECORDS)?;
            for record in records {
                let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
                let value = serde_json::to_vec(record)?;
                table.insert((record.at_ms, seq), value.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Writes `records` in a blocking task and waits for it; a failure is logged and
    /// counted (the keys are delivered already).
    pub async fn write_async(&self, records: Vec<Record>) {
        let Some(first) = records.first() else {
            return;
        };
        let (kind, keys) = (first.kind, first.key_ids.len());
        let writer = self.clone();
        let written = tokio::task::spawn_blocking(move || writer.write(&records)).await;
        let error = match written {
            Ok(Ok(())) => return,
            Ok(Err(error)) => error.to_string(),
            Err(join) => join.to_string(),
        };
        self.write_failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!(kind = kind.name(), keys, %error, "accounting record not written");
    }
}

/// A supply in progress; its keys' period stays open until it is dropped.
pub struct SupplyGuard {
    id: u64,
    in_progress: Arc<Mutex<BTreeMap<u64, u64>>>,
}

impl Drop for SupplyGuard {
    fn drop(&mut self) {
        self.in_progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// Unix time now, milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Accounting {
    /// Opens (or creates) the records at `path`.
    pub fn open(path: &Path, config: AccountingConfig) -> Result<Self, AccountingError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        let count = {
            let table = txn.open_table(RECORDS)?;
            let count = table.len()?;
            let last = table.last()?.map(|(k, _)| k.value().1);
            last.map_or(count, |l| l.max(count).saturating_add(1))
        };
        txn.commit()?;
        Ok(Self {
            writer: Writer {
                db: Arc::new(db),
                next_seq: Arc::new(AtomicU64::new(count)),
                write_failures: Arc::new(AtomicU64::new(0)),
            },
            config,
            in_progress: Default::default(),
            next_supply: AtomicU64::new(0),
            settled: Default::default(),
        })
    }

    /// Period length, milliseconds.
    pub fn period_ms(&self) -> u64 {
        self.config.period_seconds.max(1).saturating_mul(1000)
    }

    /// Marks a supply as begun now: periods from now on stay open until the guard drops.
    pub fn begin_supply(&self) -> SupplyGuard {
        let id = self.next_supply.fetch_add(1, Ordering::Relaxed);
        self.in_progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, now_ms());
        SupplyGuard {
            id,
            in_progress: self.in_progress.clone(),
        }
    }

    /// When the oldest supply in progress began.
    pub fn oldest_in_progress(&self) -> Option<u64> {
        self.in_progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .min()
            .copied()
    }

    /// The writer of records.
    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    /// Records that could not be written since start.
    pub fn write_failures(&self) -> u64 {
        self.writer.write_failures.load(Ordering::Relaxed)
    }

    /// Writes `records` in one transaction (blocking: call from a blocking task).
    pub fn write(&self, records: &[Record]) -> Result<(), AccountingError> {
        self.writer.write(records)
    }

    /// Removes the records older than `keep_records_days` at `now` (never those the
    /// summaries' window still reads), at most `max` of them; returns how many (blocking).
    pub fn prune(&self, now: u64, max: usize) -> Result<usize, AccountingError> {
        let days = self.config.keep_records_days;
        if days == 0 {
            return Ok(0);
        }
        let window = self
            .period_ms()
            .saturating_mul(self.config.retention_periods.saturating_add(1))
            .saturating_add(CLOCK_SLACK_MS);
        let keep = days.saturating_mul(86_400_000).max(window);
        let before = now.saturating_sub(keep);
        let txn = self.writer.db.begin_write()?;
        let pruned = {
            let mut table = txn.open_table(RECORDS)?;
            let old: Vec<(u64, u64)> = table
                .range(..(before, 0))?
                .take(max)
                .map(|e| e.map(|(k, _)| k.value()))
                .collect::<Result<_, _>>()?;
            for key in &old {
                table.remove(key)?;
            }
            old.len()
        };
        txn.commit()?;
        Ok(pruned)
    }

    /// The records of `since..until` (Unix ms, by their time), oldest first (blocking).
    pub fn records(&self, since: u64, until: u64) -> Result<Vec<Record>, AccountingError> {
        let txn = self.writer.db.begin_read()?;
        let table = txn.open_table(RECORDS)?;
        let mut records = Vec::new();
        if until <= since {
            return Ok(records);
        }
        for entry in table.range((since, 0)..(until, 0))? {
            let (_, value) = entry?;
            records.push(serde_json::from_slice(value.value())?);
        }
        Ok(records)
    }

    /// The summaries of the periods held (`retention_periods` back from now), and the time
    /// before which periods are closed (blocking).
    pub fn summaries(
        &self,
        key_ttl_ms: u64,
    ) -> Result<(Vec<summary::PeriodSummary>, u64), AccountingError> {
        self.summaries_at(now_ms(), key_ttl_ms)
    }

    /// [`Self::summaries`] at `now` (Unix ms): settled periods come from the cache, the
    /// others are summarized from their records.
    fn summaries_at(
        &self,
        now: u64,
        key_ttl_ms: u64,
    ) -> Result<(Vec<summary::PeriodSummary>, u64), AccountingError> {
        let period = self.period_ms();
        let closed = summary::closed_before(now, self.oldest_in_progress(), period);
        let from = summary::period_of(now, period)
            .saturating_sub(period.saturating_mul(self.config.retention_periods));
        // periods starting before this are over since a key's life and the clock slack
        // (nothing of theirs is still written or in flight) and closed
        let settled_before = summary::period_of(
            now.saturating_sub(key_ttl_ms.saturating_add(CLOCK_SLACK_MS))
                .min(closed),
            period,
        )
        .max(from);
        let mut settled = self.settled.lock().unwrap_or_else(|p| p.into_inner());
        if settled.period_ms != period || settled.through_ms < from {
            *settled = Settled {
                period_ms: period,
                through_ms: from,
                periods: BTreeMap::new(),
            };
        }
        settled.periods = settled.periods.split_off(&from);
        let read_from = settled.through_ms;
        // records of keys issued from `read_from` on come after their issue, give or take
        // the clock difference between two domains
        let records = self.records(read_from.saturating_sub(CLOCK_SLACK_MS), u64::MAX)?;
        let window = summary::Window {
            period_ms: period,
            from_ms: read_from,
            now_ms: now,
            key_ttl_ms,
        };
        let fresh = summary::summarize(&records, window);
        let mut out: Vec<summary::PeriodSummary> = settled.periods.values().cloned().collect();
        for summary in &fresh {
            if summary.start_ms < settled_before {
                settled.periods.insert(summary.start_ms, summary.clone());
            }
        }
        settled.through_ms = settled.through_ms.max(settled_before);
        out.extend(fresh);
        Ok((out, closed))
    }
}

/// Prunes records older than `[accounting] keep_records_days` every so often.
pub async fn prune(agent: std::sync::Arc<Agent>) {
    const BATCH: usize = 10_000;
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(600));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        loop {
            let agent2 = agent.clone();
            let pruned =
                tokio::task::spawn_blocking(move || agent2.accounting.prune(now_ms(), BATCH)).await;
            match pruned {
                Ok(Ok(n)) if n > 0 => {
                    tracing::info!(records = n, "accounting records past their keeping pruned");
                    if n < BATCH {
                        break;
                    }
                }
                Ok(Ok(_)) => break,
                Ok(Err(error)) => {
                    tracing::warn!(%error, "accounting records not pruned");
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, "accounting pruning task");
                    break;
                }
            }
        }
    }
}

/// Records up to this much older than a period's start are read for it (clocks of two
/// domains differ).
const CLOCK_SLACK_MS: u64 = 5 * 60 * 1000;

/// The peer domain of a record between `sae` and `peer_sae` at `agent`.
fn peer_domain(agent: &Agent, sae: &str, peer_sae: &str) -> String {
    agent
        .sae_domain(peer_sae)
        .or_else(|| agent.sae_domain(sae))
        .unwrap_or_else(|| agent.config.domain.clone())
}

/// How long a key waits for its slave SAE, milliseconds.
pub fn key_ttl_ms(agent: &Agent) -> u64 {
    let limits = &agent.config.limits;
    limits
        .undelivered_key_ttl_seconds
        .saturating_add(limits.refetch_window_seconds)
        .saturating_mul(1000)
}

/// Records one event per SAE in `others`, of keys `ids` of `key_bits` bits, between `sae`
/// and each of `others` (or, with `reversed`, between each of `others` and `sae`).
#[allow(clippy::too_many_arguments)]
async fn note(
    agent: &Agent,
    kind: Kind,
    sae: &str,
    others: &[String],
    reversed: bool,
    key_bits: u32,
    ids: &[Uuid],
    link: Option<&str>,
) {
    if ids.is_empty() {
        return;
    }
    let at_ms = now_ms();
    let records: Vec<Record> = others
        .iter()
        .map(|other| {
            let (sae, peer_sae) = match reversed {
                false => (sae.to_owned(), other.clone()),
                true => (other.clone(), sae.to_owned()),
            };
            Record {
                at_ms,
                kind,
                peer_domain: peer_domain(agent, &sae, &peer_sae),
                sae,
                peer_sae,
                key_bits,
                key_ids: ids.to_vec(),
                link: link.map(str::to_owned),
            }
        })
        .collect();
    agent.accounting.writer.write_async(records).await
}

/// Keys `ids` supplied to `master` for every SAE in `slaves` (ETSI 014 `enc_keys`).
pub async fn supplied(agent: &Agent, master: &str, slaves: &[String], bits: u32, ids: &[Uuid]) {
    note(
        agent,
        Kind::Supplied,
        master,
        slaves,
        false,
        bits,
        ids,
        None,
    )
    .await
}

/// Keys `ids` of `master` arrived here for every SAE in `slaves`.
pub async fn received(agent: &Agent, master: &str, slaves: &[String], bits: u32, ids: &[Uuid]) {
    note(agent, Kind::Received, master, slaves, true, bits, ids, None).await
}

/// Keys `ids` of `master` given to `slave` (ETSI 014 `dec_keys`).
pub async fn delivered(agent: &Agent, slave: &str, master: &str, bits: u32, ids: &[Uuid]) {
    note(
        agent,
        Kind::Delivered,
        master,
        &[slave.to_owned()],
        true,
        bits,
        ids,
        None,
    )
    .await
}

/// Keys of `master` for `slave` erased unfetched when their time ran out (grouped by pair
/// and size from what the store's sweep erased).
pub async fn expired(agent: &Agent, keys: &[crate::km::store::ExpiredKey]) {
    let mut groups: BTreeMap<(&str, &str, u32), Vec<Uuid>> = BTreeMap::new();
    for key in keys {
        groups
            .entry((&key.slave_sae, &key.master_sae, key.key_bits))
            .or_default()
            .push(key.key_id);
    }
    for ((slave, master, bits), ids) in groups {
        note(
            agent,
            Kind::Expired,
            master,
            &[slave.to_owned()],
            true,
            bits,
            &ids,
            None,
        )
        .await
    }
}

/// Keys `ids` of `master` for `slaves` relayed on over `links`.
pub async fn relayed(
    agent: &Agent,
    master: &str,
    slaves: &[String],
    bits: u32,
    ids: &[Uuid],
    links: &[String],
) {
    let link = links.join(",");
    note(
        agent,
        Kind::Relayed,
        master,
        slaves,
        false,
        bits,
        ids,
        Some(&link),
    )
    .await
}

/// A transfer over an interworking node's transfer link, once transferred (recorded in
/// the background: the transfer's own record is durable in the key store).
pub fn transferred(agent: &Agent, transfer: &crate::km::events::KeyTransfer) {
    use crate::km::events::{TransferRole, TransferState};
    if transfer.state != TransferState::Transferred {
        return;
    }
    let kind = match transfer.role {
        TransferRole::Sender => Kind::TransferredOut,
        TransferRole::Receiver => Kind::TransferredIn,
    };
    if transfer.key_ids.is_empty() {
        return;
    }
    let at_ms = now_ms();
    let records: Vec<Record> = transfer
        .slave_saes
        .iter()
        .map(|slave| Record {
            at_ms,
            kind,
            peer_domain: peer_domain(agent, &transfer.master_sae, slave),
            sae: transfer.master_sae.clone(),
            peer_sae: slave.clone(),
            key_bits: transfer.key_size,
            key_ids: transfer.key_ids.clone(),
            link: Some(transfer.link.clone()),
        })
        .collect();
    let writer = agent.accounting.writer.clone();
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move { writer.write_async(records).await });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(at_ms: u64, kind: Kind) -> Record {
        Record {
            at_ms,
            kind,
            sae: "sae-a1".into(),
            peer_sae: "sae-b1".into(),
            peer_domain: "B".into(),
            key_bits: 256,
            key_ids: vec![Uuid::now_v7(), Uuid::now_v7()],
            link: None,
        }
    }

    #[test]
    fn records_are_durable_and_read_by_time() {
        let dir = std::env::temp_dir().join(format!("qkdni-acct-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("accounting.redb");
        let written = vec![
            record(1_000, Kind::Supplied),
            record(2_000, Kind::Delivered),
        ];
        {
            let accounting = Accounting::open(&path, AccountingConfig::default()).unwrap();
            accounting.write(&written).unwrap();
            accounting.write(&[record(2_000, Kind::Relayed)]).unwrap();
        }
        let accounting = Accounting::open(&path, AccountingConfig::default()).unwrap();
        // reopened: new records do not overwrite old ones of the same millisecond
        accounting.write(&[record(2_000, Kind::Received)]).unwrap();
        let all = accounting.records(0, u64::MAX).unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all[0], written[0]);
        assert_eq!(accounting.records(1_500, 2_001).unwrap().len(), 3);
        assert!(accounting.records(3_000, 2_000).unwrap().is_empty());
        drop(accounting);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn settled_periods_come_from_the_cache_and_agree_with_the_records() {
        let dir = std::env::temp_dir().join(format!("qkdni-acct-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = AccountingConfig {
            period_seconds: 60,
            retention_periods: 10,
            keep_records_days: 0,
        };
        let accounting = Accounting::open(&dir.join("a.redb"), config).unwrap();
        let (period, ttl) = (60_000u64, 30_000u64);
        let base = 1_800_000_000_000u64 - 1_800_000_000_000 % period;
        let key_at = |ms: u64| {
            let mut bytes = *Uuid::now_v7().as_bytes();
            bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
            Uuid::from_bytes(bytes)
        };
        let uncached = |now: u64| {
            let from = summary::period_of(now, period).saturating_sub(period * 10);
            let records = accounting.records(0, u64::MAX).unwrap();
            summary::summarize(
                &records,
                summary::Window {
                    period_ms: period,
                    from_ms: from,
                    now_ms: now,
                    key_ttl_ms: ttl,
                },
            )
        };
        // keys issued every 20 s over 20 minutes, received (some fetched 10 s later);
        // the summaries asked for as time goes, and once after a retention's worth
        for step in 0..60u64 {
            let issued = base + step * 20_000;
            let ids = vec![key_at(issued), key_at(issued + 1)];
            let mut received = record(issued, Kind::Received);
            received.key_ids = ids.clone();
            accounting.write(&[received]).unwrap();
            if step % 3 != 0 {
                let mut delivered = record(issued + 10_000, Kind::Delivered);
                delivered.key_ids = ids;
                accounting.write(&[delivered]).unwrap();
            }
            for now in [issued + 5_000, issued + 15_000] {
                let (cached, _) = accounting.summaries_at(now, ttl).unwrap();
                assert_eq!(cached, uncached(now), "at step {step}");
            }
        }
        let later = base + 60 * 20_000 + 11 * period;
        assert_eq!(
            accounting.summaries_at(later, ttl).unwrap().0,
            uncached(later)
        );
        // settled periods are held: 20 minutes of them
        assert!(accounting.settled.lock().unwrap().through_ms > base + 15 * period);
        drop(accounting);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn supplies_in_progress_keep_their_period_open() {
        let dir = std::env::temp_dir().join(format!("qkdni-acct-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let accounting =
            Accounting::open(&dir.join("a.redb"), AccountingConfig::default()).unwrap();
        assert_eq!(accounting.oldest_in_progress(), None);
        let first = accounting.begin_supply();
        let second = accounting.begin_supply();
        let oldest = accounting.oldest_in_progress().unwrap();
        drop(first);
        assert!(accounting.oldest_in_progress().unwrap() >= oldest);
        drop(second);
        assert_eq!(accounting.oldest_in_progress(), None);
        drop(accounting);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn records_past_their_keeping_are_pruned_and_no_others() {
        let dir = std::env::temp_dir().join(format!("qkdni-acct-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = AccountingConfig {
            period_seconds: 3600,
            retention_periods: 24,
            keep_records_days: 2,
        };
        let accounting = Accounting::open(&dir.join("a.redb"), config).unwrap();
        let day = 86_400_000u64;
        let now = 1_800_000_000_000u64;
        // one record a day for ten days, the last one now
        for d in 0..10 {
            accounting
                .write(&[record(now - (9 - d) * day, Kind::Supplied)])
                .unwrap();
        }
        assert_eq!(accounting.prune(now, 3).unwrap(), 3, "at most a batch");
        assert_eq!(accounting.prune(now, 100).unwrap(), 4);
        assert_eq!(accounting.prune(now, 100).unwrap(), 0);
        let left: Vec<u64> = accounting
            .records(0, u64::MAX)
            .unwrap()
            .iter()
            .map(|r| r.at_ms)
            .collect();
        // kept: those less than two days old (the summaries' day and slack within them)
        assert_eq!(left, vec![now - 2 * day, now - day, now]);
        // 0 keeps everything
        let forever = Accounting {
            config: AccountingConfig {
                keep_records_days: 0,
                ..accounting.config.clone()
            },
            ..accounting
        };
        assert_eq!(forever.prune(now + 100 * day, 100).unwrap(), 0);
        drop(forever);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn kinds_have_names() {
        for kind in [Kind::Supplied, Kind::TransferredIn, Kind::Expired] {
            assert_eq!(Kind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(
            serde_json::to_value(Kind::TransferredOut).unwrap(),
            "transferred-out"
        );
    }
}
