//! Bringing a testbed up and down: certificates, agent configurations, processes, faults.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::endpoints::{
    ControllerEndpoint, Credentials, DomainEndpoints, Endpoints, LinkEndpoint, ManagerEndpoint,
    NetconfLogin, NodeEndpoint, SaeEndpoint,
};
use super::host_keys;
use super::netns;
use super::process::{alive, spawn_node, stop_pid, wait_ready};
use super::topology::Topology;
use crate::control::config::{
    AgentConfig, ControllerConfig, CxiPeer, ExposePolicy, InterworkingConfig, NodeRole,
    SouthboundLogin,
};
use crate::km::config::{Etsi014Limits, KmConfig, LinkConfig, LinkEnd};
use crate::management::config::{ControllerLink, ManagedAgent, ManagerConfig, PeerManager};
use crate::netconf::client::NetconfClient;
use crate::netconf::server::{Group, NetconfConfig, User};
use crate::pki::{Authority, PkiError, Role};
use crate::quantum::LinkState;
use crate::tls::{self, TlsFiles};

/// Errors of testbed operations.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Endpoints(#[from] super::endpoints::EndpointsError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("node {node} did not become ready: {reason}")]
    NotReady { node: String, reason: String },
    #[error("unknown {kind} {name}")]
    Unknown { kind: &'static str, name: String },
    #[error("{0}")]
    Operation(String),
}

fn io(context: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> TestbedError {
    move |e| TestbedError::Io(format!("{context}: {e}"))
}

/// Processes of a running testbed (`processes.json`).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Processes {
    nodes: BTreeMap<String, u32>,
}

impl Processes {
    fn path(dir: &Path) -> PathBuf {
        dir.join("processes.json")
    }

    fn load(dir: &Path) -> Self {
        std::fs::read_to_string(Self::path(dir))
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default()
    }

    fn save(&self, dir: &Path) -> Result<(), TestbedError> {
        let text = serde_json::to_string_pretty(self).expect("serializable");
        std::fs::write(Self::path(dir), text).map_err(io("writing processes.json"))
    }
}

/// The process id of every node of the testbed in `dir`, by name.
pub fn process_ids(dir: &Path) -> BTreeMap<String, u32> {
    Processes::load(dir).nodes
}

fn random_password() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 12];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The testbed's NETCONF users: an operator (admin) and a viewer (read-only).
fn netconf_users(admin: &NetconfLogin, viewer: &NetconfLogin) -> Vec<User> {
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

/// Hands out free loopback ports below the kernel's ephemeral range, so that no outgoing
/// connection can take a port between its allocation and the agent's bind. Ports stay bound
/// here until the allocator is dropped (just before the agents start).
struct Ports {
    held: Vec<TcpListener>,
    next: u16,
    end: u16,
}

const FIRST_PORT: u16 = 10_000;

impl Ports {
    fn new() -> Self {
        let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| {
                s.split_whitespace()
                    .next()
                    .and_then(|p| p.parse::<u16>().ok())
            })
            .unwrap_or(32768);
        let end = ephemeral_low.max(FIRST_PORT + 200);
        let offset = (rand::random::<u32>() % u32::from(end - FIRST_PORT)) as u16;
        Self {
            held: Vec::new(),
            next: FIRST_PORT + offset,
            end,
        }
    }

    fn take(&mut self) -> Result<SocketAddr, TestbedError> {
        for _ in 0..(self.end - FIRST_PORT) {
            let port = self.next;
            self.next = if self.next + 1 >= self.end {
                FIRST_PORT
            } else {
                self.next + 1
            };
            if let Ok(listener) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
                self.held.push(listener);
                return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
            }
        }
        Err(TestbedError::Operation("no free loopback port".into()))
    }
}

/// Serialises testbed start-ups on this machine (port allocation until every agent listens).
fn startup_lock() -> Result<std::fs::File, TestbedError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("qkdni-testbed-startup.lock"))
        .map_err(io("opening the start-up lock"))?;
    file.lock().map_err(io("taking the start-up lock"))?;
    Ok(file)
}

/// A domain's PKI: its own CA, trusted by other domains only at their interworking points.
struct DomainPki {
    ca: Authority,
    ca_cert: PathBuf,
    operator: Credentials,
}

/// Addresses of one domain's controller and manager.
struct ControlAddresses {
    rest: SocketAddr,
    netconf: SocketAddr,
    cxi: SocketAddr,
    manager_rest: SocketAddr,
    mxi: SocketAddr,
    metrics: SocketAddr,
    manager_metrics: SocketAddr,
}

fn write_toml<T: Serialize>(path: &Path, value: &T, what: &str) -> Result<(), TestbedError> {
    let text = toml::to_string_pretty(value)
        .map_err(|e| TestbedError::Operation(format!("serializing {what}: {e}")))?;
    std::fs::write(path, text).map_err(io(format!("writing {what}")))
}

/// How to bring a testbed up.
#[derive(Debug, Clone, Default)]
pub struct UpOptions {
    /// Every KM node in its own network namespace, every QKD link a veth pair (root only;
    /// see [`netns`]).
    pub netns: bool,
}

/// Writes certificates (one CA per domain) and the configurations of every KM agent,
/// controller and manager for `topology` into `dir`, starts them with the `qkdni` binary
/// `exe`, waits until all are ready and writes `endpoints.json`.
pub async fn up(topology: &Topology, dir: &Path, exe: &Path) -> Result<Endpoints, TestbedError> {
    up_with(topology, dir, exe, &UpOptions::default()).await
}

/// [`up`] with options (`--netns`).
pub async fn up_with(
    topology: &Topology,
    dir: &Path,
    exe: &Path,
    options: &UpOptions,
) -> Result<Endpoints, TestbedError> {
    if options.netns {
        netns::check()?;
    }
    if Endpoints::path(dir).exists() && !Processes::load(dir).nodes.is_empty() {
        return Err(TestbedError::Operation(format!(
            "{} holds a running testbed: bring it down first",
            dir.display()
        )));
    }
    // the network of an earlier --netns testbed in dir whose processes are gone
    remove_network(dir)?;
    let dir = &std::path::absolute(dir).map_err(io("testbed directory"))?;
    let pki = dir.join("pki");
    for sub in ["pki", "nodes", "logs"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(io(format!("creating {sub}")))?;
    }
    let known_hosts = host_keys::path(dir);
    host_keys::reset(&known_hosts)?;
    let _startup = startup_lock()?;
    // planned under the start-up lock, created before it is released
    let net = if options.netns {
        Some(netns::plan(topology)?)
    } else {
        None
    };
    // where a node's services listen, and the certificate names it: loopback, or the node
    // address in its namespace; the controllers' and managers' on loopback or the root
    // namespace's address toward the nodes
    let node_ip = |node: &str| net.as_ref().map(|n| n.nodes[node].address);
    let control_ip = net.as_ref().map(|n| n.root_address);
    let at = |addr: SocketAddr, ip: Option<Ipv4Addr>| match ip {
        Some(ip) => SocketAddr::from((ip, addr.port())),
        None => addr,
    };
    let control_ips: Vec<IpAddr> = control_ip.into_iter().map(IpAddr::V4).collect();
    let mut ports = Ports::new();
    let mut pkis: BTreeMap<String, DomainPki> = BTreeMap::new();
    let mut bundle = String::new();
    for domain in &topology.domains {
        let ca = Authority::new(&format!("{} {}", topology.name, domain.name))?;
        let ca_cert = pki.join(format!("ca-{}.crt", domain.name));
        std::fs::write(&ca_cert, ca.cert_pem()).map_err(io("writing CA"))?;
        bundle.push_str(ca.cert_pem());
        let operator = ca.issue_to(
            &pki,
            &format!("operator-{}", domain.name),
            "operator",
            Role::Client,
        )?;
        pkis.insert(
            domain.name.clone(),
            DomainPki {
                ca,
                ca_cert,
                operator: Credentials {
                    name: "operator".into(),
                    cert: operator.cert,
                    key: operator.key,
                },
            },
        );
    }
    let ca_cert = pki.join("ca.crt");
    std::fs::write(&ca_cert, &bundle).map_err(io("writing the CA bundle"))?;
    let netconf_user = NetconfLogin {
        username: "operator".into(),
        password: random_password(),
    };
    let netconf_readonly_user = NetconfLogin {
        username: "viewer".into(),
        password: random_password(),
    };
    let first = topology
        .domains
        .first()
        .ok_or_else(|| TestbedError::Operation("the topology has no domain".into()))?;
    let mut endpoints = Endpoints {
        name: topology.name.clone(),
        ca_cert: ca_cert.clone(),
        operator: pkis[&first.name].operator.clone(),
        netconf_user: netconf_user.clone(),
        netconf_readonly_user: netconf_readonly_user.clone(),
        known_hosts: Some(known_hosts.clone()),
        domains: BTreeMap::new(),
        saes: BTreeMap::new(),
        links: BTreeMap::new(),
        netns: net.clone(),
    };
    // every address first: Qx links and Cxi/Mxi peers point across domains
    let mut addresses = BTreeMap::new();
    let mut control = BTreeMap::new();
    for domain in &topology.domains {
        for node in &domain.nodes {
            let ip = node_ip(&node.name);
            addresses.insert(
                node.name.clone(),
                (
                    at(ports.take()?, ip),
                    at(ports.take()?, ip),
                    at(ports.take()?, ip),
                    at(ports.take()?, ip),
                ),
            );
        }
        if domain.controller {
            control.insert(
                domain.name.clone(),
                ControlAddresses {
                    rest: at(ports.take()?, control_ip),
                    netconf: at(ports.take()?, control_ip),
                    cxi: at(ports.take()?, control_ip),
                    manager_rest: at(ports.take()?, control_ip),
                    mxi: at(ports.take()?, control_ip),
                    metrics: at(ports.take()?, control_ip),
                    manager_metrics: at(ports.take()?, control_ip),
                },
            );
        }
    }
    let domain_of = |node: &str| {
        topology
            .domain_of(node)
            .map(|d| d.name.clone())
            .unwrap_or_default()
    };
    // the domains each domain interworks with (over Qx links)
    let mut neighbours: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for link in &topology.qx_links {
        let (a, b) = (domain_of(&link.nodes[0]), domain_of(&link.nodes[1]));
        neighbours.entry(a.clone()).or_default().insert(b.clone());
        neighbours.entry(b).or_default().insert(a);
    }
    let peer_cas = |domains: &mut dyn Iterator<Item = &String>| -> Vec<tls::PeerCa> {
        domains
            .map(|d| tls::PeerCa {
                domain: d.clone(),
                cert: pkis[d].ca_cert.clone(),
            })
            .collect()
    };
    let mut configs = Vec::new();
    for (index, domain) in topology.domains.iter().enumerate() {
        let dpki = &pkis[&domain.name];
        // each domain its own NETCONF secrets (the first domain's are also the top-level ones)
        let (netconf_user, netconf_readonly_user) = if index == 0 {
            (netconf_user.clone(), netconf_readonly_user.clone())
        } else {
            (
                NetconfLogin {
                    username: netconf_user.username.clone(),
                    password: random_password(),
                },
                NetconfLogin {
                    username: netconf_readonly_user.username.clone(),
                    password: random_password(),
                },
            )
        };
        // with a controller, relay routes are the controller's to install
        let routes = if domain.controller {
            BTreeMap::new()
        } else {
            domain.shortest_routes()
        };
        let saes: BTreeMap<String, String> = domain
            .nodes
            .iter()
            .flat_map(|n| n.saes.iter().map(move |s| (s.clone(), n.name.clone())))
            .collect();
        let mut nodes = BTreeMap::new();
        for node in &domain.nodes {
            let node_dir = dir.join("nodes").join(&node.name);
            std::fs::create_dir_all(&node_dir).map_err(io("creating node directory"))?;
            let node_ips: Vec<IpAddr> = node_ip(&node.name).into_iter().map(IpAddr::V4).collect();
            let paths = dpki.ca.issue_to_with_ips(
                &pki,
                &format!("km-{}", node.name),
                &node.name,
                Role::Node,
                &node_ips,
            )?;
            let (etsi, kma, netconf, metrics) = addresses[&node.name];
            let host_key = node_dir.join("ssh_host_ed25519_key");
            host_keys::provision(&known_hosts, &host_key, netconf)?;
            let mut qx_peers = std::collections::BTreeSet::new();
            let links = domain
                .links
                .iter()
                .chain(&topology.qx_links)
                .filter_map(|link| {
                    let end = if link.nodes[0] == node.name {
                        LinkEnd::Tx
                    } else if link.nodes[1] == node.name {
                        LinkEnd::Rx
                    } else {
                        return None;
                    };
                    let peer = &link.nodes[match end {
                        LinkEnd::Tx => 1,
                        LinkEnd::Rx => 0,
                    }];
                    let peer_domain = Some(domain_of(peer)).filter(|d| *d != domain.name);
                    if let Some(d) = &peer_domain {
                        qx_peers.insert(d.clone());
                    }
                    Some(LinkConfig {
                        id: link.id.clone(),
                        peer: peer.clone(),
                        peer_kma: format!("https://{}", addresses[peer].1),
                        end,
                        rate_bps: link.rate_bps,
                        model: link.model,
                        capacity_blocks: link.capacity_blocks.unwrap_or(16_384),
                        peer_domain,
                    })
                })
                .collect();
            let config = KmConfig {
                node: node.name.clone(),
                domain: domain.name.clone(),
                data_dir: node_dir.join("data"),
                etsi014_listen: etsi,
                kma_listen: kma,
                tls: TlsFiles {
                    cert: paths.cert,
                    key: paths.key,
                    ca: vec![dpki.ca_cert.clone()],
                    peer_cas: peer_cas(&mut qx_peers.iter()),
                },
                operators: vec!["operator".into()],
                etsi014: Etsi014Limits::default(),
                links,
                saes: saes.clone(),
                routes: routes.get(&node.name).cloned().unwrap_or_default(),
                netconf: Some(NetconfConfig {
                    listen: netconf,
                    host_key,
                    users: netconf_users(&netconf_user, &netconf_readonly_user),
                    max_message_bytes: 4 * 1024 * 1024,
                    running_file: Some(node_dir.join("data").join("running.xml")),
                    limits: topology.netconf_limits.clone().unwrap_or_default(),
                }),
                controller: control
                    .get(&domain.name)
                    .map(|c| format!("https://{}", c.rest)),
                limits: topology.km_limits.clone().unwrap_or_default(),
                metrics_listen: Some(metrics),
            };
            let config_path = node_dir.join("km.toml");
            write_toml(&config_path, &config, "agent config")?;
            for sae in &node.saes {
                let sae_paths = dpki
                    .ca
                    .issue_to(&pki, &format!("sae-{sae}"), sae, Role::Client)?;
                endpoints.saes.insert(
                    sae.clone(),
                    SaeEndpoint {
                        node: node.name.clone(),
                        domain: domain.name.clone(),
                        cert: sae_paths.cert,
                        key: sae_paths.key,
                    },
                );
            }
            nodes.insert(
                node.name.clone(),
                NodeEndpoint {
                    etsi014: format!("https://{etsi}"),
                    kma: format!("https://{kma}"),
                    netconf: netconf.to_string(),
                    metrics: Some(format!("http://{metrics}/metrics")),
                    config: config_path.clone(),
                    log: dir.join("logs").join(format!("{}.log", node.name)),
                },
            );
            configs.push(node.name.clone());
        }
        for link in &domain.links {
            endpoints.links.insert(
                link.id.clone(),
                LinkEndpoint {
                    nodes: link.nodes.clone(),
                    domain: domain.name.clone(),
                    peer_domain: None,
                },
            );
        }
        let (controller, manager) = match control.get(&domain.name) {
            Some(addrs) => {
                let peers: Vec<&String> = neighbours
                    .get(&domain.name)
                    .map(|n| n.iter().filter(|d| control.contains_key(*d)).collect())
                    .unwrap_or_default();
                let (controller, manager) = write_control(
                    dir,
                    domain,
                    dpki,
                    addrs,
                    &addresses,
                    &peers,
                    &control,
                    peer_cas(&mut peers.iter().copied()),
                    (&netconf_user, &netconf_readonly_user),
                    &control_ips,
                    &known_hosts,
                )?;
                (Some(controller), manager)
            }
            None => (None, None),
        };
        endpoints.domains.insert(
            domain.name.clone(),
            DomainEndpoints {
                ca_cert: dpki.ca_cert.clone(),
                operator: dpki.operator.clone(),
                netconf_user: Some(netconf_user.clone()),
                netconf_readonly_user: Some(netconf_readonly_user.clone()),
                nodes,
                controller,
                manager,
            },
        );
    }
    for link in &topology.qx_links {
        endpoints.links.insert(
            link.id.clone(),
            LinkEndpoint {
                nodes: link.nodes.clone(),
                domain: domain_of(&link.nodes[0]),
                peer_domain: Some(domain_of(&link.nodes[1])),
            },
        );
    }
    // endpoints.json is written before start so that start_node can find the nodes; a
    // testbed is only "up" once every node answers.
    write_endpoints(dir, &endpoints)?;
    write_prometheus(dir, &endpoints)?;
    if let Some(net) = &net {
        // recorded first: a failed creation is cleaned up by `down`
        let text = serde_json::to_string_pretty(net).expect("serializable");
        std::fs::write(network_path(dir), text).map_err(io("writing netns.json"))?;
        netns::create(net)?;
    }
    drop(ports);
    let mut processes = Processes::default();
    for node in &configs {
        let pid = spawn_node(&endpoints, node, exe)?;
        processes.nodes.insert(node.clone(), pid);
        processes.save(dir)?;
    }
    for node in &configs {
        wait_ready(&endpoints, node, processes.nodes[node]).await?;
    }
    // controllers start once their agents answer, managers once their controllers do
    for kind in ["controller", "manager"] {
        let names: Vec<String> = endpoints
            .domains
            .values()
            .filter_map(|d| match kind {
                "controller" => d.controller.as_ref().map(|c| c.name.clone()),
                _ => d.manager.as_ref().map(|m| m.name.clone()),
            })
            .collect();
        for name in &names {
            let pid = spawn_node(&endpoints, name, exe)?;
            processes.nodes.insert(name.clone(), pid);
            processes.save(dir)?;
        }
        for name in &names {
            wait_ready(&endpoints, name, processes.nodes[name]).await?;
        }
    }
    Ok(endpoints)
}

/// Writes the configurations of a domain's controller and manager.
#[allow(clippy::too_many_arguments)]
fn write_control(
    dir: &Path,
    domain: &super::topology::Domain,
    dpki: &DomainPki,
    addrs: &ControlAddresses,
    addresses: &BTreeMap<String, (SocketAddr, SocketAddr, SocketAddr, SocketAddr)>,
    peers: &[&String],
    control: &BTreeMap<String, ControlAddresses>,
    peer_cas: Vec<tls::PeerCa>,
    (netconf_user, netconf_readonly_user): (&NetconfLogin, &NetconfLogin),
    ips: &[IpAddr],
    known_hosts: &Path,
) -> Result<(ControllerEndpoint, Option<ManagerEndpoint>), TestbedError> {
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
            users: netconf_users(netconf_user, netconf_readonly_user),
            max_message_bytes: 4 * 1024 * 1024,
            running_file: Some(cdir.join("data").join("running.xml")),
            limits: Default::default(),
        }),
        interworking: (!peers.is_empty()).then(|| InterworkingConfig {
            cxi_listen: addrs.cxi,
            peers: peers
                .iter()
                .map(|p| CxiPeer {
                    domain: (*p).clone(),
                    url: format!("https://{}", control[*p].cxi),
                    controller: format!("controller-{p}"),
                })
                .collect(),
            expose: ExposePolicy::default(),
            default_rate_bps: 1000.0,
        }),
        limits: Default::default(),
        metrics_listen: Some(addrs.metrics),
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
    // the manager of an interworking domain: KMLM, QLM, XLMO, QCLM; Mxi toward the first
    // peer domain
    let Some(peer) = peers.first().map(|p| (*p).clone()) else {
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
        controller: Some(ControllerLink {
            url: format!("https://{}", addrs.rest),
            token,
            ca: dpki.ca_cert.clone(),
        }),
        peer: PeerManager {
            manager_name: format!("manager-{peer}"),
            mxi: format!("https://{}", control[&peer].mxi),
            domain: peer,
        },
        limits: Default::default(),
        metrics_listen: Some(addrs.manager_metrics),
    };
    let mconfig_path = mdir.join("manager.toml");
    write_toml(&mconfig_path, &mconfig, "manager config")?;
    let manager = ManagerEndpoint {
        name: mname,
        rest: format!("https://{}", addrs.manager_rest),
        mxi: format!("https://{}", addrs.mxi),
        metrics: Some(format!("http://{}/metrics", addrs.manager_metrics)),
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
fn write_prometheus(dir: &Path, endpoints: &Endpoints) -> Result<(), TestbedError> {
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

fn write_endpoints(dir: &Path, endpoints: &Endpoints) -> Result<(), TestbedError> {
    let text = serde_json::to_string_pretty(endpoints).expect("serializable");
    std::fs::write(Endpoints::path(dir), text).map_err(io("writing endpoints.json"))
}

/// Stops every process of the testbed in `dir`; deletes a `--netns` testbed's namespaces
/// and veths (also when its processes are gone already).
pub fn down(dir: &Path) -> Result<(), TestbedError> {
    let mut processes = Processes::load(dir);
    for (_, pid) in std::mem::take(&mut processes.nodes) {
        stop_pid(pid, false);
    }
    processes.save(dir)?;
    remove_network(dir)
}

/// `netns.json`: the network of a `--netns` testbed while it exists (endpoints.json keeps
/// describing it after `down`; the slot may then serve another testbed).
fn network_path(dir: &Path) -> PathBuf {
    dir.join("netns.json")
}

fn live_network(dir: &Path) -> Option<netns::Netns> {
    let text = std::fs::read_to_string(network_path(dir)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Deletes the namespaces and veths of the `--netns` testbed in `dir`, if it has any.
fn remove_network(dir: &Path) -> Result<(), TestbedError> {
    if let Some(net) = live_network(dir) {
        netns::destroy(&net)?;
        std::fs::remove_file(network_path(dir)).map_err(io("removing netns.json"))?;
    }
    Ok(())
}

/// Stops node `node` (`kill`: with SIGKILL, as a crash).
pub fn stop_node(dir: &Path, node: &str, kill: bool) -> Result<(), TestbedError> {
    let mut processes = Processes::load(dir);
    let pid = processes
        .nodes
        .remove(node)
        .ok_or_else(|| TestbedError::Unknown {
            kind: "running node",
            name: node.into(),
        })?;
    stop_pid(pid, kill);
    processes.save(dir)
}

/// Whether process `name` of the testbed in `dir` is recorded as started and still runs
/// (a killed process whose threads are still exiting counts as running).
pub fn is_running(dir: &Path, name: &str) -> bool {
    Processes::load(dir)
        .nodes
        .get(name)
        .is_some_and(|pid| alive(*pid))
}

/// Starts node `node` again with its existing configuration and store.
pub async fn start_node(dir: &Path, node: &str, exe: &Path) -> Result<(), TestbedError> {
    let endpoints = Endpoints::load(dir)?;
    let mut processes = Processes::load(dir);
    if let Some(pid) = processes.nodes.get(node) {
        if alive(*pid) {
            return Err(TestbedError::Operation(format!("node {node} is running")));
        }
    }
    let _startup = startup_lock()?;
    let pid = spawn_node(&endpoints, node, exe)?;
    processes.nodes.insert(node.into(), pid);
    processes.save(dir)?;
    wait_ready(&endpoints, node, pid).await
}

/// A NETCONF session to `node` as the testbed operator.
pub async fn netconf(
    endpoints: &Endpoints,
    node: &str,
) -> Result<std::sync::Arc<NetconfClient>, TestbedError> {
    let entry = endpoints.node(node).ok_or_else(|| TestbedError::Unknown {
        kind: "node",
        name: node.into(),
    })?;
    let addr: SocketAddr = entry
        .netconf
        .parse()
        .map_err(|e| TestbedError::Operation(format!("node {node}: netconf address: {e}")))?;
    NetconfClient::connect(
        addr,
        endpoints.netconf_options(endpoints.netconf_login_of(node)),
    )
    .await
    .map_err(|e| TestbedError::Operation(format!("node {node}: NETCONF: {e}")))
}

/// Sets the operational state of QKD link `link` at both its ends, over NETCONF
/// (`qkdni-km:admin-state` in the running datastore); in a `--netns` testbed, first at the
/// network level too (the link's veth down, or up again: [`netns::set_link`]).
pub async fn set_link_state(dir: &Path, link: &str, state: LinkState) -> Result<(), TestbedError> {
    let endpoints = Endpoints::load(dir)?;
    let entry = endpoints
        .links
        .get(link)
        .ok_or_else(|| TestbedError::Unknown {
            kind: "link",
            name: link.into(),
        })?;
    if endpoints.netns.is_some() {
        let net = live_network(dir).ok_or_else(|| {
            TestbedError::Operation("the testbed's network namespaces are gone".into())
        })?;
        netns::set_link(&net, link, state)?;
    }
    let value = match state {
        LinkState::Up => "up",
        LinkState::Down => "down",
        LinkState::Degraded => "degraded",
    };
    // the link's ETSI GS QKD 015 qkdl_id, the same at both ends (crate::etsi015)
    let id = crate::etsi015::link_id(&entry.domain, entry.peer_domain.as_deref(), link);
    let config = format!(
        "<qkd_node xmlns=\"urn:etsi:qkd:yang:etsi-qkd-node\"><qkd_links><qkd_link><qkdl_id>{id}</qkdl_id><admin-state xmlns=\"urn:qkdni:yang:qkdni-km\">{value}</admin-state></qkd_link></qkd_links></qkd_node>"
    );
    for node in &entry.nodes {
        let session = netconf(&endpoints, node).await?;
        // a controller installing routes holds the running lock for a moment: wait for it
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match session.edit_config("running", &config).await {
                Ok(_) => break,
                Err(e) if e.to_string().contains("lock") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(TestbedError::Operation(format!("node {node}: {e}"))),
            }
        }
        let _ = session.close().await;
    }
    Ok(())
}

/// The admin view of every link of `node`.
pub async fn link_reports(
    endpoints: &Endpoints,
    node: &str,
) -> Result<Vec<crate::km::kma::LinkReport>, TestbedError> {
    let entry = endpoints.node(node).ok_or_else(|| TestbedError::Unknown {
        kind: "node",
        name: node.into(),
    })?;
    let client = tls::https_client(&endpoints.operator_tls_at(node), Duration::from_secs(5))?;
    let response = client
        .get(format!("{}/admin/v1/links", entry.kma))
        .send()
        .await
        .map_err(|e| TestbedError::Operation(format!("node {node}: {e}")))?;
    response
        .json()
        .await
        .map_err(|e| TestbedError::Operation(format!("node {node}: {e}")))
}

/// Waits until every hop of `path` (a list of adjacent nodes) holds at least `blocks` blocks
/// that the sending end may use.
pub async fn wait_path_keys(
    endpoints: &Endpoints,
    path: &[String],
    blocks: usize,
    timeout: Duration,
) -> Result<(), TestbedError> {
    let deadline = Instant::now() + timeout;
    'retry: loop {
        for hop in path.windows(2) {
            let reports = link_reports(endpoints, &hop[0]).await?;
            let ready = reports
                .iter()
                .any(|l| l.peer == hop[1] && l.own_blocks >= blocks);
            if !ready {
                if Instant::now() > deadline {
                    return Err(TestbedError::Operation(format!(
                        "hop {} -> {} has fewer than {blocks} blocks after {timeout:?}",
                        hop[0], hop[1]
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue 'retry;
            }
        }
        return Ok(());
    }
}
