//! What the controller instance receives ([`Input`]), the changes it runs one after the
//! other ([`Job`]) and how they end ([`Then`]), and what it publishes for readers ([`View`]).

use std::time::Instant;

use tokio::sync::oneshot;
use uuid::Uuid;

use super::ck::southbound::SouthboundError;
use super::cxi::{PrepareRequest, StatusReport, TransactionResult, Vote};
use super::error::{ControlError, Reply};
use super::sessions::{Interworking, Session, SessionPath};
use super::topology::{AgentView, Topology};

/// What readers see: the state as of the last input.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub topology: Topology,
    /// Sessions in creation order.
    pub sessions: Vec<Session>,
    /// Sessions whose route is being agreed with a peer controller.
    pub agreeing: Vec<Uuid>,
    /// Installs completed since start (a poll read during one is not trusted for routes).
    pub installs: u64,
}

/// Everything the instance reacts to.
// moved once per request or job: boxing would buy nothing
#[allow(clippy::large_enum_variant)]
pub(super) enum Input {
    /// An orchestrator creates a session.
    Create {
        master: String,
        slave: String,
        rate_bps: f64,
        reply: Reply<Session>,
    },
    /// A KM asks for the interworking route of its SAE (procedure 1).
    KmRoute {
        km: String,
        master: String,
        slave: String,
        reply: Reply<Session>,
    },
    Delete {
        id: Uuid,
        reply: Reply<()>,
    },
    /// An agent's notification.
    LinkChanged {
        link: String,
        up: bool,
        at: Instant,
    },
    /// Every agent read (`installs`: the installs completed when the reads began).
    Polled {
        views: Vec<(String, Result<AgentView, String>)>,
        installs: u64,
        started: Instant,
        /// What to name the reroute pass that follows (`None`: no pass).
        trigger: Option<&'static str>,
    },
    /// The QCLM's diagnosis of an interworking relay failure.
    Diagnosis {
        destination: Option<String>,
        detail: String,
        at: Instant,
        reply: oneshot::Sender<String>,
    },
    PeerPrepare {
        from: String,
        request: PrepareRequest,
        reply: oneshot::Sender<Vote>,
    },
    PeerCommit {
        from: String,
        transaction: Uuid,
        reply: oneshot::Sender<TransactionResult>,
    },
    PeerAbort {
        from: String,
        transaction: Uuid,
        reply: oneshot::Sender<TransactionResult>,
    },
    PeerDelete {
        from: String,
        id: Uuid,
        reply: oneshot::Sender<bool>,
    },
    PeerStatus {
        from: String,
        report: StatusReport,
        at: Instant,
    },
    /// The outcome of install `id`.
    Installed {
        id: u64,
        result: Result<(), SouthboundError>,
    },
    /// The outcome of a route agreement with a peer controller.
    Agreed {
        agreement: Agreement,
        result: Result<(Vec<SessionPath>, Interworking), ControlError>,
    },
    /// Answered once every job queued before it has finished.
    Flush {
        reply: oneshot::Sender<()>,
    },
}

/// What a route agreement was for.
// moved once per request or job: boxing would buy nothing
#[allow(clippy::large_enum_variant)]
pub(super) enum Agreement {
    /// A new interworking session (its skeleton; `by` created it).
    New { session: Session, by: String },
    /// A new route for an existing one.
    Reroute {
        id: Uuid,
        trigger: String,
        started: Instant,
    },
}

/// A change that may need relay routes installed, run one at a time.
// moved once per request or job: boxing would buy nothing
#[allow(clippy::large_enum_variant)]
pub(super) enum Job {
    Create {
        session: Session,
        peer: Option<(String, Uuid)>,
        replies: Vec<Reply<Session>>,
    },
    Delete {
        id: Uuid,
        reply: Reply<()>,
    },
    Reroute {
        trigger: String,
        started: Instant,
    },
    /// Brings the KMs' routes in line with the sessions.
    Reconcile,
    /// Installs this domain's part of a route the peer agreed to and committed.
    InstallAgreed {
        id: Uuid,
        paths: Vec<SessionPath>,
        iw: Interworking,
        trigger: String,
        started: Instant,
    },
    PeerCommit {
        from: String,
        transaction: Uuid,
        reply: oneshot::Sender<TransactionResult>,
    },
    PeerAbort {
        from: String,
        transaction: Uuid,
        reply: oneshot::Sender<TransactionResult>,
    },
    PeerDelete {
        from: String,
        id: Uuid,
        reply: oneshot::Sender<bool>,
    },
    DropLeftOver {
        from: String,
        live: Vec<Uuid>,
    },
    Flush(oneshot::Sender<()>),
}

/// How a job finishes once its install is done (or failed).
// moved once per request or job: boxing would buy nothing
#[allow(clippy::large_enum_variant)]
pub(super) enum Then {
    /// Nothing to commit; a failed install is retried on the next change.
    Nothing,
    Created {
        session: Session,
        peer: Option<(String, Uuid)>,
        replies: Vec<Reply<Session>>,
    },
    Deleted(Reply<()>),
    Rerouted {
        changed: Vec<(Uuid, bool)>,
        trigger: String,
        started: Instant,
    },
    Agreed {
        id: Uuid,
        previous: Session,
        trigger: String,
        started: Instant,
    },
    PeerCommitted {
        transaction: Uuid,
        segment: Session,
        previous: Option<Session>,
        reply: oneshot::Sender<TransactionResult>,
    },
    PeerAborted {
        transaction: Uuid,
        reply: oneshot::Sender<TransactionResult>,
    },
    /// Answers once no install is in flight.
    Flushed(oneshot::Sender<()>),
}
