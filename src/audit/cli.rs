//! `qkdni audit show <dir>` and `qkdni audit verify <dir>`.
//!
//! `<dir>` is a daemon's state directory (its `data_dir`; a manager's: the directory of its
//! configuration file) or its audit directory itself. Both commands also hand the state
//! directory to [`crate::nonrepudiation`]: `show` lists the agreements recorded there and
//! `verify` proves them; `verify` fails (exit status 1) when the chain is broken or an
//! agreement does not verify.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::log::segments;
use super::record::Record;
use super::verify::verify_dir;
use super::AuditError;

/// `qkdni audit ...`
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Lists the records of a daemon's audit log (oldest first) and its agreements.
    Show {
        /// The daemon's state directory, or its audit directory.
        dir: PathBuf,
        /// Only records of this kind (e.g. `netconf-edit`, `etsi014-keys-delivered`); a
        /// trailing `*` matches a prefix.
        #[arg(long)]
        kind: Option<String>,
        /// Only records caused by this identity (a NETCONF user, `cert:<name>`, `system`).
        #[arg(long)]
        who: Option<String>,
        /// Only records at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Print the records' JSON lines as stored.
        #[arg(long)]
        json: bool,
    },
    /// Checks every segment and the chain; reports the first broken record; exit status 1
    /// when anything is wrong.
    Verify {
        /// The daemon's state directory, or its audit directory.
        dir: PathBuf,
    },
}

/// Errors of the command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("--since {0}: not an RFC 3339 time")]
    Since(String),
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

/// Runs the command, writing to `out`; `Ok(false)`: verification failed.
pub fn run(command: &AuditCommand, out: &mut dyn Write) -> Result<bool, CliError> {
    match command {
        AuditCommand::Show {
            dir,
            kind,
            who,
            since,
            json,
        } => {
            let filter = Filter {
                kind: kind.clone(),
                who: who.clone(),
                since: since.as_deref().map(parse_time).transpose()?,
            };
            show(dir, &filter, *json, out)?;
            Ok(true)
        }
        AuditCommand::Verify { dir } => verify(dir, out),
    }
}

/// Which records `show` lists.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub kind: Option<String>,
    pub who: Option<String>,
    pub since: Option<time::OffsetDateTime>,
}

impl Filter {
    fn matches(&self, record: &Record) -> bool {
        let kind = match self.kind.as_deref() {
            None => true,
            Some(k) => match k.strip_suffix('*') {
                Some(prefix) => record.kind.starts_with(prefix),
                None => record.kind == k,
            },
        };
        let who = self.who.as_deref().is_none_or(|w| record.who == w);
        let since = self
            .since
            .is_none_or(|s| parse_time(&record.time).is_ok_and(|t| t >= s));
        kind && who && since
    }
}

fn parse_time(text: &str) -> Result<time::OffsetDateTime, CliError> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| CliError::Since(text.to_owned()))
}

/// The audit directory and the state directory `dir` names.
pub fn locate(dir: &Path) -> (PathBuf, PathBuf) {
    let holds_log = |d: &Path| segments(d).is_ok_and(|s| !s.is_empty());
    if !holds_log(&dir.join("audit")) && holds_log(dir) {
        let state = dir.parent().unwrap_or(Path::new(".")).to_owned();
        (dir.to_owned(), state)
    } else {
        (dir.join("audit"), dir.to_owned())
    }
}

/// Lists the records matching `filter`, then the agreements.
pub fn show(dir: &Path, filter: &Filter, json: bool, out: &mut dyn Write) -> Result<(), CliError> {
    let (audit, state) = locate(dir);
    let found = segments(&audit).map_err(AuditError::io(&audit))?;
    if found.is_empty() {
        return Err(AuditError::NoLog(audit).into());
    }
    writeln!(out, "# audit log {}", audit.display())?;
    for (_, path) in found {
        let bytes = std::fs::read(&path).map_err(AuditError::io(&path))?;
        for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let record: Record = match serde_json::from_slice(line) {
                Ok(record) => record,
                Err(error) => {
                    let name = path.file_name().unwrap_or_default().to_string_lossy();
                    writeln!(out, "# {name} line {}: unreadable record: {error}", i + 1)?;
                    continue;
                }
            };
            if !filter.matches(&record) {
                continue;
            }
            if json {
                out.write_all(line)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "{} {} who={} {}{} {}",
                    record.seq,
                    record.time,
                    record.who,
                    record.kind,
                    record.tx.map(|t| format!(" tx={t}")).unwrap_or_default(),
                    record.details
                )?;
            }
        }
    }
    writeln!(out, "# agreements")?;
    crate::nonrepudiation::report(&state, out).map_err(AuditError::from)?;
    Ok(())
}

/// Verifies the chain and the agreements; `Ok(false)` when anything failed.
pub fn verify(dir: &Path, out: &mut dyn Write) -> Result<bool, CliError> {
    let (audit, state) = locate(dir);
    let report = verify_dir(&audit)?;
    if report.incomplete_tail {
        writeln!(
            out,
            "note: the last record is incomplete (being written, or cut short by a crash before it was committed)"
        )?;
    }
    for failure in &report.failures {
        writeln!(out, "BROKEN {failure}")?;
    }
    match report.failures.first() {
        None => writeln!(
            out,
            "audit log {}: {} records in {} segment(s), chain intact{}",
            audit.display(),
            report.records,
            report.segments,
            report
                .last
                .as_ref()
                .map(|(seq, hash)| format!(", last record {seq} {hash}"))
                .unwrap_or_default()
        )?,
        Some(first) => writeln!(
            out,
            "audit log {}: BROKEN, {} failure(s); the first: {first}",
            audit.display(),
            report.failures.len()
        )?,
    }
    let failed_agreements =
        crate::nonrepudiation::verify_all(&state, out).map_err(AuditError::from)?;
    if failed_agreements > 0 {
        writeln!(out, "{failed_agreements} agreement(s) failed verification")?;
    }
    Ok(report.ok() && failed_agreements == 0)
}
