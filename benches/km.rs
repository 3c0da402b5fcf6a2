//! Key manager benchmarks over a real testbed (release build, real processes, mutual TLS,
//! fsync'd stores): ETSI GS QKD 014 enc_keys throughput and key relay latency per hop.
//!
//! `cargo bench --bench km` prints a human summary and one JSON line.

use std::path::Path;
use std::time::{Duration, Instant};

use qkdni::etsi014::{Client, KeyRequest};
use qkdni::testbed::{endpoints::Endpoints, runner, topology::Topology};

fn client(endpoints: &Endpoints, sae: &str) -> Client {
    endpoints
        .etsi014_client(sae, Duration::from_secs(30))
        .unwrap()
}

/// Keys per second with `workers` concurrent SAE connections, `per_request` keys each.
async fn throughput(
    endpoints: &Endpoints,
    slave: &str,
    per_request: u32,
    workers: usize,
    duration: Duration,
) -> (f64, f64) {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let alice = client(endpoints, "sae-b1-1");
        let slave = slave.to_owned();
        tasks.push(tokio::spawn(async move {
            let request = KeyRequest {
                number: Some(per_request),
                size: Some(256),
                ..Default::default()
            };
            let (mut keys, mut requests) = (0usize, 0usize);
            while Instant::now() < deadline {
                let got = alice.enc_keys(&slave, &request).await.expect("enc_keys");
                keys += got.keys.len();
                requests += 1;
            }
            (keys, requests)
        }));
    }
    let (mut keys, mut requests) = (0, 0);
    for task in tasks {
        let (k, r) = task.await.unwrap();
        keys += k;
        requests += r;
    }
    let secs = started.elapsed().as_secs_f64();
    (keys as f64 / secs, requests as f64 / secs)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// What one configuration of the testbed gives.
struct Figures {
    local_keys: f64,
    local_reqs: f64,
    adjacent_keys: f64,
    adjacent_reqs: f64,
    single_keys: f64,
    latency_ms: Vec<(f64, f64)>,
    per_hop: f64,
}

/// The security functions a run switches off (Y.3818 clause 10: audit log, at-rest
/// encryption, signed interworking messages), as `testbed/bench-line.toml` sections.
const VARIANTS: [(&str, &str); 5] = [
    ("all on (default)", ""),
    ("at-rest encryption off", "[km_key_store]\nencrypt = false\n"),
    ("audit log off", "[audit]\nenabled = false\n"),
    ("signing off", "[nonrepudiation]\nsign = false\n"),
    (
        "all off",
        "[km_key_store]\nencrypt = false\n[audit]\nenabled = false\n[nonrepudiation]\nsign = false\n",
    ),
];

async fn measure(topology: &Topology, window: Duration) -> Figures {
    let dir = std::env::temp_dir().join(format!(
        "qkdni-bench-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    let exe = Path::new(env!("CARGO_BIN_EXE_qkdni"));
    let endpoints = runner::up(topology, &dir, exe).await.expect("testbed up");
    let path: Vec<String> = ["b1", "b2", "b3", "b4", "b5"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    runner::wait_path_keys(&endpoints, &path, 100_000, Duration::from_secs(60))
        .await
        .expect("pools");

    let (local_keys, local_reqs) = throughput(&endpoints, "sae-b1-2", 128, 4, window).await;
    let (adjacent_keys, adjacent_reqs) = throughput(&endpoints, "sae-b2-1", 128, 4, window).await;
    let (single_keys, _) = throughput(&endpoints, "sae-b2-1", 1, 4, window).await;

    // Relay latency: one 256-bit key to slaves 1..4 hops away.
    let alice = client(&endpoints, "sae-b1-1");
    let one = KeyRequest {
        number: Some(1),
        size: Some(256),
        ..Default::default()
    };
    let mut latency_ms = Vec::new();
    for (hops, slave) in [
        (1, "sae-b2-1"),
        (2, "sae-b3-1"),
        (3, "sae-b4-1"),
        (4, "sae-b5-1"),
    ] {
        let mut samples = Vec::new();
        for _ in 0..60 {
            let started = Instant::now();
            alice.enc_keys(slave, &one).await.expect("relay");
            samples.push(started.elapsed().as_secs_f64() * 1e3);
        }
        latency_ms.push((hops as f64, median(samples)));
    }
    // least-squares slope: milliseconds added by each hop
    let n = latency_ms.len() as f64;
    let (sx, sy) = latency_ms
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (sxx, sxy) = latency_ms
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x * x, b + x * y));
    let per_hop = (n * sxy - sx * sy) / (n * sxx - sx * sx);

    runner::down(&dir).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    Figures {
        local_keys,
        local_reqs,
        adjacent_keys,
        adjacent_reqs,
        single_keys,
        latency_ms,
        per_hop,
    }
}

/// `cargo bench --bench km [-- --variants | --only <words>]`: the figures with every security
/// function on;
/// with `--variants`, again with each of them off in turn and all off (same machine, same
/// run), with the ratio of each to the run with all of them off.
#[tokio::main]
async fn main() {
    let topology_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testbed/bench-line.toml");
    let text = std::fs::read_to_string(topology_path).unwrap();
    let args: Vec<String> = std::env::args().collect();
    let variants = args.iter().any(|a| a == "--variants");
    // `--only <words>`: the one variant whose name contains them (to profile it alone)
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1));
    let window = Duration::from_secs(4);
    let mut runs = Vec::new();
    for (name, extra) in VARIANTS
        .iter()
        .filter(|(name, _)| only.is_none_or(|o| name.contains(o.as_str())))
        .take(if variants || only.is_some() {
            VARIANTS.len()
        } else {
            1
        })
    {
        let topology = Topology::parse(&format!("{text}\n{extra}")).unwrap();
        eprintln!("running: {name}");
        let figures = measure(&topology, window).await;
        print_figures(name, &figures);
        runs.push((*name, figures));
    }
    if variants {
        let base = &runs.last().unwrap().1;
        println!("Ratio to all off (enc_keys keys/s higher is better; latency lower is better):");
        for (name, f) in &runs {
            println!(
                "  {name:24} local {:.3}  adjacent {:.3}  1 key/req {:.3}  relay latency per hop {:.3}  4-hop latency {:.3}",
                f.local_keys / base.local_keys,
                f.adjacent_keys / base.adjacent_keys,
                f.single_keys / base.single_keys,
                f.per_hop / base.per_hop,
                f.latency_ms[3].1 / base.latency_ms[3].1,
            );
        }
    }
    println!(
        "{}",
        serde_json::Value::Array(
            runs.iter()
                .map(|(name, f)| serde_json::json!({
                    "variant": name,
                    "enc_keys_local_keys_per_s": f.local_keys,
                    "enc_keys_adjacent_keys_per_s": f.adjacent_keys,
                    "enc_keys_adjacent_single_keys_per_s": f.single_keys,
                    "relay_latency_ms": f.latency_ms.iter().map(|(h, ms)| serde_json::json!({"hops": h, "median_ms": ms})).collect::<Vec<_>>(),
                    "relay_ms_per_hop": f.per_hop,
                }))
                .collect()
        )
    );
}

fn print_figures(name: &str, f: &Figures) {
    println!("== {name}");
    println!("ETSI 014 enc_keys, 256-bit keys, mTLS, 4 concurrent SAE connections:");
    println!(
        "  master and slave on the same KM, 128 keys/request: {:.0} keys/s ({:.0} requests/s)",
        f.local_keys, f.local_reqs
    );
    println!(
        "  slave on the adjacent KM,       128 keys/request: {:.0} keys/s ({:.0} requests/s)",
        f.adjacent_keys, f.adjacent_reqs
    );
    println!(
        "  slave on the adjacent KM,         1 key/request:  {:.0} keys/s",
        f.single_keys
    );
    println!("Key relay latency (one key, median of 60):");
    for (hops, ms) in &f.latency_ms {
        println!("  {hops} hop(s): {ms:.2} ms");
    }
    println!("  per hop (least-squares slope): {:.2} ms", f.per_hop);
}
