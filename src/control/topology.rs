//! The domain as the controller sees it: nodes, QKD links with their live state, SAE
//! locations and the relay routes installed on each KM, built from the agents' NETCONF data.

use std::collections::BTreeMap;

use qkdni_route_policy::{KeyNetwork, Link};
use serde::{Deserialize, Serialize};

/// What one agent reports (its NETCONF `qkd_node` data, config and state).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AgentView {
    pub node: String,
    pub links: Vec<LinkView>,
    /// SAE id -> node whose KM serves it.
    pub saes: BTreeMap<String, String>,
    /// Installed relay routes: destination -> next hops (primary first) with weights.
    pub routes: BTreeMap<String, Vec<WeightedHop>>,
    /// SAEs of other QKDNs installed for interworking: SAE id -> (node, domain).
    pub foreign_saes: BTreeMap<String, ForeignSae>,
    /// Get key requests served per (master SAE, slave SAE) pair since the KM started.
    pub pair_requests: BTreeMap<(String, String), u64>,
}

/// An SAE of another QKDN as a KM knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ForeignSae {
    /// The node (of the other QKDN) whose KM serves it.
    pub node: String,
    pub domain: String,
}

/// One next hop of a relay route and its share of the keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WeightedHop {
    pub node: String,
    pub weight: u64,
}

/// One link seen from one end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkView {
    pub id: String,
    pub peer: String,
    pub up: bool,
    pub rate_bps: f64,
    /// Blocks this end may allocate.
    pub own_blocks: u64,
    pub capacity_blocks: u64,
}

const NODE_NS: &str = "urn:etsi:qkd:yang:etsi-qkd-node";
const KM_NS: &str = "urn:qkdni:yang:qkdni-km";
/// qkdni's names of the ETSI GS QKD 015 UUIDs (`qkdn_id`, `qkdl_id`).
const IDS_NS: &str = "urn:qkdni:yang:qkdni-etsi-ids";

fn child<'a, 'i>(
    node: roxmltree::Node<'a, 'i>,
    ns: &str,
    name: &str,
) -> Option<roxmltree::Node<'a, 'i>> {
    node.children().find(|c| {
        c.is_element() && c.tag_name().name() == name && c.tag_name().namespace() == Some(ns)
    })
}

fn text(node: Option<roxmltree::Node<'_, '_>>) -> Option<String> {
    node.and_then(|n| n.text()).map(|t| t.trim().to_owned())
}

impl AgentView {
    /// Parses the `<data>` content of a `get` of `qkd_node`.
    pub fn parse(xml: &str) -> Result<Self, String> {
        let wrapped = format!("<data>{xml}</data>");
        let doc = crate::netconf::limits::parse(&wrapped).map_err(|e| e.to_string())?;
        let root = doc.root_element();
        let qkd_node = child(root, NODE_NS, "qkd_node").ok_or("no qkd_node in the agent's data")?;
        let node = text(child(qkd_node, IDS_NS, "node-name"))
            .or_else(|| text(child(qkd_node, NODE_NS, "qkdn_id")))
            .ok_or("no node-name or qkdn_id")?;
        let mut view = AgentView {
            node,
            ..Default::default()
        };
        if let Some(links) = child(qkd_node, NODE_NS, "qkd_links") {
            for link in links.children().filter(|c| c.is_element()) {
                let (Some(id), Some(peer)) = (
                    text(child(link, IDS_NS, "link-name"))
                        .or_else(|| text(child(link, NODE_NS, "qkdl_id"))),
                    text(child(link, KM_NS, "peer-node")),
                ) else {
                    continue;
                };
                let pool = child(link, KM_NS, "key-pool");
                let number =
                    |n: Option<roxmltree::Node<'_, '_>>| text(n).and_then(|t| t.parse().ok());
                view.links.push(LinkView {
                    id,
                    peer,
                    up: text(child(link, KM_NS, "oper-state")).as_deref() == Some("up"),
                    rate_bps: number(child(link, KM_NS, "secret-key-rate-bps")).unwrap_or(0.0),
                    own_blocks: pool
                        .and_then(|p| number(child(p, KM_NS, "own-blocks")))
                        .unwrap_or(0.0) as u64,
                    capacity_blocks: pool
                        .and_then(|p| number(child(p, KM_NS, "capacity-blocks")))
                        .unwrap_or(0.0) as u64,
                });
            }
        }
        if let Some(km) = child(qkd_node, KM_NS, "key-manager") {
            if let Some(saes) = child(km, KM_NS, "saes") {
                for sae in saes.children().filter(|c| c.is_element()) {
                    if let (Some(id), Some(at)) = (
                        text(child(sae, KM_NS, "sae-id")),
                        text(child(sae, KM_NS, "node")),
                    ) {
                        match text(child(sae, KM_NS, "domain")) {
                            Some(domain) => {
                                view.foreign_saes
                                    .insert(id, ForeignSae { node: at, domain });
                            }
                            None => {
                                view.saes.insert(id, at);
                            }
                        }
                    }
                }
            }
            if let Some(routes) = child(km, KM_NS, "relay-routes") {
                for route in routes.children().filter(|c| c.is_element()) {
                    let weight = |n: roxmltree::Node<'_, '_>| {
                        text(child(n, KM_NS, "weight"))
                            .and_then(|w| w.parse().ok())
                            .unwrap_or(1)
                    };
                    if let (Some(dest), Some(hop)) = (
                        text(child(route, KM_NS, "destination")),
                        text(child(route, KM_NS, "next-hop")),
                    ) {
                        let mut hops = vec![WeightedHop {
                            node: hop,
                            weight: weight(route),
                        }];
                        for alternate in route
                            .children()
                            .filter(|c| c.is_element() && c.tag_name().name() == "alternate")
                        {
                            if let Some(node) = text(child(alternate, KM_NS, "next-hop")) {
                                hops.push(WeightedHop {
                                    node,
                                    weight: weight(alternate),
                                });
                            }
                        }
                        view.routes.insert(dest, hops);
                    }
                }
            }
            if let Some(etsi014) = child(km, KM_NS, "etsi014") {
                for pair in etsi014
                    .children()
                    .filter(|c| c.is_element() && c.tag_name().name() == "pair")
                {
                    if let (Some(master), Some(slave), Some(requests)) = (
                        text(child(pair, KM_NS, "master-sae")),
                        text(child(pair, KM_NS, "slave-sae")),
                        text(child(pair, KM_NS, "requests")).and_then(|r| r.parse().ok()),
                    ) {
                        view.pair_requests.insert((master, slave), requests);
                    }
                }
            }
        }
        Ok(view)
    }
}

/// A QKD link in the domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LinkState {
    pub id: String,
    /// The two nodes.
    pub nodes: [String; 2],
    /// Up at both ends.
    pub up: bool,
    /// Secret key rate (bit/s), the lower of the two ends' reports.
    pub rate_bps: f64,
    /// Usable blocks (256 bits) each end may allocate, by node.
    pub own_blocks: BTreeMap<String, u64>,
    pub capacity_blocks: u64,
    /// What each end last reported: (up, rate).
    #[serde(skip)]
    #[schema(ignore)]
    pub reports: BTreeMap<String, (bool, f64)>,
}

/// A KM node of the domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeState {
    pub id: String,
    /// Whether the controller currently reaches the agent.
    pub reachable: bool,
    /// Installed relay routes: destination -> primary next hop.
    pub routes: BTreeMap<String, String>,
    /// Installed relay routes with every next hop and its weight (multipath).
    pub next_hops: BTreeMap<String, Vec<WeightedHop>>,
    /// Installed entries of other QKDNs' SAEs: SAE id -> (node, domain).
    #[serde(default)]
    pub foreign_saes: BTreeMap<String, ForeignSae>,
}

impl NodeState {
    /// Records the installed routes.
    pub fn set_routes(&mut self, routes: BTreeMap<String, Vec<WeightedHop>>) {
        self.routes = routes
            .iter()
            .filter_map(|(dest, hops)| hops.first().map(|h| (dest.clone(), h.node.clone())))
            .collect();
        self.next_hops = routes;
    }
}

/// The whole domain.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Topology {
    pub nodes: BTreeMap<String, NodeState>,
    pub links: BTreeMap<String, LinkState>,
    /// SAE id -> node.
    pub saes: BTreeMap<String, String>,
}

impl Topology {
    /// Merges what agent `view.node` reports.
    pub fn update(&mut self, view: &AgentView) {
        let mut node = NodeState {
            id: view.node.clone(),
            reachable: true,
            routes: BTreeMap::new(),
            next_hops: BTreeMap::new(),
            foreign_saes: view.foreign_saes.clone(),
        };
        node.set_routes(view.routes.clone());
        self.nodes.insert(view.node.clone(), node);
        for (sae, node) in &view.saes {
            self.saes.insert(sae.clone(), node.clone());
        }
        for l in &view.links {
            let mut ends = [view.node.clone(), l.peer.clone()];
            ends.sort();
            let entry = self.links.entry(l.id.clone()).or_insert_with(|| LinkState {
                id: l.id.clone(),
                nodes: ends,
                up: l.up,
                rate_bps: l.rate_bps,
                own_blocks: BTreeMap::new(),
                capacity_blocks: l.capacity_blocks,
                reports: BTreeMap::new(),
            });
            entry.own_blocks.insert(view.node.clone(), l.own_blocks);
            entry.capacity_blocks = l.capacity_blocks;
            entry.reports.insert(view.node.clone(), (l.up, l.rate_bps));
            // up only when both ends say so; the lower rate of the two
            entry.up = entry.reports.values().all(|(up, _)| *up);
            entry.rate_bps = entry
                .reports
                .values()
                .map(|(_, r)| *r)
                .fold(f64::INFINITY, f64::min);
        }
    }

    /// Marks a link's state at one end (from a notification); a link is up only when both
    /// ends say so, which the next poll confirms.
    pub fn set_link_up(&mut self, link: &str, up: bool) -> bool {
        match self.links.get_mut(link) {
            Some(l) if l.up != up => {
                l.up = up;
                true
            }
            _ => false,
        }
    }

    /// The route policy's view: links with their rate and the key this direction may use.
    pub fn network(&self) -> KeyNetwork {
        let mut net = KeyNetwork::new();
        for node in self.nodes.keys() {
            net.add_node(node.clone());
        }
        for l in self.links.values() {
            // a link is usable only when the controller reaches both ends' KMs
            let reachable = |n: &String| self.nodes.get(n).is_some_and(|n| n.reachable);
            if !reachable(&l.nodes[0]) || !reachable(&l.nodes[1]) {
                continue;
            }
            let blocks = l.own_blocks.values().copied().min().unwrap_or(0);
            let mut link = Link::new(
                l.id.clone(),
                l.nodes[0].clone(),
                l.nodes[1].clone(),
                l.rate_bps,
            );
            link.available_bits = blocks as f64 * 256.0;
            link.up = l.up;
            net.add_link(link);
        }
        net
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_data_is_read() {
        let xml = r#"<qkd_node xmlns="urn:etsi:qkd:yang:etsi-qkd-node"><qkdn_id>7eec982d-9ca7-59e0-b252-c124f3522b41</qkdn_id><node-name xmlns="urn:qkdni:yang:qkdni-etsi-ids">a1</node-name><qkd_links><qkd_link><qkdl_id>bccd9e3d-7cf3-5be0-97c1-ae02f598e71f</qkdl_id><link-name xmlns="urn:qkdni:yang:qkdni-etsi-ids">a1-a2</link-name><peer-node xmlns="urn:qkdni:yang:qkdni-km">a2</peer-node><oper-state xmlns="urn:qkdni:yang:qkdni-km">up</oper-state><secret-key-rate-bps xmlns="urn:qkdni:yang:qkdni-km">1000.000</secret-key-rate-bps><key-pool xmlns="urn:qkdni:yang:qkdni-km"><own-blocks>12</own-blocks><capacity-blocks>64</capacity-blocks></key-pool></qkd_link></qkd_links><key-manager xmlns="urn:qkdni:yang:qkdni-km"><saes><sae><sae-id>s1</sae-id><node>a1</node></sae></saes><relay-routes><route><destination>a3</destination><next-hop>a2</next-hop></route></relay-routes><etsi014><keys-supplied>3</keys-supplied><pair><master-sae>s1</master-sae><slave-sae>s3</slave-sae><requests>2</requests><keys>3</keys></pair></etsi014></key-manager></qkd_node>"#;
        let view = AgentView::parse(xml).unwrap();
        assert_eq!(view.node, "a1");
        assert_eq!(view.links[0].own_blocks, 12);
        assert!(view.links[0].up);
        assert_eq!(view.saes["s1"], "a1");
        assert_eq!(view.routes["a3"][0].node, "a2");
        assert_eq!(view.pair_requests[&("s1".into(), "s3".into())], 2);
        let mut topo = Topology::default();
        topo.update(&view);
        assert_eq!(
            topo.links["a1-a2"].nodes,
            ["a1".to_string(), "a2".to_string()]
        );
    }
}
