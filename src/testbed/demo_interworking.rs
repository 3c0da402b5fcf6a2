//! The two-domain part of the demonstration (Y.3818 9.1 and 9.2): keys from an application in
//! QKDN A to one in QKDN B through gateway nodes (hop-by-hop relay over a Qx link) or through
//! an interworking node (key transfer KM-A -> KM-B over Kxi-1'), a fault on the route (the Qx
//! link, or the QKD link into the active IWN), the new route both controllers agree on over
//! Cxi, and delivery going on.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use super::demo_steps::{client, deliver, route_of, Orchestrator};
use super::endpoints::Endpoints;
use super::runner;
use super::topology::Topology;
use crate::etsi014::{self, KeyRequest};
use crate::quantum::LinkState;
use crate::tls;

fn orchestrator(endpoints: &Endpoints, domain: &str) -> anyhow::Result<Orchestrator> {
    let controller = endpoints
        .controller(domain)
        .with_context(|| format!("domain {domain} has no controller"))?;
    Ok(Orchestrator {
        http: tls::https_client(
            &endpoints.operator_tls_at(&controller.name),
            Duration::from_secs(30),
        )?,
        rest: controller.rest.clone(),
        token: controller.token.clone(),
    })
}

async fn events(o: &Orchestrator) -> anyhow::Result<Vec<Value>> {
    Ok(o.call(reqwest::Method::GET, "/api/v1/events", None)
        .await?
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// The interworking session coordinated by `a` (the master's domain).
async fn origin_session(a: &Orchestrator) -> anyhow::Result<Value> {
    let sessions = a
        .call(reqwest::Method::GET, "/api/v1/sessions", None)
        .await?;
    sessions
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["interworking"]["role"] == "origin")
        .cloned()
        .context("no interworking session")
}

/// Asks for keys until the pools on the route hold enough (right after start-up they fill).
async fn first_keys(alice: &etsi014::Client, slave: &str) -> anyhow::Result<()> {
    let request = KeyRequest {
        number: Some(1),
        size: Some(256),
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match alice.enc_keys(slave, &request).await {
            Ok(_) => return Ok(()),
            Err(error) if Instant::now() > deadline => return Err(error.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

fn print_events(domain: &str, events: &[Value], transaction: &str) {
    for e in events.iter().filter(|e| e["transaction"] == transaction) {
        println!(
            "   controller-{domain}: {:<20} {}",
            e["kind"].as_str().unwrap_or_default(),
            e["detail"].as_str().unwrap_or_default()
        );
    }
}

/// Prints the controller's transfer key life-cycle records (Y.3818 9.2, procedure 1).
async fn transfer_records(o: &Orchestrator, domain: &str) -> anyhow::Result<()> {
    // the IWN KMs' notifications reach their controllers right after the keys
    let deadline = Instant::now() + Duration::from_secs(5);
    let records = loop {
        let records = o
            .call(reqwest::Method::GET, "/api/v1/transfers", None)
            .await?;
        let records = records.as_array().cloned().unwrap_or_default();
        if !records.is_empty() || Instant::now() > deadline {
            break records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for r in records.iter().rev().take(1) {
        println!(
            "   controller-{domain} keeps the transfer's life-cycle record: {} {} key(s) of {} bits for {}, {} by {}, relay {}",
            r["state"].as_str().unwrap_or_default(),
            r["key_ids"].as_array().map_or(0, Vec::len),
            r["key_size"],
            r["slave_saes"].as_array().into_iter().flatten().filter_map(Value::as_str).collect::<Vec<_>>().join(", "),
            r["role"].as_str().unwrap_or_default(),
            r["node"].as_str().unwrap_or_default(),
            r["relay_id"].as_str().unwrap_or_default(),
        );
    }
    Ok(())
}

pub(super) async fn scenario(
    topology: &Topology,
    endpoints: &Endpoints,
    dir: &Path,
) -> anyhow::Result<()> {
    for domain in &topology.domains {
        let border: Vec<String> = domain
            .nodes
            .iter()
            .filter_map(|n| match topology.iwn_of(&n.name) {
                Some((iwn, _)) => Some(format!("{} (in {})", n.name, iwn.name)),
                None => n.gateway.then(|| format!("{} (gateway)", n.name)),
            })
            .collect();
        println!(
            "   QKDN {}: {} KM nodes (border: {}), {} QKD links, its own CA, controller and manager",
            domain.name,
            domain.nodes.len(),
            border.join(", "),
            domain.links.len()
        );
    }
    for link in &topology.qx_links {
        println!(
            "   Qx link {}: {} <-> {}",
            link.id, link.nodes[0], link.nodes[1]
        );
    }
    for iwn in &topology.iwns {
        println!(
            "   interworking node {}: KM-A {} and KM-B {} (separate processes, transfer link {}, no QKD link between them){}",
            iwn.name,
            iwn.nodes[0],
            iwn.nodes[1],
            iwn.transfer_link(),
            if iwn.control {
                "; hosts both controllers and managers (Cxi', Mxi')"
            } else {
                ""
            }
        );
    }
    let (a_domain, b_domain) = (&topology.domains[0], &topology.domains[1]);
    let master = a_domain
        .nodes
        .iter()
        .find_map(|n| n.saes.first())
        .context("no SAE in the first domain")?;
    let slave = b_domain
        .nodes
        .iter()
        .find_map(|n| n.saes.first())
        .context("no SAE in the second domain")?;
    let (a, b) = (
        orchestrator(endpoints, &a_domain.name)?,
        orchestrator(endpoints, &b_domain.name)?,
    );
    let (alice, bob) = (client(endpoints, master)?, client(endpoints, slave)?);

    // the emulated QKD links fill their key pools first
    for link in topology
        .domains
        .iter()
        .flat_map(|d| &d.links)
        .chain(&topology.qx_links)
    {
        let [a, b] = &link.nodes;
        for hop in [[a.clone(), b.clone()], [b.clone(), a.clone()]] {
            runner::wait_path_keys(endpoints, &hop, 16, Duration::from_secs(30)).await?;
        }
    }
    println!(
        "== {master} (QKDN {}) asks its KME for keys shared with {slave} (QKDN {})",
        a_domain.name, b_domain.name
    );
    let cxi = if topology.iwns.iter().any(|i| i.control) {
        "Cxi' (both controllers run in an IWN)"
    } else {
        "Cxi"
    };
    println!("   its KM does not know {slave}: it asks controller-{} for an interworking route, which agrees it with controller-{} over {cxi}", a_domain.name, b_domain.name);
    first_keys(&alice, slave).await?;
    let session = origin_session(&a).await?;
    let transaction = session["interworking"]["transaction"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    print_events(&a_domain.name, &events(&a).await?, &transaction);
    print_events(&b_domain.name, &events(&b).await?, &transaction);
    let path = route_of(&session);
    let border = session["interworking"]["qx_link"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let iwn = topology.iwns.iter().find(|i| i.transfer_link() == border);
    match iwn {
        Some(iwn) => println!(
            "== keys relayed inside QKDN {} to KM-A {} of interworking node {}, transferred to KM-B {} over Kxi-1' (ETSI GS QKD 020 V1.1.1), relayed on in QKDN {}",
            a_domain.name, iwn.nodes[0], iwn.name, iwn.nodes[1], b_domain.name
        ),
        None => println!(
            "== keys relayed hop by hop across the domains (Kxi-1, ETSI GS QKD 020 V1.1.1, over Qx link {border})"
        ),
    }
    deliver(&alice, &bob, master, slave, 4).await?;
    if iwn.is_some() {
        transfer_records(&a, &a_domain.name).await?;
        transfer_records(&b, &b_domain.name).await?;
    }

    // the fault: the Qx link, or the QKD link into the active IWN's KM-A
    let cut = topology
        .border_fault(&border, &path)
        .context("the route does not enter the IWN over a QKD link")?;
    let (skip_a, skip_b) = (events(&a).await?.len(), events(&b).await?.len());
    println!(
        "== fault: {} {cut} down (on the route {} -> ...)",
        if iwn.is_some() {
            "the QKD link into the interworking node,"
        } else {
            "Qx link"
        },
        path.join(" -> ")
    );
    let cut_at = Instant::now();
    runner::set_link_state(dir, &cut, LinkState::Down).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (reroute, agreed) = loop {
        let a_events = events(&a).await?;
        let b_events = events(&b).await?;
        let reroute = a_events
            .iter()
            .skip(skip_a)
            .find(|e| e["kind"] == "reroute" || e["kind"] == "reroute-failed")
            .cloned();
        if let Some(reroute) = reroute {
            if reroute["kind"] == "reroute-failed" {
                bail!("no other route: {}", reroute["detail"]);
            }
            let agreed = b_events.iter().skip(skip_b).any(|e| {
                e["kind"] == "interworking-commit" && e["transaction"] == reroute["transaction"]
            });
            if agreed {
                break (reroute, cut_at.elapsed());
            }
        }
        if Instant::now() > deadline {
            bail!("no agreed reroute within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let transaction = reroute["transaction"].as_str().unwrap_or_default();
    print_events(&a_domain.name, &events(&a).await?, transaction);
    print_events(&b_domain.name, &events(&b).await?, transaction);
    println!(
        "   both controllers agreed (transaction {transaction}) and installed the new route {:.0} ms after the fault",
        agreed.as_secs_f64() * 1e3
    );
    let session = origin_session(&a).await?;
    let path = route_of(&session);
    runner::wait_path_keys(endpoints, &path, 16, Duration::from_secs(30)).await?;
    println!(
        "== key delivery continues over {} (border: {}) and on in QKDN {}",
        path.join(" -> "),
        session["interworking"]["qx_link"]
            .as_str()
            .unwrap_or_default(),
        b_domain.name
    );
    deliver(&alice, &bob, master, slave, 4).await?;
    if let Some(manager) = endpoints.manager(&b_domain.name) {
        let http = tls::https_client_trusting(
            std::slice::from_ref(&endpoints.ca_cert),
            Duration::from_secs(10),
        )?;
        let latest: Value = http
            .get(format!("{}/api/v1/reports/latest", manager.rest))
            .bearer_auth(&manager.token)
            .send()
            .await?
            .json()
            .await
            .unwrap_or_default();
        if !latest["received"].is_null() {
            println!(
                "== management layer: manager-{} holds the performance and security report pack sent by manager-{} over Mxi",
                b_domain.name, a_domain.name
            );
        }
    }
    println!("== repair: link {cut} up");
    runner::set_link_state(dir, &cut, LinkState::Up).await?;
    Ok(())
}
