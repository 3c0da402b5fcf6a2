//! The manager's configuration in the `qkdni-manager` model: reading a configuration tree
//! into [`Desired`], its first tree, the checks the schema cannot make, and the diff of two
//! trees for the change log.

use std::collections::BTreeMap;

use yang2::data::{Data, DataTree};

use crate::management::config::ManagerConfig;
use crate::model::manager::{self as model, peer, root, ROOT};
use crate::netconf::datastore::{leaf as value, set_leaf as set};
use crate::netconf::{ErrorTag, RpcError};

/// One peer domain as operators configure it on the manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerDomain {
    /// The peer QKDN.
    pub name: String,
    /// Base URL of its controller's Cxi server.
    pub cxi_url: String,
    /// Common name of its controller's certificate.
    pub controller: String,
    /// Share the SAEs with it.
    pub expose_saes: bool,
    /// Share hop counts and key rates with it.
    pub expose_key_rate: bool,
    /// QoS classes (names) its sessions may use.
    pub qos_classes: Vec<String>,
}

/// A whole configuration of the manager.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Desired {
    /// The peer domains, by name.
    pub peers: Vec<PeerDomain>,
    /// Seconds between Mxi report packs.
    pub mxi_report_seconds: u64,
    /// Seconds between accounting summaries.
    pub accounting_summary_seconds: u64,
}

/// Reads a schema-valid configuration tree (the module's defaults for absent leaves).
pub fn read(tree: &DataTree<'static>) -> Result<Desired, RpcError> {
    let number = |leaf: &str| -> Result<u64, RpcError> {
        let path = format!("{ROOT}/{leaf}");
        value(tree, &path)
            .unwrap_or_else(|| crate::model::default_of(&path))
            .parse()
            .map_err(|_| {
                RpcError::application(ErrorTag::InvalidValue, format!("{leaf} is a number"))
            })
    };
    let mut desired = Desired {
        peers: Vec::new(),
        mxi_report_seconds: number(root::MXI_REPORT_SECONDS)?,
        accounting_summary_seconds: number(root::ACCOUNTING_SUMMARY_SECONDS)?,
    };
    // libyang finds nothing in an empty tree: it refuses the query
    if tree.traverse().next().is_none() {
        return Ok(desired);
    }
    for node in tree.find_xpath(model::PEER)? {
        let field = |name: &str| node.find_path(name).ok().and_then(|n| n.value_canonical());
        let flag = |name: &str| field(name).is_none_or(|v| v == "true");
        let (Some(name), Some(cxi_url), Some(controller)) = (
            field(peer::NAME),
            field(peer::CXI_URL),
            field(peer::CONTROLLER),
        ) else {
            continue;
        };
        let qos_classes = node
            .find_xpath(peer::QOS_CLASS)
            .map(|set| set.filter_map(|n| n.value_canonical()).collect())
            .unwrap_or_default();
        desired.peers.push(PeerDomain {
            name,
            cxi_url,
            controller,
            expose_saes: flag(peer::EXPOSE_SAES),
            expose_key_rate: flag(peer::EXPOSE_KEY_RATE),
            qos_classes,
        });
    }
    Ok(desired)
}

/// What the schema cannot check: a peer domain is another domain.
pub fn check(config: &ManagerConfig, desired: &Desired) -> Result<(), RpcError> {
    if let Some(own) = desired.peers.iter().find(|p| p.name == config.domain) {
        return Err(RpcError::application(
            ErrorTag::InvalidValue,
            format!(
                "{} is this manager's own domain, not a peer domain",
                own.name
            ),
        )
        .path(model::peer_entry(&own.name)));
    }
    Ok(())
}

/// The configuration tree of `desired` (XML), the manager's first running datastore.
pub fn initial(desired: &Desired) -> Result<String, RpcError> {
    let mut tree = crate::yang::empty();
    let flag = |b: bool| if b { "true" } else { "false" };
    for p in &desired.peers {
        let base = model::peer_entry(&p.name);
        set(&mut tree, &format!("{base}/{}", peer::CXI_URL), &p.cxi_url)?;
        set(
            &mut tree,
            &format!("{base}/{}", peer::CONTROLLER),
            &p.controller,
        )?;
        set(
            &mut tree,
            &format!("{base}/{}", peer::EXPOSE_SAES),
            flag(p.expose_saes),
        )?;
        set(
            &mut tree,
            &format!("{base}/{}", peer::EXPOSE_KEY_RATE),
            flag(p.expose_key_rate),
        )?;
        for class in &p.qos_classes {
            let quoted = crate::netconf::xml::quote(class);
            set(
                &mut tree,
                &format!("{base}/{}[.={quoted}]", peer::QOS_CLASS),
                class,
            )?;
        }
    }
    set(
        &mut tree,
        &format!("{ROOT}/{}", root::MXI_REPORT_SECONDS),
        &desired.mxi_report_seconds.to_string(),
    )?;
    crate::netconf::datastore::to_xml(&tree)
}

/// Every leaf (and leaf-list entry) of `tree` an operator set, by path.
fn leaves(tree: &DataTree<'static>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if tree.traverse().next().is_none() {
        return out;
    }
    for node in tree.traverse() {
        if node.is_default() {
            continue;
        }
        if let Some(value) = node.value_canonical() {
            out.insert(node.path(), value);
        }
    }
    out
}

/// The changed leaves from `old` to `new`: `+ path = value` added, `- path = value`
/// removed, `~ path: old -> new` changed (list keys stand in their entries' paths).
pub fn diff(old: &DataTree<'static>, new: &DataTree<'static>) -> Vec<String> {
    let (before, after) = (leaves(old), leaves(new));
    let mut out = Vec::new();
    for (path, value) in &after {
        match before.get(path) {
            None => out.push(format!("+ {path} = {value}")),
            Some(was) if was != value => out.push(format!("~ {path}: {was} -> {value}")),
            Some(_) => {}
        }
    }
    for (path, value) in &before {
        if !after.contains_key(path) {
            out.push(format!("- {path} = {value}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration parsed (values checked against their types; not validated whole:
    /// the unit tests' context implements every module, and the ETSI node's is mandatory).
    fn tree(xml: &str) -> DataTree<'static> {
        crate::netconf::datastore::parse_config(xml).unwrap()
    }

    const NS: &str = model::NAMESPACE;

    fn peer_b(extra: &str) -> String {
        format!(
            "<manager xmlns=\"{NS}\"><interworking><peer-domain><name>B</name>\
             <cxi-url>https://127.0.0.1:7400</cxi-url><controller>controller-B</controller>\
             {extra}</peer-domain></interworking></manager>"
        )
    }

    #[test]
    fn a_configuration_is_read_with_the_module_defaults() {
        let desired = read(&tree(&peer_b("<qos-class>gold</qos-class>"))).unwrap();
        assert_eq!(desired.mxi_report_seconds, 5);
        assert_eq!(desired.accounting_summary_seconds, 3600);
        assert_eq!(desired.peers.len(), 1);
        let b = &desired.peers[0];
        assert!(b.expose_saes && b.expose_key_rate);
        assert_eq!(b.qos_classes, vec!["gold".to_owned()]);
        // and written back the same
        let again = read(&tree(&initial(&desired).unwrap())).unwrap();
        assert_eq!(again, desired);
        assert_eq!(read(&crate::yang::empty()).unwrap().peers, Vec::new());
    }

    #[test]
    fn the_diff_names_every_changed_leaf() {
        let old = tree(&peer_b(""));
        let new = tree(&peer_b(
            "<expose><saes>false</saes></expose><qos-class>gold</qos-class>",
        ));
        let diff = diff(&old, &new);
        assert_eq!(diff.len(), 2, "{diff:?}");
        assert!(diff
            .iter()
            .any(|d| d.starts_with("+ ") && d.contains("expose/saes") && d.ends_with("= false")));
        assert!(diff
            .iter()
            .any(|d| d.starts_with("+ ") && d.contains("qos-class")));
        let back = super::diff(&new, &old);
        assert!(back.iter().all(|d| d.starts_with("- ")), "{back:?}");
        assert!(super::diff(&old, &old).is_empty());
    }

    #[test]
    fn the_schema_refuses_what_it_should() {
        let parse = crate::netconf::datastore::parse_config;
        assert!(parse(&peer_b("")).is_ok());
        let bad_url = peer_b("").replace("https://127.0.0.1:7400", "http://x");
        assert!(parse(&bad_url).is_err());
        let reports = |n: u32| {
            format!(
                "<manager xmlns=\"{NS}\"><reports><mxi-report-seconds>{n}</mxi-report-seconds></reports></manager>"
            )
        };
        assert!(parse(&reports(1)).is_ok());
        assert!(parse(&reports(0)).is_err());
        let bad_class = peer_b("<qos-class>no spaces</qos-class>");
        assert!(parse(&bad_class).is_err());
    }
}
