//! `qkdni-km`: qkdni's additions to the ETSI node model. A link's settings and live state,
//! the key manager (relay routes, SAEs, ETSI GS QKD 014 limits and counters), the edit a
//! controller installs and the notifications a KM agent sends.

use super::{schema_group, Group};
use crate::netconf::client::text;
use crate::quantum::LinkState;

/// The module's XML namespace.
pub const NAMESPACE: &str = "urn:qkdni:yang:qkdni-km";
/// The module's name (notifications are sent under it).
pub const MODULE: &str = "qkdni-km";

schema_group! {
    /// qkdni's leaves of a link entry ([`super::etsi_node::LINK`]).
    pub mod link under super::super::etsi_node::LINK;
    PEER_NODE = "qkdni-km:peer-node";
    PEER_KMA = "qkdni-km:peer-kma";
    END = "qkdni-km:end";
    ADMIN_STATE = "qkdni-km:admin-state";
    RATE_BPS = "qkdni-km:rate-bps";
    LINK_MODEL = "qkdni-km:link-model";
    LENGTH_KM = "qkdni-km:link-model/length-km";
    ATTENUATION_DB_PER_KM = "qkdni-km:link-model/attenuation-db-per-km";
    DETECTOR_EFFICIENCY = "qkdni-km:link-model/detector-efficiency";
    DARK_COUNT_PROB = "qkdni-km:link-model/dark-count-prob";
    MISALIGNMENT = "qkdni-km:link-model/misalignment";
    EC_EFFICIENCY = "qkdni-km:link-model/ec-efficiency";
    PULSE_RATE_HZ = "qkdni-km:link-model/pulse-rate-hz";
    CAPACITY_BLOCKS = "qkdni-km:capacity-blocks";
    OPER_STATE = "qkdni-km:oper-state";
    QBER = "qkdni-km:qber";
    SECRET_KEY_RATE_BPS = "qkdni-km:secret-key-rate-bps";
    OWN_BLOCKS = "qkdni-km:key-pool/own-blocks";
    PEER_BLOCKS = "qkdni-km:key-pool/peer-blocks";
    PENDING_BLOCKS = "qkdni-km:key-pool/pending-blocks";
    POOL_CAPACITY_BLOCKS = "qkdni-km:key-pool/capacity-blocks";
    CONSUMED_BLOCKS = "qkdni-km:key-pool/consumed-blocks";
    FILL_PERCENT = "qkdni-km:key-pool/fill-percent";
}

/// The key manager container.
pub const KEY_MANAGER: &str = "/etsi-qkd-sdn-node:qkd_node/qkdni-km:key-manager";

schema_group! {
    /// Leaves of the key manager.
    pub mod key_manager under super::KEY_MANAGER;
    LOW_KEY_THRESHOLD_PERCENT = "low-key-threshold-percent";
    RELAY_ROUTES = "relay-routes";
    SAES = "saes";
    ETSI014 = "etsi014";
    TRANSFER_LINKS = "transfer-links";
    LOCAL_CONTROL = "local-control";
}

/// The transfer link entries of an IWN's KM.
pub const TRANSFER_LINK: &str =
    "/etsi-qkd-sdn-node:qkd_node/qkdni-km:key-manager/transfer-links/transfer-link";

schema_group! {
    /// Leaves of a transfer link entry.
    pub mod transfer_link under super::TRANSFER_LINK;
    ID = "link-id";
    PEER_NODE = "peer-node";
    PEER_DOMAIN = "peer-domain";
    PEER_KMA = "peer-kma";
    OPER_STATE = "oper-state";
    KEYS_SENT = "keys-sent";
    KEYS_RECEIVED = "keys-received";
}

/// The entry of transfer link `id`.
pub fn transfer_link_entry(id: &str) -> String {
    format!("{TRANSFER_LINK}[{}={}]", transfer_link::ID, quote(id))
}

/// The local controller of a node in a distributed QKDN.
pub const LOCAL_CONTROL: &str = "/etsi-qkd-sdn-node:qkd_node/qkdni-km:key-manager/local-control";

schema_group! {
    /// Leaves of the local controller: its route policy, neighbours and figures.
    pub mod local_control under super::LOCAL_CONTROL;
    POLICY = "policy";
    NEIGHBOUR = "neighbour";
    LINK_STATE_DATABASE = "link-state-database";
    ROUTES = "routes";
    FLOODS_SENT = "statistics/floods-sent";
    FLOODS_RECEIVED = "statistics/floods-received";
    FLOODS_FAILED = "statistics/floods-failed";
    BYTES_SENT = "statistics/bytes-sent";
    ORIGINATED = "statistics/originated";
    ROUTE_RUNS = "statistics/route-runs";
    LAST_ROUTE_RUN = "statistics/last-route-run";
}

/// The entry of neighbour `node` of the local controller.
pub fn neighbour_entry(node: &str) -> String {
    format!(
        "{LOCAL_CONTROL}/{}[.={}]",
        local_control::NEIGHBOUR,
        quote(node)
    )
}

/// The advertisements of the local controller's link-state database.
pub const ADVERTISEMENT: &str = "/etsi-qkd-sdn-node:qkd_node/qkdni-km:key-manager/local-control/link-state-database/advertisement";

schema_group! {
    /// Leaves of an advertisement of the link-state database.
    pub mod advertisement under super::ADVERTISEMENT;
    ORIGIN = "origin";
    SEQUENCE = "sequence";
    ORIGINATED = "originated";
    INSTALLED = "installed";
    AGE = "age";
    RECEIVED_FROM = "received-from";
    LINK = "link";
    LINK_ID = "link/link-id";
    LINK_PEER_NODE = "link/peer-node";
    LINK_UP = "link/up";
    LINK_KEY_RATE = "link/key-rate";
    LINK_AVAILABLE_BITS = "link/available-bits";
    LINK_QBER = "link/qber";
    SAE = "sae";
}

/// The advertisement of `origin`.
pub fn advertisement_entry(origin: &str) -> String {
    format!(
        "{ADVERTISEMENT}[{}={}]",
        advertisement::ORIGIN,
        quote(origin)
    )
}

/// The entry of link `id` in the advertisement at `advertisement_entry`.
pub fn advertised_link_entry(advertisement_entry: &str, id: &str) -> String {
    format!(
        "{advertisement_entry}/{}[{}={}]",
        advertisement::LINK,
        local(advertisement::LINK_ID),
        quote(id)
    )
}

/// The entry of SAE `sae` in the advertisement at `advertisement_entry`.
pub fn advertised_sae_entry(advertisement_entry: &str, sae: &str) -> String {
    format!(
        "{advertisement_entry}/{}[.={}]",
        advertisement::SAE,
        quote(sae)
    )
}

/// The routes the local controller computed.
pub const COMPUTED_ROUTE: &str =
    "/etsi-qkd-sdn-node:qkd_node/qkdni-km:key-manager/local-control/routes/route";

schema_group! {
    /// Leaves of a computed route (the shape of a relay route entry, [`super::route`]).
    pub mod computed_route under super::COMPUTED_ROUTE;
    DESTINATION = "destination";
    NEXT_HOP = "next-hop";
    WEIGHT = "weight";
    ALTERNATE = "alternate";
    ALTERNATE_NEXT_HOP = "alternate/next-hop";
    ALTERNATE_WEIGHT = "alternate/weight";
}

/// The entry of the computed route to `destination`.
pub fn computed_route_entry(destination: &str) -> String {
    format!(
        "{COMPUTED_ROUTE}[{}={}]",
        computed_route::DESTINATION,
        quote(destination)
    )
}

/// The relay route entries.
pub const ROUTE: &str = "/etsi-qkd-sdn-node:qkd_node/qkdni-km:key-manager/relay-routes/route";

schema_group! {
    /// Leaves of a relay route entry.
    pub mod route under super::ROUTE;
    DESTINATION = "destination";
    NEXT_HOP = "next-hop";
    WEIGHT = "weight";
    ALTERNATE = "alternate";
    ALTERNATE_NEXT_HOP = "alternate/next-hop";
    ALTERNATE_WEIGHT = "alternate/weight";
}

/// The entry of the relay route to `destination`.
pub fn route_entry(destination: &str) -> String {
    format!("{ROUTE}[{}={}]", route::DESTINATION, quote(destination))
}

/// The entry of an alternate next hop `hop` of the route at `route_entry`.
pub fn alternate_entry(route_entry: &str, hop: &str) -> String {
    format!(
        "{route_entry}/{}[next-hop={}]",
        route::ALTERNATE,
        quote(hop)
    )
}

/// The SAE entries.
pub const SAE: &str = "/etsi-qkd-sdn-node:qkd_node/qkdni-km:key-manager/saes/sae";

schema_group! {
    /// Leaves of an SAE entry.
    pub mod sae under super::SAE;
    ID = "sae-id";
    NODE = "node";
    DOMAIN = "domain";
}

/// The entry of SAE `id`.
pub fn sae_entry(id: &str) -> String {
    format!("{SAE}[{}={}]", sae::ID, quote(id))
}

/// The ETSI GS QKD 014 container.
pub const ETSI014: &str = "/etsi-qkd-sdn-node:qkd_node/qkdni-km:key-manager/etsi014";

schema_group! {
    /// Leaves of the ETSI GS QKD 014 container.
    pub mod etsi014 under super::ETSI014;
    KEY_SIZE = "key-size";
    MAX_KEY_PER_REQUEST = "max-key-per-request";
    MAX_KEY_SIZE = "max-key-size";
    MIN_KEY_SIZE = "min-key-size";
    MAX_SAE_ID_COUNT = "max-sae-id-count";
    KEYS_SUPPLIED = "keys-supplied";
    KEYS_DELIVERED = "keys-delivered";
    DELIVERIES_WAITING = "deliveries-waiting";
    KEYS_EXPIRED = "keys-expired";
    REQUESTS_SHED = "requests-shed";
    PAIR = "pair";
    PAIR_MASTER = "pair/master-sae";
    PAIR_SLAVE = "pair/slave-sae";
    PAIR_REQUESTS = "pair/requests";
    PAIR_KEYS = "pair/keys";
}

/// The refusals container.
pub const REFUSALS: &str = "/etsi-qkd-sdn-node:qkd_node/qkdni-km:key-manager/refusals";

schema_group! {
    /// Leaves of the refusals container.
    pub mod refusals under super::REFUSALS;
    ALARMS = "alarms";
    REFUSAL = "refusal";
    REFUSAL_COUNT = "refusal/count";
}

/// The entry of the (master, slave) pair's counters.
pub fn pair_entry(master: &str, slave: &str) -> String {
    format!(
        "{ETSI014}/{}[master-sae={}][slave-sae={}]",
        etsi014::PAIR,
        quote(master),
        quote(slave)
    )
}

/// The schema path of a leaf of the ETSI 014 container (for its default).
pub fn etsi014_leaf(leaf: &str) -> String {
    format!("{ETSI014}/{leaf}")
}

/// A `link-state` value (admin-state, oper-state, notifications).
pub fn link_state_value(state: LinkState) -> &'static str {
    match state {
        LinkState::Up => "up",
        LinkState::Down => "down",
        LinkState::Degraded => "degraded",
    }
}

/// The state a `link-state` value names (`None` for another value).
pub fn link_state(value: &str) -> Option<LinkState> {
    Some(match value {
        "up" => LinkState::Up,
        "down" => LinkState::Down,
        "degraded" => LinkState::Degraded,
        _ => return None,
    })
}

/// The last step of a relative path (an XML element's local name).
pub fn local(path: &str) -> &str {
    let step = path.rsplit('/').next().unwrap_or(path);
    step.split_once(':').map_or(step, |(_, name)| name)
}

fn quote(value: &str) -> String {
    crate::netconf::xml::quote(value)
}

/// The configuration (for `<edit-config>` on running) that sets the administrative state
/// of the link whose `qkdl_id` is `id` to `state` (`up`, `down` or `degraded`).
pub fn admin_state_config(id: &impl std::fmt::Display, state: &str) -> String {
    format!(
        "<qkd_node xmlns=\"{}\"><qkd_links><qkd_link><qkdl_id>{id}</qkdl_id><{a} xmlns=\"{NAMESPACE}\">{}</{a}></qkd_link></qkd_links></qkd_node>",
        super::etsi_node::NAMESPACE,
        text(state),
        a = local(link::ADMIN_STATE),
    )
}

/// The configuration (for `<edit-config>`) that sets the route policy of a node's local
/// controller to `policy`.
pub fn local_control_policy_config(policy: &str) -> String {
    format!(
        "<qkd_node xmlns=\"{}\"><key-manager xmlns=\"{NAMESPACE}\"><{l}><{p}>{}</{p}></{l}></key-manager></qkd_node>",
        super::etsi_node::NAMESPACE,
        text(policy),
        l = local(key_manager::LOCAL_CONTROL),
        p = local_control::POLICY,
    )
}

schema_group! {
    /// `link-status-change`.
    pub mod link_status_change under "/qkdni-km:link-status-change";
    LINK_ID = "link-id";
    OPER_STATE = "oper-state";
    PREVIOUS_STATE = "previous-state";
}

schema_group! {
    /// `low-key-alarm`.
    pub mod low_key_alarm under "/qkdni-km:low-key-alarm";
    LINK_ID = "link-id";
    OWN_BLOCKS = "own-blocks";
    THRESHOLD_PERCENT = "threshold-percent";
}

schema_group! {
    /// `relay-failure`.
    pub mod relay_failure under "/qkdni-km:relay-failure";
    RELAY_ID = "relay-id";
    DESTINATION = "destination";
    REASON = "reason";
    CAUSE = "cause";
}

schema_group! {
    /// `key-transfer`.
    pub mod key_transfer under "/qkdni-km:key-transfer";
    RELAY_ID = "relay-id";
    LINK_ID = "link-id";
    ROLE = "role";
    STATE = "state";
    MASTER_SAE = "master-sae";
    SLAVE_SAE = "slave-sae";
    KEY_SIZE = "key-size";
    KEY_ID = "key-id";
    TIME = "time";
}

schema_group! {
    /// `security-event`.
    pub mod security_event under "/qkdni-km:security-event";
    KIND = "kind";
    USER = "user";
    SOURCE = "source";
    METHOD = "method";
    FAILURES_FROM_SOURCE = "failures-from-source";
    FAILURES_FOR_USER = "failures-for-user";
    DELAY = "delay";
    REFERENCE_POINT = "reference-point";
    REFUSALS_PER_MINUTE = "refusals-per-minute";
    THRESHOLD = "threshold";
    REASON = "reason";
}

/// Every group of this module.
pub const GROUPS: &[Group] = &[
    link::GROUP,
    key_manager::GROUP,
    route::GROUP,
    sae::GROUP,
    etsi014::GROUP,
    link_status_change::GROUP,
    low_key_alarm::GROUP,
    relay_failure::GROUP,
    key_transfer::GROUP,
    security_event::GROUP,
    refusals::GROUP,
    transfer_link::GROUP,
    local_control::GROUP,
    advertisement::GROUP,
    computed_route::GROUP,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_names() {
        assert_eq!(local(link::OWN_BLOCKS), "own-blocks");
        assert_eq!(local(link::ADMIN_STATE), "admin-state");
        assert_eq!(local(route::DESTINATION), "destination");
    }

    #[test]
    fn a_policy_edit_sets_the_policy_leaf() {
        let tree =
            crate::netconf::datastore::parse_config(&local_control_policy_config("key-aware"))
                .unwrap();
        let policy = format!("{LOCAL_CONTROL}/{}", local_control::POLICY);
        assert_eq!(
            crate::netconf::datastore::leaf(&tree, &policy).as_deref(),
            Some("key-aware")
        );
        assert_eq!(
            advertised_link_entry(&advertisement_entry("a1"), "a1-a2"),
            format!("{ADVERTISEMENT}[origin='a1']/link[link-id='a1-a2']")
        );
    }
}
