//! `endpoints.json`: where a running testbed's services are and which credentials reach them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::EndpointsError;
use crate::tls::TlsFiles;

/// Everything a client needs to use a testbed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Endpoints {
    /// Topology name.
    pub name: String,
    /// Every domain's CA certificate (PEM bundle): what clients of any testbed server trust.
    pub ca_cert: PathBuf,
    /// Client credentials of the testbed operator in the first domain (each domain's are
    /// under `domains`).
    pub operator: Credentials,
    /// NETCONF operator with write access to every node of the first domain (each domain's
    /// own logins are under `domains`: no two domains share a password).
    pub netconf_user: NetconfLogin,
    /// NETCONF user in the read-only group, of the first domain.
    pub netconf_readonly_user: NetconfLogin,
    /// OpenSSH `known_hosts` file with the SSH host key of every KM agent and controller
    /// (what NETCONF clients check the servers against).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts: Option<PathBuf>,
    pub domains: BTreeMap<String, DomainEndpoints>,
    pub saes: BTreeMap<String, SaeEndpoint>,
    pub links: BTreeMap<String, LinkEndpoint>,
    /// Interworking nodes (Y.3818 6.2), by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub iwns: BTreeMap<String, IwnEndpoint>,
    /// A `--netns` testbed's namespaces, addresses and link interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<super::netns::Netns>,
}

/// A certificate and its key (PEM paths).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credentials {
    pub name: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A NETCONF login.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetconfLogin {
    pub username: String,
    pub password: String,
}

/// One domain's services.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DomainEndpoints {
    /// CA of the domain (PEM path): it certifies the domain's KMs, controller, manager, SAEs.
    pub ca_cert: PathBuf,
    /// The operator's client certificate in this domain.
    pub operator: Credentials,
    /// NETCONF operator (admin) of the domain's KMs and controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netconf_user: Option<NetconfLogin>,
    /// NETCONF read-only user of the domain's KMs and controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netconf_readonly_user: Option<NetconfLogin>,
    pub nodes: BTreeMap<String, NodeEndpoint>,
    /// The domain's controller, when the domain is centrally controlled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<ControllerEndpoint>,
    /// The domain's QKDN manager (management layer, Mxi), with the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager: Option<ManagerEndpoint>,
}

/// A domain manager's services.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManagerEndpoint {
    /// Process name (`manager-<domain>`).
    pub name: String,
    /// REST base URL (events, reports; bearer token).
    pub rest: String,
    /// Mxi base URL (peer managers only).
    pub mxi: String,
    /// Prometheus metrics URL (plain HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// Operators' NETCONF over SSH address (`host:port`): the domain's interworking
    /// configuration (`qkdni-manager`), with the domain's NETCONF logins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netconf: Option<String>,
    pub token: String,
    pub config: PathBuf,
    pub log: PathBuf,
}

/// A domain controller's services.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControllerEndpoint {
    /// Process name (for `qkdni testbed node stop|start`).
    pub name: String,
    /// Northbound REST base URL (`https://host:port`; OpenAPI at `/openapi.json`).
    pub rest: String,
    /// Operators' NETCONF over SSH address (`host:port`).
    pub netconf: String,
    /// The live web dashboard (`https://host:port/dashboard/`, the REST API's credentials or
    /// a one-time login link: `qkdni ctl dashboard`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard: Option<String>,
    /// Cxi base URL (peer controllers only), when the domain interworks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cxi: Option<String>,
    /// Prometheus metrics URL (plain HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// Bearer token of the testbed's orchestrator.
    pub token: String,
    pub config: PathBuf,
    pub log: PathBuf,
}

/// How to start and probe one testbed process.
pub struct ProcessSpec {
    /// `qkdni` subcommand (`km` or `controller`).
    pub subcommand: &'static str,
    pub config: PathBuf,
    pub log: PathBuf,
    /// URL answering 200 once the process is ready.
    pub health: String,
    /// Every address it listens on (all named in its readiness file once it is ready).
    pub listens: Vec<std::net::SocketAddr>,
    /// The network namespace to run it in (`--netns` testbeds' KM nodes).
    pub netns: Option<String>,
}

impl ProcessSpec {
    /// Where the process states its readiness ([`crate::readiness`]): beside its
    /// configuration, `<config stem>.ready`.
    pub fn ready_file(&self) -> PathBuf {
        self.config.with_extension("ready")
    }
}

/// The socket addresses of `host:port` or `https://host:port` endpoints that parse.
fn addresses<'a>(endpoints: impl IntoIterator<Item = &'a str>) -> Vec<std::net::SocketAddr> {
    endpoints
        .into_iter()
        .filter_map(|e| e.trim_start_matches("https://").parse().ok())
        .collect()
}

/// One KM node's services.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeEndpoint {
    /// ETSI GS QKD 014 base URL (`https://host:port`).
    pub etsi014: String,
    /// KMA base URL (peer KMs, operators' admin API).
    pub kma: String,
    /// NETCONF over SSH address (`host:port`).
    pub netconf: String,
    /// Prometheus metrics URL (plain HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// The agent's configuration file.
    pub config: PathBuf,
    /// The agent's log file.
    pub log: PathBuf,
}

/// One SAE.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SaeEndpoint {
    pub node: String,
    pub domain: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// An interworking node: its two KMs and, where it hosts them, both domains' controllers
/// and managers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IwnEndpoint {
    /// KM-A (sends keys of its QKDN's master SAEs) and KM-B.
    pub kms: [IwnKm; 2],
    /// The transfer link between them (Kxi-1').
    pub transfer_link: String,
    /// Whether the IWN hosts both controllers and managers: they talk over Cxi' and Mxi'
    /// (else over Cxi and Mxi, from elsewhere).
    pub hosts_control: bool,
    /// Hosted controllers' REST APIs, by domain.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub controllers: BTreeMap<String, String>,
    /// Hosted managers' REST APIs, by domain.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub managers: BTreeMap<String, String>,
}

/// One KM of an interworking node (its services are under `domains.<domain>.nodes.<node>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IwnKm {
    pub node: String,
    pub domain: String,
    pub etsi014: String,
    pub kma: String,
    pub netconf: String,
}

/// One QKD link.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkEndpoint {
    pub nodes: [String; 2],
    /// The domain of the first node.
    pub domain: String,
    /// For a Qx link between two domains' gateway nodes: the second node's domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_domain: Option<String>,
}

impl Endpoints {
    /// Path of `endpoints.json` in a testbed directory.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("endpoints.json")
    }

    /// Reads `endpoints.json` from a testbed directory.
    pub fn load(dir: &Path) -> Result<Self, EndpointsError> {
        let path = Self::path(dir);
        let text = std::fs::read_to_string(&path).map_err(|source| EndpointsError::Read {
            path: path.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| EndpointsError::Parse { path, source })
    }

    /// TLS files of SAE `sae`.
    pub fn sae_tls(&self, sae: &str) -> Option<TlsFiles> {
        let entry = self.saes.get(sae)?;
        Some(TlsFiles {
            cert: entry.cert.clone(),
            key: entry.key.clone(),
            ca: vec![self.ca_cert.clone()],
            peer_cas: Vec::new(),
        })
    }

    /// TLS files of the operator in the first domain.
    pub fn operator_tls(&self) -> TlsFiles {
        TlsFiles {
            cert: self.operator.cert.clone(),
            key: self.operator.key.clone(),
            ca: vec![self.ca_cert.clone()],
            peer_cas: Vec::new(),
        }
    }

    /// TLS files of the operator in the domain of node (or controller, manager) `name`.
    pub fn operator_tls_at(&self, name: &str) -> TlsFiles {
        let operator = self
            .domains
            .values()
            .find(|d| {
                d.nodes.contains_key(name)
                    || d.controller.as_ref().is_some_and(|c| c.name == name)
                    || d.manager.as_ref().is_some_and(|m| m.name == name)
            })
            .map_or(&self.operator, |d| &d.operator);
        TlsFiles {
            cert: operator.cert.clone(),
            key: operator.key.clone(),
            ca: vec![self.ca_cert.clone()],
            peer_cas: Vec::new(),
        }
    }

    /// The manager of `domain`.
    pub fn manager(&self, domain: &str) -> Option<&ManagerEndpoint> {
        self.domains.get(domain).and_then(|d| d.manager.as_ref())
    }

    /// The node endpoint of `node`, in whichever domain.
    pub fn node(&self, node: &str) -> Option<&NodeEndpoint> {
        self.domains.values().find_map(|d| d.nodes.get(node))
    }

    /// The NETCONF operator and read-only logins of `domain` (the top-level ones for an
    /// unknown domain or a testbed written before domains had their own).
    pub fn netconf_logins(&self, domain: &str) -> (&NetconfLogin, &NetconfLogin) {
        let d = self.domains.get(domain);
        (
            d.and_then(|d| d.netconf_user.as_ref())
                .unwrap_or(&self.netconf_user),
            d.and_then(|d| d.netconf_readonly_user.as_ref())
                .unwrap_or(&self.netconf_readonly_user),
        )
    }

    /// The NETCONF operator login of the KM of `node`.
    pub fn netconf_login_of(&self, node: &str) -> &NetconfLogin {
        let domain = self
            .domains
            .iter()
            .find(|(_, d)| d.nodes.contains_key(node))
            .map(|(name, _)| name.as_str())
            .unwrap_or_default();
        self.netconf_logins(domain).0
    }

    /// Where the controllers and managers run in a `--netns` testbed: the namespace of the IWN
    /// that hosts them, if any (else the root namespace).
    fn control_namespace(&self) -> Option<String> {
        let hub = self.netns.as_ref()?.hub.as_ref()?;
        Some(hub.namespace.clone())
    }

    /// The controller of `domain`.
    pub fn controller(&self, domain: &str) -> Option<&ControllerEndpoint> {
        self.domains.get(domain).and_then(|d| d.controller.as_ref())
    }

    /// The process named `name`: a KM node or a controller (`controller-<domain>`).
    pub fn process(&self, name: &str) -> Option<ProcessSpec> {
        if let Some(node) = self.node(name) {
            return Some(ProcessSpec {
                subcommand: "km",
                config: node.config.clone(),
                log: node.log.clone(),
                health: format!("{}/admin/v1/health", node.kma),
                listens: addresses([
                    node.etsi014.as_str(),
                    node.kma.as_str(),
                    node.netconf.as_str(),
                ]),
                netns: self
                    .netns
                    .as_ref()
                    .and_then(|n| n.nodes.get(name))
                    .map(|n| n.namespace.clone()),
            });
        }
        if let Some(c) = self
            .domains
            .values()
            .filter_map(|d| d.controller.as_ref())
            .find(|c| c.name == name)
        {
            return Some(ProcessSpec {
                subcommand: "controller",
                config: c.config.clone(),
                log: c.log.clone(),
                health: format!("{}/health", c.rest),
                listens: addresses(
                    [c.rest.as_str(), c.netconf.as_str()]
                        .into_iter()
                        .chain(c.cxi.as_deref()),
                ),
                netns: self.control_namespace(),
            });
        }
        self.domains
            .values()
            .filter_map(|d| d.manager.as_ref())
            .find(|m| m.name == name)
            .map(|m| ProcessSpec {
                subcommand: "manager",
                config: m.config.clone(),
                log: m.log.clone(),
                health: format!("{}/api/v1/health", m.rest),
                listens: addresses(
                    [m.rest.as_str(), m.mxi.as_str()]
                        .into_iter()
                        .chain(m.netconf.as_deref()),
                ),
                netns: self.control_namespace(),
            })
    }

    /// NETCONF client options for `login`, checking the servers' host keys against
    /// `known_hosts` (a testbed written before it existed: unchecked).
    pub fn netconf_options(&self, login: &NetconfLogin) -> crate::netconf::client::ClientOptions {
        use crate::netconf::client::{ClientOptions, HostKeyCheck};
        let check = match &self.known_hosts {
            Some(path) => HostKeyCheck::KnownHosts(path.clone()),
            None => HostKeyCheck::AcceptAny,
        };
        ClientOptions::password(&login.username, &login.password, check)
    }

    /// An ETSI GS QKD 014 client of `sae` at the KM serving it, with its certificate.
    pub fn etsi014_client(
        &self,
        sae: &str,
        timeout: std::time::Duration,
    ) -> Result<crate::etsi014::Client, EndpointsError> {
        let unknown = || EndpointsError::UnknownSae(sae.to_owned());
        let http = crate::tls::https_client(&self.sae_tls(sae).ok_or_else(unknown)?, timeout)?;
        Ok(crate::etsi014::Client::new(
            http,
            self.sae_kme(sae).ok_or_else(unknown)?,
        ))
    }

    /// ETSI GS QKD 014 base URL of the KM serving `sae`.
    pub fn sae_kme(&self, sae: &str) -> Option<&str> {
        let node = &self.saes.get(sae)?.node;
        self.node(node).map(|n| n.etsi014.as_str())
    }
}
