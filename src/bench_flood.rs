//! `qkdni bench flood`: how a KM holds under floods (issue 15), with its default limits.
//!
//! A two-KM testbed (no controller) comes up; then
//! 1. `--ssh` connections to the first KM's NETCONF port send their SSH identification and
//!    nothing more, while an SAE asks the same KM's ETSI 014 API for its status every 100 ms:
//!    the status latencies during the flood, and when the last idle connection was closed;
//! 2. `--clients` ETSI 014 clients, each on its own TLS connection, ask for the status at
//!    once: per-request latency (from the request's start, TLS handshake included),
//!    answers 200 and 503, and the KM's resident memory before, at the peak and once the
//!    clients are gone; then, with every connection open, all ask again at once: the
//!    KM's own answer time under the crowd, without the handshakes (on this machine the
//!    clients' and the KM's TLS handshakes share the same cores).
//!
//! Prints one JSON object on stdout. Timing targets belong here, not in the tests, which
//! assert the behaviour only.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::testbed::endpoints::Endpoints;
use crate::testbed::runner;
use crate::testbed::topology::Topology;

/// Arguments of `qkdni bench flood`.
#[derive(Debug, Clone, Args)]
pub struct FloodArgs {
    /// Idle connections to the NETCONF port.
    #[arg(long, default_value_t = 2000)]
    pub ssh: usize,
    /// Concurrent ETSI 014 clients.
    #[arg(long, default_value_t = 2000)]
    pub clients: usize,
}

/// What `qkdni bench flood` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ssh: SshFigure,
    pub etsi014: Etsi014Figure,
}

/// The idle-connection flood.
#[derive(Debug, Clone, Serialize)]
pub struct SshFigure {
    pub connections: usize,
    /// ETSI 014 status latencies during the flood, milliseconds (median, max).
    pub status_median_ms: f64,
    pub status_max_ms: f64,
    /// Seconds from the flood's start until the last connection was closed by the KM.
    pub all_closed_after_s: f64,
}

/// The crowd of ETSI 014 clients.
#[derive(Debug, Clone, Serialize)]
pub struct Etsi014Figure {
    pub clients: usize,
    pub answered_200: usize,
    pub answered_503: usize,
    pub failed: usize,
    /// Latency per client, milliseconds.
    pub median_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The second request of every client at once, on its open connection: answers 200
    /// and 503, and latency, milliseconds.
    pub open_200: usize,
    pub open_503: usize,
    pub open_median_ms: f64,
    pub open_p99_ms: f64,
    pub open_max_ms: f64,
    /// Resident memory of the KM, MiB: idle before, highest seen, 10 s after.
    pub rss_idle_mib: f64,
    pub rss_peak_mib: f64,
    pub rss_after_mib: f64,
}

const TOPOLOGY: &str = r#"name = "bench-flood"
[[domains]]
name = "F"
[[domains.nodes]]
name = "f1"
saes = ["sae-f1-1"]
[[domains.nodes]]
name = "f2"
saes = ["sae-f2-1"]
[[domains.links]]
id = "f1-f2"
nodes = ["f1", "f2"]
rate_bps = 1000000.0
"#;

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Runs the benchmark.
pub fn run(args: &FloodArgs) -> anyhow::Result<Report> {
    crate::conn_limit::raise_fd_limit()?;
    let exe = std::env::current_exe()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let topology = Topology::parse(TOPOLOGY)?;
    let dir = std::env::temp_dir().join(format!("qkdni-bench-flood-{}", std::process::id()));
    eprintln!("testbed coming up in {}", dir.display());
    let result = runtime.block_on(async {
        let endpoints = runner::up(&topology, &dir, &exe).await?;
        measure(args, &endpoints, &dir).await
    });
    let down = runner::down(&dir);
    let report = result.inspect_err(|_| {
        eprintln!("logs kept in {}", dir.join("logs").display());
    })?;
    down?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(report)
}

async fn measure(args: &FloodArgs, endpoints: &Endpoints, dir: &Path) -> anyhow::Result<Report> {
    let pid = *runner::process_ids(dir).get("f1").context("pid of f1")?;
    let sae = endpoints.etsi014_client("sae-f1-1", Duration::from_secs(30))?;
    sae.status("sae-f2-1").await?;
    let ssh = ssh_flood(args.ssh, endpoints, &sae).await?;
    eprintln!("{ssh:?}");
    let etsi014 = crowd(args.clients, endpoints, pid).await?;
    eprintln!("{etsi014:?}");
    Ok(Report { ssh, etsi014 })
}

async fn ssh_flood(
    n: usize,
    endpoints: &Endpoints,
    sae: &crate::etsi014::Client,
) -> anyhow::Result<SshFigure> {
    let addr = endpoints.node("f1").context("f1")?.netconf.clone();
    let started = Instant::now();
    let mut waits = Vec::new();
    for _ in 0..n {
        let addr = addr.clone();
        waits.push(tokio::spawn(async move {
            let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
                return Duration::ZERO;
            };
            let _ = stream.write_all(b"SSH-2.0-idle\r\n").await;
            let mut buf = [0u8; 4096];
            loop {
                match tokio::time::timeout(Duration::from_secs(120), stream.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return started.elapsed(),
                    Ok(Ok(_)) => {}
                }
            }
        }));
    }
    let mut latencies = Vec::new();
    for _ in 0..50 {
        let asked = Instant::now();
        sae.status("sae-f2-1").await?;
        latencies.push(asked.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut closed = Duration::ZERO;
    for wait in waits {
        closed = closed.max(wait.await?);
    }
    latencies.sort_by(f64::total_cmp);
    Ok(SshFigure {
        connections: n,
        status_median_ms: quantile(&latencies, 0.5),
        status_max_ms: quantile(&latencies, 1.0),
        all_closed_after_s: closed.as_secs_f64(),
    })
}

async fn crowd(n: usize, endpoints: &Endpoints, pid: u32) -> anyhow::Result<Etsi014Figure> {
    let tls = crate::tls::client_config(&endpoints.sae_tls("sae-f1-1").context("SAE")?)?;
    let url = format!(
        "{}/api/v1/keys/sae-f2-1/status",
        endpoints.node("f1").context("f1")?.etsi014
    );
    let rss_idle = rss_mib(pid);
    let peak = Arc::new(std::sync::Mutex::new(rss_idle));
    let watching = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                let now = rss_mib(pid);
                {
                    let mut p = peak.lock().expect("peak");
                    *p = p.max(now);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // every client asks once (connecting), waits for all others, and asks again at once
    let all_connected = Arc::new(tokio::sync::Barrier::new(n));
    let mut clients = Vec::new();
    for _ in 0..n {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls.clone())
            .timeout(Duration::from_secs(60))
            .build()?;
        let url = url.clone();
        let all_connected = all_connected.clone();
        clients.push(tokio::spawn(async move {
            let ask = || async {
                let asked = Instant::now();
                let status = http.get(&url).send().await.map(|r| r.status().as_u16());
                (status.ok(), asked.elapsed().as_secs_f64() * 1000.0)
            };
            let first = ask().await;
            all_connected.wait().await;
            (first, ask().await)
        }));
    }
    let (mut cold, mut open) = (Answers::default(), Answers::default());
    for client in clients {
        let (first, second) = client.await?;
        cold.add(first);
        open.add(second);
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    watching.abort();
    let rss_peak = *peak.lock().expect("peak");
    let (cold_ms, open_ms) = (cold.sorted(), open.sorted());
    Ok(Etsi014Figure {
        clients: n,
        answered_200: cold.ok,
        answered_503: cold.shed,
        failed: cold.failed + open.failed,
        median_ms: quantile(&cold_ms, 0.5),
        p99_ms: quantile(&cold_ms, 0.99),
        max_ms: quantile(&cold_ms, 1.0),
        open_200: open.ok,
        open_503: open.shed,
        open_median_ms: quantile(&open_ms, 0.5),
        open_p99_ms: quantile(&open_ms, 0.99),
        open_max_ms: quantile(&open_ms, 1.0),
        rss_idle_mib: rss_idle,
        rss_peak_mib: rss_peak,
        rss_after_mib: rss_mib(pid),
    })
}

/// Answers of one round of the crowd.
#[derive(Default)]
struct Answers {
    ok: usize,
    shed: usize,
    failed: usize,
    latencies_ms: Vec<f64>,
}

impl Answers {
    fn add(&mut self, (status, ms): (Option<u16>, f64)) {
        match status {
            Some(200) => self.ok += 1,
            Some(503) => self.shed += 1,
            _ => self.failed += 1,
        }
        self.latencies_ms.push(ms);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut ms = self.latencies_ms.clone();
        ms.sort_by(f64::total_cmp);
        ms
    }
}
