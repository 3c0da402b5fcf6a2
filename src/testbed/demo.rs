//! The demonstration run by the README's first command.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};

use super::endpoints::Endpoints;
use super::runner;
use super::topology::Topology;
use crate::etsi014::{self, ClientError, KeyRequest};
use crate::quantum::LinkState;
use crate::tls;

/// Runs the demo on `topology` (default: the embedded single-domain testbed).
pub fn run(topology: Option<&Path>, dir: Option<&Path>) -> anyhow::Result<()> {
    let text = match topology {
        Some(path) => std::fs::read_to_string(path)?,
        None => super::SINGLE_DOMAIN.to_owned(),
    };
    let topology = Topology::parse(&text)?;
    let temp = std::env::temp_dir().join(format!("qkdni-demo-{}", std::process::id()));
    let dir = dir.unwrap_or(&temp).to_path_buf();
    let exe = std::env::current_exe()?;
    let runtime = tokio::runtime::Runtime::new()?;
    println!(
        "== bringing up testbed '{}' in {}",
        topology.name,
        dir.display()
    );
    let result = runtime.block_on(async {
        let endpoints = runner::up(&topology, &dir, &exe).await?;
        scenario(&topology, &endpoints, &dir).await
    });
    runner::down(&dir)?;
    println!("== testbed down");
    if dir == temp {
        let _ = std::fs::remove_dir_all(&temp);
    }
    result
}

fn client(endpoints: &Endpoints, sae: &str) -> anyhow::Result<etsi014::Client> {
    let files = endpoints.sae_tls(sae).context("unknown SAE")?;
    let http = tls::https_client(&files, Duration::from_secs(15))?;
    Ok(etsi014::Client::new(
        http,
        endpoints.sae_kme(sae).context("SAE without KME")?,
    ))
}

async fn scenario(topology: &Topology, endpoints: &Endpoints, dir: &Path) -> anyhow::Result<()> {
    let domain = &topology.domains[0];
    println!(
        "   {} nodes, {} QKD links, {} SAEs",
        domain.nodes.len(),
        domain.links.len(),
        endpoints.saes.len()
    );
    // The master is on the first node; the slave on the node farthest from it.
    let routes = domain.shortest_routes();
    let first = &domain.nodes[0];
    let path_to = |dest: &str| {
        let mut path = vec![first.name.clone()];
        while path.last().map(String::as_str) != Some(dest) {
            let here = path.last().expect("non-empty");
            let next = routes
                .get(here)
                .and_then(|r| r.get(dest))
                .cloned()
                .unwrap_or_else(|| dest.to_owned());
            path.push(next);
        }
        path
    };
    let far = domain
        .nodes
        .iter()
        .filter(|n| !n.saes.is_empty() && n.name != first.name)
        .max_by_key(|n| path_to(&n.name).len())
        .context("no second node with SAEs")?;
    let path = path_to(&far.name);
    let (master, slave) = (&first.saes[0], &far.saes[0]);
    println!(
        "== key supply {master} ({}) -> {slave} ({})",
        first.name, far.name
    );
    println!(
        "   relay route: {} ({} hops)",
        path.join(" -> "),
        path.len() - 1
    );
    let (alice, bob) = (client(endpoints, master)?, client(endpoints, slave)?);

    runner::wait_path_keys(endpoints, &path, 64, Duration::from_secs(30)).await?;
    let status = alice.status(slave).await?;
    println!(
        "   status: {} keys of {} bits ready towards {}, at most {} per request",
        status.stored_key_count, status.key_size, status.target_KME_ID, status.max_key_per_request
    );
    let request = KeyRequest {
        number: Some(4),
        size: Some(256),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let issued = alice.enc_keys(slave, &request).await?;
    let relay_time = started.elapsed();
    let ids: Vec<String> = issued.keys.iter().map(|k| k.key_ID.clone()).collect();
    let fetched = bob.dec_keys(master, &ids).await?;
    let same = issued
        .keys
        .iter()
        .zip(&fetched.keys)
        .all(|(a, b)| a.key_ID == b.key_ID && a.key == b.key);
    println!(
        "   {master} got {} keys in {:.1} ms:",
        ids.len(),
        relay_time.as_secs_f64() * 1e3
    );
    for id in &ids {
        println!("     key_ID {id}");
    }
    println!(
        "   {slave} fetched the same IDs: key material identical at both ends: {}",
        if same { "yes" } else { "NO" }
    );
    if !same {
        bail!("key material differs between master and slave");
    }
    match bob.dec_keys(master, &ids[..1]).await {
        Err(ClientError::Kme { status, body }) => {
            println!(
                "   a second fetch of {} is refused: HTTP {status} ({})",
                ids[0], body.message
            )
        }
        other => bail!("second fetch of a key was not refused: {other:?}"),
    }

    // Cut the last link of the route: its pool drains, then key supply stops, then recovers.
    let cut = endpoints
        .links
        .iter()
        .find(|(_, l)| {
            let n = &path[path.len() - 2..];
            l.nodes.contains(&n[0]) && l.nodes.contains(&n[1])
        })
        .map(|(id, _)| id.clone())
        .context("route link")?;
    println!("== fault: QKD link {cut} down");
    runner::set_link_state(dir, &cut, LinkState::Down).await?;
    let big = KeyRequest {
        number: Some(status.max_key_per_request),
        ..Default::default()
    };
    let mut delivered = 0;
    let refusal = loop {
        match alice.enc_keys(slave, &big).await {
            Ok(keys) => delivered += keys.keys.len(),
            Err(ClientError::Kme { status, body }) => {
                let reason = body
                    .details
                    .iter()
                    .flatten()
                    .find_map(|d| d.get("reason").and_then(|r| r.as_str()).map(str::to_owned))
                    .unwrap_or(body.message);
                break (status, reason);
            }
            Err(other) => return Err(other.into()),
        }
        if delivered > 1_000_000 {
            bail!("link pool never drained");
        }
    };
    println!(
        "   {delivered} more keys delivered from the stored pools, then HTTP {}:",
        refusal.0
    );
    println!("     {}", refusal.1);
    println!("== repair: QKD link {cut} up");
    runner::set_link_state(dir, &cut, LinkState::Up).await?;
    let started = std::time::Instant::now();
    runner::wait_path_keys(endpoints, &path, 64, Duration::from_secs(30)).await?;
    let issued = alice.enc_keys(slave, &request).await?;
    let ids: Vec<String> = issued.keys.iter().map(|k| k.key_ID.clone()).collect();
    let fetched = bob.dec_keys(master, &ids).await?;
    println!(
        "   key supply resumed after {:.1} s: {} keys, identical at both ends: {}",
        started.elapsed().as_secs_f64(),
        fetched.keys.len(),
        issued
            .keys
            .iter()
            .zip(&fetched.keys)
            .all(|(a, b)| a.key == b.key)
    );
    Ok(())
}
