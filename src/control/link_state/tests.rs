//! The protocol on in-memory domains: every database agrees, routes follow faults, a dead
//! node is routed around, a restarted node catches up.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::engine::{LinkState, Local};
use super::memory::{locals, Mesh};

/// A grid of `w` x `h` nodes `n<x>-<y>` joined right and down.
fn grid(w: usize, h: usize) -> Vec<(String, String, String)> {
    let name = |x: usize, y: usize| format!("n{x}-{y}");
    let mut links = Vec::new();
    for y in 0..h {
        for x in 0..w {
            if x + 1 < w {
                links.push((
                    format!("{}~{}", name(x, y), name(x + 1, y)),
                    name(x, y),
                    name(x + 1, y),
                ));
            }
            if y + 1 < h {
                links.push((
                    format!("{}~{}", name(x, y), name(x, y + 1)),
                    name(x, y),
                    name(x, y + 1),
                ));
            }
        }
    }
    links
}

struct Domain {
    mesh: Arc<Mesh>,
    nodes: BTreeMap<String, Arc<LinkState>>,
    links: Vec<(String, String, String)>,
}

impl Domain {
    fn new(links: Vec<(String, String, String)>) -> Self {
        let mesh = Arc::new(Mesh::default());
        let nodes = locals(&links, &[])
            .keys()
            .map(|n| {
                (
                    n.clone(),
                    mesh.node(n, qkdni_routing::CATALOG, "fewest-hops"),
                )
            })
            .collect();
        Self { mesh, nodes, links }
    }

    /// Every node takes its local view with `down` links down (except `skip`).
    fn update(&self, down: &[&str], skip: &[&str]) {
        let locals: BTreeMap<String, Local> = locals(&self.links, down);
        for (n, node) in &self.nodes {
            if !skip.contains(&n.as_str()) {
                node.update(locals[n].clone());
            }
        }
    }

    /// Waits until every node but `skip` holds the same database, updating each second as
    /// the KM does.
    async fn converged(&self, down: &[&str], skip: &[&str]) -> Vec<(String, u64)> {
        let live: Vec<&Arc<LinkState>> = self
            .nodes
            .iter()
            .filter(|(n, _)| !skip.contains(&n.as_str()))
            .map(|(_, s)| s)
            .collect();
        for _ in 0..100 {
            let first = live[0].digest();
            if live.iter().all(|s| s.digest() == first) && first.len() >= live.len() {
                return first;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.update(down, skip);
        }
        panic!("databases did not converge");
    }
}

#[tokio::test]
async fn every_database_agrees_and_routes_reach_every_node() {
    let domain = Domain::new(grid(4, 3));
    domain.update(&[], &[]);
    let digest = domain.converged(&[], &[]).await;
    assert_eq!(digest.len(), 12);
    let corner = &domain.nodes["n0-0"];
    let routes = corner.routes();
    assert_eq!(routes.len(), 11);
    assert!(["n1-0", "n0-1"].contains(&routes["n3-2"][0].0.as_str()));
    assert_eq!(corner.sae_node("sae-n3-2").as_deref(), Some("n3-2"));
}

#[tokio::test]
async fn a_link_fault_is_flooded_and_routed_around() {
    let domain = Domain::new(grid(2, 2));
    domain.update(&[], &[]);
    domain.converged(&[], &[]).await;
    let a = &domain.nodes["n0-0"];
    assert_eq!(a.routes()["n1-0"][0].0, "n1-0");
    let down = ["n0-0~n1-0"];
    domain.update(&down, &[]);
    domain.converged(&down, &[]).await;
    assert_eq!(a.routes()["n1-0"][0].0, "n0-1", "{:?}", a.routes());
    assert_eq!(domain.nodes["n1-1"].routes()["n0-0"][0].0, "n0-1");
    domain.update(&[], &[]);
    domain.converged(&[], &[]).await;
    assert_eq!(a.routes()["n1-0"][0].0, "n1-0");
}

#[tokio::test]
async fn a_dead_node_is_routed_around_by_every_other_node() {
    // a ring of 6: n0 .. n5
    let links: Vec<(String, String, String)> = (0..6)
        .map(|i| {
            let (a, b) = (format!("n{i}"), format!("n{}", (i + 1) % 6));
            (format!("{a}~{b}"), a, b)
        })
        .collect();
    let domain = Domain::new(links);
    domain.update(&[], &[]);
    domain.converged(&[], &[]).await;
    assert_eq!(domain.nodes["n0"].routes()["n2"][0].0, "n1");
    // n1 dies: its neighbours lose the signal of their links to it
    domain.mesh.set_dead("n1", true);
    let down = ["n0~n1", "n1~n2"];
    domain.update(&down, &["n1"]);
    domain.converged(&down, &["n1"]).await;
    // its stale advertisement still says the links are up: the two-way check drops them
    assert_eq!(domain.nodes["n0"].routes()["n2"][0].0, "n5");
    assert_eq!(domain.nodes["n2"].routes()["n0"][0].0, "n3");
    assert!(!domain.nodes["n0"].routes().contains_key("n1"));
}

#[tokio::test]
async fn a_restarted_node_catches_up_and_outranks_its_old_advertisement() {
    let links = grid(3, 1);
    let domain = Domain::new(links.clone());
    domain.update(&[], &[]);
    domain.converged(&[], &[]).await;
    let old = domain.nodes["n1-0"].digest();
    let old_seq = old.iter().find(|(o, _)| o == "n1-0").unwrap().1;
    // n1-0 restarts with an empty database
    let mut domain = domain;
    let fresh = domain
        .mesh
        .node("n1-0", qkdni_routing::CATALOG, "fewest-hops");
    domain.nodes.insert("n1-0".into(), fresh.clone());
    domain.update(&[], &[]);
    let digest = domain.converged(&[], &[]).await;
    assert_eq!(digest.len(), 3);
    let new_seq = digest.iter().find(|(o, _)| o == "n1-0").unwrap().1;
    assert!(new_seq > old_seq);
    assert_eq!(fresh.routes().len(), 2);
}

#[tokio::test]
async fn policy_changes_recompute_the_routes() {
    let domain = Domain::new(grid(2, 2));
    domain.update(&[], &[]);
    domain.converged(&[], &[]).await;
    let node = &domain.nodes["n0-0"];
    assert_eq!(node.policy(), "fewest-hops");
    let runs = node.stats().route_runs;
    node.set_policy("shortest").unwrap();
    assert_eq!(node.policy(), "shortest");
    assert!(node.stats().route_runs > runs);
    assert!(node.set_policy("nonsense").unwrap_err().contains("known"));
}
