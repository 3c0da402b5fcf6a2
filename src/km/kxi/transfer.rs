//! Kxi-1': key transfer over an interworking node's transfer link (Y.3818 6.2, 9.2).

use std::sync::Arc;

use uuid::Uuid;

use super::ext_keys::Outcome;
use super::messages::{AckStatus, ExtKeyContainer, RelayExtension, RelayStatus, VoidContainer};
use super::problem::{Kind, Problem};
use crate::km::agent::Agent;
use crate::km::config::LinkConfig;

/// Takes in keys over a transfer link.
pub(super) async fn receive(
    _agent: &Arc<Agent>,
    _sender: &str,
    _link: &LinkConfig,
    _container: ExtKeyContainer,
    _relay: Option<RelayExtension>,
) -> Result<(tracing::Span, Outcome), Problem> {
    Err(Problem::new(
        Kind::ServerSideGeneralError,
        "transfer",
        "key transfer is not supported yet",
    ))
}

/// Voids transfers from `sender`.
pub(super) async fn void(
    _agent: &Arc<Agent>,
    _sender: &str,
    _container: &VoidContainer,
) -> Result<Vec<(Uuid, AckStatus)>, Problem> {
    Ok(Vec::new())
}

/// Where a transfer from `sender` stands.
pub(super) async fn status(
    _agent: &Arc<Agent>,
    _sender: &str,
    _relay_id: Uuid,
) -> Result<Option<(RelayStatus, Vec<Uuid>)>, Problem> {
    Ok(None)
}
