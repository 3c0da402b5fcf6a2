//! Traceability (Y.3818 clause 10): the durable, append-only, hash-chained audit log every
//! daemon writes, and the `qkdni audit` command that shows and verifies it.
//!
//! Every daemon (KM agent, controller, manager) holds an [`AuditLog`] in its state and
//! writes one record per event that changes something or crosses a reference point: who
//! (a NETCONF user, the certificate identity of a REST or ETSI 014 caller, a peer domain or
//! `system`), what (a kind of [`kinds`] and JSON details), when (RFC 3339, ms) and in which
//! transaction or session. Key material is never recorded: a key delivery is recorded by its
//! key IDs, SAE IDs and size.
//!
//! **Callers at the reference points.** Every message a Cxi server (a controller, or a
//! distributed domain's speaker) or the Mxi server (a manager) receives that may change
//! state is recorded once, by the layer outside the signature step
//! ([`hooks::reference_point`]): kind `cxi`/`mxi`, `who` the signature-verified signer (else
//! the TLS peer) as `cert:<name>@<domain>`, `tx` the agreement (`cxi-<transaction>`,
//! `session-<id>`, `mxi-<message>`), details method, path, answer status, TLS identity and
//! signer; refused messages too. The REST APIs (controller, manager, the KM's
//! `/admin/v1/...`) record their state-changing requests with their caller through one
//! middleware, [`hooks::rest_changes`].
//!
//! - [`record`] — the record's JSON line, its hash and the check of one line;
//! - [`log`] — the writer thread (group commit), segments, the head, restart;
//! - [`verify`] — the walk over every segment that `qkdni audit verify` does;
//! - [`cli`] — `qkdni audit show|verify`;
//! - [`hooks`] — what each daemon records, in one place per daemon.
//!
//! **Durability.** The writer makes a group of records durable with one `fdatasync` of the
//! segment and one of the head file; appends never wait for it. Measured on the shared
//! 2-core machine (`cargo test --lib audit::log_tests::commit_cost -- --ignored
//! --nocapture`): one record per commit (the caller waiting for each) costs 1.7 ms, about
//! 570 records a second; with group commit 50 000 records were durable in 2.3 s, about
//! 21 600 a second, each durable within one commit (a few ms) of its append. A record per
//! commit would cap a busy KM (a few records per ETSI 014 request) well below its key
//! delivery rate, so group commit is the policy.
//!
//! **What the chain proves.** Each record's hash covers the previous record's hash, so a
//! changed byte, a removed record or a removed middle segment breaks the chain at the record
//! after it; the head file catches a truncated tail (records, or a whole last segment,
//! removed) that no later record points at. The chain proves integrity against anyone who
//! cannot rewrite the whole log from the altered record on, head included: someone holding
//! the files could recompute every hash after a change. Anchoring the head elsewhere (a
//! signed head, or heads sent to the manager) would close that; it is not done.
//!
//! **Retention.** With `[audit] keep_segments` set, the writer removes the oldest segments
//! when a new one starts, after an `audit-pruned` record naming the last segment removed,
//! its last record's number and hash is durable: the chain goes on, and `qkdni audit verify`
//! accepts a log that starts after segment 1 only when such a record anchors exactly the
//! first segment left (a segment removed by anyone else is a failure, as before).
//!
//! **`[audit]` configuration** (KM, controller, manager): `dir` (default
//! `<data_dir>/audit`; the manager, which has no data directory, uses `audit/` beside its
//! configuration file), `segment_bytes` (default 16 MiB), `keep_segments` (default 0: all)
//! and `enabled` (default true). The
//! switch exists only so that benchmarks can measure what the log costs; a production
//! daemon keeps it on.

pub mod cli;
pub mod hooks;
pub mod log;
#[cfg(test)]
mod log_tests;
pub mod record;
pub mod verify;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use log::AuditLog;

/// The `who` of what nobody outside the daemon asked for.
pub const SYSTEM: &str = "system";

/// Record kinds.
pub mod kinds {
    /// The log's first record.
    pub const AUDIT_CREATED: &str = "audit-created";
    /// The daemon (re)opened its log; the chain continues.
    pub const AUDIT_OPENED: &str = "audit-opened";
    /// At opening the daemon found its log damaged (details: what); verify reports it.
    pub const AUDIT_DAMAGE_FOUND: &str = "audit-damage-found";
    /// The first record of every segment but the first.
    pub const SEGMENT_START: &str = "segment-start";
    /// The oldest segments were removed (`[audit] keep_segments`): the last removed segment,
    /// its last record's number and hash, which the first segment left continues.
    pub const AUDIT_PRUNED: &str = "audit-pruned";
    /// A NETCONF operation changed the running datastore (user, session, diff).
    pub const NETCONF_EDIT: &str = "netconf-edit";
    /// Keys handed to a master SAE (ETSI 014 enc_keys): key IDs, SAE IDs, size.
    pub const KEYS_SUPPLIED: &str = "etsi014-keys-supplied";
    /// Keys handed to a slave SAE (ETSI 014 dec_keys): key IDs, SAE IDs, size.
    pub const KEYS_DELIVERED: &str = "etsi014-keys-delivered";
    /// A key relay started at its origin KM.
    pub const RELAY_STARTED: &str = "relay-started";
    /// A key relay finished at its origin KM (delivered or failed).
    pub const RELAY_FINISHED: &str = "relay-finished";
    /// A key relay's keys arrived at their destination KM.
    pub const RELAY_ARRIVED: &str = "relay-arrived";
    /// A key relay failed.
    pub const RELAY_FAILED: &str = "relay-failed";
    /// Keys crossed (or failed to cross) an IWN's transfer link.
    pub const KEY_TRANSFER: &str = "key-transfer";
    /// A QKD link changed state (faults and recoveries).
    pub const LINK_STATE: &str = "link-state";
    /// A link's key pool fell below its alarm threshold.
    pub const LOW_KEY: &str = "low-key";
    /// A failed NETCONF login.
    pub const SECURITY: &str = "security-event";
    /// An application obtained its first keys / is gone.
    pub const APPLICATION: &str = "application";
    /// A controller event (route installs, reroutes, sessions, Cxi agreements...): the
    /// controller's event kind is in the details.
    pub const CONTROLLER_EVENT: &str = "controller-event";
    /// A REST request that changes state, with its caller.
    pub const REST_CHANGE: &str = "rest-change";
    /// A Cxi agreement step (prepare, vote, commit, abort) with its transaction id.
    pub const CXI: &str = "cxi";
    /// An Mxi message received from the peer manager, with its caller and message id.
    pub const MXI: &str = "mxi";
    /// A manager event (faults, alarms, Mxi reports sent and received): the manager's
    /// event kind is in the details.
    pub const MANAGER_EVENT: &str = "manager-event";
}

/// Errors of the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: no sound head slot")]
    Head(PathBuf),
    #[error("{0}: no audit segment here")]
    NoLog(PathBuf),
    #[error("non-repudiation evidence: {0}")]
    Evidence(#[from] crate::nonrepudiation::EvidenceError),
}

impl AuditError {
    /// Maps an I/O error on `path`.
    pub fn io(path: &Path) -> impl Fn(std::io::Error) -> AuditError + '_ {
        move |source| AuditError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// The `[audit]` section of a daemon's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Whether the log is written (default true; false only to measure its cost).
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// The log's directory (default `<state directory>/audit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Size at which a new segment starts (default 16 MiB).
    #[serde(default = "segment_bytes")]
    pub segment_bytes: u64,
    /// How many segments are kept, the current one included (default 0: all). When a new
    /// segment starts and more are there, the oldest are removed after an `audit-pruned`
    /// record naming the last one removed is durable (archive them before, if they matter).
    #[serde(default)]
    pub keep_segments: u64,
}

fn enabled() -> bool {
    true
}

fn segment_bytes() -> u64 {
    16 * 1024 * 1024
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: None,
            segment_bytes: segment_bytes(),
            keep_segments: 0,
        }
    }
}

impl AuditConfig {
    /// The log's directory for a daemon whose state directory is `state_dir`.
    pub fn dir_in(&self, state_dir: &Path) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| state_dir.join("audit"))
    }

    /// Whether the section is the default one (left out of written configurations).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}
