//! `qkdni bench routing`: times the route policies of `controller-plugins/` on a reproducible
//! random QKD-network-like topology, and can export the same graph and queries as networkx
//! node-link JSON so other tools can time the same work.
//!
//! The topology: `N` nodes placed uniformly in a square whose side grows with `sqrt(N)` (one
//! node per 25 km x 25 km on average); each node is linked to its 3 nearest neighbours; one
//! node in 50 gets a long-haul link to the node nearest a point 80 to 150 km away; remaining
//! islands are joined to their nearest outside node, so the graph is connected. A link's fiber
//! is 1.2 times the straight distance (at least 1 km, at most 150 km so that every link
//! yields key, rounded to 100 m); its key rate comes from the decoy-state BB84 model
//! ([`LinkParams`] defaults), its weight is its length, its stored key a random amount up to
//! ten minutes of its key rate. All links are up. Every query asks for
//! [`DEMAND_RATE_BPS`] and [`DEMAND_BITS`] between two distinct random nodes.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use qkdni_route_policy::{Demand, KeyNetwork, Link, PreparedNetwork, RoutePolicy};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::quantum::link_model::LinkParams;

/// Mean distance between neighbouring nodes, km (one node per SPACING_KM² on average).
const SPACING_KM: f64 = 25.0;
/// Nearest neighbours each node is linked to.
const NEIGHBOURS: usize = 3;
/// One node in this many gets a long-haul link.
const LONG_HAUL_EVERY: usize = 50;
/// Fiber length over straight distance.
const ROUTE_FACTOR: f64 = 1.2;
/// Longest fiber of a link, km (the model still gives key at this length).
const MAX_LENGTH_KM: f64 = 150.0;
/// Key rate every bench query asks for, bit/s.
pub const DEMAND_RATE_BPS: f64 = 500_000.0;
/// Key every bench query asks for now, bits.
pub const DEMAND_BITS: f64 = 1_000_000.0;

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Time every route policy on a random QKD-network-like topology; prints one JSON object.
    Routing(RoutingArgs),
    /// Time cross-domain key delivery and agreed reroutes on the two-domain testbed; prints
    /// one JSON object.
    Interworking(crate::bench_interworking::InterworkingArgs),
    /// Delivered key rate as a fraction of the min-cut, one way and two ways, for `shortest`
    /// and `multipath` on the single-domain testbed; prints one JSON object.
    Delivery(crate::bench_delivery::DeliveryArgs),
    /// Idle CPU of a KM by pool size; prints one JSON object.
    Idle(crate::bench_idle::IdleArgs),
    /// A KM under floods of idle SSH connections and of ETSI 014 clients; prints one JSON
    /// object.
    Flood(crate::bench_flood::FloodArgs),
    /// The first key request of an SAE pair inside a domain with no session beforehand
    /// (routed and installed on demand); prints one JSON object.
    OnDemand(crate::bench_on_demand::OnDemandArgs),
    /// Keys pulled both ways across the two-domain testbed while KMs, controllers and
    /// managers are killed and links cut; every key accounted for; prints one JSON object and
    /// fails if a key was served twice, mismatched or lost.
    Chaos(crate::bench_chaos::ChaosArgs),
}

/// Arguments of `qkdni bench routing`.
#[derive(Debug, Clone, Args)]
pub struct RoutingArgs {
    /// Number of nodes (2 to 100 000 and more).
    #[arg(long)]
    pub nodes: usize,
    /// Seed of the topology and the queries.
    #[arg(long)]
    pub seed: u64,
    /// Number of random (source, destination) queries.
    #[arg(long, default_value_t = 200)]
    pub queries: usize,
    /// Policies to time, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    pub policies: Vec<String>,
    /// Also write the graph and queries as networkx node-link JSON to this file.
    #[arg(long)]
    pub export: Option<PathBuf>,
    /// Do not call each policy's `prepare` (landmarks) before timing it: the policies then
    /// build what they need during the timed queries, once these pay for it.
    #[arg(long)]
    pub no_prepare: bool,
}

/// A generated topology and its queries (node indices into `network.nodes`).
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// The network, with nodes `n0`, `n1`, ... and links `l0`, `l1`, ...
    pub network: KeyNetwork,
    /// (source, destination) pairs, distinct ends.
    pub queries: Vec<(usize, usize)>,
}

/// Timing of one policy over the queries.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyTiming {
    /// Median time per query, µs.
    pub median_us: f64,
    /// 99th percentile time per query, µs.
    pub p99_us: f64,
    /// Queries the policy found a route for.
    pub routed: usize,
    /// Time of the policy's `RoutePolicy::prepare` on the prepared graph (e.g. landmark
    /// distances; once, before the queries; 0 with `--no-prepare`), µs.
    pub prepare_us: f64,
}

/// The outcome of a routing bench.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingReport {
    /// Nodes of the topology.
    pub nodes: usize,
    /// Links of the topology.
    pub edges: usize,
    /// Queries answered by each policy.
    pub queries: usize,
    /// Time to turn the snapshot into a graph (once, outside the per-query times), µs.
    pub prepare_us: f64,
    /// Per policy, by name.
    pub policies: BTreeMap<String, PolicyTiming>,
}

impl RoutingReport {
    /// `{"nodes":N,"edges":E,"queries":Q,"policies":{"<name>":{"median_us":..,"p99_us":..,
    /// "routed":..,"prepare_us":..}}}`.
    pub fn to_json(&self) -> Value {
        let policies: serde_json::Map<String, Value> = self
            .policies
            .iter()
            .map(|(name, t)| {
                let timing = json!({"median_us": t.median_us, "p99_us": t.p99_us,
                                    "routed": t.routed, "prepare_us": t.prepare_us});
                (name.clone(), timing)
            })
            .collect();
        json!({"nodes": self.nodes, "edges": self.edges, "queries": self.queries,
               "policies": policies})
    }
}

/// Runs a bench command: prints the report JSON on stdout, notes on stderr.
pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Routing(args) => {
            let report = routing(&args)?;
            eprintln!("graph prepared in {:.1} ms", report.prepare_us / 1000.0);
            for (name, timing) in &report.policies {
                eprintln!(
                    "{name}: routed {}/{}, prepared in {:.1} ms",
                    timing.routed,
                    report.queries,
                    timing.prepare_us / 1000.0
                );
            }
            println!("{}", report.to_json());
        }
        BenchCommand::Interworking(args) => {
            let report = crate::bench_interworking::run(&args)?;
            println!("{}", serde_json::to_string(&report)?);
        }
        BenchCommand::Delivery(args) => {
            let report = crate::bench_delivery::run(&args)?;
            println!("{}", serde_json::to_string(&report)?);
        }
        BenchCommand::Idle(args) => {
            let report = crate::bench_idle::run(&args)?;
            println!("{}", serde_json::to_string(&report)?);
        }
        BenchCommand::Flood(args) => {
            let report = crate::bench_flood::run(&args)?;
            println!("{}", serde_json::to_string(&report)?);
        }
        BenchCommand::OnDemand(args) => {
            let report = crate::bench_on_demand::run(&args)?;
            println!("{}", serde_json::to_string(&report)?);
        }
        BenchCommand::Chaos(args) => {
            let report = crate::bench_chaos::run(&args)?;
            println!("{}", serde_json::to_string(&report)?);
            if report.failed() {
                bail!(
                    "{} keys served twice, {} with reused material, {} mismatched, {} lost",
                    report.served_twice,
                    report.key_material_reused,
                    report.mismatched,
                    report.lost
                );
            }
        }
    }
    Ok(())
}

/// Generates the workload, writes the export if asked, and times the policies.
pub fn routing(args: &RoutingArgs) -> anyhow::Result<RoutingReport> {
    let names: Vec<String> = if args.policies.is_empty() {
        qkdni_routing::NAMES.iter().map(|s| s.to_string()).collect()
    } else {
        args.policies.clone()
    };
    let policies = names
        .iter()
        .map(|name| {
            qkdni_routing::by_name(name).with_context(|| {
                format!(
                    "unknown policy {name:?} (known: {:?})",
                    qkdni_routing::NAMES
                )
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let workload = generate(args.nodes, args.queries, args.seed)?;
    if let Some(path) = &args.export {
        let file = std::fs::File::create(path).with_context(|| format!("{}", path.display()))?;
        serde_json::to_writer(std::io::BufWriter::new(file), &node_link_json(&workload))?;
    }
    let started = Instant::now();
    let prepared = PreparedNetwork::new(&workload.network)?;
    let prepare_us = started.elapsed().as_secs_f64() * 1e6;
    let net = &workload.network;
    let demands: Vec<Demand> = workload
        .queries
        .iter()
        .map(|&(s, d)| Demand::new(&net.nodes[s], &net.nodes[d], DEMAND_RATE_BPS, DEMAND_BITS))
        .collect();
    let policies = policies
        .iter()
        .map(|policy| {
            let started = Instant::now();
            if let (false, Some(demand)) = (args.no_prepare, demands.first()) {
                // Every query asks for the same rate and bits.
                policy.prepare(&prepared, demand);
            }
            let prepare_us = started.elapsed().as_secs_f64() * 1e6;
            let timing = time_policy(&**policy, &prepared, &demands);
            (
                policy.name().to_string(),
                PolicyTiming {
                    prepare_us: (prepare_us * 10.0).round() / 10.0,
                    ..timing
                },
            )
        })
        .collect();
    Ok(RoutingReport {
        nodes: net.nodes.len(),
        edges: net.links.len(),
        queries: demands.len(),
        prepare_us,
        policies,
    })
}

fn time_policy(
    policy: &dyn RoutePolicy,
    net: &PreparedNetwork,
    demands: &[Demand],
) -> PolicyTiming {
    let mut times = Vec::with_capacity(demands.len());
    let mut routed = 0;
    for demand in demands {
        let started = Instant::now();
        let plan = policy.route_prepared(net, demand);
        times.push(started.elapsed().as_secs_f64() * 1e6);
        routed += usize::from(std::hint::black_box(plan).is_ok());
    }
    times.sort_by(f64::total_cmp);
    // Nearest-rank percentile, rounded to 0.1 µs.
    let percentile = |p: f64| {
        let rank = ((p * times.len() as f64).ceil() as usize).clamp(1, times.len().max(1));
        times
            .get(rank - 1)
            .map_or(0.0, |t| (t * 10.0).round() / 10.0)
    };
    PolicyTiming {
        median_us: percentile(0.5),
        p99_us: percentile(0.99),
        routed,
        prepare_us: 0.0,
    }
}

/// The workload in networkx node-link form (`networkx.node_link_graph(data, edges="links")`).
pub fn node_link_json(workload: &Workload) -> Value {
    let net = &workload.network;
    let queries: Vec<[&str; 2]> = workload
        .queries
        .iter()
        .map(|&(s, d)| [net.nodes[s].as_str(), net.nodes[d].as_str()])
        .collect();
    let nodes: Vec<Value> = net.nodes.iter().map(|id| json!({"id": id})).collect();
    let links: Vec<Value> = net
        .links
        .iter()
        .map(|l| {
            json!({"source": l.a, "target": l.b, "id": l.id, "weight": l.cost(),
                   "key_rate_bps": l.key_rate_bps, "available_bits": l.available_bits})
        })
        .collect();
    json!({"directed": false, "multigraph": false, "graph": {"queries": queries},
           "nodes": nodes, "links": links})
}

/// Generates the topology (see the module documentation) and `queries` random queries.
pub fn generate(nodes: usize, queries: usize, seed: u64) -> anyhow::Result<Workload> {
    if !(2..u32::MAX as usize).contains(&nodes) {
        bail!("--nodes must be at least 2");
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let side = (nodes as f64).sqrt() * SPACING_KM;
    let points: Vec<(f64, f64)> = (0..nodes)
        .map(|_| (rng.gen_range(0.0..side), rng.gen_range(0.0..side)))
        .collect();
    let grid = Grid::new(&points, side);
    let mut pairs = Vec::with_capacity(nodes * NEIGHBOURS + nodes / LONG_HAUL_EVERY);
    for (i, &p) in points.iter().enumerate() {
        for j in grid.nearest(p, NEIGHBOURS, |j| j == i) {
            pairs.push((i.min(j), i.max(j)));
        }
    }
    for _ in 0..nodes / LONG_HAUL_EVERY {
        let i = rng.gen_range(0..nodes);
        let angle = rng.gen_range(0.0..std::f64::consts::TAU);
        let reach = rng.gen_range(80.0..150.0) / ROUTE_FACTOR;
        let (x, y) = points[i];
        let target = (
            (x + reach * angle.cos()).clamp(0.0, side),
            (y + reach * angle.sin()).clamp(0.0, side),
        );
        if let Some(&j) = grid.nearest(target, 1, |j| j == i).first() {
            pairs.push((i.min(j), i.max(j)));
        }
    }
    pairs.sort_unstable();
    pairs.dedup();
    connect(&points, &grid, &mut pairs);

    let mut network = KeyNetwork::new();
    network.nodes = (0..nodes).map(|i| format!("n{i}")).collect();
    let mut rates: HashMap<u64, f64> = HashMap::new();
    for (k, &(i, j)) in pairs.iter().enumerate() {
        let (dx, dy) = (points[i].0 - points[j].0, points[i].1 - points[j].1);
        let length = (dx.hypot(dy) * ROUTE_FACTOR).clamp(1.0, MAX_LENGTH_KM);
        let decimetres = (length * 10.0).round() as u64;
        let length_km = decimetres as f64 / 10.0;
        let rate = *rates.entry(decimetres).or_insert_with(|| {
            let params = LinkParams {
                length_km,
                ..Default::default()
            };
            params.evaluate().map_or(0.0, |p| p.secret_key_rate_bps)
        });
        let mut link = Link::new(format!("l{k}"), format!("n{i}"), format!("n{j}"), rate);
        link.weight = Some(length_km);
        link.available_bits = (rng.gen_range(0.0..600.0) * rate).floor();
        network.add_link(link);
    }
    let queries = (0..queries)
        .map(|_| {
            let src = rng.gen_range(0..nodes);
            let dst = (src + rng.gen_range(1..nodes)) % nodes;
            (src, dst)
        })
        .collect();
    Ok(Workload { network, queries })
}

/// Adds links until `pairs` connects every node: each component but the largest gets a link
/// from its node closest to another component, repeated until one component is left.
fn connect(points: &[(f64, f64)], grid: &Grid, pairs: &mut Vec<(usize, usize)>) {
    loop {
        let label = components(points.len(), pairs);
        let mut members: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (node, &c) in label.iter().enumerate() {
            members.entry(c).or_default().push(node);
        }
        if members.len() == 1 {
            return;
        }
        let largest = *members
            .iter()
            .max_by_key(|(c, m)| (m.len(), **c))
            .unwrap()
            .0;
        for (c, nodes) in members.iter().filter(|(c, _)| **c != largest) {
            let closest = nodes
                .iter()
                .filter_map(|&i| {
                    let j = *grid.nearest(points[i], 1, |j| label[j] == *c).first()?;
                    let (dx, dy) = (points[i].0 - points[j].0, points[i].1 - points[j].1);
                    Some((dx.hypot(dy), i, j))
                })
                .min_by(|a, b| a.0.total_cmp(&b.0));
            if let Some((_, i, j)) = closest {
                pairs.push((i.min(j), i.max(j)));
            }
        }
        pairs.sort_unstable();
        pairs.dedup();
    }
}

/// Connected component label of each node (union-find).
fn components(n: usize, pairs: &[(usize, usize)]) -> Vec<usize> {
    fn find(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    let mut parent: Vec<usize> = (0..n).collect();
    for &(a, b) in pairs {
        let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
        parent[ra.max(rb)] = ra.min(rb);
    }
    (0..n).map(|x| find(&mut parent, x)).collect()
}

/// A uniform grid over the square for nearest-neighbour queries.
struct Grid<'a> {
    points: &'a [(f64, f64)],
    cell: f64,
    size: usize,
    cells: Vec<Vec<usize>>,
}

impl<'a> Grid<'a> {
    fn new(points: &'a [(f64, f64)], side: f64) -> Self {
        let size = ((side / SPACING_KM).ceil() as usize).max(1);
        let cell = side / size as f64;
        let mut grid = Grid {
            points,
            cell,
            size,
            cells: vec![Vec::new(); size * size],
        };
        for (i, &p) in points.iter().enumerate() {
            let (x, y) = grid.cell_of(p);
            grid.cells[y * size + x].push(i);
        }
        grid
    }

    fn cell_of(&self, (x, y): (f64, f64)) -> (usize, usize) {
        let clamp = |v: f64| ((v / self.cell) as usize).min(self.size - 1);
        (clamp(x), clamp(y))
    }

    /// The (up to) `k` points nearest `p`, nearest first, leaving out those `skip` names.
    fn nearest(&self, p: (f64, f64), k: usize, skip: impl Fn(usize) -> bool) -> Vec<usize> {
        let (cx, cy) = self.cell_of(p);
        let (cx, cy) = (cx as isize, cy as isize);
        let mut best: Vec<(f64, usize)> = Vec::with_capacity(k + 1);
        for r in 0..=self.size as isize {
            // Cells on the square ring at Chebyshev distance r from p's cell.
            for y in cy - r..=cy + r {
                let step = if y == cy - r || y == cy + r {
                    1
                } else {
                    (2 * r).max(1)
                };
                for x in (cx - r..=cx + r).step_by(step as usize) {
                    if x < 0 || y < 0 || x >= self.size as isize || y >= self.size as isize {
                        continue;
                    }
                    for &i in &self.cells[y as usize * self.size + x as usize] {
                        if skip(i) {
                            continue;
                        }
                        let (dx, dy) = (self.points[i].0 - p.0, self.points[i].1 - p.1);
                        let d = dx.hypot(dy);
                        if best.len() < k || d < best[k - 1].0 {
                            let at = best.partition_point(|&(e, j)| (e, j) < (d, i));
                            best.insert(at, (d, i));
                            best.truncate(k);
                        }
                    }
                }
            }
            // Every point within r cells of p has been seen.
            if best.len() == k && best[k - 1].0 <= r as f64 * self.cell {
                break;
            }
        }
        best.into_iter().map(|(_, i)| i).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_is_reproducible_and_connected() {
        let a = generate(500, 30, 7).unwrap();
        let b = generate(500, 30, 7).unwrap();
        assert_eq!(
            node_link_json(&a).to_string(),
            node_link_json(&b).to_string()
        );
        assert_ne!(a, generate(500, 30, 8).unwrap());
        let pairs: Vec<(usize, usize)> = a
            .network
            .links
            .iter()
            .map(|l| (l.a[1..].parse().unwrap(), l.b[1..].parse().unwrap()))
            .collect();
        assert!(components(500, &pairs).iter().all(|&c| c == 0));
        let degree = 2.0 * a.network.links.len() as f64 / 500.0;
        assert!((3.0..6.0).contains(&degree), "mean degree {degree}");
        assert!(a.network.links.iter().all(|l| l.key_rate_bps > 0.0));
        assert!(a
            .queries
            .iter()
            .all(|(s, d)| s != d && *s < 500 && *d < 500));
    }

    #[test]
    fn grid_nearest_matches_brute_force() {
        let mut rng = StdRng::seed_from_u64(1);
        let points: Vec<(f64, f64)> = (0..300)
            .map(|_| (rng.gen_range(0.0..100.0), rng.gen_range(0.0..100.0)))
            .collect();
        let grid = Grid::new(&points, 100.0);
        for (i, &p) in points.iter().enumerate() {
            let mut all: Vec<(f64, usize)> = (0..points.len())
                .filter(|&j| j != i)
                .map(|j| ((points[j].0 - p.0).hypot(points[j].1 - p.1), j))
                .collect();
            all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let expected: Vec<usize> = all.iter().take(4).map(|&(_, j)| j).collect();
            assert_eq!(grid.nearest(p, 4, |j| j == i), expected);
        }
    }

    #[test]
    fn routing_bench_at_small_size() {
        let export = std::env::temp_dir().join(format!("qkdni-bench-{}.json", std::process::id()));
        let args = RoutingArgs {
            nodes: 200,
            seed: 1,
            queries: 25,
            policies: vec![],
            export: Some(export.clone()),
            no_prepare: false,
        };
        let report = routing(&args).unwrap();
        let value = report.to_json();
        assert_eq!(value["nodes"], 200);
        assert_eq!(value["queries"], 25);
        assert_eq!(value["edges"].as_u64().unwrap() as usize, report.edges);
        for name in qkdni_routing::NAMES {
            let timing = &value["policies"][*name];
            assert!(timing["median_us"].as_f64().unwrap() <= timing["p99_us"].as_f64().unwrap());
            assert!(timing["prepare_us"].as_f64().unwrap() >= 0.0);
            assert!(timing["routed"].as_u64().unwrap() <= 25);
        }
        assert_eq!(report.policies["shortest"].routed, 25);
        assert_eq!(report.policies["fewest-hops"].routed, 25);
        assert_eq!(report.policies["multipath"].routed, 25);
        let exported: Value = serde_json::from_slice(&std::fs::read(&export).unwrap()).unwrap();
        std::fs::remove_file(&export).unwrap();
        assert_eq!(exported["nodes"].as_array().unwrap().len(), 200);
        assert_eq!(exported["links"].as_array().unwrap().len(), report.edges);
        assert_eq!(exported["graph"]["queries"].as_array().unwrap().len(), 25);
        assert!(exported["links"][0]["weight"].as_f64().unwrap() >= 1.0);

        let unknown = RoutingArgs {
            policies: vec!["nope".into()],
            export: None,
            ..args
        };
        assert!(routing(&unknown).is_err());
    }
}
