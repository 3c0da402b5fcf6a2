//! What every operation shares: the session it runs in, its result, reading its arguments.

use roxmltree::Node;

use crate::netconf::datastore::Datastore;
use crate::netconf::error::{ErrorTag, RpcError};

/// State of one session seen by the operations.
pub struct SessionState {
    pub id: u32,
    pub user: String,
    /// Subscribed notification kinds (namespace, name); `None`: all. `Some` only after
    /// `create-subscription`.
    pub subscription: Option<Option<Vec<(String, String)>>>,
}

/// What an operation did: a reply body, or close the session.
pub(super) enum Done {
    Body(String),
    Close,
}

pub(super) fn ok() -> Result<Done, RpcError> {
    Ok(Done::Body("<ok/>".into()))
}

pub(super) fn child<'a, 'input>(node: Node<'a, 'input>, name: &str) -> Option<Node<'a, 'input>> {
    node.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

pub(super) fn text_of(node: Node<'_, '_>, name: &str) -> Option<String> {
    child(node, name).map(|c| c.text().unwrap_or_default().trim().to_owned())
}

pub(super) fn datastore_arg(op: Node<'_, '_>, which: &str) -> Result<Datastore, RpcError> {
    let holder = child(op, which).ok_or_else(|| {
        RpcError::protocol(ErrorTag::MissingElement, format!("{which} is missing"))
            .info("bad-element", which)
    })?;
    let store = holder.children().find(Node::is_element).ok_or_else(|| {
        RpcError::protocol(
            ErrorTag::MissingElement,
            format!("{which} names no datastore"),
        )
        .info("bad-element", which)
    })?;
    Datastore::parse(store.tag_name().name()).ok_or_else(|| {
        RpcError::protocol(
            ErrorTag::InvalidValue,
            format!("datastore {} is not supported", store.tag_name().name()),
        )
        .info("bad-element", store.tag_name().name())
    })
}
