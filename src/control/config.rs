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
    /// The operators' NETCONF server (`qkdni-controller` model); once it has persisted a
    /// running datastore, that datastore holds the policy and the poll interval.
    #[serde(default)]
    pub netconf: Option<crate::netconf::server::NetconfConfig>,
}

fn default_policy() -> String {
    "key-aware".into()
}

fn default_poll() -> u64 {
    2
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
}

impl NodeRole {
    /// The role's YANG name.
    pub fn name(self) -> &'static str {
        match self {
            NodeRole::Km => "km",
            NodeRole::Gateway => "gateway",
        }
    }
}

/// Credentials of the controller's NETCONF sessions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SouthboundLogin {
    pub username: String,
    pub password: String,
}

pub use crate::config_file::ConfigError;

impl ControllerConfig {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let config: ControllerConfig = crate::config_file::read_toml(path)?;
        if qkdni_routing::by_name(&config.policy).is_none() {
            return Err(ConfigError::Invalid(format!(
                "unknown route policy {} (known: {})",
                config.policy,
                qkdni_routing::NAMES.join(", ")
            )));
        }
        if config.bearer_tokens.is_empty() && config.client_names.is_empty() {
            return Err(ConfigError::Invalid(
                "the REST API needs bearer tokens or client certificate names".into(),
            ));
        }
        Ok(config)
    }
}
