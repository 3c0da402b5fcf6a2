//! Events of a KM agent (link state changes, low key, relay failures, security events,
//! applications), published to NETCONF subscribers as notifications
//! ([`crate::km::northbound::notification`]).

use crate::quantum::LinkState;

/// Something operators want to hear about.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A QKD link's operational state changed.
    LinkState {
        link: String,
        state: LinkState,
        previous: LinkState,
    },
    /// This end's usable blocks of a link fell below the alarm threshold.
    LowKey {
        link: String,
        own_blocks: usize,
        threshold_percent: u8,
    },
    /// A key relay failed.
    RelayFailure {
        relay_id: uuid::Uuid,
        destination: String,
        reason: String,
        /// The route is sound but a link holds too little key for now.
        exhausted: bool,
    },
    /// A security-relevant event of the KM's management interface.
    Security(crate::netconf::server::SecurityEvent),
    /// An application (ETSI GS QKD 015 sense) obtained its first keys from this KM.
    ApplicationNew(crate::km::ksa::applications::Application),
    /// An application is gone: its master SAE is no longer registered at this node.
    ApplicationGone(crate::km::ksa::applications::Application),
}
