//! Property tests of the protocol on random in-memory domains: random connected topologies
//! of 8 to 20 nodes, then random link faults, restorations, node deaths (the node drops
//! every flood, its neighbours report their links to it down) and restarts (an empty
//! database). After each step, once the databases have settled:
//! - within every group of live nodes joined by up links, every database is the same (the
//!   whole domain's, when it is not split);
//! - a live node routes to a destination if and only if the destination is reachable from
//!   it over up links between live nodes;
//! - following next hops (every one listed) from any live node toward any destination it
//!   routes to reaches it, each hop over an up link to a live node, without visiting a node
//!   twice.
//!
//! Each case runs on its own runtime, in wall-clock time (advertisements carry the system
//! clock); the KM's one-second tick is scaled to 100 ms.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::engine::{LinkState, Local};
use super::memory::{locals, Mesh};

/// The KM's tick, scaled.
const TICK: Duration = Duration::from_millis(100);
/// Longest a step may take to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// One change of the domain; the index picks among the candidates at that moment.
#[derive(Debug, Clone)]
enum Step {
    /// An up link between live nodes goes down.
    LinkDown(usize),
    /// A link taken down by a fault comes back.
    LinkUp(usize),
    /// A live node dies.
    NodeDies(usize),
    /// A dead node restarts with an empty database.
    NodeRestarts(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => any::<usize>().prop_map(Step::LinkDown),
        3 => any::<usize>().prop_map(Step::LinkUp),
        1 => any::<usize>().prop_map(Step::NodeDies),
        1 => any::<usize>().prop_map(Step::NodeRestarts),
    ]
}

/// A connected graph: a random spanning tree plus up to `n` random chords.
fn topology() -> impl Strategy<Value = (usize, Vec<(usize, usize)>)> {
    (8usize..=20)
        .prop_flat_map(|n| {
            let parents: Vec<std::ops::Range<usize>> = (1..n).map(|i| 0..i).collect();
            let chords = prop::collection::vec((0..n, 0..n), 0..=n);
            (Just(n), parents, chords)
        })
        .prop_map(|(n, parents, chords)| {
            let mut edges = BTreeSet::new();
            for (i, parent) in parents.into_iter().enumerate() {
                edges.insert((parent, i + 1));
            }
            for (a, b) in chords {
                if a != b {
                    edges.insert((a.min(b), a.max(b)));
                }
            }
            (n, edges.into_iter().collect())
        })
}

fn name(i: usize) -> String {
    format!("n{i:02}")
}

/// The domain, its ground truth, and every node's protocol.
struct World {
    mesh: Arc<Mesh>,
    policy: &'static str,
    nodes: BTreeMap<String, Arc<LinkState>>,
    /// (id, a, b).
    links: Vec<(String, String, String)>,
    /// Every node's links, all up.
    base: BTreeMap<String, Local>,
    /// Links down by a fault.
    down: BTreeSet<String>,
    dead: BTreeSet<String>,
}

impl World {
    fn new(n: usize, edges: &[(usize, usize)], policy: &'static str) -> Self {
        let links: Vec<(String, String, String)> = edges
            .iter()
            .map(|(a, b)| (format!("{}~{}", name(*a), name(*b)), name(*a), name(*b)))
            .collect();
        let base = locals(&links, &[]);
        assert_eq!(base.len(), n);
        let mesh = Arc::new(Mesh::default());
        let nodes = base
            .keys()
            .map(|n| (n.clone(), mesh.node(n, qkdni_routing::CATALOG, policy)))
            .collect();
        Self {
            mesh,
            policy,
            nodes,
            links,
            base,
            down: BTreeSet::new(),
            dead: BTreeSet::new(),
        }
    }

    fn up(&self, (id, a, b): &(String, String, String)) -> bool {
        !self.down.contains(id) && !self.dead.contains(a) && !self.dead.contains(b)
    }

    fn live(&self) -> impl Iterator<Item = &String> {
        self.nodes.keys().filter(|n| !self.dead.contains(*n))
    }

    /// What `node`'s KM sees of its links now.
    fn view(&self, node: &str) -> Local {
        let mut local = self.base[node].clone();
        for link in &mut local.links {
            link.up = self
                .links
                .iter()
                .find(|l| l.0 == link.id)
                .is_some_and(|l| self.up(l));
        }
        local
    }

    /// Every live node's KM updates (on a change, or its tick).
    fn update_live(&self) {
        for n in self.live() {
            self.nodes[n].update(self.view(n));
        }
    }

    fn apply(&mut self, step: &Step) {
        match *step {
            Step::LinkDown(i) => {
                let up: Vec<String> = self
                    .links
                    .iter()
                    .filter(|l| self.up(l))
                    .map(|l| l.0.clone())
                    .collect();
                if !up.is_empty() {
                    self.down.insert(up[i % up.len()].clone());
                }
            }
            Step::LinkUp(i) => {
                let down: Vec<String> = self.down.iter().cloned().collect();
                if !down.is_empty() {
                    self.down.remove(&down[i % down.len()]);
                }
            }
            Step::NodeDies(i) => {
                let live: Vec<String> = self.live().cloned().collect();
                // at least two live nodes, at most half dead
                if live.len() > 2 && self.dead.len() < self.nodes.len() / 2 {
                    let node = live[i % live.len()].clone();
                    self.mesh.set_dead(&node, true);
                    self.dead.insert(node);
                }
            }
            Step::NodeRestarts(i) => {
                let dead: Vec<String> = self.dead.iter().cloned().collect();
                if !dead.is_empty() {
                    let node = dead[i % dead.len()].clone();
                    let fresh = self.mesh.node(&node, qkdni_routing::CATALOG, self.policy);
                    self.nodes.insert(node.clone(), fresh);
                    self.mesh.set_dead(&node, false);
                    self.dead.remove(&node);
                }
            }
        }
        // the KMs that see a change update at once (the others' updates change nothing)
        self.update_live();
    }

    /// Live neighbours of `node` over up links.
    fn neighbours(&self, node: &str) -> BTreeSet<&str> {
        self.links
            .iter()
            .filter(|l| self.up(l))
            .filter_map(|(_, a, b)| {
                if a == node {
                    Some(b.as_str())
                } else if b == node {
                    Some(a.as_str())
                } else {
                    None
                }
            })
            .collect()
    }

    /// The live nodes reachable from `from` over up links (with `from`).
    fn reachable(&self, from: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::from([from.to_owned()]);
        let mut queue = VecDeque::from([from.to_owned()]);
        while let Some(n) = queue.pop_front() {
            for next in self.neighbours(&n) {
                if seen.insert(next.to_owned()) {
                    queue.push_back(next.to_owned());
                }
            }
        }
        seen
    }

    /// The databases of every group of live nodes joined by up links, if each group's agree.
    fn agreed(&self) -> Option<Vec<Vec<(String, u64)>>> {
        let mut done = BTreeSet::new();
        let mut digests = Vec::new();
        for n in self.live() {
            if done.contains(n) {
                continue;
            }
            let group = self.reachable(n);
            let first = self.nodes[n].digest();
            if group.iter().any(|m| self.nodes[m].digest() != first) {
                return None;
            }
            done.extend(group);
            digests.push(first);
        }
        Some(digests)
    }

    /// Waits until every group's databases agree, twice in a row 20 ms apart, the KMs
    /// ticking meanwhile.
    async fn settle(&self) -> Result<(), String> {
        let started = Instant::now();
        let mut ticked = Instant::now();
        let mut last: Option<Vec<Vec<(String, u64)>>> = None;
        loop {
            let now = self.agreed();
            if now.is_some() && now == last {
                return Ok(());
            }
            last = now;
            if started.elapsed() > SETTLE_TIMEOUT {
                return Err(format!(
                    "databases did not agree within {SETTLE_TIMEOUT:?}: {}",
                    self.describe()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            if ticked.elapsed() >= TICK {
                ticked = Instant::now();
                self.update_live();
            }
        }
    }

    fn describe(&self) -> String {
        let digests: BTreeMap<&String, Vec<(String, u64)>> =
            self.live().map(|n| (n, self.nodes[n].digest())).collect();
        format!(
            "down {:?}, dead {:?}, digests {digests:?}",
            self.down, self.dead
        )
    }

    /// The properties of the module's docs.
    fn check(&self) -> Result<(), String> {
        let limit = self.nodes.len();
        for s in self.live() {
            let routes = self.nodes[s].routes();
            let mut reachable = self.reachable(s);
            reachable.remove(s);
            let routed: BTreeSet<String> = routes.keys().cloned().collect();
            if routed != reachable {
                return Err(format!(
                    "{s} routes to {routed:?} but reaches {reachable:?} ({})",
                    self.describe()
                ));
            }
            for t in &routed {
                // every path the next hops allow, depth first
                let mut stack: Vec<Vec<String>> = vec![vec![s.clone()]];
                while let Some(path) = stack.pop() {
                    let at = path.last().expect("path");
                    if at == t {
                        continue;
                    }
                    if path.len() > limit {
                        return Err(format!("{s} -> {t}: {path:?} longer than {limit} nodes"));
                    }
                    let hops = self.nodes[at].next_hops(t).unwrap_or_default();
                    if hops.is_empty() {
                        return Err(format!("{s} -> {t}: no next hop at {at} ({path:?})"));
                    }
                    let neighbours = self.neighbours(at);
                    for (hop, _) in hops {
                        if !neighbours.contains(hop.as_str()) {
                            return Err(format!(
                                "{s} -> {t}: {at} forwards to {hop}, no up link to a live node \
                                 ({path:?}; {})",
                                self.describe()
                            ));
                        }
                        if path.contains(&hop) {
                            return Err(format!(
                                "{s} -> {t}: loop, {at} forwards to {hop} ({path:?})"
                            ));
                        }
                        let mut next = path.clone();
                        next.push(hop);
                        stack.push(next);
                    }
                }
            }
        }
        Ok(())
    }
}

/// One case: the topology, the policy, the steps.
fn run_case(
    n: usize,
    edges: &[(usize, usize)],
    policy: &'static str,
    steps: &[Step],
) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let mut world = World::new(n, edges, policy);
        world.update_live();
        world.settle().await?;
        world.check().map_err(|e| format!("at start: {e}"))?;
        for (i, step) in steps.iter().enumerate() {
            world.apply(step);
            world
                .settle()
                .await
                .map_err(|e| format!("after step {i} {step:?}: {e}"))?;
            world
                .check()
                .map_err(|e| format!("after step {i} {step:?}: {e}"))?;
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        max_shrink_iters: 64,
        ..ProptestConfig::default()
    })]

    #[test]
    fn databases_agree_and_next_hops_reach_every_reachable_node_without_loops(
        (n, edges) in topology(),
        policy in prop::sample::select(vec!["fewest-hops", "shortest", "key-aware", "multipath"]),
        steps in prop::collection::vec(step(), 1..8),
    ) {
        if let Err(e) = run_case(n, &edges, policy, &steps) {
            prop_assert!(false, "{} nodes, links {:?}, policy {}: {}", n, edges, policy, e);
        }
    }
}
