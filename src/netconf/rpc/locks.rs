//! Locks of the datastores: lock, unlock, kill-session, and the check every write makes.

use std::sync::Arc;

use roxmltree::Node;

use super::operation::{datastore_arg, ok, text_of, Done, SessionState};
use crate::netconf::datastore::Datastore;
use crate::netconf::error::{ErrorTag, RpcError};
use crate::netconf::server::{NetconfServer, Stores};

pub(super) fn check_not_locked(
    stores: &Stores,
    target: Datastore,
    session: u32,
) -> Result<(), RpcError> {
    match stores.locks.get(&target) {
        Some(owner) if *owner != session => Err(RpcError::protocol(
            ErrorTag::InUse,
            format!(
                "the {} datastore is locked by session {owner}",
                target.name()
            ),
        )
        .info("session-id", owner.to_string())),
        _ => Ok(()),
    }
}

pub(super) fn lock(
    server: &NetconfServer,
    session: &SessionState,
    op: Node<'_, '_>,
    take: bool,
) -> Result<Done, RpcError> {
    let target = datastore_arg(op, "target")?;
    let mut stores = server.stores.lock().expect("stores");
    let holder = stores.locks.get(&target).copied();
    if take {
        if let Some(owner) = holder {
            return Err(RpcError::protocol(
                ErrorTag::LockDenied,
                format!("lock held by session {owner}"),
            )
            .info("session-id", owner.to_string()));
        }
        if target == Datastore::Candidate && stores.candidate_modified {
            return Err(RpcError::protocol(
                ErrorTag::LockDenied,
                "the candidate has uncommitted changes",
            )
            .info("session-id", "0"));
        }
        stores.locks.insert(target, session.id);
    } else {
        if holder != Some(session.id) {
            return Err(RpcError::protocol(
                ErrorTag::OperationFailed,
                "this session does not hold the lock",
            ));
        }
        stores.locks.remove(&target);
    }
    ok()
}

pub(super) fn kill_session(
    server: &Arc<NetconfServer>,
    session: &SessionState,
    op: Node<'_, '_>,
) -> Result<Done, RpcError> {
    let id: u32 = text_of(op, "session-id")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            RpcError::protocol(
                ErrorTag::MissingElement,
                "session-id is missing or not a number",
            )
            .info("bad-element", "session-id")
        })?;
    if id == session.id {
        return Err(RpcError::protocol(
            ErrorTag::InvalidValue,
            "a session cannot kill itself (use close-session)",
        ));
    }
    {
        let sessions = server.sessions.lock().expect("sessions");
        let target = sessions.get(&id).ok_or_else(|| {
            RpcError::protocol(ErrorTag::InvalidValue, format!("no session {id}"))
        })?;
        let _ = target.kill.send(true);
    }
    // RFC 6241 7.9: its locks are released and its unconfirmed commit rolled back now, not
    // whenever its task notices
    server.end_session(id);
    ok()
}
