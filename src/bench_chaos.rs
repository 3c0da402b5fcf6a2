//! `qkdni bench chaos`: keys pulled both ways across domains while processes crash and links
//! fail, on the embedded two-domain testbed ([`crate::testbed::TWO_DOMAIN_GWN`]) brought up
//! on this machine with this binary.
//!
//! For `--minutes`, `--clients` applications per direction (masters in A with slaves in B,
//! and masters in B with slaves in A) each loop: `enc_keys` of 1 to 8 keys at the master's
//! KM, then `dec_keys` of the returned IDs at the slave's KM, retrying with backoff on 503
//! and on transport errors. Meanwhile a chaos task, from a seeded RNG, waits about
//! `--fault-every` seconds, then does one fault and heals it before the next: `kill -9` of a
//! KM (non-gateway or gateway), of a controller or of a manager, restarted after 1-5 s (the
//! restart waits until the process states its readiness and answers); or a link inside a
//! domain or a Qx link taken down for 3-10 s. Every fault goes to stderr with its time; so do
//! processes that die without being killed (restarted at once).
//!
//! Every key is accounted for ([`ledger`]): an ID given twice (by `enc_keys`, or to the
//! slave by `dec_keys`) is served twice, the same bytes under two IDs are reused material,
//! other bytes at the slave are mismatched; a key the slave's KM definitively refuses
//! ("unknown key_ID") is lost. At the end, with every process up and every link healed, each
//! key its slave has not obtained is asked for again for up to `--sweep-seconds`; any still
//! missing is lost. The longest delivery gap of a direction is the longest time between two
//! complete round trips (or from the start, or to the end of the load).
//!
//! Prints one JSON object on stdout; fails (non-zero exit) when a key was served twice,
//! reused, mismatched or lost. Keys never leave memory and are zeroized when dropped.

mod faults;
mod ledger;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::bench_interworking::Stats;
use crate::etsi014::{ClientError, KeyRequest};
use crate::quantum::LinkState;
use crate::testbed::endpoints::Endpoints;
use crate::testbed::runner;
use crate::testbed::topology::Topology;
use ledger::Ledger;

/// (master, slave) pairs of each direction, used in turn by its clients.
const PAIRS: [[(&str, &str); 3]; 2] = [
    [
        ("sae-a1-1", "sae-b1-1"),
        ("sae-a4-1", "sae-b4-1"),
        ("sae-a1-2", "sae-b1-2"),
    ],
    [
        ("sae-b1-1", "sae-a1-1"),
        ("sae-b4-1", "sae-a4-1"),
        ("sae-b1-2", "sae-a1-2"),
    ],
];
const DIRECTIONS: [&str; 2] = ["A->B", "B->A"];
/// An `enc_keys` may wait up to 30 s for the controller's interworking route.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(40);
/// Longest wait between two attempts of a client.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Arguments of `qkdni bench chaos`.
#[derive(Debug, Clone, Args)]
pub struct ChaosArgs {
    /// How long clients pull keys under faults, minutes.
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// Seed of the fault schedule and of the clients' request sizes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Clients per direction (each an SAE pair; pairs are reused beyond 3).
    #[arg(long, default_value_t = 2)]
    pub clients: usize,
    /// Mean time between the healing of a fault and the next fault, seconds.
    #[arg(long, default_value_t = 15.0)]
    pub fault_every: f64,
    /// How long the final sweep asks for keys not yet obtained, seconds.
    #[arg(long, default_value_t = 60)]
    pub sweep_seconds: u64,
    /// Keep the testbed directory (configurations, logs) here instead of a temporary one.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// What `qkdni bench chaos` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub testbed: String,
    pub seed: u64,
    pub seconds: f64,
    pub clients_per_direction: usize,
    pub keys_issued: u64,
    pub keys_delivered: u64,
    pub served_twice: u64,
    pub key_material_reused: u64,
    pub mismatched: u64,
    pub lost: u64,
    pub lost_detail: ledger::Lost,
    /// `dec_keys` answers without some requested keys and without an error.
    pub short_answers: u64,
    /// Keys first obtained by the final sweep.
    pub delivered_in_sweep: u64,
    /// The longest delivery gap of either direction, seconds.
    pub longest_gap_s: f64,
    pub directions: BTreeMap<String, Direction>,
    pub faults: BTreeMap<String, u64>,
    /// From the start of a killed process to its readiness, seconds.
    pub restart_s: Stats,
    pub restart_failures: u64,
    pub heal_failures: u64,
    /// Processes found dead that the bench had not killed.
    pub unexpected_exits: u64,
    /// Every error answer, by side, status and message.
    pub errors: BTreeMap<String, u64>,
}

impl Report {
    /// Whether the run found keys served twice, reused, mismatched or lost.
    pub fn failed(&self) -> bool {
        self.served_twice + self.key_material_reused + self.mismatched + self.lost > 0
    }
}

/// One direction's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Direction {
    pub round_trips: u64,
    pub keys_issued: u64,
    pub keys_delivered: u64,
    pub first_delivery_s: Option<f64>,
    pub longest_gap_s: f64,
    /// When the longest gap began, seconds from the start of the load.
    pub longest_gap_from_s: f64,
    pub enc_503: u64,
    pub enc_unreachable: u64,
    pub enc_other: u64,
    pub dec_503: u64,
    pub dec_unreachable: u64,
    pub dec_other: u64,
}

/// Brings the testbed up, runs, brings it down (also on error); returns the report.
pub fn run(args: &ChaosArgs) -> anyhow::Result<Report> {
    if args.clients == 0 || args.minutes <= 0.0 || args.fault_every <= 0.0 {
        bail!("--clients, --minutes and --fault-every must be positive");
    }
    let topology = Topology::parse(crate::testbed::TWO_DOMAIN_GWN)?;
    let temp = std::env::temp_dir().join(format!("qkdni-bench-chaos-{}", std::process::id()));
    let dir = args.dir.clone().unwrap_or_else(|| temp.clone());
    let exe = std::env::current_exe()?;
    let runtime = tokio::runtime::Runtime::new()?;
    eprintln!("testbed {} coming up in {}", topology.name, dir.display());
    let result = runtime.block_on(async {
        let endpoints = runner::up(&topology, &dir, &exe).await?;
        chaos(args, endpoints, &dir, &exe).await
    });
    let down = runner::down(&dir);
    eprintln!("testbed down");
    // the logs are the evidence of any anomaly
    match &result {
        Ok(report) if !report.failed() && dir == temp => {
            let _ = std::fs::remove_dir_all(&temp);
        }
        _ => eprintln!("logs kept in {}", dir.join("logs").display()),
    }
    let report = result?;
    down?;
    Ok(report)
}

/// What the clients and the chaos task share.
struct Run {
    endpoints: Endpoints,
    dir: PathBuf,
    exe: PathBuf,
    started: Instant,
    deadline: Instant,
    ledger: Mutex<Ledger>,
    figures: Mutex<Figures>,
}

#[derive(Default)]
struct Figures {
    directions: [Direction; 2],
    last_success: [Option<Instant>; 2],
    errors: BTreeMap<String, u64>,
    faults: BTreeMap<String, u64>,
    restarts: Vec<f64>,
    restart_failures: u64,
    heal_failures: u64,
    unexpected_exits: u64,
}

impl Run {
    fn at(&self) -> Duration {
        self.started.elapsed()
    }

    fn log(&self, what: std::fmt::Arguments) {
        eprintln!("[{:7.1}s] {what}", self.at().as_secs_f64());
    }

    fn figures(&self) -> std::sync::MutexGuard<'_, Figures> {
        self.figures.lock().expect("figures")
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().expect("ledger")
    }

    /// Counts an error answer; logs the first of each kind.
    fn error(&self, direction: usize, side: &str, error: &ClientError) {
        let (key, class) = match error {
            ClientError::Kme { status, body } => {
                let key = format!("{side} {status} {}", body.message);
                (key, if *status == 503 { "503" } else { "other" })
            }
            ClientError::Http(e) => {
                let what = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect"
                } else {
                    "transport"
                };
                (format!("{side} unreachable ({what})"), "unreachable")
            }
        };
        let mut figures = self.figures();
        let d = &mut figures.directions[direction];
        match (side, class) {
            ("enc", "503") => d.enc_503 += 1,
            ("enc", "unreachable") => d.enc_unreachable += 1,
            ("enc", _) => d.enc_other += 1,
            (_, "503") => d.dec_503 += 1,
            (_, "unreachable") => d.dec_unreachable += 1,
            _ => d.dec_other += 1,
        }
        let count = figures.errors.entry(key.clone()).or_default();
        *count += 1;
        if *count == 1 {
            drop(figures);
            self.log(format_args!("first {} error: {key}", DIRECTIONS[direction]));
        }
    }

    /// A complete round trip of `direction` ended now.
    fn success(&self, direction: usize) {
        let now = Instant::now();
        let mut figures = self.figures();
        let since = figures.last_success[direction].unwrap_or(self.started);
        let d = &mut figures.directions[direction];
        d.round_trips += 1;
        if d.first_delivery_s.is_none() {
            d.first_delivery_s = Some(round1(now - self.started));
        }
        let gap = (now - since).as_secs_f64();
        if gap > d.longest_gap_s {
            d.longest_gap_s = round1s(gap);
            d.longest_gap_from_s = round1(since - self.started);
        }
        figures.last_success[direction] = Some(now);
    }
}

fn round1(d: Duration) -> f64 {
    round1s(d.as_secs_f64())
}

fn round1s(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Exponential backoff with jitter, up to [`MAX_BACKOFF`].
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Self(Duration::from_millis(100))
    }

    async fn wait(&mut self, rng: &mut StdRng) {
        let jitter = rng.gen_range(0.5..1.5);
        tokio::time::sleep(self.0.mul_f64(jitter)).await;
        self.0 = (self.0 * 2).min(MAX_BACKOFF);
    }
}

/// A definitive refusal of one key by the slave's KM: its ID and the KM's message.
fn refusal(error: &ClientError) -> Option<(String, String)> {
    let ClientError::Kme { status, body } = error else {
        return None;
    };
    let definitive = matches!(
        (status, body.message.as_str()),
        (400, "unknown key_ID")
            | (400, "key_ID expired before it was fetched")
            | (401, "key_ID was not issued for this SAE and master SAE")
    );
    let id = body
        .details
        .as_ref()?
        .iter()
        .find_map(|d| d["key_ID"].as_str())?;
    definitive.then(|| (id.to_owned(), body.message.clone()))
}

/// One application pair: `enc_keys` then `dec_keys`, until the deadline.
async fn client(
    run: Arc<Run>,
    direction: usize,
    master: &'static str,
    slave: &'static str,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let clients = (
        run.endpoints.etsi014_client(master, REQUEST_TIMEOUT),
        run.endpoints.etsi014_client(slave, REQUEST_TIMEOUT),
    );
    let (Ok(at_master), Ok(at_slave)) = clients else {
        run.log(format_args!("no ETSI 014 client for {master} or {slave}"));
        return;
    };
    let mut backoff = Backoff::new();
    while Instant::now() < run.deadline {
        let request = KeyRequest {
            number: Some(rng.gen_range(1..=8)),
            size: Some(8 * ledger::KEY_BYTES as u32),
            ..Default::default()
        };
        let issued = match at_master.enc_keys(slave, &request).await {
            Ok(issued) => issued,
            Err(error) => {
                run.error(direction, "enc", &error);
                backoff.wait(&mut rng).await;
                continue;
            }
        };
        backoff = Backoff::new();
        let mut pending = run
            .ledger()
            .issue(run.at(), direction, master, slave, &issued);
        drop(issued);
        let mut complete = !pending.is_empty();
        // until obtained, refused, or the end of the load (the final sweep takes over)
        let mut dec_backoff = Backoff::new();
        while !pending.is_empty() && Instant::now() < run.deadline {
            match at_slave.dec_keys(master, &pending).await {
                Ok(got) => {
                    let answered = run.ledger().receive(run.at(), slave, &pending, &got);
                    pending.retain(|id| !answered.contains(id));
                    complete &= pending.is_empty();
                    break;
                }
                Err(error) => {
                    if let Some((id, reason)) = refusal(&error) {
                        run.ledger().refused(run.at(), &id, &reason);
                        pending.retain(|p| *p != id);
                        complete = false;
                        continue;
                    }
                    if matches!(error, ClientError::Http(_)) {
                        run.ledger().unanswered(&pending);
                    }
                    run.error(direction, "dec", &error);
                    dec_backoff.wait(&mut rng).await;
                }
            }
        }
        if complete && pending.is_empty() {
            run.success(direction);
        }
    }
}

/// After the load: asks for every key its slave has not obtained, with every process up,
/// for up to `--sweep-seconds`; returns the keys obtained.
async fn sweep(run: &Run, seconds: u64) -> u64 {
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut rng = StdRng::seed_from_u64(0);
    let mut obtained = 0;
    let mut backoff = Backoff::new();
    loop {
        let batches = run.ledger().pending(8);
        if batches.is_empty() {
            break;
        }
        run.log(format_args!(
            "sweep: {} keys not yet obtained",
            run.ledger().pending_count()
        ));
        for (master, slave, ids) in batches {
            let Ok(at_slave) = run.endpoints.etsi014_client(&slave, REQUEST_TIMEOUT) else {
                continue;
            };
            let direction = usize::from(master.starts_with("sae-b"));
            let mut ids = ids;
            while !ids.is_empty() {
                match at_slave.dec_keys(&master, &ids).await {
                    Ok(got) => {
                        let answered = run.ledger().receive(run.at(), &slave, &ids, &got);
                        obtained += answered.len() as u64;
                        break;
                    }
                    Err(error) => match refusal(&error) {
                        Some((id, reason)) => {
                            run.ledger().refused(run.at(), &id, &reason);
                            ids.retain(|p| *p != id);
                        }
                        None => {
                            if matches!(error, ClientError::Http(_)) {
                                run.ledger().unanswered(&ids);
                            }
                            run.error(direction, "sweep dec", &error);
                            break;
                        }
                    },
                }
            }
        }
        if Instant::now() > until {
            break;
        }
        backoff.wait(&mut rng).await;
    }
    obtained
}

async fn chaos(
    args: &ChaosArgs,
    endpoints: Endpoints,
    dir: &Path,
    exe: &Path,
) -> anyhow::Result<Report> {
    // keys on the first routes both ways before the clock starts
    let there = ["a1", "a2", "ga1", "gb1", "b2", "b1"].map(String::from);
    let back: Vec<String> = there.iter().rev().cloned().collect();
    for path in [&there[..], &back[..]] {
        runner::wait_path_keys(&endpoints, path, 64, Duration::from_secs(60)).await?;
    }
    let started = Instant::now();
    let run = Arc::new(Run {
        endpoints,
        dir: dir.to_owned(),
        exe: exe.to_owned(),
        started,
        deadline: started + Duration::from_secs_f64(args.minutes * 60.0),
        ledger: Mutex::new(Ledger::new()),
        figures: Mutex::new(Figures::default()),
    });
    run.log(format_args!(
        "load and faults for {} min, {} clients per direction, seed {}",
        args.minutes, args.clients, args.seed
    ));
    let mut tasks = Vec::new();
    for (direction, pairs) in PAIRS.iter().enumerate() {
        for i in 0..args.clients {
            let (master, slave) = pairs[i % pairs.len()];
            let seed = args.seed ^ (((direction as u64) << 32) | (i as u64 + 1));
            tasks.push(tokio::spawn(client(
                run.clone(),
                direction,
                master,
                slave,
                seed,
            )));
        }
    }
    let chaos_task = tokio::spawn(faults::faults(run.clone(), args.clone()));
    for task in tasks {
        task.await.context("a client task")?;
    }
    chaos_task.await.context("the chaos task")?;
    let load_end = Instant::now();
    run.log(format_args!("load over; checking every process runs"));
    faults::revive(&run).await;
    for link in run.endpoints.links.keys() {
        let down = runner::link_reports(&run.endpoints, &run.endpoints.links[link].nodes[0])
            .await
            .map(|r| {
                r.iter()
                    .any(|l| l.id == *link && l.condition.state != LinkState::Up)
            })
            .unwrap_or(false);
        if down {
            run.log(format_args!("{link} is not up at the end: setting it up"));
            faults::set_link(&run, link, LinkState::Up).await;
        }
    }
    let delivered_in_sweep = sweep(&run, args.sweep_seconds).await;
    let lost_now = run.ledger().give_up(run.at());
    run.log(format_args!(
        "sweep over: {delivered_in_sweep} keys obtained, {lost_now} never"
    ));

    let ledger = run.ledger();
    let mut figures = run.figures();
    // a gap still open when the load ended counts too
    for direction in 0..2 {
        let since = figures.last_success[direction].unwrap_or(started);
        let d = &mut figures.directions[direction];
        let gap = (load_end - since).as_secs_f64();
        if gap > d.longest_gap_s {
            d.longest_gap_s = round1s(gap);
            d.longest_gap_from_s = round1(since - started);
        }
        d.keys_issued = ledger.issued[direction];
        d.keys_delivered = ledger.delivered[direction];
    }
    let directions: BTreeMap<String, Direction> = (DIRECTIONS.iter())
        .zip(&figures.directions)
        .map(|(name, d)| (name.to_string(), d.clone()))
        .collect();
    let longest_gap_s = directions
        .values()
        .map(|d| d.longest_gap_s)
        .fold(0.0, f64::max);
    let mut restarts = figures.restarts.clone();
    Ok(Report {
        testbed: run.endpoints.name.clone(),
        seed: args.seed,
        seconds: round1(load_end - started),
        clients_per_direction: args.clients,
        keys_issued: ledger.issued.iter().sum(),
        keys_delivered: ledger.delivered.iter().sum(),
        served_twice: ledger.served_twice,
        key_material_reused: ledger.material_reused,
        mismatched: ledger.mismatched,
        lost: ledger.lost_total(),
        lost_detail: ledger.lost.clone(),
        short_answers: ledger.short_answers,
        delivered_in_sweep,
        longest_gap_s,
        directions,
        faults: figures.faults.clone(),
        restart_s: Stats::of(&mut restarts),
        restart_failures: figures.restart_failures,
        heal_failures: figures.heal_failures,
        unexpected_exits: figures.unexpected_exits,
        errors: figures.errors.clone(),
    })
}
