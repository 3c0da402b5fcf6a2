//! `qkdni audit show` and `qkdni audit verify` over an evidence store: one line per
//! agreement, its steps in order (what was asked, answered, by whom, when).

use std::io::Write;
use std::path::Path;

use super::evidence::{self, Line, Record};
use super::{cose, EvidenceError, NrError};

/// The name of a step: what a request asked, what an answer said.
pub fn step(record: &Record) -> String {
    let (answer, line) = match record.msg.strip_prefix("answer ") {
        Some(rest) => (true, rest),
        None => (false, record.msg.as_str()),
    };
    let mut words = line.split(' ');
    let first = words.next().unwrap_or_default();
    let (status, method, path) = if answer {
        let status = first;
        (
            Some(status),
            words.next().unwrap_or_default(),
            words.next().unwrap_or_default(),
        )
    } else {
        (None, first, words.next().unwrap_or_default())
    };
    let what = if path.ends_with("/commit") {
        "commit"
    } else if path.ends_with("/abort") {
        "abort"
    } else if path.ends_with("/transactions") {
        "prepare"
    } else if path.ends_with("/status") {
        "status"
    } else if method == "DELETE" && path.contains("/sessions/") {
        "end-session"
    } else if path.ends_with("/reports") {
        "report"
    } else if path.ends_with("/faults") {
        "fault-report"
    } else if path.ends_with("/ext_keys/ack") {
        "ack"
    } else if path.ends_with("/ext_keys/void") {
        "void"
    } else if path.ends_with("/ext_keys") {
        "ext-keys"
    } else if path.contains("/kxi2/v1/relays/") {
        "relay-status"
    } else {
        path
    };
    let salient = record
        .body_bytes()
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| salient(&v));
    let mut text = match status {
        Some(status) => format!("answer to {what} ({status})"),
        None => what.to_owned(),
    };
    if let Some(salient) = salient {
        text.push_str(&format!(" {salient}"));
    }
    text
}

/// The field of a body that says what was agreed.
fn salient(value: &serde_json::Value) -> Option<String> {
    let value = match value {
        serde_json::Value::Array(items) => items.first()?,
        value => value,
    };
    ["vote", "outcome", "kind", "ack_status"]
        .iter()
        .find_map(|k| {
            value
                .get(*k)
                .and_then(|v| v.as_str())
                .map(|v| format!("{k}={v}"))
        })
}

fn rfc3339(secs: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

fn signed_at(record: &Record) -> String {
    let iat = record
        .cose_bytes()
        .ok()
        .and_then(|c| cose::signed_time(&c).ok());
    match iat {
        Some(iat) => rfc3339(iat),
        None => rfc3339(record.kept_ms / 1000),
    }
}

/// `audit show`: one line per agreement.
pub fn show(dir: &Path, out: &mut dyn Write) -> Result<(), EvidenceError> {
    let lines = evidence::read(dir)?;
    for ((peer, agreement), records) in evidence::by_agreement(&lines) {
        let steps: Vec<String> = records
            .iter()
            .map(|r| format!("{} by {} at {}", step(r), r.signer, signed_at(r)))
            .collect();
        writeln!(
            out,
            "{} peer {peer} {agreement}: {}",
            records[0].point,
            steps.join("; ")
        )?;
    }
    for bad in lines.iter().filter_map(|l| l.as_ref().err()) {
        writeln!(out, "unreadable record: {bad}")?;
    }
    Ok(())
}

/// Proves one record: its signature over its body with its embedded certificate, that
/// certificate chaining to the stored CA of the signer's domain at the signing time, the
/// signer and message line being those recorded, and an answer answering a kept request.
fn prove(record: &Record, all: &[&Record], trust: &super::Trust) -> Result<(), NrError> {
    let cose_bytes = record.cose_bytes()?;
    let verified = cose::verify(&cose_bytes, &record.body_bytes()?, trust)?;
    if verified.signer != record.signer {
        return Err(NrError::SignerMismatch {
            signed: verified.signer,
            peer: record.signer.clone(),
        });
    }
    if verified.msg != record.msg {
        return Err(NrError::WrongMessage {
            signed: verified.msg,
            actual: record.msg.clone(),
        });
    }
    if let Some(re) = &verified.re {
        let answered = all.iter().any(|r| {
            !r.msg.starts_with("answer ") && r.cose_bytes().is_ok_and(|c| cose::sha256(&c) == *re)
        });
        if !answered {
            return Err(NrError::Malformed(
                "answers a request that is not kept".into(),
            ));
        }
    }
    Ok(())
}

/// `audit verify`: one line per agreement (and per unreadable record); the failures.
pub fn verify(dir: &Path, out: &mut dyn Write) -> Result<usize, EvidenceError> {
    let lines: Vec<Line> = evidence::read(dir)?;
    if lines.is_empty() {
        writeln!(out, "no signed interworking messages in {}", dir.display())?;
        return Ok(0);
    }
    let trust = evidence::stored_trust(dir)?;
    let mut failed = 0;
    for ((peer, agreement), records) in evidence::by_agreement(&lines) {
        let problems: Vec<String> = records
            .iter()
            .filter_map(|r| {
                prove(r, &records, &trust)
                    .err()
                    .map(|e| format!("record {} ({}): {e}", r.seq, step(r)))
            })
            .collect();
        if problems.is_empty() {
            let signers: std::collections::BTreeSet<&str> =
                records.iter().map(|r| r.signer.as_str()).collect();
            writeln!(
                out,
                "ok {} peer {peer} {agreement}: {} signatures ({})",
                records[0].point,
                records.len(),
                signers.into_iter().collect::<Vec<_>>().join(", ")
            )?;
        } else {
            failed += 1;
            writeln!(
                out,
                "FAILED {} peer {peer} {agreement}: {}",
                records[0].point,
                problems.join("; ")
            )?;
        }
    }
    for bad in lines.iter().filter_map(|l| l.as_ref().err()) {
        failed += 1;
        writeln!(out, "FAILED unreadable record: {bad}")?;
    }
    Ok(failed)
}
