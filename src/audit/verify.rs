//! Verification of a whole log: every segment, every record, the chain across segments and
//! the head.
//!
//! What each failure means:
//! - a record whose bytes do not match its hash: the record was altered;
//! - a record whose `seq` or `prev` does not follow the record before it: records between
//!   them were removed (or the one before was altered);
//! - a gap in the segment numbers, or a `segment-start` that names another previous
//!   segment or hash: a whole segment was removed or the files were renamed;
//! - a first record that is not record 1 after the genesis hash: the log's beginning is gone;
//! - a head that records a later record than the last one found, or another hash for it:
//!   the tail was truncated (or the last record altered);
//! - an incomplete last line of a segment before the last: a truncation (at the end of the
//!   last segment it is a write in progress or one a crash cut short, never committed: not a
//!   failure, and a cut through committed records is found by the head);
//! - an `audit-damage-found` record: the daemon found its log damaged when it reopened it;
//! - a log that starts after segment 1 without an `audit-pruned` record (the writer's
//!   retention, `[audit] keep_segments`) naming the segment before the first one left and
//!   the number and hash of its last record: segments were removed by someone else.

use std::path::{Path, PathBuf};

use super::log::{segment_name, segments, Head};
use super::record::{self, Record, GENESIS};
use super::{kinds, AuditError};

/// One thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The segment file.
    pub segment: String,
    /// Line number in it (1-based; 0: the file as a whole or the head).
    pub line: usize,
    /// The record's sequence number, when it could be read.
    pub seq: Option<u64>,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.seq) {
            (0, _) => write!(f, "{}: {}", self.segment, self.reason),
            (line, Some(seq)) => write!(
                f,
                "{} line {line} (record {seq}): {}",
                self.segment, self.reason
            ),
            (line, None) => write!(f, "{} line {line}: {}", self.segment, self.reason),
        }
    }
}

/// The outcome of a verification.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Segments read.
    pub segments: usize,
    /// Records read.
    pub records: u64,
    /// The last record's sequence number and hash.
    pub last: Option<(u64, String)>,
    /// Everything found wrong, in log order (the first is the first broken record).
    pub failures: Vec<Failure>,
    /// The last segment ends in an incomplete record (being written, or never committed).
    pub incomplete_tail: bool,
}

impl Report {
    /// Whether the log is intact.
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Verifies the log in `dir`.
pub fn verify_dir(dir: &Path) -> Result<Report, AuditError> {
    let found = segments(dir).map_err(AuditError::io(dir))?;
    if found.is_empty() {
        return Err(AuditError::NoLog(dir.to_owned()));
    }
    let mut report = Report::default();
    let head = match Head::read(dir) {
        Ok(head) => Ok(head),
        Err(AuditError::Head(_)) => Err("the head file holds no sound slot"),
        Err(e) => return Err(e),
    };
    let head_seq = head
        .as_ref()
        .ok()
        .and_then(|h| h.as_ref())
        .map(|h| (h.seq, h.hash.clone()));
    // the chain's expected next record: (seq, prev hash)
    let mut expected: (u64, String) = (1, GENESIS.to_owned());
    let mut previous: Option<(u64, PathBuf)> = None;
    // a log pruned by its writer: the first segment left, and what its first record
    // continues (seq, hash), to be anchored by an `audit-pruned` record
    let mut pruned: Option<(u64, u64, String)> = None;
    let mut anchors: Vec<(String, u64, String)> = Vec::new();
    for (number, path) in &found {
        let name = segment_name(*number);
        if previous.is_none() && *number != 1 {
            // continues the segment before it, removed by the writer's retention if an
            // `audit-pruned` record anchors it (checked at the end)
            previous = Some((number - 1, PathBuf::new()));
            pruned = Some((*number, 0, String::new()));
        }
        match &previous {
            Some((p, _)) if *number != p + 1 => report.failures.push(Failure {
                segment: name.clone(),
                line: 0,
                seq: None,
                reason: format!(
                    "segment(s) {} to {} are missing",
                    segment_name(p + 1),
                    segment_name(number - 1)
                ),
            }),
            _ => {}
        }
        let bytes = std::fs::read(path).map_err(AuditError::io(path))?;
        report.segments += 1;
        if bytes.is_empty() {
            report.failures.push(Failure {
                segment: name.clone(),
                line: 0,
                seq: None,
                reason: "the segment is empty".into(),
            });
        } else if !bytes.ends_with(b"\n") && Some(number) == found.last().map(|(n, _)| n) {
            // the end of the log: a write in progress, or a crash before the record was
            // committed (the daemon cuts it off when it reopens the log); records that were
            // committed and then cut are found by the head check
            report.incomplete_tail = true;
        } else if !bytes.ends_with(b"\n") {
            report.failures.push(Failure {
                segment: name.clone(),
                line: bytes.iter().filter(|b| **b == b'\n').count() + 1,
                seq: None,
                reason: "the last record is incomplete (truncated)".into(),
            });
        }
        let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let lines: Vec<&[u8]> = match whole {
            0 => Vec::new(),
            _ => bytes[..whole - 1].split(|b| *b == b'\n').collect(),
        };
        for (i, line) in lines.into_iter().enumerate() {
            let at = |seq: Option<u64>, reason: String| Failure {
                segment: name.clone(),
                line: i + 1,
                seq,
                reason,
            };
            let record = match record::check_line(line) {
                Ok(record) => record,
                Err(error) => {
                    // which record it was, if it can still be read
                    let seq = serde_json::from_slice::<serde_json::Value>(line)
                        .ok()
                        .and_then(|v| v.get("seq").and_then(|s| s.as_u64()));
                    report.failures.push(at(seq, error.to_string()));
                    // go on from what the record says of itself, so that one altered record
                    // is one failure, not one per record after it
                    if let Ok(r) = serde_json::from_slice::<Record>(line) {
                        expected = (r.seq + 1, r.hash);
                    } else {
                        expected.0 += 1;
                    }
                    report.records += 1;
                    continue;
                }
            };
            report.records += 1;
            if let Some((first, seq, hash)) = &mut pruned {
                if *first == *number && i == 0 && *seq == 0 {
                    (*seq, *hash) = (record.seq.saturating_sub(1), record.prev.clone());
                    expected = (record.seq, record.prev.clone());
                }
            }
            if record.kind == kinds::AUDIT_PRUNED {
                let text = |k: &str| record.details.get(k).and_then(|v| v.as_str());
                if let (Some(segment), Some(seq), Some(hash)) = (
                    text("through_segment"),
                    record.details.get("through_seq").and_then(|v| v.as_u64()),
                    text("through_hash"),
                ) {
                    anchors.push((segment.to_owned(), seq, hash.to_owned()));
                }
            }
            if record.seq != expected.0 {
                let reason = if record.seq > expected.0 {
                    format!(
                        "record {} follows record {}: {} record(s) before it are missing",
                        record.seq,
                        expected.0 - 1,
                        record.seq - expected.0
                    )
                } else {
                    format!(
                        "record {} repeats or goes back (expected {})",
                        record.seq, expected.0
                    )
                };
                report.failures.push(at(Some(record.seq), reason));
            } else if record.prev != expected.1 {
                report.failures.push(at(
                    Some(record.seq),
                    if record.seq == 1 {
                        "the first record does not start the chain".into()
                    } else {
                        format!(
                            "prev does not match record {}'s hash (a record before it was removed or altered)",
                            record.seq - 1
                        )
                    },
                ));
            }
            if i == 0 && previous.is_some() {
                check_segment_start(&record, previous.as_ref(), &mut |reason| {
                    report.failures.push(at(Some(record.seq), reason))
                });
            } else if i == 0 && record.seq == 1 && record.kind != kinds::AUDIT_CREATED {
                report.failures.push(at(
                    Some(record.seq),
                    format!(
                        "the log's first record is {}, not {}",
                        record.kind,
                        kinds::AUDIT_CREATED
                    ),
                ));
            }
            if record.kind == kinds::AUDIT_DAMAGE_FOUND {
                report.failures.push(at(
                    Some(record.seq),
                    format!(
                        "the daemon found its log damaged when it reopened it: {}",
                        record.details
                    ),
                ));
            }
            if let Some((seq, hash)) = &head_seq {
                if record.seq == *seq && record.hash != *hash {
                    report.failures.push(at(
                        Some(record.seq),
                        "the head records another hash for this record (altered)".into(),
                    ));
                }
            }
            expected = (record.seq + 1, record.hash.clone());
            report.last = Some((record.seq, record.hash));
        }
        previous = Some((*number, path.clone()));
    }
    if let Some((first, seq, hash)) = pruned {
        let anchored = anchors
            .iter()
            .any(|(s, q, h)| *s == segment_name(first - 1) && *q == seq && *h == hash);
        if !anchored {
            report.failures.insert(
                0,
                Failure {
                    segment: segment_name(first),
                    line: 0,
                    seq: None,
                    reason: format!(
                        "segments 1 to {} are missing (no audit-pruned record of the log names them)",
                        first - 1
                    ),
                },
            );
        }
    }
    check_head(head, &report.last.clone(), &mut report.failures);
    Ok(report)
}

/// The first record of a segment after the first: a `segment-start` naming the previous
/// segment (the file before it) and its last hash.
fn check_segment_start(
    record: &Record,
    previous: Option<&(u64, PathBuf)>,
    fail: &mut dyn FnMut(String),
) {
    if record.kind != kinds::SEGMENT_START {
        fail(format!(
            "a segment begins with {}, not {}",
            record.kind,
            kinds::SEGMENT_START
        ));
        return;
    }
    let named = record
        .details
        .get("previous_segment")
        .and_then(|v| v.as_str());
    let expected = previous.map(|(n, _)| segment_name(*n));
    if named != expected.as_deref() {
        fail(format!(
            "the segment continues {} but follows {}",
            named.unwrap_or("nothing"),
            expected.unwrap_or_default()
        ));
    }
    let hash = record.details.get("previous_hash").and_then(|v| v.as_str());
    if hash != Some(record.prev.as_str()) {
        fail("segment-start names another previous hash than its prev".into());
    }
}

fn check_head(
    head: Result<Option<Head>, &str>,
    last: &Option<(u64, String)>,
    failures: &mut Vec<Failure>,
) {
    let head_failure = |reason: String| Failure {
        segment: "head".into(),
        line: 0,
        seq: None,
        reason,
    };
    match (head, last) {
        (Err(reason), _) => failures.push(head_failure(reason.into())),
        (Ok(None), _) => failures.push(head_failure("the head file is missing".into())),
        (Ok(Some(head)), Some((seq, _))) => {
            if head.seq > *seq {
                failures.push(head_failure(format!(
                    "the log ends at record {seq} but the head records record {} in {}: the tail was removed",
                    head.seq, head.segment
                )));
            }
        }
        (Ok(Some(head)), None) => failures.push(head_failure(format!(
            "no record found but the head records record {}",
            head.seq
        ))),
    }
}
