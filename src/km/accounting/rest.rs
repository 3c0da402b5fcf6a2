//! Accounting on a KM's admin API, for operators and billing systems (operator
//! certificate): `GET /admin/v1/accounting?since=&until=&format=json|csv` lists the
//! records of `since..until` (RFC 3339 or Unix milliseconds; the whole history by
//! default), `GET /admin/v1/accounting/periods?format=json|csv` the summaries of the
//! periods held.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};

use super::summary::PeriodSummary;
use super::{Kind, Record};
use crate::km::agent::Agent;
use crate::km::kma::Problem;
use crate::tls::PeerIdentity;

/// The routes (merged into the KMA router).
pub fn router() -> Router<Arc<Agent>> {
    Router::new()
        .route("/admin/v1/accounting", get(records))
        .route("/admin/v1/accounting/periods", get(periods))
}

/// An answer's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
}

/// The query of an accounting request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub since: u64,
    pub until: u64,
    pub format: Format,
}

/// A time in a query: Unix milliseconds or RFC 3339.
pub fn parse_time(value: &str) -> Option<u64> {
    if let Ok(ms) = value.parse::<u64>() {
        return Some(ms);
    }
    let t =
        time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// RFC 3339 of Unix milliseconds.
pub fn rfc3339(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Reads `since`, `until` and `format`; anything else is refused.
pub fn parse_query(query: Option<&str>) -> Result<Query, String> {
    let mut parsed = Query {
        since: 0,
        until: u64::MAX,
        format: Format::Json,
    };
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match name.as_ref() {
            "since" => {
                parsed.since =
                    parse_time(&value).ok_or_else(|| format!("since: bad time {value:?}"))?
            }
            "until" => {
                parsed.until =
                    parse_time(&value).ok_or_else(|| format!("until: bad time {value:?}"))?
            }
            "format" => {
                parsed.format = match value.as_ref() {
                    "json" => Format::Json,
                    "csv" => Format::Csv,
                    other => return Err(format!("format must be json or csv, not {other:?}")),
                }
            }
            other => return Err(format!("unknown parameter {other:?}")),
        }
    }
    if parsed.until < parsed.since {
        return Err("until is before since".into());
    }
    Ok(parsed)
}

/// A record as exported (JSON and CSV rows).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedRecord {
    /// RFC 3339.
    pub time: String,
    pub at_ms: u64,
    pub kind: Kind,
    pub sae: String,
    pub peer_sae: String,
    pub peer_domain: String,
    pub keys: u64,
    pub bits: u64,
    pub key_bits: u32,
    /// The link, if any (empty in CSV when none).
    pub link: String,
    /// The key IDs, space-separated.
    pub key_ids: String,
}

impl From<&Record> for ExportedRecord {
    fn from(r: &Record) -> Self {
        Self {
            time: rfc3339(r.at_ms),
            at_ms: r.at_ms,
            kind: r.kind,
            sae: r.sae.clone(),
            peer_sae: r.peer_sae.clone(),
            peer_domain: r.peer_domain.clone(),
            keys: r.key_ids.len() as u64,
            bits: r.key_ids.len() as u64 * u64::from(r.key_bits),
            key_bits: r.key_bits,
            link: r.link.clone().unwrap_or_default(),
            key_ids: r
                .key_ids
                .iter()
                .map(|id| id.to_string())
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// A usage line of a period as exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedUsage {
    pub period_start: String,
    pub period_start_ms: u64,
    pub period_end_ms: u64,
    pub kind: Kind,
    pub sae: String,
    pub peer_sae: String,
    pub peer_domain: String,
    pub keys: u64,
    pub bits: u64,
    pub key_id_digest: String,
    pub pending: u64,
}

/// The usage lines of `periods`, flat.
pub fn flatten(periods: &[PeriodSummary]) -> Vec<ExportedUsage> {
    periods
        .iter()
        .flat_map(|p| {
            p.usage.iter().map(|u| ExportedUsage {
                period_start: rfc3339(p.start_ms),
                period_start_ms: p.start_ms,
                period_end_ms: p.end_ms,
                kind: u.key.kind,
                sae: u.key.sae.clone(),
                peer_sae: u.key.peer_sae.clone(),
                peer_domain: u.key.peer_domain.clone(),
                keys: u.keys,
                bits: u.bits,
                key_id_digest: u.key_id_digest.clone(),
                pending: u.pending,
            })
        })
        .collect()
}

/// `rows` as CSV with a header line.
pub fn to_csv<T: Serialize>(rows: &[T]) -> Result<String, String> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for row in rows {
        writer.serialize(row).map_err(|e| e.to_string())?;
    }
    let bytes = writer.into_inner().map_err(|e| e.to_string())?;
    String::from_utf8(bytes).map_err(|e| e.to_string())
}

/// `rows` as JSON or CSV (`text/csv`).
pub fn answer<T: Serialize>(rows: Vec<T>, format: Format, name: &str) -> Response {
    match format {
        Format::Json => Json(serde_json::json!({ name: rows })).into_response(),
        Format::Csv => match to_csv(&rows) {
            Ok(text) => ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], text).into_response(),
            Err(e) => Problem(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
        },
    }
}

/// Answers an operator's request: its query parsed, then `read` (blocking) made into `name`
/// rows in the asked format.
async fn serve<T, R>(
    agent: Arc<Agent>,
    identity: &PeerIdentity,
    query: Option<&str>,
    name: &str,
    read: impl FnOnce(&Agent, &Query) -> Result<Vec<R>, super::AccountingError> + Send + 'static,
    rows: impl FnOnce(Vec<R>) -> Vec<T>,
) -> Response
where
    T: Serialize,
    R: Send + 'static,
{
    if let Err(problem) = crate::km::kma::operator(&agent, identity) {
        return problem.into_response();
    }
    let query = match parse_query(query) {
        Ok(q) => q,
        Err(e) => return Problem(StatusCode::BAD_REQUEST, e).into_response(),
    };
    let format = query.format;
    let read = tokio::task::spawn_blocking(move || read(&agent, &query)).await;
    match read {
        Ok(Ok(read)) => answer(rows(read), format, name),
        Ok(Err(e)) => Problem(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
        Err(e) => Problem(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

async fn records(
    State(agent): State<Arc<Agent>>,
    Extension(identity): Extension<PeerIdentity>,
    RawQuery(query): RawQuery,
) -> Response {
    serve(
        agent,
        &identity,
        query.as_deref(),
        "records",
        |agent, query| agent.accounting.records(query.since, query.until),
        |records| records.iter().map(ExportedRecord::from).collect(),
    )
    .await
}

async fn periods(
    State(agent): State<Arc<Agent>>,
    Extension(identity): Extension<PeerIdentity>,
    RawQuery(query): RawQuery,
) -> Response {
    serve(
        agent,
        &identity,
        query.as_deref(),
        "usage",
        |agent, query| {
            let (periods, _) = agent.accounting.summaries(super::key_ttl_ms(agent))?;
            Ok(periods
                .into_iter()
                .filter(|p| {
                    p.start_ms >= query.since.saturating_sub(p.end_ms - p.start_ms)
                        && p.start_ms < query.until
                })
                .collect())
        },
        |periods| flatten(&periods),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_read_or_refused() {
        let q = parse_query(Some("since=1000&until=2026-01-01T00:00:00Z&format=csv")).unwrap();
        assert_eq!(q.since, 1000);
        assert_eq!(q.until, 1_767_225_600_000);
        assert_eq!(q.format, Format::Csv);
        assert_eq!(parse_query(None).unwrap().until, u64::MAX);
        assert!(parse_query(Some("format=xml")).is_err());
        assert!(parse_query(Some("since=yesterday")).is_err());
        assert!(parse_query(Some("since=5&until=4")).is_err());
        assert!(parse_query(Some("limit=4")).is_err());
        assert_eq!(rfc3339(1_767_225_600_000), "2026-01-01T00:00:00Z");
    }

    #[test]
    fn csv_rows_read_back_as_the_json_rows() {
        let record = Record {
            at_ms: 1_767_225_600_123,
            kind: Kind::Supplied,
            sae: "sae-a1".into(),
            peer_sae: "sae, \"b\"".into(),
            peer_domain: "B".into(),
            key_bits: 256,
            key_ids: vec![uuid::Uuid::now_v7(), uuid::Uuid::now_v7()],
            link: None,
        };
        let rows = vec![ExportedRecord::from(&record)];
        let text = to_csv(&rows).unwrap();
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let back: Vec<ExportedRecord> = reader.deserialize().map(|r| r.unwrap()).collect();
        assert_eq!(back, rows);
        assert_eq!(back[0].bits, 512);
    }
}
