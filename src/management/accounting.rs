//! Accounting management of the domain (Y.3818 clause 7) and its reconciliation with the
//! peer domain over Mxi.
//!
//! The KMLM side reads every KM's summaries (`qkdni-km:accounting` over NETCONF) into the
//! domain's usage per period; the REST API serves them (`GET /api/v1/accounting`, JSON or
//! CSV) and the reconciliation states (`GET /api/v1/accounting/reconciliation`).
//!
//! Reconciliation, per period and SAE pair: what domain A supplied to its master SAEs for
//! slave SAEs of B (*outbound*) must be what arrived in B for those slave SAEs from A
//! (*inbound*), key for key: same count and same SHA-256 of the sorted key IDs (the IDs
//! never leave the domain; no key material is involved). A period is **closed** in a
//! domain when every KM of the domain reports it closed (over, no supply that began in it
//! still in progress); a manager sends the summary of each closed period to the peer
//! (`POST /mxi/v1/usage-summaries`), which compares it with its own once the period is
//! closed there too, answers its verdict and its own summary, and the sender compares
//! the same way: both managers hold the state. While keys of a pair still wait for their
//! slave SAE (`pending`, until fetched or expired) the period is **in flight**: no verdict,
//! no alarm. Agreement makes it **reconciled** (`accounting-reconciled` event); any
//! difference is a **mismatch**: an `accounting-mismatch` event, a warning, and the
//! mismatch counter, whatever the period's earlier state (a forged or altered summary is
//! itself the incident).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::events::Refs;
use super::mxi::messages::{
    ReconciliationState, UsageDirection, UsageEntry, UsageReply, UsageSummary, UsageSummaryKind,
    MXI_VERSION,
};
use super::Manager;
use crate::km::accounting::rest::{answer, flatten, parse_query, rfc3339};
use crate::km::accounting::summary::{PeriodSummary, Usage};
use crate::km::accounting::Kind;
use crate::model::km_accounting::{self as model, KmAccounting};
use crate::netconf::client::ClientOptions;
use crate::netconf::pool::Pool;
use crate::netconf::server::now_rfc3339;
use crate::problem::Problem;

/// Event: a period reconciled with the peer domain.
pub const ACCOUNTING_RECONCILED: &str = "accounting-reconciled";
/// Event (alarm): the peer domain's usage differs from this domain's.
pub const ACCOUNTING_MISMATCH: &str = "accounting-mismatch";

/// The domain's usage as its KMs report it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DomainAccounting {
    /// Period length, seconds (0 when no KM answered).
    pub period_seconds: u64,
    /// Every period before this (Unix ms) is closed at every KM that answered; 0 when a
    /// KM did not answer (nothing is closed then).
    pub closed_before: u64,
    /// Usage per period, KMs merged.
    pub periods: Vec<PeriodSummary>,
    /// KMs that could not be read.
    pub unreachable: Vec<String>,
}

/// Merges the KMs' accountings into the domain's.
pub fn merge(kms: &[(String, Result<KmAccounting, String>)]) -> Result<DomainAccounting, String> {
    let mut domain = DomainAccounting {
        closed_before: u64::MAX,
        ..Default::default()
    };
    let mut periods: BTreeMap<u64, (u64, BTreeMap<_, Usage>)> = BTreeMap::new();
    for (node, read) in kms {
        let km = match read {
            Ok(km) => km,
            Err(_) => {
                domain.unreachable.push(node.clone());
                domain.closed_before = 0;
                continue;
            }
        };
        if domain.period_seconds != 0 && domain.period_seconds != km.period_seconds {
            return Err(format!(
                "KM {node} has periods of {} s, others of {} s",
                km.period_seconds, domain.period_seconds
            ));
        }
        domain.period_seconds = km.period_seconds;
        domain.closed_before = domain.closed_before.min(km.closed_before);
        for period in &km.periods {
            let (_, lines) = periods
                .entry(period.start_ms)
                .or_insert((period.end_ms, BTreeMap::new()));
            for usage in &period.usage {
                match lines.get_mut(&usage.key) {
                    None => {
                        lines.insert(usage.key.clone(), usage.clone());
                    }
                    Some(line) => {
                        // the same pair at two KMs (an SAE that moved): the digest of both
                        // digests, sorted (the peer does the same with its own)
                        line.keys += usage.keys;
                        line.bits += usage.bits;
                        line.pending += usage.pending;
                        let mut both = [line.key_id_digest.clone(), usage.key_id_digest.clone()];
                        both.sort();
                        line.key_id_digest = crate::km::accounting::summary::digest(&[
                            digest_id(&both[0]),
                            digest_id(&both[1]),
                        ]);
                    }
                }
            }
        }
    }
    if domain.closed_before == u64::MAX {
        domain.closed_before = 0;
    }
    domain.periods = periods
        .into_iter()
        .map(|(start, (end, lines))| PeriodSummary {
            start_ms: start,
            end_ms: end,
            usage: lines.into_values().collect(),
        })
        .collect();
    Ok(domain)
}

/// A digest folded into an id (for combining two digests).
fn digest_id(hex: &str) -> Uuid {
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .take(16)
        .collect();
    Uuid::from_slice(&bytes).unwrap_or_default()
}

/// This domain's usage entries toward and from `peer` in `period`.
pub fn entries(period: Option<&PeriodSummary>, peer: &str) -> Vec<UsageEntry> {
    let mut entries: Vec<UsageEntry> = period
        .into_iter()
        .flat_map(|p| &p.usage)
        .filter(|u| u.key.peer_domain == peer)
        .filter_map(|u| {
            let (direction, master, slave) = match u.key.kind {
                Kind::Supplied => (UsageDirection::Outbound, &u.key.sae, &u.key.peer_sae),
                Kind::Received => (UsageDirection::Inbound, &u.key.peer_sae, &u.key.sae),
                _ => return None,
            };
            Some(UsageEntry {
                direction,
                master_sae: master.clone(),
                slave_sae: slave.clone(),
                keys: u.keys,
                bits: u.bits,
                key_id_digest: u.key_id_digest.clone(),
                pending: u.pending,
            })
        })
        .collect();
    entries.sort_by(|a, b| {
        (a.direction, &a.master_sae, &a.slave_sae).cmp(&(b.direction, &b.master_sae, &b.slave_sae))
    });
    entries
}

/// The verdict of comparing `own` with `peer` (summaries of the same period).
pub fn reconcile(own: &[UsageEntry], peer: &[UsageEntry]) -> (ReconciliationState, Vec<String>) {
    type Pair<'a> = (&'a str, &'a str);
    fn index(entries: &[UsageEntry], direction: UsageDirection) -> BTreeMap<Pair<'_>, &UsageEntry> {
        entries
            .iter()
            .filter(|e| e.direction == direction)
            .map(|e| ((e.master_sae.as_str(), e.slave_sae.as_str()), e))
            .collect()
    }
    let mut in_flight = false;
    let mut mismatches = Vec::new();
    // keys that left one domain against keys that arrived in the other, both ways
    for (sent, arrived, way) in [
        (
            index(peer, UsageDirection::Outbound),
            index(own, UsageDirection::Inbound),
            "peer -> here",
        ),
        (
            index(own, UsageDirection::Outbound),
            index(peer, UsageDirection::Inbound),
            "here -> peer",
        ),
    ] {
        let pairs: std::collections::BTreeSet<Pair> =
            sent.keys().chain(arrived.keys()).copied().collect();
        for pair in pairs {
            let (s, a) = (sent.get(&pair), arrived.get(&pair));
            if a.is_some_and(|a| a.pending > 0) {
                in_flight = true;
                continue;
            }
            let count = |e: Option<&&UsageEntry>| e.map_or(0, |e| e.keys);
            let same = match (s, a) {
                (Some(s), Some(a)) => s.keys == a.keys && s.key_id_digest == a.key_id_digest,
                _ => false,
            };
            if !same {
                mismatches.push(format!(
                    "{} -> {} ({way}): {} key(s) sent, {} arrived{}",
                    pair.0,
                    pair.1,
                    count(s),
                    count(a),
                    if count(s) == count(a) {
                        ", key IDs differ"
                    } else {
                        ""
                    }
                ));
            }
        }
    }
    let state = if !mismatches.is_empty() {
        ReconciliationState::Mismatch
    } else if in_flight {
        ReconciliationState::InFlight
    } else {
        ReconciliationState::Reconciled
    };
    (state, mismatches)
}

/// The reconciliation of one period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeriodReconciliation {
    pub period_start_ms: u64,
    /// RFC 3339.
    pub period_start: String,
    pub period_seconds: u64,
    pub state: ReconciliationState,
    /// What differs (a mismatch).
    pub mismatches: Vec<String>,
    /// Keys this domain supplied toward the peer's SAEs in the period.
    pub outbound_keys: u64,
    /// Keys that arrived from the peer's SAEs in the period.
    pub inbound_keys: u64,
    /// When the state was last set (RFC 3339).
    pub updated: String,
}

/// The manager's accounting: the KMs' reader and the reconciliation states.
pub struct Accounting {
    agents: Vec<(String, SocketAddr)>,
    pool: Pool,
    states: Mutex<BTreeMap<u64, PeriodReconciliation>>,
    /// Mismatches found since start (alarms).
    pub mismatches: AtomicU64,
}

impl Accounting {
    /// The accounting of `agents` (node, NETCONF address), read with `options`.
    pub fn new(agents: Vec<(String, SocketAddr)>, options: ClientOptions) -> Self {
        Self {
            agents,
            pool: Pool::new(options),
            states: Mutex::default(),
            mismatches: AtomicU64::new(0),
        }
    }

    /// Reads every KM's accounting (concurrently) into the domain's.
    pub async fn collect(&self) -> Result<DomainAccounting, String> {
        let request = model::get_accounting();
        let reads = futures::future::join_all(self.agents.iter().map(|(_, addr)| async {
            let reply = self
                .pool
                .rpc(*addr, &request)
                .await
                .map_err(|e| e.to_string())?;
            model::parse(&reply)
        }))
        .await;
        let kms: Vec<_> = self
            .agents
            .iter()
            .map(|(node, _)| node.clone())
            .zip(reads)
            .collect();
        for (node, read) in &kms {
            if let Err(error) = read {
                tracing::debug!(%node, %error, "accounting: cannot read the agent");
            }
        }
        merge(&kms)
    }

    /// The reconciliation states, oldest period first.
    pub fn states(&self) -> Vec<PeriodReconciliation> {
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn is_final(&self, start: u64) -> bool {
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&start)
            .is_some_and(|s| {
                s.state == ReconciliationState::Reconciled
                    || s.state == ReconciliationState::Mismatch
            })
    }

    /// Records a verdict; events on a change to reconciled, on every mismatch.
    fn settle(
        &self,
        manager: &Manager,
        own: &UsageSummary,
        state: ReconciliationState,
        mismatches: Vec<String>,
        message: Uuid,
    ) {
        let sum = |direction| {
            own.entries
                .iter()
                .filter(|e| e.direction == direction)
                .map(|e| e.keys)
                .sum()
        };
        let entry = PeriodReconciliation {
            period_start_ms: own.period_start_ms,
            period_start: rfc3339(own.period_start_ms),
            period_seconds: own.period_seconds,
            state,
            mismatches: mismatches.clone(),
            outbound_keys: sum(UsageDirection::Outbound),
            inbound_keys: sum(UsageDirection::Inbound),
            updated: now_rfc3339(),
        };
        let previous = self
            .states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(own.period_start_ms, entry)
            .map(|e| e.state);
        let refs = Refs {
            relay_id: None,
            message: Some(message),
        };
        let period = rfc3339(own.period_start_ms);
        match state {
            ReconciliationState::Mismatch => {
                self.mismatches.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%period, ?mismatches, "accounting mismatch with the peer domain");
                manager.events.record(
                    ACCOUNTING_MISMATCH,
                    format!(
                        "usage of period {period} differs from {}'s: {}",
                        manager.config.peer.domain,
                        mismatches.join("; ")
                    ),
                    refs,
                );
            }
            ReconciliationState::Reconciled if previous != Some(state) => {
                manager.events.record(
                    ACCOUNTING_RECONCILED,
                    format!(
                        "usage of period {period} reconciled with {}: {} key(s) out, {} in",
                        manager.config.peer.domain,
                        sum(UsageDirection::Outbound),
                        sum(UsageDirection::Inbound)
                    ),
                    refs,
                );
            }
            _ => {}
        }
    }

    /// Sends the summaries of this domain's closed periods not yet settled and settles
    /// them with the peer's answers.
    async fn exchange(&self, manager: &Manager, domain: &DomainAccounting) {
        let peer = &manager.config.peer.domain;
        for period in &domain.periods {
            if period.end_ms > domain.closed_before || self.is_final(period.start_ms) {
                continue;
            }
            let own = summary_of(manager, domain, period.start_ms);
            let sent = manager.xlmo.mxi().exchange::<_, UsageReply>(&own).await;
            match sent {
                Ok(reply) => {
                    let Some(theirs) = reply
                        .summary
                        .filter(|_| reply.state != ReconciliationState::Open)
                    else {
                        continue;
                    };
                    let (state, mismatches) = reconcile(&own.entries, &theirs.entries);
                    self.settle(manager, &own, state, mismatches, own.id);
                }
                Err(error) => {
                    tracing::debug!(%peer, %error, "usage summary not delivered");
                    return;
                }
            }
        }
    }

    /// Collects and exchanges, forever (every quarter period, 0.5 s to 30 s).
    pub async fn run(manager: Arc<Manager>) {
        loop {
            let period = match manager.accounting.collect().await {
                Ok(domain) => {
                    manager.accounting.exchange(&manager, &domain).await;
                    domain.period_seconds
                }
                Err(error) => {
                    tracing::warn!(%error, "accounting: the KMs' summaries cannot be merged");
                    0
                }
            };
            let pause = Duration::from_millis(period.saturating_mul(250))
                .clamp(Duration::from_millis(500), Duration::from_secs(30));
            tokio::time::sleep(pause).await;
        }
    }
}

/// This domain's usage summary of the period starting at `start`.
pub fn summary_of(manager: &Manager, domain: &DomainAccounting, start: u64) -> UsageSummary {
    let period = domain.periods.iter().find(|p| p.start_ms == start);
    UsageSummary {
        version: MXI_VERSION,
        kind: UsageSummaryKind::UsageSummary,
        id: Uuid::new_v4(),
        time: now_rfc3339(),
        domain: manager.config.domain.clone(),
        period_start_ms: start,
        period_seconds: domain.period_seconds,
        entries: entries(period, &manager.config.peer.domain),
    }
}

/// A usage summary from the peer manager: compared with this domain's own once the
/// period is closed here; the answer carries the verdict and this domain's summary.
pub async fn peer_summary(manager: &Manager, theirs: UsageSummary) -> Result<UsageReply, Problem> {
    let bad = |detail: String| {
        tracing::warn!(%detail, "usage summary refused");
        Problem::new(StatusCode::BAD_REQUEST, "bad-usage-summary", detail)
    };
    if let Some(entry) = theirs.entries.iter().find(|e| {
        e.key_id_digest.len() != 64
            || !e
                .key_id_digest
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    }) {
        return Err(bad(format!(
            "key_id_digest of {} -> {} is not a SHA-256 in hex",
            entry.master_sae, entry.slave_sae
        )));
    }
    let domain =
        manager.accounting.collect().await.map_err(|e| {
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "accounting-unavailable", e)
        })?;
    if domain.period_seconds != 0 && theirs.period_seconds != domain.period_seconds {
        return Err(bad(format!(
            "periods of {} s; this domain's are {} s",
            theirs.period_seconds, domain.period_seconds
        )));
    }
    let period_ms = theirs.period_seconds.saturating_mul(1000);
    if period_ms == 0 || !theirs.period_start_ms.is_multiple_of(period_ms) {
        return Err(bad("period_start_ms is not the start of a period".into()));
    }
    let own = summary_of(manager, &domain, theirs.period_start_ms);
    if theirs.period_start_ms.saturating_add(period_ms) > domain.closed_before {
        return Ok(UsageReply {
            id: theirs.id,
            state: ReconciliationState::Open,
            mismatches: Vec::new(),
            summary: None,
        });
    }
    let (state, mismatches) = reconcile(&own.entries, &theirs.entries);
    manager
        .accounting
        .settle(manager, &own, state, mismatches.clone(), theirs.id);
    Ok(UsageReply {
        id: theirs.id,
        state,
        mismatches,
        summary: Some(own),
    })
}

/// The manager's REST routes of accounting (behind its bearer token).
pub fn router() -> Router<Arc<Manager>> {
    Router::new()
        .route("/api/v1/accounting", get(usage))
        .route("/api/v1/accounting/reconciliation", get(reconciliation))
}

/// `GET /api/v1/accounting?since=&until=&format=json|csv`: the domain's usage per period
/// (periods starting in `since..until`), KMs merged.
async fn usage(State(manager): State<Arc<Manager>>, RawQuery(query): RawQuery) -> Response {
    let query = match parse_query(query.as_deref()) {
        Ok(q) => q,
        Err(e) => return Problem::new(StatusCode::BAD_REQUEST, "bad-query", e).into_response(),
    };
    match manager.accounting.collect().await {
        Ok(domain) => {
            let periods: Vec<_> = domain
                .periods
                .into_iter()
                .filter(|p| p.end_ms > query.since && p.start_ms < query.until)
                .collect();
            answer(flatten(&periods), query.format, "usage")
        }
        Err(e) => Problem::new(StatusCode::SERVICE_UNAVAILABLE, "accounting-unavailable", e)
            .into_response(),
    }
}

/// `GET /api/v1/accounting/reconciliation`: the state of every period exchanged.
async fn reconciliation(State(manager): State<Arc<Manager>>) -> Json<Vec<PeriodReconciliation>> {
    Json(manager.accounting.states())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::km::accounting::summary::{digest, UsageKey};

    fn entry(direction: UsageDirection, ids: &[Uuid], pending: u64) -> UsageEntry {
        UsageEntry {
            direction,
            master_sae: "sae-a1".into(),
            slave_sae: "sae-b1".into(),
            keys: ids.len() as u64,
            bits: 256 * ids.len() as u64,
            key_id_digest: digest(ids),
            pending,
        }
    }

    #[test]
    fn equal_usage_reconciles() {
        let ids = [Uuid::now_v7(), Uuid::now_v7()];
        let a = [entry(UsageDirection::Outbound, &ids, 0)];
        let b = [entry(UsageDirection::Inbound, &ids, 0)];
        assert_eq!(reconcile(&b, &a).0, ReconciliationState::Reconciled);
        assert_eq!(reconcile(&a, &b).0, ReconciliationState::Reconciled);
        // no traffic at all agrees too
        assert_eq!(reconcile(&[], &[]).0, ReconciliationState::Reconciled);
    }

    #[test]
    fn keys_waiting_for_their_slave_sae_are_in_flight_not_a_mismatch() {
        let ids = [Uuid::now_v7(), Uuid::now_v7()];
        let a = [entry(UsageDirection::Outbound, &ids, 0)];
        // B got one key of two so far (a forged count would be a mismatch, see below)
        let b = [entry(UsageDirection::Inbound, &ids[..1], 1)];
        assert_eq!(reconcile(&b, &a), (ReconciliationState::InFlight, vec![]));
    }

    #[test]
    fn a_different_count_or_set_is_a_mismatch() {
        let ids = [Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
        let a = [entry(UsageDirection::Outbound, &ids, 0)];
        let fewer = [entry(UsageDirection::Inbound, &ids[..2], 0)];
        let (state, why) = reconcile(&fewer, &a);
        assert_eq!(state, ReconciliationState::Mismatch);
        assert!(why[0].contains("3 key(s) sent, 2 arrived"), "{why:?}");
        // same count, another key: the digest tells
        let other = [entry(
            UsageDirection::Inbound,
            &[ids[0], ids[1], Uuid::now_v7()],
            0,
        )];
        let (state, why) = reconcile(&other, &a);
        assert_eq!(state, ReconciliationState::Mismatch);
        assert!(why[0].contains("key IDs differ"));
        // keys claimed by nobody on the other side
        assert_eq!(reconcile(&[], &a).0, ReconciliationState::Mismatch);
        assert_eq!(reconcile(&fewer, &[]).0, ReconciliationState::Mismatch);
    }

    #[test]
    fn kms_merge_into_the_domain_and_entries_face_the_peer() {
        let ids = [Uuid::now_v7()];
        let usage = |kind, sae: &str, peer: &str, domain: &str| Usage {
            key: UsageKey {
                kind,
                sae: sae.into(),
                peer_sae: peer.into(),
                peer_domain: domain.into(),
            },
            keys: 1,
            bits: 256,
            key_id_digest: digest(&ids),
            pending: 0,
        };
        let km = |closed, usage: Vec<Usage>| {
            Ok(KmAccounting {
                period_seconds: 2,
                closed_before: closed,
                periods: vec![PeriodSummary {
                    start_ms: 2000,
                    end_ms: 4000,
                    usage,
                }],
            })
        };
        let kms = vec![
            (
                "a1".to_string(),
                km(6000, vec![usage(Kind::Supplied, "sae-a1", "sae-b1", "B")]),
            ),
            (
                "a2".to_string(),
                km(
                    4000,
                    vec![
                        usage(Kind::Received, "sae-a2", "sae-b2", "B"),
                        usage(Kind::Relayed, "sae-a1", "sae-b1", "B"),
                        usage(Kind::Supplied, "sae-a2", "sae-a3", "A"),
                    ],
                ),
            ),
        ];
        let domain = merge(&kms).unwrap();
        assert_eq!(domain.closed_before, 4000);
        assert_eq!(domain.periods[0].usage.len(), 4);
        let entries = entries(domain.periods.first(), "B");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].direction, UsageDirection::Outbound);
        assert_eq!(
            (
                entries[1].master_sae.as_str(),
                entries[1].slave_sae.as_str()
            ),
            ("sae-b2", "sae-a2")
        );
        // an unreachable KM closes nothing
        let mut kms = kms;
        kms.push(("a3".into(), Err("unreachable".into())));
        let domain = merge(&kms).unwrap();
        assert_eq!(domain.closed_before, 0);
        assert_eq!(domain.unreachable, vec!["a3".to_string()]);
    }
}
