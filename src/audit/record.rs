//! One audit record: its JSON line, its hash and how a line is checked.
//!
//! A record is one line of a segment file:
//!
//! ```text
//! {"seq":7,"time":"2026-12-06T10:00:00.123Z","actor":"km A/a1","who":"alice","kind":"netconf-edit","tx":"netconf-session-3","details":{..},"prev":"<64 hex>","hash":"<64 hex>"}
//! ```
//!
//! `hash` is the SHA-256 (aws-lc-rs) of the line's exact bytes without its `hash` member,
//! that is of the line up to (not including) `,"hash":` followed by the closing `}`.
//! `prev` is the previous record's `hash` (64 zeros for the very first record of a log), so
//! each record's hash covers, through `prev`, every record before it. Verification never
//! re-serializes: it hashes the bytes as they are on disk, so a change of any byte of a
//! record (spacing and member order included) is seen.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The `prev` of the first record of a log.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What closes every line: `,"hash":"` + 64 hex digits + `"}`.
const HASH_PREFIX: &str = ",\"hash\":\"";
const HASH_SUFFIX_LEN: usize = HASH_PREFIX.len() + 64 + 2;

/// One audit record as read back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Sequence number: 1 for the log's first record, then one more per record, across
    /// segments and restarts.
    pub seq: u64,
    /// When the writer wrote it (RFC 3339, UTC, milliseconds).
    pub time: String,
    /// The daemon that wrote it (`km A/a1`, `controller A`, `manager A`).
    pub actor: String,
    /// Who caused it: a NETCONF user, the certificate identity of a REST or ETSI 014
    /// caller (`cert:<common name>`), a peer domain (`domain:<name>`), or `system`.
    pub who: String,
    /// The event kind ([`super::kinds`]).
    pub kind: String,
    /// The transaction or session the event belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx: Option<String>,
    /// The event's details (never key material).
    pub details: Value,
    /// The previous record's hash.
    pub prev: String,
    /// This record's hash.
    pub hash: String,
}

/// The hashed part of a record, in the order it is written.
#[derive(Serialize)]
struct Body<'a> {
    seq: u64,
    time: &'a str,
    actor: &'a str,
    who: &'a str,
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tx: Option<&'a str>,
    details: &'a Value,
    prev: &'a str,
}

/// What a caller asks to record; the writer adds sequence, time, actor and chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub kind: String,
    pub who: String,
    pub tx: Option<String>,
    pub details: Value,
}

/// SHA-256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = String::with_capacity(64);
    for b in digest.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The line (with its `\n`) and hash of record `seq` after `prev`.
pub fn encode(seq: u64, time: &str, actor: &str, entry: &Entry, prev: &str) -> (Vec<u8>, String) {
    let body = Body {
        seq,
        time,
        actor,
        who: &entry.who,
        kind: &entry.kind,
        tx: entry.tx.as_deref(),
        details: &entry.details,
        prev,
    };
    // serializing plain strings, integers and a Value cannot fail
    let mut line = serde_json::to_vec(&body).unwrap_or_default();
    let hash = sha256_hex(&line);
    line.pop(); // the closing brace
    line.extend_from_slice(HASH_PREFIX.as_bytes());
    line.extend_from_slice(hash.as_bytes());
    line.extend_from_slice(b"\"}\n");
    (line, hash)
}

/// Why a line is not a sound record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("malformed record: {0}")]
    Malformed(String),
    #[error("content does not match its hash (the record was altered)")]
    Altered,
}

/// Checks a line (without its `\n`) against its own hash and parses it.
pub fn check_line(line: &[u8]) -> Result<Record, LineError> {
    if line.len() < HASH_SUFFIX_LEN + 2 || !line.ends_with(b"\"}") {
        return Err(LineError::Malformed(
            "the line does not end with its hash".into(),
        ));
    }
    let cut = line.len() - HASH_SUFFIX_LEN;
    if &line[cut..cut + HASH_PREFIX.len()] != HASH_PREFIX.as_bytes() {
        return Err(LineError::Malformed(
            "the line does not end with its hash".into(),
        ));
    }
    let stored = &line[cut + HASH_PREFIX.len()..line.len() - 2];
    let mut body = line[..cut].to_vec();
    body.push(b'}');
    let computed = sha256_hex(&body);
    let record: Result<Record, _> = serde_json::from_slice(line);
    if computed.as_bytes() != stored {
        return Err(LineError::Altered);
    }
    record.map_err(|e| LineError::Malformed(e.to_string()))
}

/// The current time, RFC 3339 with milliseconds (UTC).
pub fn now_ms() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            kind: "netconf-edit".into(),
            who: "alice".into(),
            tx: Some("netconf-session-1".into()),
            details: serde_json::json!({"operation": "merge"}),
        }
    }

    #[test]
    fn a_line_checks_and_any_changed_byte_is_seen() {
        let (line, hash) = encode(1, "2026-12-06T10:00:00.123Z", "km A/a1", &entry(), GENESIS);
        assert_eq!(*line.last().unwrap(), b'\n');
        let line = &line[..line.len() - 1];
        let record = check_line(line).unwrap();
        assert_eq!(record.hash, hash);
        assert_eq!(record.who, "alice");
        assert_eq!(record.tx.as_deref(), Some("netconf-session-1"));
        for i in 0..line.len() {
            let mut bad = line.to_vec();
            bad[i] ^= 0x01;
            assert!(check_line(&bad).is_err(), "byte {i} changed unseen");
        }
    }

    #[test]
    fn times_have_milliseconds() {
        let t = now_ms();
        assert!(
            t.ends_with('Z') && t.len() == "2026-12-06T10:00:00.123Z".len(),
            "{t}"
        );
    }
}
