//! The controller's state, as the instance owns it: the domain's topology, the sessions in
//! their order, and what interworking transactions are in progress.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

use uuid::Uuid;

use super::sessions::Session;
use super::topology::Topology;

/// Interworking state of a controller.
#[derive(Default)]
pub struct InterworkingState {
    /// Segments prepared for a peer's transaction, awaiting commit or abort.
    pub prepared: BTreeMap<Uuid, (Session, Instant)>,
    /// Committed transactions and the segment each replaced (for an abort after commit).
    pub committed: BTreeMap<Uuid, Option<Session>>,
    pub committed_order: VecDeque<Uuid>,
    /// Sessions the peer reported faults on: rerouted on the next pass.
    pub suspect: BTreeSet<Uuid>,
    /// When segments were last committed (since start): a session list sent before a commit
    /// must not remove it.
    pub committed_at: BTreeMap<Uuid, Instant>,
    /// Segments whose fault was reported to the coordinator, and when (reported again after
    /// [`super::interworking::REPORT_AGAIN`] until it reroutes them).
    pub notified: BTreeMap<Uuid, Instant>,
}

/// The controller's state.
pub(super) struct State {
    pub(super) topology: Topology,
    pub(super) sessions: BTreeMap<Uuid, Session>,
    /// Creation order of sessions (later sessions win where routes to one destination meet).
    pub(super) order: Vec<Uuid>,
    /// Interworking state (Cxi transactions, faults reported by the peer).
    pub(super) interworking: InterworkingState,
}

impl State {
    /// Adds or replaces a session (a new one comes last in the order: its routes win where
    /// they meet others').
    pub(super) fn put(&mut self, session: Session) {
        if !self.sessions.contains_key(&session.id) {
            self.order.push(session.id);
        }
        self.sessions.insert(session.id, session);
    }

    /// Removes a session from the sessions and their order.
    pub(super) fn take(&mut self, id: Uuid) -> Option<Session> {
        self.order.retain(|s| *s != id);
        self.sessions.remove(&id)
    }
}
