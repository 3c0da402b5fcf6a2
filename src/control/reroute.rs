//! Rerouting (Y.3818 9.2): sessions whose route crosses a down link, falls clearly short of
//! their demand, or was reported faulty by the peer get a new route. A session of this domain
//! alone is rerouted at once; an interworking session this domain coordinates is re-agreed
//! with the peer in a task, and its new route installed when the peer has committed its part.

use std::time::Instant;

use tracing::info_span;
use uuid::Uuid;

use super::cxi::coordinator::{is_segment, REPORT_AGAIN};
use super::error::ControlError;
use super::instance::Instance;
use super::messages::Agreement;
use super::messages::{Job, Then};
use super::sessions::{
    Interworking, Session, SessionEvent, SessionPath, SessionState, RATE_HYSTERESIS,
};
use super::topology::Topology;
use crate::netconf::server::now_rfc3339;

/// How long an interworking session re-agreed only for a key rate shortfall keeps its route
/// before a shortfall makes it agreed again (faults and broken links do at once).
pub(super) const SHORTFALL_HOLD: std::time::Duration = std::time::Duration::from_secs(30);

impl Instance {
    /// Recomputes the routes of sessions that cross a down link (or have none); starts the
    /// agreement of interworking ones; `started` is when the triggering report arrived.
    pub(super) fn start_reroute(&mut self, trigger: String, started: Instant) -> Option<Then> {
        let span = info_span!("reroute", %trigger);
        let _entered = span.enter();
        let topology = &self.state.topology;
        let faulty_segments: Vec<Session> = self
            .state
            .sessions
            .values()
            .filter(|s| is_segment(s) && failing(topology, s))
            .filter(|s| {
                self.state
                    .interworking
                    .notified
                    .get(&s.id)
                    .is_none_or(|at| at.elapsed() > REPORT_AGAIN)
            })
            .cloned()
            .collect();
        let affected: Vec<Uuid> = self
            .state
            .order
            .iter()
            .filter(|id| {
                self.state.sessions.get(id).is_some_and(|s| {
                    !is_segment(s)
                        && (s.state == SessionState::Unroutable
                            || self.state.interworking.suspect.contains(&s.id)
                            || failing(topology, s))
                })
            })
            .copied()
            .collect();
        // a segment of another domain's session is rerouted by that domain, with this one
        // agreeing: report the fault to it
        for segment in faulty_segments {
            self.state
                .interworking
                .notified
                .insert(segment.id, Instant::now());
            self.c.report_segment_fault(&segment, &trigger);
        }
        let mut changed = Vec::new();
        for id in affected {
            let session = self.state.sessions[&id].clone();
            if session.interworking.is_some() {
                if self.agreeing.contains(&id) {
                    // merged: looked at again once the agreement in progress ends
                    self.again.insert(id);
                    continue;
                }
                let shortfall_only = session.state == SessionState::Active
                    && !broken(&self.state.topology, &session)
                    && !self.state.interworking.suspect.contains(&id);
                if shortfall_only {
                    let held = &mut self.state.interworking.shortfall_agreed;
                    held.retain(|_, at| at.elapsed() < SHORTFALL_HOLD);
                    if held.contains_key(&id) {
                        continue;
                    }
                    held.insert(id, Instant::now());
                }
                self.state.interworking.suspect.remove(&id);
                self.agree(
                    Agreement::Reroute {
                        id,
                        trigger: trigger.clone(),
                        started,
                    },
                    session,
                    trigger.clone(),
                );
                continue;
            }
            let topology = &self.state.topology;
            let result = self
                .c
                .route(topology, &session.src, &session.dst, session.rate_bps)
                .and_then(|paths| self.readmit(&session, paths));
            // a plan that only answers a key rate shortfall replaces the current one when it
            // is different and clearly better; otherwise nothing changes and nothing is
            // installed (a demand the network cannot meet does not churn the KMs)
            let working = session.state == SessionState::Active && !broken(topology, &session);
            let keep = match &result {
                Ok(paths) if working => {
                    let current = session.routed_paths();
                    same_plan(&current, paths)
                        || plan_rate(topology, paths)
                            < plan_rate(topology, &current) * (1.0 + RATE_HYSTERESIS)
                }
                // no plan meets the demand any more: the current one still carries keys
                Err(_) => working,
                _ => false,
            };
            if keep {
                continue;
            }
            let s = self.state.sessions.get_mut(&id).expect("affected session");
            if let Some(routed) = apply(s, &trigger, result) {
                changed.push((id, routed));
                self.show_as(id, Some(session));
            }
        }
        Some(Then::Rerouted {
            changed,
            trigger,
            started,
        })
    }

    /// Saves the rerouted sessions and tells what happened.
    pub(super) fn finish_reroute(
        &mut self,
        changed: Vec<(Uuid, bool)>,
        trigger: &str,
        started: Instant,
        installed: Result<(), ControlError>,
    ) {
        let elapsed = started.elapsed().as_secs_f64() * 1e3;
        if !changed.is_empty() {
            let ok = installed.is_ok() && changed.iter().all(|(_, routed)| *routed);
            self.c.metrics.reroute(ok, elapsed / 1e3);
        }
        for (id, routed) in changed {
            let Some(session) = self.state.sessions.get(&id) else {
                continue;
            };
            if let Err(error) = self.c.store.save(session) {
                tracing::error!(%error, "cannot save session");
            }
            let transaction = session.interworking.as_ref().map(|iw| iw.transaction);
            match (&installed, routed) {
                (Ok(()), true) => self.c.event_in(
                    "reroute",
                    format!(
                        "{trigger}: {} now via {}",
                        session.slave_sae,
                        session.path.join(" -> ")
                    ),
                    Some(id),
                    Some(elapsed),
                    transaction,
                ),
                (Ok(()), false) => self.c.event(
                    "reroute-failed",
                    format!(
                        "{trigger}: no route for {} -> {} ({})",
                        session.master_sae,
                        session.slave_sae,
                        session.history.last().map_or("", |h| h.what.as_str())
                    ),
                    Some(id),
                    None,
                ),
                (Err(error), _) => self.c.event(
                    "reroute-failed",
                    format!("{trigger}: install failed: {error}"),
                    Some(id),
                    None,
                ),
            }
        }
    }

    /// Agrees a route with the peer for `session`, in a task; the outcome comes back as
    /// [`super::messages::Input::Agreed`].
    pub(super) fn agree(&mut self, agreement: Agreement, session: Session, reason: String) {
        if let Agreement::Reroute { id, .. } = &agreement {
            self.agreeing.insert(*id);
        }
        let c = self.c.clone();
        let topology = self.state.topology.clone();
        tokio::spawn(async move {
            let result = c.route_interworking(&topology, &session, &reason).await;
            let _ = c
                .send(super::messages::Input::Agreed { agreement, result })
                .await;
        });
    }

    /// The outcome of a re-agreement: its route is installed here (the peer committed its
    /// part), or the session keeps its route or waits unroutable.
    pub(super) fn agreed_reroute(
        &mut self,
        id: Uuid,
        trigger: String,
        started: Instant,
        result: Result<(Vec<SessionPath>, Interworking), ControlError>,
    ) {
        self.agreeing.remove(&id);
        if self.again.remove(&id) {
            self.reroute(trigger.clone(), started);
        }
        match result {
            Ok((paths, iw)) => self.push(Job::InstallAgreed {
                id,
                paths,
                iw,
                trigger,
                started,
            }),
            Err(error) => {
                let topology = &self.state.topology;
                let Some(s) = self.state.sessions.get_mut(&id) else {
                    return;
                };
                // no agreement: a working route stays; a broken one waits unroutable
                if s.state == SessionState::Active && !broken(topology, s) {
                    return;
                }
                if let Some(routed) = apply(s, &trigger, Err(error)) {
                    // its routes go; it is agreed again on the next pass
                    self.push(Job::Reconcile);
                    self.finish_reroute(vec![(id, routed)], &trigger, started, Ok(()));
                }
            }
        }
    }

    /// Puts an agreed route in place (the peer has committed its segment).
    pub(super) fn start_install_agreed(
        &mut self,
        id: Uuid,
        paths: Vec<SessionPath>,
        iw: Interworking,
        trigger: String,
        started: Instant,
    ) -> Option<Then> {
        let Some(s) = self.state.sessions.get_mut(&id) else {
            // deleted meanwhile: the peer undoes its segment
            self.abort_at_peer(iw.peer_domain, iw.transaction);
            return None;
        };
        let previous = s.clone();
        s.interworking = Some(iw);
        apply(s, &trigger, Ok(paths));
        self.show_as(id, Some(previous.clone()));
        Some(Then::Agreed {
            id,
            previous,
            trigger,
            started,
        })
    }

    /// Saves an agreed route installed here; if the install failed, the peer undoes its
    /// part and this domain keeps the plan both had agreed before, to be agreed again.
    pub(super) fn finish_install_agreed(
        &mut self,
        id: Uuid,
        previous: Session,
        trigger: &str,
        started: Instant,
        installed: Result<(), ControlError>,
    ) {
        if installed.is_err() {
            if let Some(iw) = self.state.sessions[&id].interworking.clone() {
                self.abort_at_peer(iw.peer_domain, iw.transaction);
            }
            self.state.interworking.suspect.insert(id);
            self.state.put(previous);
        }
        self.finish_reroute(vec![(id, true)], trigger, started, installed);
    }
}

/// Applies a routing result to a session; returns `Some(routed)` when something changed
/// (an unroutable session is retried on every change and reported once).
fn apply(
    s: &mut Session,
    trigger: &str,
    result: Result<Vec<SessionPath>, ControlError>,
) -> Option<bool> {
    match result {
        Ok(paths) => {
            s.history.push(SessionEvent {
                time: now_rfc3339(),
                what: format!(
                    "{trigger}: rerouted from {} to {}",
                    describe(&s.routed_paths()),
                    describe(&paths)
                ),
            });
            s.path = paths[0].nodes.clone();
            s.links = paths[0].links.clone();
            s.paths = paths;
            s.state = SessionState::Active;
            Some(true)
        }
        Err(_) if s.state == SessionState::Unroutable => None,
        Err(error) => {
            s.history.push(SessionEvent {
                time: now_rfc3339(),
                what: format!("{trigger}: no route ({error})"),
            });
            s.state = SessionState::Unroutable;
            Some(false)
        }
    }
}

/// Whether a link fails a path: down, or its key rate clearly below the path's demand (a dip
/// within the hysteresis margin changes nothing).
fn fails(topology: &Topology, link: &str, demand: f64) -> bool {
    topology
        .links
        .get(link)
        .is_none_or(|l| !l.up || l.rate_bps < demand * (1.0 - RATE_HYSTERESIS))
}

/// Whether a session's route fails it.
fn failing(topology: &Topology, s: &Session) -> bool {
    s.routed_paths()
        .iter()
        .any(|p| p.links.iter().any(|l| fails(topology, l, p.share_bps)))
}

/// Whether a session's route crosses a link that is down (or gone).
fn broken(topology: &Topology, s: &Session) -> bool {
    s.routed_paths().iter().any(|p| {
        p.links
            .iter()
            .any(|l| topology.links.get(l).is_none_or(|link| !link.up))
    })
}

/// Whether two plans use the same paths over the same links.
fn same_plan(a: &[SessionPath], b: &[SessionPath]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.nodes == y.nodes && x.links == y.links)
}

/// The key rate a plan can carry: the sum of its paths' bottleneck link rates.
fn plan_rate(topology: &Topology, paths: &[SessionPath]) -> f64 {
    paths
        .iter()
        .map(|p| {
            p.links
                .iter()
                .map(|l| {
                    topology
                        .links
                        .get(l)
                        .map_or(0.0, |l| if l.up { l.rate_bps } else { 0.0 })
                })
                .fold(f64::INFINITY, f64::min)
        })
        .filter(|r| r.is_finite())
        .sum()
}

/// A route plan for people: its paths (with their shares when there are several).
pub(super) fn describe(paths: &[SessionPath]) -> String {
    match paths {
        [only] => only.nodes.join(" -> "),
        _ => paths
            .iter()
            .map(|p| format!("{} ({:.0} bit/s)", p.nodes.join(" -> "), p.share_bps))
            .collect::<Vec<_>>()
            .join(" + "),
    }
}
