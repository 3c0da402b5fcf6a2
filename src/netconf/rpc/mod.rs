//! The NETCONF protocol operations (RFC 6241, RFC 5277 create-subscription, RFC 6022
//! get-schema) on the server's shared datastores.
//!
//! - `capabilities` — what the server announces;
//! - `operation` — what every operation shares: the session, the result, the arguments;
//! - `get` — get, get-config (filters), `netconf-state`, get-schema;
//! - `edit` — edit-config, copy-config, validate;
//! - `locks` — lock, unlock, kill-session;
//! - `commit` — commit, confirmed commit, cancel-commit.

mod capabilities;
mod commit;
mod edit;
mod get;
mod locks;
mod operation;

pub use capabilities::capabilities;
pub use operation::SessionState;

use std::sync::Arc;

use quick_xml::escape::escape;
use roxmltree::Node;
use tracing::Instrument;

use super::datastore::{self, Datastore};
use super::error::{ErrorTag, ErrorType, RpcError};
use super::limits;
use super::server::{Group, NetconfServer};
use super::xml::{NS_BASE, NS_MONITORING, NS_NOTIFICATION};
use commit::{cancel_commit, commit};
use edit::{copy_config, edit_config, validate};
use get::{get, get_schema};
use locks::{check_not_locked, kill_session, lock};
use operation::{child, datastore_arg, ok, text_of, Done};

/// What the session does after an RPC.
pub enum Outcome {
    Reply(String),
    /// Reply, then close the session.
    Close(String),
}

fn reply(attributes: &str, body: &str) -> String {
    format!("<rpc-reply xmlns=\"{NS_BASE}\"{attributes}>{body}</rpc-reply>")
}

/// Handles one message; never fails: errors become `rpc-error` replies.
pub async fn handle(
    server: &Arc<NetconfServer>,
    session: &mut SessionState,
    message: &str,
) -> Outcome {
    // bounded before anything recursive (roxmltree, edits, filters, libyang) sees it
    let doc = match limits::parse(message.trim_start()) {
        Ok(doc) => doc,
        Err(error) => {
            tracing::warn!(%error, "refused NETCONF message");
            // a well-formed message over a limit keeps its message-id for the client
            let mut attributes = String::new();
            if !matches!(error, limits::LimitError::Malformed(_)) {
                for (name, value) in limits::root_attributes(message.trim_start()) {
                    attributes.push_str(&format!(" {name}=\"{}\"", escape(value.as_str())));
                }
            }
            return Outcome::Reply(reply(&attributes, &error.to_rpc_error().to_xml()));
        }
    };
    let root = doc.root_element();
    if root.tag_name().name() != "rpc" || root.tag_name().namespace() != Some(NS_BASE) {
        let e = RpcError::protocol(
            ErrorTag::UnknownElement,
            "expected an rpc element in the NETCONF base namespace",
        )
        .info("bad-element", root.tag_name().name());
        return Outcome::Reply(reply("", &e.to_xml()));
    }
    // rpc-reply carries every attribute of the rpc
    let mut attributes = String::new();
    for a in root.attributes() {
        if a.namespace().is_none() {
            attributes.push_str(&format!(" {}=\"{}\"", a.name(), escape(a.value())));
        }
    }
    if root.attribute("message-id").is_none() {
        let e = RpcError::new(
            ErrorType::Rpc,
            ErrorTag::MissingAttribute,
            "the rpc has no message-id",
        )
        .info("bad-attribute", "message-id")
        .info("bad-element", "rpc");
        return Outcome::Reply(reply(&attributes, &e.to_xml()));
    }
    let Some(op) = root.children().find(Node::is_element) else {
        let e = RpcError::new(
            ErrorType::Rpc,
            ErrorTag::MissingElement,
            "the rpc names no operation",
        )
        .info("bad-element", "rpc");
        return Outcome::Reply(reply(&attributes, &e.to_xml()));
    };
    let name = op.tag_name().name();
    let span = tracing::debug_span!("rpc", op = name, session = session.id);
    let user = session.user.clone();
    let result = crate::netconf::server::as_user(user, dispatch(server, session, op))
        .instrument(span)
        .await;
    match result {
        Ok(Done::Body(body)) => Outcome::Reply(reply(&attributes, &body)),
        Ok(Done::Close) => Outcome::Close(reply(&attributes, "<ok/>")),
        Err(error) => {
            tracing::info!(op = name, %error, "rpc failed");
            Outcome::Reply(reply(&attributes, &error.to_xml()))
        }
    }
}

fn writes(server: &NetconfServer, session: &SessionState, op: &str) -> Result<(), RpcError> {
    if server.group(&session.user) == Group::ReadOnly {
        tracing::warn!(user = %session.user, op, "write denied to a read-only user");
        return Err(RpcError::protocol(
            ErrorTag::AccessDenied,
            format!("{op} is not allowed to read-only users"),
        ));
    }
    Ok(())
}

async fn dispatch(
    server: &Arc<NetconfServer>,
    session: &mut SessionState,
    op: Node<'_, '_>,
) -> Result<Done, RpcError> {
    let name = op.tag_name().name();
    match (op.tag_name().namespace().unwrap_or_default(), name) {
        (NS_BASE, "get") => get(server, op, None).await,
        (NS_BASE, "get-config") => {
            let source = datastore_arg(op, "source")?;
            get(server, op, Some(source)).await
        }
        (NS_BASE, "edit-config") => {
            writes(server, session, name)?;
            edit_config(server, session, op)
        }
        (NS_BASE, "copy-config") => {
            writes(server, session, name)?;
            copy_config(server, session, op)
        }
        (NS_BASE, "delete-config") => {
            writes(server, session, name)?;
            Err(RpcError::protocol(
                ErrorTag::OperationNotSupported,
                "only a startup datastore can be deleted, and there is none",
            ))
        }
        (NS_BASE, "lock") => {
            writes(server, session, name)?;
            lock(server, session, op, true)
        }
        (NS_BASE, "unlock") => {
            writes(server, session, name)?;
            lock(server, session, op, false)
        }
        (NS_BASE, "close-session") => Ok(Done::Close),
        (NS_BASE, "kill-session") => {
            writes(server, session, name)?;
            kill_session(server, session, op)
        }
        (NS_BASE, "commit") => {
            writes(server, session, name)?;
            commit(server, session, op)
        }
        (NS_BASE, "cancel-commit") => {
            writes(server, session, name)?;
            cancel_commit(server, session, op)
        }
        (NS_BASE, "discard-changes") => {
            writes(server, session, name)?;
            let mut stores = server.stores.lock().expect("stores");
            check_not_locked(&stores, Datastore::Candidate, session.id)?;
            stores.candidate = datastore::duplicate(&stores.running)?;
            stores.candidate_modified = false;
            ok()
        }
        (NS_BASE, "validate") => validate(server, op),
        (NS_MONITORING, "get-schema") => get_schema(op),
        (NS_NOTIFICATION, "create-subscription") => create_subscription(session, op),
        (ns, _) => Err(RpcError::new(
            ErrorType::Protocol,
            ErrorTag::OperationNotSupported,
            format!("operation {name} is not supported"),
        )
        .info("bad-element", name)
        .info("bad-namespace", ns)),
    }
}

fn create_subscription(session: &mut SessionState, op: Node<'_, '_>) -> Result<Done, RpcError> {
    if session.subscription.is_some() {
        return Err(RpcError::protocol(
            ErrorTag::OperationFailed,
            "this session already has a subscription",
        ));
    }
    if let Some(stream) = text_of(op, "stream") {
        if stream != "NETCONF" {
            return Err(RpcError::protocol(
                ErrorTag::InvalidValue,
                format!("unknown stream {stream}"),
            )
            .info("bad-element", "stream"));
        }
    }
    if child(op, "startTime").is_some() {
        return Err(
            RpcError::protocol(ErrorTag::OperationNotSupported, "replay is not supported")
                .info("bad-element", "startTime"),
        );
    }
    let kinds = child(op, "filter").map(|f| {
        f.children()
            .filter(Node::is_element)
            .map(|n| {
                (
                    n.tag_name().namespace().unwrap_or_default().to_owned(),
                    n.tag_name().name().to_owned(),
                )
            })
            .collect()
    });
    session.subscription = Some(kinds);
    ok()
}
