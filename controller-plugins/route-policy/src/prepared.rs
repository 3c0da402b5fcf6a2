//! A network snapshot turned into a `petgraph` graph, ready for many route computations.

use std::collections::HashMap;

use petgraph::graph::{EdgeIndex, NodeIndex, UnGraph};

use crate::cache::SearchCache;
use crate::{Demand, KeyNetwork, Link, Path, RouteError};

/// The graph of a [`PreparedNetwork`]: node `i` is `KeyNetwork::nodes[i]`; an edge's weight
/// is the index of its link in `KeyNetwork::links`. Only up links are edges.
pub type LinkGraph = UnGraph<(), u32>;

/// A [`KeyNetwork`] checked and turned into a [`LinkGraph`] of its up links.
///
/// Building it is linear in the size of the network; routing over it then needs no further
/// conversion. It borrows the snapshot, so it is only valid for that snapshot.
///
/// It also keeps, built on demand, what makes repeated searches fast: a flat adjacency
/// ([`csr`](Self::csr)), landmark distances per link cost function
/// ([`landmarks`](Self::landmarks)) and reusable search buffers
/// ([`with_scratch`](Self::with_scratch)). Since the snapshot cannot change while it is
/// borrowed, these stay valid for the whole life of the prepared network.
#[derive(Debug, Clone)]
pub struct PreparedNetwork<'a> {
    net: &'a KeyNetwork,
    graph: LinkGraph,
    index: HashMap<&'a str, NodeIndex>,
    cache: SearchCache,
}

impl<'a> PreparedNetwork<'a> {
    /// Checks `net` and builds its graph. Links joining a node to itself are left out (they
    /// never help a route); down links are left out.
    pub fn new(net: &'a KeyNetwork) -> Result<Self, RouteError> {
        let invalid = |msg: String| Err(RouteError::InvalidNetwork(msg));
        if net.nodes.len() >= u32::MAX as usize || net.links.len() >= u32::MAX as usize {
            return invalid("too many nodes or links".into());
        }
        let mut graph = LinkGraph::with_capacity(net.nodes.len(), net.links.len());
        let mut index = HashMap::with_capacity(net.nodes.len());
        for id in &net.nodes {
            let n = graph.add_node(());
            if index.insert(id.as_str(), n).is_some() {
                return invalid(format!("duplicate node {id:?}"));
            }
        }
        let mut link_ids = HashMap::with_capacity(net.links.len());
        for (i, link) in net.links.iter().enumerate() {
            if link_ids.insert(link.id.as_str(), ()).is_some() {
                return invalid(format!("duplicate link {:?}", link.id));
            }
            let numbers = [
                ("key_rate_bps", link.key_rate_bps),
                ("available_bits", link.available_bits),
                ("weight", link.weight.unwrap_or(1.0)),
            ];
            for (name, value) in numbers {
                if !(value.is_finite() && value >= 0.0) {
                    return invalid(format!("link {:?}: {name} {value} not >= 0", link.id));
                }
            }
            let end = |id: &str| {
                index.get(id).copied().ok_or_else(|| {
                    RouteError::InvalidNetwork(format!(
                        "link {:?} ends at unknown node {id:?}",
                        link.id
                    ))
                })
            };
            let (a, b) = (end(&link.a)?, end(&link.b)?);
            if link.up && a != b {
                graph.add_edge(a, b, i as u32);
            }
        }
        Ok(Self {
            net,
            graph,
            index,
            cache: SearchCache::default(),
        })
    }

    pub(crate) fn cache(&self) -> &SearchCache {
        &self.cache
    }

    /// The snapshot this graph was built from.
    pub fn network(&self) -> &'a KeyNetwork {
        self.net
    }

    /// The graph of up links.
    pub fn graph(&self) -> &LinkGraph {
        &self.graph
    }

    /// The graph node of a node id.
    pub fn node(&self, id: &str) -> Result<NodeIndex, RouteError> {
        self.index
            .get(id)
            .copied()
            .ok_or_else(|| RouteError::UnknownNode(id.to_string()))
    }

    /// The id of a graph node.
    pub fn node_id(&self, node: NodeIndex) -> &'a str {
        &self.net.nodes[node.index()]
    }

    /// The link of a graph edge.
    pub fn link(&self, edge: EdgeIndex) -> &'a Link {
        &self.net.links[self.graph[edge] as usize]
    }

    /// The end of `edge` that is not `node`.
    pub fn other_end(&self, edge: EdgeIndex, node: NodeIndex) -> NodeIndex {
        let (a, b) = self.graph.edge_endpoints(edge).expect("edge of this graph");
        if a == node {
            b
        } else {
            a
        }
    }

    /// Checks `demand` and returns the graph nodes of its source and destination.
    pub fn endpoints(&self, demand: &Demand) -> Result<(NodeIndex, NodeIndex), RouteError> {
        for (name, value) in [("rate_bps", demand.rate_bps), ("bits", demand.bits)] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(RouteError::InvalidDemand(format!(
                    "{name} {value} not >= 0"
                )));
            }
        }
        Ok((self.node(&demand.src)?, self.node(&demand.dst)?))
    }

    /// The edges from `src` to `dst` recorded in a predecessor array (`pred[v]` is the edge a
    /// search reached `v` by, `EdgeIndex::end()` for none), in order from `src`. `None` when
    /// `dst` was not reached.
    pub fn trace_back(
        &self,
        pred: &[EdgeIndex],
        src: NodeIndex,
        dst: NodeIndex,
    ) -> Option<Vec<EdgeIndex>> {
        let mut edges = Vec::new();
        let mut node = dst;
        while node != src {
            let edge = pred[node.index()];
            if edge == EdgeIndex::end() {
                return None;
            }
            edges.push(edge);
            node = self.other_end(edge, node);
        }
        edges.reverse();
        Some(edges)
    }

    /// The [`Path`] that starts at `src` and follows `edges`.
    pub fn path(&self, src: NodeIndex, edges: &[EdgeIndex], share_bps: f64) -> Path {
        let mut nodes = Vec::with_capacity(edges.len() + 1);
        let mut links = Vec::with_capacity(edges.len());
        let mut node = src;
        nodes.push(self.node_id(node).to_string());
        for &edge in edges {
            node = self.other_end(edge, node);
            nodes.push(self.node_id(node).to_string());
            links.push(self.link(edge).id.clone());
        }
        Path {
            nodes,
            links,
            share_bps,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> KeyNetwork {
        let mut net = KeyNetwork::new();
        for id in ["a", "b", "c"] {
            net.add_node(id);
        }
        net.add_link(Link::new("ab", "a", "b", 10.0));
        let mut bc = Link::new("bc", "b", "c", 10.0);
        bc.up = false;
        net.add_link(bc);
        net
    }

    #[test]
    fn graph_has_up_links_only() {
        let net = net();
        let p = PreparedNetwork::new(&net).unwrap();
        assert_eq!(p.graph().node_count(), 3);
        assert_eq!(p.graph().edge_count(), 1);
        let e = p.graph().edge_indices().next().unwrap();
        assert_eq!(p.link(e).id, "ab");
        let a = p.node("a").unwrap();
        let path = p.path(a, &[e], 1.0);
        assert_eq!(path.nodes, ["a", "b"]);
        assert_eq!(path.links, ["ab"]);
    }

    #[test]
    fn rejects_inconsistent_snapshots() {
        let mut dup = net();
        dup.add_node("a");
        assert!(matches!(
            PreparedNetwork::new(&dup),
            Err(RouteError::InvalidNetwork(_))
        ));
        let mut dangling = net();
        dangling.add_link(Link::new("ax", "a", "x", 1.0));
        assert!(PreparedNetwork::new(&dangling).is_err());
        let mut negative = net();
        negative.links[0].key_rate_bps = -1.0;
        assert!(PreparedNetwork::new(&negative).is_err());
        let mut dup_link = net();
        dup_link.add_link(Link::new("ab", "b", "c", 1.0));
        assert!(PreparedNetwork::new(&dup_link).is_err());
    }

    #[test]
    fn checks_demands() {
        let net = net();
        let p = PreparedNetwork::new(&net).unwrap();
        assert_eq!(
            p.endpoints(&Demand::new("a", "z", 1.0, 0.0)),
            Err(RouteError::UnknownNode("z".into()))
        );
        assert!(matches!(
            p.endpoints(&Demand::new("a", "b", f64::NAN, 0.0)),
            Err(RouteError::InvalidDemand(_))
        ));
        assert!(p.endpoints(&Demand::new("a", "c", 1.0, 0.0)).is_ok());
    }
}
