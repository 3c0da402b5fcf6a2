//! proptest strategies for random key networks, for the tests of policy crates
//! (feature `testing`).

use std::ops::Range;

use proptest::prelude::*;

use crate::{Demand, KeyNetwork, Link};

/// Random state of one link: (up, key rate, available bits, weight).
fn arb_link_state() -> impl Strategy<Value = (bool, f64, f64, Option<f64>)> {
    (
        prop::bool::weighted(0.85),
        prop_oneof![1 => Just(0.0), 9 => 1.0..1000.0f64],
        prop_oneof![1 => Just(0.0), 9 => 0.0..1e5f64],
        prop::option::of(0.1..10.0f64),
    )
}

/// Random networks with a node count in `nodes` (at least 2), named `n0`, `n1`, ...: a random
/// spanning tree plus up to as many extra links (parallel links and self-loops included),
/// each link up with probability 0.85 and with random key rate (sometimes 0), stored key and
/// weight. Connected over all links, not necessarily over the up links.
pub fn arb_network(nodes: Range<usize>) -> impl Strategy<Value = KeyNetwork> {
    let nodes = nodes.start.max(2)..nodes.end.max(3);
    nodes.prop_flat_map(|n| {
        let tree = prop::collection::vec((any::<prop::sample::Index>(), arb_link_state()), n - 1);
        let extra = prop::collection::vec((0..n, 0..n, arb_link_state()), 0..n);
        (Just(n), tree, extra).prop_map(|(n, tree, extra)| {
            let mut net = KeyNetwork::new();
            for i in 0..n {
                net.add_node(format!("n{i}"));
            }
            let tree = tree
                .into_iter()
                .enumerate()
                .map(|(i, (parent, state))| (i + 1, parent.index(i + 1), state));
            for (a, b, (up, rate, available, weight)) in tree.chain(extra) {
                let mut link = Link::new(
                    format!("l{}", net.links.len()),
                    format!("n{a}"),
                    format!("n{b}"),
                    rate,
                );
                link.up = up;
                link.available_bits = available;
                link.weight = weight;
                net.add_link(link);
            }
            net
        })
    })
}

/// A random network (see [`arb_network`]) with a demand between two distinct nodes, of up
/// to 1000 bit/s (the range of the link key rates) and up to 1e5 bits.
pub fn arb_network_and_demand(nodes: Range<usize>) -> impl Strategy<Value = (KeyNetwork, Demand)> {
    arb_network(nodes).prop_flat_map(|net| {
        let n = net.nodes.len();
        (
            Just(net),
            0..n,
            1..n,
            prop_oneof![1 => Just(0.0), 9 => 0.0..1000.0f64],
            prop_oneof![1 => Just(0.0), 9 => 0.0..1e5f64],
        )
            .prop_map(move |(net, src, offset, rate, bits)| {
                let dst = (src + offset) % n;
                let demand = Demand::new(&net.nodes[src], &net.nodes[dst], rate, bits);
                (net, demand)
            })
    })
}
