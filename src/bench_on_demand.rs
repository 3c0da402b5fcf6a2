//! `qkdni bench on-demand`: the first key request of an application for another inside one
//! domain, with no session beforehand. On the embedded single-domain testbed
//! ([`crate::testbed::SINGLE_DOMAIN`]), once every link's pool holds key both ways, for
//! `--pairs` SAE pairs on nodes without a direct link: the master's `enc_keys` (its KM asks
//! the controller, which routes and installs a session for the pair; then the keys are
//! relayed) and the slave's `dec_keys`, timed together; the session is then deleted, so that
//! every pair starts without routes. Prints one JSON object on stdout.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;

use crate::etsi014::KeyRequest;
use crate::testbed::endpoints::Endpoints;
use crate::testbed::runner;
use crate::testbed::topology::Topology;

/// Arguments of `qkdni bench on-demand`.
#[derive(Debug, Clone, Args)]
pub struct OnDemandArgs {
    /// SAE pairs timed (each with no session before its first request).
    #[arg(long, default_value_t = 20)]
    pub pairs: usize,
}

/// What `qkdni bench on-demand` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub pairs: usize,
    /// First `enc_keys` (route agreed and installed on demand, one key relayed) plus the
    /// slave's `dec_keys`, ms.
    pub first_request_ms: crate::bench_interworking::Stats,
}

/// Brings the testbed up, measures, brings it down (also on error).
pub fn run(args: &OnDemandArgs) -> anyhow::Result<Report> {
    let topology = Topology::parse(crate::testbed::SINGLE_DOMAIN)?;
    let dir = std::env::temp_dir().join(format!("qkdni-bench-on-demand-{}", std::process::id()));
    let exe = std::env::current_exe()?;
    let runtime = tokio::runtime::Runtime::new()?;
    eprintln!("testbed coming up in {}", dir.display());
    let result = runtime.block_on(async {
        let endpoints = runner::up(&topology, &dir, &exe).await?;
        measure(args, &endpoints).await
    });
    let down = runner::down(&dir);
    let report =
        result.inspect_err(|_| eprintln!("logs kept in {}", dir.join("logs").display()))?;
    down?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(report)
}

async fn measure(args: &OnDemandArgs, endpoints: &Endpoints) -> anyhow::Result<Report> {
    for link in endpoints.links.values() {
        let [a, b] = &link.nodes;
        for path in [[a.clone(), b.clone()], [b.clone(), a.clone()]] {
            runner::wait_path_keys(endpoints, &path, 32, Duration::from_secs(60)).await?;
        }
    }
    // pairs of SAEs on nodes without a direct link: a KM relays to a neighbour without a
    // route, to any other node only over one the controller installs
    let adjacent = |a: &str, b: &str| {
        endpoints
            .links
            .values()
            .any(|l| l.nodes.iter().any(|n| n == a) && l.nodes.iter().any(|n| n == b))
    };
    let saes: Vec<(&String, &String)> = endpoints.saes.iter().map(|(s, e)| (s, &e.node)).collect();
    let pairs: Vec<(&String, &String)> = saes
        .iter()
        .flat_map(|(m, mn)| {
            saes.iter()
                .filter(move |(_, sn)| sn != mn && !adjacent(mn, sn))
                .map(move |(s, _)| (*m, *s))
        })
        .take(args.pairs)
        .collect();
    if pairs.len() < args.pairs {
        bail!(
            "the testbed has only {} SAE pairs on nodes without a direct link",
            pairs.len()
        );
    }
    let controller = endpoints
        .domains
        .keys()
        .next()
        .and_then(|d| endpoints.controller(d))
        .context("the testbed has no controller")?;
    let http = crate::tls::https_client(
        &endpoints.operator_tls_at(&controller.name),
        Duration::from_secs(15),
    )?;
    let sessions = || async {
        let response = http
            .get(format!("{}/api/v1/sessions", controller.rest))
            .bearer_auth(&controller.token)
            .send()
            .await?;
        anyhow::Ok(response.json::<Vec<serde_json::Value>>().await?)
    };
    let request = KeyRequest {
        number: Some(1),
        size: Some(256),
        ..Default::default()
    };
    let mut times = Vec::new();
    for (master, slave) in pairs {
        let timeout = Duration::from_secs(15);
        let (alice, bob) = (
            endpoints.etsi014_client(master, timeout)?,
            endpoints.etsi014_client(slave, timeout)?,
        );
        let started = Instant::now();
        let keys = alice
            .enc_keys(slave, &request)
            .await
            .with_context(|| format!("{master} -> {slave}"))?;
        let ids: Vec<String> = keys.keys.iter().map(|k| k.key_ID.clone()).collect();
        bob.dec_keys(master, &ids).await?;
        let took = started.elapsed().as_secs_f64() * 1e3;
        // the session made on demand goes, and its routes with it: the next pair starts bare
        let made = sessions().await?;
        if made.len() != 1 {
            bail!(
                "{master} -> {slave}: {} sessions, not one made on demand",
                made.len()
            );
        }
        let id = made[0]["id"].as_str().context("session id")?;
        http.delete(format!("{}/api/v1/sessions/{id}", controller.rest))
            .bearer_auth(&controller.token)
            .send()
            .await?
            .error_for_status()?;
        eprintln!("{master} -> {slave}: {took:.1} ms");
        times.push(took);
    }
    Ok(Report {
        pairs: times.len(),
        first_request_ms: crate::bench_interworking::Stats::of(&mut times),
    })
}
