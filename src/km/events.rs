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
    /// Keys crossed (or failed to cross) an interworking node's transfer link (Y.3818 9.2,
    /// procedure 1): the metadata for transfer key life-cycle management that the IWN's KM
    /// sends its controller. Never carries key material.
    KeyTransfer(KeyTransfer),
    /// A security-relevant event of the KM's management interface.
    Security(crate::netconf::server::SecurityEvent),
    /// An application (ETSI GS QKD 015 sense) obtained its first keys from this KM.
    ApplicationNew(crate::km::ksa::applications::Application),
    /// An application is gone: its master SAE is no longer registered at this node.
    ApplicationGone(crate::km::ksa::applications::Application),
}

/// Metadata of one key transfer over Kxi-1', as one of the IWN's two KMs saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyTransfer {
    /// The relay the keys travel in (the same id at both KMs and in both domains).
    pub relay_id: uuid::Uuid,
    /// The transfer link.
    pub link: String,
    /// `sender` (KM of the master SAE's QKDN) or `receiver`.
    pub role: TransferRole,
    pub key_ids: Vec<uuid::Uuid>,
    /// Key size in bits.
    pub key_size: u32,
    pub master_sae: String,
    pub slave_saes: Vec<String>,
    pub state: TransferState,
    /// Unix time of this state, in milliseconds.
    pub at_ms: u64,
}

/// Which of the IWN's KMs reports a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferRole {
    Sender,
    Receiver,
}

/// Where a transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferState {
    /// The keys crossed and were acknowledged `relayed` (at the receiver: passed on to the
    /// slave SAEs' KM).
    Transferred,
    /// The keys were voided on both sides (or never crossed).
    Voided,
    /// The transfer failed; nothing was released.
    Failed,
    /// The keys were to be voided, but a slave SAE had already fetched some (`failed to
    /// void`): an inconsistency operators must hear of.
    FailedToVoid,
}
