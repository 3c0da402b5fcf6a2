//! `qkdni-manager`: the manager's interworking configuration (peer domains, exposure and
//! QoS class names per peer, report periods), how it provisions its controller, and the
//! record of configuration changes.

use super::{schema_group, Group};
use crate::netconf::xml::quote;

/// The module's XML namespace.
pub const NAMESPACE: &str = "urn:qkdni:yang:qkdni-manager";
/// The module's name (notifications are sent under it).
pub const MODULE: &str = "qkdni-manager";

/// The manager container.
pub const ROOT: &str = "/qkdni-manager:manager";

schema_group! {
    /// Leaves and containers of the manager container.
    pub mod root under super::ROOT;
    DOMAIN = "domain";
    INTERWORKING = "interworking";
    REPORTS = "reports";
    MXI_REPORT_SECONDS = "reports/mxi-report-seconds";
    ACCOUNTING_SUMMARY_SECONDS = "reports/accounting-summary-seconds";
    PROVISIONING_CONTROLLER = "provisioning/controller";
    PROVISIONING_LAST_PUSH = "provisioning/last-push";
    PROVISIONING_LAST_ERROR = "provisioning/last-error";
    PROVISIONING_DRIFT = "provisioning/drift";
}

/// The peer domains.
pub const PEER: &str = "/qkdni-manager:manager/interworking/peer-domain";

schema_group! {
    /// Leaves of a peer domain entry.
    pub mod peer under super::PEER;
    NAME = "name";
    CXI_URL = "cxi-url";
    CONTROLLER = "controller";
    EXPOSE_SAES = "expose/saes";
    EXPOSE_KEY_RATE = "expose/key-rate";
    QOS_CLASS = "qos-class";
}

/// The entry of peer domain `name`.
pub fn peer_entry(name: &str) -> String {
    format!("{PEER}[{}={}]", peer::NAME, quote(name))
}

/// The change log.
pub const CHANGE: &str = "/qkdni-manager:manager/changes/change";

schema_group! {
    /// Leaves of a change entry.
    pub mod change under super::CHANGE;
    ID = "id";
    TIME = "time";
    USER = "user";
    PROVISIONED = "provisioned";
    DIFF = "diff";
}

/// The entry of change `id`.
pub fn change_entry(id: u64) -> String {
    format!("{CHANGE}[{}='{id}']", change::ID)
}

schema_group! {
    /// `configuration-change`.
    pub mod configuration_change under "/qkdni-manager:configuration-change";
    ID = "id";
    USER = "user";
    SUMMARY = "summary";
}

/// Every group of this module.
pub const GROUPS: &[Group] = &[
    root::GROUP,
    peer::GROUP,
    change::GROUP,
    configuration_change::GROUP,
];
