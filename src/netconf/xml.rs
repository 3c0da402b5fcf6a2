//! XML handling of NETCONF messages (roxmltree to read, quick-xml to write and escape):
//! re-serialising fragments with their namespaces, collecting `nc:operation` attributes of
//! edits, and turning subtree filters into XPath for libyang.

use std::collections::BTreeMap;

use quick_xml::escape::escape;
use roxmltree::Node;
use yang2::schema::SchemaNodeKind;

use super::error::{ErrorTag, RpcError};

/// The NETCONF base namespace.
pub const NS_BASE: &str = "urn:ietf:params:xml:ns:netconf:base:1.0";
/// RFC 5277 notification namespace.
pub const NS_NOTIFICATION: &str = "urn:ietf:params:xml:ns:netconf:notification:1.0";
/// ietf-netconf-monitoring namespace.
pub const NS_MONITORING: &str = "urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring";

/// An edit operation (RFC 6241 section 7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditOp {
    Merge,
    Replace,
    Create,
    Delete,
    Remove,
    /// `default-operation none`: only a path to other operations.
    None,
}

impl EditOp {
    /// Parses an `operation` attribute or `default-operation` value.
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "merge" => EditOp::Merge,
            "replace" => EditOp::Replace,
            "create" => EditOp::Create,
            "delete" => EditOp::Delete,
            "remove" => EditOp::Remove,
            "none" => EditOp::None,
            _ => return None,
        })
    }
}

/// An element of an edit carrying an explicit operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditPoint {
    /// Data path (JSON-style prefixes, list keys as predicates).
    pub path: String,
    pub op: EditOp,
}

/// Serialises the children of `node` (e.g. `<config>`) as standalone XML with every
/// namespace they use declared, dropping `nc:operation` attributes; returns the XML and the
/// edit points found.
pub fn serialize_children(node: Node<'_, '_>) -> Result<(String, Vec<EditPoint>), RpcError> {
    let mut out = String::new();
    let mut points = Vec::new();
    for child in node.children().filter(Node::is_element) {
        write_element(child, None, &mut out, &mut points, &PathBuilder::root())?;
    }
    Ok((out, points))
}

/// Builds the data path of the element being written.
struct PathBuilder {
    schema_path: String,
    data_path: String,
    parent_module: Option<String>,
}

impl PathBuilder {
    fn root() -> Self {
        Self {
            schema_path: String::new(),
            data_path: String::new(),
            parent_module: None,
        }
    }

    fn child(&self, element: Node<'_, '_>) -> Result<PathBuilder, RpcError> {
        let ns = element.tag_name().namespace().unwrap_or_default();
        let name = element.tag_name().name();
        let module = crate::yang::context()
            .get_module_latest_ns(ns)
            .ok_or_else(|| {
                RpcError::protocol(
                    ErrorTag::UnknownNamespace,
                    format!("unknown namespace {ns:?}"),
                )
                .info("bad-element", name)
                .info("bad-namespace", ns)
            })?
            .name()
            .to_owned();
        let segment = if self.parent_module.as_deref() == Some(module.as_str()) {
            name.to_owned()
        } else {
            format!("{module}:{name}")
        };
        let schema_path = format!("{}/{segment}", self.schema_path);
        let schema = crate::yang::context()
            .find_path(&schema_path)
            .map_err(|_| {
                RpcError::application(ErrorTag::UnknownElement, format!("unknown element {name}"))
                    .info("bad-element", name)
                    .path(schema_path.clone())
            })?;
        let mut data_path = format!("{}/{segment}", self.data_path);
        match schema.kind() {
            SchemaNodeKind::List => {
                for key in schema.list_keys() {
                    let value = element
                        .children()
                        .find(|c| c.is_element() && c.tag_name().name() == key.name())
                        .and_then(|c| c.text())
                        .ok_or_else(|| {
                            RpcError::protocol(
                                ErrorTag::MissingElement,
                                format!("list {name} lacks key {}", key.name()),
                            )
                            .info("bad-element", key.name())
                        })?;
                    data_path.push_str(&format!("[{}={}]", key.name(), quote(value.trim())));
                }
            }
            SchemaNodeKind::LeafList => {
                let value = element.text().unwrap_or_default().trim();
                data_path.push_str(&format!("[.={}]", quote(value)));
            }
            _ => {}
        }
        Ok(PathBuilder {
            schema_path,
            data_path,
            parent_module: Some(module),
        })
    }
}

/// An XPath string literal for `value`.
pub fn quote(value: &str) -> String {
    if !value.contains('\'') {
        format!("'{value}'")
    } else {
        format!("\"{value}\"")
    }
}

/// Recursive, one call per level: bounded by the entry check of every message
/// ([`super::limits::MAX_DEPTH`] levels), as is libyang's parser that reads the result.
fn write_element(
    element: Node<'_, '_>,
    parent: Option<Node<'_, '_>>,
    out: &mut String,
    points: &mut Vec<EditPoint>,
    path: &PathBuilder,
) -> Result<(), RpcError> {
    let here = path.child(element)?;
    let tag = element.tag_name();
    out.push('<');
    out.push_str(tag.name());
    let ns = tag.namespace().unwrap_or_default();
    let parent_ns = parent.and_then(|p| p.tag_name().namespace());
    if parent_ns != Some(ns) {
        out.push_str(&format!(" xmlns=\"{}\"", escape(ns)));
    }
    // prefixed namespaces in scope here and not in the parent (all of them at the top),
    // needed by prefixed values such as identityrefs
    let inherited: BTreeMap<&str, &str> = parent
        .map(|p| {
            p.namespaces()
                .filter_map(|n| n.name().map(|name| (name, n.uri())))
                .collect()
        })
        .unwrap_or_default();
    for namespace in element.namespaces() {
        if let Some(prefix) = namespace.name() {
            if inherited.get(prefix) != Some(&namespace.uri()) {
                out.push_str(&format!(" xmlns:{prefix}=\"{}\"", escape(namespace.uri())));
            }
        }
    }
    for attribute in element.attributes() {
        match (attribute.namespace(), attribute.name()) {
            (Some(NS_BASE), "operation") => {
                let op = EditOp::parse(attribute.value())
                    .filter(|op| *op != EditOp::None)
                    .ok_or_else(|| {
                        RpcError::protocol(
                            ErrorTag::BadAttribute,
                            format!("bad operation {:?}", attribute.value()),
                        )
                        .info("bad-attribute", "operation")
                        .info("bad-element", tag.name())
                    })?;
                points.push(EditPoint {
                    path: here.data_path.clone(),
                    op,
                });
            }
            (Some(_), _) => {} // other annotations (e.g. yang:insert) are not supported: dropped
            (None, name) => out.push_str(&format!(" {name}=\"{}\"", escape(attribute.value()))),
        }
    }
    out.push('>');
    for child in element.children() {
        if child.is_element() {
            write_element(child, Some(element), out, points, &here)?;
        } else if child.is_text() {
            out.push_str(&escape(child.text().unwrap_or_default()));
        }
    }
    out.push_str("</");
    out.push_str(tag.name());
    out.push('>');
    Ok(())
}

/// Converts a subtree filter (the children of `<filter type="subtree">`) into XPath
/// expressions selecting the same data (RFC 6241 section 6).
pub fn subtree_to_xpaths(filter: Node<'_, '_>) -> Result<Vec<String>, RpcError> {
    let mut out = Vec::new();
    for top in filter.children().filter(Node::is_element) {
        let ns = top.tag_name().namespace().ok_or_else(|| {
            RpcError::protocol(
                ErrorTag::InvalidValue,
                "a subtree filter's top elements need a namespace",
            )
            .info("bad-element", top.tag_name().name())
        })?;
        let Some(module) = crate::yang::context().get_module_latest_ns(ns) else {
            continue; // a namespace we do not implement selects nothing
        };
        let path = format!("/{}:{}", module.name(), top.tag_name().name());
        filter_element(top, path, &mut out, 0)?;
    }
    Ok(out)
}

/// Deepest subtree filter accepted (the data models are far shallower).
const MAX_FILTER_DEPTH: usize = 32;
/// Most XPath expressions one subtree filter may turn into.
const MAX_FILTER_PATHS: usize = 1024;

/// Recursive, one call per level: bounded by [`MAX_FILTER_DEPTH`] (and the message itself
/// by [`super::limits::MAX_DEPTH`]).
fn filter_element(
    element: Node<'_, '_>,
    path: String,
    out: &mut Vec<String>,
    depth: usize,
) -> Result<(), RpcError> {
    if depth > MAX_FILTER_DEPTH || out.len() > MAX_FILTER_PATHS {
        return Err(
            RpcError::protocol(ErrorTag::TooBig, "subtree filter too deep or too wide")
                .info("bad-element", element.tag_name().name()),
        );
    }
    let children: Vec<Node<'_, '_>> = element.children().filter(Node::is_element).collect();
    if children.is_empty() {
        out.push(path); // selection node
        return Ok(());
    }
    let mut predicates = String::new();
    let mut rest = Vec::new();
    for child in &children {
        let is_leaf_match = !child.children().any(|c| c.is_element())
            && child.text().is_some_and(|t| !t.trim().is_empty());
        if is_leaf_match {
            predicates.push_str(&format!(
                "[{}={}]",
                child_step(element, *child),
                quote(child.text().unwrap_or_default().trim())
            ));
        } else {
            rest.push(*child);
        }
    }
    let base = format!("{path}{predicates}");
    if rest.is_empty() {
        out.push(base); // only content matches: the whole matching element
        return Ok(());
    }
    for child in &children {
        if !rest.contains(child) {
            out.push(format!("{base}/{}", child_step(element, *child)));
        }
    }
    for child in rest {
        filter_element(
            child,
            format!("{base}/{}", child_step(element, child)),
            out,
            depth + 1,
        )?;
    }
    Ok(())
}

/// The XPath step of `child`: prefixed when its namespace differs from its parent's.
fn child_step(parent: Node<'_, '_>, child: Node<'_, '_>) -> String {
    let name = child.tag_name().name();
    match child.tag_name().namespace() {
        Some(ns) if Some(ns) != parent.tag_name().namespace() => {
            match crate::yang::context().get_module_latest_ns(ns) {
                Some(module) => format!("{}:{name}", module.name()),
                None => name.to_owned(),
            }
        }
        _ => name.to_owned(),
    }
}

/// Accepts only the XPath subset qkdni evaluates: a union (`|`) of absolute location paths
/// whose steps are (prefixed) names or `*`, each with predicates that compare a relative
/// path of names (or `.`) with a literal or a number, joined by `and`/`or`, or that are a
/// position number. libyang 2's XPath lexer and evaluator crash on some malformed
/// expressions (the fuzzer found `6/x` and `.mod...`, read as the `mod` operator), so
/// nothing else reaches it.
pub fn check_xpath(expr: &str) -> Result<(), RpcError> {
    XPathCheck {
        s: expr.as_bytes(),
        i: 0,
    }
    .union()
    .map_err(|why| {
        RpcError::protocol(
            ErrorTag::InvalidValue,
            format!("unsupported XPath expression: {why}"),
        )
        .info("bad-attribute", "select")
    })
}

struct XPathCheck<'a> {
    s: &'a [u8],
    i: usize,
}

impl XPathCheck<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_ws();
        if self.s[self.i..].starts_with(token.as_bytes()) {
            self.i += token.len();
            true
        } else {
            false
        }
    }

    fn union(&mut self) -> Result<(), &'static str> {
        loop {
            self.path()?;
            if !self.eat("|") {
                break;
            }
        }
        if self.peek().is_some() {
            return Err("unexpected text after a location path");
        }
        Ok(())
    }

    fn path(&mut self) -> Result<(), &'static str> {
        if self.peek() != Some(b'/') {
            return Err("only absolute location paths are supported");
        }
        while self.eat("/") {
            self.step()?;
        }
        Ok(())
    }

    fn name(&mut self) -> Result<(), &'static str> {
        self.skip_ws();
        let start = self.i;
        let first = self.s.get(self.i).copied();
        if first == Some(b'*') {
            self.i += 1;
            return Ok(());
        }
        if !first.is_some_and(|c| c.is_ascii_alphabetic() || c == b'_') {
            return Err("a step must be a name or *");
        }
        while self.i < self.s.len()
            && (self.s[self.i].is_ascii_alphanumeric()
                || matches!(self.s[self.i], b'_' | b'-' | b'.'))
        {
            self.i += 1;
        }
        if self.s.get(self.i) == Some(&b':') && self.i > start {
            // one prefix, then the local name
            self.i += 1;
            let local = self.i;
            if self.s.get(self.i) == Some(&b'*') {
                self.i += 1;
                return Ok(());
            }
            while self.i < self.s.len()
                && (self.s[self.i].is_ascii_alphanumeric()
                    || matches!(self.s[self.i], b'_' | b'-' | b'.'))
            {
                self.i += 1;
            }
            if self.i == local || !self.s[local].is_ascii_alphabetic() && self.s[local] != b'_' {
                return Err("a prefix must be followed by a name");
            }
        }
        Ok(())
    }

    fn step(&mut self) -> Result<(), &'static str> {
        self.name()?;
        while self.eat("[") {
            self.predicate()?;
            if !self.eat("]") {
                return Err("unterminated predicate");
            }
        }
        Ok(())
    }

    fn predicate(&mut self) -> Result<(), &'static str> {
        loop {
            self.comparison()?;
            if !(self.eat("and ") || self.eat("or ")) {
                return Ok(());
            }
        }
    }

    fn comparison(&mut self) -> Result<(), &'static str> {
        if self.peek().is_some_and(|c| c.is_ascii_digit()) {
            return self.number(); // a position
        }
        if !self.eat(".") {
            self.name()?;
            while self.eat("/") {
                self.name()?;
            }
        }
        let op = ["!=", "<=", ">=", "=", "<", ">"]
            .into_iter()
            .find(|op| self.eat(op));
        if op.is_none() {
            return Ok(()); // existence test
        }
        match self.peek() {
            Some(q @ (b'\'' | b'"')) => {
                self.i += 1;
                let end = self.s[self.i..]
                    .iter()
                    .position(|&c| c == q)
                    .ok_or("unterminated literal")?;
                self.i += end + 1;
                Ok(())
            }
            Some(c) if c.is_ascii_digit() || c == b'-' => self.number(),
            _ => Err("a comparison needs a literal or a number"),
        }
    }

    fn number(&mut self) -> Result<(), &'static str> {
        self.skip_ws();
        if self.s.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        let start = self.i;
        while self.i < self.s.len() && (self.s[self.i].is_ascii_digit() || self.s[self.i] == b'.') {
            self.i += 1;
        }
        if self.i == start {
            return Err("bad number");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xpath_forms_libyang_cannot_take_are_refused() {
        for ok in [
            "/a:b/c[d='1']/e",
            "/a:x[n1='v']/y | /b:z",
            "/a:b/c[. = 'x/y']",
            "/a:b[2]",
            "/a:b[c/d = 3 and e != \"x\"]",
            "/a:*",
            "/etsi-qkd-sdn-node:qkd_node/qkd_links/qkd_link[qkdl_id='a1-a2']/qkdni-km:key-pool",
        ] {
            assert!(check_xpath(ok).is_ok(), "{ok}");
        }
        for bad in [
            "6666/n:x",
            "'a'/b",
            "count(/a)/b",
            "(/a|/b)/c",
            "/a[1/b]",
            "5[/a]",
            "$v/a",
            "/a['x",
            ".modules-statnn_id",
            "/a mod /b",
            "/a[count(b)=2]",
            "a/b",
        ] {
            assert!(check_xpath(bad).is_err(), "{bad}");
        }
    }
}
