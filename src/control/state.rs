//! The controller's state, as the instance owns it: the domain's topology, the sessions in
//! their order, and what interworking transactions are in progress.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use uuid::Uuid;

use super::cxi::TransactionResult;

use super::sessions::Session;
use super::topology::{AgentView, Topology};

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
    /// Transactions whose commit is being installed, and the peer's abort of it that came
    /// meanwhile (applied once the commit is done).
    pub committing: BTreeMap<Uuid, Option<(String, oneshot::Sender<TransactionResult>)>>,
    /// Segments whose fault was reported to the coordinator, and when (reported again after
    /// [`super::cxi::coordinator::REPORT_AGAIN`] until it reroutes them).
    pub notified: BTreeMap<Uuid, Instant>,
    /// Sessions re-agreed with the peer only because their route fell short of their demand,
    /// and when: not again before [`super::reroute::SHORTFALL_HOLD`] (a demand neither
    /// domain can meet would otherwise be agreed again at every poll).
    pub shortfall_agreed: BTreeMap<Uuid, Instant>,
}

/// The controller's state.
pub(super) struct State {
    pub(super) topology: Topology,
    pub(super) sessions: BTreeMap<Uuid, Session>,
    /// Creation order of sessions (later sessions win where routes to one destination meet).
    pub(super) order: Vec<Uuid>,
    /// Interworking state (Cxi transactions, faults reported by the peer).
    pub(super) interworking: InterworkingState,
    /// Sessions as they were before a job changed their route, with when they go: their
    /// routes and foreign SAE entries stay on the KMs the new route does not need for
    /// [`RETIRED_FOR`], so that keys already on their way (reserved, relayed, or sent by a
    /// peer domain that switches its part after this one) still arrive: make before break.
    pub(super) retired: Vec<(Instant, Session)>,
}

/// How long a session's replaced route stays on the KMs: longer than a hop's reservation
/// (10 s) and than a peer's install after its commit usually takes.
pub(super) const RETIRED_FOR: Duration = Duration::from_secs(30);

impl State {
    /// Adds or replaces a session (a new one comes last in the order: its routes win where
    /// they meet others').
    pub(super) fn put(&mut self, session: Session) {
        if !self.sessions.contains_key(&session.id) {
            self.order.push(session.id);
        }
        self.sessions.insert(session.id, session);
    }

    /// Keeps `session`'s route (as it was before a change) on the KMs for a while.
    pub(super) fn retire(&mut self, session: Session) {
        self.retired.push((Instant::now() + RETIRED_FOR, session));
    }

    /// Forgets the retired routes whose time is up (removed from the KMs on the next
    /// install); returns whether there were any.
    pub(super) fn prune_retired(&mut self, now: Instant) -> bool {
        let before = self.retired.len();
        self.retired.retain(|(until, _)| *until > now);
        self.retired.len() != before
    }

    /// Removes a session from the sessions and their order.
    pub(super) fn take(&mut self, id: Uuid) -> Option<Session> {
        self.order.retain(|s| *s != id);
        self.retired.retain(|(_, s)| s.id != id);
        self.sessions.remove(&id)
    }
}

/// Use of the SAE pairs, as the instance last saw it.
#[derive(Default)]
pub(super) struct PairUse {
    /// (master, slave) -> the request counter last read and when it last changed.
    seen: BTreeMap<(String, String), (u64, Instant)>,
}

impl PairUse {
    /// Notes the counters an agent reported: a counter that moved (or was reset by a
    /// restart) is use now.
    pub(super) fn note(&mut self, view: &AgentView, now: Instant) {
        for (pair, requests) in &view.pair_requests {
            match self.seen.get_mut(pair) {
                Some((seen, _)) if seen == requests => {}
                Some(entry) => *entry = (*requests, now),
                None => {
                    self.seen.insert(pair.clone(), (*requests, now));
                }
            }
        }
    }

    /// When the pair was last seen in use; a pair not seen yet counts from `now`.
    pub(super) fn last_use(&mut self, pair: (String, String), now: Instant) -> Instant {
        self.seen.entry(pair).or_insert((0, now)).1
    }

    pub(super) fn forget(&mut self, pair: &(String, String)) {
        self.seen.remove(pair);
    }
}
