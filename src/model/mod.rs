//! The YANG modules as the code names them: the only place where schema paths, subtree
//! filters, edit builders and notification names of `etsi-qkd-sdn-node`, `qkdni-km` and
//! `qkdni-controller` are written. Every other file builds its paths from these names.
//!
//! Names come in groups ([`Group`]): a schema node and paths relative to it. Every daemon
//! checks, at start, each group it uses against the compiled modules ([`check`]) and
//! refuses to start on a path the schema does not have, so a misspelt name fails at once
//! instead of silently reading nothing.
//!
//! - [`etsi_node`] — the ETSI GS QKD 015 node model the KM agents serve;
//! - [`km`] — qkdni's KM additions: link settings and state, key manager, notifications;
//! - [`km_accounting`] — a KM's accounting summaries (state data);
//! - [`km_data`] — a KM's `<get>` reply read by controllers and managers;
//! - [`km_edit`] — the relay routes and foreign SAEs a controller installs on a KM;
//! - [`km_notifications`] — a KM's notifications read by managers;
//! - [`controller`] — the controller's own model;
//! - [`manager`] — the manager's own model (interworking configuration, changes).

use std::sync::OnceLock;

use yang2::context::Context;

pub mod controller;
pub mod etsi_node;
pub mod km;
pub mod km_accounting;
pub mod km_data;
pub mod km_edit;
pub mod km_notifications;
pub mod manager;
pub mod qos;

/// A schema node and the paths relative to it that the code uses.
#[derive(Debug, Clone, Copy)]
pub struct Group {
    /// Absolute schema path (JSON form: module prefixes where the module changes).
    pub parent: &'static str,
    /// Relative schema paths (no predicates).
    pub paths: &'static [&'static str],
}

/// Defines a module of path names under one schema node, with its [`Group`].
macro_rules! schema_group {
    ($(#[$doc:meta])* $vis:vis mod $name:ident under $parent:expr;
     $($(#[$ldoc:meta])* $leaf:ident = $path:literal;)*) => {
        $(#[$doc])*
        $vis mod $name {
            #![allow(dead_code)]
            /// The schema node the paths of this group are relative to.
            pub const PARENT: &str = $parent;
            $($(#[$ldoc])* pub const $leaf: &str = $path;)*
            /// The group, for the check at start.
            pub const GROUP: $crate::model::Group =
                $crate::model::Group { parent: PARENT, paths: &[$($path),*] };
        }
    };
}
pub(crate) use schema_group;

/// Paths the compiled modules do not define.
#[derive(Debug, thiserror::Error)]
#[error("the YANG modules define no node at {}", .missing.join(", "))]
pub struct PathError {
    pub missing: Vec<String>,
}

/// Every module of qkdni loaded and implemented (a daemon's own context may implement
/// only its own; a controller reads KM data all the same).
fn schema() -> &'static Context {
    static SCHEMA: OnceLock<Context> = OnceLock::new();
    SCHEMA.get_or_init(|| crate::yang::full_context().expect("embedded YANG modules compile"))
}

/// Checks every path of `groups` against the schema.
pub fn check(groups: &[Group]) -> Result<(), PathError> {
    let context = schema();
    let mut missing = Vec::new();
    for group in groups {
        let mut paths = vec![group.parent.to_owned()];
        paths.extend(group.paths.iter().map(|p| format!("{}/{p}", group.parent)));
        for path in paths {
            if context.find_path(&path).is_err() {
                missing.push(path);
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PathError { missing })
    }
}

/// The groups a KM agent uses.
pub fn km_agent_groups() -> Vec<Group> {
    [
        etsi_node::GROUPS,
        km::GROUPS,
        km_accounting::GROUPS,
        qos::KM_GROUPS,
    ]
    .concat()
}

/// The groups a controller uses (its own model, and KM data and edits).
pub fn controller_groups() -> Vec<Group> {
    [
        controller::GROUPS,
        km::GROUPS,
        etsi_node::GROUPS,
        qos::CONTROLLER_GROUPS,
    ]
    .concat()
}

/// The groups a manager uses (KM data and notifications).
pub fn manager_groups() -> Vec<Group> {
    [
        km::GROUPS,
        etsi_node::GROUPS,
        manager::GROUPS,
        controller::GROUPS,
        km_accounting::GROUPS,
    ]
    .concat()
}

/// The name of a notification from its group's parent (`/module:name`).
pub fn notification_name(parent: &'static str) -> &'static str {
    parent.rsplit_once(':').map_or(parent, |(_, name)| name)
}

/// The default of the leaf at schema path `path`, as the YANG module states it.
///
/// # Panics
/// If the schema has no such leaf or it has no default (a defect the unit tests catch).
pub fn default_of(path: &str) -> String {
    schema()
        .find_path(path)
        .ok()
        .and_then(|leaf| leaf.default_value_canonical().map(str::to_owned))
        .unwrap_or_else(|| panic!("no default for {path} in the YANG modules"))
}

/// A child element of `node` named by a relative schema step (`prefix:name` when the
/// module changes, else `name` in `node`'s namespace), as it appears in NETCONF XML.
pub fn xml_child<'a, 'i>(
    node: roxmltree::Node<'a, 'i>,
    step: &str,
) -> Option<roxmltree::Node<'a, 'i>> {
    let (namespace, name) = match step.split_once(':') {
        Some((module, name)) => (namespace_of(module)?, name),
        None => (node.tag_name().namespace()?, step),
    };
    node.children().find(|c| {
        c.is_element() && c.tag_name().name() == name && c.tag_name().namespace() == Some(namespace)
    })
}

/// The element at a relative path of steps under `node`.
pub fn xml_at<'a, 'i>(
    node: roxmltree::Node<'a, 'i>,
    path: &str,
) -> Option<roxmltree::Node<'a, 'i>> {
    path.split('/')
        .try_fold(node, |at, step| xml_child(at, step))
}

/// The trimmed text at a relative path under `node`.
pub fn xml_text(node: roxmltree::Node<'_, '_>, path: &str) -> Option<String> {
    xml_at(node, path)
        .and_then(|n| n.text())
        .map(|t| t.trim().to_owned())
}

/// The XML namespace of one of qkdni's modules.
pub fn namespace_of(module: &str) -> Option<&'static str> {
    Some(match module {
        "etsi-qkd-sdn-node" => etsi_node::NAMESPACE,
        "qkdni-km" => km::NAMESPACE,
        "qkdni-etsi-ids" => etsi_node::IDS_NAMESPACE,
        "qkdni-controller" => controller::NAMESPACE,
        "qkdni-manager" => manager::NAMESPACE,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_the_daemons_use_is_in_the_schema() {
        check(&km_agent_groups()).unwrap();
        check(&controller_groups()).unwrap();
        check(&manager_groups()).unwrap();
    }

    #[test]
    fn a_misspelt_path_is_caught() {
        schema_group! {
            mod typo under "/etsi-qkd-sdn-node:qkd_node/qkdni-km:key-manager";
            ROUTES = "relay-routes/route/destination";
            MISSPELT = "relay-route/route/next-hop";
        }
        let error = check(&[typo::GROUP]).unwrap_err();
        assert_eq!(
            error.missing,
            vec!["/etsi-qkd-sdn-node:qkd_node/qkdni-km:key-manager/relay-route/route/next-hop"]
        );
        let wrong_parent = Group {
            parent: "/qkdni-km:key-manager",
            paths: &[],
        };
        assert!(check(&[wrong_parent]).is_err());
    }

    #[test]
    fn defaults_come_from_the_modules() {
        assert_eq!(default_of(&km::etsi014_leaf(km::etsi014::KEY_SIZE)), "256");
        assert_eq!(
            default_of(&format!(
                "{}/{}",
                controller::ROOT,
                controller::root::POLL_SECONDS
            )),
            "2"
        );
        let limits = crate::km::config::Etsi014Limits::default();
        assert_eq!((limits.key_size, limits.max_sae_id_count), (256, 4));
    }

    /// The quantum layer's physics defaults (`qkdni link-model`) are the model's.
    #[test]
    fn the_link_model_defaults_are_the_yang_defaults() {
        let d = crate::quantum::link_model::LinkParams::default();
        let yang = |leaf: &str| -> f64 {
            default_of(&format!("{}/{leaf}", etsi_node::LINK))
                .parse()
                .unwrap()
        };
        assert_eq!(yang(km::link::LENGTH_KM), d.length_km);
        assert_eq!(
            yang(km::link::ATTENUATION_DB_PER_KM),
            d.attenuation_db_per_km
        );
        assert_eq!(yang(km::link::DETECTOR_EFFICIENCY), d.detector_efficiency);
        assert_eq!(yang(km::link::DARK_COUNT_PROB), d.dark_count_prob);
        assert_eq!(yang(km::link::MISALIGNMENT), d.misalignment);
        assert_eq!(yang(km::link::EC_EFFICIENCY), d.ec_efficiency);
        assert_eq!(yang(km::link::PULSE_RATE_HZ), d.pulse_rate_hz);
    }
}
