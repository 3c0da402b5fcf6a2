//! The controller's jobs: how each starts (applies its change to the state) and how it
//! finishes once its install is done (commits what it started, or undoes it when the install
//! failed).

use super::cxi::aborted;
use super::error::{answer_all, ControlError};
use super::instance::Instance;
use super::messages::{Job, Then};

impl Instance {
    /// Applies a job's change to the state; `None` when it is answered without an install.
    pub(super) fn start(&mut self, job: Job) -> Option<Then> {
        match job {
            Job::Create {
                session,
                peer,
                replies,
            } => {
                self.show_as(session.id, None);
                self.state.put(session.clone());
                Some(Then::Created {
                    session,
                    peer,
                    replies,
                })
            }
            Job::Delete { id, reply } => {
                let Some(session) = self.state.take(id) else {
                    let _ = reply.send(Err(ControlError::UnknownSession(id)));
                    return None;
                };
                if let Err(error) = self.c.store.delete(id) {
                    self.state.put(session);
                    let _ = reply.send(Err(error.into()));
                    return None;
                }
                let c = self.c.clone();
                let ended = session.clone();
                tokio::spawn(async move { c.end_interworking(&ended).await });
                self.c.event(
                    "session-deleted",
                    format!("{} -> {}", session.master_sae, session.slave_sae),
                    Some(id),
                    None,
                );
                Some(Then::Deleted(reply))
            }
            Job::Reroute { trigger, started } => self.start_reroute(trigger, started),
            Job::Reconcile => Some(Then::Nothing),
            Job::InstallAgreed {
                id,
                paths,
                iw,
                trigger,
                started,
            } => self.start_install_agreed(id, paths, iw, trigger, started),
            Job::PeerCommit {
                from,
                transaction,
                reply,
            } => self.start_peer_commit(&from, transaction, reply),
            Job::PeerAbort {
                from,
                transaction,
                reply,
            } => self.start_peer_abort(&from, transaction, reply),
            Job::PeerDelete { from, id, reply } => {
                let deleted = self.remove_segment(&from, id);
                self.answer(reply, deleted);
                deleted.then_some(Then::Nothing)
            }
            Job::DropLeftOver { from, live } => self.drop_left_over_segments(&from, &live),
            Job::Flush(reply) => Some(Then::Flushed(reply)),
        }
    }

    /// Finishes a job: commits what it started, or undoes it when the install failed.
    pub(super) fn finish(&mut self, then: Then, result: Result<(), ControlError>) {
        match &then {
            Then::Created { session, .. } => {
                self.shown.remove(&session.id);
            }
            Then::PeerCommitted { segment, .. } => {
                self.shown.remove(&segment.id);
            }
            Then::Agreed { id, .. } => {
                self.shown.remove(id);
            }
            Then::Rerouted { changed, .. } => {
                for (id, _) in changed {
                    self.shown.remove(id);
                }
            }
            _ => {}
        }
        match then {
            Then::Nothing => {
                if let Err(error) = result {
                    tracing::warn!(%error, "relay route install failed; retried on the next change");
                }
            }
            Then::Created {
                session,
                peer,
                mut replies,
            } => {
                // requests for the pair that came while it was being set up
                let key = (session.master_sae.clone(), session.slave_sae.clone());
                replies.extend(self.creating.remove(&key).unwrap_or_default());
                let saved = result.and_then(|()| Ok(self.c.store.save(&session)?));
                match saved {
                    Ok(()) => {
                        self.c.event_in(
                            "session-created",
                            format!(
                                "{} -> {}{} via {}",
                                session.master_sae,
                                session.slave_sae,
                                peer.as_ref()
                                    .map(|(d, _)| format!(" ({d})"))
                                    .unwrap_or_default(),
                                session.path.join(" -> ")
                            ),
                            Some(session.id),
                            None,
                            peer.as_ref().map(|(_, t)| *t),
                        );
                        for reply in replies {
                            self.answer(reply, Ok(session.clone()));
                        }
                    }
                    Err(error) => {
                        self.state.take(session.id);
                        if let Some((domain, transaction)) = peer {
                            self.abort_at_peer(domain, transaction);
                        }
                        answer_all(replies, error);
                    }
                }
            }
            Then::Deleted(reply) => {
                if let Err(error) = result {
                    tracing::warn!(%error, "removing the routes of a deleted session failed; retried on the next change");
                }
                self.answer(reply, Ok(()));
            }
            Then::Rerouted {
                changed,
                trigger,
                started,
            } => self.finish_reroute(changed, &trigger, started, result),
            Then::Agreed {
                id,
                previous,
                trigger,
                started,
            } => self.finish_install_agreed(id, previous, &trigger, started, result),
            Then::PeerCommitted {
                transaction,
                segment,
                previous,
                reply,
            } => {
                let committed = self.finish_peer_commit(transaction, segment, previous, result);
                self.answer(reply, committed);
            }
            Then::Flushed(reply) => self.answer(reply, ()),
            Then::PeerAborted { transaction, reply } => {
                if let Err(error) = result {
                    tracing::warn!(%error, "undoing a segment failed; retried later");
                }
                self.answer(reply, aborted(transaction, None));
            }
        }
    }
}
