//! The data a policy works on: network snapshot, demand and route plan.

use serde::{Deserialize, Serialize};

/// A snapshot of one QKD network: its KM nodes and QKD links with their live state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyNetwork {
    /// Node (KM) identifiers, unique.
    pub nodes: Vec<String>,
    /// QKD links between nodes, unique by id; several links may join the same two nodes.
    pub links: Vec<Link>,
}

impl KeyNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a node.
    pub fn add_node(&mut self, id: impl Into<String>) {
        self.nodes.push(id.into());
    }

    /// Adds a link.
    pub fn add_link(&mut self, link: Link) {
        self.links.push(link);
    }
}

/// An undirected QKD link between two nodes.
///
/// Both ends of a QKD link hold the same key, so the link's state is symmetric: the key rate
/// and the stored key are usable for relaying in either direction (from the same pool).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Link {
    /// Link identifier, unique in the network.
    pub id: String,
    /// One end.
    pub a: String,
    /// The other end.
    pub b: String,
    /// Whether the link delivers key (admin up, QBER below threshold). Down links are never
    /// routed over.
    pub up: bool,
    /// Secret key rate of the link, bit/s.
    pub key_rate_bps: f64,
    /// Key stored at the link's ends and not yet used, in bits.
    pub available_bits: f64,
    /// Routing weight (e.g. fiber length) for weighted policies; `None` counts as 1.
    #[serde(default)]
    pub weight: Option<f64>,
}

impl Link {
    /// An up link with the given key rate, no stored key and no weight.
    pub fn new(
        id: impl Into<String>,
        a: impl Into<String>,
        b: impl Into<String>,
        key_rate_bps: f64,
    ) -> Self {
        Self {
            id: id.into(),
            a: a.into(),
            b: b.into(),
            up: true,
            key_rate_bps,
            available_bits: 0.0,
            weight: None,
        }
    }

    /// The routing weight: `weight`, or 1 when unset.
    pub fn cost(&self) -> f64 {
        self.weight.unwrap_or(1.0)
    }
}

/// A key demand between two KMs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Demand {
    /// Source node (the KM of the master SAE).
    pub src: String,
    /// Destination node.
    pub dst: String,
    /// Key rate wanted, bit/s.
    pub rate_bps: f64,
    /// Key wanted now, bits (0 when only a rate is asked for).
    pub bits: f64,
}

impl Demand {
    /// A demand of `rate_bps` and `bits` from `src` to `dst`.
    pub fn new(src: impl Into<String>, dst: impl Into<String>, rate_bps: f64, bits: f64) -> Self {
        Self {
            src: src.into(),
            dst: dst.into(),
            rate_bps,
            bits,
        }
    }
}

/// One key relay path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Path {
    /// Nodes from source to destination (`links.len() + 1` of them).
    pub nodes: Vec<String>,
    /// Links from source to destination; `links[i]` joins `nodes[i]` and `nodes[i + 1]`.
    pub links: Vec<String>,
    /// Key rate (bit/s) of the demand this path carries.
    pub share_bps: f64,
}

/// The routes a policy computed for one demand.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoutePlan {
    /// The paths, in the order the policy found them.
    pub paths: Vec<Path>,
}

impl RoutePlan {
    /// Sum of the paths' shares: the key rate the plan delivers.
    pub fn total_bps(&self) -> f64 {
        self.paths.iter().map(|p| p.share_bps).sum()
    }
}
