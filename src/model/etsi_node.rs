//! `etsi-qkd-sdn-node` (ETSI GS QKD 015 V2.1.1, revision 2022-01-30) and qkdni's names of
//! its UUIDs (`qkdni-etsi-ids`): the paths of the node, its links, interfaces and
//! applications, and of the notifications a KM agent sends.

use super::{schema_group, Group};

/// The module's XML namespace.
pub const NAMESPACE: &str = "urn:etsi:qkd:yang:etsi-qkd-node";
/// The module's name (notifications are sent under it).
pub const MODULE: &str = "etsi-qkd-sdn-node";
/// `qkdni-etsi-ids`' XML namespace.
pub const IDS_NAMESPACE: &str = "urn:qkdni:yang:qkdni-etsi-ids";
/// The module of the identities the node model's values name.
pub const TYPES: &str = "etsi-qkd-node-types";

/// The node container.
pub const NODE: &str = "/etsi-qkd-sdn-node:qkd_node";
/// The subtree filter of a `<get>` of the whole node.
pub const GET_NODE: &str = "<get><filter type=\"subtree\"><qkd_node xmlns=\"urn:etsi:qkd:yang:etsi-qkd-node\"/></filter></get>";

/// An identity of `etsi-qkd-node-types` as a value (`etsi-qkd-node-types:NAME`).
pub fn identity(name: &str) -> String {
    format!("{TYPES}:{name}")
}

schema_group! {
    /// Leaves of the node container.
    pub mod node under super::NODE;
    QKDN_ID = "qkdn_id";
    NODE_NAME = "qkdni-etsi-ids:node-name";
    DOMAIN = "qkdni-etsi-ids:domain";
    APPLICATION_STATS_SUPPORT = "qkdn_capabilities/application_stats_support";
    STATUS = "qkdn_status";
    VERSION = "qkdn_version";
}

/// The node's link entries.
pub const LINK: &str = "/etsi-qkd-sdn-node:qkd_node/qkd_links/qkd_link";

/// The entry of the link whose `qkdl_id` is `id`.
pub fn link_entry(id: &impl std::fmt::Display) -> String {
    format!("{NODE}/qkd_links/qkd_link[qkdl_id='{id}']")
}

/// The entry of the link named `name` (qkdni's name beside the UUID).
pub fn link_entry_named(name: &str) -> String {
    format!(
        "{NODE}/qkd_links/qkd_link[{}={}]",
        link::LINK_NAME,
        crate::netconf::xml::quote(name)
    )
}

schema_group! {
    /// Leaves of a link entry.
    pub mod link under super::LINK;
    ID = "qkdl_id";
    LINK_NAME = "qkdni-etsi-ids:link-name";
    ENABLE = "qkdl_enable";
    TYPE = "qkdl_type";
    LOCAL_NODE = "qkdl_local/qkdn_id";
    LOCAL_INTERFACE = "qkdl_local/qkdi_id";
    REMOTE_NODE = "qkdl_remote/qkdn_id";
    REMOTE_INTERFACE = "qkdl_remote/qkdi_id";
    ROLE = "phys_qkd_role";
    STATUS = "qkdl_status";
    SKR = "qkdl_performance/skr";
    PHYS_PERF_TYPE = "qkdl_performance/phys_perf/perf_type";
    PHYS_PERF_VALUE = "qkdl_performance/phys_perf/value";
}

/// The QBER value (`phys_perf` entry of type QBER) of a link, relative to its entry.
pub fn link_qber() -> String {
    qber_under(link::SKR)
}

/// The QBER value in `sdqkdn_link_perf_update`, relative to the notification.
pub fn perf_update_qber() -> String {
    qber_under(link_perf_update::SKR)
}

/// The `phys_perf` QBER value beside the `skr` leaf at `skr`.
fn qber_under(skr: &str) -> String {
    let performance = skr.rsplit_once('/').map_or("", |(p, _)| p);
    format!("{performance}/phys_perf[perf_type='{TYPES}:QBER']/value")
}

/// The node's interface entries (its QKD modules).
pub const INTERFACE: &str = "/etsi-qkd-sdn-node:qkd_node/qkd_interfaces/qkd_interface";

/// The entry of the interface whose `qkdi_id` is `id`.
pub fn interface_entry(id: &impl std::fmt::Display) -> String {
    format!("{NODE}/qkd_interfaces/qkd_interface[qkdi_id='{id}']")
}

schema_group! {
    /// Leaves of an interface entry.
    pub mod interface under super::INTERFACE;
    ID = "qkdi_id";
    MODEL = "qkdi_model";
    TYPE = "qkdi_type";
    ROLE_SUPPORT = "qkdi_capabilities/role_support";
    STATUS = "qkdi_status";
    LINK_NAME = "qkdni-etsi-ids:link-name";
}

/// The node's application entries.
pub const APPLICATION: &str = "/etsi-qkd-sdn-node:qkd_node/qkd_applications/qkd_app";

/// The entry of the application whose `app_id` is `id`.
pub fn application_entry(id: &impl std::fmt::Display) -> String {
    format!("{NODE}/qkd_applications/qkd_app[app_id='{id}']")
}

schema_group! {
    /// Leaves of an application entry.
    pub mod application under super::APPLICATION;
    ID = "app_id";
    STATUS = "app_status";
    TYPE = "app_type";
    SERVER = "server_app_id";
    CLIENT = "client_app_id";
    CREATION_TIME = "creation_time";
    LOCAL_NODE = "local_qkdn_id";
    REMOTE_NODE = "remote_qkdn_id";
}

schema_group! {
    /// `event` (a link recovered) and, with the same leaves, [`ALARM`](alarm).
    pub mod event under "/etsi-qkd-sdn-node:event";
    LINK_ID = "link/qkdl_id";
    LINK_STATUS = "link/qkdl_status";
    MESSAGE = "link/message";
    SEVERITY = "link/severity";
}

schema_group! {
    /// `alarm` (a link stopped producing key).
    pub mod alarm under "/etsi-qkd-sdn-node:alarm";
    LINK_ID = "link/qkdl_id";
    LINK_STATUS = "link/qkdl_status";
    MESSAGE = "link/message";
    SEVERITY = "link/severity";
}

schema_group! {
    /// `sdqkdn_link_down`.
    pub mod link_down under "/etsi-qkd-sdn-node:sdqkdn_link_down";
    LINK_ID = "qkd_link/qkdl_id";
    REASON = "qkd_link/reason";
}

schema_group! {
    /// `sdqkdn_link_overloaded`.
    pub mod link_overloaded under "/etsi-qkd-sdn-node:sdqkdn_link_overloaded";
    LINK_ID = "qkd_link/qkdl_id";
    SKR = "qkd_link/performance/skr";
}

schema_group! {
    /// `sdqkdn_link_perf_update` (its QBER at [`perf_update_qber`]).
    pub mod link_perf_update under "/etsi-qkd-sdn-node:sdqkdn_link_perf_update";
    LINK_ID = "qkd_link/qkdl_id";
    SKR = "qkd_link/performance/skr";
    PHYS_PERF_VALUE = "qkd_link/performance/phys_perf/value";
}

schema_group! {
    /// `sdqkdn_application_new`.
    pub mod application_new under "/etsi-qkd-sdn-node:sdqkdn_application_new";
    TYPE = "qkd_application/app_type";
    SERVER = "qkd_application/server_app_id";
    CLIENT = "qkd_application/client_app_id";
    LOCAL_NODE = "qkd_application/local_qkdn_id";
}

schema_group! {
    /// `sdqkdn_application_disconnected`.
    pub mod application_disconnected under "/etsi-qkd-sdn-node:sdqkdn_application_disconnected";
    ID = "qkd_application/app_id";
}

/// Every group of this module.
pub const GROUPS: &[Group] = &[
    node::GROUP,
    link::GROUP,
    interface::GROUP,
    application::GROUP,
    event::GROUP,
    alarm::GROUP,
    link_down::GROUP,
    link_overloaded::GROUP,
    link_perf_update::GROUP,
    application_new::GROUP,
    application_disconnected::GROUP,
];

/// The configuration (for `<edit-config>` on running) that enables or disables key
/// generation on the link whose `qkdl_id` is `id` (`qkdl_enable`).
pub fn enable_config(id: &impl std::fmt::Display, enabled: bool) -> String {
    format!(
        "<qkd_node xmlns=\"{NAMESPACE}\"><qkd_links><qkd_link><qkdl_id>{id}</qkdl_id><{e}>{enabled}</{e}></qkd_link></qkd_links></qkd_node>",
        e = link::ENABLE,
    )
}
