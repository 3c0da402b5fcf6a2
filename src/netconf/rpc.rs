//! The NETCONF protocol operations (RFC 6241, RFC 5277 create-subscription, RFC 6022
//! get-schema) on the server's shared datastores.

use std::sync::Arc;
use std::time::Duration;

use quick_xml::escape::escape;
use roxmltree::Node;
use tracing::Instrument;
use yang2::data::DataTree;

use super::datastore::{self, Datastore};
use super::error::{ErrorTag, ErrorType, RpcError};
use super::limits;
use super::server::{Confirmed, Group, NetconfServer, Stores};
use super::session::SessionState;
use super::xml::{self, EditOp, NS_BASE, NS_MONITORING, NS_NOTIFICATION};
use crate::yang;

/// What the session does after an RPC.
pub enum Outcome {
    Reply(String),
    /// Reply, then close the session.
    Close(String),
}

/// Default confirm timeout of a confirmed commit (RFC 6241: 600 s).
const DEFAULT_CONFIRM_TIMEOUT: u64 = 600;

/// The server's capabilities.
pub fn capabilities(_server: &NetconfServer) -> Vec<String> {
    let mut caps: Vec<String> = [
        super::BASE_1_0,
        super::BASE_1_1,
        "urn:ietf:params:netconf:capability:writable-running:1.0",
        "urn:ietf:params:netconf:capability:candidate:1.0",
        "urn:ietf:params:netconf:capability:confirmed-commit:1.0",
        "urn:ietf:params:netconf:capability:confirmed-commit:1.1",
        "urn:ietf:params:netconf:capability:rollback-on-error:1.0",
        "urn:ietf:params:netconf:capability:validate:1.0",
        "urn:ietf:params:netconf:capability:validate:1.1",
        "urn:ietf:params:netconf:capability:xpath:1.0",
        "urn:ietf:params:netconf:capability:notification:1.0",
        "urn:ietf:params:netconf:capability:interleave:1.0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // RFC 8526: YANG 1.1 modules are announced through the YANG library.
    caps.push(format!(
        "urn:ietf:params:netconf:capability:yang-library:1.1?revision=2019-01-04&content-id={}",
        yang::content_id()
    ));
    for module in yang::context().modules(false) {
        if !module.is_implemented() {
            continue;
        }
        let mut cap = format!("{}?module={}", module.namespace(), module.name());
        if let Some(revision) = module.revision() {
            cap.push_str(&format!("&revision={revision}"));
        }
        caps.push(cap);
    }
    caps
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
    let result = dispatch(server, session, op).instrument(span).await;
    match result {
        Ok(Done::Body(body)) => Outcome::Reply(reply(&attributes, &body)),
        Ok(Done::Close) => Outcome::Close(reply(&attributes, "<ok/>")),
        Err(error) => {
            tracing::info!(op = name, %error, "rpc failed");
            Outcome::Reply(reply(&attributes, &error.to_xml()))
        }
    }
}

enum Done {
    Body(String),
    Close,
}

fn ok() -> Result<Done, RpcError> {
    Ok(Done::Body("<ok/>".into()))
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

fn child<'a, 'input>(node: Node<'a, 'input>, name: &str) -> Option<Node<'a, 'input>> {
    node.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

fn text_of(node: Node<'_, '_>, name: &str) -> Option<String> {
    child(node, name).map(|c| c.text().unwrap_or_default().trim().to_owned())
}

fn datastore_arg(op: Node<'_, '_>, which: &str) -> Result<Datastore, RpcError> {
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

/// The filter of a get/get-config: XPath expressions (JSON prefixes), or None for all.
struct Filter {
    xpaths: Option<Vec<String>>,
    /// Children of `netconf-state` asked for (`Some(vec![])`: all of it).
    monitoring: Option<Vec<String>>,
}

fn filter(op: Node<'_, '_>) -> Result<Filter, RpcError> {
    let Some(f) = child(op, "filter") else {
        return Ok(Filter {
            xpaths: None,
            monitoring: Some(Vec::new()),
        });
    };
    let kind = f
        .attributes()
        .find(|a| a.name() == "type")
        .map(|a| a.value())
        .unwrap_or("subtree");
    match kind {
        "subtree" => {
            let monitoring = f
                .children()
                .find(|c| {
                    c.is_element()
                        && c.tag_name().namespace() == Some(NS_MONITORING)
                        && c.tag_name().name() == "netconf-state"
                })
                .map(|n| {
                    n.children()
                        .filter(Node::is_element)
                        .map(|c| c.tag_name().name().to_owned())
                        .collect()
                });
            Ok(Filter {
                xpaths: Some(xml::subtree_to_xpaths(f)?),
                monitoring,
            })
        }
        "xpath" => {
            let select = f
                .attributes()
                .find(|a| a.name() == "select")
                .map(|a| a.value())
                .ok_or_else(|| {
                    RpcError::protocol(ErrorTag::MissingAttribute, "an xpath filter needs select")
                        .info("bad-attribute", "select")
                        .info("bad-element", "filter")
                })?;
            let mut expr = select.to_owned();
            // XML prefixes of the filter element -> module names
            for ns in f.namespaces() {
                if let (Some(prefix), Some(module)) =
                    (ns.name(), yang::context().get_module_latest_ns(ns.uri()))
                {
                    expr = replace_prefix(&expr, prefix, module.name());
                }
            }
            xml::check_xpath(&expr)?;
            let monitoring = select.contains("netconf-state").then(Vec::new);
            Ok(Filter {
                xpaths: Some(vec![expr]),
                monitoring,
            })
        }
        other => Err(RpcError::protocol(
            ErrorTag::BadAttribute,
            format!("filter type {other} is not supported"),
        )
        .info("bad-attribute", "type")),
    }
}

/// Replaces the XML prefix `prefix:` by `module:` where it starts a name.
fn replace_prefix(expr: &str, prefix: &str, module: &str) -> String {
    let needle = format!("{prefix}:");
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(pos) = rest.find(&needle) {
        let starts_name = pos == 0
            || !rest[..pos].chars().last().is_some_and(|c| {
                c.is_alphanumeric() || c == '-' || c == '_' || c == '.' || c == ':'
            });
        out.push_str(&rest[..pos]);
        if starts_name {
            out.push_str(module);
            out.push(':');
        } else {
            out.push_str(&needle);
        }
        rest = &rest[pos + needle.len()..];
    }
    out.push_str(rest);
    out
}

async fn get(
    server: &Arc<NetconfServer>,
    op: Node<'_, '_>,
    source: Option<Datastore>,
) -> Result<Done, RpcError> {
    let filter = filter(op)?;
    let mut tree = {
        let stores = server.stores.lock().expect("stores");
        match source {
            Some(Datastore::Candidate) => datastore::duplicate(&stores.candidate)?,
            _ => datastore::duplicate(&stores.running)?,
        }
    };
    if source.is_none() {
        let app = server.app.clone();
        let state = tokio::task::spawn_blocking(move || app.state())
            .await
            .map_err(|e| RpcError::application(ErrorTag::OperationFailed, e.to_string()))??;
        if state.reference().is_some() {
            tree.merge(&state)?;
        }
        let library = yang::yang_library().map_err(datastore::yang_error)?;
        tree.merge(&library)?;
    }
    let selected = match &filter.xpaths {
        Some(xpaths) => datastore::select(&tree, xpaths)?,
        None => tree,
    };
    let mut body = datastore::to_xml(&selected)?;
    if source.is_none() {
        if let Some(parts) = &filter.monitoring {
            body.push_str(&monitoring_xml(server, parts));
        }
    }
    Ok(Done::Body(format!("<data>{body}</data>")))
}

/// `netconf-state` of ietf-netconf-monitoring: capabilities, schemas, sessions.
fn monitoring_xml(server: &NetconfServer, parts: &[String]) -> String {
    let want = |p: &str| parts.is_empty() || parts.iter().any(|x| x == p);
    let mut out = format!("<netconf-state xmlns=\"{NS_MONITORING}\">");
    if want("capabilities") {
        out.push_str("<capabilities>");
        for cap in capabilities(server) {
            out.push_str(&format!(
                "<capability>{}</capability>",
                escape(cap.as_str())
            ));
        }
        out.push_str("</capabilities>");
    }
    if want("schemas") {
        out.push_str("<schemas>");
        for module in yang::context().modules(false) {
            out.push_str(&format!(
                "<schema><identifier>{}</identifier><version>{}</version><format>yang</format><namespace>{}</namespace><location>NETCONF</location></schema>",
                module.name(),
                module.revision().unwrap_or_default(),
                escape(module.namespace())
            ));
        }
        out.push_str("</schemas>");
    }
    if want("sessions") {
        out.push_str("<sessions>");
        for (id, info) in server.sessions.lock().expect("sessions").iter() {
            out.push_str(&format!(
                "<session><session-id>{id}</session-id><transport xmlns:ncm=\"{NS_MONITORING}\">ncm:netconf-ssh</transport><username>{}</username><login-time>{}</login-time></session>",
                escape(info.user.as_str()),
                info.started
            ));
        }
        out.push_str("</sessions>");
    }
    out.push_str("</netconf-state>");
    out
}

fn check_not_locked(stores: &Stores, target: Datastore, session: u32) -> Result<(), RpcError> {
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

/// Makes `new` the running datastore: validated, accepted by the application, persisted.
fn set_running(
    server: &NetconfServer,
    stores: &mut Stores,
    mut new: DataTree<'static>,
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
    if !stores.candidate_modified {
        stores.candidate = datastore::duplicate(&new)?;
    }
    stores.running = new;
    Ok(())
}

fn edit_config(
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
        Datastore::Running => set_running(server, &mut stores, new)?,
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

fn copy_config(
    server: &Arc<NetconfServer>,
    session: &SessionState,
    op: Node<'_, '_>,
) -> Result<Done, RpcError> {
    let target = datastore_arg(op, "target")?;
    let mut new = config_source(server, op)?;
    let mut stores = server.stores.lock().expect("stores");
    check_not_locked(&stores, target, session.id)?;
    match target {
        Datastore::Running => set_running(server, &mut stores, new)?,
        Datastore::Candidate => {
            datastore::validate(&mut new)?;
            stores.candidate = new;
            stores.candidate_modified = true;
        }
    }
    ok()
}

fn validate(server: &NetconfServer, op: Node<'_, '_>) -> Result<Done, RpcError> {
    let mut tree = config_source(server, op)?;
    datastore::validate(&mut tree)?;
    ok()
}

fn lock(
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

fn kill_session(
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

fn commit(
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
    if let Err(error) = set_running(server, &mut stores, new) {
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

fn cancel_commit(
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

/// Restores the running datastore saved by a pending confirmed commit.
pub(crate) fn rollback_confirmed(server: &NetconfServer, stores: &mut Stores) {
    let Some(pending) = stores.confirmed.take() else {
        return;
    };
    if let Err(error) = server.app.apply(&stores.running, &pending.rollback) {
        tracing::error!(%error, "the application refused the rollback configuration");
    }
    if server.persist(&pending.rollback) {
        server.clear_rollback_point();
    }
    match datastore::duplicate(&pending.rollback) {
        Ok(copy) => {
            stores.candidate = copy;
            stores.candidate_modified = false;
        }
        Err(error) => tracing::error!(%error, "cannot copy the rollback configuration"),
    }
    stores.running = pending.rollback;
    tracing::info!("running configuration rolled back");
}

fn get_schema(op: Node<'_, '_>) -> Result<Done, RpcError> {
    let identifier = text_of(op, "identifier").ok_or_else(|| {
        RpcError::protocol(ErrorTag::MissingElement, "identifier is missing")
            .info("bad-element", "identifier")
    })?;
    let version = text_of(op, "version").filter(|v| !v.is_empty());
    if let Some(format) = text_of(op, "format") {
        let format = format.rsplit(':').next().unwrap_or_default().to_owned();
        if format != "yang" {
            return Err(RpcError::protocol(
                ErrorTag::InvalidValue,
                format!("schema format {format} is not supported"),
            )
            .app_tag("data-not-unique"));
        }
    }
    let text = match yang::module_source(&identifier, version.as_deref()) {
        Some(module) => module.text.to_owned(),
        None => {
            let module = match &version {
                Some(v) => yang::context().get_module(&identifier, Some(v.as_str())),
                None => yang::context().get_module_latest(&identifier),
            }
            .ok_or_else(|| {
                RpcError::protocol(ErrorTag::InvalidValue, format!("no schema {identifier}"))
                    .info("bad-element", "identifier")
            })?;
            module
                .print_string(
                    yang2::schema::SchemaOutputFormat::YANG,
                    yang2::schema::SchemaPrinterFlags::empty(),
                )
                .map_err(RpcError::from)?
        }
    };
    Ok(Done::Body(format!(
        "<data xmlns=\"{NS_MONITORING}\">{}</data>",
        escape(text.as_str())
    )))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xpath_prefixes_become_module_names() {
        assert_eq!(
            replace_prefix("/n:qkd_node/n:qkd_links", "n", "etsi-qkd-sdn-node"),
            "/etsi-qkd-sdn-node:qkd_node/etsi-qkd-sdn-node:qkd_links"
        );
        assert_eq!(
            replace_prefix("/an:x[bn:y='n:z']", "n", "m"),
            "/an:x[bn:y='m:z']"
        );
    }
}
