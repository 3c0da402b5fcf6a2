//! Testbed topology files (TOML).
//!
//! ```toml
//! name = "single-domain"
//! [[domains]]
//! name = "A"
//! [[domains.nodes]]
//! name = "a1"
//! saes = ["sae-a1-1", "sae-a1-2"]
//! [[domains.links]]
//! id = "a1-a2"
//! nodes = ["a1", "a2"]       # the first node hosts the transmitter module
//! rate_bps = 64000           # or a [domains.links.model] table of physical parameters
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};

use petgraph::graph::{NodeIndex, UnGraph};
use serde::{Deserialize, Serialize};

use crate::quantum::link_model::LinkParams;

/// A testbed topology.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    pub name: String,
    pub domains: Vec<Domain>,
    /// Qx links between gateway nodes of two domains (Y.3818 6.1); the first node hosts the
    /// transmitter module.
    #[serde(default)]
    pub qx_links: Vec<Link>,
    /// Interworking nodes between two domains (Y.3818 6.2).
    #[serde(default)]
    pub iwns: Vec<Iwn>,
    /// Limits of every KM agent (`[km_limits]`; defaults when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub km_limits: Option<crate::km::limits::KmLimits>,
    /// Key material at rest of every KM agent (`[km_key_store]`; sealed when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub km_key_store: Option<crate::km::store::AtRestConfig>,
    /// The audit log of every daemon (`[audit]`: `enabled`, `segment_bytes`; on when absent).
    /// `enabled = false` exists only to measure the log's cost in benches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<crate::audit::AuditConfig>,
    /// Signed interworking messages at every daemon (`[nonrepudiation]`: `sign`; on when
    /// absent). `sign = false` exists only to measure the cost in benches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonrepudiation: Option<crate::nonrepudiation::Settings>,
    /// Accounting of every KM agent (`[km_accounting]`; defaults when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub km_accounting: Option<crate::km::accounting::AccountingConfig>,
    /// Limits of every KM agent's NETCONF server (`[netconf_limits]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netconf_limits: Option<crate::netconf::server::NetconfLimits>,
    /// Refusal alarm thresholds of every KM agent (`[refusals]`; defaults when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusals: Option<crate::refusals::RefusalConfig>,
}

/// One QKDN.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Domain {
    pub name: String,
    /// Centralized control: a controller computes and installs relay routes. Without it,
    /// the testbed configures fewest-hop static routes in every KM.
    #[serde(default)]
    pub controller: bool,
    /// Distributed control (Y.3818 clause 8): no controller; every node's KM runs a local
    /// controller (link-state routing with its neighbours). Excludes `controller`.
    #[serde(default)]
    pub distributed: bool,
    pub nodes: Vec<Node>,
    #[serde(default)]
    pub links: Vec<Link>,
}

/// One QKD node and the SAEs its KM serves.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub name: String,
    #[serde(default)]
    pub saes: Vec<String>,
    /// A gateway node (GWN) at the domain's border.
    #[serde(default)]
    pub gateway: bool,
    /// In a distributed domain: the border node (gateway node or IWN KM) that speaks Cxi for
    /// the domain (default: the first border node listed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub speaker: bool,
}

/// An interworking node (Y.3818 6.2): a trusted node outside both QKDNs hosting a KM of
/// each (KM-A and KM-B, separate processes, each a node of its domain with QKD links into
/// it), joined by a transfer link (Kxi-1', ETSI GS QKD 020) and no QKD link.
///
/// ```toml
/// [[iwns]]
/// name = "iwn1"
/// nodes = ["iwn1-a", "iwn1-b"]   # KM-A (a node of one domain) and KM-B (of the other)
/// control = true                 # hosts both domains' controllers and managers (Cxi', Mxi')
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Iwn {
    pub name: String,
    /// KM-A and KM-B: the first sends keys (its QKDN's master SAEs), the second receives.
    pub nodes: [String; 2],
    /// Whether the IWN hosts both domains' controllers and managers (they talk over Cxi'
    /// and Mxi'); otherwise they run elsewhere (Cxi, Mxi). At most one IWN hosts them.
    #[serde(default)]
    pub control: bool,
}

impl Iwn {
    /// The id of the IWN's transfer link.
    pub fn transfer_link(&self) -> String {
        format!("{}-kxi1p", self.name)
    }
}

/// One QKD link.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub id: String,
    /// The two nodes; the first hosts the transmitter module.
    pub nodes: [String; 2],
    #[serde(default)]
    pub rate_bps: Option<f64>,
    #[serde(default)]
    pub model: Option<LinkParams>,
    #[serde(default)]
    pub capacity_blocks: Option<usize>,
}

/// Errors in a topology.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("parsing topology: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("invalid topology: {0}")]
    Invalid(String),
}

impl Topology {
    /// Parses and validates a topology.
    pub fn parse(text: &str) -> Result<Self, TopologyError> {
        let topology: Topology = toml::from_str(text)?;
        topology.validate()?;
        Ok(topology)
    }

    fn validate(&self) -> Result<(), TopologyError> {
        let invalid = |m: String| Err(TopologyError::Invalid(m));
        let mut names = BTreeSet::new();
        let mut saes = BTreeSet::new();
        let mut links = BTreeSet::new();
        for domain in &self.domains {
            for node in &domain.nodes {
                if !names.insert(node.name.clone()) {
                    return invalid(format!("node {} defined twice", node.name));
                }
                for sae in &node.saes {
                    if !saes.insert(sae.clone()) {
                        return invalid(format!("SAE {sae} defined twice"));
                    }
                }
            }
        }
        // certificates identify SAEs and KMs by name: the two must never meet
        if let Some(name) = names.intersection(&saes).next() {
            return invalid(format!("{name} names both a node and an SAE"));
        }
        for domain in &self.domains {
            if domain.controller && domain.distributed {
                return invalid(format!(
                    "domain {} is either centralized (controller) or distributed",
                    domain.name
                ));
            }
            let border =
                |n: &Node| n.gateway || self.iwns.iter().any(|i| i.nodes.contains(&n.name));
            let speakers: Vec<&Node> = domain.nodes.iter().filter(|n| n.speaker).collect();
            if speakers.len() > 1 || speakers.iter().any(|n| !domain.distributed || !border(n)) {
                return invalid(format!(
                    "domain {}: one speaker at most, a border node of a distributed domain",
                    domain.name
                ));
            }
        }
        for domain in &self.domains {
            let own: BTreeSet<&str> = domain.nodes.iter().map(|n| n.name.as_str()).collect();
            for link in &domain.links {
                if !links.insert(link.id.clone()) {
                    return invalid(format!("link {} defined twice", link.id));
                }
                if link.nodes[0] == link.nodes[1] {
                    return invalid(format!("link {} loops", link.id));
                }
                for node in &link.nodes {
                    if !own.contains(node.as_str()) {
                        return invalid(format!(
                            "link {}: node {node} is not in domain {}",
                            link.id, domain.name
                        ));
                    }
                }
            }
        }
        let gateways: BTreeMap<&str, &str> = self
            .domains
            .iter()
            .flat_map(|d| {
                d.nodes
                    .iter()
                    .filter(|n| n.gateway)
                    .map(move |n| (n.name.as_str(), d.name.as_str()))
            })
            .collect();
        for link in &self.qx_links {
            if !links.insert(link.id.clone()) {
                return invalid(format!("link {} defined twice", link.id));
            }
            let (Some(a), Some(b)) = (
                gateways.get(link.nodes[0].as_str()),
                gateways.get(link.nodes[1].as_str()),
            ) else {
                return invalid(format!(
                    "Qx link {}: both ends must be gateway nodes",
                    link.id
                ));
            };
            if a == b {
                return invalid(format!("Qx link {} joins two nodes of domain {a}", link.id));
            }
        }
        let mut in_iwn = BTreeSet::new();
        let mut iwn_names = BTreeSet::new();
        for iwn in &self.iwns {
            if !iwn_names.insert(iwn.name.as_str()) || names.contains(&iwn.name) {
                return invalid(format!("IWN {} named twice", iwn.name));
            }
            if !links.insert(iwn.transfer_link()) {
                return invalid(format!("link {} defined twice", iwn.transfer_link()));
            }
            let mut domains = Vec::new();
            for node in &iwn.nodes {
                let Some(domain) = self.domain_of(node) else {
                    return invalid(format!("IWN {}: no node {node}", iwn.name));
                };
                if gateways.contains_key(node.as_str()) {
                    return invalid(format!("IWN {}: {node} is a gateway node", iwn.name));
                }
                if !in_iwn.insert(node.as_str()) {
                    return invalid(format!("node {node} is in two IWNs"));
                }
                domains.push(domain.name.as_str());
            }
            if domains[0] == domains[1] {
                return invalid(format!(
                    "IWN {}: KM-A and KM-B must be of two QKDNs, both are of {}",
                    iwn.name, domains[0]
                ));
            }
        }
        if self.iwns.iter().filter(|i| i.control).count() > 1 {
            return invalid("at most one IWN hosts the controllers".into());
        }
        Ok(())
    }

    /// The IWN whose KM `node` is, and the other KM of that IWN.
    pub fn iwn_of(&self, node: &str) -> Option<(&Iwn, &str)> {
        self.iwns.iter().find_map(|iwn| {
            let at = iwn.nodes.iter().position(|n| n == node)?;
            Some((iwn, iwn.nodes[1 - at].as_str()))
        })
    }

    /// The link whose fault moves an interworking route off `border` (the border link an
    /// interworking session crosses, `path` its route in the master's domain): the Qx link
    /// itself, or for an IWN's transfer link (which has no fault of its own) the QKD link by
    /// which `path` enters the IWN's KM.
    pub fn border_fault(&self, border: &str, path: &[String]) -> Option<String> {
        let Some(iwn) = self.iwns.iter().find(|i| i.transfer_link() == border) else {
            return Some(border.to_owned());
        };
        let first_link = |km: &String| {
            self.domains
                .iter()
                .flat_map(|d| &d.links)
                .find(|l| l.nodes.contains(km))
                .map(|l| l.id.clone())
        };
        let speaks = |node: &String| {
            self.domain_of(node)
                .and_then(|d| d.speaker(&self.iwns))
                .is_some_and(|s| &s.name == node)
        };
        let Some(at) = path.iter().position(|n| iwn.nodes.contains(n)) else {
            // no route known (a distributed side): KM-A's link, or KM-B's when KM-A speaks
            let (km_a, km_b) = (&iwn.nodes[0], &iwn.nodes[1]);
            return match speaks(km_a) && !speaks(km_b) {
                true => first_link(km_b),
                false => first_link(km_a),
            };
        };
        let link = |a: &String, b: &String| {
            self.domains
                .iter()
                .flat_map(|d| &d.links)
                .find(|l| l.nodes.contains(a) && l.nodes.contains(b))
                .map(|l| l.id.clone())
        };
        // the QKD link into KM-A, or out of KM-B when KM-A speaks Cxi for a distributed
        // domain (cutting it would cut the domain's Cxi off: no speaker failover yet)
        let into = link(path.get(at.checked_sub(1)?)?, &path[at]);
        let km_b = iwn.nodes.iter().find(|n| **n != path[at])?;
        if !speaks(&path[at]) || speaks(km_b) {
            return into;
        }
        // out of KM-B: toward the path's next node, or KM-B's first link
        let out = match path.get(at + 2) {
            Some(next) => link(km_b, next),
            None => first_link(km_b),
        };
        out.or(into)
    }

    /// The domain of node `node`.
    pub fn domain_of(&self, node: &str) -> Option<&Domain> {
        self.domains
            .iter()
            .find(|d| d.nodes.iter().any(|n| n.name == node))
    }
}

impl Domain {
    /// A distributed domain's speaker: the border node marked so, or the first border node
    /// (gateway node or IWN KM).
    pub fn speaker<'a>(&'a self, iwns: &[Iwn]) -> Option<&'a Node> {
        let border = |n: &&Node| n.gateway || iwns.iter().any(|i| i.nodes.contains(&n.name));
        if !self.distributed {
            return None;
        }
        self.nodes
            .iter()
            .find(|n| n.speaker)
            .or_else(|| self.nodes.iter().find(border))
    }

    /// Fewest-hop relay routes of every node: node -> (destination -> next hop). Ties go to
    /// the neighbour whose name sorts first, so routes are reproducible.
    pub fn shortest_routes(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut graph = UnGraph::<&str, ()>::new_undirected();
        let index: HashMap<&str, NodeIndex> = self
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), graph.add_node(n.name.as_str())))
            .collect();
        for link in &self.links {
            graph.add_edge(
                index[link.nodes[0].as_str()],
                index[link.nodes[1].as_str()],
                (),
            );
        }
        let mut routes: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for dest in &self.nodes {
            let distance =
                petgraph::algo::dijkstra(&graph, index[dest.name.as_str()], None, |_| 1u32);
            for node in &self.nodes {
                if node.name == dest.name {
                    continue;
                }
                let here = index[node.name.as_str()];
                let Some(&d) = distance.get(&here) else {
                    continue;
                };
                if d == 1 {
                    continue; // adjacent: the direct link needs no route entry
                }
                let next = graph
                    .neighbors(here)
                    .filter(|n| distance.get(n) == Some(&(d - 1)))
                    .map(|n| graph[n])
                    .min();
                if let Some(next) = next {
                    routes
                        .entry(node.name.clone())
                        .or_default()
                        .insert(dest.name.clone(), next.to_owned());
                }
            }
        }
        routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid_and_routed() {
        let topology = Topology::parse(crate::testbed::SINGLE_DOMAIN).unwrap();
        let domain = &topology.domains[0];
        assert!(domain.nodes.len() >= 4);
        let routes = domain.shortest_routes();
        // every node reaches every other node
        for node in &domain.nodes {
            let adjacent = domain
                .links
                .iter()
                .filter(|l| l.nodes.contains(&node.name))
                .count();
            let routed = routes.get(&node.name).map_or(0, |r| r.len());
            assert_eq!(adjacent + routed, domain.nodes.len() - 1, "{}", node.name);
        }
    }

    #[test]
    fn the_iwn_topology_has_two_iwns_between_two_domains_of_at_least_five_kms() {
        let topology = Topology::parse(crate::testbed::TWO_DOMAIN_IWN).unwrap();
        assert_eq!(topology.iwns.len(), 2);
        assert!(topology.qx_links.is_empty());
        for domain in &topology.domains {
            let own = domain
                .nodes
                .iter()
                .filter(|n| topology.iwn_of(&n.name).is_none())
                .count();
            assert!(own >= 5, "{}", domain.name);
        }
        for iwn in &topology.iwns {
            let domains: Vec<&str> = iwn
                .nodes
                .iter()
                .map(|n| topology.domain_of(n).unwrap().name.as_str())
                .collect();
            assert_eq!(domains, ["A", "B"]);
            assert_eq!(topology.iwn_of(&iwn.nodes[1]).unwrap().1, iwn.nodes[0]);
        }
        assert_eq!(topology.iwns.iter().filter(|i| i.control).count(), 1);
        let path = ["a1", "a2", "iwn1-a"].map(String::from);
        assert_eq!(
            topology.border_fault("iwn1-kxi1p", &path).as_deref(),
            Some("a2-iwn1-a")
        );
        assert_eq!(topology.border_fault("qx1", &path).as_deref(), Some("qx1"));
    }

    #[test]
    fn an_iwn_joins_two_domains_and_no_node_twice() {
        let base = "name='t'\n[[domains]]\nname='A'\n[[domains.nodes]]\nname='a'\n[[domains.nodes]]\nname='a2'\n[[domains]]\nname='B'\n[[domains.nodes]]\nname='b'\n";
        let ok = format!("{base}[[iwns]]\nname='i'\nnodes=['a','b']\n");
        assert!(Topology::parse(&ok).is_ok());
        let same = format!("{base}[[iwns]]\nname='i'\nnodes=['a','a2']\n");
        assert!(Topology::parse(&same).is_err());
        let twice = format!("{ok}[[iwns]]\nname='j'\nnodes=['a2','b']\n");
        assert!(Topology::parse(&twice).is_err());
        let unknown = format!("{base}[[iwns]]\nname='i'\nnodes=['a','z']\n");
        assert!(Topology::parse(&unknown).is_err());
    }

    #[test]
    fn duplicate_nodes_and_foreign_links_are_rejected() {
        let dup = "name='t'\n[[domains]]\nname='A'\n[[domains.nodes]]\nname='a'\n[[domains.nodes]]\nname='a'\n";
        assert!(Topology::parse(dup).is_err());
        let foreign = "name='t'\n[[domains]]\nname='A'\n[[domains.nodes]]\nname='a'\n[[domains.links]]\nid='l'\nnodes=['a','z']\n";
        assert!(Topology::parse(foreign).is_err());
    }
}
