//! The candidate's commit, confirmed commits (RFC 6241 section 8.4) and their cancelling.

use std::sync::Arc;
use std::time::Duration;

use roxmltree::Node;

use super::edit::set_running;
use super::locks::check_not_locked;
use super::operation::{child, ok, text_of, Done, SessionState};
use crate::netconf::datastore::{self, Datastore};
use crate::netconf::error::{ErrorTag, RpcError};
use crate::netconf::server::{rollback_confirmed, Confirmed, NetconfServer};

/// Default confirm timeout of a confirmed commit (RFC 6241: 600 s).
const DEFAULT_CONFIRM_TIMEOUT: u64 = 600;

pub(super) fn commit(
    server: &Arc<NetconfServer>,
    session: &SessionState,
    op: Node<'_, '_>,
) -> Result<Done, RpcError> {
    let confirmed = child(op, "confirmed").is_some();
    let timeout = match text_of(op, "confirm-timeout") {
        Some(v) => v.parse::<u64>().ok().filter(|t| *t > 0).ok_or_else(|| {
            RpcError::protocol(
                ErrorTag::InvalidValue,
                "confirm-timeout must be a positive number of seconds",
            )
            .info("bad-element", "confirm-timeout")
        })?,
        None => DEFAULT_CONFIRM_TIMEOUT,
    };
    let persist = text_of(op, "persist");
    let persist_id = text_of(op, "persist-id");
    let mut stores = server.stores.lock().expect("stores");
    check_not_locked(&stores, Datastore::Running, session.id)?;
    if let Some(pending) = &stores.confirmed {
        // Only the session that started it (or one naming its persist id) may confirm.
        let allowed = match &pending.persist {
            Some(p) => persist_id.as_deref() == Some(p.as_str()),
            None => pending.session == session.id,
        };
        if !allowed {
            return Err(RpcError::protocol(
                ErrorTag::InUse,
                "a confirmed commit of another session is pending",
            ));
        }
    } else if persist_id.is_some() {
        return Err(RpcError::protocol(
            ErrorTag::InvalidValue,
            "no confirmed commit with this persist-id",
        )
        .info("bad-element", "persist-id"));
    }
    let previous = datastore::duplicate(&stores.running)?;
    let new = datastore::duplicate(&stores.candidate)?;
    let first_confirmed = confirmed && stores.confirmed.is_none();
    if first_confirmed {
        server.save_rollback_point(&previous)?;
    }
    if let Err(error) = set_running(server, &mut stores, new, (session, "commit")) {
        if first_confirmed {
            server.clear_rollback_point();
        }
        return Err(error);
    }
    stores.candidate_modified = false;
    stores.candidate = datastore::duplicate(&stores.running)?;
    if confirmed {
        stores.generation += 1;
        let generation = stores.generation;
        let rollback = match stores.confirmed.take() {
            Some(pending) => pending.rollback, // extending: keep the original rollback point
            None => previous,
        };
        stores.confirmed = Some(Confirmed {
            rollback,
            session: session.id,
            persist,
            generation,
        });
        let server = server.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(timeout)).await;
            let mut stores = server.stores.lock().expect("stores");
            if stores
                .confirmed
                .as_ref()
                .is_some_and(|c| c.generation == generation)
            {
                tracing::warn!(
                    timeout,
                    "confirmed commit not confirmed in time: rolling back"
                );
                rollback_confirmed(&server, &mut stores);
            }
        });
        tracing::info!(
            session = session.id,
            timeout,
            "confirmed commit: awaiting confirmation"
        );
    } else {
        if stores.confirmed.take().is_some() {
            server.clear_rollback_point();
            tracing::info!(session = session.id, "confirmed commit confirmed");
        }
        tracing::info!(session = session.id, "candidate committed");
    }
    ok()
}

pub(super) fn cancel_commit(
    server: &Arc<NetconfServer>,
    session: &SessionState,
    op: Node<'_, '_>,
) -> Result<Done, RpcError> {
    let persist_id = text_of(op, "persist-id");
    let mut stores = server.stores.lock().expect("stores");
    check_not_locked(&stores, Datastore::Running, session.id)?;
    let Some(pending) = &stores.confirmed else {
        return Err(RpcError::protocol(
            ErrorTag::OperationFailed,
            "no confirmed commit is pending",
        ));
    };
    if pending.persist.is_some() && pending.persist != persist_id {
        return Err(
            RpcError::protocol(ErrorTag::InvalidValue, "persist-id does not match")
                .info("bad-element", "persist-id"),
        );
    }
    // RFC 6241 8.4.4.1: without persist, only the session that issued it may cancel it
    if pending.persist.is_none() && pending.session != session.id {
        return Err(RpcError::protocol(
            ErrorTag::InUse,
            "the confirmed commit belongs to another session",
        ));
    }
    rollback_confirmed(server, &mut stores);
    ok()
}
