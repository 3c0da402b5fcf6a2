//! Bringing a testbed up and down: certificates, agent configurations, processes; the
//! operations on a running testbed (`operate.rs`) are re-exported here.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use super::configs::{
    netconf_users, random_password, write_control, write_endpoints, write_prometheus, write_toml,
    ControlAddresses, DomainPki,
};
use super::endpoints::{
    Credentials, DomainEndpoints, Endpoints, IwnEndpoint, IwnKm, LinkEndpoint, NetconfLogin,
    NodeEndpoint, SaeEndpoint,
};
use super::error::io;
use super::host_keys;
use super::netns;
use super::ports::{startup_lock, Ports};
use super::process::{spawn_node, stop_pid, wait_ready};
use super::records::{network_path, remove_network, Processes};
use super::topology::Topology;
use crate::km::config::{
    Etsi014Limits, KmConfig, LinkConfig, LinkEnd, LinkKind, LocalControlConfig,
};
use crate::netconf::server::NetconfConfig;
use crate::pki::{Authority, Role};
use crate::tls::{self, TlsFiles};

pub use super::error::TestbedError;
pub use super::operate::{
    interworking_report, is_running, link_reports, netconf, set_link_state, start_node, stop_node,
    wait_path_keys,
};
pub use super::records::process_ids;

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
        iwns: BTreeMap::new(),
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
        // a distributed domain gets the addresses too: its manager uses some of them
        if domain.controller || domain.distributed {
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
                    manager_netconf: at(ports.take()?, control_ip),
                },
            );
        }
    }
    // a distributed domain's Cxi is spoken by its first gateway node (the speaker)
    // (node, Cxi address, the bearer token of the domain's manager)
    let mut speakers: BTreeMap<String, (String, std::net::SocketAddr, String)> = BTreeMap::new();
    for domain in topology.domains.iter().filter(|d| d.distributed) {
        if let Some(gw) = domain.speaker(&topology.iwns) {
            let ip = node_ip(&gw.name);
            speakers.insert(
                domain.name.clone(),
                (gw.name.clone(), at(ports.take()?, ip), random_password()),
            );
        }
    }
    // how each domain's Cxi is reached: (URL, the name its certificate carries)
    let mut cxi_of: BTreeMap<String, (String, String)> = control
        .iter()
        .filter(|(d, _)| !speakers.contains_key(*d))
        .map(|(d, a)| {
            (
                d.clone(),
                (format!("https://{}", a.cxi), format!("controller-{d}")),
            )
        })
        .collect();
    for (d, (node, addr, _)) in &speakers {
        cxi_of.insert(d.clone(), (format!("https://{addr}"), node.clone()));
    }
    let domain_of = |node: &str| {
        topology
            .domain_of(node)
            .map(|d| d.name.clone())
            .unwrap_or_default()
    };
    // the domains each domain interworks with (over Qx links or through IWNs)
    let mut neighbours: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    let borders = topology
        .qx_links
        .iter()
        .map(|l| &l.nodes)
        .chain(topology.iwns.iter().map(|i| &i.nodes));
    for nodes in borders {
        let (a, b) = (domain_of(&nodes[0]), domain_of(&nodes[1]));
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
        // with a controller, relay routes are the controller's to install; in a distributed
        // domain, every node's local controller computes its own
        let routes = if domain.controller || domain.distributed {
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
            let mut links: Vec<LinkConfig> = domain
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
                        kind: Default::default(),
                    })
                })
                .collect();
            // KM-A and KM-B of an IWN: the transfer link to the other (Kxi-1')
            if let Some((iwn, other)) = topology.iwn_of(&node.name) {
                let peer_domain = domain_of(other);
                qx_peers.insert(peer_domain.clone());
                links.push(LinkConfig {
                    id: iwn.transfer_link(),
                    peer: other.to_owned(),
                    peer_kma: format!("https://{}", addresses[other].1),
                    end: if iwn.nodes[0] == node.name {
                        LinkEnd::Tx
                    } else {
                        LinkEnd::Rx
                    },
                    rate_bps: None,
                    model: None,
                    capacity_blocks: 2,
                    peer_domain: Some(peer_domain),
                    kind: LinkKind::Transfer,
                });
            }
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
                // a distributed domain's nodes learn the others' SAEs from their link state
                saes: saes
                    .iter()
                    .filter(|(_, n)| !domain.distributed || **n == node.name)
                    .map(|(s, n)| (s.clone(), n.clone()))
                    .collect(),
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
                    .filter(|_| domain.controller)
                    .map(|c| format!("https://{}", c.rest)),
                limits: topology.km_limits.clone().unwrap_or_default(),
                key_store: topology.km_key_store.clone().unwrap_or_default(),
                accounting: topology.km_accounting.clone().unwrap_or_default(),
                metrics_listen: Some(metrics),
                refusals: topology.refusals.clone().unwrap_or_default(),
                nonrepudiation: topology.nonrepudiation.clone().unwrap_or_default(),
                audit: topology.audit.clone().unwrap_or_default(),
                local_control: domain.distributed.then(|| LocalControlConfig {
                    policy: "fewest-hops".into(),
                    kma_url: None,
                }),
                interworking: speakers
                    .get(&domain.name)
                    .filter(|(speaker, _, _)| speaker == &node.name)
                    .map(
                        |(_, listen, token)| crate::control::gateway::SpeakerConfig {
                            cxi_listen: *listen,
                            peers: neighbours
                                .get(&domain.name)
                                .into_iter()
                                .flatten()
                                .filter_map(|p| {
                                    let (url, name) = cxi_of.get(p)?;
                                    Some(crate::control::config::CxiPeer {
                                        domain: p.clone(),
                                        url: url.clone(),
                                        controller: name.clone(),
                                    })
                                })
                                .collect(),
                            expose: Default::default(),
                            default_rate_bps: 1000.0,
                            bearer_tokens: vec![token.clone()],
                            qos_exposed: Default::default(),
                        },
                    ),
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
                    .map(|n| n.iter().filter(|d| cxi_of.contains_key(*d)).collect())
                    .unwrap_or_default();
                let iwn_nodes: Vec<&str> = topology
                    .iwns
                    .iter()
                    .flat_map(|i| i.nodes.iter().map(String::as_str))
                    .collect();
                let (controller, manager) = write_control(
                    dir,
                    domain,
                    &iwn_nodes,
                    dpki,
                    addrs,
                    &addresses,
                    &peers,
                    &control,
                    &cxi_of,
                    speakers
                        .get(&domain.name)
                        .map(|(node, _, token)| (nodes[node].kma.as_str(), token.as_str())),
                    peer_cas(&mut peers.iter().copied()),
                    (&netconf_user, &netconf_readonly_user),
                    &control_ips,
                    &known_hosts,
                    (
                        &topology.audit.clone().unwrap_or_default(),
                        &topology.nonrepudiation.clone().unwrap_or_default(),
                    ),
                )?;
                (controller, manager)
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
    for iwn in &topology.iwns {
        let km = |node: &String| {
            let domain = domain_of(node);
            let n = &endpoints.domains[&domain].nodes[node];
            IwnKm {
                node: node.clone(),
                etsi014: n.etsi014.clone(),
                kma: n.kma.clone(),
                netconf: n.netconf.clone(),
                domain,
            }
        };
        let hosted = |pick: &dyn Fn(&DomainEndpoints) -> Option<String>| {
            endpoints
                .domains
                .iter()
                .filter(|_| iwn.control)
                .filter_map(|(d, e)| pick(e).map(|url| (d.clone(), url)))
                .collect()
        };
        let entry = IwnEndpoint {
            kms: [km(&iwn.nodes[0]), km(&iwn.nodes[1])],
            transfer_link: iwn.transfer_link(),
            hosts_control: iwn.control,
            controllers: hosted(&|e| e.controller.as_ref().map(|c| c.rest.clone())),
            managers: hosted(&|e| e.manager.as_ref().map(|m| m.rest.clone())),
        };
        endpoints.iwns.insert(iwn.name.clone(), entry);
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
