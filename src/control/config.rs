//! Configuration of a QKDN controller (`qkdni controller --config <file>`, TOML).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::tls::TlsFiles;

/// Configuration of one domain's controller.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// The QKDN (domain) this controller controls.
    pub domain: String,
    /// Directory of the controller's durable store.
    pub data_dir: PathBuf,
    /// Address of the northbound REST API (HTTPS).
    pub rest_listen: SocketAddr,
    /// TLS identity of the REST server and trust anchors for client certificates.
    pub tls: TlsFiles,
    /// Bearer tokens accepted on the REST API.
    #[serde(default)]
    pub bearer_tokens: Vec<String>,
    /// Client certificate common names accepted on the REST API (mutual TLS).
    #[serde(default)]
    pub client_names: Vec<String>,
    /// Route policy (a `qkdni-routing` policy name).
    #[serde(default = "default_policy")]
    pub policy: String,
    /// The KM agents of the domain.
    pub agents: Vec<AgentConfig>,
    /// NETCONF login of the controller on every agent.
    pub southbound: SouthboundLogin,
    /// Seconds between polls of the agents' key pools (notifications carry the rest).
    #[serde(default = "default_poll")]
    pub poll_seconds: u64,
    /// Seconds after which a session set up on a KM's request whose SAE pair asked for no
    /// key is removed (0: never).
    #[serde(default = "default_on_demand_idle")]
    pub on_demand_idle_seconds: u64,
    /// The operators' NETCONF server (`qkdni-controller` model); once it has persisted a
    /// running datastore, that datastore holds the policy and the poll interval.
    #[serde(default)]
    pub netconf: Option<crate::netconf::server::NetconfConfig>,
    /// Interworking with other QKDNs through gateway nodes (Cxi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interworking: Option<InterworkingConfig>,
    /// Limits of the REST (`rest_listener`) and Cxi (`peer_listener`) listeners.
    #[serde(default)]
    pub limits: crate::https::ListenerLimits,
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
}

/// The controller's interworking reference point Cxi (Y.3818 6.1).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterworkingConfig {
    /// Address of the Cxi server (HTTPS, mutual TLS with the peer domains' CAs in
    /// `tls.peer_cas`).
    pub cxi_listen: SocketAddr,
    /// The peer QKDNs' controllers.
    pub peers: Vec<CxiPeer>,
    /// What this domain tells its peers about itself.
    #[serde(default)]
    pub expose: ExposePolicy,
    /// Key rate (bit/s) of interworking sessions that KMs ask for on demand.
    #[serde(default = "default_interworking_rate")]
    pub default_rate_bps: f64,
}

/// A peer QKDN's controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CxiPeer {
    pub domain: String,
    /// Base URL of its Cxi server.
    pub url: String,
    /// The common name of its certificate (issued by the peer domain's CA).
    pub controller: String,
}

/// The exposure policy: border nodes and their Qx links are always shared; the rest only
/// when allowed. Internal links and nodes without SAEs are never shared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExposePolicy {
    /// Share which SAEs are reachable, at which node, from which border node.
    pub saes: bool,
    /// Share the hop count and key rate from each border node to those nodes.
    pub key_rate: bool,
}

impl Default for ExposePolicy {
    fn default() -> Self {
        Self {
            saes: true,
            key_rate: true,
        }
    }
}

fn default_interworking_rate() -> f64 {
    1000.0
}

/// The default the `qkdni-controller` module gives the leaf `leaf` of the controller.
fn yang_default(leaf: &str) -> String {
    use crate::model::controller::ROOT;
    crate::model::default_of(&format!("{ROOT}/{leaf}"))
}

fn default_policy() -> String {
    yang_default(crate::model::controller::root::POLICY)
}

fn default_poll() -> u64 {
    yang_default(crate::model::controller::root::POLL_SECONDS)
        .parse()
        .expect("the YANG default of poll-seconds is a number")
}

fn default_on_demand_idle() -> u64 {
    yang_default(crate::model::controller::root::ON_DEMAND_IDLE_SECONDS)
        .parse()
        .expect("the YANG default of on-demand-idle-seconds is a number")
}

/// One KM agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The node id.
    pub node: String,
    /// The agent's NETCONF address.
    pub netconf: SocketAddr,
    /// The node's role.
    #[serde(default)]
    pub role: NodeRole,
}

/// Role of a node in its domain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// A QKD node inside the domain.
    #[default]
    Km,
    /// A gateway node at the border, linked to a GWN of another QKDN (Y.3818 6.1).
    Gateway,
    /// This domain's KM in an interworking node, whose transfer link leads to the KM of
    /// another QKDN in the same trusted node (Y.3818 6.2).
    Iwn,
}

impl NodeRole {
    /// Whether the node is at the border (a GWN or an IWN's KM): its links to another
    /// QKDN carry interworking keys.
    pub fn is_border(self) -> bool {
        matches!(self, NodeRole::Gateway | NodeRole::Iwn)
    }

    /// The role's YANG name.
    pub fn name(self) -> &'static str {
        match self {
            NodeRole::Km => "km",
            NodeRole::Gateway => "gateway",
            NodeRole::Iwn => "iwn",
        }
    }
}

/// Credentials of the controller's (or the manager's) NETCONF sessions to the KM agents,
/// and the agents' SSH host keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SouthboundLogin {
    pub username: String,
    pub password: String,
    /// OpenSSH `known_hosts` file with every agent's SSH host key (`[ip]:port type key`):
    /// an agent presenting another key, or none recorded, is refused before the password is
    /// sent.
    pub known_hosts: PathBuf,
}

impl SouthboundLogin {
    /// The NETCONF client options of this login (5 s connect timeout, RPCs timing out
    /// after `timeout`); checks the known hosts file first.
    pub fn client_options(
        &self,
        timeout: std::time::Duration,
    ) -> Result<crate::netconf::client::ClientOptions, crate::netconf::known_hosts::HostKeyError>
    {
        crate::netconf::known_hosts::validate(&self.known_hosts)?;
        let mut options = crate::netconf::client::ClientOptions::password(
            &self.username,
            &self.password,
            crate::netconf::client::HostKeyCheck::KnownHosts(self.known_hosts.clone()),
        );
        options.timeout = timeout;
        Ok(options)
    }
}

pub use crate::config_file::ConfigError;

impl ControllerConfig {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let config: ControllerConfig = crate::config_file::read_toml(path)?;
        if config.bearer_tokens.is_empty() && config.client_names.is_empty() {
            return Err(ConfigError::Invalid(
                "the REST API needs bearer tokens or client certificate names".into(),
            ));
        }
        crate::netconf::known_hosts::validate(&config.southbound.known_hosts)
            .map_err(|e| ConfigError::Invalid(format!("southbound: {e}")))?;
        config.limits.check().map_err(ConfigError::Invalid)?;
        Ok(config)
    }
}
