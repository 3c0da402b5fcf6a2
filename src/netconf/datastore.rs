//! NETCONF datastores (running, candidate) as libyang data trees, and the edit-config
//! engine: every change is computed on a copy, validated whole by libyang, checked and
//! applied by the application, and only then becomes the datastore (all or nothing).

use yang2::data::{
    Data, DataFormat, DataParserFlags, DataPrinterFlags, DataTree, DataValidationFlags,
};

use super::error::{ErrorTag, RpcError};
use super::xml::{EditOp, EditPoint};
use crate::yang;

/// A configuration datastore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Datastore {
    Running,
    Candidate,
}

impl Datastore {
    /// Parses a datastore element name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "running" => Some(Datastore::Running),
            "candidate" => Some(Datastore::Candidate),
            _ => None,
        }
    }

    /// The datastore's element name.
    pub fn name(self) -> &'static str {
        match self {
            Datastore::Running => "running",
            Datastore::Candidate => "candidate",
        }
    }
}

/// Parses configuration XML (no state, unknown elements rejected) without validating it.
pub fn parse_config(xml: &str) -> Result<DataTree<'static>, RpcError> {
    if xml.trim().is_empty() {
        return Ok(yang::empty());
    }
    yang::parse_data(
        xml,
        DataFormat::XML,
        DataParserFlags::STRICT | DataParserFlags::NO_STATE | DataParserFlags::NO_VALIDATION,
        DataValidationFlags::empty(),
    )
    .map_err(yang_error)
}

/// An `rpc-error` from a libyang failure.
pub fn yang_error(e: yang::YangError) -> RpcError {
    match e {
        yang::YangError::InteriorNul => {
            RpcError::protocol(ErrorTag::MalformedMessage, e.to_string())
        }
        yang::YangError::Libyang(e) => e.into(),
    }
}

/// Validates a configuration tree as a complete datastore.
pub fn validate(tree: &mut DataTree<'static>) -> Result<(), RpcError> {
    tree.validate(DataValidationFlags::NO_STATE)
        .map_err(|e| RpcError::from(e).app_tag_default("data-invalid"))
}

impl RpcError {
    fn app_tag_default(mut self, tag: &str) -> Self {
        if self.app_tag.is_none() {
            self.app_tag = Some(tag.to_owned());
        }
        self
    }
}

/// A copy of `tree`.
pub fn duplicate(tree: &DataTree<'static>) -> Result<DataTree<'static>, RpcError> {
    tree.duplicate().map_err(RpcError::from)
}

fn exists(tree: &DataTree<'static>, path: &str) -> bool {
    tree.find_path(path).is_ok()
}

/// Applies an edit (parsed config with its explicit operation points) to a copy of
/// `target` with `default` as the default operation; returns the new tree (not validated).
pub fn apply_edit(
    target: &DataTree<'static>,
    edit: &DataTree<'static>,
    points: &[EditPoint],
    default: EditOp,
) -> Result<DataTree<'static>, RpcError> {
    let mut result = duplicate(target)?;
    let mut merge_source = duplicate(edit)?;
    // Nodes that are deleted or removed are not merged; nodes replaced are first removed.
    for point in points {
        let present = exists(target, &point.path);
        match point.op {
            EditOp::Create if present => {
                return Err(
                    RpcError::application(ErrorTag::DataExists, "data already exists")
                        .path(point.path.clone()),
                );
            }
            EditOp::Delete if !present => {
                return Err(
                    RpcError::application(ErrorTag::DataMissing, "data does not exist")
                        .path(point.path.clone()),
                );
            }
            _ => {}
        }
        match point.op {
            EditOp::Delete | EditOp::Remove => {
                if present {
                    result.remove(&point.path)?;
                }
                if exists(&merge_source, &point.path) {
                    merge_source.remove(&point.path)?;
                }
            }
            EditOp::Replace if present => result.remove(&point.path)?,
            _ => {}
        }
    }
    if default == EditOp::None {
        // Only subtrees under an explicit merge/replace/create are created.
        for point in points {
            if matches!(point.op, EditOp::Merge | EditOp::Replace | EditOp::Create) {
                let node = merge_source.find_path(&point.path)?;
                let subtree = node.duplicate(true)?;
                result.merge(&subtree)?;
            }
        }
    } else if default == EditOp::Replace && points.is_empty() {
        // default-operation replace: the edit becomes the whole configuration
        result = merge_source;
    } else {
        result.merge(&merge_source)?;
    }
    Ok(result)
}

/// Prints a data tree as XML siblings (for `<data>` or persistence).
pub fn to_xml(tree: &DataTree<'static>) -> Result<String, RpcError> {
    if tree.reference().is_none() {
        return Ok(String::new());
    }
    tree.print_string(
        DataFormat::XML,
        DataPrinterFlags::WITH_SIBLINGS | DataPrinterFlags::SHRINK,
    )
    .map(|s| s.unwrap_or_default())
    .map_err(RpcError::from)
}

/// Creates (or sets) the leaf at `path`, with any missing ancestors.
pub fn set_leaf(tree: &mut DataTree<'static>, path: &str, value: &str) -> Result<(), RpcError> {
    tree.new_path(path, Some(value), false)?;
    Ok(())
}

/// The canonical value of the leaf at `path`, if present.
pub fn leaf(tree: &DataTree<'static>, path: &str) -> Option<String> {
    tree.find_path(path).ok().and_then(|n| n.value_canonical())
}

/// The nodes of `tree` selected by any of `xpaths`, with their ancestors.
pub fn select(tree: &DataTree<'static>, xpaths: &[String]) -> Result<DataTree<'static>, RpcError> {
    let mut out = yang::empty();
    if tree.reference().is_none() {
        return Ok(out);
    }
    for xpath in xpaths {
        super::xml::check_xpath(xpath)?;
        let set = tree.find_xpath(xpath).map_err(|e| {
            RpcError::protocol(
                ErrorTag::InvalidValue,
                format!("bad XPath {xpath:?}: {}", e.msg.unwrap_or_default()),
            )
        })?;
        for node in set {
            let copy = node.duplicate(true)?;
            out.merge(&copy)?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"<qkd_node xmlns="urn:etsi:qkd:yang:etsi-qkd-node"><qkdn_id>7eec982d-9ca7-59e0-b252-c124f3522b41</qkdn_id></qkd_node>"#;

    fn edit(xml: &str) -> (DataTree<'static>, Vec<EditPoint>) {
        let doc = roxmltree::Document::parse(xml).unwrap();
        let (text, points) = super::super::xml::serialize_children(doc.root_element()).unwrap();
        (parse_config(&text).unwrap(), points)
    }

    #[test]
    fn merge_create_delete_and_remove() {
        let running = parse_config(BASE).unwrap();
        let (e, p) = edit(
            r#"<config><qkd_node xmlns="urn:etsi:qkd:yang:etsi-qkd-node"><qkdn_location_id>lab</qkdn_location_id></qkd_node></config>"#,
        );
        let merged = apply_edit(&running, &e, &p, EditOp::Merge).unwrap();
        assert!(merged
            .find_path("/etsi-qkd-sdn-node:qkd_node/qkdn_location_id")
            .is_ok());
        assert!(merged
            .find_path("/etsi-qkd-sdn-node:qkd_node/qkdn_id")
            .is_ok());

        let (e, p) = edit(
            r#"<config xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0"><qkd_node xmlns="urn:etsi:qkd:yang:etsi-qkd-node"><qkdn_location_id nc:operation="create">x</qkdn_location_id></qkd_node></config>"#,
        );
        let err = apply_edit(&merged, &e, &p, EditOp::Merge).unwrap_err();
        assert_eq!(err.tag, ErrorTag::DataExists);

        let (e, p) = edit(
            r#"<config xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0"><qkd_node xmlns="urn:etsi:qkd:yang:etsi-qkd-node"><qkdn_location_id nc:operation="delete"/></qkd_node></config>"#,
        );
        let deleted = apply_edit(&merged, &e, &p, EditOp::Merge).unwrap();
        assert!(deleted
            .find_path("/etsi-qkd-sdn-node:qkd_node/qkdn_location_id")
            .is_err());
        let err = apply_edit(&deleted, &e, &p, EditOp::Merge).unwrap_err();
        assert_eq!(err.tag, ErrorTag::DataMissing);

        let (e, p) = edit(
            r#"<config xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0"><qkd_node xmlns="urn:etsi:qkd:yang:etsi-qkd-node"><qkdn_location_id nc:operation="remove"/></qkd_node></config>"#,
        );
        assert!(apply_edit(&deleted, &e, &p, EditOp::Merge).is_ok());
    }

    #[test]
    fn unknown_elements_and_namespaces_are_rejected() {
        let doc =
            roxmltree::Document::parse(r#"<config><bogus xmlns="urn:nowhere"/></config>"#).unwrap();
        let err = super::super::xml::serialize_children(doc.root_element()).unwrap_err();
        assert_eq!(err.tag, ErrorTag::UnknownNamespace);
        let doc = roxmltree::Document::parse(r#"<config><qkd_node xmlns="urn:etsi:qkd:yang:etsi-qkd-node"><nope>1</nope></qkd_node></config>"#).unwrap();
        let err = super::super::xml::serialize_children(doc.root_element()).unwrap_err();
        assert_eq!(err.tag, ErrorTag::UnknownElement);
    }
}

#[cfg(test)]
mod validation_tests {
    use super::*;

    #[test]
    fn must_violations_are_operation_failed() {
        let xml = r#"<qkd_node xmlns="urn:etsi:qkd:yang:etsi-qkd-node"><qkdn_id>7eec982d-9ca7-59e0-b252-c124f3522b41</qkdn_id><key-manager xmlns="urn:qkdni:yang:qkdni-km"><relay-routes><route><destination>z</destination><next-hop>a9</next-hop></route></relay-routes></key-manager></qkd_node>"#;
        let mut tree = parse_config(xml).unwrap();
        let error = validate(&mut tree).unwrap_err();
        assert_eq!(
            error.app_tag.as_deref(),
            Some("must-violation"),
            "{error:?}"
        );
        assert_eq!(error.tag, ErrorTag::OperationFailed, "{error:?}");
        assert!(error.path.is_some());
    }
}
