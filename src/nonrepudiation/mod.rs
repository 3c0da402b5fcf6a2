//! Non-repudiation (Y.3818 clause 10): interworking messages signed by the sending domain,
//! verified by the receiver, whose signed originals are kept as evidence.
//!
//! Every Cxi prepare, commit, abort, status and session end, every Mxi report and fault
//! report, and every Kxi/Kxi' acknowledgement is signed by the party that sends it with the
//! private key of its TLS certificate (issued by its domain's CA): a COSE_Sign1 (RFC 9052,
//! [`cose`]) over the exact body bytes (detached), in the HTTP header `Qkdni-Signature`. The
//! answers that carry agreement (Cxi votes and commit/abort results, Mxi acceptances, Kxi
//! acknowledgements answered inline) are signed by the answering party the same way and name
//! the request they answer, and so are a KM's answers to Kxi-2 relay status reads (which stand
//! for an acknowledgement that did not come). Kxi offers, voids and status reads of a
//! third-party ETSI GS QKD 020 client come unsigned and are accepted: the acknowledgement this
//! KM gives them inline is signed and kept all the same ([`http::Lenient`]). The receiver verifies before anything happens: the signature over
//! the body it received, the signer's chain against the peer domain's CA, the signer being
//! the TLS peer, the signed message line being this request's method and path; a missing or
//! bad signature gets the reference point's standard error (`401`, `403` for a signer other
//! than the TLS peer) and changes nothing.
//!
//! Both ends keep every signed original, theirs and the peer's, in the evidence store of
//! their state directory ([`evidence`]), indexed by agreement: `qkdni audit show` lists them
//! ([`report`]), `qkdni audit verify` proves each again ([`verify_all`]) against the
//! certificate it embeds and the CA certificates the store copied at first use.
//!
//! - [`cose`] — signing and verifying one message;
//! - [`trust`] — which domain's CA certifies a signer;
//! - [`evidence`] — the store;
//! - [`http`] — the step in the servers (a middleware) and the clients (one helper);
//! - [`report`](mod@report) — `audit show` and `audit verify`.
//!
//! Each daemon opens its [`Notary`] once at start ([`install`]); the reference points' servers
//! and clients built from the same TLS identity find it with [`for_tls`].

pub mod cose;
pub mod evidence;
pub mod http;
pub mod report;
#[cfg(test)]
mod tests;
pub mod trust;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use axum::http::HeaderValue;
use serde::{Deserialize, Serialize};

use crate::tls::TlsFiles;
pub use cose::{Signer, Verified};
pub use evidence::{Direction, Evidence, NewRecord, Record};
pub use trust::Trust;

/// Errors of signing, verifying and keeping evidence.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Signature(#[from] NrError),
}

/// Why a signature was refused or could not be made or kept.
#[derive(Debug, thiserror::Error)]
pub enum NrError {
    #[error("unsigned: {0}")]
    Missing(String),
    #[error("malformed signature: {0}")]
    Malformed(String),
    #[error("the signature does not verify over the body")]
    BadSignature,
    #[error("untrusted signer: {0}")]
    Untrusted(String),
    #[error("signed by {signed}, but the peer is {peer}")]
    SignerMismatch { signed: String, peer: String },
    #[error("signed for {signed:?}, not for {actual:?}")]
    WrongMessage { signed: String, actual: String },
    #[error("signing key: {0}")]
    Key(String),
    #[error("evidence store: {0}")]
    Store(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// `[nonrepudiation]` of a daemon's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Sign, verify and keep interworking messages (default). `false` exists to measure the
    /// cost in benches only: a peer that signs is still accepted, nothing is required,
    /// signed or kept, and a peer that requires signatures refuses this daemon's messages.
    pub sign: bool,
    /// The evidence directory (default: `<data_dir>/evidence`; a manager's: `evidence` next
    /// to its configuration file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence_dir: Option<PathBuf>,
    /// Size at which the evidence file is closed and a new one begun (the closed one keeps
    /// its records, named by the number of the record after its last).
    pub segment_bytes: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            sign: true,
            evidence_dir: None,
            segment_bytes: evidence::SEGMENT_BYTES,
        }
    }
}

impl Settings {
    /// Whether these are the defaults (left out of written configurations).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// A daemon's signing key, trust anchors and evidence store.
pub struct Notary {
    enabled: bool,
    signer: Option<Signer>,
    identity: String,
    trust: Trust,
    evidence: Option<Evidence>,
}

impl std::fmt::Debug for Notary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notary")
            .field("enabled", &self.enabled)
            .field("identity", &self.identity)
            .field("evidence", &self.evidence)
            .finish()
    }
}

impl Notary {
    /// The notary of TLS identity `files` under `settings`, keeping evidence in
    /// `evidence_dir` if given (`settings.evidence_dir` takes precedence).
    pub fn open(
        files: &TlsFiles,
        settings: &Settings,
        evidence_dir: Option<&Path>,
    ) -> Result<Self, NrError> {
        if !settings.sign {
            tracing::warn!("signing of interworking messages is off (bench setting)");
            return Ok(Self {
                enabled: false,
                signer: None,
                identity: String::new(),
                trust: Trust::default(),
                evidence: None,
            });
        }
        let cas = trust::cas_of(files)?;
        let trust = Trust::new(&cas)?;
        let signer = Signer::of(files)?;
        let identity = trust
            .identity(signer.chain(), std::time::SystemTime::now())
            .map_err(|e| NrError::Key(format!("this party's own certificate: {e}")))?;
        let dir = settings.evidence_dir.as_deref().or(evidence_dir);
        let evidence = dir
            .map(|d| Evidence::open(d, &cas, settings.segment_bytes))
            .transpose()?;
        Ok(Self {
            enabled: true,
            signer: Some(signer),
            identity,
            trust,
            evidence,
        })
    }

    /// A notary that signs nothing and trusts no one (every signed message is refused), for
    /// a part whose own key could not be loaded.
    pub fn unusable() -> Self {
        Self {
            enabled: true,
            signer: None,
            identity: String::new(),
            trust: Trust::default(),
            evidence: None,
        }
    }

    /// Whether messages are signed and checked.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// This party's identity as its signatures name it.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The evidence store, if this notary keeps one.
    pub fn evidence(&self) -> Option<&Evidence> {
        self.evidence.as_ref()
    }

    /// Verifies `cose` over `body`: signed by `peer` (its chain certified by its domain's CA)
    /// for message line `line`.
    pub fn check(
        &self,
        cose: &[u8],
        body: &[u8],
        peer: &str,
        line: &str,
    ) -> Result<Verified, NrError> {
        let verified = cose::verify(cose, body, &self.trust)?;
        if verified.signer != peer {
            return Err(NrError::SignerMismatch {
                signed: verified.signer,
                peer: peer.to_owned(),
            });
        }
        if verified.msg != line {
            return Err(NrError::WrongMessage {
                signed: verified.msg,
                actual: line.to_owned(),
            });
        }
        Ok(verified)
    }

    /// Signs `body` as message line `line` (answering the request whose COSE_Sign1 is `re`)
    /// and keeps it; the `Qkdni-Signature` header value, or `None` when signing is off.
    pub async fn sign_and_keep(
        &self,
        point: &'static str,
        agreement: &str,
        peer: &str,
        line: &str,
        body: &[u8],
        re: Option<&[u8]>,
    ) -> Result<Option<HeaderValue>, NrError> {
        let Some(signer) = self.signer.as_ref().filter(|_| self.enabled) else {
            return Ok(None);
        };
        let digest = re.map(cose::sha256);
        let cose = signer.sign(body, line, digest.as_deref())?;
        let header = http::header_value(&cose);
        self.keep(NewRecord {
            point,
            agreement: agreement.to_owned(),
            peer: peer.to_owned(),
            direction: Direction::Sent,
            signer: self.identity.clone(),
            msg: line.to_owned(),
            body: body.to_vec(),
            cose,
        })
        .await?;
        Ok(Some(header))
    }

    /// Keeps `record` durably (nothing without an evidence store).
    pub async fn keep(&self, record: NewRecord) -> Result<(), NrError> {
        match &self.evidence {
            Some(evidence) => evidence.keep(record).await.map(drop),
            None => Ok(()),
        }
    }
}

type Registry = Mutex<HashMap<PathBuf, Arc<Notary>>>;

fn registry() -> &'static Registry {
    static NOTARIES: OnceLock<Registry> = OnceLock::new();
    NOTARIES.get_or_init(Registry::default)
}

/// Opens the notary of a daemon (TLS identity `files`, evidence in `evidence_dir` unless
/// the settings name one) and makes it the one [`for_tls`] finds for `files.cert`.
pub fn install(
    files: &TlsFiles,
    settings: &Settings,
    evidence_dir: Option<&Path>,
) -> Result<Arc<Notary>, NrError> {
    let notary = Arc::new(Notary::open(files, settings, evidence_dir)?);
    registry()
        .lock()
        .expect("notaries")
        .insert(files.cert.clone(), notary.clone());
    Ok(notary)
}

/// The notary of TLS identity `files`: the one its daemon installed, else one that signs
/// and verifies with the defaults but keeps no evidence (a part started on its own, as in
/// unit tests).
pub fn for_tls(files: &TlsFiles) -> Result<Arc<Notary>, NrError> {
    let mut notaries = registry().lock().expect("notaries");
    if let Some(notary) = notaries.get(&files.cert) {
        return Ok(notary.clone());
    }
    let notary = Arc::new(Notary::open(files, &Settings::default(), None)?);
    notaries.insert(files.cert.clone(), notary.clone());
    Ok(notary)
}

/// The evidence directory of state directory `dir` (or `dir` itself when it is one).
fn evidence_dir(dir: &Path) -> PathBuf {
    if dir.join(evidence::FILE).exists() && !dir.join(evidence::DIR).exists() {
        dir.to_path_buf()
    } else {
        dir.join(evidence::DIR)
    }
}

/// Writes the agreements recorded in a daemon's state directory `dir` (one per line) for
/// `qkdni audit show`. Interface used by `crate::audit`.
pub fn report(dir: &Path, out: &mut dyn Write) -> Result<(), EvidenceError> {
    report::show(&evidence_dir(dir), out)
}

/// Proves every agreement recorded in `dir` against the signer's certificate for `qkdni audit
/// verify`, writing one line per agreement; returns how many failed. Interface used by
/// `crate::audit`.
pub fn verify_all(dir: &Path, out: &mut dyn Write) -> Result<usize, EvidenceError> {
    report::verify(&evidence_dir(dir), out)
}
