//! The two-domain part of the demonstration (Y.3818 9.1 and 9.2): keys from an application in
//! QKDN A to one in QKDN B through gateway nodes (hop-by-hop relay over a Qx link) or through
//! an interworking node (key transfer KM-A -> KM-B over Kxi-1'), a fault on the route (the Qx
//! link, or the QKD link into the active IWN), the new route both domains agree on over
//! Cxi, and delivery going on. A domain with distributed control has no controller: the story
//! reads its speaker (the border node that speaks Cxi for it) instead, and the route
//! inside it from its nodes' link-state routes.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use super::demo_steps::{client, deliver, route_of, Orchestrator};
use super::endpoints::Endpoints;
use super::runner;
use super::topology::{Domain, Topology};
use crate::etsi014::{self, KeyRequest};
use crate::quantum::LinkState;
use crate::tls;

/// Interval between two polls of both domains after the fault.
const POLL: Duration = Duration::from_millis(20);

/// A NETCONF subtree filter for a node's link-state routes.
const ROUTES_FILTER: &str = "<qkd_node xmlns=\"urn:etsi:qkd:yang:etsi-qkd-node\"><key-manager xmlns=\"urn:qkdni:yang:qkdni-km\"><local-control><routes/></local-control></key-manager></qkd_node>";

/// Who answers for a domain's control plane in the story.
enum Control {
    /// The domain controller, called as the domain's orchestrator.
    Controller(Orchestrator),
    /// A distributed domain: no controller; its speaker, the gateway node whose KM speaks
    /// Cxi for it (read over its KMA's admin API).
    Speaker(String),
}

/// One domain of the story and its control plane.
struct Side {
    domain: String,
    control: Control,
}

/// An interworking session as one domain holds it (a controller's session, or a speaker's).
struct Agreed {
    /// `origin` or `segment`.
    role: String,
    id: String,
    transaction: String,
    /// The Qx link (or an IWN's transfer link) the keys cross.
    border: String,
    /// The gateway node of this domain on the border, and the one across it (speaker only).
    gateway: String,
    across: String,
    /// The relay route through this domain: origin, from the master's node to the peer's
    /// gateway node; segment, from this domain's gateway node to the slave's node.
    path: Vec<String>,
}

impl Side {
    fn new(endpoints: &Endpoints, topology: &Topology, domain: &Domain) -> anyhow::Result<Self> {
        let control = if domain.distributed {
            let speaker = domain.speaker(&topology.iwns).with_context(|| {
                format!("distributed domain {} has no border node", domain.name)
            })?;
            Control::Speaker(speaker.name.clone())
        } else {
            Control::Controller(orchestrator(endpoints, &domain.name)?)
        };
        Ok(Self {
            domain: domain.name.clone(),
            control,
        })
    }

    fn orchestrator(&self) -> Option<&Orchestrator> {
        match &self.control {
            Control::Controller(o) => Some(o),
            Control::Speaker(_) => None,
        }
    }

    /// How the story names this domain's control plane.
    fn who(&self) -> String {
        match &self.control {
            Control::Controller(_) => format!("controller-{}", self.domain),
            Control::Speaker(node) => format!("{}'s speaker {node}", self.domain),
        }
    }

    /// The controller's events (a speaker keeps none).
    async fn events(&self) -> anyhow::Result<Vec<Value>> {
        match &self.control {
            Control::Controller(o) => events(o).await,
            Control::Speaker(_) => Ok(Vec::new()),
        }
    }

    /// The session between `master` and `slave` in which this domain plays `role` (`origin`
    /// or `segment`), if it holds one.
    async fn session(
        &self,
        endpoints: &Endpoints,
        role: &str,
        master: &str,
        slave: &str,
    ) -> anyhow::Result<Option<Agreed>> {
        let of = |s: &&Value| s["master_sae"] == master && s["slave_sae"] == slave;
        match &self.control {
            Control::Controller(o) => {
                let sessions = o
                    .call(reqwest::Method::GET, "/api/v1/sessions", None)
                    .await?;
                let Some(s) = (sessions.as_array().into_iter().flatten())
                    .filter(of)
                    .find(|s| s["interworking"]["role"] == role)
                else {
                    return Ok(None);
                };
                let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                Ok(Some(Agreed {
                    role: role.to_owned(),
                    id: text(&s["id"]),
                    transaction: text(&s["interworking"]["transaction"]),
                    border: text(&s["interworking"]["qx_link"]),
                    gateway: String::new(),
                    across: String::new(),
                    path: route_of(s),
                }))
            }
            Control::Speaker(node) => {
                let report = runner::interworking_report(endpoints, node).await?;
                let Some(s) = (report["sessions"].as_array().into_iter().flatten())
                    .filter(of)
                    .find(|s| s["role"] == role)
                else {
                    return Ok(None);
                };
                let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                let (gateway, across) = (text(&s["gateway"]), text(&s["entry"]["across"]));
                Ok(Some(Agreed {
                    role: role.to_owned(),
                    id: text(&s["id"]),
                    transaction: text(&s["transaction"]),
                    border: text(&s["entry"]["link"]),
                    gateway,
                    across,
                    path: Vec::new(),
                }))
            }
        }
    }

    /// [`Side::session`], which must exist; with a speaker, the route inside the domain
    /// followed from `end` (the master's node for `origin`, the slave's for `segment`) over
    /// the nodes' link-state routes.
    async fn agreed(
        &self,
        endpoints: &Endpoints,
        role: &str,
        (master, slave): (&str, &str),
        end: &str,
    ) -> anyhow::Result<Agreed> {
        let mut agreed = self
            .session(endpoints, role, master, slave)
            .await?
            .with_context(|| format!("{} holds no {role} session", self.who()))?;
        if let Control::Speaker(_) = self.control {
            agreed.path = if role == "origin" {
                let mut path = traced(endpoints, end, &agreed.gateway).await?;
                path.push(agreed.across.clone());
                path
            } else {
                traced(endpoints, &agreed.gateway, end).await?
            };
        }
        Ok(agreed)
    }

    /// What this domain's control plane did in `transaction`: the controller's events, or
    /// the session its speaker agreed.
    fn print(&self, events: &[Value], agreed: Option<&Agreed>, transaction: &str) {
        match &self.control {
            Control::Controller(_) => print_events(&self.domain, events, transaction),
            Control::Speaker(node) => {
                let Some(s) = agreed.filter(|s| s.transaction == transaction) else {
                    return;
                };
                let (what, cross) = if s.role == "origin" {
                    ("session", "keys leave at gateway")
                } else {
                    ("segment", "keys enter at gateway")
                };
                println!(
                    "   {} has no controller: its speaker {node} agreed {what} {} (transaction {}): {cross} {} over Qx link {} ({} across); route inside {} from its nodes' link state: {}",
                    self.domain,
                    s.id,
                    s.transaction,
                    s.gateway,
                    s.border,
                    s.across,
                    self.domain,
                    s.path.join(" -> ")
                );
            }
        }
    }
}

/// The route from `from` to `to` inside a distributed domain: each node's next hop toward
/// `to` in its link-state routes (NETCONF `local-control/routes`).
async fn traced(endpoints: &Endpoints, from: &str, to: &str) -> anyhow::Result<Vec<String>> {
    let mut path = vec![from.to_owned()];
    while path.last().map(String::as_str) != Some(to) {
        let at = path.last().cloned().unwrap_or_default();
        let nc = runner::netconf(endpoints, &at).await?;
        let xml = nc.get(Some(ROUTES_FILTER)).await;
        let _ = nc.close().await;
        let xml = xml.with_context(|| format!("node {at}: link-state routes"))?;
        let doc = roxmltree::Document::parse(&xml)?;
        let text = |n: roxmltree::Node, name: &str| {
            n.children()
                .find(|c| c.has_tag_name(name))
                .and_then(|c| c.text())
                .map(str::to_owned)
        };
        let next = doc
            .descendants()
            .filter(|n| n.has_tag_name("route"))
            .find(|n| text(*n, "destination").as_deref() == Some(to))
            .and_then(|n| text(n, "next-hop"))
            .with_context(|| format!("node {at} has no route to {to}"))?;
        if path.contains(&next) || path.len() > 64 {
            bail!(
                "the routes toward {to} loop: {} -> {next}",
                path.join(" -> ")
            );
        }
        path.push(next);
    }
    Ok(path)
}

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

/// Asks for keys until the pools on the route hold enough (right after start-up they fill)
/// and, in a distributed domain, until its nodes route toward the crossing.
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

/// A distributed domain's segment (with its route inside the domain); a controller's
/// segment is not read (its events tell the story).
async fn segment(
    b: &Side,
    endpoints: &Endpoints,
    saes: (&str, &str),
    slave_node: &str,
) -> anyhow::Result<Option<Agreed>> {
    match b.control {
        Control::Speaker(_) => Ok(Some(
            b.agreed(endpoints, "segment", saes, slave_node).await?,
        )),
        Control::Controller(_) => Ok(None),
    }
}

/// The node whose KM serves `sae` in `domain`.
fn node_of<'a>(domain: &'a Domain, sae: &str) -> anyhow::Result<&'a str> {
    domain
        .nodes
        .iter()
        .find(|n| n.saes.iter().any(|s| s == sae))
        .map(|n| n.name.as_str())
        .with_context(|| format!("no node of {} serves {sae}", domain.name))
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
        let control = match domain.speaker(&topology.iwns) {
            Some(speaker) => format!(
                "distributed control: no controller, every KM routes by link state; its speaker {} speaks Cxi for it{}",
                speaker.name,
                if endpoints.manager(&domain.name).is_some() {
                    "; its manager"
                } else {
                    ""
                }
            ),
            None => "controller and manager".to_owned(),
        };
        println!(
            "   QKDN {}: {} KM nodes (border: {}), {} QKD links, its own CA, {control}",
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
    let (master_node, slave_node) = (node_of(a_domain, master)?, node_of(b_domain, slave)?);
    let saes = (master.as_str(), slave.as_str());
    let (a, b) = (
        Side::new(endpoints, topology, a_domain)?,
        Side::new(endpoints, topology, b_domain)?,
    );
    let distributed = a.orchestrator().is_none() || b.orchestrator().is_none();
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
    match &a.control {
        Control::Controller(_) => println!(
            "   its KM does not know {slave}: it asks controller-{} for an interworking route, which agrees it with {} over {cxi}",
            a_domain.name,
            b.who()
        ),
        Control::Speaker(speaker) => println!(
            "   its KM does not know {slave}: QKDN {} has no controller, so it asks the domain's speaker {speaker} for an interworking route, which agrees it with {} over {cxi}",
            a_domain.name,
            b.who()
        ),
    }
    first_keys(&alice, slave).await?;
    let session = a.agreed(endpoints, "origin", saes, master_node).await?;
    let in_b = segment(&b, endpoints, saes, slave_node).await?;
    let transaction = session.transaction.clone();
    a.print(&a.events().await?, Some(&session), &transaction);
    b.print(&b.events().await?, in_b.as_ref(), &transaction);
    let path = session.path.clone();
    let border = session.border.clone();
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
        for side in [&a, &b] {
            if let Some(o) = side.orchestrator() {
                transfer_records(o, &side.domain).await?;
            }
        }
    }

    // the fault: the Qx link, or the QKD link into the active IWN's KM-A
    let cut = topology
        .border_fault(&border, &path)
        .context("the route does not enter the IWN over a QKD link")?;
    let (skip_a, skip_b) = (a.events().await?.len(), b.events().await?.len());
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
    let (transaction, agreed) = loop {
        // A's new agreement: a controller's reroute event, or the speaker's session moved
        let moved = match &a.control {
            Control::Controller(o) => {
                let reroute = events(o)
                    .await?
                    .into_iter()
                    .skip(skip_a)
                    .find(|e| e["kind"] == "reroute" || e["kind"] == "reroute-failed");
                if let Some(failed) = reroute.as_ref().filter(|e| e["kind"] == "reroute-failed") {
                    bail!("no other route: {}", failed["detail"]);
                }
                reroute.map(|e| e["transaction"].as_str().unwrap_or_default().to_owned())
            }
            Control::Speaker(_) => a
                .session(endpoints, "origin", master, slave)
                .await?
                .filter(|s| s.transaction != transaction)
                .map(|s| s.transaction),
        };
        // ... and B committed in the same transaction
        if let Some(moved) = moved {
            let committed = match &b.control {
                Control::Controller(o) => events(o).await?.iter().skip(skip_b).any(|e| {
                    e["kind"] == "interworking-commit" && e["transaction"] == moved.as_str()
                }),
                Control::Speaker(_) => b
                    .session(endpoints, "segment", master, slave)
                    .await?
                    .is_some_and(|s| s.transaction == moved),
            };
            if committed {
                break (moved, cut_at.elapsed());
            }
        }
        if Instant::now() > deadline {
            bail!("no agreed reroute within 30 s");
        }
        tokio::time::sleep(POLL).await;
    };
    let session = a.agreed(endpoints, "origin", saes, master_node).await?;
    let in_b = segment(&b, endpoints, saes, slave_node).await?;
    a.print(&a.events().await?, Some(&session), &transaction);
    b.print(&b.events().await?, in_b.as_ref(), &transaction);
    let took = agreed.as_secs_f64() * 1e3;
    if distributed {
        let polled: Vec<String> = [&a, &b]
            .iter()
            .map(|side| match &side.control {
                Control::Controller(_) => format!("controller-{}'s events", side.domain),
                Control::Speaker(node) => {
                    format!("{node}'s sessions (GET /admin/v1/interworking)")
                }
            })
            .collect();
        println!(
            "   {} and {} agreed (transaction {transaction}) and both hold the new crossing {took:.0} ms after the fault (from the link-down call until {} both show it, polled every {} ms)",
            a.who(),
            b.who(),
            polled.join(" and "),
            POLL.as_millis()
        );
    } else {
        println!(
            "   both controllers agreed (transaction {transaction}) and installed the new route {took:.0} ms after the fault"
        );
    }
    let path = session.path;
    runner::wait_path_keys(endpoints, &path, 16, Duration::from_secs(30)).await?;
    let mut on_in_b = String::new();
    if let Some(segment) = &in_b {
        runner::wait_path_keys(endpoints, &segment.path, 16, Duration::from_secs(30)).await?;
        on_in_b = format!(" over {}", segment.path.join(" -> "));
    }
    if distributed {
        // the nodes of a distributed domain learn the new crossing from the link state
        first_keys(&alice, slave).await?;
    }
    println!(
        "== key delivery continues over {} (border: {}) and on in QKDN {}{on_in_b}",
        path.join(" -> "),
        session.border,
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
