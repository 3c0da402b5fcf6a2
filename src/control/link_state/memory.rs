//! Many nodes' link-state protocols in one process, flooding to each other through memory:
//! the unit tests and `qkdni bench link-state` run the real protocol this way on domains
//! of any size. Every flood is serialized to JSON and back, as over the KMA.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, Weak};

use futures::future::BoxFuture;
use qkdni_route_policy::Catalog;

use super::engine::{LinkState, Local, Transport};
use super::lsa::{Flood, LsaLink};

/// The nodes of an in-memory domain, by name.
#[derive(Default)]
pub struct Mesh {
    nodes: RwLock<BTreeMap<String, Weak<LinkState>>>,
    /// Nodes that drop every flood (as a killed process would).
    dead: RwLock<std::collections::BTreeSet<String>>,
}

struct MeshTransport {
    mesh: Arc<Mesh>,
    own: String,
}

impl Transport for MeshTransport {
    fn send(&self, neighbour: &str, flood: Flood) -> BoxFuture<'static, Result<Flood, String>> {
        let mesh = self.mesh.clone();
        let own = self.own.clone();
        let neighbour = neighbour.to_owned();
        Box::pin(async move {
            tokio::task::yield_now().await;
            let dead = mesh.dead.read().expect("dead");
            if dead.contains(&neighbour) || dead.contains(&own) {
                return Err(format!("{neighbour} does not answer"));
            }
            drop(dead);
            let node = mesh
                .nodes
                .read()
                .expect("nodes")
                .get(&neighbour)
                .and_then(Weak::upgrade)
                .ok_or_else(|| format!("{neighbour} unknown"))?;
            let body = serde_json::to_vec(&flood).map_err(|e| e.to_string())?;
            let flood: Flood = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
            let answer = node.receive(&own, flood);
            let body = serde_json::to_vec(&answer).map_err(|e| e.to_string())?;
            serde_json::from_slice(&body).map_err(|e| e.to_string())
        })
    }
}

impl Mesh {
    /// A node `name` of the mesh.
    pub fn node(self: &Arc<Self>, name: &str, catalog: Catalog, policy: &str) -> Arc<LinkState> {
        let transport = Arc::new(MeshTransport {
            mesh: self.clone(),
            own: name.to_owned(),
        });
        let node = LinkState::new(name, catalog, policy, transport).expect("policy");
        self.nodes
            .write()
            .expect("nodes")
            .insert(name.to_owned(), Arc::downgrade(&node));
        node
    }

    /// Makes `name` drop (or take again) every flood.
    pub fn set_dead(&self, name: &str, dead: bool) {
        let mut set = self.dead.write().expect("dead");
        if dead {
            set.insert(name.to_owned());
        } else {
            set.remove(name);
        }
    }
}

/// A domain's links as each node sees them: node -> its local view.
pub fn locals(links: &[(String, String, String)], down: &[&str]) -> BTreeMap<String, Local> {
    let mut locals: BTreeMap<String, Local> = BTreeMap::new();
    for (id, a, b) in links {
        for (end, peer) in [(a, b), (b, a)] {
            locals
                .entry(end.clone())
                .or_insert_with(|| Local {
                    saes: vec![format!("sae-{end}")],
                    ..Local::default()
                })
                .links
                .push(LsaLink {
                    id: id.clone(),
                    peer: peer.clone(),
                    up: !down.contains(&id.as_str()),
                    key_rate_bps: 10_000.0,
                    available_bits: 256_000.0,
                    qber: 0.02,
                });
        }
    }
    locals
}
