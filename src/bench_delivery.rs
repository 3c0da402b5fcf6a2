//! `qkdni bench delivery`: the key rate applications get, as a fraction of what the network
//! can carry at most (the min-cut of the link key rates between the two KMs, or the path's
//! bottleneck for a single-path policy), on the embedded single-domain testbed.
//!
//! For each policy (`shortest`, `multipath`) a fresh testbed comes up; a session from
//! `sae-a1-1` to `sae-a4-1` demands more than the min-cut. Then `--clients` applications
//! pull keys one way (enc_keys at a1, dec_keys at a4) and, in a second phase, half of them
//! the other way round too. Each phase first drains the pools (`--warmup` seconds), then
//! counts the keys delivered for `--seconds`: rates are the only limit.
//!
//! Prints one JSON object on stdout; progress goes to stderr.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;

use crate::etsi014::{self, ClientError, KeyRequest};
use crate::netconf::client::NetconfClient;
use crate::testbed::endpoints::Endpoints;
use crate::testbed::runner;
use crate::testbed::topology::Topology;

const A: &str = "sae-a1-1";
const B: &str = "sae-a4-1";
const KEY_BITS: u32 = 256;
/// Demand of the session: above the min-cut, so the network is the limit.
const DEMAND_BPS: f64 = 1_000_000.0;

/// Arguments of `qkdni bench delivery`.
#[derive(Debug, Clone, Args)]
pub struct DeliveryArgs {
    /// Seconds measured per phase (after the warm-up).
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Seconds of load before measuring, to drain the pools.
    #[arg(long, default_value_t = 15)]
    pub warmup: u64,
    /// Concurrent applications.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Keys per request (256 bits each).
    #[arg(long, default_value_t = 64)]
    pub keys: u32,
}

/// What `qkdni bench delivery` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub testbed: String,
    pub seconds: u64,
    pub clients: usize,
    pub keys_per_request: u32,
    pub policies: Vec<PolicyReport>,
}

/// The figures of one policy.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyReport {
    pub policy: String,
    /// Min-cut of the link key rates between a1 and a4, bit/s.
    pub min_cut_bps: f64,
    /// The rate the session's route can carry (its paths' bottlenecks), bit/s.
    pub route_bps: f64,
    pub one_way: Phase,
    pub two_way: Phase,
}

/// One measured phase.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// Key bits delivered per second (both directions added for two-way).
    pub delivered_bps: f64,
    /// `delivered_bps` / min-cut.
    pub of_min_cut: f64,
    /// `delivered_bps` / the route's rate.
    pub of_route: f64,
    /// Requests answered 503 (with Retry-After).
    pub refused: u64,
    /// Other failures.
    pub failures: u64,
}

/// Runs the benchmark; prints the report.
pub fn run(args: &DeliveryArgs) -> anyhow::Result<Report> {
    if args.clients == 0 || args.keys == 0 || args.seconds == 0 {
        bail!("--clients, --keys and --seconds must be at least 1");
    }
    let topology = Topology::parse(crate::testbed::SINGLE_DOMAIN)?;
    let exe = std::env::current_exe()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let mut policies = Vec::new();
    for policy in ["shortest", "multipath"] {
        let dir = std::env::temp_dir().join(format!(
            "qkdni-bench-delivery-{}-{policy}",
            std::process::id()
        ));
        eprintln!("{policy}: testbed coming up in {}", dir.display());
        let result = runtime.block_on(async {
            let endpoints = runner::up(&topology, &dir, &exe).await?;
            measure(args, &endpoints, policy).await
        });
        let down = runner::down(&dir);
        match result {
            Ok(report) => {
                let _ = std::fs::remove_dir_all(&dir);
                policies.push(report);
            }
            Err(error) => {
                eprintln!("logs kept in {}", dir.join("logs").display());
                return Err(error);
            }
        }
        down?;
    }
    Ok(Report {
        testbed: topology.name,
        seconds: args.seconds,
        clients: args.clients,
        keys_per_request: args.keys,
        policies,
    })
}

async fn measure(
    args: &DeliveryArgs,
    endpoints: &Endpoints,
    policy: &str,
) -> anyhow::Result<PolicyReport> {
    let controller = endpoints.controller("A").context("no controller")?;
    let netconf = NetconfClient::connect(
        controller.netconf.parse()?,
        endpoints.netconf_options(&endpoints.netconf_user),
    )
    .await?;
    netconf
        .edit_config("running", &crate::model::controller::policy_config(policy))
        .await?;
    let http = crate::tls::https_client(
        &endpoints.operator_tls_at(&controller.name),
        Duration::from_secs(10),
    )?;
    let topology: crate::control::topology::Topology = http
        .get(format!("{}/api/v1/topology", controller.rest))
        .bearer_auth(&controller.token)
        .send()
        .await?
        .json()
        .await?;
    let mut route_bps = f64::INFINITY;
    for (master, slave) in [(A, B), (B, A)] {
        let response = http
            .post(format!("{}/api/v1/sessions", controller.rest))
            .bearer_auth(&controller.token)
            .json(&serde_json::json!({"master_sae": master, "slave_sae": slave, "rate_bps": DEMAND_BPS}))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("session {master} -> {slave}: {}", response.text().await?);
        }
        let session: serde_json::Value = response.json().await?;
        // what the route can carry: the sum of its paths' bottleneck link rates
        let bottleneck = |path: &serde_json::Value| {
            path["links"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| topology.links.get(l.as_str()?))
                .map(|l| l.rate_bps)
                .fold(f64::INFINITY, f64::min)
        };
        let carried: f64 = session["paths"]
            .as_array()
            .into_iter()
            .flatten()
            .map(bottleneck)
            .filter(|r| r.is_finite())
            .sum();
        route_bps = route_bps.min(carried);
    }
    let min_cut_bps = qkdni_route_policy::min_cut_bps(&topology.network(), "a1", "a4")
        .map_err(|e| anyhow::anyhow!("min-cut: {e}"))?;
    eprintln!("{policy}: min-cut {min_cut_bps:.0} bit/s, route {route_bps:.0} bit/s");
    let one_way = phase(args, endpoints, &[(A, B)]).await?;
    let phase_of = |p: (f64, u64, u64)| Phase {
        delivered_bps: p.0.round(),
        of_min_cut: round3(p.0 / min_cut_bps),
        of_route: round3(p.0 / route_bps),
        refused: p.1,
        failures: p.2,
    };
    let one_way = phase_of(one_way);
    eprintln!("{policy} one way: {one_way:?}");
    let two_way = phase_of(phase(args, endpoints, &[(A, B), (B, A)]).await?);
    eprintln!("{policy} two way: {two_way:?}");
    Ok(PolicyReport {
        policy: policy.to_owned(),
        min_cut_bps,
        route_bps,
        one_way,
        two_way,
    })
}

/// Loads the directions `pairs` (clients split among them) for the warm-up and the measured
/// seconds; returns (key bits per second delivered while measured, refused, failures).
async fn phase(
    args: &DeliveryArgs,
    endpoints: &Endpoints,
    pairs: &[(&str, &str)],
) -> anyhow::Result<(f64, u64, u64)> {
    let delivered = AtomicU64::new(0);
    let refused = AtomicU64::new(0);
    let failures = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let request = KeyRequest {
        number: Some(args.keys),
        size: Some(KEY_BITS),
        ..Default::default()
    };
    let mut clients = Vec::new();
    for i in 0..args.clients {
        let (master, slave) = pairs[i % pairs.len()];
        let enc = endpoints.etsi014_client(master, Duration::from_secs(15))?;
        let dec = endpoints.etsi014_client(slave, Duration::from_secs(15))?;
        clients.push((i, master, slave, enc, dec));
    }
    let run =
        |(i, master, slave, enc, dec): (usize, &str, &str, etsi014::Client, etsi014::Client)| {
            let (request, delivered, refused, failures, stop) =
                (&request, &delivered, &refused, &failures, &stop);
            let master = master.to_owned();
            let slave = slave.to_owned();
            async move {
                let mut n = i as u64 + 1;
                while !stop.load(Ordering::Relaxed) {
                    n = n
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    match enc.enc_keys(&slave, request).await {
                        Ok(keys) => {
                            let ids: Vec<String> =
                                keys.keys.iter().map(|k| k.key_ID.clone()).collect();
                            match dec.dec_keys(&master, &ids).await {
                                Ok(got) if got.keys.len() == ids.len() => {
                                    delivered.fetch_add(ids.len() as u64, Ordering::Relaxed);
                                }
                                _ => {
                                    failures.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        Err(ClientError::Kme { status: 503, .. }) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            // Retry-After is 1 s; a crowd spreads its retries below it
                            let wait = 50 + (n >> 33) % 200;
                            tokio::time::sleep(Duration::from_millis(wait)).await;
                        }
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        };
    let timer = async {
        tokio::time::sleep(Duration::from_secs(args.warmup)).await;
        let (start, started) = (delivered.load(Ordering::Relaxed), Instant::now());
        let refused_before = refused.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        let keys = delivered.load(Ordering::Relaxed) - start;
        let elapsed = started.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        (
            (keys * u64::from(KEY_BITS)) as f64 / elapsed,
            refused.load(Ordering::Relaxed) - refused_before,
        )
    };
    let ((rate, refused_count), _) = tokio::join!(
        timer,
        futures::future::join_all(clients.into_iter().map(run))
    );
    Ok((rate, refused_count, failures.load(Ordering::Relaxed)))
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
