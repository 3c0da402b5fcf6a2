//! Operating a running testbed: faults (link states, stopped nodes), node restarts, NETCONF
//! sessions, key levels.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use super::endpoints::Endpoints;
use super::error::TestbedError;
use super::netns;
use super::ports::startup_lock;
use super::process::{alive, spawn_node, stop_pid, wait_ready};
use super::records::{live_network, Processes};
use crate::netconf::client::NetconfClient;
use crate::quantum::LinkState;
use crate::tls;

/// Stops node `node` (`kill`: with SIGKILL, as a crash).
pub fn stop_node(dir: &Path, node: &str, kill: bool) -> Result<(), TestbedError> {
    let mut processes = Processes::load(dir);
    let pid = processes
        .nodes
        .remove(node)
        .ok_or_else(|| TestbedError::Unknown {
            kind: "running node",
            name: node.into(),
        })?;
    stop_pid(pid, kill);
    processes.save(dir)
}

/// Whether process `name` of the testbed in `dir` is recorded as started and still runs
/// (a killed process whose threads are still exiting counts as running).
pub fn is_running(dir: &Path, name: &str) -> bool {
    Processes::load(dir)
        .nodes
        .get(name)
        .is_some_and(|pid| alive(*pid))
}

/// Starts node `node` again with its existing configuration and store.
pub async fn start_node(dir: &Path, node: &str, exe: &Path) -> Result<(), TestbedError> {
    let endpoints = Endpoints::load(dir)?;
    let mut processes = Processes::load(dir);
    if let Some(pid) = processes.nodes.get(node) {
        if alive(*pid) {
            return Err(TestbedError::Operation(format!("node {node} is running")));
        }
    }
    let _startup = startup_lock()?;
    let pid = spawn_node(&endpoints, node, exe)?;
    processes.nodes.insert(node.into(), pid);
    processes.save(dir)?;
    wait_ready(&endpoints, node, pid).await
}

/// A NETCONF session to `node` as the testbed operator.
pub async fn netconf(
    endpoints: &Endpoints,
    node: &str,
) -> Result<std::sync::Arc<NetconfClient>, TestbedError> {
    let entry = endpoints.node(node).ok_or_else(|| TestbedError::Unknown {
        kind: "node",
        name: node.into(),
    })?;
    let addr: SocketAddr = entry
        .netconf
        .parse()
        .map_err(|e| TestbedError::Operation(format!("node {node}: netconf address: {e}")))?;
    NetconfClient::connect(
        addr,
        endpoints.netconf_options(endpoints.netconf_login_of(node)),
    )
    .await
    .map_err(|e| TestbedError::Operation(format!("node {node}: NETCONF: {e}")))
}

/// Sets the operational state of QKD link `link` at both its ends, over NETCONF
/// (`qkdni-km:admin-state` in the running datastore); in a `--netns` testbed, first at the
/// network level too (the link's veth down, or up again: [`netns::set_link`]).
pub async fn set_link_state(dir: &Path, link: &str, state: LinkState) -> Result<(), TestbedError> {
    let endpoints = Endpoints::load(dir)?;
    let entry = endpoints
        .links
        .get(link)
        .ok_or_else(|| TestbedError::Unknown {
            kind: "link",
            name: link.into(),
        })?;
    if endpoints.netns.is_some() {
        let net = live_network(dir).ok_or_else(|| {
            TestbedError::Operation("the testbed's network namespaces are gone".into())
        })?;
        netns::set_link(&net, link, state)?;
    }
    // the link's ETSI GS QKD 015 qkdl_id, the same at both ends (crate::etsi015)
    let id = crate::etsi015::link_id(&entry.domain, entry.peer_domain.as_deref(), link);
    let config =
        crate::model::km::admin_state_config(&id, crate::model::km::link_state_value(state));
    for node in &entry.nodes {
        let session = netconf(&endpoints, node).await?;
        // a controller installing routes holds the running lock for a moment: wait for it
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match session.edit_config("running", &config).await {
                Ok(_) => break,
                Err(e) if e.to_string().contains("lock") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(TestbedError::Operation(format!("node {node}: {e}"))),
            }
        }
        let _ = session.close().await;
    }
    Ok(())
}

/// The admin view of every link of `node`.
pub async fn link_reports(
    endpoints: &Endpoints,
    node: &str,
) -> Result<Vec<crate::km::kma::LinkReport>, TestbedError> {
    admin_get(endpoints, node, "links").await
}

/// The interworking view of gateway node `node` of a distributed QKDN (crossings placed on
/// it; on the domain's speaker, the sessions it agreed).
pub async fn interworking_report(
    endpoints: &Endpoints,
    node: &str,
) -> Result<serde_json::Value, TestbedError> {
    admin_get(endpoints, node, "interworking").await
}

/// `GET /admin/v1/{what}` of `node`'s KMA as the operator.
async fn admin_get<T: serde::de::DeserializeOwned>(
    endpoints: &Endpoints,
    node: &str,
    what: &str,
) -> Result<T, TestbedError> {
    let entry = endpoints.node(node).ok_or_else(|| TestbedError::Unknown {
        kind: "node",
        name: node.into(),
    })?;
    let client = tls::https_client(&endpoints.operator_tls_at(node), Duration::from_secs(5))?;
    let failed = |e: reqwest::Error| TestbedError::Operation(format!("node {node}: {e}"));
    let response = client
        .get(format!("{}/admin/v1/{what}", entry.kma))
        .send()
        .await
        .map_err(failed)?;
    response.json().await.map_err(failed)
}

/// Waits until every hop of `path` (a list of adjacent nodes) holds at least `blocks` blocks
/// that the sending end may use.
pub async fn wait_path_keys(
    endpoints: &Endpoints,
    path: &[String],
    blocks: usize,
    timeout: Duration,
) -> Result<(), TestbedError> {
    let deadline = Instant::now() + timeout;
    'retry: loop {
        for hop in path.windows(2) {
            // an IWN's transfer link holds no key: it passes the keys it gets
            let transfer = endpoints.iwns.values().any(|i| {
                let kms = [&i.kms[0].node, &i.kms[1].node];
                kms.contains(&&hop[0]) && kms.contains(&&hop[1])
            });
            if transfer {
                continue;
            }
            let reports = link_reports(endpoints, &hop[0]).await?;
            let ready = reports
                .iter()
                .any(|l| l.peer == hop[1] && l.own_blocks >= blocks);
            if !ready {
                if Instant::now() > deadline {
                    return Err(TestbedError::Operation(format!(
                        "hop {} -> {} has fewer than {blocks} blocks after {timeout:?}",
                        hop[0], hop[1]
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue 'retry;
            }
        }
        return Ok(());
    }
}
