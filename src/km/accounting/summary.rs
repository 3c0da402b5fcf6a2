//! Usage summaries per period, computed from accounting records: totals per (kind, SAE,
//! peer SAE, peer domain) and the digest of the period's key IDs.
//!
//! A key belongs to the period of its *issue*: the time in its key ID (qkdni issues UUIDv7
//! key IDs, whose first 48 bits are the Unix time in milliseconds), or, for a key ID of
//! another version (keys of another implementation), the time of the record. Both domains
//! thus put a cross-domain key in the same period whatever their clocks and however long the
//! slave SAE takes to fetch it, which is what lets two managers compare a period key for key.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Kind, Record};

/// The time of issue in a UUIDv7 key ID, Unix milliseconds.
pub fn key_time(id: &Uuid) -> Option<u64> {
    if id.get_version_num() != 7 {
        return None;
    }
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    Some(secs.saturating_mul(1000) + u64::from(nanos) / 1_000_000)
}

/// SHA-256 of the key IDs sorted (their 16 bytes each, in order), hex: two parties holding
/// the same set of key IDs compute the same digest, and it tells nothing of the keys.
pub fn digest<'a>(ids: impl IntoIterator<Item = &'a Uuid>) -> String {
    let sorted: BTreeSet<&Uuid> = ids.into_iter().collect();
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for id in sorted {
        context.update(id.as_bytes());
    }
    hex(context.finish().as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a usage line is about: (kind, SAE, peer SAE, peer domain).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UsageKey {
    pub kind: Kind,
    /// The SAE this KM served or relayed for: the master SAE for `supplied`, `relayed` and
    /// transfers, the slave SAE for `received` and `delivered`.
    pub sae: String,
    /// The SAE at the other end.
    pub peer_sae: String,
    /// The domain of whichever SAE is not of this KM's domain; this domain when both are.
    pub peer_domain: String,
}

/// One usage line of a period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(flatten)]
    pub key: UsageKey,
    /// Distinct keys.
    pub keys: u64,
    /// Their bits.
    pub bits: u64,
    /// [`digest`] of the keys' IDs.
    pub key_id_digest: String,
    /// `received` lines: keys their slave SAE has not fetched yet and that have not expired
    /// (keys in flight); 0 for the other kinds.
    pub pending: u64,
}

/// The usage of one period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodSummary {
    /// Start, Unix milliseconds (a multiple of the period).
    pub start_ms: u64,
    /// End (exclusive).
    pub end_ms: u64,
    pub usage: Vec<Usage>,
}

/// What the summaries are computed with.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Period length, milliseconds.
    pub period_ms: u64,
    /// Periods starting before this are left out.
    pub from_ms: u64,
    /// Now, Unix milliseconds.
    pub now_ms: u64,
    /// How long a key waits for its slave SAE (after which it is erased, not in flight).
    pub key_ttl_ms: u64,
}

/// The period `t` (Unix ms) falls in, by its start.
pub fn period_of(t: u64, period_ms: u64) -> u64 {
    t - t % period_ms.max(1)
}

/// The summaries of every period from `window.from_ms` with usage in `records`, oldest
/// first. Each key counts once per line (a slave SAE fetching a key again within the
/// refetch window does not count it twice).
pub fn summarize(records: &[Record], window: Window) -> Vec<PeriodSummary> {
    #[derive(Default)]
    struct Line {
        ids: HashSet<Uuid>,
        bits: u64,
    }
    let mut periods: BTreeMap<u64, BTreeMap<UsageKey, Line>> = BTreeMap::new();
    // keys each slave SAE fetched, per (slave, master)
    let mut fetched: HashMap<(&str, &str), HashSet<Uuid>> = HashMap::new();
    for record in records {
        if record.kind == Kind::Delivered {
            fetched
                .entry((&record.sae, &record.peer_sae))
                .or_default()
                .extend(record.key_ids.iter().copied());
        }
        let key = UsageKey {
            kind: record.kind,
            sae: record.sae.clone(),
            peer_sae: record.peer_sae.clone(),
            peer_domain: record.peer_domain.clone(),
        };
        for id in &record.key_ids {
            let start = period_of(key_time(id).unwrap_or(record.at_ms), window.period_ms);
            if start < window.from_ms {
                continue;
            }
            let line = periods
                .entry(start)
                .or_default()
                .entry(key.clone())
                .or_default();
            if line.ids.insert(*id) {
                line.bits += u64::from(record.key_bits);
            }
        }
    }
    let empty = HashSet::new();
    periods
        .into_iter()
        .map(|(start, lines)| PeriodSummary {
            start_ms: start,
            end_ms: start + window.period_ms,
            usage: lines
                .into_iter()
                .map(|(key, line)| {
                    let pending = match key.kind {
                        Kind::Received => {
                            let got = fetched
                                .get(&(key.sae.as_str(), key.peer_sae.as_str()))
                                .unwrap_or(&empty);
                            line.ids
                                .iter()
                                .filter(|id| !got.contains(id))
                                .filter(|id| {
                                    let issued = key_time(id).unwrap_or(start);
                                    issued.saturating_add(window.key_ttl_ms) > window.now_ms
                                })
                                .count() as u64
                        }
                        _ => 0,
                    };
                    Usage {
                        keys: line.ids.len() as u64,
                        bits: line.bits,
                        key_id_digest: digest(&line.ids),
                        pending,
                        key,
                    }
                })
                .collect(),
        })
        .collect()
}

/// Totals over `periods` per usage line (keys and bits).
pub fn totals(periods: &[PeriodSummary]) -> BTreeMap<UsageKey, (u64, u64)> {
    let mut totals: BTreeMap<UsageKey, (u64, u64)> = BTreeMap::new();
    for usage in periods.iter().flat_map(|p| &p.usage) {
        let total = totals.entry(usage.key.clone()).or_default();
        total.0 += usage.keys;
        total.1 += usage.bits;
    }
    totals
}

/// The time before which every period is closed: nothing issued before it can still be
/// recorded. `now_ms`, or the start of the oldest supply still in progress (its keys were
/// issued then and are recorded when it ends), floored to its period.
pub fn closed_before(now_ms: u64, oldest_in_progress: Option<u64>, period_ms: u64) -> u64 {
    period_of(
        oldest_in_progress.map_or(now_ms, |o| o.min(now_ms)),
        period_ms,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v7_at(ms: u64) -> Uuid {
        let ts =
            uuid::Timestamp::from_unix(uuid::NoContext, ms / 1000, (ms % 1000) as u32 * 1_000_000);
        Uuid::new_v7(ts)
    }

    fn record(kind: Kind, at_ms: u64, sae: &str, peer: &str, ids: &[Uuid]) -> Record {
        Record {
            at_ms,
            kind,
            sae: sae.into(),
            peer_sae: peer.into(),
            peer_domain: "B".into(),
            key_bits: 256,
            key_ids: ids.to_vec(),
            link: None,
        }
    }

    fn window(now_ms: u64) -> Window {
        Window {
            period_ms: 1000,
            from_ms: 0,
            now_ms,
            key_ttl_ms: 60_000,
        }
    }

    #[test]
    fn key_time_is_read_from_uuidv7_ids_only() {
        assert_eq!(key_time(&v7_at(1_234_567)), Some(1_234_567));
        assert_eq!(key_time(&Uuid::new_v4()), None);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let issued = key_time(&Uuid::now_v7()).unwrap();
        assert!(issued.abs_diff(now) < 60_000);
    }

    #[test]
    fn the_digest_is_of_the_sorted_set() {
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(digest(&[a, b, c]), digest(&[c, a, b]));
        assert_ne!(digest(&[a, b]), digest(&[a, b, c]));
        assert_eq!(digest(&[a, a, b]), digest(&[b, a]));
        assert_eq!(digest(&[]).len(), 64);
        // SHA-256 of nothing
        assert_eq!(
            digest(&[]),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn keys_count_in_the_period_of_their_issue() {
        let early = [v7_at(1_100), v7_at(1_900)];
        let late = v7_at(2_050);
        // supplied at 1.9 s and 2.05 s, fetched much later: still periods 1000 and 2000
        let records = vec![
            record(Kind::Supplied, 1_950, "a", "b", &early),
            record(Kind::Supplied, 2_060, "a", "b", &[late]),
            record(
                Kind::Delivered,
                9_000,
                "b",
                "a",
                &[early[0], early[1], late],
            ),
            // a refetch counts nothing more
            record(Kind::Delivered, 9_500, "b", "a", &[early[0]]),
        ];
        let periods = summarize(&records, window(10_000));
        assert_eq!(periods.len(), 2);
        assert_eq!((periods[0].start_ms, periods[0].end_ms), (1_000, 2_000));
        let supplied = &periods[0]
            .usage
            .iter()
            .find(|u| u.key.kind == Kind::Supplied)
            .unwrap();
        assert_eq!((supplied.keys, supplied.bits), (2, 512));
        assert_eq!(supplied.key_id_digest, digest(&early));
        let delivered = &periods[0]
            .usage
            .iter()
            .find(|u| u.key.kind == Kind::Delivered)
            .unwrap();
        assert_eq!(delivered.keys, 2);
        assert_eq!(delivered.key_id_digest, supplied.key_id_digest);
        assert_eq!(periods[1].usage.iter().map(|u| u.keys).sum::<u64>(), 2);
        let totals = totals(&periods);
        assert_eq!(totals.values().map(|t| t.0).sum::<u64>(), 6);
        // a key ID of another version counts at its record's time
        let other = Uuid::new_v4();
        let periods = summarize(
            &[record(Kind::Relayed, 5_500, "a", "b", &[other])],
            window(6_000),
        );
        assert_eq!(periods[0].start_ms, 5_000);
        // periods before `from` are left out
        let mut from = window(10_000);
        from.from_ms = 2_000;
        assert_eq!(summarize(&records, from).len(), 1);
    }

    #[test]
    fn received_keys_not_fetched_are_in_flight_until_they_expire() {
        let ids = [v7_at(1_100), v7_at(1_200), v7_at(1_300)];
        let mut records = vec![record(Kind::Received, 1_300, "b", "a", &ids)];
        let pending = |records: &[Record], now| {
            summarize(records, window(now))[0]
                .usage
                .iter()
                .find(|u| u.key.kind == Kind::Received)
                .unwrap()
                .pending
        };
        assert_eq!(pending(&records, 2_000), 3);
        records.push(record(Kind::Delivered, 3_000, "b", "a", &ids[..2]));
        assert_eq!(pending(&records, 3_000), 1);
        // fetched by another slave SAE does not count
        records.push(record(Kind::Delivered, 3_000, "c", "a", &ids[2..]));
        assert_eq!(pending(&records, 3_000), 1);
        // past its lifetime the last key is expired, not in flight
        assert_eq!(pending(&records, 1_300 + 60_000), 0);
        records.push(record(Kind::Delivered, 4_000, "b", "a", &ids[2..]));
        assert_eq!(pending(&records, 4_000), 0);
    }

    #[test]
    fn periods_close_when_no_supply_from_them_is_in_progress() {
        assert_eq!(closed_before(5_500, None, 1_000), 5_000);
        assert_eq!(closed_before(5_500, Some(3_200), 1_000), 3_000);
        assert_eq!(closed_before(5_500, Some(9_000), 1_000), 5_000);
    }
}
