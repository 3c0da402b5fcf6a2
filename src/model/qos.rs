//! The `qos` subtrees: QoS classes and their mappings in `qkdni-km` (`key-manager/qos`,
//! enforced at the KM's key supply and relay) and in `qkdni-controller` (`controller/qos`,
//! the controller's admission of sessions). Both have the same shape below the container.

use super::{schema_group, Group};

/// The KM's QoS container.
pub const KM_QOS: &str = "/etsi-qkd-sdn-node:qkd_node/qkdni-km:key-manager/qos";
/// The controller's QoS container.
pub const CONTROLLER_QOS: &str = "/qkdni-controller:controller/qos";

schema_group! {
    /// The KM's QoS container.
    pub mod km under super::KM_QOS;
    CLASS = "class";
    APPLICATION_PAIR = "application-pair";
    PEER_DOMAIN = "peer-domain";
    DEFAULT_CLASS = "default-class";
}

schema_group! {
    /// The controller's QoS container.
    pub mod controller under super::CONTROLLER_QOS;
    CLASS = "class";
    APPLICATION_PAIR = "application-pair";
    PEER_DOMAIN = "peer-domain";
    DEFAULT_CLASS = "default-class";
}

schema_group! {
    /// Leaves of a class entry of the KM.
    pub mod km_class under "/etsi-qkd-sdn-node:qkd_node/qkdni-km:key-manager/qos/class";
    NAME = "name";
    PRIORITY = "priority";
    GUARANTEED_RATE = "guaranteed-rate";
    MAXIMUM_RATE = "maximum-rate";
    QUOTA = "quota";
    QUOTA_BITS = "quota/bits";
    QUOTA_PERIOD = "quota/period";
    GRANTED_REQUESTS = "granted-requests";
    GRANTED_BITS = "granted-bits";
    QUOTA_USED_BITS = "quota-used-bits";
    REFUSED_QUOTA = "refused-quota";
    REFUSED_WAIT = "refused-wait";
}

schema_group! {
    /// Leaves of a class entry of the controller.
    pub mod controller_class under "/qkdni-controller:controller/qos/class";
    NAME = "name";
    PRIORITY = "priority";
    GUARANTEED_RATE = "guaranteed-rate";
    MAXIMUM_RATE = "maximum-rate";
    QUOTA_BITS = "quota/bits";
    QUOTA_PERIOD = "quota/period";
}

/// Leaves of a mapping entry (relative to its list), the same in both modules.
pub mod mapping {
    /// One SAE of an application pair.
    pub const SAE_A: &str = "sae-a";
    /// The other SAE.
    pub const SAE_B: &str = "sae-b";
    /// A peer domain.
    pub const DOMAIN: &str = "domain";
    /// The class named.
    pub const CLASS: &str = "class";
}

/// The leaves of a class entry, relative to the entry (the same in both modules).
pub mod class_leaf {
    pub const NAME: &str = "name";
    pub const PRIORITY: &str = "priority";
    pub const GUARANTEED_RATE: &str = "guaranteed-rate";
    pub const MAXIMUM_RATE: &str = "maximum-rate";
    pub const QUOTA_BITS: &str = "quota/bits";
    pub const QUOTA_PERIOD: &str = "quota/period";
    pub const GRANTED_REQUESTS: &str = "granted-requests";
    pub const GRANTED_BITS: &str = "granted-bits";
    pub const QUOTA_USED_BITS: &str = "quota-used-bits";
    pub const REFUSED_QUOTA: &str = "refused-quota";
    pub const REFUSED_WAIT: &str = "refused-wait";
}

/// The entry of class `name` under the QoS container `qos`.
pub fn class_entry(qos: &str, name: &str) -> String {
    format!("{qos}/class[name={}]", crate::netconf::xml::quote(name))
}

/// The groups of the KM's QoS subtree.
pub const KM_GROUPS: &[Group] = &[km::GROUP, km_class::GROUP];
/// The groups of the controller's QoS subtree.
pub const CONTROLLER_GROUPS: &[Group] = &[controller::GROUP, controller_class::GROUP];
