//! What each daemon records, in one place: the daemons call these at the points where the
//! events happen (and where the caller is known), so the record formats stay together.
//!
//! Never key material: a delivery is recorded by key IDs, SAE IDs and size.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{kinds, AuditLog, SYSTEM};
use crate::km::events::{Event, TransferRole, TransferState};

/// The `who` of a caller identified by its certificate.
pub fn cert(name: &str) -> String {
    format!("cert:{name}")
}

// ---- KM agent ----

/// Keys handed to master SAE `master` (ETSI 014 `enc_keys`), shared with `slaves`.
pub fn keys_supplied(
    audit: &AuditLog,
    master: &str,
    slaves: &[String],
    size_bits: u32,
    key_ids: impl Iterator<Item = Uuid>,
) {
    let ids: Vec<String> = key_ids.map(|id| id.to_string()).collect();
    audit.append(
        kinds::KEYS_SUPPLIED,
        &cert(master),
        None,
        json!({"master_SAE_ID": master, "slave_SAE_IDs": slaves, "size": size_bits, "key_IDs": ids}),
    );
}

/// Keys handed to slave SAE `slave` (ETSI 014 `dec_keys`) of master SAE `master`; each
/// with whether it was fetched again within the refetch window.
pub fn keys_delivered(
    audit: &AuditLog,
    slave: &str,
    master: &str,
    keys: impl Iterator<Item = (Uuid, usize, bool)>,
) {
    let mut ids = Vec::new();
    let mut refetched = Vec::new();
    let mut size = 0;
    for (id, bytes, again) in keys {
        size = bytes * 8;
        if again {
            refetched.push(id.to_string());
        }
        ids.push(id.to_string());
    }
    audit.append(
        kinds::KEYS_DELIVERED,
        &cert(slave),
        None,
        json!({"slave_SAE_ID": slave, "master_SAE_ID": master, "size": size, "key_IDs": ids, "refetched": refetched}),
    );
}

/// A relay of `key_ids` leaves this (origin) KM toward `dest`, its path reserved.
pub fn relay_started(
    audit: &AuditLog,
    relay_id: Uuid,
    dest: &str,
    master: &str,
    slaves: &[String],
    key_ids: &[Uuid],
) {
    let ids: Vec<String> = key_ids.iter().map(Uuid::to_string).collect();
    audit.append(
        kinds::RELAY_STARTED,
        &cert(master),
        Some(&format!("relay-{relay_id}")),
        json!({"relay_id": relay_id, "destination": dest, "master_SAE_ID": master, "slave_SAE_IDs": slaves, "key_IDs": ids}),
    );
}

/// The relay arrived (acknowledged by the destination after `hops` hops).
pub fn relay_finished(audit: &AuditLog, relay_id: Uuid, dest: &str, hops: impl serde::Serialize) {
    audit.append(
        kinds::RELAY_FINISHED,
        SYSTEM,
        Some(&format!("relay-{relay_id}")),
        json!({"relay_id": relay_id, "destination": dest, "outcome": "delivered", "hops": hops}),
    );
}

/// Keys of relay `relay_id` from `origin` arrived at this (destination) KM from the peer
/// KM `from`, held for the slave SAEs.
#[allow(clippy::too_many_arguments)]
pub fn relay_arrived(
    audit: &AuditLog,
    relay_id: Uuid,
    origin: &str,
    from: &str,
    master: &str,
    slaves: &[String],
    size_bits: u32,
    key_ids: &[Uuid],
) {
    let ids: Vec<String> = key_ids.iter().map(Uuid::to_string).collect();
    audit.append(
        kinds::RELAY_ARRIVED,
        &cert(from),
        Some(&format!("relay-{relay_id}")),
        json!({"relay_id": relay_id, "origin": origin, "from": from, "master_SAE_ID": master, "slave_SAE_IDs": slaves, "size": size_bits, "key_IDs": ids}),
    );
}

/// An event of the KM agent (link faults, relay failures, transfers, failed logins,
/// applications).
pub fn km_event(audit: &AuditLog, event: &Event) {
    let (kind, who, tx, details): (&str, String, Option<String>, Value) = match event {
        Event::LinkState {
            link,
            state,
            previous,
        } => (
            kinds::LINK_STATE,
            SYSTEM.into(),
            None,
            json!({"link": link, "state": format!("{state:?}").to_lowercase(), "previous": format!("{previous:?}").to_lowercase()}),
        ),
        Event::LowKey {
            link,
            own_blocks,
            threshold_percent,
        } => (
            kinds::LOW_KEY,
            SYSTEM.into(),
            None,
            json!({"link": link, "own_blocks": own_blocks, "threshold_percent": threshold_percent}),
        ),
        Event::RelayFailure {
            relay_id,
            destination,
            reason,
            exhausted,
        } => (
            kinds::RELAY_FAILED,
            SYSTEM.into(),
            Some(format!("relay-{relay_id}")),
            json!({"relay_id": relay_id, "destination": destination, "reason": reason, "exhausted": exhausted}),
        ),
        Event::KeyTransfer(t) => {
            let ids: Vec<String> = t.key_ids.iter().map(Uuid::to_string).collect();
            let role = match t.role {
                TransferRole::Sender => "sender",
                TransferRole::Receiver => "receiver",
            };
            let state = match t.state {
                TransferState::Transferred => "transferred",
                TransferState::Voided => "voided",
                TransferState::Failed => "failed",
                TransferState::FailedToVoid => "failed-to-void",
            };
            (
                kinds::KEY_TRANSFER,
                SYSTEM.into(),
                Some(format!("relay-{}", t.relay_id)),
                json!({"relay_id": t.relay_id, "link": t.link, "role": role, "state": state, "key_IDs": ids, "size": t.key_size, "master_SAE_ID": t.master_sae, "slave_SAE_IDs": t.slave_saes}),
            )
        }
        Event::Security(crate::netconf::server::SecurityEvent::AuthFailure {
            user,
            source,
            method,
            failures_from_source,
            ..
        }) => (
            kinds::SECURITY,
            user.clone(),
            None,
            json!({"event": "netconf-authentication-failure", "source": source.to_string(), "method": method, "failures_from_source": failures_from_source}),
        ),
        Event::ApplicationNew(app) | Event::ApplicationGone(app) => (
            kinds::APPLICATION,
            cert(&app.master),
            None,
            json!({"application": app.id, "state": if matches!(event, Event::ApplicationNew(_)) { "new" } else { "gone" }, "master_SAE_ID": app.master, "slave_SAE_IDs": app.slaves}),
        ),
    };
    audit.append(kind, &who, tx.as_deref(), details);
}

// ---- NETCONF (every daemon with a NETCONF server) ----

/// Leaves named like these are written as `(hidden)`.
const SECRET_NAMES: &[&str] = &["password", "secret", "token", "private-key", "key-material"];

/// Most changed nodes listed in one record (the count is always there).
const MAX_CHANGES: usize = 200;

/// The running datastore changed from `old` to `new` by NETCONF operation `op` of `user`
/// in `session` (a confirmed commit's rollback: `system`): the changes as libyang's diff
/// (operation, path, value of every changed leaf).
pub fn netconf_edit(
    audit: &AuditLog,
    user: &str,
    session: Option<u32>,
    op: &str,
    old: &yang2::data::DataTree<'static>,
    new: &yang2::data::DataTree<'static>,
) {
    use yang2::data::{DataDiffFlags, DataDiffOp};
    use yang2::iter::NodeIterable;
    let mut changes = Vec::new();
    let mut count = 0usize;
    match old.diff(new, DataDiffFlags::empty()) {
        Ok(diff) => {
            for (operation, node) in diff.iter() {
                let operation = match operation {
                    DataDiffOp::Create => "create",
                    DataDiffOp::Delete => "delete",
                    DataDiffOp::Replace => "replace",
                };
                // a created or deleted subtree: each of its leaves
                for leaf in node.traverse() {
                    use yang2::schema::SchemaNodeKind;
                    let is_leaf = matches!(
                        leaf.schema().kind(),
                        SchemaNodeKind::Leaf | SchemaNodeKind::LeafList
                    );
                    if !is_leaf && leaf.first_child().is_some() {
                        continue;
                    }
                    count += 1;
                    if changes.len() < MAX_CHANGES {
                        let hidden = SECRET_NAMES
                            .iter()
                            .any(|s| leaf.schema().name().contains(s));
                        let value = if hidden {
                            Some("(hidden)".to_owned())
                        } else {
                            leaf.value_canonical()
                        };
                        changes.push(json!({"op": operation, "path": leaf.path(), "value": value}));
                    }
                }
            }
        }
        Err(error) => {
            changes.push(json!({"error": format!("no diff: {error}")}));
        }
    }
    let tx = session.map(|s| format!("netconf-session-{s}"));
    audit.append(
        kinds::NETCONF_EDIT,
        user,
        tx.as_deref(),
        json!({"operation": op, "datastore": "running", "changes": count, "diff": changes}),
    );
}

// ---- controller ----

/// An event of the controller (sessions, route installs, reroutes, Cxi agreement steps with
/// their transaction, link states, diagnoses).
pub fn controller_event(audit: &AuditLog, event: &crate::control::controller::ControllerEvent) {
    let kind = if event.kind.starts_with("interworking-") || event.kind.starts_with("cxi-") {
        kinds::CXI
    } else {
        kinds::CONTROLLER_EVENT
    };
    let tx = event
        .transaction
        .map(|t| format!("cxi-{t}"))
        .or_else(|| event.session.map(|s| format!("session-{s}")));
    audit.append(
        kind,
        SYSTEM,
        tx.as_deref(),
        json!({"event": event.kind, "detail": event.detail, "session": event.session, "transaction": event.transaction, "duration_ms": event.duration_ms}),
    );
}

// ---- manager ----

/// An event of the manager (faults, alarms, Mxi reports received and sent, diagnoses).
pub fn manager_event(
    audit: &AuditLog,
    kind: &str,
    detail: &str,
    relay_id: Option<Uuid>,
    message: Option<Uuid>,
) {
    let tx = message
        .map(|m| format!("mxi-{m}"))
        .or_else(|| relay_id.map(|r| format!("relay-{r}")));
    audit.append(
        kinds::MANAGER_EVENT,
        SYSTEM,
        tx.as_deref(),
        json!({"event": kind, "detail": detail, "relay_id": relay_id, "message": message}),
    );
}

// ---- REST ----

/// Middleware of a REST API (after authentication): records every request that may change
/// state (not GET/HEAD/OPTIONS) with its caller, path and answer. The caller is its client
/// certificate's name, or `bearer:` and the first 12 hex digits of the token's SHA-256 (never
/// the token).
pub async fn rest_changes(State(audit): State<AuditLog>, request: Request, next: Next) -> Response {
    use axum::http::Method;
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return next.run(request).await;
    }
    let who = request
        .extensions()
        .get::<crate::tls::PeerIdentity>()
        .and_then(|p| p.0.clone())
        .map(|name| cert(&name))
        .or_else(|| {
            request
                .headers()
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(|token| {
                    format!(
                        "bearer:{}",
                        &super::record::sha256_hex(token.as_bytes())[..12]
                    )
                })
        })
        .unwrap_or_else(|| "anonymous".into());
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    audit.append(
        kinds::REST_CHANGE,
        &who,
        None,
        json!({"method": method, "path": path, "status": response.status().as_u16()}),
    );
    response
}

// ---- reference points (Cxi, Mxi) ----

/// What the audit layer of a reference point's server needs.
pub struct PointAudit {
    pub audit: AuditLog,
    /// `cxi` or `mxi`: also the records' kind.
    pub point: &'static str,
    /// The agreement (transaction, session, message) a request belongs to.
    pub classify: crate::nonrepudiation::http::Classify,
}

/// The `tx` of agreement `agreement` at `point`, in the form the daemon's own records use
/// (`cxi-<transaction>`, `session-<id>`, `mxi-<message>`), or the agreement as it is.
pub fn point_tx(point: &str, agreement: &str) -> String {
    let (what, id) = agreement.split_once(' ').unwrap_or((agreement, ""));
    match (point, what) {
        ("cxi", "transaction") if Uuid::parse_str(id).is_ok() => format!("cxi-{id}"),
        ("cxi", "session") => format!("session-{id}"),
        ("mxi", _) if Uuid::parse_str(id).is_ok() => format!("mxi-{id}"),
        _ => agreement.to_owned(),
    }
}

/// Middleware of a reference point's server, outside its signature step
/// ([`crate::nonrepudiation::http::verify_and_sign`]): records every message that may change
/// state (not GET/HEAD/OPTIONS), refused ones included, with its caller, method, path,
/// answer status and agreement (as `tx`). The caller is the signature-verified signer when
/// the signature step checked one, else the TLS peer's certificate identity.
pub async fn reference_point(
    State(point): State<std::sync::Arc<PointAudit>>,
    request: Request,
    next: Next,
) -> Response {
    use axum::http::Method;
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) || !point.audit.is_enabled()
    {
        return next.run(request).await;
    }
    let identity = request
        .extensions()
        .get::<crate::tls::PeerIdentity>()
        .and_then(|p| p.0.clone());
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let (parts, body) = request.into_parts();
    // the listener has read the body whole within its limits already
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(error) => {
            return crate::problem::Problem::new(
                axum::http::StatusCode::BAD_REQUEST,
                "malformed-message",
                error.to_string(),
            )
            .into_response()
        }
    };
    let agreement = (point.classify)(&method, &path, &body);
    let response = next
        .run(Request::from_parts(parts, axum::body::Body::from(body)))
        .await;
    let signer = response
        .extensions()
        .get::<crate::nonrepudiation::http::VerifiedSigner>()
        .map(|v| v.0.clone());
    let who = signer
        .clone()
        .or_else(|| identity.clone())
        .map(|name| cert(&name))
        .unwrap_or_else(|| "anonymous".into());
    let tx = agreement.as_deref().map(|a| point_tx(point.point, a));
    point.audit.append(
        point.point,
        &who,
        tx.as_deref(),
        json!({"method": method.as_str(), "path": path, "status": response.status().as_u16(),
               "agreement": agreement, "tls_identity": identity, "signed_by": signer}),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::point_tx;

    #[test]
    fn agreements_become_the_daemons_transaction_ids() {
        let id = "0b5c4f0e-4a1f-4a57-9a43-2f7f3a9e1d10";
        assert_eq!(
            point_tx("cxi", &format!("transaction {id}")),
            format!("cxi-{id}")
        );
        assert_eq!(
            point_tx("cxi", &format!("session {id}")),
            format!("session-{id}")
        );
        assert_eq!(
            point_tx("cxi", "status segment-fault -"),
            "status segment-fault -"
        );
        assert_eq!(
            point_tx("mxi", &format!("fault-report {id}")),
            format!("mxi-{id}")
        );
        assert_eq!(
            point_tx("mxi", "request /mxi/v1/faults"),
            "request /mxi/v1/faults"
        );
    }
}
