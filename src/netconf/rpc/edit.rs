//! Writing: edit-config, copy-config, validate, and how a new running datastore is put in
//! effect.

use std::sync::Arc;

use roxmltree::Node;
use yang2::data::DataTree;

use super::locks::check_not_locked;
use super::operation::{child, datastore_arg, ok, text_of, Done, SessionState};
use crate::netconf::datastore::{self, Datastore};
use crate::netconf::error::{ErrorTag, RpcError};
use crate::netconf::server::{NetconfServer, Stores};
use crate::netconf::xml::{self, EditOp};

/// Makes `new` the running datastore: validated, accepted by the application, persisted;
/// recorded in the application's audit log as the operation `op` of `session`.
pub(super) fn set_running(
    server: &NetconfServer,
    stores: &mut Stores,
    mut new: DataTree<'static>,
    (session, op): (&SessionState, &str),
) -> Result<(), RpcError> {
    datastore::validate(&mut new)?;
    server.app.apply(&stores.running, &new)?;
    if !server.persist(&new) {
        // keep the daemon and the disk in agreement: undo, and report
        if let Err(error) = server.app.apply(&new, &stores.running) {
            tracing::error!(%error, "cannot restore the previous configuration");
        }
        return Err(RpcError::application(
            ErrorTag::OperationFailed,
            "the configuration could not be saved; nothing changed",
        ));
    }
    if let Some(audit) = server.app.audit() {
        crate::audit::hooks::netconf_edit(
            audit,
            &session.user,
            Some(session.id),
            op,
            &stores.running,
            &new,
        );
    }
    if !stores.candidate_modified {
        stores.candidate = datastore::duplicate(&new)?;
    }
    stores.running = new;
    Ok(())
}

pub(super) fn edit_config(
    server: &Arc<NetconfServer>,
    session: &SessionState,
    op: Node<'_, '_>,
) -> Result<Done, RpcError> {
    let target = datastore_arg(op, "target")?;
    let default = match text_of(op, "default-operation") {
        None => EditOp::Merge,
        Some(v) => EditOp::parse(&v)
            .filter(|o| matches!(o, EditOp::Merge | EditOp::Replace | EditOp::None))
            .ok_or_else(|| {
                RpcError::protocol(ErrorTag::InvalidValue, format!("bad default-operation {v}"))
                    .info("bad-element", "default-operation")
            })?,
    };
    let test_option = text_of(op, "test-option").unwrap_or_else(|| "test-then-set".into());
    if !matches!(test_option.as_str(), "test-then-set" | "set" | "test-only") {
        return Err(RpcError::protocol(
            ErrorTag::InvalidValue,
            format!("bad test-option {test_option}"),
        )
        .info("bad-element", "test-option"));
    }
    if let Some(v) = text_of(op, "error-option") {
        // Every edit is applied atomically: rollback-on-error semantics for all three.
        if !matches!(
            v.as_str(),
            "stop-on-error" | "continue-on-error" | "rollback-on-error"
        ) {
            return Err(RpcError::protocol(
                ErrorTag::InvalidValue,
                format!("bad error-option {v}"),
            )
            .info("bad-element", "error-option"));
        }
    }
    let config = match (child(op, "config"), child(op, "url")) {
        (Some(config), _) => config,
        (None, Some(_)) => {
            return Err(RpcError::protocol(
                ErrorTag::OperationNotSupported,
                "the :url capability is not supported",
            ))
        }
        (None, None) => {
            return Err(
                RpcError::protocol(ErrorTag::MissingElement, "config is missing")
                    .info("bad-element", "config"),
            )
        }
    };
    let (text, points) = xml::serialize_children(config)?;
    let edit = datastore::parse_config(&text)?;
    let mut stores = server.stores.lock().expect("stores");
    check_not_locked(&stores, target, session.id)?;
    let current = match target {
        Datastore::Running => &stores.running,
        Datastore::Candidate => &stores.candidate,
    };
    let mut new = datastore::apply_edit(current, &edit, &points, default)?;
    if test_option != "set" || target == Datastore::Running {
        datastore::validate(&mut new)?;
    }
    if test_option == "test-only" {
        return ok();
    }
    match target {
        Datastore::Running => set_running(server, &mut stores, new, (session, "edit-config"))?,
        Datastore::Candidate => {
            stores.candidate = new;
            stores.candidate_modified = true;
        }
    }
    tracing::info!(
        target = target.name(),
        session = session.id,
        "configuration edited"
    );
    ok()
}

fn config_source(server: &NetconfServer, op: Node<'_, '_>) -> Result<DataTree<'static>, RpcError> {
    let holder = child(op, "source").ok_or_else(|| {
        RpcError::protocol(ErrorTag::MissingElement, "source is missing")
            .info("bad-element", "source")
    })?;
    if let Some(config) = child(holder, "config") {
        let (text, points) = xml::serialize_children(config)?;
        if !points.is_empty() {
            return Err(RpcError::protocol(
                ErrorTag::BadAttribute,
                "operation attributes are not allowed here",
            )
            .info("bad-attribute", "operation"));
        }
        return datastore::parse_config(&text);
    }
    let source = datastore_arg(op, "source")?;
    let stores = server.stores.lock().expect("stores");
    datastore::duplicate(match source {
        Datastore::Running => &stores.running,
        Datastore::Candidate => &stores.candidate,
    })
}

pub(super) fn copy_config(
    server: &Arc<NetconfServer>,
    session: &SessionState,
    op: Node<'_, '_>,
) -> Result<Done, RpcError> {
    let target = datastore_arg(op, "target")?;
    let mut new = config_source(server, op)?;
    let mut stores = server.stores.lock().expect("stores");
    check_not_locked(&stores, target, session.id)?;
    match target {
        Datastore::Running => set_running(server, &mut stores, new, (session, "copy-config"))?,
        Datastore::Candidate => {
            datastore::validate(&mut new)?;
            stores.candidate = new;
            stores.candidate_modified = true;
        }
    }
    ok()
}

pub(super) fn validate(server: &NetconfServer, op: Node<'_, '_>) -> Result<Done, RpcError> {
    let mut tree = config_source(server, op)?;
    datastore::validate(&mut tree)?;
    ok()
}
