//! Configuration of a QKDN manager (`qkdni manager --config <file>`, TOML).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::config_file::ConfigError;
use crate::control::config::SouthboundLogin;
use crate::tls::TlsFiles;

/// Configuration of one domain's QKDN manager (KMLM, QLM, XLMO and QCLM).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagerConfig {
    /// The QKDN (domain) this manager manages.
    pub domain: String,
    /// Every node of the domain: a relay failure toward any other node is an interworking
    /// relay failure.
    pub nodes: Vec<String>,
    /// Address of the manager's REST API (HTTPS, bearer tokens).
    pub rest_listen: SocketAddr,
    /// Address of the Mxi server (HTTPS, mutual TLS with the peer domain's manager).
    pub mxi_listen: SocketAddr,
    /// Bearer tokens accepted on the REST API.
    pub bearer_tokens: Vec<String>,
    /// Seconds between report packs (and QLM readings of the agents).
    #[serde(default = "default_report_seconds")]
    pub report_seconds: u64,
    /// Seconds during which the QCLM asks the controller only once about failures toward
    /// one destination (0: ask on every failure).
    #[serde(default = "default_holddown")]
    pub diagnosis_holddown_seconds: u64,
    /// TLS identity of both servers and of the Mxi client; `peer_cas` must hold the peer
    /// domain's CA.
    pub tls: TlsFiles,
    /// The KM agents of the domain (NETCONF over SSH).
    #[serde(default)]
    pub agents: Vec<ManagedAgent>,
    /// NETCONF login of the manager on every agent.
    pub southbound: SouthboundLogin,
    /// The domain's controller, which the QCLM asks to check and reroute.
    #[serde(default)]
    pub controller: Option<ControllerLink>,
    /// The QKDN manager of the other domain, across Mxi.
    pub peer: PeerManager,
    /// Limits of the REST (`rest_listener`) and Mxi (`peer_listener`) listeners.
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
    /// The audit log (`[audit]`: `dir`, default ``audit/` beside this file`; `segment_bytes`; `enabled`, default
    /// true, off only to measure its cost).
    #[serde(default, skip_serializing_if = "crate::audit::AuditConfig::is_default")]
    pub audit: crate::audit::AuditConfig,
    /// The operators' NETCONF server (`qkdni-manager` model: the domain's interworking
    /// configuration, provisioned on the controller; report periods; the change log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netconf: Option<crate::netconf::server::NetconfConfig>,
}

fn default_report_seconds() -> u64 {
    5
}

fn default_holddown() -> u64 {
    5
}

/// One KM agent watched by the KMLM and read by the QLM.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagedAgent {
    /// The node id.
    pub node: String,
    /// The agent's NETCONF address.
    pub netconf: SocketAddr,
}

/// How the QCLM reaches the domain's controller (northbound REST).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerLink {
    /// Base URL of the controller's REST API, e.g. `https://127.0.0.1:7200`.
    pub url: String,
    /// Bearer token accepted by the controller.
    pub token: String,
    /// CA certificate (PEM path) that certifies the controller's server.
    pub ca: PathBuf,
    /// The link leads to the speaker KM of a distributed domain, not to a controller: it
    /// takes the QCLM's diagnoses, and the report packs carry no control-layer figures
    /// (default false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub speaker: bool,
    /// The controller's operators' NETCONF server, where the manager provisions the
    /// interworking configuration operators set on it (none: the manager provisions
    /// nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netconf: Option<ControllerNetconf>,
}

/// The manager's NETCONF login on its controller.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerNetconf {
    /// Address of the controller's NETCONF server.
    pub address: SocketAddr,
    pub username: String,
    pub password: String,
    /// OpenSSH `known_hosts` file holding the controller's SSH host key.
    pub known_hosts: PathBuf,
    /// Seconds between checks that the controller's interworking configuration is still
    /// the one the manager provisioned (configuration drift; 0: never checked).
    #[serde(default = "default_drift_check")]
    pub drift_check_seconds: u64,
}

fn default_drift_check() -> u64 {
    30
}

/// The peer domain's QKDN manager.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerManager {
    /// The peer QKDN's name (as in `tls.peer_cas`).
    pub domain: String,
    /// Common name of the peer manager's certificate.
    pub manager_name: String,
    /// Base URL of the peer's Mxi server, e.g. `https://127.0.0.1:7302`.
    pub mxi: String,
}

impl ManagerConfig {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut config: ManagerConfig = crate::config_file::read_toml(path)?;
        config.validate()?;
        // a manager has no data directory: its evidence lives next to its configuration
        // ... and so does its audit log
        if config.audit.dir.is_none() {
            config.audit.dir = Some(path.parent().unwrap_or(Path::new(".")).join("audit"));
        }
        if config.nonrepudiation.evidence_dir.is_none() {
            let dir = path.parent().unwrap_or(Path::new("."));
            config.nonrepudiation.evidence_dir =
                Some(dir.join(crate::nonrepudiation::evidence::DIR));
        }
        Ok(config)
    }

    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.domain.is_empty() || self.nodes.is_empty() {
            return invalid("domain and nodes must not be empty".into());
        }
        if self.bearer_tokens.iter().all(|t| t.is_empty()) {
            return invalid("the REST API needs bearer tokens".into());
        }
        self.limits.check().map_err(ConfigError::Invalid)?;
        if self.report_seconds == 0 {
            return invalid("report_seconds must be at least 1".into());
        }
        if let Some(agent) = self.agents.iter().find(|a| !self.nodes.contains(&a.node)) {
            return invalid(format!("agent {} is not one of `nodes`", agent.node));
        }
        if self.peer.domain == self.domain {
            return invalid("the peer manager must be of another domain".into());
        }
        if !self
            .tls
            .peer_cas
            .iter()
            .any(|p| p.domain == self.peer.domain)
        {
            return invalid(format!(
                "tls.peer_cas has no CA of the peer domain {}",
                self.peer.domain
            ));
        }
        if !self.peer.mxi.starts_with("https://") {
            return invalid("peer.mxi must be an https:// URL".into());
        }
        if let Some(c) = &self.controller {
            if !c.url.starts_with("https://") {
                return invalid("controller.url must be an https:// URL".into());
            }
        }
        Ok(())
    }

    /// The CA certificate of the peer domain (validated to exist by [`Self::validate`]).
    pub fn peer_ca(&self) -> Option<&Path> {
        self.tls
            .peer_cas
            .iter()
            .find(|p| p.domain == self.peer.domain)
            .map(|p| p.cert.as_path())
    }

    /// Whether `node` is a node of this domain.
    pub fn is_own_node(&self, node: &str) -> bool {
        self.nodes.iter().any(|n| n == node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
domain = "A"
nodes = ["a1", "a2", "ga1"]
rest_listen = "127.0.0.1:7101"
mxi_listen = "127.0.0.1:7102"
bearer_tokens = ["t"]
[tls]
cert = "m.crt"
key = "m.key"
ca = ["ca.crt"]
peer_cas = [{ domain = "B", cert = "b-ca.crt" }]
[[agents]]
node = "a1"
netconf = "127.0.0.1:7001"
[southbound]
username = "operator"
password = "pw"
known_hosts = "known_hosts"
[controller]
url = "https://127.0.0.1:7200"
token = "c"
ca = "ca.crt"
[peer]
domain = "B"
manager_name = "manager-B"
mxi = "https://127.0.0.1:7302"
"#;

    #[test]
    fn example_is_valid() {
        let config: ManagerConfig = toml::from_str(EXAMPLE).unwrap();
        config.validate().unwrap();
        assert_eq!(config.report_seconds, 5);
        assert_eq!(config.peer_ca(), Some(Path::new("b-ca.crt")));
        assert!(config.is_own_node("ga1") && !config.is_own_node("b1"));
    }

    #[test]
    fn mistakes_are_refused() {
        assert!(toml::from_str::<ManagerConfig>(&format!("{EXAMPLE}\nbogus = 1")).is_err());
        // the agents' host keys must be named
        let unchecked = EXAMPLE.replace("known_hosts = \"known_hosts\"\n", "");
        assert!(toml::from_str::<ManagerConfig>(&unchecked).is_err());
        let mut config: ManagerConfig = toml::from_str(EXAMPLE).unwrap();
        config.tls.peer_cas.clear();
        assert!(config.validate().is_err());
        let mut config: ManagerConfig = toml::from_str(EXAMPLE).unwrap();
        config.agents[0].node = "b1".into();
        assert!(config.validate().is_err());
        let mut config: ManagerConfig = toml::from_str(EXAMPLE).unwrap();
        config.peer.domain = "A".into();
        assert!(config.validate().is_err());
    }

    #[test]
    fn listener_limits_are_configurable_and_checked() {
        let limits = "\n[limits.rest_listener]\nmax_body_bytes = 4096\n\
                      [limits.peer_listener.connections]\nmax_connections = 8\nmax_per_source = 2\n";
        let config: ManagerConfig = toml::from_str(&format!("{EXAMPLE}{limits}")).unwrap();
        config.validate().unwrap();
        assert_eq!(config.limits.rest_listener.max_body_bytes, 4096);
        assert_eq!(config.limits.peer_listener.connections.max_per_source, 2);
        // what is not named keeps its default
        assert_eq!(config.limits.rest_listener.max_headers, 64);
        let none = limits.replace("max_connections = 8", "max_connections = 0");
        let config: ManagerConfig = toml::from_str(&format!("{EXAMPLE}{none}")).unwrap();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("limits.peer_listener"), "{error}");
        let typo = limits.replace("max_body_bytes", "max_body");
        assert!(toml::from_str::<ManagerConfig>(&format!("{EXAMPLE}{typo}")).is_err());
    }
}
