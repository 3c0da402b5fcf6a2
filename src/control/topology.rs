//! The domain as the controller sees it: nodes, QKD links with their live state, SAE
//! locations and the relay routes installed on each KM, built from the agents' NETCONF data.

use std::collections::BTreeMap;

use qkdni_route_policy::{KeyNetwork, Link};
use serde::{Deserialize, Serialize};

pub use crate::model::km_data::{AgentView, ForeignSae, LinkView, WeightedHop};

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

    fn view(node: &str, peer: &str, up: bool, rate_bps: f64) -> AgentView {
        AgentView {
            node: node.into(),
            links: vec![LinkView {
                id: "a1-a2".into(),
                peer: peer.into(),
                up,
                rate_bps,
                own_blocks: 12,
                capacity_blocks: 64,
                transfer: false,
            }],
            ..Default::default()
        }
    }

    /// A link is up when both ends say so, at the lower of the two ends' rates.
    #[test]
    fn both_ends_make_a_link() {
        let mut topo = Topology::default();
        topo.update(&view("a1", "a2", true, 1000.0));
        let link = &topo.links["a1-a2"];
        assert_eq!(link.nodes, ["a1".to_string(), "a2".to_string()]);
        assert!(link.up);
        topo.update(&view("a2", "a1", false, 800.0));
        let link = &topo.links["a1-a2"];
        assert!(!link.up);
        assert_eq!(link.rate_bps, 800.0);
        assert_eq!(link.own_blocks["a2"], 12);
    }
}
