//! The writer: an append-only, hash-chained log in segment files, written by one dedicated
//! thread so that no async executor ever waits on the disk.
//!
//! - Callers hand entries over a channel ([`AuditLog::append`] never blocks); the writer
//!   numbers them, chains them and writes them in arrival order.
//! - **Group commit**: the writer takes every entry waiting in the channel, writes them, then
//!   makes them durable with one `fdatasync` of the segment and one of the head file. A lone
//!   entry is durable one `fdatasync` pair after it is appended; under load many entries share
//!   one. [`AuditLog::sync`] waits until everything appended before it is durable. (Figures in
//!   the module docs of [`crate::audit`].)
//! - **Segments**: `segment-NNNNNN.jsonl`; when a record would take a segment past the size
//!   limit, a new segment starts with a `segment-start` record naming the previous segment
//!   and its last hash (the chain itself simply continues across the files).
//! - **Head**: `head` holds the last durable record's sequence number, hash and segment, so
//!   that a truncated tail (whole records or a whole last segment removed) is detected
//!   although no later record points at what was removed. Two fixed slots are written in
//!   turn, each with its own checksum, so a torn write of one leaves the other.
//! - **Restart**: the last segment is read and its chain checked; a partly written last line
//!   (a crash in the middle of a write, never acknowledged as durable) is cut off; the chain
//!   continues from the last record. Anything else found wrong (a record that does not check,
//!   a head ahead of the log) is not repaired: it is written into the chain as an
//!   `audit-damage-found` record, which `qkdni audit verify` reports as a failure.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::{json, Value};

use super::record::{self, Entry, Record, GENESIS};
use super::{kinds, AuditConfig, AuditError};

/// Size of one head slot.
const SLOT: u64 = 256;
/// Most entries written before one group commit.
const MAX_BATCH: usize = 4096;

/// The file name of segment `n`.
pub fn segment_name(n: u64) -> String {
    format!("segment-{n:06}.jsonl")
}

/// The number of a segment file name.
pub fn segment_number(name: &str) -> Option<u64> {
    name.strip_prefix("segment-")?
        .strip_suffix(".jsonl")?
        .parse()
        .ok()
}

/// The segment files of `dir`, by number.
pub fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(n) = entry.file_name().to_str().and_then(segment_number) {
            found.push((n, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// What the head file says: the last durable record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
    pub segment: String,
}

impl Head {
    fn slot(&self) -> Vec<u8> {
        let check =
            record::sha256_hex(format!("{}:{}:{}", self.seq, self.hash, self.segment).as_bytes());
        let text =
            json!({"seq": self.seq, "hash": self.hash, "segment": self.segment, "check": check})
                .to_string();
        let mut slot = text.into_bytes();
        slot.resize(SLOT as usize - 1, b' ');
        slot.push(b'\n');
        slot
    }

    fn parse_slot(bytes: &[u8]) -> Option<Head> {
        let value: Value = serde_json::from_slice(bytes.trim_ascii()).ok()?;
        let head = Head {
            seq: value.get("seq")?.as_u64()?,
            hash: value.get("hash")?.as_str()?.to_owned(),
            segment: value.get("segment")?.as_str()?.to_owned(),
        };
        let check =
            record::sha256_hex(format!("{}:{}:{}", head.seq, head.hash, head.segment).as_bytes());
        (value.get("check")?.as_str()? == check).then_some(head)
    }

    /// Reads `<dir>/head`: the newer sound slot; `Ok(None)` when there is no head file.
    pub fn read(dir: &Path) -> Result<Option<Head>, AuditError> {
        let path = dir.join("head");
        let mut bytes = Vec::new();
        match File::open(&path) {
            Ok(mut f) => f.read_to_end(&mut bytes).map_err(AuditError::io(&path))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(AuditError::io(&path)(e)),
        };
        let best = bytes
            .chunks(SLOT as usize)
            .filter_map(Head::parse_slot)
            .max_by_key(|h| h.seq);
        match best {
            Some(head) => Ok(Some(head)),
            None => Err(AuditError::Head(path)),
        }
    }
}

/// Messages to the writer.
enum Msg {
    Append(Entry),
    Sync(tokio::sync::oneshot::Sender<()>),
}

/// The shared part of an enabled log: the channel to the writer and the writer thread,
/// which ends (after a last group commit) when the last handle is dropped.
struct Shared {
    sender: Mutex<Option<mpsc::Sender<Msg>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    dir: PathBuf,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.sender.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

/// A daemon's audit log; cheap to clone. A disabled log (`[audit] enabled = false`, or
/// [`AuditLog::disabled`]) records nothing.
#[derive(Clone, Default)]
pub struct AuditLog {
    shared: Option<Arc<Shared>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.shared {
            Some(s) => write!(f, "AuditLog({})", s.dir.display()),
            None => write!(f, "AuditLog(disabled)"),
        }
    }
}

impl AuditLog {
    /// A log that records nothing.
    pub fn disabled() -> Self {
        Self { shared: None }
    }

    /// The log of a daemon whose state directory is `state_dir`, as `config` says:
    /// `<state_dir>/audit` unless `config.dir` names another directory; disabled when
    /// `config.enabled` is false.
    pub fn for_daemon(
        state_dir: &Path,
        actor: impl Into<String>,
        config: &AuditConfig,
    ) -> Result<Self, AuditError> {
        if !config.enabled {
            tracing::warn!("audit log disabled by configuration");
            return Ok(Self::disabled());
        }
        Self::open_keeping(
            &config.dir_in(state_dir),
            actor,
            config.segment_bytes,
            config.keep_segments,
        )
    }

    /// Opens (or creates) the log in `dir`, keeping every segment, and starts its writer.
    pub fn open(
        dir: &Path,
        actor: impl Into<String>,
        segment_bytes: u64,
    ) -> Result<Self, AuditError> {
        Self::open_keeping(dir, actor, segment_bytes, 0)
    }

    /// Opens (or creates) the log in `dir` and starts its writer, which keeps the newest
    /// `keep_segments` segments (all with 0); records an `audit-opened` record (or
    /// `audit-damage-found` when the tail did not check).
    pub fn open_keeping(
        dir: &Path,
        actor: impl Into<String>,
        segment_bytes: u64,
        keep_segments: u64,
    ) -> Result<Self, AuditError> {
        let _span = tracing::info_span!("audit_open", dir = %dir.display()).entered();
        std::fs::create_dir_all(dir).map_err(AuditError::io(dir))?;
        let mut writer = Writer::open(dir, actor.into(), segment_bytes.max(1024))?;
        writer.keep_segments = keep_segments;
        let (sender, receiver) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(AuditError::io(dir))?;
        Ok(Self {
            shared: Some(Arc::new(Shared {
                sender: Mutex::new(Some(sender)),
                thread: Mutex::new(Some(thread)),
                dir: dir.to_owned(),
            })),
        })
    }

    /// Whether records are written.
    pub fn is_enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// The directory of the log, when enabled.
    pub fn dir(&self) -> Option<&Path> {
        self.shared.as_ref().map(|s| s.dir.as_path())
    }

    /// Records an event; never blocks (the writer thread writes it and makes it durable at
    /// its next group commit).
    pub fn append(&self, kind: &str, who: &str, tx: Option<&str>, details: Value) {
        self.send(Msg::Append(Entry {
            kind: kind.to_owned(),
            who: who.to_owned(),
            tx: tx.map(str::to_owned),
            details,
        }));
    }

    fn send(&self, msg: Msg) {
        let Some(shared) = &self.shared else {
            return;
        };
        let sender = shared.sender.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = sender.as_ref() {
            if sender.send(msg).is_err() {
                tracing::error!("the audit writer is gone: record lost");
            }
        }
    }

    /// Waits until every record appended before this call is durable.
    pub async fn sync(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Msg::Sync(tx));
        let _ = rx.await;
    }

    /// [`Self::sync`] for threads outside an async runtime.
    pub fn sync_blocking(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Msg::Sync(tx));
        let _ = rx.blocking_recv();
    }
}

/// The writer's state: the open segment and the end of the chain.
struct Writer {
    dir: PathBuf,
    actor: String,
    segment_bytes: u64,
    number: u64,
    file: File,
    size: u64,
    seq: u64,
    hash: String,
    head: File,
    head_slot: u64,
    /// The segment was written since the last commit.
    dirty: bool,
    /// Segments kept (0: all).
    keep_segments: u64,
}

impl Writer {
    fn open(dir: &Path, actor: String, segment_bytes: u64) -> Result<Self, AuditError> {
        let head_path = dir.join("head");
        let head_before = Head::read(dir).unwrap_or_else(|error| {
            tracing::error!(%error, "audit head unreadable");
            None
        });
        let head = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&head_path)
            .map_err(AuditError::io(&head_path))?;
        let found = segments(dir).map_err(AuditError::io(dir))?;
        let mut problems = Vec::new();
        // where the chain goes on, and the segment it goes on in
        let mut start_segment = None;
        let (mut number, mut seq, mut hash, mut size) = (1, 0, GENESIS.to_owned(), 0);
        match found.last() {
            None => {
                if let Some(h) = &head_before {
                    problems.push(format!(
                        "no segment left, but the head records record {} in {}",
                        h.seq, h.segment
                    ));
                }
            }
            Some((n, path)) => {
                number = *n;
                match read_tail(path, &mut problems)? {
                    Some(tail) => (seq, hash, size) = tail,
                    None => {
                        // an empty last segment (a crash right after a rotation) takes the
                        // chain on from the segment before it; one that holds no sound
                        // record at all is left as found and a new segment starts
                        let empty = std::fs::metadata(path)
                            .map(|m| m.len() == 0)
                            .unwrap_or(false);
                        let before = found.len().checked_sub(2).map(|i| &found[i]);
                        if let Some((m, before)) = before {
                            if let Some(tail) = read_tail(before, &mut problems)? {
                                (seq, hash) = (tail.0, tail.1);
                            }
                            start_segment = Some(segment_name(*m));
                        } else if !empty {
                            problems.push(format!("{} holds no sound record", path.display()));
                        }
                        if !empty {
                            if let Some(h) = &head_before {
                                if h.seq > seq {
                                    (seq, hash) = (h.seq, h.hash.clone());
                                }
                            }
                            start_segment = Some(segment_name(number));
                            number += 1;
                        }
                    }
                }
            }
        }
        let path = dir.join(segment_name(number));
        if let Some(h) = &head_before {
            if h.seq > seq {
                problems.push(format!(
                    "the log ends at record {seq} but its head records {} ({}): records were removed",
                    h.seq, h.segment
                ));
            }
        }
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(AuditError::io(&path))?;
        sync_dir(dir);
        let mut writer = Self {
            dir: dir.to_owned(),
            actor,
            segment_bytes,
            number,
            file,
            size,
            seq,
            hash,
            head,
            head_slot: 0,
            dirty: false,
            keep_segments: 0,
        };
        if let Some(previous) = start_segment {
            writer.write_line(&Entry {
                kind: kinds::SEGMENT_START.into(),
                who: "system".into(),
                tx: None,
                details: json!({"previous_segment": previous, "previous_seq": writer.seq, "previous_hash": writer.hash}),
            })?;
        }
        let previous = writer.seq;
        let entry = if writer.seq == 0 && problems.is_empty() {
            Entry {
                kind: kinds::AUDIT_CREATED.into(),
                who: "system".into(),
                tx: None,
                details: json!({"pid": std::process::id(), "version": env!("CARGO_PKG_VERSION")}),
            }
        } else if problems.is_empty() {
            Entry {
                kind: kinds::AUDIT_OPENED.into(),
                who: "system".into(),
                tx: None,
                details: json!({"pid": std::process::id(), "version": env!("CARGO_PKG_VERSION"), "continues": previous}),
            }
        } else {
            for problem in &problems {
                tracing::error!(problem, "audit log damaged");
            }
            Entry {
                kind: kinds::AUDIT_DAMAGE_FOUND.into(),
                who: "system".into(),
                tx: None,
                details: json!({"pid": std::process::id(), "continues": previous, "problems": problems}),
            }
        };
        writer.write(&entry)?;
        writer.commit()?;
        tracing::info!(seq = writer.seq, segment = %segment_name(writer.number), "audit log open");
        Ok(writer)
    }

    fn run(&mut self, receiver: mpsc::Receiver<Msg>) {
        let mut waiters = Vec::new();
        while let Ok(first) = receiver.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(msg) => batch.push(msg),
                    Err(_) => break,
                }
            }
            for msg in batch {
                match msg {
                    Msg::Append(entry) => {
                        if let Err(error) = self.write(&entry) {
                            tracing::error!(%error, kind = %entry.kind, "audit record not written");
                        }
                    }
                    Msg::Sync(waiter) => waiters.push(waiter),
                }
            }
            if let Err(error) = self.commit() {
                tracing::error!(%error, "audit log commit failed");
            }
            for waiter in waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
        if let Err(error) = self.commit() {
            tracing::error!(%error, "audit log final commit failed");
        }
    }

    /// Writes one record (rotating first when it would take the segment past its limit).
    fn write(&mut self, entry: &Entry) -> Result<(), AuditError> {
        let (line, _) = self.encode(entry);
        if self.size > 0 && self.size + line.len() as u64 > self.segment_bytes {
            self.rotate()?;
        }
        self.write_line(entry)
    }

    fn encode(&self, entry: &Entry) -> (Vec<u8>, String) {
        record::encode(
            self.seq + 1,
            &record::now_ms(),
            &self.actor,
            entry,
            &self.hash,
        )
    }

    fn write_line(&mut self, entry: &Entry) -> Result<(), AuditError> {
        let (line, hash) = self.encode(entry);
        let path = self.dir.join(segment_name(self.number));
        if let Err(error) = self.file.write_all(&line) {
            // leave no partial line behind: the chain goes on from the last whole record
            let _ = self.file.set_len(self.size);
            return Err(AuditError::io(&path)(error));
        }
        self.size += line.len() as u64;
        self.seq += 1;
        self.hash = hash;
        self.dirty = true;
        Ok(())
    }

    /// Closes the current segment (durably) and starts the next one with a
    /// `segment-start` record.
    fn rotate(&mut self) -> Result<(), AuditError> {
        self.commit()?;
        let previous = segment_name(self.number);
        let number = self.number + 1;
        let path = self.dir.join(segment_name(number));
        self.file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(AuditError::io(&path))?;
        sync_dir(&self.dir);
        self.number = number;
        self.size = 0;
        let start = Entry {
            kind: kinds::SEGMENT_START.into(),
            who: "system".into(),
            tx: None,
            details: json!({"previous_segment": previous, "previous_seq": self.seq, "previous_hash": self.hash}),
        };
        self.write_line(&start)?;
        if self.keep_segments > 0 && self.number > self.keep_segments {
            if let Err(error) = self.prune(self.number - self.keep_segments) {
                // kept: tried again at the next rotation
                tracing::error!(%error, "old audit segments not removed");
            }
        }
        Ok(())
    }

    /// Removes the segments up to number `through` (those still there), after a durable
    /// `audit-pruned` record anchors the segment after it: the last removed record's number
    /// and hash, as that segment's `segment-start` names them.
    fn prune(&mut self, through: u64) -> Result<(), AuditError> {
        let found = segments(&self.dir).map_err(AuditError::io(&self.dir))?;
        let old: Vec<&(u64, PathBuf)> = found.iter().filter(|(n, _)| *n <= through).collect();
        if old.is_empty() {
            return Ok(());
        }
        let next = self.dir.join(segment_name(through + 1));
        let bytes = std::fs::read(&next).map_err(AuditError::io(&next))?;
        let first = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
        let start = record::check_line(first).map_err(|e| {
            AuditError::io(&next)(std::io::Error::other(format!(
                "its first record does not check: {e}"
            )))
        })?;
        if start.kind != kinds::SEGMENT_START {
            return Err(AuditError::io(&next)(std::io::Error::other(
                "it does not begin with segment-start",
            )));
        }
        self.write_line(&Entry {
            kind: kinds::AUDIT_PRUNED.into(),
            who: "system".into(),
            tx: None,
            details: json!({
                "through_segment": segment_name(through),
                "through_seq": start.seq - 1,
                "through_hash": start.prev,
                "segments_removed": old.len(),
            }),
        })?;
        self.commit()?;
        for (_, path) in old {
            std::fs::remove_file(path).map_err(AuditError::io(path))?;
        }
        sync_dir(&self.dir);
        tracing::info!(through = %segment_name(through), "old audit segments removed");
        Ok(())
    }

    /// Makes what was written durable, then records it in the head.
    fn commit(&mut self) -> Result<(), AuditError> {
        if !self.dirty {
            return Ok(());
        }
        let path = self.dir.join(segment_name(self.number));
        self.file.sync_data().map_err(AuditError::io(&path))?;
        let head = Head {
            seq: self.seq,
            hash: self.hash.clone(),
            segment: segment_name(self.number),
        };
        let head_path = self.dir.join("head");
        self.head
            .write_all_at(&head.slot(), self.head_slot * SLOT)
            .map_err(AuditError::io(&head_path))?;
        self.head.sync_data().map_err(AuditError::io(&head_path))?;
        self.head_slot = 1 - self.head_slot;
        self.dirty = false;
        Ok(())
    }
}

/// Reads a segment's tail: (last seq, last hash, size kept), `None` when it holds no sound
/// record; a partial last line is cut off; records that do not check become `problems`.
fn read_tail(
    path: &Path,
    problems: &mut Vec<String>,
) -> Result<Option<(u64, String, u64)>, AuditError> {
    let bytes = std::fs::read(path).map_err(AuditError::io(path))?;
    let name = path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let mut keep = bytes.len();
    if !bytes.is_empty() && !bytes.ends_with(b"\n") {
        keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        tracing::warn!(segment = %name, bytes = bytes.len() - keep, "cutting off a partly written last record");
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(AuditError::io(path))?;
        file.set_len(keep as u64).map_err(AuditError::io(path))?;
        file.sync_data().map_err(AuditError::io(path))?;
    }
    let mut last: Option<Record> = None;
    for (i, line) in bytes[..keep].split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        match record::check_line(line) {
            Ok(r) => {
                if let Some(p) = &last {
                    if r.seq != p.seq + 1 || r.prev != p.hash {
                        problems.push(format!(
                            "{name} line {}: record {} does not follow record {}",
                            i + 1,
                            r.seq,
                            p.seq
                        ));
                    }
                }
                last = Some(r);
            }
            Err(e) => problems.push(format!("{name} line {}: {e}", i + 1)),
        }
    }
    Ok(last.map(|r| (r.seq, r.hash, keep as u64)))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}
