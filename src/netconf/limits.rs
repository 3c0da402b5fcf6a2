//! Bounds on the XML qkdni reads from a peer, checked before any recursive processing.
//!
//! roxmltree's tokenizer descends one Rust call per element level, and so do the
//! serialisation of edits ([`super::xml::serialize_children`]) and libyang's parser behind
//! yang2: a message nesting a few thousand elements overflowed a tokio worker's stack and
//! aborted the whole process. Every NETCONF message a server or client of qkdni reads goes
//! through [`parse`], which first walks the text with quick-xml's flat (non-recursive)
//! reader, counting depth, elements and attributes, and only then hands it to roxmltree.
//! Everything downstream of a parsed message (filters, edits, libyang trees) is therefore no
//! deeper than [`MAX_DEPTH`].
//!
//! The limits, in one place:
//! - nesting depth: [`MAX_DEPTH`];
//! - elements per message: [`MAX_ELEMENTS`];
//! - attributes (namespace declarations included) per element: [`MAX_ATTRIBUTES`];
//! - message size: `max_message_bytes` of the NETCONF configuration (16 MiB by default),
//!   enforced while reading frames by [`super::framing::NetconfCodec`];
//! - subtree filters: at most 32 levels and 1 024 XPath expressions (`xml.rs`).
//!
//! JSON bodies (ETSI 014/020, Kxi, Cxi, Mxi) are read with serde_json, whose deserialiser
//! refuses nesting deeper than 128 levels (its default; the `unbounded_depth` feature that
//! lifts it is not enabled anywhere in the dependency tree): see the test at the end.

use quick_xml::events::Event;
use quick_xml::Reader;

use super::error::{ErrorTag, ErrorType, RpcError};

/// Deepest element nesting accepted (the YANG data models of qkdni are under 20 levels).
pub const MAX_DEPTH: usize = 128;
/// Most elements one message may hold.
pub const MAX_ELEMENTS: usize = 100_000;
/// Most attributes (namespace declarations included) one element may carry.
pub const MAX_ATTRIBUTES: usize = 64;

/// Why a message was refused before parsing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// Elements nest deeper than [`MAX_DEPTH`].
    #[error("elements nest deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// More than [`MAX_ELEMENTS`] elements.
    #[error("the message has more than {MAX_ELEMENTS} elements")]
    TooManyElements,
    /// An element has more than [`MAX_ATTRIBUTES`] attributes.
    #[error("element {element} has more than {MAX_ATTRIBUTES} attributes")]
    TooManyAttributes {
        /// The element's name as written.
        element: String,
    },
    /// A document type declaration: NETCONF has no use for DTDs, and their entities could
    /// hide nesting from the count.
    #[error("document type declarations are not accepted")]
    Doctype,
    /// Not well-formed XML.
    #[error("malformed XML: {0}")]
    Malformed(String),
}

impl LimitError {
    /// The `rpc-error` answering a message refused for this reason (RFC 6241 appendix A):
    /// `too-big` for the element count, `malformed-message` otherwise.
    pub fn to_rpc_error(&self) -> RpcError {
        let tag = match self {
            LimitError::TooManyElements => ErrorTag::TooBig,
            _ => ErrorTag::MalformedMessage,
        };
        let error = RpcError::new(ErrorType::Rpc, tag, self.to_string());
        match self {
            LimitError::TooManyAttributes { element } => error.info("bad-element", element),
            _ => error,
        }
    }
}

/// Checks `xml` against the limits without recursion; parse it only if this passes.
pub fn check(xml: &str) -> Result<(), LimitError> {
    let mut reader = Reader::from_str(xml);
    let mut depth = 0usize;
    let mut elements = 0usize;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| LimitError::Malformed(e.to_string()))?;
        let opens = matches!(event, Event::Start(_));
        match event {
            Event::Start(start) | Event::Empty(start) => {
                elements += 1;
                if elements > MAX_ELEMENTS {
                    return Err(LimitError::TooManyElements);
                }
                if depth + 1 > MAX_DEPTH {
                    return Err(LimitError::TooDeep);
                }
                // the attribute iterator checks duplicates pairwise: stop at the limit
                let mut attributes = 0usize;
                for attribute in start.attributes().take(MAX_ATTRIBUTES + 1) {
                    attribute.map_err(|e| LimitError::Malformed(e.to_string()))?;
                    attributes += 1;
                }
                if attributes > MAX_ATTRIBUTES {
                    return Err(LimitError::TooManyAttributes {
                        element: String::from_utf8_lossy(start.name().as_ref()).into_owned(),
                    });
                }
                if opens {
                    depth += 1;
                }
            }
            Event::End(_) => depth = depth.saturating_sub(1),
            Event::DocType(_) => return Err(LimitError::Doctype),
            Event::Eof => return Ok(()),
            _ => {}
        }
    }
}

/// Checks `xml` against the limits, then parses it with roxmltree (node ranges are
/// offsets in `xml` as given).
pub fn parse(xml: &str) -> Result<roxmltree::Document<'_>, LimitError> {
    check(xml)?;
    roxmltree::Document::parse(xml).map_err(|e| LimitError::Malformed(e.to_string()))
}

/// The unprefixed attributes (e.g. `message-id`) of the root element of `xml`, read
/// without parsing the rest: a refused `<rpc>` still gets a reply its client can match.
/// Empty when the root element cannot be read.
pub fn root_attributes(xml: &str) -> Vec<(String, String)> {
    let mut reader = Reader::from_str(xml);
    loop {
        match reader.read_event() {
            Ok(Event::Start(start)) | Ok(Event::Empty(start)) => {
                return start
                    .attributes()
                    .take(MAX_ATTRIBUTES)
                    .map_while(Result::ok)
                    .filter(|a| {
                        let key = a.key.as_ref();
                        !key.contains(&b':') && key != b"xmlns"
                    })
                    .filter_map(|a| {
                        let value = a.unescape_value().ok()?.into_owned();
                        Some((String::from_utf8_lossy(a.key.as_ref()).into_owned(), value))
                    })
                    .collect();
            }
            Ok(Event::Eof) | Err(_) => return Vec::new(),
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}{}", "<a>".repeat(depth), "</a>".repeat(depth))
    }

    #[test]
    fn depth_is_bounded() {
        assert_eq!(check(&nested(MAX_DEPTH)), Ok(()));
        assert_eq!(check(&nested(MAX_DEPTH + 1)), Err(LimitError::TooDeep));
        // an empty element one level too deep counts too
        let empty = format!(
            "{}<b/>{}",
            "<a>".repeat(MAX_DEPTH),
            "</a>".repeat(MAX_DEPTH)
        );
        assert_eq!(check(&empty), Err(LimitError::TooDeep));
        // far deeper than a stack could take, refused without recursion
        let deep = nested(1_000_000);
        assert_eq!(check(&deep), Err(LimitError::TooDeep));
        assert!(matches!(parse(&deep), Err(LimitError::TooDeep)));
        // siblings do not add depth
        let wide = format!("<r>{}</r>", nested(MAX_DEPTH - 1).repeat(100));
        assert_eq!(check(&wide), Ok(()));
    }

    #[test]
    fn element_count_is_bounded() {
        let ok = format!("<r>{}</r>", "<e/>".repeat(MAX_ELEMENTS - 1));
        assert_eq!(check(&ok), Ok(()));
        let over = format!("<r>{}</r>", "<e/>".repeat(MAX_ELEMENTS));
        assert_eq!(check(&over), Err(LimitError::TooManyElements));
        assert_eq!(
            LimitError::TooManyElements.to_rpc_error().tag,
            ErrorTag::TooBig
        );
    }

    #[test]
    fn attributes_per_element_are_bounded() {
        let attrs = |n: usize| (0..n).map(|i| format!(" a{i}=\"{i}\"")).collect::<String>();
        assert_eq!(check(&format!("<r{}/>", attrs(MAX_ATTRIBUTES))), Ok(()));
        let over = format!("<r><e{}></e></r>", attrs(MAX_ATTRIBUTES + 1));
        let error = check(&over).unwrap_err();
        assert_eq!(
            error,
            LimitError::TooManyAttributes {
                element: "e".into()
            }
        );
        let rpc = error.to_rpc_error();
        assert_eq!(rpc.tag, ErrorTag::MalformedMessage);
        assert_eq!(rpc.info, vec![("bad-element".into(), "e".into())]);
    }

    #[test]
    fn doctypes_and_malformed_xml_are_refused() {
        let dtd = "<!DOCTYPE r [<!ENTITY e \"<a><a></a></a>\">]><r>&e;</r>";
        assert_eq!(check(dtd), Err(LimitError::Doctype));
        assert!(matches!(check("<a></b>"), Err(LimitError::Malformed(_))));
        assert!(matches!(check("<a x=1/>"), Err(LimitError::Malformed(_))));
        assert!(matches!(parse("<a>"), Err(LimitError::Malformed(_))));
        assert_eq!(
            LimitError::TooDeep.to_rpc_error().tag,
            ErrorTag::MalformedMessage
        );
    }

    #[test]
    fn root_attributes_are_read_without_parsing_the_rest() {
        let deep = format!(
            "<?xml version=\"1.0\"?><rpc xmlns=\"urn:x\" xmlns:p=\"urn:p\" p:q=\"1\" message-id=\"7&amp;\">{}",
            nested(100_000)
        );
        assert_eq!(
            root_attributes(&deep),
            vec![("message-id".to_string(), "7&".to_string())]
        );
        assert!(root_attributes("no xml").is_empty());
    }

    #[test]
    fn ordinary_messages_pass() {
        let rpc = "<?xml version=\"1.0\"?><!-- hi --><rpc xmlns=\"urn:ietf:params:xml:ns:netconf:base:1.0\" message-id=\"1\"><get><filter type=\"subtree\"><![CDATA[x]]></filter></get></rpc>";
        let doc = parse(rpc).unwrap();
        assert_eq!(doc.root_element().tag_name().name(), "rpc");
    }

    #[test]
    fn json_bodies_are_bounded_by_serde_json() {
        // serde_json's default recursion limit (128) refuses deep bodies with an error
        // instead of recursing: the HTTP handlers rely on it
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let error = serde_json::from_str::<serde_json::Value>(&deep).unwrap_err();
        assert!(error.to_string().contains("recursion limit"), "{error}");
        let fine = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(serde_json::from_str::<serde_json::Value>(&fine).is_ok());
    }
}
