//! Reading: get and get-config with subtree and XPath filters, ietf-netconf-monitoring's
//! `netconf-state`, get-schema (RFC 6022).

use std::sync::Arc;

use quick_xml::escape::escape;
use roxmltree::Node;

use super::capabilities::capabilities;
use super::operation::{child, text_of, Done};
use crate::netconf::datastore::{self, Datastore};
use crate::netconf::error::{ErrorTag, RpcError};
use crate::netconf::server::NetconfServer;
use crate::netconf::xml::{self, NS_MONITORING};
use crate::yang;

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

pub(super) async fn get(
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

pub(super) fn get_schema(op: Node<'_, '_>) -> Result<Done, RpcError> {
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
