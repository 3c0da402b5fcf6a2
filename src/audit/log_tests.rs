//! Tests of the writer and the verification: chain, tampering, removals, rotation, restart.

use std::path::Path;

use serde_json::json;

use super::log::{segment_name, segments, AuditLog};
use super::record::Record;
use super::verify::verify_dir;
use super::{kinds, AuditConfig};

fn temp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("qkdni-audit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Writes `n` records and closes the log (the writer thread ends after its last commit).
fn write(dir: &Path, n: usize, segment_bytes: u64) {
    let log = AuditLog::open(dir, "km A/a1", segment_bytes).unwrap();
    for i in 0..n {
        log.append(
            kinds::NETCONF_EDIT,
            "alice",
            Some(&format!("netconf-session-{i}")),
            json!({"operation": "merge", "i": i}),
        );
    }
    log.sync_blocking();
}

fn records(dir: &Path) -> Vec<Record> {
    let mut all = Vec::new();
    for (_, path) in segments(dir).unwrap() {
        for line in std::fs::read_to_string(path).unwrap().lines() {
            all.push(serde_json::from_str(line).unwrap());
        }
    }
    all
}

fn first_failure(dir: &Path) -> String {
    let report = verify_dir(dir).unwrap();
    assert!(!report.ok(), "verification passed");
    report.failures[0].to_string()
}

#[test]
fn records_chain_and_verify() {
    let dir = temp("chain");
    write(&dir, 20, 1 << 20);
    let all = records(&dir);
    assert_eq!(all.len(), 21);
    assert_eq!(all[0].kind, kinds::AUDIT_CREATED);
    for pair in all.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq + 1);
        assert_eq!(pair[1].prev, pair[0].hash);
    }
    assert_eq!(all[5].who, "alice");
    assert_eq!(all[5].actor, "km A/a1");
    let report = verify_dir(&dir).unwrap();
    assert!(report.ok(), "{:?}", report.failures);
    assert_eq!(report.records, 21);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn one_changed_byte_anywhere_is_found_and_named() {
    let dir = temp("tamper");
    write(&dir, 3, 1 << 20);
    let path = dir.join(segment_name(1));
    let original = std::fs::read(&path).unwrap();
    let starts: Vec<usize> = std::iter::once(0)
        .chain(
            original
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| i + 1),
        )
        .collect();
    for i in 0..original.len() {
        let mut bad = original.clone();
        bad[i] = if bad[i] == b'x' { b'y' } else { b'x' };
        std::fs::write(&path, &bad).unwrap();
        let report = verify_dir(&dir).unwrap();
        assert!(!report.ok(), "byte {i} changed unseen");
        // the failure names the line the byte is in
        let line = starts.iter().filter(|s| **s <= i).count();
        let named = &report.failures[0];
        if i == original.len() - 1 {
            // the last record's newline: an incomplete record, and the head still
            // records the last one
            assert!(named.reason.contains("tail was removed"), "{named}");
            continue;
        }
        assert_eq!(named.segment, segment_name(1), "byte {i}: {named}");
        assert!(
            named.line == line
                || (original[i] == b'\n' && named.line == line + 1)
                || named.line == line - 1,
            "byte {i} (line {line}): {named}"
        );
    }
    // a byte inside record 3's details: record 3 named as altered
    let mut bad = original.clone();
    let at = starts[2] + 40;
    bad[at] = if bad[at] == b'x' { b'y' } else { b'x' };
    std::fs::write(&path, &bad).unwrap();
    let failure = first_failure(&dir);
    assert!(
        failure.contains("line 3") && failure.contains("altered"),
        "{failure}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_removed_record_is_found() {
    let dir = temp("removed");
    write(&dir, 5, 1 << 20);
    let path = dir.join(segment_name(1));
    let text = std::fs::read_to_string(&path).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, l)| l)
        .collect();
    std::fs::write(&path, kept.join("\n") + "\n").unwrap();
    let failure = first_failure(&dir);
    assert!(
        failure.contains("record 4") && failure.contains("missing"),
        "{failure}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn rotation_keeps_the_chain_and_a_removed_middle_segment_is_found() {
    let dir = temp("rotate");
    write(&dir, 60, 2048);
    let found = segments(&dir).unwrap();
    assert!(found.len() >= 4, "{} segments", found.len());
    let all = records(&dir);
    let starts: Vec<&Record> = all
        .iter()
        .filter(|r| r.kind == kinds::SEGMENT_START)
        .collect();
    assert_eq!(starts.len(), found.len() - 1);
    assert_eq!(starts[0].details["previous_segment"], segment_name(1));
    assert!(verify_dir(&dir).unwrap().ok());
    for (_, path) in &found {
        assert!(std::fs::metadata(path).unwrap().len() <= 2048);
    }
    // remove a middle segment
    std::fs::remove_file(&found[1].1).unwrap();
    let failure = first_failure(&dir);
    assert!(
        failure.contains(&segment_name(2)) && failure.contains("missing"),
        "{failure}"
    );
    // ... and renumber the files after it to hide the gap: the chain still breaks
    for (n, path) in &found[2..] {
        std::fs::rename(path, dir.join(segment_name(n - 1))).unwrap();
    }
    let report = verify_dir(&dir).unwrap();
    assert!(!report.ok());
    assert!(
        report.failures[0].to_string().contains("missing"),
        "{}",
        report.failures[0]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn retention_removes_old_segments_and_the_chain_still_verifies() {
    let dir = temp("retention");
    let log = AuditLog::open_keeping(&dir, "km A/a1", 2048, 3).unwrap();
    for i in 0..120 {
        log.append(kinds::NETCONF_EDIT, "alice", None, json!({"i": i}));
    }
    log.sync_blocking();
    drop(log);
    let found = segments(&dir).unwrap();
    assert!(found.len() <= 3, "{} segments kept", found.len());
    assert!(found[0].0 > 1, "old segments removed");
    let all = records(&dir);
    let anchor = all
        .iter()
        .rev()
        .find(|r| r.kind == kinds::AUDIT_PRUNED)
        .expect("an audit-pruned record");
    assert_eq!(
        anchor.details["through_segment"],
        segment_name(found[0].0 - 1)
    );
    let report = verify_dir(&dir).unwrap();
    assert!(report.ok(), "{:?}", report.failures);
    assert_eq!(report.last.unwrap().0, all.last().unwrap().seq);
    // the log reopened goes on from there
    write(&dir, 5, 2048);
    assert!(verify_dir(&dir).unwrap().ok());

    // someone else removes the oldest segment left: no record anchors what is missing now
    let found = segments(&dir).unwrap();
    let copy = temp("retention-copy");
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, copy.join(path.file_name().unwrap())).unwrap();
    }
    std::fs::remove_file(copy.join(segment_name(found[0].0))).unwrap();
    let failure = first_failure(&copy);
    assert!(
        failure.contains("missing") && failure.contains("audit-pruned"),
        "{failure}"
    );
    // the anchor record altered: the chain breaks there
    let with_anchor = found
        .iter()
        .find(|(_, path)| {
            std::fs::read_to_string(path)
                .unwrap()
                .contains(kinds::AUDIT_PRUNED)
        })
        .map(|(_, path)| path.clone())
        .unwrap();
    let text = std::fs::read_to_string(&with_anchor).unwrap();
    std::fs::write(
        &with_anchor,
        text.replacen("through_seq\":", "through_seq\": 1", 1),
    )
    .unwrap();
    assert!(!verify_dir(&dir).unwrap().ok());
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&copy).unwrap();
}

#[test]
fn a_truncated_tail_is_found() {
    // whole records cut from the end: only the head knows
    let dir = temp("truncated");
    write(&dir, 5, 1 << 20);
    let path = dir.join(segment_name(1));
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&path, lines[..4].join("\n") + "\n").unwrap();
    let failure = first_failure(&dir);
    assert!(failure.contains("tail was removed"), "{failure}");
    // half a committed record cut: the head knows it
    std::fs::write(&path, &text.as_bytes()[..text.len() - 30]).unwrap();
    let failure = first_failure(&dir);
    assert!(failure.contains("tail was removed"), "{failure}");
    // half a record never committed (a crash in its write): not a failure
    std::fs::write(&path, text.clone() + "{\"seq\":7,").unwrap();
    let report = verify_dir(&dir).unwrap();
    assert!(
        report.ok() && report.incomplete_tail,
        "{:?}",
        report.failures
    );
    // a whole last segment removed
    let dir2 = temp("truncated-segment");
    write(&dir2, 60, 2048);
    let found = segments(&dir2).unwrap();
    std::fs::remove_file(&found.last().unwrap().1).unwrap();
    let failure = first_failure(&dir2);
    assert!(failure.contains("tail was removed"), "{failure}");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&dir2).unwrap();
}

#[test]
fn a_reopened_log_continues_the_chain() {
    let dir = temp("reopen");
    write(&dir, 3, 1 << 20);
    write(&dir, 3, 1 << 20);
    let all = records(&dir);
    assert_eq!(all.len(), 8);
    assert_eq!(all[4].kind, kinds::AUDIT_OPENED);
    assert_eq!(all[4].details["continues"], 4);
    assert!(verify_dir(&dir).unwrap().ok());
    // a crash in the middle of a write: the partial line is cut off at the next opening,
    // which is no damage (the record was never durable)
    let path = dir.join(segment_name(1));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(b"{\"seq\":9,\"time\":");
    std::fs::write(&path, &bytes).unwrap();
    write(&dir, 1, 1 << 20);
    let report = verify_dir(&dir).unwrap();
    assert!(report.ok(), "{:?}", report.failures);
    assert_eq!(report.records, 10);
    // a record removed while the daemon was down: the reopened log says so in its chain,
    // and verify keeps failing
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&path, lines[..lines.len() - 1].join("\n") + "\n").unwrap();
    write(&dir, 1, 1 << 20);
    let all = records(&dir);
    assert!(all.iter().any(|r| r.kind == kinds::AUDIT_DAMAGE_FOUND));
    let report = verify_dir(&dir).unwrap();
    assert!(!report.ok());
    assert!(
        report.failures.iter().any(|f| f.reason.contains("damaged")),
        "{:?}",
        report.failures
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_disabled_log_writes_nothing() {
    let dir = temp("disabled");
    let config = AuditConfig {
        enabled: false,
        ..AuditConfig::default()
    };
    let log = AuditLog::for_daemon(&dir, "km A/a1", &config).unwrap();
    log.append(kinds::NETCONF_EDIT, "alice", None, json!({}));
    log.sync_blocking();
    assert!(!log.is_enabled());
    assert!(!dir.exists());
    let config: AuditConfig = toml::from_str("segment_bytes = 4096").unwrap();
    assert!(config.enabled);
    assert_eq!(config.dir_in(Path::new("/s")), Path::new("/s/audit"));
}

/// What a durable commit costs here, against group commit (figures for the module docs):
/// `cargo test --release --lib audit::log_tests::commit_cost -- --ignored --nocapture`.
#[test]
#[ignore]
fn commit_cost() {
    let dir = temp("cost");
    let log = AuditLog::open(&dir, "bench", 1 << 30).unwrap();
    let n = 200;
    let start = std::time::Instant::now();
    for i in 0..n {
        log.append(kinds::NETCONF_EDIT, "bench", None, json!({"i": i}));
        log.sync_blocking();
    }
    let each = start.elapsed() / n;
    let n = 50_000;
    let start = std::time::Instant::now();
    for i in 0..n {
        log.append(kinds::NETCONF_EDIT, "bench", None, json!({"i": i}));
    }
    log.sync_blocking();
    let grouped = start.elapsed();
    println!(
        "one record per commit: {each:?} each ({:.0}/s); group commit: {n} records in {grouped:?} ({:.0}/s)",
        1.0 / each.as_secs_f64(),
        n as f64 / grouped.as_secs_f64()
    );
    drop(log);
    std::fs::remove_dir_all(&dir).unwrap();
}
