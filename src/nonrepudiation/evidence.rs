//! The evidence store: every signed original a daemon received or sent at an interworking
//! reference point, kept durably in `<state>/evidence/`.
//!
//! - `evidence.jsonl`: append-only, one JSON [`Record`] a line (the body bytes and the
//!   COSE_Sign1 in base64url, who signed, which agreement). A record is on disk (`fdatasync`)
//!   before the message it keeps is acted on or answered; concurrent records share one sync.
//!   A plain file rather than redb so that `qkdni audit show|verify` can read it while the
//!   daemon runs (redb locks its file). Once it holds `[nonrepudiation] segment_bytes`
//!   (64 MiB by default) it is closed — renamed `evidence-<n>.jsonl`, `n` (20 digits) the
//!   number of the record after its last — and a new `evidence.jsonl` begun, so that a
//!   closed file can be archived and opening the store reads only the current one. Readers
//!   take the closed files in order, then the current one.
//! - `cas/own/*.pem`, `cas/<domain>/*.pem`: the CA certificates trusted when the store was
//!   opened, copied at first use (a new certificate of a domain is added beside the old ones,
//!   never replaces them), so that evidence can be proved from the state directory alone,
//!   after the daemon's configuration has changed.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::trust::{DomainCas, Trust};
use super::NrError;

/// Name of the evidence directory in a state directory.
pub const DIR: &str = "evidence";
/// Name of the current record file.
pub const FILE: &str = "evidence.jsonl";
/// Default size at which the current record file is closed.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// The name of a closed record file whose last record is the one before `next`.
fn closed_name(next: u64) -> String {
    format!("evidence-{next:020}.jsonl")
}

/// The closed record files of `dir`, in order, with the number after their last record.
fn closed_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, NrError> {
    let mut closed = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(closed),
        Err(e) => return Err(e.into()),
    };
    for entry in entries {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let number = name
            .strip_prefix("evidence-")
            .and_then(|n| n.strip_suffix(".jsonl"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(next) = number {
            closed.push((next, path));
        }
    }
    closed.sort();
    Ok(closed)
}

/// Whether a daemon received a signed message or sent it (signed by itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    Received,
    Sent,
}

/// One signed original.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the store (from 0).
    pub seq: u64,
    /// When it was kept (ms since the epoch).
    pub kept_ms: u64,
    /// The reference point: `cxi`, `mxi`, `kxi`.
    pub point: String,
    /// The agreement it belongs to (`transaction <uuid>`, `report <uuid>`, `relay <uuid>`...).
    pub agreement: String,
    /// The peer domain.
    pub peer: String,
    pub direction: Direction,
    /// The signer's identity (`name` or `name@domain`) as verified when it was kept.
    pub signer: String,
    /// The signed message line (`POST /cxi/v1/transactions`, `answer 200 POST ...`).
    pub msg: String,
    /// The signed body, base64url without padding.
    pub body: String,
    /// The COSE_Sign1, base64url without padding.
    pub cose: String,
}

/// base64url without padding.
pub fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

impl Record {
    /// The body bytes.
    pub fn body_bytes(&self) -> Result<Vec<u8>, NrError> {
        b64()
            .decode(&self.body)
            .map_err(|e| NrError::Malformed(format!("record {}: body: {e}", self.seq)))
    }

    /// The COSE_Sign1 bytes.
    pub fn cose_bytes(&self) -> Result<Vec<u8>, NrError> {
        b64()
            .decode(&self.cose)
            .map_err(|e| NrError::Malformed(format!("record {}: cose: {e}", self.seq)))
    }
}

/// What a caller hands the store (the store numbers and dates it).
#[derive(Debug, Clone)]
pub struct NewRecord {
    pub point: &'static str,
    pub agreement: String,
    pub peer: String,
    pub direction: Direction,
    pub signer: String,
    pub msg: String,
    pub body: Vec<u8>,
    pub cose: Vec<u8>,
}

type Job = (NewRecord, tokio::sync::oneshot::Sender<Result<u64, String>>);

/// The evidence store of one daemon (a writer thread appends and syncs).
pub struct Evidence {
    dir: PathBuf,
    jobs: std::sync::Mutex<mpsc::Sender<Job>>,
}

impl std::fmt::Debug for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evidence").field("dir", &self.dir).finish()
    }
}

impl Evidence {
    /// Opens (creating) the store in `dir` (the evidence directory itself) and copies the CA
    /// certificates `cas` into it if they are not there yet.
    pub fn open(dir: &Path, cas: &[DomainCas], segment_bytes: u64) -> Result<Self, NrError> {
        std::fs::create_dir_all(dir)?;
        store_cas(dir, cas)?;
        let path = dir.join(FILE);
        // the current file's records follow the last closed file's
        let mut seq = closed_files(dir)?.last().map_or(0, |(next, _)| *next);
        let mut torn = false;
        if path.exists() {
            let text = std::fs::read(&path)?;
            seq += text.iter().filter(|b| **b == b'\n').count() as u64;
            torn = !text.is_empty() && !text.ends_with(b"\n");
        }
        let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
        if torn {
            // a record cut by a crash stays as a line of its own (verify reports it)
            file.write_all(b"\n")?;
            file.sync_data()?;
            seq += 1;
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let current = Current {
            size: file.metadata()?.len(),
            file,
            dir: dir.to_path_buf(),
            segment_bytes: segment_bytes.max(1),
        };
        std::thread::Builder::new()
            .name("evidence".into())
            .spawn(move || writer(current, seq, rx))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            jobs: std::sync::Mutex::new(tx),
        })
    }

    /// The evidence directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keeps `record` durably; returns its sequence number once it is on disk.
    pub async fn keep(&self, record: NewRecord) -> Result<u64, NrError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .lock()
            .expect("evidence writer")
            .send((record, tx))
            .map_err(|_| NrError::Store("the evidence writer stopped".into()))?;
        rx.await
            .map_err(|_| NrError::Store("the evidence writer stopped".into()))?
            .map_err(NrError::Store)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The record file being written.
struct Current {
    file: File,
    size: u64,
    dir: PathBuf,
    segment_bytes: u64,
}

impl Current {
    /// Closes the current file once it holds `segment_bytes` (its records end before
    /// `next`) and begins a new one. A crash between the rename and the new file leaves no
    /// current file, which the next open creates.
    fn rotate(&mut self, next: u64) -> std::io::Result<()> {
        if self.size < self.segment_bytes {
            return Ok(());
        }
        let path = self.dir.join(FILE);
        std::fs::rename(&path, self.dir.join(closed_name(next)))?;
        self.file = OpenOptions::new().create(true).append(true).open(&path)?;
        File::open(&self.dir)?.sync_all()?;
        self.size = 0;
        Ok(())
    }
}

/// Appends every record waiting, syncs once, answers each; closes the file when it is full.
fn writer(mut current: Current, mut seq: u64, jobs: mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while let Ok(more) = jobs.try_recv() {
            batch.push(more);
        }
        let mut text = Vec::new();
        let mut numbers = Vec::new();
        for (record, _) in &batch {
            let record = Record {
                seq,
                kept_ms: now_ms(),
                point: record.point.into(),
                agreement: record.agreement.clone(),
                peer: record.peer.clone(),
                direction: record.direction,
                signer: record.signer.clone(),
                msg: record.msg.clone(),
                body: b64().encode(&record.body),
                cose: b64().encode(&record.cose),
            };
            let mut line = serde_json::to_vec(&record).expect("serializable record");
            line.push(b'\n');
            text.extend_from_slice(&line);
            numbers.push(seq);
            seq += 1;
        }
        let written = current
            .file
            .write_all(&text)
            .and_then(|()| current.file.sync_data())
            .map_err(|e| e.to_string());
        if let Err(error) = &written {
            tracing::error!(%error, "evidence not written");
        } else {
            current.size += text.len() as u64;
            if let Err(error) = current.rotate(seq) {
                tracing::error!(%error, "evidence file not closed; written on");
            }
        }
        for ((_, answer), number) in batch.into_iter().zip(numbers) {
            let _ = answer.send(written.clone().map(|()| number));
        }
    }
}

/// Copies the CA certificates `cas` into `dir/cas/` unless an identical one is there.
fn store_cas(dir: &Path, cas: &[DomainCas]) -> Result<(), NrError> {
    for domain in cas {
        let sub = dir
            .join("cas")
            .join(domain.domain.as_deref().unwrap_or("own"));
        std::fs::create_dir_all(&sub)?;
        for der in &domain.certs {
            let hex: String = super::cose::sha256(der)
                .iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect();
            let path = sub.join(format!("{hex}.pem"));
            if !path.exists() {
                let pem = pem_of(der);
                let tmp = sub.join(format!(".{hex}.tmp"));
                std::fs::write(&tmp, pem)?;
                std::fs::rename(&tmp, &path)?;
            }
        }
    }
    Ok(())
}

fn pem_of(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// The CA certificates kept in evidence directory `dir`.
pub fn stored_cas(dir: &Path) -> Result<Vec<DomainCas>, NrError> {
    let mut all = Vec::new();
    let root = dir.join("cas");
    let Ok(entries) = std::fs::read_dir(&root) else {
        return Ok(all);
    };
    let mut subdirs: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    subdirs.sort();
    for sub in subdirs.into_iter().filter(|p| p.is_dir()) {
        let name = sub
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut certs = Vec::new();
        let mut files: Vec<_> = std::fs::read_dir(&sub)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "pem"))
            .collect();
        files.sort();
        for file in files {
            certs.extend(super::trust::pem_certs(&file)?);
        }
        all.push(DomainCas {
            domain: (name != "own").then_some(name),
            certs,
        });
    }
    Ok(all)
}

/// The trust anchors kept in evidence directory `dir`.
pub fn stored_trust(dir: &Path) -> Result<Trust, NrError> {
    Trust::new(&stored_cas(dir)?)
}

/// One line of the record file: a record, or why it is not one.
pub type Line = Result<Record, String>;

/// Every line of the record files in `dir`, the closed ones in order then the current one
/// (none if there is no file).
pub fn read(dir: &Path) -> Result<Vec<Line>, NrError> {
    let mut files: Vec<PathBuf> = closed_files(dir)?.into_iter().map(|(_, p)| p).collect();
    files.push(dir.join(FILE));
    let mut lines = Vec::new();
    for path in files {
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        for (n, line) in BufReader::new(file).split(b'\n').enumerate() {
            let line = line?;
            lines.push(serde_json::from_slice::<Record>(&line).map_err(|e| {
                format!(
                    "{} line {}: not a record: {e}",
                    name.as_deref().unwrap_or(FILE),
                    n + 1
                )
            }));
        }
    }
    Ok(lines)
}

/// The records of `dir` grouped by agreement, in order.
pub fn by_agreement(lines: &[Line]) -> BTreeMap<(String, String), Vec<&Record>> {
    let mut groups: BTreeMap<(String, String), Vec<&Record>> = BTreeMap::new();
    for record in lines.iter().flatten() {
        groups
            .entry((record.peer.clone(), record.agreement.clone()))
            .or_default()
            .push(record);
    }
    groups
}
