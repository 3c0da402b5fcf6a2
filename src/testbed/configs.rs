//! The configuration files a testbed writes for its daemons: controllers and managers,
//! NETCONF users, `prometheus.yml`, `endpoints.json`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::endpoints::{ControllerEndpoint, Credentials, Endpoints, ManagerEndpoint, NetconfLogin};
use super::error::{io, TestbedError};
use super::host_keys;
use crate::control::config::{
    AgentConfig, ControllerConfig, CxiPeer, ExposePolicy, InterworkingConfig, NodeRole,
    SouthboundLogin,
};
use crate::management::config::{
    ControllerLink, ControllerNetconf, ManagedAgent, ManagerConfig, PeerManager,
};
use crate::netconf::server::{Group, NetconfConfig, User};
use crate::pki::{Authority, Role};
use crate::tls::{self, TlsFiles};

/// 16 random URL-safe characters (96 bits) that never begin with `-` or `_`: a password
/// beginning with `-` is taken for an option by command-line clients (netconf-console2's
/// `-p -x...` fails).
pub(super) fn random_password() -> String {
    use base64::Engine;
    loop {
        let mut bytes = [0u8; 12];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        let password = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        if password.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return password;
        }
    }
}

/// The testbed's NETCONF users: an operator (admin) and a viewer (read-only).
pub(super) fn netconf_users(admin: &NetconfLogin, viewer: &NetconfLogin) -> Vec<User> {
    [(admin, Group::Admin), (viewer, Group::ReadOnly)]
        .into_iter()
        .map(|(login, group)| User {
            name: login.username.clone(),
            password: Some(login.password.clone()),
            authorized_keys: Vec::new(),
            group,
        })
        .collect()
}

/// A domain's PKI: its own CA, trusted by other domains only at their interworking points.
pub(super) struct DomainPki {
    pub(super) ca: Authority,
    pub(super) ca_cert: PathBuf,
    pub(super) operator: Credentials,
}

/// Addresses of one domain's controller and manager.
pub(super) struct ControlAddresses {
    pub(super) rest: SocketAddr,
    pub(super) netconf: SocketAddr,
    pub(super) cxi: SocketAddr,
    pub(super) manager_rest: SocketAddr,
    pub(super) mxi: SocketAddr,
    pub(super) metrics: SocketAddr,
    pub(super) manager_metrics: SocketAddr,
    /// The manager's operators' NETCONF server.
    pub(super) manager_netconf: SocketAddr,
}

pub(super) fn write_toml<T: Serialize>(
    path: &Path,
    value: &T,
    what: &str,
) -> Result<(), TestbedError> {
    let text = toml::to_string_pretty(value)
        .map_err(|e| TestbedError::Operation(format!("serializing {what}: {e}")))?;
    std::fs::write(path, text).map_err(io(format!("writing {what}")))
}

/// The topology's audit and signing settings, for every daemon it writes.
pub(super) type Security<'a> = (
    &'a crate::audit::AuditConfig,
    &'a crate::nonrepudiation::Settings,
);

/// Writes the configurations of a domain's controller and manager.
#[allow(clippy::too_many_arguments)]
pub(super) fn write_control(
    dir: &Path,
    domain: &super::topology::Domain,
    iwn_nodes: &[&str],
    dpki: &DomainPki,
    addrs: &ControlAddresses,
    addresses: &BTreeMap<String, (SocketAddr, SocketAddr, SocketAddr, SocketAddr)>,
    peers: &[&String],
    control: &BTreeMap<String, ControlAddresses>,
    cxi_of: &BTreeMap<String, (String, String)>,
    speaker: Option<(&str, &str)>,
    peer_cas: Vec<tls::PeerCa>,
    (netconf_user, netconf_readonly_user): (&NetconfLogin, &NetconfLogin),
    ips: &[IpAddr],
    known_hosts: &Path,
    security: Security<'_>,
) -> Result<(Option<ControllerEndpoint>, Option<ManagerEndpoint>), TestbedError> {
    let pki = dir.join("pki");
    // a distributed domain has no controller: its manager's QCLM asks the domain's speaker
    let (controller, link) = match speaker {
        Some((url, token)) => (
            None,
            ControllerLink {
                url: url.to_owned(),
                token: token.to_owned(),
                ca: dpki.ca_cert.clone(),
                speaker: true,
                netconf: None,
            },
        ),
        None => {
            // the manager's own login on its controller, which it provisions
            let manager_login = NetconfLogin {
                username: format!("manager-{}", domain.name),
                password: random_password(),
            };
            let (controller, token) = write_controller(
                dir,
                domain,
                iwn_nodes,
                dpki,
                addrs,
                addresses,
                peers,
                cxi_of,
                peer_cas.clone(),
                (netconf_user, netconf_readonly_user),
                &manager_login,
                ips,
                known_hosts,
                security,
            )?;
            let link = ControllerLink {
                url: format!("https://{}", addrs.rest),
                token,
                ca: dpki.ca_cert.clone(),
                speaker: false,
                netconf: Some(ControllerNetconf {
                    address: addrs.netconf,
                    username: manager_login.username,
                    password: manager_login.password,
                    known_hosts: known_hosts.to_path_buf(),
                    // testbeds check often, so that a drift is seen within a test
                    drift_check_seconds: 2,
                }),
            };
            (Some(controller), link)
        }
    };
    // the manager of an interworking domain: KMLM, QLM, XLMO, QCLM; Mxi toward the first
    // peer domain
    let Some(peer) = peers
        .first()
        .map(|p| (*p).clone())
        .filter(|p| control.contains_key(p))
    else {
        return Ok((controller, None));
    };
    let mname = format!("manager-{}", domain.name);
    let mdir = dir.join("managers").join(&domain.name);
    std::fs::create_dir_all(&mdir).map_err(io("creating manager directory"))?;
    let mpaths = dpki
        .ca
        .issue_to_with_ips(&pki, &mname, &mname, Role::Node, ips)?;
    let mtoken = random_password();
    let mconfig = ManagerConfig {
        domain: domain.name.clone(),
        nodes: domain.nodes.iter().map(|n| n.name.clone()).collect(),
        rest_listen: addrs.manager_rest,
        mxi_listen: addrs.mxi,
        bearer_tokens: vec![mtoken.clone()],
        report_seconds: 5,
        diagnosis_holddown_seconds: 5,
        tls: TlsFiles {
            cert: mpaths.cert,
            key: mpaths.key,
            ca: vec![dpki.ca_cert.clone()],
            peer_cas,
        },
        agents: domain
            .nodes
            .iter()
            .map(|n| ManagedAgent {
                node: n.name.clone(),
                netconf: addresses[&n.name].2,
            })
            .collect(),
        southbound: SouthboundLogin {
            username: netconf_user.username.clone(),
            password: netconf_user.password.clone(),
            known_hosts: known_hosts.to_path_buf(),
        },
        controller: Some(link),
        peer: PeerManager {
            manager_name: format!("manager-{peer}"),
            mxi: format!("https://{}", control[&peer].mxi),
            domain: peer,
        },
        limits: Default::default(),
        metrics_listen: Some(addrs.manager_metrics),
        refusals: Default::default(),
        nonrepudiation: security.1.clone(),
        audit: security.0.clone(),
        netconf: Some(NetconfConfig {
            listen: addrs.manager_netconf,
            host_key: {
                let host_key = mdir.join("ssh_host_ed25519_key");
                host_keys::provision(known_hosts, &host_key, addrs.manager_netconf)?;
                host_key
            },
            users: netconf_users(netconf_user, netconf_readonly_user),
            max_message_bytes: 4 * 1024 * 1024,
            running_file: Some(mdir.join("running.xml")),
            limits: Default::default(),
        }),
    };
    let mconfig_path = mdir.join("manager.toml");
    write_toml(&mconfig_path, &mconfig, "manager config")?;
    let manager = ManagerEndpoint {
        name: mname,
        rest: format!("https://{}", addrs.manager_rest),
        mxi: format!("https://{}", addrs.mxi),
        metrics: Some(format!("http://{}/metrics", addrs.manager_metrics)),
        netconf: Some(addrs.manager_netconf.to_string()),
        token: mtoken,
        config: mconfig_path,
        log: dir
            .join("logs")
            .join(format!("manager-{}.log", domain.name)),
    };
    Ok((controller, Some(manager)))
}

/// `<DIR>/prometheus.yml`: a Prometheus configuration that scrapes every daemon's metrics,
/// labelled with its domain and role (JSON, which YAML readers take as it is).
pub(super) fn write_prometheus(dir: &Path, endpoints: &Endpoints) -> Result<(), TestbedError> {
    let mut groups = Vec::new();
    for (name, domain) in &endpoints.domains {
        let mut group = |role: &str, urls: Vec<&Option<String>>| {
            let targets: Vec<String> = urls
                .into_iter()
                .flatten()
                .filter_map(|u| {
                    let host = u.strip_prefix("http://")?.strip_suffix("/metrics")?;
                    Some(host.to_owned())
                })
                .collect();
            if !targets.is_empty() {
                groups.push(serde_json::json!({
                    "targets": targets,
                    "labels": {"domain": name, "role": role},
                }));
            }
        };
        group("km", domain.nodes.values().map(|n| &n.metrics).collect());
        group(
            "controller",
            domain.controller.iter().map(|c| &c.metrics).collect(),
        );
        group(
            "manager",
            domain.manager.iter().map(|m| &m.metrics).collect(),
        );
    }
    let config = serde_json::json!({
        "global": {"scrape_interval": "5s"},
        "scrape_configs": [{
            "job_name": "qkdni",
            "metrics_path": "/metrics",
            "static_configs": groups,
        }],
    });
    let text = serde_json::to_string_pretty(&config).expect("serializable");
    std::fs::write(dir.join("prometheus.yml"), text).map_err(io("writing prometheus.yml"))
}

pub(super) fn write_endpoints(dir: &Path, endpoints: &Endpoints) -> Result<(), TestbedError> {
    let text = serde_json::to_string_pretty(endpoints).expect("serializable");
    std::fs::write(Endpoints::path(dir), text).map_err(io("writing endpoints.json"))
}

/// Writes the configuration of a centralized domain's controller; returns its endpoint and
/// the orchestrators' bearer token.
#[allow(clippy::too_many_arguments)]
fn write_controller(
    dir: &Path,
    domain: &super::topology::Domain,
    iwn_nodes: &[&str],
    dpki: &DomainPki,
    addrs: &ControlAddresses,
    addresses: &BTreeMap<String, (SocketAddr, SocketAddr, SocketAddr, SocketAddr)>,
    peers: &[&String],
    cxi_of: &BTreeMap<String, (String, String)>,
    peer_cas: Vec<tls::PeerCa>,
    (netconf_user, netconf_readonly_user): (&NetconfLogin, &NetconfLogin),
    manager_login: &NetconfLogin,
    ips: &[IpAddr],
    known_hosts: &Path,
    (audit, nonrepudiation): Security<'_>,
) -> Result<(ControllerEndpoint, String), TestbedError> {
    let pki = dir.join("pki");
    let name = format!("controller-{}", domain.name);
    let cdir = dir.join("controllers").join(&domain.name);
    std::fs::create_dir_all(&cdir).map_err(io("creating controller directory"))?;
    let paths = dpki
        .ca
        .issue_to_with_ips(&pki, &name, &name, Role::Node, ips)?;
    let token = random_password();
    let tls_files = TlsFiles {
        cert: paths.cert,
        key: paths.key,
        ca: vec![dpki.ca_cert.clone()],
        peer_cas: peer_cas.clone(),
    };
    let config = ControllerConfig {
        domain: domain.name.clone(),
        data_dir: cdir.join("data"),
        rest_listen: addrs.rest,
        tls: tls_files,
        bearer_tokens: vec![token.clone()],
        client_names: vec!["operator".into()],
        policy: "key-aware".into(),
        agents: domain
            .nodes
            .iter()
            .map(|n| AgentConfig {
                node: n.name.clone(),
                netconf: addresses[&n.name].2,
                role: if n.gateway {
                    NodeRole::Gateway
                } else if iwn_nodes.contains(&n.name.as_str()) {
                    NodeRole::Iwn
                } else {
                    NodeRole::Km
                },
            })
            .collect(),
        southbound: SouthboundLogin {
            username: netconf_user.username.clone(),
            password: netconf_user.password.clone(),
            known_hosts: known_hosts.to_path_buf(),
        },
        poll_seconds: 2,
        on_demand_idle_seconds: 600,
        netconf: Some(NetconfConfig {
            listen: addrs.netconf,
            host_key: {
                let host_key = cdir.join("ssh_host_ed25519_key");
                host_keys::provision(known_hosts, &host_key, addrs.netconf)?;
                host_key
            },
            users: {
                let mut users = netconf_users(netconf_user, netconf_readonly_user);
                users.push(User {
                    name: manager_login.username.clone(),
                    password: Some(manager_login.password.clone()),
                    authorized_keys: Vec::new(),
                    group: Group::Admin,
                });
                users
            },
            max_message_bytes: 4 * 1024 * 1024,
            running_file: Some(cdir.join("data").join("running.xml")),
            limits: Default::default(),
        }),
        interworking: (!peers.is_empty()).then(|| InterworkingConfig {
            cxi_listen: addrs.cxi,
            peers: peers
                .iter()
                .filter_map(|p| {
                    let (url, name) = cxi_of.get(*p)?;
                    Some(CxiPeer {
                        domain: (*p).clone(),
                        url: url.clone(),
                        controller: name.clone(),
                    })
                })
                .collect(),
            expose: ExposePolicy::default(),
            default_rate_bps: 1000.0,
        }),
        limits: Default::default(),
        metrics_listen: Some(addrs.metrics),
        refusals: Default::default(),
        nonrepudiation: nonrepudiation.clone(),
        audit: audit.clone(),
    };
    let config_path = cdir.join("controller.toml");
    write_toml(&config_path, &config, "controller config")?;
    let controller = ControllerEndpoint {
        name,
        rest: format!("https://{}", addrs.rest),
        netconf: addrs.netconf.to_string(),
        dashboard: Some(format!("https://{}/dashboard/", addrs.rest)),
        cxi: (!peers.is_empty()).then(|| format!("https://{}", addrs.cxi)),
        metrics: Some(format!("http://{}/metrics", addrs.metrics)),
        token: token.clone(),
        config: config_path,
        log: dir
            .join("logs")
            .join(format!("controller-{}.log", domain.name)),
    };
    Ok((controller, token))
}
