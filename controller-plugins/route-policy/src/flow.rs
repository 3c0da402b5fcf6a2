//! Max-flow / min-cut over link key rates: the physical limit of key delivery between two KMs.

use petgraph::graph::{EdgeIndex, NodeIndex};
use petgraph::visit::EdgeRef;

use crate::{KeyNetwork, PreparedNetwork, RouteError};

/// A flow between two nodes of a [`PreparedNetwork`], with link key rates as capacities.
#[derive(Debug, Clone, PartialEq)]
pub struct Flow {
    /// Rate from source to destination, bit/s.
    pub value: f64,
    /// Net flow on each graph edge (indexed by `EdgeIndex::index()`), positive in the
    /// direction from the edge's first endpoint to its second (`Graph::edge_endpoints`).
    /// Its magnitude never exceeds the link's key rate.
    pub edge_flow: Vec<f64>,
}

/// A maximum flow from `src` to `dst` over the up links, each carrying at most its
/// `key_rate_bps` (in both directions together), stopped once it reaches `limit`.
///
/// Edmonds-Karp (augmenting paths with the fewest hops first, so the flow prefers short
/// routes), except that each round first looks for the fewest-hop path that can carry all the
/// remaining rate, so a demand one path can carry gets one path. Residual capacities below a relative tolerance (1e-12 of the largest key rate)
/// count as exhausted. When `src == dst`, the value is `limit` and no edge carries flow.
pub fn max_flow(net: &PreparedNetwork<'_>, src: NodeIndex, dst: NodeIndex, limit: f64) -> Flow {
    let graph = net.graph();
    let caps: Vec<f64> = graph
        .edge_indices()
        .map(|e| net.link(e).key_rate_bps)
        .collect();
    let mut flow = Flow {
        value: 0.0,
        edge_flow: vec![0.0; graph.edge_count()],
    };
    if src == dst {
        flow.value = limit;
        return flow;
    }
    let eps = caps.iter().fold(0.0f64, |m, &c| m.max(c)) * 1e-12;
    let residual = |flow: &[f64], edge: EdgeIndex, from: NodeIndex| {
        let (a, _) = graph.edge_endpoints(edge).expect("edge of this graph");
        let f = flow[edge.index()];
        caps[edge.index()] - if a == from { f } else { -f }
    };
    let n = graph.node_count();
    let mut pred = vec![EdgeIndex::end(); n];
    let mut seen = vec![0u32; n];
    let mut round = 0u32;
    let mut queue = Vec::with_capacity(n);
    while limit - flow.value > eps {
        // Breadth-first search for an augmenting path in the residual graph: first one that
        // can carry all the remaining rate, then one with any residual capacity.
        let mut reached = false;
        for threshold in [limit - flow.value, eps] {
            round += 1;
            seen[src.index()] = round;
            queue.clear();
            queue.push(src);
            let mut head = 0;
            'search: while head < queue.len() {
                let u = queue[head];
                head += 1;
                for edge in graph.edges(u) {
                    let (v, id) = (edge.target(), edge.id());
                    let r = residual(&flow.edge_flow, id, u);
                    if seen[v.index()] == round || r <= eps || r < threshold {
                        continue;
                    }
                    seen[v.index()] = round;
                    pred[v.index()] = id;
                    if v == dst {
                        reached = true;
                        break 'search;
                    }
                    queue.push(v);
                }
            }
            if reached || threshold <= eps {
                break;
            }
        }
        if !reached {
            break;
        }
        // Bottleneck along the path, then augment.
        let mut delta = limit - flow.value;
        let mut v = dst;
        while v != src {
            let edge = pred[v.index()];
            let u = net.other_end(edge, v);
            delta = delta.min(residual(&flow.edge_flow, edge, u));
            v = u;
        }
        let mut v = dst;
        while v != src {
            let edge = pred[v.index()];
            let u = net.other_end(edge, v);
            let (a, _) = graph.edge_endpoints(edge).expect("edge of this graph");
            let f = &mut flow.edge_flow[edge.index()];
            *f += if a == u { delta } else { -delta };
            *f = f.clamp(-caps[edge.index()], caps[edge.index()]);
            v = u;
        }
        flow.value += delta;
    }
    flow
}

/// The max-flow / min-cut between `src` and `dst`: the largest key rate (bit/s) the up links'
/// key rates allow between them, over any number of paths. Infinite when `src == dst`.
pub fn min_cut_bps(net: &KeyNetwork, src: &str, dst: &str) -> Result<f64, RouteError> {
    let prepared = PreparedNetwork::new(net)?;
    let (s, t) = (prepared.node(src)?, prepared.node(dst)?);
    Ok(max_flow(&prepared, s, t, f64::INFINITY).value)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::testing::arb_network;
    use crate::Link;

    /// Two disjoint routes a-b-d (10, 4) and a-c-d (3, 8), and a cross link b-c (5).
    fn diamond() -> KeyNetwork {
        let mut net = KeyNetwork::new();
        for id in ["a", "b", "c", "d"] {
            net.add_node(id);
        }
        for (id, a, b, rate) in [
            ("ab", "a", "b", 10.0),
            ("bd", "b", "d", 4.0),
            ("ac", "a", "c", 3.0),
            ("cd", "c", "d", 8.0),
            ("bc", "b", "c", 5.0),
        ] {
            net.add_link(Link::new(id, a, b, rate));
        }
        net
    }

    #[test]
    fn diamond_min_cut() {
        let mut net = diamond();
        // Cut {bd, cd} = 12; cut {ab, ac} = 13; flow a-b-d 4, a-b-c-d 5, a-c-d 3.
        assert_eq!(min_cut_bps(&net, "a", "d").unwrap(), 12.0);
        assert_eq!(min_cut_bps(&net, "d", "a").unwrap(), 12.0);
        net.links[4].up = false;
        assert_eq!(min_cut_bps(&net, "a", "d").unwrap(), 7.0);
        assert_eq!(min_cut_bps(&net, "a", "a").unwrap(), f64::INFINITY);
        assert_eq!(
            min_cut_bps(&net, "a", "x"),
            Err(RouteError::UnknownNode("x".into()))
        );
    }

    #[test]
    fn limit_stops_the_flow() {
        let net = diamond();
        let p = PreparedNetwork::new(&net).unwrap();
        let (a, d) = (p.node("a").unwrap(), p.node("d").unwrap());
        assert_eq!(max_flow(&p, a, d, 6.0).value, 6.0);
    }

    /// The smallest cut by enumerating every node set that holds `src` and not `dst`.
    fn brute_force_cut(net: &KeyNetwork, src: usize, dst: usize) -> f64 {
        let n = net.nodes.len();
        let pos = |id: &str| net.nodes.iter().position(|x| x == id).unwrap();
        let mut best = f64::INFINITY;
        for mask in 0u32..(1 << n) {
            if mask & (1 << src) == 0 || mask & (1 << dst) != 0 {
                continue;
            }
            let cut: f64 = net
                .links
                .iter()
                .filter(|l| l.up)
                .filter(|l| (mask >> pos(&l.a)) & 1 != (mask >> pos(&l.b)) & 1)
                .map(|l| l.key_rate_bps)
                .sum();
            best = best.min(cut);
        }
        best
    }

    proptest! {
        #[test]
        fn max_flow_equals_min_cut(
            (net, src, dst) in arb_network(2..9)
                .prop_flat_map(|net| {
                    let n = net.nodes.len();
                    (Just(net), 0..n, 0..n)
                })
                .prop_filter("distinct ends", |(_, s, d)| s != d)
        ) {
            let flow = min_cut_bps(&net, &net.nodes[src], &net.nodes[dst]).unwrap();
            let cut = brute_force_cut(&net, src, dst);
            prop_assert!((flow - cut).abs() <= 1e-6 * cut.max(1.0), "flow {flow} cut {cut}");
        }
    }
}
