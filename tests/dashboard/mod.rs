//! The controller's live web dashboard in a real headless browser: Debian's `chromium`
//! driven by Playwright (`tests/dashboard/browser.py`, run with `QKDNI_PYTHON`). Without
//! them the test is skipped on a developer's machine and fails under CI.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{self, Bed};

/// Most time the page may take to show a link taken down in red.
const RED_WITHIN: Duration = Duration::from_secs(2);

/// The chromium Playwright drives (`QKDNI_CHROMIUM`, or Debian's).
fn chromium() -> String {
    std::env::var("QKDNI_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_network_live_in_a_real_browser() {
    let Some(python) = common::interop_python("playwright") else {
        return;
    };
    let python = python.to_string_lossy().into_owned();
    if !common::tool(&python, &["-c", "import playwright"])
        || !common::tool(&chromium(), &["--version"])
    {
        return;
    }
    let bed = Bed::up("two-domain-gwn.toml");
    let (http, rest, token) = bed.controller("A");

    // without credentials: the REST API's 401 problem, on the page's data and its stream,
    // and no login link for anyone but a REST caller
    let anonymous = bed.anonymous_https();
    for path in ["/dashboard/api/snapshot", "/dashboard/api/stream"] {
        let response = anonymous.get(format!("{rest}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["type"], "urn:qkdni:problem:unauthorized");
    }
    let refused = anonymous
        .post(format!("{rest}/api/v1/dashboard/logins"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    // the REST API's own credentials open the dashboard's data too
    let snapshot = bed.controller_get("A", "/dashboard/api/snapshot").await;
    assert_eq!(snapshot["domain"], "A");

    // a session from A to B whose route the page shows
    bed.wait_path(&["a1", "a2", "ga1", "gb1", "b2", "b1"], 16)
        .await;
    bed.wait_path(&["a1", "a3", "ga2", "gb2", "b3", "b1"], 16)
        .await;
    let session = bed.create_session("sae-a1-1", "sae-b1-1").await;
    let id = session["id"].as_str().unwrap().to_owned();
    let cut = session["links"][0].as_str().unwrap().to_owned();

    // every node of A, B's gateways and the nodes of B's SAEs
    let e = &bed.endpoints;
    let mut nodes: BTreeSet<String> = e.domains["A"].nodes.keys().cloned().collect();
    nodes.extend(
        e.links
            .values()
            .filter(|l| l.peer_domain.is_some())
            .flat_map(|l| l.nodes.clone()),
    );
    nodes.extend(
        e.saes
            .values()
            .filter(|s| s.domain == "B")
            .map(|s| s.node.clone()),
    );

    let login: Value = http
        .post(format!("{rest}/api/v1/dashboard/logins"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let screenshot = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png");
    let config = json!({
        "chromium": chromium(),
        "base": rest,
        "login_path": login["login_path"],
        "qkdni": common::QKDNI,
        "dir": bed.dir(),
        "session": id,
        "cut": cut,
        "nodes": nodes,
        "screenshot": screenshot,
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard/browser.py");
    let started = std::time::Instant::now();
    let run = tokio::process::Command::new(&python)
        .arg(script)
        .arg(config.to_string())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the browser run ends within 180 s")
        .unwrap();
    assert!(
        output.status.success(),
        "browser run failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_slice(&output.stdout).unwrap();
    println!(
        "browser run {:.1} s: {seen:#}",
        started.elapsed().as_secs_f64()
    );

    // unauthenticated browsers get the 401 and the way to log in
    assert_eq!(seen["anonymous_page_status"], 401);
    assert_eq!(seen["anonymous_page_says_login"], true);
    assert_eq!(seen["anonymous_api_status"], 401);
    assert_eq!(seen["anonymous_api_type"], "application/problem+json");
    assert_eq!(seen["anonymous_stream_status"], 401);
    // the one-time login opens the dashboard with a locked-down session cookie
    assert_eq!(seen["login_status"], 200);
    assert_eq!(seen["login_landed"], format!("{rest}/dashboard/"));
    assert_eq!(
        seen["cookies"],
        json!([{"name": "qkdni_dashboard", "httpOnly": true, "secure": true,
                "sameSite": "Strict", "path": "/dashboard"}])
    );
    assert_eq!(seen["status"], "live");
    // every node, the peer's abstract ones included
    let shown: BTreeSet<String> = serde_json::from_value(seen["nodes"].clone()).unwrap();
    assert_eq!(shown, nodes);
    assert!(!seen["peer_abstract_edges"].as_array().unwrap().is_empty());
    // the session's route as the controller has it
    let route = |links: &Value| -> BTreeSet<String> {
        links
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(route(&seen["route_before"]), route(&session["links"]));
    // the cut link turned red within 2 s (measured from the start of the command that cut
    // it, the command's own run included)
    let red = seen["red_ms_from_command_start"].as_f64().unwrap();
    assert!(
        red < RED_WITHIN.as_secs_f64() * 1e3,
        "red after {red} ms: {seen}"
    );
    assert!(seen["alarms"]
        .as_array()
        .unwrap()
        .contains(&json!(format!("link-down {cut}"))));
    // the reroute: the page shows the route the controller installed
    let now = bed
        .controller_get("A", &format!("/api/v1/sessions/{id}"))
        .await;
    assert!(!route(&now["links"]).contains(&cut));
    assert_eq!(route(&seen["route_after"]), route(&now["links"]));
    let path: Vec<&str> = now["path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(
        seen["path_text"]
            .as_str()
            .unwrap()
            .starts_with(&path.join(" → ")),
        "{}",
        seen["path_text"]
    );
    // no script error, nothing fetched from anywhere but the controller
    assert_eq!(seen["errors"], json!([]));
    assert_eq!(seen["foreign_requests"], json!([]));
    // the login link works once only
    assert_eq!(seen["reused_login_status"], 401);
    assert_eq!(seen["reused_login_cookies"], 0);
    assert_eq!(seen["reused_login_page_status"], 401);
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
}
