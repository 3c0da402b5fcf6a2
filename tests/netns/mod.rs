//! `qkdni testbed up --netns` (root only): every KM node in its own network namespace, every
//! QKD link a veth pair between two namespaces, links cut at the network level.

use std::process::{Command, Stdio};
use std::time::Duration;

use qkdni::testbed::netns::Netns;
use serde_json::Value;

use super::common::Bed;

const TOPOLOGY: &str = "two-domain-gwn.toml";

/// Whether this process may build namespaces; if not the test is skipped.
fn skipped() -> bool {
    match qkdni::testbed::netns::check() {
        Ok(()) => false,
        Err(error) => {
            eprintln!("skipped: {error}");
            true
        }
    }
}

/// Whether a TCP connection from `node`'s namespace to `url`'s host and port succeeds.
fn connects(net: &Netns, node: &str, url: &str) -> bool {
    let authority = url.trim_start_matches("https://");
    let (host, port) = authority.rsplit_once(':').unwrap();
    Command::new("ip")
        .args(["netns", "exec", &net.nodes[node].namespace])
        .args(["timeout", "5", "bash", "-c"])
        .arg(format!("exec 3<>/dev/tcp/{host}/{port}"))
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

fn namespaces() -> String {
    let output = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn root_interfaces() -> String {
    let output = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The Qx link of domain A's interworking session.
async fn qx_link(bed: &Bed) -> Option<String> {
    bed.controller_get("A", "/api/v1/sessions")
        .await
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["interworking"]["role"] == "origin")
        .and_then(|s| s["interworking"]["qx_link"].as_str().map(str::to_owned))
}

/// The relay path of the interworking session, through B to the slave's KM.
async fn qkdni_path(bed: &Bed) -> Vec<String> {
    let origin = bed.controller_get("A", "/api/v1/sessions").await;
    let segment = bed.controller_get("B", "/api/v1/sessions").await;
    let nodes = |v: &Value| -> Vec<String> {
        serde_json::from_value(v.as_array().unwrap()[0]["path"].clone()).unwrap()
    };
    let mut path = nodes(&origin);
    path.extend(nodes(&segment).into_iter().skip(1));
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_testbed_relays_over_veths_and_cuts_links_at_the_network_level() {
    if skipped() {
        return;
    }
    let bed = Bed::up_netns(TOPOLOGY);
    let net = bed
        .endpoints
        .netns
        .clone()
        .expect("netns in endpoints.json");
    let listed = namespaces();
    for (name, node) in &net.nodes {
        assert!(
            listed.contains(&node.namespace),
            "{} missing",
            node.namespace
        );
        let endpoint = bed.endpoints.node(name).unwrap();
        assert!(endpoint.kma.contains(&format!("://{}:", node.address)));
    }
    let gb1_kma = bed.endpoints.node("gb1").unwrap().kma.clone();
    // the only way between two nodes is the veth of their link
    assert!(connects(&net, "ga1", &gb1_kma));
    assert!(!connects(&net, "a1", &gb1_kma), "a1 has no link to gb1");
    bed.wait_path(&["a1", "a3", "ga2", "gb2", "b3", "b1"], 64)
        .await;

    bed.wait_path(&["a1", "a2", "ga1", "gb1", "b2", "b1"], 64)
        .await;
    bed.deliver("sae-a1-1", "sae-b1-1", 4).await;
    let qx = qx_link(&bed).await.expect("a Qx link in use");
    let (gw_a, gw_b, other) = if qx == "qx1" {
        ("ga1", "gb1", "qx2")
    } else {
        ("ga2", "gb2", "qx1")
    };
    let gw_b_kma = bed.endpoints.node(gw_b).unwrap().kma.clone();

    // cut the Qx link in use at the network level only: no route between its GWNs any more
    let cut = &net.links[&qx];
    let status = Command::new("ip")
        .args(["netns", "exec", &net.nodes[gw_a].namespace])
        .args(["ip", "link", "set", &cut.interface, "down"])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(!connects(&net, gw_a, &gw_b_kma));
    // the modules at both ends stop hearing each other: loss of signal takes qx1 down, and the
    // controllers agree a route over qx2, whose veth carries the relay
    let moved = tokio::time::timeout(Duration::from_secs(30), async {
        while qx_link(&bed).await.as_deref() != Some(other) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        moved.is_ok(),
        "the session did not move to {other} after the cut"
    );
    let reports = qkdni::testbed::runner::link_reports(&bed.endpoints, gw_a)
        .await
        .unwrap();
    let state = reports.iter().find(|l| l.id == qx).unwrap().condition.state;
    assert_eq!(
        state,
        qkdni::quantum::LinkState::Down,
        "loss of signal at {gw_a}"
    );
    let path = qkdni_path(&bed).await;
    bed.wait_path(&path.iter().map(String::as_str).collect::<Vec<_>>(), 16)
        .await;
    bed.deliver("sae-a1-1", "sae-b1-1", 4).await;

    // the testbed's link down also sets the admin state; link up brings the veth back
    bed.cli(&["link", "down", &qx]);
    bed.cli(&["link", "up", &qx]);
    assert!(connects(&net, gw_a, &gw_b_kma));

    // down deletes the namespaces and the root ends of the management veths
    bed.cli(&["down"]);
    let listed = namespaces();
    assert!(
        !listed.contains(&format!("qkdni-{}-", net.id)),
        "namespaces left: {listed}"
    );
    let links = root_interfaces();
    for node in net.nodes.values() {
        assert!(
            !links.contains(&format!(" {}@", node.root_interface)),
            "{} left",
            node.root_interface
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_iwn_runs_its_two_kms_in_one_namespace_and_transfers_keys_there() {
    if skipped() {
        return;
    }
    let bed = Bed::up_netns("two-domain-iwn.toml");
    let net = bed
        .endpoints
        .netns
        .clone()
        .expect("netns in endpoints.json");
    let (km_a, km_b) = (&net.nodes["iwn1-a"], &net.nodes["iwn1-b"]);
    assert_eq!(km_a.namespace, km_b.namespace);
    assert!(km_a.namespace.ends_with("-iwn1"), "{}", km_a.namespace);
    assert!(namespaces().contains(&km_a.namespace));
    // KM-A reaches KM-B inside the IWN; a node of A has no way to KM-B
    let km_b_kma = bed.endpoints.node("iwn1-b").unwrap().kma.clone();
    assert!(connects(&net, "iwn1-a", &km_b_kma));
    assert!(!connects(&net, "a1", &km_b_kma), "a1 has no link to iwn1-b");
    // iwn1 hosts both controllers and managers: they run in its namespace (Cxi', Mxi'), which
    // is the management hub; the root namespace reaches every node through it
    let hub = net.hub.clone().expect("iwn1 is the management hub");
    assert_eq!(hub.namespace, km_a.namespace);
    for (name, pid) in qkdni::testbed::runner::process_ids(&bed.dir) {
        let output = Command::new("ip")
            .args(["netns", "identify", &pid.to_string()])
            .output()
            .unwrap();
        let at = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if name.starts_with("controller-") || name.starts_with("manager-") {
            assert_eq!(at, hub.namespace, "{name} runs in the IWN");
        }
    }
    let controller_b = bed.endpoints.controller("B").unwrap().rest.clone();
    assert!(
        connects(&net, "b1", &controller_b),
        "a node reaches its controller"
    );
    assert!(
        !connects(&net, "a1", &km_b_kma),
        "still no way from a1 to iwn1-b"
    );
    bed.wait_path(&["a1", "a2", "iwn1-a", "iwn1-b", "b2", "b1"], 32)
        .await;
    bed.deliver("sae-a1-1", "sae-b1-1", 4).await;
    // a fault inside A is still rerouted by controller A from the IWN: transfer moves to iwn2
    bed.cli(&["link", "down", "a2-iwn1-a"]);
    let moved = tokio::time::timeout(Duration::from_secs(30), async {
        while qx_link(&bed).await.as_deref() != Some("iwn2-kxi1p") {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(moved.is_ok(), "transfer did not move to iwn2");
    bed.wait_path(
        &["a1", "a3", "a5", "iwn2-a", "iwn2-b", "b3", "b5", "b1"],
        16,
    )
    .await;
    bed.deliver("sae-a1-1", "sae-b1-1", 2).await;
    bed.cli(&["down"]);
    assert!(
        !namespaces().contains(&km_a.namespace),
        "the IWN's namespace is deleted"
    );
    assert!(
        !root_interfaces().contains(&format!(" {}@", km_a.root_interface)),
        "the hub's veth to the root namespace is deleted"
    );
}
