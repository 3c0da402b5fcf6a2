//! Configuration of a KM agent (`qkdni km --config <file>`, TOML).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::quantum::link_model::LinkParams;
use crate::quantum::RateSpec;
use crate::tls::TlsFiles;

/// Configuration of one KM agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmConfig {
    /// This QKD node's id (also the common name of its certificate).
    pub node: String,
    /// The QKDN (domain) the node belongs to.
    pub domain: String,
    /// Directory of the on-disk key store.
    pub data_dir: PathBuf,
    /// Address of the KSA's ETSI GS QKD 014 server (SAEs).
    pub etsi014_listen: SocketAddr,
    /// Address of the KMA server (peer KMs: relay and emulated quantum channel; operators).
    pub kma_listen: SocketAddr,
    /// This KM's TLS identity and trust anchors.
    pub tls: TlsFiles,
    /// Certificate common names of the operators allowed on the admin API.
    #[serde(default)]
    pub operators: Vec<String>,
    /// ETSI GS QKD 014 limits.
    #[serde(default)]
    pub etsi014: Etsi014Limits,
    /// QKD links of this node.
    #[serde(default)]
    pub links: Vec<LinkConfig>,
    /// Every SAE of the domain and the node whose KM serves it.
    #[serde(default)]
    pub saes: BTreeMap<String, String>,
    /// Key relay routes: destination node -> next hop node (a link peer).
    #[serde(default)]
    pub routes: BTreeMap<String, String>,
    /// The operators' NETCONF server; once it has persisted a running datastore, that
    /// datastore (not this file) holds the links' settings, routes, SAEs and limits.
    #[serde(default)]
    pub netconf: Option<crate::netconf::server::NetconfConfig>,
    /// The domain controller's KM-facing API (base URL): asked for an interworking route
    /// when an SAE asks for keys with an SAE this KM does not know (Y.3818 9.1, procedure 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<String>,
    /// Limits against load and abuse (listeners, ETSI 014 admission, undelivered keys).
    #[serde(default)]
    pub limits: crate::km::limits::KmLimits,
    /// Key material at rest (`[key_store]`: `encrypt`, default true, off only to measure its
    /// cost; `key_file`, default `<data_dir>/store.key`).
    #[serde(default)]
    pub key_store: crate::km::store::AtRestConfig,
    /// Accounting (`[accounting]`: period of the summaries).
    #[serde(default)]
    pub accounting: crate::km::accounting::AccountingConfig,
    /// Address of the Prometheus metrics listener (plain HTTP: a management network or the
    /// loopback), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Refusal counting and alarm thresholds (`[refusals]`: `thresholds` per reference
    /// point in refusals per minute, `default_threshold`, `recent`).
    #[serde(default)]
    pub refusals: crate::refusals::RefusalConfig,
    /// Signing of interworking messages and the evidence kept of them (`[nonrepudiation]`:
    /// `sign`, default true; `evidence_dir`).
    #[serde(
        default,
        skip_serializing_if = "crate::nonrepudiation::Settings::is_default"
    )]
    pub nonrepudiation: crate::nonrepudiation::Settings,
    /// The audit log (`[audit]`: `dir`, default `<data_dir>/audit`; `segment_bytes`; `enabled`, default
    /// true, off only to measure its cost).
    #[serde(default, skip_serializing_if = "crate::audit::AuditConfig::is_default")]
    pub audit: crate::audit::AuditConfig,
    /// Distributed control (Y.3818 clause 8): the node runs link-state routing with its
    /// neighbours instead of taking routes from a central controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_control: Option<LocalControlConfig>,
    /// A distributed QKDN's speaker (a gateway node): speaks Cxi with the peer QKDNs for the
    /// domain (Y.3818 clause 8, GWN model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interworking: Option<crate::control::gateway::SpeakerConfig>,
}

/// The local controller of a node in a distributed QKDN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalControlConfig {
    /// The route policy (a name of the controller plugins' catalog, e.g. `fewest-hops`).
    #[serde(default = "default_policy")]
    pub policy: String,
    /// The URL the node's KMA server is advertised at (default `https://<kma_listen>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kma_url: Option<String>,
}

fn default_policy() -> String {
    "fewest-hops".into()
}

/// Which end of a QKD link this node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkEnd {
    /// Hosts the transmitter module.
    Tx,
    /// Hosts the receiver module.
    Rx,
}

impl LinkEnd {
    /// The owner index of the blocks this end allocates ([`TX`](crate::km::store::TX) or
    /// [`RX`](crate::km::store::RX)); the transmitter module decides, block by block, which end
    /// owns it.
    pub fn owner(self) -> u8 {
        match self {
            LinkEnd::Tx => crate::km::store::TX,
            LinkEnd::Rx => crate::km::store::RX,
        }
    }
}

/// One QKD link as seen from this node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    /// Link id (the same at both ends).
    pub id: String,
    /// The node at the other end.
    pub peer: String,
    /// Base URL of the peer KM's KMA server.
    pub peer_kma: String,
    /// This node's end of the link.
    pub end: LinkEnd,
    /// Fixed secret key rate in bit/s; when absent, `model` determines it.
    #[serde(default)]
    pub rate_bps: Option<f64>,
    /// Physical link model (used when `rate_bps` is absent).
    #[serde(default)]
    pub model: Option<LinkParams>,
    /// Size of the link's key pool in 256-bit blocks (both ends' shares together).
    #[serde(default = "default_capacity")]
    pub capacity_blocks: usize,
    /// For a Qx link between gateway nodes (Y.3818 6.1) or a transfer link inside an
    /// interworking node (6.2): the QKDN of the peer KM. Key relay over it speaks Kxi-1 /
    /// Kxi-1' (ETSI GS QKD 020) instead of the domain's relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_domain: Option<String>,
    /// A QKD link (the default) or an IWN's transfer link.
    #[serde(default, skip_serializing_if = "LinkKind::is_qkd")]
    pub kind: LinkKind,
}

/// What joins a KM to a peer KM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    /// A QKD link: a pair of (emulated) QKD modules filling a shared key pool; keys cross
    /// it one-time padded.
    #[default]
    Qkd,
    /// The transfer link of an interworking node (Y.3818 6.2): KM-A and KM-B of the same
    /// trusted node, with no QKD link between them; keys are transferred over Kxi-1' (ETSI
    /// GS QKD 020, mutual TLS) and no key pool, quantum module, rate or end applies.
    Transfer,
}

impl LinkKind {
    /// Whether this is a QKD link.
    pub fn is_qkd(&self) -> bool {
        *self == LinkKind::Qkd
    }
}

/// The YANG default of a link's `capacity-blocks`.
fn default_capacity() -> usize {
    yang_default(&format!(
        "{}/{}",
        crate::model::etsi_node::LINK,
        crate::model::km::link::CAPACITY_BLOCKS
    ))
}

/// The default the `qkdni-km` module gives the leaf at schema path `path`.
fn yang_default<T: std::str::FromStr>(path: &str) -> T {
    crate::model::default_of(path)
        .parse()
        .unwrap_or_else(|_| panic!("the YANG default of {path} is a number"))
}

impl LinkConfig {
    /// The identity the peer KM proves with its certificate (qualified with its QKDN across
    /// a Qx link; see [`crate::tls::foreign_identity`]).
    pub fn peer_identity(&self) -> String {
        match &self.peer_domain {
            Some(domain) => crate::tls::foreign_identity(&self.peer, domain),
            None => self.peer.clone(),
        }
    }

    /// How the link's key rate is determined.
    pub fn rate_spec(&self) -> RateSpec {
        match (self.rate_bps, self.model) {
            (Some(rate_bps), _) => RateSpec::Fixed { rate_bps },
            (None, Some(params)) => RateSpec::Model(params),
            (None, None) => RateSpec::Model(LinkParams::default()),
        }
    }
}

/// Limits announced in the ETSI GS QKD 014 status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Etsi014Limits {
    pub key_size: u32,
    pub max_key_per_request: u32,
    pub max_key_size: u32,
    pub min_key_size: u32,
    pub max_sae_id_count: u32,
}

impl Etsi014Limits {
    /// Why these limits would let a request exceed what one relay message carries.
    pub fn beyond_relay_limits(&self) -> Option<String> {
        use crate::km::kma::relay::messages::{MAX_KEYS_PER_MESSAGE, MAX_RELAY_KEY_BITS};
        if self.max_key_size > MAX_RELAY_KEY_BITS {
            return Some(format!(
                "etsi014.max_key_size must be at most {MAX_RELAY_KEY_BITS}"
            ));
        }
        if self.max_key_per_request as usize > MAX_KEYS_PER_MESSAGE {
            return Some(format!(
                "etsi014.max_key_per_request must be at most {MAX_KEYS_PER_MESSAGE}"
            ));
        }
        None
    }
}

impl Default for Etsi014Limits {
    fn default() -> Self {
        use crate::model::km::{etsi014, etsi014_leaf};
        let leaf = |name: &str| yang_default(&etsi014_leaf(name));
        Self {
            key_size: leaf(etsi014::KEY_SIZE),
            max_key_per_request: leaf(etsi014::MAX_KEY_PER_REQUEST),
            max_key_size: leaf(etsi014::MAX_KEY_SIZE),
            min_key_size: leaf(etsi014::MIN_KEY_SIZE),
            max_sae_id_count: leaf(etsi014::MAX_SAE_ID_COUNT),
        }
    }
}

pub use crate::config_file::ConfigError;

impl KmConfig {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let config: KmConfig = crate::config_file::read_toml(path)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the configuration as a whole.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let l = &self.etsi014;
        if l.min_key_size == 0
            || !l.min_key_size.is_multiple_of(8)
            || !l.max_key_size.is_multiple_of(8)
            || !l.key_size.is_multiple_of(8)
            || !(l.min_key_size..=l.max_key_size).contains(&l.key_size)
        {
            return invalid(
                "etsi014 key sizes must be multiples of 8 with min <= key_size <= max".into(),
            );
        }
        if l.max_key_per_request == 0 {
            return invalid("etsi014.max_key_per_request must be positive".into());
        }
        if let Some(problem) = l.beyond_relay_limits() {
            return invalid(problem);
        }
        self.limits.check().map_err(ConfigError::Invalid)?;
        if let Some(netconf) = &self.netconf {
            netconf.limits.check().map_err(ConfigError::Invalid)?;
        }
        let mut ids = std::collections::BTreeSet::new();
        for link in &self.links {
            if !ids.insert(&link.id) {
                return invalid(format!("link {} configured twice", link.id));
            }
            if link.peer == self.node {
                return invalid(format!("link {} loops to this node", link.id));
            }
            if link.kind == LinkKind::Transfer && link.peer_domain.is_none() {
                return invalid(format!(
                    "transfer link {}: the peer KM is of another QKDN (peer_domain)",
                    link.id
                ));
            }
            if link.capacity_blocks < 2 {
                return invalid(format!("link {}: capacity_blocks must be >= 2", link.id));
            }
            if let Some(rate) = link.rate_bps {
                if !(rate.is_finite() && rate >= 0.0) {
                    return invalid(format!("link {}: rate_bps must be >= 0", link.id));
                }
            }
            if let Some(model) = link.model {
                model
                    .validate()
                    .map_err(|e| ConfigError::Invalid(format!("link {}: {e}", link.id)))?;
            }
        }
        for (dest, hop) in &self.routes {
            if !self.links.iter().any(|link| &link.peer == hop) {
                return invalid(format!(
                    "route to {dest}: next hop {hop} is not a link peer"
                ));
            }
        }
        Ok(())
    }

    /// The link to adjacent node `peer`, if any.
    pub fn link_to(&self, peer: &str) -> Option<&LinkConfig> {
        self.links.iter().find(|link| link.peer == peer)
    }
}
