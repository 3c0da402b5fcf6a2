//! The demonstration run by the README's first command.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};

use super::demo_steps::{client, deliver, route_of, Orchestrator};
use super::endpoints::Endpoints;
use super::runner;
use super::topology::Topology;
use crate::quantum::LinkState;
use crate::tls;

/// Runs the demo on `topology` (default: the embedded two-domain testbed with gateway nodes);
/// with `hold`, waits for Enter before the scenario and after it.
pub fn run(topology: Option<&Path>, dir: Option<&Path>, hold: bool) -> anyhow::Result<()> {
    let text = match topology {
        Some(path) => std::fs::read_to_string(path)?,
        None => super::TWO_DOMAIN_GWN.to_owned(),
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
        dashboards(&topology, &endpoints).await?;
        if hold {
            wait_for_enter("== open a dashboard, then press Enter to start the scenario").await;
        } else {
            println!("   (--hold keeps the testbed up for the dashboards, before and after the scenario)");
        }
        let result = scenario(&topology, &endpoints, &dir).await;
        if hold {
            wait_for_enter("== the testbed stays up: press Enter to take it down").await;
        }
        result
    });
    runner::down(&dir)?;
    println!("== testbed down");
    if dir == temp {
        let _ = std::fs::remove_dir_all(&temp);
    }
    result
}

/// Prints each controller's dashboard URL and a one-time login link for it; for a domain
/// with distributed control (no controller, no dashboard), where its speaker shows what it
/// agreed.
async fn dashboards(topology: &Topology, endpoints: &Endpoints) -> anyhow::Result<()> {
    for (domain, d) in &endpoints.domains {
        let speaker = topology
            .domains
            .iter()
            .filter(|t| &t.name == domain)
            .find_map(|t| t.speaker(&topology.iwns));
        if let Some((speaker, node)) = speaker.and_then(|s| Some((s, d.nodes.get(&s.name)?))) {
            println!(
                "   QKDN {domain} has no controller (distributed control), so no dashboard: its speaker {} shows the sessions it agreed and the crossings on it at {}/admin/v1/interworking (operator certificate)",
                speaker.name, node.kma
            );
        }
        let Some(c) = &d.controller else { continue };
        let orchestrator = Orchestrator {
            http: tls::https_client(&endpoints.operator_tls_at(&c.name), Duration::from_secs(30))?,
            rest: c.rest.clone(),
            token: c.token.clone(),
        };
        let login = orchestrator
            .call(reqwest::Method::POST, "/api/v1/dashboard/logins", None)
            .await?;
        println!(
            "   dashboard of QKDN {domain}: {}{}\n     one-time login: {}{} (once, within {} s; the CA: {})",
            c.rest,
            login["dashboard_path"].as_str().unwrap_or_default(),
            c.rest,
            login["login_path"].as_str().unwrap_or_default(),
            login["expires_in_seconds"],
            endpoints.ca_cert.display(),
        );
    }
    Ok(())
}

/// Prints `prompt` and waits for a line on standard input (or its end).
async fn wait_for_enter(prompt: &str) {
    use tokio::io::AsyncBufReadExt;
    println!("{prompt}");
    let mut line = String::new();
    let _ = tokio::io::BufReader::new(tokio::io::stdin())
        .read_line(&mut line)
        .await;
}

async fn scenario(topology: &Topology, endpoints: &Endpoints, dir: &Path) -> anyhow::Result<()> {
    if topology.domains.len() > 1 && !(topology.qx_links.is_empty() && topology.iwns.is_empty()) {
        return super::demo_interworking::scenario(topology, endpoints, dir).await;
    }
    let domain = &topology.domains[0];
    println!(
        "   {} nodes, {} QKD links, {} SAEs, {}",
        domain.nodes.len(),
        domain.links.len(),
        endpoints.saes.len(),
        if domain.controller {
            "centralized control"
        } else {
            "static relay routes"
        }
    );
    let controller = endpoints
        .controller(&domain.name)
        .context("the demo needs a domain controller")?;
    let orchestrator = Orchestrator {
        http: tls::https_client(&endpoints.operator_tls(), Duration::from_secs(30))?,
        rest: controller.rest.clone(),
        token: controller.token.clone(),
    };
    // The master is on the first node; the slave on the last one.
    let first = &domain.nodes[0];
    let last = domain
        .nodes
        .iter()
        .rev()
        .find(|n| !n.saes.is_empty() && n.name != first.name)
        .context("no second node with SAEs")?;
    let (master, slave) = (&first.saes[0], &last.saes[0]);
    println!(
        "== application {master} ({}) asks its KM for keys shared with {slave} ({}): the KM has no route, \
         asks the controller, which routes and installs one on demand",
        first.name, last.name
    );
    let (alice, bob) = (client(endpoints, master)?, client(endpoints, slave)?);
    let asked = std::time::Instant::now();
    let deadline = asked + Duration::from_secs(30);
    loop {
        match deliver(&alice, &bob, master, slave, 1).await {
            Ok(()) => break,
            // the pools along a new route may still be filling
            Err(error) if std::time::Instant::now() < deadline => {
                tracing::debug!(%error, "first keys not yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => return Err(error.context("keys on demand")),
        }
    }
    let sessions = orchestrator
        .call(reqwest::Method::GET, "/api/v1/sessions", None)
        .await?;
    let session = sessions
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["master_sae"] == master.as_str() && s["slave_sae"] == slave.as_str())
        .cloned()
        .context("the on-demand session")?;
    let id = session["id"].as_str().unwrap_or_default().to_owned();
    let path = route_of(&session);
    println!(
        "   first key after {:.0} ms; session {id} created on demand: relay route {} ({} hops)",
        asked.elapsed().as_secs_f64() * 1e3,
        path.join(" -> "),
        path.len() - 1
    );
    runner::wait_path_keys(endpoints, &path, 64, Duration::from_secs(30)).await?;
    println!("== ETSI GS QKD 014 key delivery across the relays");
    deliver(&alice, &bob, master, slave, 4).await?;

    // Cut a link in the middle of the route: the controller reroutes.
    let middle = path.len() / 2;
    let (a, b) = (&path[middle - 1], &path[middle]);
    let cut = endpoints
        .links
        .iter()
        .find(|(_, l)| l.nodes.contains(a) && l.nodes.contains(b))
        .map(|(id, _)| id.clone())
        .context("route link")?;
    println!("== fault: QKD link {cut} down");
    runner::set_link_state(dir, &cut, LinkState::Down).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let rerouted = loop {
        let events = orchestrator
            .call(reqwest::Method::GET, "/api/v1/events", None)
            .await?;
        let found = events
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["kind"] == "reroute" || e["kind"] == "reroute-failed")
            .cloned();
        if let Some(event) = found {
            break event;
        }
        if std::time::Instant::now() > deadline {
            bail!("the controller did not react to the fault within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("   controller: {} ({:.1} ms from the agent's notification to the new route committed on every KM)",
        rerouted["detail"].as_str().unwrap_or_default(), rerouted["duration_ms"].as_f64().unwrap_or_default());
    let session = orchestrator
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/sessions/{id}"),
            None,
        )
        .await?;
    let path = route_of(&session);
    if session["state"] == "active" {
        runner::wait_path_keys(endpoints, &path, 64, Duration::from_secs(30)).await?;
        println!("== key delivery continues over {}", path.join(" -> "));
        deliver(&alice, &bob, master, slave, 4).await?;
    } else {
        println!("   no other route exists: the session waits for the link to return");
    }
    println!("== repair: QKD link {cut} up");
    runner::set_link_state(dir, &cut, LinkState::Up).await?;
    orchestrator
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/sessions/{id}"),
            None,
        )
        .await
        .ok();
    println!("   session {id} closed; its relay routes removed from the KMs");
    Ok(())
}
