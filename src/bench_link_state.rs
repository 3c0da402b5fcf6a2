//! `qkdni bench link-state`: the distributed control's link-state protocol
//! ([`crate::control::link_state`]) run by every node of an in-memory domain, driven the way
//! a KM's local controller drives it ([`crate::km::local_control`]): each node's `update`
//! is called at once when one of its links changes and every second besides (each node's
//! second at its own random phase, as KMs started at different times).
//!
//! The topology is a ring of metro rings: rings of [`METRO_RING`] nodes (the last one may be
//! smaller); adjacent rings are joined twice, by their nodes 0 and by their nodes 2 (each
//! metro ring dual-homed on the backbone); with 4 rings or more, node 1 of each ring of the
//! first half has a long-haul chord to node 1 of the opposite ring. 50 nodes make 10 rings and
//! 75 links: mean degree 3.0.
//!
//! Measured:
//! - cold start: every node updates at once with an empty database; the time until every
//!   database holds every node's advertisement and all agree;
//! - link faults: `--faults` times a random link whose loss does not split the domain goes
//!   down, then back up. For each change, from the moment its two ends report it (their
//!   `update`) until every node's digest is equal and holds both ends' new advertisements
//!   (wall clock, `Instant`); the largest `installed_ms - originated_ms` of those two
//!   advertisements over all nodes (the databases' own record, millisecond resolution); and
//!   the CPU time the process spent meanwhile. All nodes share this machine's cores, so the
//!   times are bound by the CPU of every node's work (each installs the advertisement and
//!   recomputes its routes before flooding it on), not by one path through the domain;
//! - rest: once converged with no change, the floods every node sent over `--rest-seconds`
//!   ([`Stats`](crate::control::link_state::Stats): messages and JSON bytes), per link and
//!   per node and second, and per advertisement originated (refreshes every 30 s);
//! - the transport: floods go through memory, serialized to JSON and back, as
//!   [`Mesh`] does. With `--https-floods`, the advertisement of a node of median degree is
//!   also flooded through the project's HTTPS listener with mutual TLS on loopback (the KMA's
//!   transport, a handler calling `receive` as the KMA's does): its round trip on an open
//!   connection and on a new one, and its bytes on the wire (through a counting TCP relay).
//!
//! Wall clock throughout (no paused time): the protocol stamps advertisements with the
//! system clock. The defaults take about 1.5 minutes (65 s of them at rest). A quick run
//! (the unit test makes the same with 10 HTTPS floods):
//! `qkdni bench link-state --nodes 10 --faults 3 --rest-seconds 2` (about 6 s).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::control::link_state::database::Database;
use crate::control::link_state::lsa::now_ms;
use crate::control::link_state::memory::{locals, Mesh};
use crate::control::link_state::{routes, Flood, LinkState, Local, Lsa};
use crate::https::{ErrorStyle, HttpLimits};
use crate::pki::{Authority, Role};
use crate::tls::{self, PeerIdentity, TlsFiles};

/// Nodes of a metro ring.
pub const METRO_RING: usize = 5;
/// Route computations timed.
const ROUTE_RUNS: usize = 50;
/// Pause after each converged change before the next (answers and onward floods drain).
const SETTLE: Duration = Duration::from_millis(500);
/// Longest wait for the databases to agree.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(20);
/// What the in-memory transport is, as printed.
const TRANSPORT: &str = "in memory: every flood serialized to JSON and back within one process \
                         (no network, no TLS, no HTTP)";

/// Arguments of `qkdni bench link-state`.
#[derive(Debug, Clone, Args)]
pub struct LinkStateArgs {
    /// Nodes of the domain (at least 3).
    #[arg(long, default_value_t = 50)]
    pub nodes: usize,
    /// Link faults: each a random link taken down, then back up.
    #[arg(long, default_value_t = 20)]
    pub faults: usize,
    /// Seconds of flooding measured at rest, after convergence (30 s or more to see the
    /// periodic refreshes; 65 s covers two).
    #[arg(long, default_value_t = 65)]
    pub rest_seconds: u64,
    /// Seed of the faulted links and of the nodes' tick phases.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Route policy every node runs.
    #[arg(long, default_value = "fewest-hops")]
    pub policy: String,
    /// Floods sent over HTTPS with mutual TLS on loopback to time one there (0: skip).
    #[arg(long, default_value_t = 200)]
    pub https_floods: usize,
    /// Print one JSON object instead of the figures.
    #[arg(long)]
    pub json: bool,
}

/// What `qkdni bench link-state` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub topology: Topology,
    pub policy: String,
    /// How floods travel between the nodes.
    pub transport: &'static str,
    /// From every node's first update to every database complete and equal, ms.
    pub cold_start_ms: f64,
    /// One route computation at a node (database -> network -> the policy toward every
    /// other node), which a node runs on every advertisement it installs, before flooding
    /// it on, µs.
    pub route_computation_us: Summary,
    /// Faults injected (each one change down and one up).
    pub faults: usize,
    /// A link going down.
    pub link_down: ChangeFigures,
    /// The same link back up (with the database exchange over it).
    pub link_up: ChangeFigures,
    pub rest: Rest,
    /// One flood over HTTPS with mutual TLS (`None` with `--https-floods 0`).
    pub https: Option<HttpsFlood>,
}

/// The domain.
#[derive(Debug, Clone, Serialize)]
pub struct Topology {
    pub shape: String,
    pub nodes: usize,
    pub links: usize,
    pub mean_degree: f64,
    /// Longest shortest path, hops.
    pub diameter: usize,
}

/// Convergence after one kind of change, over the faults.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeFigures {
    /// From the ends' `update` to every digest equal with both new advertisements (wall
    /// clock, as observed by the bench).
    pub converged_ms: Summary,
    /// Largest `installed_ms - originated_ms` of the two new advertisements over all nodes.
    pub arrival_ms: Summary,
    /// CPU time of the whole process (every node, the runtime, the bench's check) over the
    /// same span as `converged_ms`, ms.
    pub cpu_ms: Summary,
}

/// Median, 90th percentile and maximum.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Summary {
    pub median: f64,
    pub p90: f64,
    pub max: f64,
}

/// Flooding at rest.
#[derive(Debug, Clone, Serialize)]
pub struct Rest {
    /// Length of the window, s.
    pub seconds: f64,
    /// Floods sent by all nodes in the window, and their JSON bytes (answers not counted:
    /// a plain flood is answered `{"lsas":[],"exchange":false}` unless the receiver holds
    /// newer).
    pub floods: u64,
    pub bytes: u64,
    /// Advertisements originated in the window (refreshes).
    pub originated: u64,
    /// Floods a neighbour did not take.
    pub floods_failed: u64,
    /// Per link (both directions together) and second.
    pub per_link_per_s: Rate,
    /// Sent by one node per second (mean over nodes).
    pub per_node_per_s: Rate,
    /// Per advertisement originated: the floods that carry it to every node.
    pub per_origination: Option<Rate>,
    /// Whether every database still agreed at the end.
    pub converged: bool,
}

/// Messages and bytes.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Rate {
    pub messages: f64,
    pub bytes: f64,
}

/// One flood over HTTPS with mutual TLS on loopback, against the same flood in memory.
#[derive(Debug, Clone, Serialize)]
pub struct HttpsFlood {
    /// Links of the advertisement flooded, and the flood's JSON size.
    pub lsa_links: usize,
    pub json_bytes: usize,
    /// Floods timed.
    pub floods: usize,
    /// In memory: JSON out and back, `receive`, answer JSON out and back, µs.
    pub in_memory_us: Summary,
    /// POST and answer on an open connection, µs.
    pub https_us: Summary,
    /// The first flood, on a new connection (TCP and TLS handshakes), ms.
    pub new_connection_ms: f64,
    /// Bytes on the wire per flood on an open connection, both directions (TLS records,
    /// HTTP heads, the JSON bodies of the flood and its answer).
    pub wire_bytes_per_flood: f64,
    /// Bytes of opening and closing a connection (TLS handshake with both certificates).
    pub connection_bytes: f64,
}

/// The bench's topology: (link id, one end, other end), and its description.
pub fn ring_of_rings(nodes: usize) -> (Vec<(String, String, String)>, String) {
    let rings = nodes.div_ceil(METRO_RING);
    let size = |r: usize| METRO_RING.min(nodes - r * METRO_RING);
    // node j of ring r (j taken modulo the ring's size: a short last ring)
    let node = |r: usize, j: usize| format!("r{r}n{}", j % size(r));
    let mut pairs: Vec<(String, String)> = Vec::new();
    for r in 0..rings {
        for j in 0..size(r) {
            pairs.push((node(r, j), node(r, j + 1)));
        }
    }
    if rings >= 2 {
        for r in 0..rings {
            let next = (r + 1) % rings;
            pairs.push((node(r, 0), node(next, 0)));
            pairs.push((node(r, 2), node(next, 2)));
        }
    }
    if rings >= 4 {
        for r in 0..rings / 2 {
            pairs.push((node(r, 1), node(r + rings / 2, 1)));
        }
    }
    let mut seen = BTreeSet::new();
    let mut links = Vec::new();
    for (a, b) in pairs {
        let key = if a < b {
            (a.clone(), b.clone())
        } else {
            (b.clone(), a.clone())
        };
        if a != b && seen.insert(key) {
            links.push((format!("{a}~{b}"), a, b));
        }
    }
    let shape = format!(
        "ring of {rings} metro rings of up to {METRO_RING} nodes, adjacent rings joined twice \
         (nodes 0 and 2){}",
        if rings >= 4 {
            ", a long-haul chord from node 1 of each ring to the opposite ring's"
        } else {
            ""
        }
    );
    (links, shape)
}

/// Hops from `from` to every node over `links` but `skip`.
fn hops_from(
    links: &[(String, String, String)],
    from: &str,
    skip: Option<&str>,
) -> BTreeMap<String, usize> {
    let mut adjacent: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (id, a, b) in links {
        if Some(id.as_str()) != skip {
            adjacent.entry(a).or_default().push(b);
            adjacent.entry(b).or_default().push(a);
        }
    }
    let mut hops = BTreeMap::from([(from.to_owned(), 0)]);
    let mut queue = VecDeque::from([from.to_owned()]);
    while let Some(n) = queue.pop_front() {
        let h = hops[&n];
        for next in adjacent.get(n.as_str()).into_iter().flatten() {
            if !hops.contains_key(*next) {
                hops.insert((*next).to_owned(), h + 1);
                queue.push_back((*next).to_owned());
            }
        }
    }
    hops
}

fn describe(links: &[(String, String, String)], shape: String) -> Topology {
    let names: BTreeSet<&str> = links
        .iter()
        .flat_map(|(_, a, b)| [a.as_str(), b.as_str()])
        .collect();
    let diameter = names
        .iter()
        .filter_map(|n| hops_from(links, n, None).into_values().max())
        .max()
        .unwrap_or(0);
    Topology {
        shape,
        nodes: names.len(),
        links: links.len(),
        mean_degree: 2.0 * links.len() as f64 / names.len().max(1) as f64,
        diameter,
    }
}

/// The nodes of the domain and what each knows of its own links.
struct Domain {
    nodes: BTreeMap<String, Arc<LinkState>>,
    /// Every node's links, all up.
    base: BTreeMap<String, Local>,
    /// Links down now. Held while a node takes its view, so that a tick never reports a
    /// link's state from before a change the ends already reported.
    down: Mutex<BTreeSet<String>>,
}

impl Domain {
    fn down(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.down.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn view(&self, node: &str, down: &BTreeSet<String>) -> Local {
        let mut local = self.base[node].clone();
        for link in &mut local.links {
            link.up = !down.contains(&link.id);
        }
        local
    }

    /// A node's KM's one-second tick.
    fn tick(&self, node: &str) {
        let down = self.down();
        self.nodes[node].update(self.view(node, &down));
    }

    /// Every node updates (a domain starting together).
    fn update_all(&self) {
        let down = self.down();
        for (name, node) in &self.nodes {
            node.update(self.view(name, &down));
        }
    }

    /// Link `id` goes down or up: both ends see it at once and update.
    fn set_link(&self, id: &str, ends: [&str; 2], up: bool) {
        let mut down = self.down();
        if up {
            down.remove(id);
        } else {
            down.insert(id.to_owned());
        }
        for end in ends {
            self.nodes[end].update(self.view(end, &down));
        }
    }

    /// The sequence number of `node`'s own advertisement as it holds it.
    fn own_seq(&self, node: &str) -> u64 {
        self.nodes[node]
            .digest()
            .into_iter()
            .find(|(origin, _)| origin == node)
            .map_or(0, |(_, seq)| seq)
    }

    /// Whether every database is complete, equal, and holds `want` (origin, at least seq).
    fn agreed(&self, want: &[(&str, u64)]) -> bool {
        let mut first: Option<Vec<(String, u64)>> = None;
        for node in self.nodes.values() {
            let digest = node.digest();
            // the cheap test first: the check runs on every change of any node
            let holds =
                |(origin, seq): &(&str, u64)| digest.iter().any(|(o, s)| o == origin && s >= seq);
            if digest.len() != self.nodes.len() || !want.iter().all(holds) {
                return false;
            }
            match &first {
                Some(first) if *first != digest => return false,
                Some(_) => {}
                None => first = Some(digest),
            }
        }
        true
    }

    /// Waits until [`Self::agreed`]; the time since `since`.
    async fn converged(
        &self,
        changes: &Notify,
        want: &[(&str, u64)],
        since: Instant,
    ) -> anyhow::Result<Duration> {
        loop {
            if self.agreed(want) {
                return Ok(since.elapsed());
            }
            if since.elapsed() > CONVERGE_TIMEOUT {
                bail!("the databases did not agree within {CONVERGE_TIMEOUT:?} ({want:?})");
            }
            // woken by any node's change; the timeout only as a backstop
            let _ = tokio::time::timeout(Duration::from_millis(5), changes.notified()).await;
        }
    }

    /// The largest `installed_ms - originated_ms` of the advertisements `want` (exactly
    /// those) at the nodes that received them.
    fn arrival_ms(&self, want: &[(&str, u64)]) -> u64 {
        self.nodes
            .values()
            .flat_map(|node| node.database())
            .filter(|e| e.from.is_some())
            .filter(|e| want.contains(&(e.lsa.origin.as_str(), e.lsa.seq)))
            .map(|e| e.installed_ms.saturating_sub(e.lsa.originated_ms))
            .max()
            .unwrap_or(0)
    }

    /// (floods sent, bytes, originated, failed) summed over the nodes.
    fn totals(&self) -> [u64; 4] {
        self.nodes.values().fold([0; 4], |t, node| {
            let s = node.stats();
            [
                t[0] + s.floods_sent,
                t[1] + s.bytes_sent,
                t[2] + s.originated,
                t[3] + s.floods_failed,
            ]
        })
    }
}

/// CPU time (user and system) of this process so far.
fn cpu_time() -> anyhow::Result<Duration> {
    use nix::sys::resource::{getrusage, UsageWho};
    let usage = getrusage(UsageWho::RUSAGE_SELF)?;
    let micros = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    Ok(micros(usage.user_time()) + micros(usage.system_time()))
}

/// Nearest-rank percentile `p` (0..=1) of `samples`.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn summary(mut samples: Vec<f64>) -> Summary {
    samples.sort_by(f64::total_cmp);
    Summary {
        median: percentile(&samples, 0.5),
        p90: percentile(&samples, 0.9),
        max: samples.last().copied().unwrap_or(0.0),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs the benchmark and prints its figures (or one JSON object with `--json`).
pub fn run(args: &LinkStateArgs) -> anyhow::Result<Report> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(measure(args))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print(&report);
    }
    Ok(report)
}

/// The benchmark itself, on the caller's runtime.
pub async fn measure(args: &LinkStateArgs) -> anyhow::Result<Report> {
    if args.nodes < 3 {
        bail!("--nodes must be at least 3");
    }
    let (links, shape) = ring_of_rings(args.nodes);
    let topology = describe(&links, shape);
    // `Mesh::node` panics on an unknown policy: refuse it here
    qkdni_routing::CATALOG
        .policy(&args.policy)
        .map_err(anyhow::Error::msg)?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mesh = Arc::new(Mesh::default());
    let base = locals(&links, &[]);
    let nodes = base
        .keys()
        .map(|name| {
            let node = mesh.node(name, qkdni_routing::CATALOG, &args.policy);
            (name.clone(), node)
        })
        .collect();
    let domain = Arc::new(Domain {
        nodes,
        base,
        down: Mutex::new(BTreeSet::new()),
    });

    // every change of any node wakes the convergence check
    let changes = Arc::new(Notify::new());
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    for node in domain.nodes.values() {
        let mut watch = node.changes();
        let changes = changes.clone();
        tasks.push(tokio::spawn(async move {
            while watch.changed().await.is_ok() {
                changes.notify_one();
            }
        }));
    }

    let started = Instant::now();
    domain.update_all();
    for name in domain.nodes.keys() {
        let phase = Duration::from_millis(rng.gen_range(1..1000));
        let domain = domain.clone();
        let name = name.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + phase,
                Duration::from_secs(1),
            );
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                domain.tick(&name);
            }
        }));
    }
    let result = faults_and_rest(args, &domain, &links, &changes, &mut rng, started).await;
    for task in &tasks {
        task.abort();
    }
    let (cold_start_ms, route_computation_us, link_down, link_up, rest, sample) = result?;
    let https = if args.https_floods > 0 {
        Some(https_flood(sample, args.https_floods).await?)
    } else {
        None
    };
    Ok(Report {
        topology,
        policy: args.policy.clone(),
        transport: TRANSPORT,
        cold_start_ms,
        route_computation_us,
        faults: args.faults,
        link_down,
        link_up,
        rest,
        https,
    })
}

type Phases = (f64, Summary, ChangeFigures, ChangeFigures, Rest, Lsa);

async fn faults_and_rest(
    args: &LinkStateArgs,
    domain: &Domain,
    links: &[(String, String, String)],
    changes: &Notify,
    rng: &mut StdRng,
    started: Instant,
) -> anyhow::Result<Phases> {
    let cold_start = domain.converged(changes, &[], started).await?;
    tokio::time::sleep(SETTLE).await;

    // links whose loss leaves the domain connected
    let candidates: Vec<&(String, String, String)> = links
        .iter()
        .filter(|(id, a, _)| hops_from(links, a, Some(id)).len() == domain.nodes.len())
        .collect();
    if candidates.is_empty() && args.faults > 0 {
        bail!("every link of this topology is a bridge");
    }
    // per change: converged, arrival, CPU (ms); down first
    let mut samples: [[Vec<f64>; 3]; 2] = Default::default();
    for _ in 0..args.faults {
        let (id, a, b) = candidates[rng.gen_range(0..candidates.len())];
        for up in [false, true] {
            let cpu = cpu_time()?;
            let t0 = Instant::now();
            domain.set_link(id, [a, b], up);
            let want = [
                (a.as_str(), domain.own_seq(a)),
                (b.as_str(), domain.own_seq(b)),
            ];
            let took = domain.converged(changes, &want, t0).await?;
            let cpu = cpu_time()?.saturating_sub(cpu);
            let [converged, arrival, cpu_ms] = &mut samples[usize::from(up)];
            converged.push(ms(took));
            arrival.push(domain.arrival_ms(&want) as f64);
            cpu_ms.push(ms(cpu));
            tokio::time::sleep(SETTLE).await;
        }
    }
    let [down, up] = samples;
    let figures = |[converged, arrival, cpu]: [Vec<f64>; 3]| ChangeFigures {
        converged_ms: summary(converged),
        arrival_ms: summary(arrival),
        cpu_ms: summary(cpu),
    };

    let before = domain.totals();
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.rest_seconds)).await;
    let after = domain.totals();
    let seconds = window.elapsed().as_secs_f64();
    let [floods, bytes, originated, floods_failed] =
        [0, 1, 2, 3].map(|i| after[i].saturating_sub(before[i]));
    let per = |count: f64| Rate {
        messages: floods as f64 / count,
        bytes: bytes as f64 / count,
    };
    let rest = Rest {
        seconds,
        floods,
        bytes,
        originated,
        floods_failed,
        per_link_per_s: per(links.len() as f64 * seconds),
        per_node_per_s: per(domain.nodes.len() as f64 * seconds),
        per_origination: (originated > 0).then(|| per(originated as f64)),
        converged: domain.agreed(&[]),
    };

    // one route computation, as a node runs it on each advertisement it installs
    let node = domain.nodes.values().next().context("no node")?;
    let mut db = Database::default();
    for entry in node.database() {
        db.consider(entry.lsa, entry.from.as_deref(), now_ms());
    }
    let policy = qkdni_routing::CATALOG
        .policy(&args.policy)
        .map_err(anyhow::Error::msg)?;
    let mut computations = Vec::new();
    for _ in 0..ROUTE_RUNS {
        let t = Instant::now();
        let routes = routes::compute(node.own(), &db.network(), policy.as_ref());
        computations.push(t.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(routes);
    }

    // the advertisement of a node of median degree, for the HTTPS flood
    let mut by_degree: Vec<&Local> = domain.base.values().collect();
    by_degree.sort_by_key(|l| l.links.len());
    let median = &by_degree[by_degree.len() / 2];
    let sample = domain
        .nodes
        .values()
        .next()
        .context("no node")?
        .database()
        .into_iter()
        .map(|e| e.lsa)
        .find(|lsa| lsa.links.len() == median.links.len())
        .context("no advertisement")?;
    Ok((
        ms(cold_start),
        summary(computations),
        figures(down),
        figures(up),
        rest,
        sample,
    ))
}

/// The KMA's link-state handler, reduced to what the transport costs: the caller must have
/// presented a certificate of the domain.
async fn flood_handler(
    State(node): State<Arc<LinkState>>,
    Extension(identity): Extension<PeerIdentity>,
    Json(flood): Json<Flood>,
) -> Response {
    let Some(sender) = identity.0 else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    Json(node.receive(&sender, flood)).into_response()
}

/// A TCP relay to a server that counts the bytes of each connection through it.
struct Relay {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
    /// Bytes (both directions) of each connection closed.
    closed: Arc<Mutex<Vec<u64>>>,
    task: JoinHandle<()>,
}

impl Relay {
    async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let open = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(Mutex::new(Vec::new()));
        let (o, c) = (open.clone(), closed.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                o.fetch_add(1, Ordering::SeqCst);
                let (o, c) = (o.clone(), c.clone());
                tokio::spawn(async move {
                    let bytes = match TcpStream::connect(target).await {
                        Ok(mut outbound) => {
                            tokio::io::copy_bidirectional(&mut inbound, &mut outbound)
                                .await
                                .map_or(0, |(up, down)| up + down)
                        }
                        Err(_) => 0,
                    };
                    c.lock().unwrap_or_else(|p| p.into_inner()).push(bytes);
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Ok(Self {
            addr,
            open,
            closed,
            task,
        })
    }

    /// Waits until every connection has closed; their bytes.
    async fn drain(&self) -> anyhow::Result<Vec<u64>> {
        let since = Instant::now();
        while self.open.load(Ordering::SeqCst) > 0 {
            if since.elapsed() > Duration::from_secs(5) {
                bail!("a relayed connection did not close");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(std::mem::take(
            &mut *self.closed.lock().unwrap_or_else(|p| p.into_inner()),
        ))
    }
}

/// `lsa` flooded again and again (each a newer copy, so that the receiver installs it).
struct Floods(Lsa);

impl Floods {
    fn next(&mut self) -> Flood {
        self.0.seq += 1;
        self.0.originated_ms = now_ms();
        Flood {
            lsas: vec![self.0.clone()],
            exchange: false,
        }
    }
}

async fn https_flood(sample: Lsa, count: usize) -> anyhow::Result<HttpsFlood> {
    let dir = std::env::temp_dir().join(format!(
        "qkdni-bench-link-state-{}-{}",
        std::process::id(),
        now_ms()
    ));
    std::fs::create_dir_all(&dir)?;
    let result = https_flood_in(&dir, sample, count).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn https_flood_in(
    dir: &std::path::Path,
    sample: Lsa,
    count: usize,
) -> anyhow::Result<HttpsFlood> {
    let lsa_links = sample.links.len();
    let mut floods = Floods(sample);
    let json_bytes = serde_json::to_vec(&floods.next())?.len();

    // in memory, as `Mesh` carries it
    let mesh = Arc::new(Mesh::default());
    let node = mesh.node("km-b", qkdni_routing::CATALOG, "fewest-hops");
    let mut in_memory = Vec::new();
    for _ in 0..count {
        let flood = floods.next();
        let t = Instant::now();
        let body = serde_json::to_vec(&flood)?;
        let flood: Flood = serde_json::from_slice(&body)?;
        let answer = node.receive("km-a", flood);
        let body = serde_json::to_vec(&answer)?;
        let _: Flood = serde_json::from_slice(&body)?;
        in_memory.push(t.elapsed().as_secs_f64() * 1e6);
    }

    // over the project's HTTPS listener with mutual TLS
    let ca = Authority::new("bench-link-state")?;
    let ca_path = dir.join("ca.crt");
    std::fs::write(&ca_path, ca.cert_pem())?;
    let files = |stem: &str| -> anyhow::Result<TlsFiles> {
        let issued = ca.issue_to(dir, stem, stem, Role::Node)?;
        Ok(TlsFiles {
            cert: issued.cert,
            key: issued.key,
            ca: vec![ca_path.clone()],
            peer_cas: Vec::new(),
        })
    };
    let server_files = files("km-b")?;
    let client_files = files("km-a")?;
    let node = mesh.node("km-b-https", qkdni_routing::CATALOG, "fewest-hops");
    let router = Router::new()
        .route("/kma/v1/link-state", post(flood_handler))
        .with_state(node);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let server_addr = listener.local_addr()?;
    let server = tokio::spawn(crate::https::serve(
        listener,
        tls::server_config(&server_files)?,
        tls::Issuers::load(&server_files)?,
        router,
        HttpLimits::default(),
        ErrorStyle::Problem,
    ));
    let relay = Relay::start(server_addr).await?;
    let result = async {
        let post = |client: &reqwest::Client, addr: SocketAddr, flood: Flood| {
            let request = client
                .post(format!(
                    "https://127.0.0.1:{}/kma/v1/link-state",
                    addr.port()
                ))
                .json(&flood)
                .send();
            async move {
                let response = request.await?;
                if !response.status().is_success() {
                    bail!("the HTTPS flood was answered {}", response.status());
                }
                let _: Flood = response.json().await?;
                anyhow::Ok(())
            }
        };
        let client = tls::https_client(&client_files, Duration::from_secs(5))?;
        let t = Instant::now();
        post(&client, server_addr, floods.next()).await?;
        let new_connection_ms = ms(t.elapsed());
        let mut https = Vec::new();
        for _ in 0..count {
            // the client's pool takes the connection back just after the answer: a flood
            // sent at once might open another
            tokio::time::sleep(Duration::from_millis(1)).await;
            let flood = floods.next();
            let t = Instant::now();
            post(&client, server_addr, flood).await?;
            https.push(t.elapsed().as_secs_f64() * 1e6);
        }
        drop(client);

        // bytes: a connection with one flood, another with 1 + `more`
        let more = count.clamp(1, 50);
        let mut wire = Vec::new();
        for n in [1, 1 + more] {
            let client = tls::https_client(&client_files, Duration::from_secs(5))?;
            for _ in 0..n {
                tokio::time::sleep(Duration::from_millis(1)).await;
                post(&client, relay.addr, floods.next()).await?;
            }
            drop(client);
            let connections = relay.drain().await?;
            if connections.len() != 1 {
                bail!("{n} floods took {} connections", connections.len());
            }
            wire.push(connections[0] as f64);
        }
        let per_flood = (wire[1] - wire[0]) / more as f64;
        anyhow::Ok(HttpsFlood {
            lsa_links,
            json_bytes,
            floods: count,
            in_memory_us: summary(in_memory),
            https_us: summary(https),
            new_connection_ms,
            wire_bytes_per_flood: per_flood,
            connection_bytes: wire[0] - per_flood,
        })
    }
    .await;
    server.abort();
    relay.task.abort();
    result
}

/// The figures, for a reader.
fn print(report: &Report) {
    let t = &report.topology;
    println!(
        "link-state, {} nodes, {} links ({}; mean degree {:.1}, diameter {} hops), policy {}",
        t.nodes, t.links, t.shape, t.mean_degree, t.diameter, report.policy
    );
    println!("transport: {}", report.transport);
    println!(
        "cold start (every node's first update at once): every database complete and equal \
         after {:.1} ms",
        report.cold_start_ms
    );
    println!(
        "{} link faults, a random link down then up again; from the update of its two ends \
         until every database holds their new advertisements (all digests equal):",
        report.faults
    );
    println!("                                          median      p90      max");
    for (name, f) in [("down", &report.link_down), ("up", &report.link_up)] {
        let s = f.converged_ms;
        println!(
            "  {name:<5} converged (wall clock, ms)  {:>9.2} {:>8.2} {:>8.2}",
            s.median, s.p90, s.max
        );
        let s = f.arrival_ms;
        println!(
            "        max installed - originated (ms) {:>9.0} {:>8.0} {:>8.0}",
            s.median, s.p90, s.max
        );
        let s = f.cpu_ms;
        println!(
            "        CPU of the process meanwhile (ms) {:>7.2} {:>8.2} {:>8.2}",
            s.median, s.p90, s.max
        );
    }
    let c = report.route_computation_us;
    println!(
        "one route computation at a node (database -> network -> {} toward every other node; \
         run on every advertisement installed, before it is flooded on): {:.0} µs median, \
         {:.0} p90, {:.0} max",
        report.policy, c.median, c.p90, c.max
    );
    let r = &report.rest;
    println!(
        "at rest, {:.1} s after convergence with no change (refresh every {} s): {} floods, {} \
         bytes of JSON, {} advertisements originated, {} floods not taken, databases {}",
        r.seconds,
        crate::control::link_state::lsa::REFRESH_MS / 1000,
        r.floods,
        r.bytes,
        r.originated,
        r.floods_failed,
        if r.converged { "equal" } else { "NOT equal" }
    );
    println!(
        "  per link:  {:.2} messages/s, {:.0} bytes/s (both directions, JSON bodies; answers \
         not counted)",
        r.per_link_per_s.messages, r.per_link_per_s.bytes
    );
    println!(
        "  per node:  {:.2} messages/s, {:.0} bytes/s sent",
        r.per_node_per_s.messages, r.per_node_per_s.bytes
    );
    if let Some(o) = r.per_origination {
        println!(
            "  per advertisement originated: {:.1} messages, {:.0} bytes to reach every node",
            o.messages, o.bytes
        );
    }
    match &report.https {
        None => println!("HTTPS: not measured (--https-floods 0): the figures above are in memory"),
        Some(h) => {
            println!(
                "one flood of a {}-link advertisement ({} bytes of JSON), {} times, median / \
                 p90 / max:",
                h.lsa_links, h.json_bytes, h.floods
            );
            println!(
                "  in memory (JSON out and back, receive, answer):  {:.0} / {:.0} / {:.0} µs",
                h.in_memory_us.median, h.in_memory_us.p90, h.in_memory_us.max
            );
            println!(
                "  HTTPS + mTLS, loopback, open connection:         {:.0} / {:.0} / {:.0} µs \
                 (first flood, new connection: {:.1} ms)",
                h.https_us.median, h.https_us.p90, h.https_us.max, h.new_connection_ms
            );
            println!(
                "  on the wire per flood: {:.0} bytes (TLS records, HTTP heads, flood and \
                 answer), opening a connection {:.0} bytes",
                h.wire_bytes_per_flood, h.connection_bytes
            );
            println!(
                "  at rest over HTTPS that would be about {:.0} bytes/s per link \
                 ({:.2} messages/s x {:.0} bytes; connections kept open)",
                r.per_link_per_s.messages * h.wire_bytes_per_flood,
                r.per_link_per_s.messages,
                h.wire_bytes_per_flood
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifty_nodes_make_a_connected_ring_of_rings_of_degree_three() {
        let (links, _) = ring_of_rings(50);
        let topology = describe(&links, String::new());
        assert_eq!((topology.nodes, topology.links), (50, 75));
        assert!((topology.mean_degree - 3.0).abs() < 1e-9);
        assert_eq!(hops_from(&links, "r0n0", None).len(), 50);
        for n in [3, 4, 7, 10, 12, 23] {
            let (links, _) = ring_of_rings(n);
            assert_eq!(hops_from(&links, "r0n0", None).len(), n, "{n} nodes");
        }
    }

    /// The smoke run: `qkdni bench link-state --nodes 10 --faults 3 --rest-seconds 2`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_domain_converges_after_every_fault_and_floods_over_https() {
        let args = LinkStateArgs {
            nodes: 10,
            faults: 3,
            rest_seconds: 2,
            seed: 7,
            policy: "fewest-hops".into(),
            https_floods: 10,
            json: false,
        };
        let report = measure(&args).await.unwrap();
        assert_eq!(report.topology.nodes, 10);
        assert!(report.link_down.converged_ms.max > 0.0);
        assert!(report.link_up.converged_ms.max > 0.0);
        assert!(report.rest.converged);
        assert_eq!(report.rest.floods_failed, 0);
        let https = report.https.as_ref().unwrap();
        assert!(https.wire_bytes_per_flood > https.json_bytes as f64);
        assert!(https.connection_bytes > 0.0);
        print(&report);
    }
}
