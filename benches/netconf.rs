//! NETCONF benchmarks over real KM agents (release build, SSH, libyang validation, fsync'd
//! running datastore): edit-config round trips per second against one agent, and the time
//! to push one configuration change to 100 agents in parallel.
//!
//! `cargo bench --bench netconf` prints a human summary and one JSON line.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use qkdni::netconf::client::NetconfClient;
use qkdni::testbed::{runner, topology::Topology};

/// A relay route to `dest` via `hop` (which must be a link peer of the node).
fn route(dest: &str, hop: &str) -> String {
    format!(
        "<qkd_node xmlns=\"urn:etsi:qkd:yang:etsi-qkd-node\"><key-manager xmlns=\"urn:qkdni:yang:qkdni-km\"><relay-routes><route><destination>{dest}</destination><next-hop>{hop}</next-hop></route></relay-routes></key-manager></qkd_node>"
    )
}

/// A link peer of node n{i} in the line.
fn peer_of(i: usize) -> String {
    if i == 0 {
        "n1".into()
    } else {
        format!("n{}", i - 1)
    }
}

/// A line of `n` nodes n0-n1-...-n{n-1} with slow links and small pools.
fn line(n: usize) -> Topology {
    let mut text = String::from("name = \"bench-netconf\"\n[[domains]]\nname = \"N\"\n");
    for i in 0..n {
        text.push_str(&format!("[[domains.nodes]]\nname = \"n{i}\"\n"));
    }
    for i in 1..n {
        text.push_str(&format!(
            "[[domains.links]]\nid = \"n{}-n{i}\"\nnodes = [\"n{}\", \"n{i}\"]\nrate_bps = 1000.0\ncapacity_blocks = 64\n",
            i - 1,
            i - 1
        ));
    }
    Topology::parse(&text).expect("generated topology")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let agents = 100;
    let dir = std::env::temp_dir().join(format!("qkdni-bench-netconf-{}", std::process::id()));
    let exe = Path::new(env!("CARGO_BIN_EXE_qkdni"));
    let started = Instant::now();
    let endpoints = runner::up(&line(agents), &dir, exe)
        .await
        .expect("testbed up");
    let startup = started.elapsed();

    // 1. edit-config round trips against one agent (n0, whose only peer is n1)
    let nc = runner::netconf(&endpoints, "n0").await.unwrap();
    let rounds = 300;
    let t = Instant::now();
    for i in 0..rounds {
        nc.edit_config("running", &route(&format!("d{}", i % 50), "n1"))
            .await
            .unwrap();
    }
    let per_second = rounds as f64 / t.elapsed().as_secs_f64();

    // 2. one change pushed to every agent in parallel (sessions already open)
    let mut sessions: Vec<Arc<NetconfClient>> = Vec::new();
    for i in 0..agents {
        sessions.push(runner::netconf(&endpoints, &format!("n{i}")).await.unwrap());
    }
    let mut push_ms = Vec::new();
    for round in 0..10 {
        let t = Instant::now();
        let pushes = sessions.iter().enumerate().map(|(i, s)| {
            let config = route(&format!("push{round}"), &peer_of(i));
            let s = s.clone();
            async move { s.edit_config("running", &config).await }
        });
        for result in futures::future::join_all(pushes).await {
            result.expect("push");
        }
        push_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    // including connection set-up: a fresh session per agent
    let t = Instant::now();
    let fresh = (0..agents).map(|i| {
        let endpoints = &endpoints;
        async move {
            let s = runner::netconf(endpoints, &format!("n{i}")).await?;
            let config = route("fresh", &peer_of(i));
            s.edit_config("running", &config)
                .await
                .map_err(|e| runner::TestbedError::Operation(e.to_string()))
        }
    });
    for result in futures::future::join_all(fresh).await {
        result.expect("fresh push");
    }
    let fresh_ms = t.elapsed().as_secs_f64() * 1e3;

    drop(sessions);
    runner::down(&dir).unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    let push = median(push_ms);
    println!(
        "NETCONF over SSH against real KM agents ({agents} agents started in {:.1} s):",
        startup.as_secs_f64()
    );
    println!("  edit-config round trips, one session, one agent: {per_second:.0} per second");
    println!(
        "  one change to {agents} agents in parallel (open sessions, median of 10): {push:.1} ms"
    );
    println!(
        "  one change to {agents} agents in parallel, connecting first:           {fresh_ms:.1} ms"
    );
    println!(
        "{}",
        serde_json::json!({
            "edit_config_per_s": per_second,
            "push_100_agents_ms": push,
            "push_100_agents_with_connect_ms": fresh_ms,
            "agents": agents,
        })
    );
}
