//! `qkdni bench interworking`: on a two-domain testbed brought up on this machine (the
//! embedded [`crate::testbed::TWO_DOMAIN_GWN`], or `--topology`, e.g.
//! `testbed/two-domain-iwn.toml` with interworking nodes), times
//!
//! 1. key delivery from SAE `sae-a1-1` (domain A) to `sae-b1-1` (domain B): the first
//!    `enc_keys`, for which the KM asks controller A for a route that A agrees with B over
//!    Cxi, then `--requests` requests of `--keys` 256-bit keys, each with the slave's
//!    `dec_keys`;
//! 2. `--faults` faults of the Qx link in use, or with IWNs of the QKD link into the IWN in
//!    use (taken down over NETCONF, as `qkdni testbed link down` does): the wall time from just before that call until A lists a new
//!    `reroute` whose Cxi transaction B lists as `interworking-commit` (both polled every
//!    5 ms), and A's own `duration_ms` (KM notification to both domains installed). After
//!    each fault one round trip checks that keys still flow, then the link comes back up;
//! 3. `--opposite` rounds in which both controllers' orchestrators create an interworking
//!    session toward the other domain at the same moment (`sae-a1-2` -> `sae-b1-2` at A,
//!    `sae-b1-2` -> `sae-a1-2` at B): the time of each creation (route agreed with the peer
//!    and installed in both domains); both sessions are deleted after each round.
//!
//! A domain with distributed control (`distributed = true`: no controller; its *speaker*, a
//! border node, speaks Cxi for it) is read through its speaker's admin view (`GET
//! /admin/v1/interworking`, operator certificate) instead: its nodes' link-state databases
//! must be complete before timing starts; a fault is timed from just before the link-down
//! call until both sides hold the new crossing (A's origin session and B's segment on the same
//! other Qx link, in the speaker's view or the controller's sessions, both polled every
//! 10 ms), there is no controller measure of it, keys after it are retried (up to 20 s) while
//! the nodes learn the crossing from the link state, and step 3 (a controller API for
//! orchestrators) is skipped.
//!
//! Prints one JSON object on stdout; progress goes to stderr.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;
use serde_json::Value;

use crate::etsi014::{self, KeyRequest};
use crate::quantum::LinkState;
use crate::testbed::endpoints::Endpoints;
use crate::testbed::runner;
use crate::testbed::topology::{Domain, Topology};

/// The master SAE, in domain A.
const MASTER: &str = "sae-a1-1";
/// The slave SAE, in domain B.
const SLAVE: &str = "sae-b1-1";
/// Size of every requested key, bits.
const KEY_BITS: u32 = 256;
/// Interval between two polls of the controllers' events.
const POLL: Duration = Duration::from_millis(5);
/// Interval between two polls of the sessions' crossings, with a distributed domain.
const POLL_CROSSING: Duration = Duration::from_millis(10);
/// Longest wait for an agreed route after a fault.
const AGREE_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after a link comes back up, so that both controllers see it up before the next fault.
const SETTLE: Duration = Duration::from_secs(2);

/// Arguments of `qkdni bench interworking`.
#[derive(Debug, Clone, Args)]
pub struct InterworkingArgs {
    /// Timed key requests (each an `enc_keys` then the slave's `dec_keys`).
    #[arg(long, default_value_t = 50)]
    pub requests: usize,
    /// Keys per request (256 bits each).
    #[arg(long, default_value_t = 1)]
    pub keys: u32,
    /// Faults of the active Qx link.
    #[arg(long, default_value_t = 10)]
    pub faults: usize,
    /// Rounds of opposite-direction session setup at the same moment.
    #[arg(long, default_value_t = 20)]
    pub opposite: usize,
    /// Keep the testbed directory (configurations, logs) here instead of a temporary one.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Topology file (default: the embedded two-domain GWN testbed); its first domain must
    /// serve `sae-a1-1` and `sae-a1-2`, its second `sae-b1-1` and `sae-b1-2`.
    #[arg(long)]
    pub topology: Option<PathBuf>,
}

/// Brings the testbed up, measures, brings it down (also on error); returns the report.
pub fn run(args: &InterworkingArgs) -> anyhow::Result<Report> {
    if args.requests == 0 || args.keys == 0 {
        bail!("--requests and --keys must be at least 1");
    }
    let text = match &args.topology {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        None => crate::testbed::TWO_DOMAIN_GWN.to_owned(),
    };
    let topology = Topology::parse(&text)?;
    let temp = std::env::temp_dir().join(format!("qkdni-bench-iw-{}", std::process::id()));
    let dir = args.dir.clone().unwrap_or_else(|| temp.clone());
    let exe = std::env::current_exe()?;
    let runtime = tokio::runtime::Runtime::new()?;
    eprintln!("testbed {} coming up in {}", topology.name, dir.display());
    let result = runtime.block_on(async {
        let endpoints = runner::up(&topology, &dir, &exe).await?;
        measure(args, &topology, &endpoints, &dir).await
    });
    let down = runner::down(&dir);
    eprintln!("testbed down");
    if result.is_err() {
        eprintln!("logs kept in {}", dir.join("logs").display());
    } else if dir == temp {
        let _ = std::fs::remove_dir_all(&temp);
    }
    let report = result?;
    down?;
    Ok(report)
}

/// What `qkdni bench interworking` prints (times in ms).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub testbed: String,
    /// Each domain's control: `centralized` or `distributed`.
    pub control: std::collections::BTreeMap<String, String>,
    pub requests: usize,
    pub keys_per_request: u32,
    /// The first `enc_keys`, which agrees the interworking route.
    pub first_request_ms: f64,
    pub enc_ms: Stats,
    /// `enc_keys` at the master's KME then `dec_keys` at the slave's.
    pub round_trip_ms: Stats,
    pub faults: usize,
    /// How [`Report::fault_to_agreed_ms`] is measured.
    pub fault_measure: String,
    /// From just before the link-down call to the agreed route listed by both controllers
    /// (with a distributed domain: to the new crossing held by both sides).
    pub fault_to_agreed_ms: Stats,
    /// Controller A's own measure of each reroute (`duration_ms` of its event; none when A
    /// is distributed).
    pub controller_reroute_ms: Stats,
    /// Round trips that failed right after a reroute (with a distributed domain: that still
    /// failed 20 s after it).
    pub delivery_failures_after_fault: usize,
    /// With a distributed domain, round trips after a reroute retried while its nodes
    /// learned the new crossing.
    pub delivery_retries_after_fault: usize,
    /// Rounds run (0 with a distributed domain: no controller API to create sessions at).
    pub opposite_rounds: usize,
    /// Each creation of a round of opposite-direction sessions created at once.
    pub opposite_setup_ms: Stats,
}

/// Median, 90th and 99th percentiles (nearest rank), minimum and maximum, ms; `null` without
/// samples.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub median: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// A controller's northbound REST API, as the testbed's orchestrator of its domain.
struct Controller {
    http: reqwest::Client,
    rest: String,
    token: String,
}

impl Controller {
    fn new(endpoints: &Endpoints, domain: &str) -> anyhow::Result<Self> {
        let c = endpoints
            .controller(domain)
            .with_context(|| format!("domain {domain} has no controller"))?;
        let tls = endpoints.operator_tls_at(&c.name);
        Ok(Self {
            http: crate::tls::https_client(&tls, Duration::from_secs(10))?,
            rest: c.rest.clone(),
            token: c.token.clone(),
        })
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.rest);
        let response = self.http.get(url).bearer_auth(&self.token).send().await?;
        let status = response.status();
        if !status.is_success() {
            bail!("GET {path}: controller answered {status}");
        }
        Ok(response.json().await?)
    }

    async fn events(&self) -> anyhow::Result<Vec<Value>> {
        Ok(serde_json::from_value(self.get("/api/v1/events").await?)?)
    }

    /// Creates a session through this controller: its id and the time the answer took (ms).
    async fn create(&self, master: &str, slave: &str) -> anyhow::Result<(String, f64)> {
        let started = Instant::now();
        let response = self
            .http
            .post(format!("{}/api/v1/sessions", self.rest))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({"master_sae": master, "slave_sae": slave, "rate_bps": 0.0}))
            .send()
            .await?;
        let took = ms(started.elapsed());
        let status = response.status();
        let body: Value = response.json().await?;
        if status != reqwest::StatusCode::CREATED {
            bail!("creating {master} -> {slave}: {status} {body}");
        }
        let id = body["id"].as_str().context("a session id")?.to_owned();
        Ok((id, took))
    }

    async fn delete(&self, id: &str) -> anyhow::Result<()> {
        let response = self
            .http
            .delete(format!("{}/api/v1/sessions/{id}", self.rest))
            .bearer_auth(&self.token)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("deleting {id}: {}", response.status());
        }
        Ok(())
    }

    /// The interworking session in which this domain plays `role` (`origin` or `segment`).
    async fn session(&self, role: &str) -> anyhow::Result<Value> {
        let sessions: Vec<Value> = serde_json::from_value(self.get("/api/v1/sessions").await?)?;
        sessions
            .into_iter()
            .find(|s| s["interworking"]["role"] == role)
            .with_context(|| format!("no interworking session with role {role}"))
    }
}

/// A distributed domain's speaker (a border node), read over its KMA's admin API.
struct Speaker {
    node: String,
    http: reqwest::Client,
    url: String,
}

impl Speaker {
    fn new(endpoints: &Endpoints, topology: &Topology, domain: &Domain) -> anyhow::Result<Self> {
        let node = domain
            .speaker(&topology.iwns)
            .with_context(|| format!("distributed domain {} has no border node", domain.name))?
            .name
            .clone();
        let kma = &endpoints.node(&node).context("the speaker's endpoint")?.kma;
        let tls = endpoints.operator_tls_at(&node);
        Ok(Self {
            http: crate::tls::https_client(&tls, Duration::from_secs(10))?,
            url: format!("{kma}/admin/v1/interworking"),
            node,
        })
    }

    /// The session between [`MASTER`] and [`SLAVE`] in which this domain plays `role`.
    async fn session(&self, role: &str) -> anyhow::Result<Option<Value>> {
        let response = self.http.get(&self.url).send().await?;
        let status = response.status();
        if !status.is_success() {
            bail!("GET {}: speaker {} answered {status}", self.url, self.node);
        }
        let view: Value = response.json().await?;
        Ok((view["sessions"].as_array().into_iter().flatten())
            .find(|s| s["role"] == role && s["master_sae"] == MASTER && s["slave_sae"] == SLAVE)
            .cloned())
    }
}

/// What answers for a domain's control plane: its controller, or (distributed) its speaker.
enum Side {
    Controller(Controller),
    Speaker(Speaker),
}

impl Side {
    fn new(endpoints: &Endpoints, topology: &Topology, domain: &Domain) -> anyhow::Result<Self> {
        Ok(match domain.distributed {
            true => Side::Speaker(Speaker::new(endpoints, topology, domain)?),
            false => Side::Controller(Controller::new(endpoints, &domain.name)?),
        })
    }

    fn controller(&self) -> Option<&Controller> {
        match self {
            Side::Controller(c) => Some(c),
            Side::Speaker(_) => None,
        }
    }

    /// The Qx link of the session between [`MASTER`] and [`SLAVE`] in which this domain
    /// plays `role`, as its controller or speaker holds it.
    async fn crossing(&self, role: &str) -> anyhow::Result<Option<String>> {
        let text = |v: &Value| v.as_str().map(str::to_owned);
        Ok(match self {
            Side::Controller(c) => {
                let sessions: Vec<Value> =
                    serde_json::from_value(c.get("/api/v1/sessions").await?)?;
                (sessions.iter())
                    .find(|s| {
                        s["interworking"]["role"] == role
                            && s["master_sae"] == MASTER
                            && s["slave_sae"] == SLAVE
                    })
                    .and_then(|s| text(&s["interworking"]["qx_link"]))
            }
            Side::Speaker(s) => (s.session(role).await?).and_then(|s| text(&s["entry"]["link"])),
        })
    }
}

/// A NETCONF subtree filter for a node's link-state database.
const LSDB_FILTER: &str = "<qkd_node xmlns=\"urn:etsi:qkd:yang:etsi-qkd-node\"><key-manager xmlns=\"urn:qkdni:yang:qkdni-km\"><local-control><link-state-database/></local-control></key-manager></qkd_node>";

/// Waits until every node of distributed `domain` holds an advertisement of every node.
async fn wait_converged(endpoints: &Endpoints, domain: &Domain) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    'retry: loop {
        for node in &domain.nodes {
            let nc = runner::netconf(endpoints, &node.name).await?;
            let xml = nc.get(Some(LSDB_FILTER)).await;
            let _ = nc.close().await;
            let xml = xml.with_context(|| format!("{}: link-state database", node.name))?;
            let doc = roxmltree::Document::parse(&xml)?;
            let origins: HashSet<&str> = (doc.descendants())
                .filter(|n| n.has_tag_name("advertisement"))
                .filter_map(|n| n.children().find(|c| c.has_tag_name("origin"))?.text())
                .collect();
            if !domain
                .nodes
                .iter()
                .all(|n| origins.contains(n.name.as_str()))
            {
                if Instant::now() > deadline {
                    bail!(
                        "{}: the link-state database of {} is incomplete after 60 s",
                        domain.name,
                        node.name
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue 'retry;
            }
        }
        return Ok(());
    }
}

/// Polls both sides every [`POLL_CROSSING`] until A's origin session and B's segment hold
/// the same Qx link, other than `from`; returns the time since `started` (ms).
async fn wait_crossing(a: &Side, b: &Side, from: &str, started: Instant) -> anyhow::Result<f64> {
    loop {
        let (x, y) = tokio::try_join!(a.crossing("origin"), b.crossing("segment"))?;
        let now = started.elapsed();
        if x.as_deref().is_some_and(|q| q != from) && x == y {
            return Ok(ms(now));
        }
        if now > AGREE_TIMEOUT {
            bail!("no new crossing held by both sides within {AGREE_TIMEOUT:?}: A {x:?}, B {y:?}");
        }
        tokio::time::sleep(POLL_CROSSING).await;
    }
}

/// The two SAEs' ETSI 014 clients.
struct Saes {
    master: etsi014::Client,
    slave: etsi014::Client,
    request: KeyRequest,
}

impl Saes {
    /// One `enc_keys` at the master's KME then `dec_keys` at the slave's: (enc, total) in ms.
    async fn round_trip(&self) -> anyhow::Result<(f64, f64)> {
        let started = Instant::now();
        let issued = self.master.enc_keys(SLAVE, &self.request).await?;
        let enc = ms(started.elapsed());
        let ids: Vec<String> = issued.keys.iter().map(|k| k.key_ID.clone()).collect();
        let fetched = self.slave.dec_keys(MASTER, &ids).await?;
        let total = ms(started.elapsed());
        let same = issued.keys.len() == fetched.keys.len()
            && (issued.keys.iter().zip(&fetched.keys))
                .all(|(a, b)| a.key_ID == b.key_ID && a.key == b.key);
        if !same {
            bail!("the slave got other keys than the master");
        }
        Ok((enc, total))
    }
}

async fn measure(
    args: &InterworkingArgs,
    topology: &Topology,
    endpoints: &Endpoints,
    dir: &Path,
) -> anyhow::Result<Report> {
    let timeout = Duration::from_secs(15);
    let saes = Saes {
        master: endpoints.etsi014_client(MASTER, timeout)?,
        slave: endpoints.etsi014_client(SLAVE, timeout)?,
        request: KeyRequest {
            number: Some(args.keys),
            size: Some(KEY_BITS),
            ..Default::default()
        },
    };
    let (a_domain, b_domain) = (&topology.domains[0], &topology.domains[1]);
    let (a, b) = (
        Side::new(endpoints, topology, a_domain)?,
        Side::new(endpoints, topology, b_domain)?,
    );
    let controllers = a.controller().zip(b.controller());
    let control = (topology.domains.iter())
        .map(|d| {
            let kind = if d.distributed {
                "distributed"
            } else {
                "centralized"
            };
            (d.name.clone(), kind.to_owned())
        })
        .collect();
    // every QKD link holds key before timing (the first route is not known yet)
    let blocks = (4 * args.keys as usize).clamp(64, 512);
    for link in topology
        .domains
        .iter()
        .flat_map(|d| &d.links)
        .chain(&topology.qx_links)
    {
        let [x, y] = &link.nodes;
        for hop in [[x.clone(), y.clone()], [y.clone(), x.clone()]] {
            runner::wait_path_keys(endpoints, &hop, blocks, Duration::from_secs(60)).await?;
        }
    }
    // ... and every node of a distributed domain knows all of it
    for domain in topology.domains.iter().filter(|d| d.distributed) {
        wait_converged(endpoints, domain).await?;
    }

    // 1. key delivery
    let (first_request_ms, _) = saes.round_trip().await.context("first request")?;
    match &a {
        Side::Controller(a) => {
            let session = a.session("origin").await?;
            eprintln!(
                "first request: {first_request_ms:.1} ms (route agreed over Cxi: {} via {})",
                route(&session).join(" -> "),
                qx_of(&session)
            );
        }
        Side::Speaker(speaker) => eprintln!(
            "first request: {first_request_ms:.1} ms (crossing agreed over Cxi by A's speaker {}: via {})",
            speaker.node,
            a.crossing("origin").await?.unwrap_or_else(|| "?".into())
        ),
    }
    let (mut enc, mut round_trip) = (Vec::new(), Vec::new());
    for i in 1..=args.requests {
        let (e, r) = saes
            .round_trip()
            .await
            .with_context(|| format!("request {i}"))?;
        enc.push(e);
        round_trip.push(r);
    }
    eprintln!("{} requests timed", args.requests);

    // 2. faults of the active Qx link
    let fault_measure = match controllers {
        Some(_) => format!(
            "from just before the NETCONF link-down call until controller A lists a new reroute whose Cxi transaction controller B lists as interworking-commit (events of both polled every {} ms)",
            POLL.as_millis()
        ),
        None => format!(
            "from just before the NETCONF link-down call until A's origin session and B's segment both hold the other Qx link ({}; both polled every {} ms)",
            [&a, &b]
                .iter()
                .zip(["A", "B"])
                .map(|(side, d)| match side {
                    Side::Controller(_) => format!("controller {d}'s sessions"),
                    Side::Speaker(s) => format!("{d}'s speaker {} at GET /admin/v1/interworking", s.node),
                })
                .collect::<Vec<_>>()
                .join(", "),
            POLL_CROSSING.as_millis()
        ),
    };
    let (mut agreed, mut controller, mut failures, mut retries) =
        (Vec::new(), Vec::new(), 0usize, 0usize);
    for i in 1..=args.faults {
        let (qx, via, elapsed, duration, delivered, ready) = match controllers {
            Some((a, b)) => {
                let origin = a.session("origin").await?;
                let qx = topology
                    .border_fault(&qx_of(&origin), &route(&origin))
                    .with_context(|| format!("fault {i}: no link to cut on {}", qx_of(&origin)))?;
                let seen: HashSet<String> =
                    a.events().await?.iter().map(Value::to_string).collect();
                let started = Instant::now();
                let cut = async { Ok(runner::set_link_state(dir, &qx, LinkState::Down).await?) };
                let ((), (elapsed, event)) =
                    tokio::try_join!(cut, wait_agreed(a, b, &seen, started))
                        .with_context(|| format!("fault {i}: {qx} down"))?;
                let duration = event["duration_ms"].as_f64().unwrap_or(f64::NAN);
                controller.push(duration);
                // keys still flow on the new route (A's part then B's segment), once its hops
                // hold key
                let session = a.session("origin").await?;
                let mut path = route(&session);
                path.extend(route(&b.session("segment").await?).into_iter().skip(1));
                let ready =
                    runner::wait_path_keys(endpoints, &path, 16, Duration::from_secs(20)).await;
                let delivered = saes.round_trip().await;
                (
                    qx,
                    qx_of(&session),
                    elapsed,
                    Some(duration),
                    delivered,
                    ready,
                )
            }
            None => {
                let from = a
                    .crossing("origin")
                    .await?
                    .with_context(|| format!("fault {i}: no session in A"))?;
                let qx = topology
                    .border_fault(&from, &[])
                    .with_context(|| format!("fault {i}: no link to cut on {from}"))?;
                let started = Instant::now();
                let cut = async { Ok(runner::set_link_state(dir, &qx, LinkState::Down).await?) };
                let ((), elapsed) = tokio::try_join!(cut, wait_crossing(&a, &b, &from, started))
                    .with_context(|| format!("fault {i}: {qx} down"))?;
                // keys still flow over the new Qx link, once it holds key and the nodes
                // route toward it (link state)
                let via = a.crossing("origin").await?.unwrap_or_default();
                let hop: Vec<String> = (topology.qx_links.iter())
                    .find(|l| l.id == via)
                    .map(|l| l.nodes.to_vec())
                    .unwrap_or_default();
                let ready =
                    runner::wait_path_keys(endpoints, &hop, 16, Duration::from_secs(20)).await;
                let deadline = Instant::now() + Duration::from_secs(20);
                let delivered = loop {
                    match saes.round_trip().await {
                        Err(_) if Instant::now() < deadline => {
                            retries += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        done => break done,
                    }
                };
                (qx, via, elapsed, None, delivered, ready)
            }
        };
        agreed.push(elapsed);
        if let Err(error) = &delivered {
            eprintln!("fault {i}: no keys after the reroute: {error:#} (hops ready: {ready:?})");
        }
        failures += usize::from(delivered.is_err());
        for node in ends_not_down(endpoints, &qx).await {
            eprintln!("fault {i}: {qx} is up again at {node} (its configuration was overwritten)");
        }
        let keys = if delivered.is_ok() { "ok" } else { "FAILED" };
        let by_a = duration.map_or(String::new(), |d| format!(" (A: {d:.1} ms)"));
        eprintln!("fault {i}: {qx} down, via {via} in {elapsed:.1} ms{by_a}, keys {keys}");
        runner::set_link_state(dir, &qx, LinkState::Up).await?;
        tokio::time::sleep(SETTLE).await;
    }

    // 3. opposite-direction sessions created at the same moment
    let mut opposite = Vec::new();
    let rounds = if controllers.is_some() {
        args.opposite
    } else {
        0
    };
    if let (Some((a, b)), true) = (controllers, rounds > 0) {
        for i in 1..=rounds {
            let (x, y) = tokio::try_join!(
                a.create("sae-a1-2", "sae-b1-2"),
                b.create("sae-b1-2", "sae-a1-2")
            )
            .with_context(|| format!("opposite round {i}"))?;
            opposite.extend([x.1, y.1]);
            a.delete(&x.0).await?;
            b.delete(&y.0).await?;
        }
        eprintln!("{rounds} opposite-direction rounds timed");
    } else if controllers.is_none() {
        eprintln!("opposite-direction rounds skipped: a distributed domain has no controller API to create sessions at");
    }
    Ok(Report {
        testbed: endpoints.name.clone(),
        control,
        requests: args.requests,
        keys_per_request: args.keys,
        first_request_ms: round2(first_request_ms),
        enc_ms: Stats::of(&mut enc),
        round_trip_ms: Stats::of(&mut round_trip),
        faults: args.faults,
        fault_measure,
        fault_to_agreed_ms: Stats::of(&mut agreed),
        controller_reroute_ms: Stats::of(&mut controller),
        delivery_failures_after_fault: failures,
        delivery_retries_after_fault: retries,
        opposite_rounds: rounds,
        opposite_setup_ms: Stats::of(&mut opposite),
    })
}

/// Polls both controllers until A lists a `reroute` event not in `seen` whose transaction B
/// lists as `interworking-commit`; returns the time since `started` (ms) and A's event.
async fn wait_agreed(
    a: &Controller,
    b: &Controller,
    seen: &HashSet<String>,
    started: Instant,
) -> anyhow::Result<(f64, Value)> {
    loop {
        let (a_events, b_events) = tokio::try_join!(a.events(), b.events())?;
        let now = started.elapsed();
        let new: Vec<&Value> = (a_events.iter())
            .filter(|e| !seen.contains(&e.to_string()))
            .collect();
        if let Some(failed) = new.iter().find(|e| e["kind"] == "reroute-failed") {
            bail!("controller A: {}", failed["detail"]);
        }
        let agreed = |e: &&&Value| {
            e["kind"] == "reroute"
                && e["transaction"].is_string()
                && (b_events.iter()).any(|c| {
                    c["kind"] == "interworking-commit" && c["transaction"] == e["transaction"]
                })
        };
        if let Some(event) = new.iter().find(agreed) {
            return Ok((ms(now), (*event).clone()));
        }
        if now > AGREE_TIMEOUT {
            bail!("no agreed reroute within {AGREE_TIMEOUT:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The ends of `link` that do not report it down.
async fn ends_not_down(endpoints: &Endpoints, link: &str) -> Vec<String> {
    let mut up = Vec::new();
    for node in endpoints.links.get(link).map_or(&[][..], |l| &l.nodes[..]) {
        let reports = runner::link_reports(endpoints, node).await;
        let down = |r: &crate::km::kma::LinkReport| r.condition.state == LinkState::Down;
        if reports
            .unwrap_or_default()
            .iter()
            .any(|r| r.id == link && !down(r))
        {
            up.push(node.clone());
        }
    }
    up
}

/// The `path` of a session.
fn route(session: &Value) -> Vec<String> {
    session["path"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str().map(str::to_owned))
        .collect()
}

/// The Qx link a session crosses.
fn qx_of(session: &Value) -> String {
    session["interworking"]["qx_link"]
        .as_str()
        .unwrap_or("?")
        .into()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Nearest-rank percentile `p` (0: the minimum) of `samples`, sorted in place, rounded to
/// 0.01; `None` without samples.
fn percentile(samples: &mut [f64], p: f64) -> Option<f64> {
    samples.sort_by(f64::total_cmp);
    let rank = ((p * samples.len() as f64).ceil() as usize).max(1);
    let x = samples.get(rank.min(samples.len()).checked_sub(1)?)?;
    Some(round2(*x))
}

impl Stats {
    pub fn of(samples: &mut [f64]) -> Self {
        let mut at = |p| percentile(samples, p);
        Stats {
            median: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            min: at(0.0),
            max: at(1.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_use_nearest_rank() {
        let mut samples: Vec<f64> = (1..=10).rev().map(f64::from).collect();
        let stats = serde_json::to_string(&Stats::of(&mut samples)).unwrap();
        assert_eq!(
            stats,
            r#"{"median":5.0,"p90":9.0,"p99":10.0,"min":1.0,"max":10.0}"#
        );
        let none = serde_json::to_value(Stats::of(&mut [])).unwrap();
        assert_eq!(none["median"], serde_json::Value::Null);
    }
}
