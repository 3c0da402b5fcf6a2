//! A KM agent's `qkdni-km` notifications as managers and controllers read them
//! (`link-status-change`, `low-key-alarm`, `relay-failure`, `key-transfer`, `security-event`).

use uuid::Uuid;

use super::km::{
    self, key_transfer, link_status_change, low_key_alarm, relay_failure, security_event,
};
use super::{notification_name, xml_text};

/// `relay-failure`'s `cause` when a link on the route holds too little key.
pub const KEY_EXHAUSTED: &str = "key-exhausted";
/// `relay-failure`'s `cause` otherwise.
pub const FAULT: &str = "fault";
/// `security-event`'s `kind` of a failed NETCONF login.
pub const AUTH_FAILURE: &str = "auth-failure";
/// `security-event`'s `kind` of refusals above a reference point's threshold.
pub const REFUSAL_THRESHOLD: &str = "refusal-threshold";

/// A `qkdni-km` notification.
#[derive(Debug, Clone, PartialEq)]
pub enum KmNotification {
    /// `link-status-change`.
    LinkStatus {
        link: String,
        state: String,
        previous: String,
    },
    /// `low-key-alarm`.
    LowKey { link: String, own_blocks: u64 },
    /// `relay-failure`.
    RelayFailure(RelayFailure),
    /// `key-transfer`: the metadata for transfer key life-cycle management of an IWN's KM.
    KeyTransfer(KeyTransferReport),
    /// `security-event` of kind `auth-failure`: a failed NETCONF login.
    AuthFailure {
        user: String,
        source: String,
        failures_from_source: u64,
    },
    /// `security-event` of kind `refusal-threshold`: refusals at a reference point of the
    /// KM above its threshold.
    RefusalAlarm {
        /// The reference point (`etsi014`, `kma`, `kxi`, `netconf`).
        point: String,
        per_minute: u64,
        threshold: u64,
        /// Why the last one was refused, its source and identity.
        reason: String,
        source: String,
        identity: String,
    },
}

/// Metadata of one key transfer as an IWN's KM reported it (never key material); the
/// controllers keep it as their transfer key life-cycle record.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[schema(as = TransferRecord)]
pub struct KeyTransferReport {
    /// The relay the keys travel in (the same id in both domains).
    pub relay_id: Uuid,
    /// The IWN KM that reported it.
    pub node: String,
    /// The transfer link.
    pub link: String,
    /// `sender` (its domain holds the master SAE) or `receiver`.
    pub role: String,
    /// `transferred`, `voided`, `failed` or `failed-to-void`.
    pub state: String,
    pub master_sae: String,
    pub slave_saes: Vec<String>,
    /// Key size in bits.
    pub key_size: u32,
    pub key_ids: Vec<Uuid>,
    /// When the KM recorded the state (RFC 3339).
    pub time: String,
}

/// A relay failure reported by a KM.
#[derive(Debug, Clone, PartialEq)]
pub struct RelayFailure {
    /// The KM node that reported it.
    pub node: String,
    /// The relay operation (absent or unreadable: `None`).
    pub relay_id: Option<Uuid>,
    /// The node the keys were relayed to.
    pub destination: String,
    /// Why, as the KM put it.
    pub reason: String,
    /// The KM's cause `key-exhausted`: a link on the route holds too little key for now,
    /// which no reroute mends.
    pub exhausted: bool,
}

impl RelayFailure {
    /// Whether the KM reported a failed message authentication (a security event).
    pub fn is_authentication_failure(&self) -> bool {
        self.reason.to_ascii_lowercase().contains("authentication")
    }
}

/// Reads a notification of KM `node` (the `<notification>` XML); `None` for other
/// notifications and unreadable ones.
pub fn parse_notification(node: &str, xml: &str) -> Option<KmNotification> {
    let doc = crate::netconf::limits::parse(xml).ok()?;
    let event = doc
        .root_element()
        .children()
        .find(|c| c.is_element() && c.tag_name().name() != "eventTime")?;
    if event.tag_name().namespace() != Some(km::NAMESPACE) {
        return None;
    }
    let field = |name: &str| xml_text(event, name);
    let name = event.tag_name().name();
    if name == notification_name(link_status_change::PARENT) {
        use link_status_change as n;
        Some(KmNotification::LinkStatus {
            link: field(n::LINK_ID)?,
            state: field(n::OPER_STATE)?,
            previous: field(n::PREVIOUS_STATE).unwrap_or_default(),
        })
    } else if name == notification_name(low_key_alarm::PARENT) {
        use low_key_alarm as n;
        Some(KmNotification::LowKey {
            link: field(n::LINK_ID)?,
            own_blocks: field(n::OWN_BLOCKS)
                .and_then(|b| b.parse().ok())
                .unwrap_or(0),
        })
    } else if name == notification_name(relay_failure::PARENT) {
        use relay_failure as n;
        Some(KmNotification::RelayFailure(RelayFailure {
            node: node.to_owned(),
            relay_id: field(n::RELAY_ID).and_then(|id| Uuid::parse_str(&id).ok()),
            destination: field(n::DESTINATION)?,
            reason: field(n::REASON).unwrap_or_default(),
            exhausted: field(n::CAUSE).as_deref() == Some(KEY_EXHAUSTED),
        }))
    } else if name == notification_name(key_transfer::PARENT) {
        use key_transfer as n;
        let all = |name: &str| -> Vec<String> {
            event
                .children()
                .filter(|c| c.is_element() && c.tag_name().name() == name)
                .filter_map(|c| c.text().map(str::to_owned))
                .collect()
        };
        Some(KmNotification::KeyTransfer(KeyTransferReport {
            node: node.to_owned(),
            relay_id: Uuid::parse_str(&field(n::RELAY_ID)?).ok()?,
            link: field(n::LINK_ID)?,
            role: field(n::ROLE)?,
            state: field(n::STATE)?,
            master_sae: field(n::MASTER_SAE).unwrap_or_default(),
            slave_saes: all(n::SLAVE_SAE),
            key_size: field(n::KEY_SIZE).and_then(|s| s.parse().ok()).unwrap_or(0),
            key_ids: all(n::KEY_ID)
                .iter()
                .filter_map(|id| Uuid::parse_str(id).ok())
                .collect(),
            time: field(n::TIME).unwrap_or_default(),
        }))
    } else if name == notification_name(security_event::PARENT)
        && field(security_event::KIND).as_deref() == Some(AUTH_FAILURE)
    {
        use security_event as n;
        Some(KmNotification::AuthFailure {
            user: field(n::USER).unwrap_or_default(),
            source: field(n::SOURCE).unwrap_or_default(),
            failures_from_source: field(n::FAILURES_FROM_SOURCE)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
        })
    } else if name == notification_name(security_event::PARENT)
        && field(security_event::KIND).as_deref() == Some(REFUSAL_THRESHOLD)
    {
        use security_event as n;
        let number = |leaf: &str| field(leaf).and_then(|v| v.parse().ok()).unwrap_or(0);
        Some(KmNotification::RefusalAlarm {
            point: field(n::REFERENCE_POINT).unwrap_or_default(),
            per_minute: number(n::REFUSALS_PER_MINUTE),
            threshold: number(n::THRESHOLD),
            reason: field(n::REASON).unwrap_or_default(),
            source: field(n::SOURCE).unwrap_or_default(),
            identity: field(n::USER).unwrap_or_default(),
        })
    } else {
        None
    }
}
