//! `qkdni testbed up --netns` (root only): every KM node in its own network namespace, every
//! QKD link a veth pair between the two nodes' namespaces, so links can be cut at the network
//! level. Everything is done with the `ip` command (iproute2).
//!
//! Address plan: each testbed takes one free /24 of the benchmarking range 198.18.0.0/15
//! (RFC 2544), its *slot* `s`; the testbed id is `s` in three digits (`007`).
//!
//! - node `i` (in topology order) has the node address `198.18.x.(2+i)` (on its `lo`); the
//!   KM's ETSI 014, KMA and NETCONF servers listen there, and its certificate names it;
//! - a QKD link is a veth pair, named after the link (or `qkl<k>`) in both namespaces and
//!   addressed point to point with the two node addresses (`ip addr add <own> peer <other>`):
//!   the only route from a node to a peer's address is the veth of their link, so key relay and
//!   the emulated quantum channel cross it, and `ip link set <if> down` cuts both;
//! - management: each namespace has `mgmt0`, a veth to the root namespace (`qk<id>-<node>` there)
//!   addressed `<node> peer <root>`, where the root address is `198.18.x.1`. Controllers and
//!   managers listen on the root address; the CLI, tests, controllers and managers reach every
//!   node's services over its `mgmt0`. A node reaches the root address over it, never another
//!   node (no node namespace has a route to a node address but over a link veth);
//! - an interworking node's two KMs share one namespace (`qkdni-<id>-<iwn>`) and address; an
//!   IWN that hosts the controllers and managers is the management *hub*: they run in its
//!   namespace, which holds the root address and the far ends of every other node's `mgmt0`,
//!   and forwards between them and its own veth to the root namespace (root side
//!   `198.18.x.255`), so the CLI and tests still reach every node; nodes get a route to the
//!   root side only.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use super::error::TestbedError;
pub use super::ip_commands::MGMT_INTERFACE;
use super::ip_commands::{failed, ip, ip_in, management_veth};
use super::topology::Topology;
use crate::quantum::LinkState;

/// The network of a `--netns` testbed (recorded in `endpoints.json` as `netns`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Netns {
    /// Testbed id (the slot, three digits): names are `qkdni-<id>-<node>` (namespaces) and
    /// `qk<id>-<node>` (root ends of the management veths).
    pub id: String,
    /// The root namespace's address toward every node (controllers and managers listen here).
    pub root_address: Ipv4Addr,
    pub nodes: BTreeMap<String, NodeNet>,
    pub links: BTreeMap<String, LinkNet>,
    /// An interworking node that hosts the controllers and managers: they run in its
    /// namespace, which holds the root address and the management veths of every other node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<Hub>,
}

/// The namespace of an IWN hosting the control layer (Cxi', Mxi'): the management hub.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hub {
    pub namespace: String,
    /// The root namespace's own address, on its veth to the hub (the root reaches every node
    /// through the hub, which forwards).
    pub root_side_address: Ipv4Addr,
}

/// One node's namespace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeNet {
    /// Network namespace name (`ip netns exec <namespace> ...`).
    pub namespace: String,
    /// The node address: every KM service listens here.
    pub address: Ipv4Addr,
    /// The root namespace's end of the node's management veth (`mgmt0` in the namespace).
    pub root_interface: String,
}

/// One QKD link's veth pair.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkNet {
    /// The interface name, the same in both nodes' namespaces.
    pub interface: String,
    /// The two nodes; `testbed link down` cuts the first one's end.
    pub nodes: [String; 2],
}

/// Testbed slots: /24 blocks of 198.18.0.0/15.
const SLOTS: u32 = 512;
const BASE: u32 = u32::from_be_bytes([198, 18, 0, 0]);
/// Longest interface name (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// Whether this process may build network namespaces: CAP_NET_ADMIN (and CAP_SYS_ADMIN, which
/// `ip netns add` needs for its mounts) and the `ip` command.
pub fn check() -> Result<(), TestbedError> {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    let caps = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0);
    if caps & (1 << CAP_NET_ADMIN) == 0 || caps & (1 << CAP_SYS_ADMIN) == 0 {
        return Err(failed(
            "--netns needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN)".into(),
        ));
    }
    match Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(status) if status.success() => {}
        _ => {
            return Err(failed(
                "--netns needs the ip command (iproute2: apt-get install iproute2)".into(),
            ))
        }
    }
    // capabilities are not everything (a container may forbid the mounts `ip netns` makes):
    // try one namespace
    let probe = format!("qkdni-probe-{}", std::process::id());
    let made = Command::new("ip")
        .args(["netns", "add", &probe])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let _ = Command::new("ip")
        .args(["netns", "delete", &probe])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if made {
        Ok(())
    } else {
        Err(failed(
            "--netns: this machine does not let us create network namespaces".into(),
        ))
    }
}

/// A name usable for a network namespace or an interface (no `/`, `:` or white space).
fn plain(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// What this machine already uses: namespace names, root interface names, and the IPv4
/// addresses in the root namespace's addresses and routes.
struct InUse {
    namespaces: BTreeSet<String>,
    interfaces: BTreeSet<String>,
    addresses: BTreeSet<Ipv4Addr>,
}

impl InUse {
    fn read() -> Result<Self, TestbedError> {
        let namespaces = ip(&["netns", "list"])?
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect();
        // `ip -o link`: "4: name@peer: <...> ..."
        let interfaces = ip(&["-o", "link", "show"])?
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|name| name.split('@').next().unwrap_or(name).to_owned())
            .collect();
        let mut addresses = BTreeSet::new();
        for text in [
            ip(&["-o", "-4", "addr", "show"])?,
            ip(&["-4", "route", "show", "table", "all"])?,
        ] {
            addresses.extend(
                text.split(|c: char| c.is_whitespace() || c == '/')
                    .filter_map(|t| t.parse::<Ipv4Addr>().ok()),
            );
        }
        Ok(Self {
            namespaces,
            interfaces,
            addresses,
        })
    }

    fn slot_free(&self, slot: u32) -> bool {
        let id = slot_id(slot);
        let block = (BASE + slot * 256) >> 8;
        !self
            .namespaces
            .iter()
            .any(|n| n.starts_with(&format!("qkdni-{id}-")))
            && !self
                .interfaces
                .iter()
                .any(|i| i.starts_with(&format!("qk{id}-")))
            && !self.addresses.iter().any(|a| u32::from(*a) >> 8 == block)
    }
}

fn slot_id(slot: u32) -> String {
    format!("{slot:03}")
}

/// Plans the network of `topology` in a free slot of this machine. Nothing is created yet;
/// call it under the testbed start-up lock and [`create`] before releasing it.
pub fn plan(topology: &Topology) -> Result<Netns, TestbedError> {
    let nodes: Vec<&str> = topology
        .domains
        .iter()
        .flat_map(|d| d.nodes.iter().map(|n| n.name.as_str()))
        .collect();
    if nodes.len() > 253 {
        return Err(failed(format!(
            "--netns takes at most 253 nodes, the topology has {}",
            nodes.len()
        )));
    }
    if let Some(bad) = nodes.iter().find(|n| !plain(n)) {
        return Err(failed(format!(
            "node {bad:?} cannot name a network namespace (letters, digits, '-', '_', '.')"
        )));
    }
    let in_use = InUse::read()?;
    let slot = (0..SLOTS)
        .find(|s| in_use.slot_free(*s))
        .ok_or_else(|| failed("no free 198.18.0.0/15 block for a --netns testbed".into()))?;
    let id = slot_id(slot);
    let block = BASE + slot * 256;
    let mut nodes: BTreeMap<String, NodeNet> = nodes
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let named = format!("qk{id}-{name}");
            let root_interface = if named.len() <= IFNAME_MAX {
                named
            } else {
                format!("qk{id}-n{i}")
            };
            (
                (*name).to_owned(),
                NodeNet {
                    namespace: format!("qkdni-{id}-{name}"),
                    address: Ipv4Addr::from(block + 2 + i as u32),
                    root_interface,
                },
            )
        })
        .collect();
    // an interworking node's two KMs run in one namespace, on one address (their ports differ)
    for iwn in &topology.iwns {
        let mut shared = nodes[&iwn.nodes[0]].clone();
        shared.namespace = format!("qkdni-{id}-{}", iwn.name);
        for node in &iwn.nodes {
            nodes.insert(node.clone(), shared.clone());
        }
    }
    let links = topology
        .domains
        .iter()
        .flat_map(|d| &d.links)
        .chain(&topology.qx_links)
        .enumerate()
        .map(|(k, link)| {
            let usable = plain(&link.id)
                && link.id.len() <= IFNAME_MAX
                && !link.id.starts_with("qkl")
                && link.id != MGMT_INTERFACE
                && link.id != "lo";
            (
                link.id.clone(),
                LinkNet {
                    interface: if usable {
                        link.id.clone()
                    } else {
                        format!("qkl{k}")
                    },
                    nodes: link.nodes.clone(),
                },
            )
        })
        .collect();
    let hub = topology.iwns.iter().find(|i| i.control).map(|iwn| Hub {
        namespace: nodes[&iwn.nodes[0]].namespace.clone(),
        root_side_address: Ipv4Addr::from(block + 255),
    });
    Ok(Netns {
        id,
        root_address: Ipv4Addr::from(block + 1),
        nodes,
        links,
        hub,
    })
}

/// Creates the namespaces, the management veths and a veth pair per link of `net`.
pub fn create(net: &Netns) -> Result<(), TestbedError> {
    let root = net.root_address.to_string();
    let hub = net.hub.as_ref();
    // the hub first: the other nodes' management veths end in it
    let mut namespaces: Vec<&NodeNet> = distinct(net).collect();
    namespaces.sort_by_key(|n| hub.is_none_or(|h| h.namespace != n.namespace));
    for node in namespaces {
        let ns = node.namespace.as_str();
        let own = node.address.to_string();
        ip(&["netns", "add", ns])?;
        ip_in(ns, &["link", "set", "lo", "up"])?;
        ip_in(ns, &["addr", "add", &format!("{own}/32"), "dev", "lo"])?;
        if let Some(hub) = hub {
            if hub.namespace == ns {
                super::ip_commands::create_hub(
                    &hub.namespace,
                    &node.root_interface,
                    net.root_address,
                    hub.root_side_address,
                )?;
                continue;
            }
        }
        // the management veth: its far end in the root namespace, or in the hub
        let far = |args: &[&str]| match hub {
            Some(hub) => ip_in(&hub.namespace, args),
            None => ip(args),
        };
        far(&management_veth(&node.root_interface, ns))?;
        far(&[
            "addr",
            "add",
            &format!("{root}/32"),
            "peer",
            &format!("{own}/32"),
            "dev",
            &node.root_interface,
        ])?;
        far(&["link", "set", &node.root_interface, "up"])?;
        ip_in(
            ns,
            &[
                "addr",
                "add",
                &format!("{own}/32"),
                "peer",
                &format!("{root}/32"),
                "dev",
                MGMT_INTERFACE,
            ],
        )?;
        ip_in(ns, &["link", "set", MGMT_INTERFACE, "up"])?;
        if let Some(hub) = hub {
            // the root namespace (CLI, tests) through the hub
            let root_side = format!("{}/32", hub.root_side_address);
            ip_in(
                ns,
                &[
                    "route",
                    "add",
                    &root_side,
                    "via",
                    &root,
                    "dev",
                    MGMT_INTERFACE,
                ],
            )?;
        }
    }
    for (id, link) in &net.links {
        let ends = link
            .nodes
            .iter()
            .map(|n| {
                net.nodes
                    .get(n)
                    .ok_or_else(|| failed(format!("link {id}: unknown node {n}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (a, b) = (ends[0], ends[1]);
        let name = link.interface.as_str();
        ip_in(
            &a.namespace,
            &[
                "link",
                "add",
                name,
                "type",
                "veth",
                "peer",
                "name",
                name,
                "netns",
                &b.namespace,
            ],
        )?;
        for (this, other) in [(a, b), (b, a)] {
            ip_in(
                &this.namespace,
                &[
                    "addr",
                    "add",
                    &format!("{}/32", this.address),
                    "peer",
                    &format!("{}/32", other.address),
                    "dev",
                    name,
                ],
            )?;
            ip_in(&this.namespace, &["link", "set", name, "up"])?;
        }
    }
    Ok(())
}

/// The namespaces of `net`, each once (an IWN's two KMs share one).
fn distinct(net: &Netns) -> impl Iterator<Item = &NodeNet> {
    let mut seen = std::collections::BTreeSet::new();
    net.nodes
        .values()
        .filter(move |n| seen.insert(n.namespace.clone()))
}

/// Deletes what [`create`] made (whatever of it exists): the root ends of the management
/// veths, then the namespaces (and with them the links' veths).
pub fn destroy(net: &Netns) -> Result<(), TestbedError> {
    let in_use = InUse::read()?;
    let mut errors = Vec::new();
    for node in distinct(net) {
        if in_use.interfaces.contains(&node.root_interface) {
            if let Err(e) = ip(&["link", "del", &node.root_interface]) {
                errors.push(e.to_string());
            }
        }
    }
    for node in distinct(net) {
        if in_use.namespaces.contains(&node.namespace) {
            if let Err(e) = ip(&["netns", "del", &node.namespace]) {
                errors.push(e.to_string());
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(failed(errors.join("; ")))
    }
}

/// Follows a link state at the network level: `Down` sets the link's veth down in the first
/// node's namespace (the quantum channel and key relay over it fail); `Up` and `Degraded`
/// (the signal is there, the QBER too high) set both ends up.
pub fn set_link(net: &Netns, link: &str, state: LinkState) -> Result<(), TestbedError> {
    let entry = net.links.get(link).ok_or_else(|| TestbedError::Unknown {
        kind: "link",
        name: link.into(),
    })?;
    let namespace = |node: &String| {
        net.nodes
            .get(node)
            .map(|n| n.namespace.as_str())
            .ok_or_else(|| TestbedError::Unknown {
                kind: "node",
                name: node.clone(),
            })
    };
    match state {
        LinkState::Down => {
            ip_in(
                namespace(&entry.nodes[0])?,
                &["link", "set", &entry.interface, "down"],
            )?;
        }
        LinkState::Up | LinkState::Degraded => {
            for node in &entry.nodes {
                ip_in(namespace(node)?, &["link", "set", &entry.interface, "up"])?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_slots_avoid_what_is_in_use() {
        assert!(plain("a2-ga1") && plain("qx_1.b"));
        assert!(!plain("a/b") && !plain("..") && !plain("a b") && !plain(""));
        let in_use = InUse {
            namespaces: ["qkdni-000-a1".to_owned()].into(),
            interfaces: ["qk001-a1".to_owned()].into(),
            addresses: [Ipv4Addr::new(198, 18, 2, 7)].into(),
        };
        assert!(!in_use.slot_free(0));
        assert!(!in_use.slot_free(1));
        assert!(!in_use.slot_free(2));
        assert!(in_use.slot_free(3));
        assert!(in_use.slot_free(511));
        assert_eq!(
            Ipv4Addr::from(BASE + 511 * 256 + 254),
            Ipv4Addr::new(198, 19, 255, 254)
        );
    }
}
