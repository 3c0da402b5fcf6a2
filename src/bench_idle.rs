//! `qkdni bench idle`: the CPU an idle KM uses, by pool size. Pool accounting is O(1) (counts
//! kept in the store's transactions), so a KM whose pools are full costs the same whatever
//! their size: the figure shows it.
//!
//! For each `--capacities` value, a two-KM testbed (one 20 Mbit/s link of that capacity, no
//! controller) comes up; once the link's pool is full, the CPU time of both KM processes is
//! read from `/proc` over `--seconds`. Prints one JSON object on stdout.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;

use crate::testbed::runner;
use crate::testbed::topology::Topology;

/// Arguments of `qkdni bench idle`.
#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    /// Pool capacities to compare, in 256-bit blocks.
    #[arg(long, value_delimiter = ',', default_values_t = [4096usize, 409_600])]
    pub capacities: Vec<usize>,
    /// Seconds of idle CPU measured per capacity.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
}

/// What `qkdni bench idle` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub seconds: u64,
    pub pools: Vec<PoolFigure>,
}

/// Idle CPU at one pool size.
#[derive(Debug, Clone, Serialize)]
pub struct PoolFigure {
    pub capacity_blocks: usize,
    /// Blocks in the pool while measured (both ends' shares).
    pub stored_blocks: usize,
    /// CPU of each KM, percent of one core, the transmitter end first.
    pub cpu_percent: Vec<f64>,
}

fn topology(capacity: usize) -> String {
    format!(
        r#"name = "bench-idle"
[[domains]]
name = "I"
[[domains.nodes]]
name = "i1"
saes = ["sae-i1-1"]
[[domains.nodes]]
name = "i2"
saes = ["sae-i2-1"]
[[domains.links]]
id = "i1-i2"
nodes = ["i1", "i2"]
rate_bps = 20000000.0
capacity_blocks = {capacity}
"#
    )
}

/// CPU time (user + system) of process `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // fields after the command name (which may hold spaces) start at state (field 3)
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field =
        |n: usize| -> anyhow::Result<u64> { Ok(fields.get(n - 3).context("stat")?.parse()?) };
    Ok(field(14)? + field(15)?)
}

/// Runs the benchmark.
pub fn run(args: &IdleArgs) -> anyhow::Result<Report> {
    if args.capacities.is_empty() || args.seconds == 0 {
        bail!("--capacities and --seconds must not be empty or zero");
    }
    let exe = std::env::current_exe()?;
    let runtime = tokio::runtime::Runtime::new()?;
    // /proc reports CPU times in USER_HZ, which Linux fixes at 100 for user space
    let ticks_per_second = 100.0;
    let mut pools = Vec::new();
    for &capacity in &args.capacities {
        let topology = Topology::parse(&topology(capacity))?;
        let dir = std::env::temp_dir().join(format!(
            "qkdni-bench-idle-{}-{capacity}",
            std::process::id()
        ));
        eprintln!(
            "capacity {capacity}: testbed coming up in {}",
            dir.display()
        );
        let result = runtime.block_on(measure(
            args,
            &topology,
            &dir,
            &exe,
            capacity,
            ticks_per_second,
        ));
        let down = runner::down(&dir);
        let figure = result.inspect_err(|_| {
            eprintln!("logs kept in {}", dir.join("logs").display());
        })?;
        down?;
        let _ = std::fs::remove_dir_all(&dir);
        eprintln!("{figure:?}");
        pools.push(figure);
    }
    Ok(Report {
        seconds: args.seconds,
        pools,
    })
}

async fn measure(
    args: &IdleArgs,
    topology: &Topology,
    dir: &Path,
    exe: &Path,
    capacity: usize,
    ticks_per_second: f64,
) -> anyhow::Result<PoolFigure> {
    let endpoints = runner::up(topology, dir, exe).await?;
    // wait for the pool to fill (the module then pauses, like a real one with a full buffer)
    let deadline = Instant::now() + Duration::from_secs(600);
    let stored = loop {
        let reports = runner::link_reports(&endpoints, "i1").await?;
        let link = reports.first().context("the link")?;
        let stored = link.own_blocks + link.peer_blocks;
        // full to within 1 % (the last frame may stop short of the capacity)
        if stored + capacity / 100 >= capacity || Instant::now() > deadline {
            break stored;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pids = runner::process_ids(dir);
    let nodes = ["i1", "i2"];
    let mut before = Vec::new();
    for node in nodes {
        before.push(cpu_ticks(*pids.get(node).context("pid")?)?);
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let mut cpu_percent = Vec::new();
    for (node, was) in nodes.iter().zip(before) {
        let now = cpu_ticks(pids[*node])?;
        let percent = (now - was) as f64 / ticks_per_second / elapsed * 100.0;
        cpu_percent.push((percent * 10.0).round() / 10.0);
    }
    Ok(PoolFigure {
        capacity_blocks: capacity,
        stored_blocks: stored,
        cpu_percent,
    })
}
