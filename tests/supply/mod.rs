//! Key supply that never stalls, over real processes: one-way sessions pulling keys for a
//! minute after the pools drained, inside a domain and across domains, with one client and
//! with 50; a relay that cannot arrive spends no link key; a demand the network cannot meet
//! does not make the controller reinstall routes.
//!
//! The rate tests measure the supply and its flow control against the links' key rates, with
//! every security function on (key store sealing, the audit log, accounting, signed Kxi
//! acknowledgements with their evidence across the domains), as a deployment runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use qkdni::etsi014::{ClientError, KeyRequest};
use serde_json::{json, Value};

use super::common::Bed;

/// Held by each rate test for its whole run: two rate measurements on the 2-core machine at
/// once would measure each other (the test runner runs two tests at a time).
static ONE_RATE_TEST_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Bits of one key in these tests.
const KEY_BITS: u32 = 256;
/// Length of one measurement window.
const WINDOW: Duration = Duration::from_secs(5);

/// What a load delivered while it was measured.
struct Load {
    /// Keys delivered to (and fetched by) the slave SAE in each window.
    windows: Vec<u64>,
    /// Requests answered 503 (with `Retry-After`).
    refused: u64,
    /// Other failures, with their text.
    failures: Vec<String>,
}

impl Load {
    fn rate_bps(&self) -> f64 {
        let keys: u64 = self.windows.iter().sum();
        (keys * u64::from(KEY_BITS)) as f64 / (WINDOW.as_secs_f64() * self.windows.len() as f64)
    }
}

/// A one-way load: `clients` applications pull keys from `master` for `slave` (each key
/// fetched by the slave and compared), 64 keys a request.
struct Pull<'a> {
    master: &'a str,
    slave: &'a str,
    clients: usize,
    /// Load before `ready` is first asked.
    warmup: Duration,
    /// Windows counted once `ready` says the pools are drained.
    windows: usize,
}

async fn pull<F, Fut>(bed: &Bed, load: Pull<'_>, ready: F) -> Load
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let Pull {
        master,
        slave,
        clients,
        warmup,
        windows,
    } = load;
    let per_request = 64;
    let delivered = AtomicU64::new(0);
    let refused = AtomicU64::new(0);
    let failures = Mutex::new(Vec::new());
    let stop = std::sync::atomic::AtomicBool::new(false);
    let request = KeyRequest {
        number: Some(per_request),
        size: Some(KEY_BITS),
        ..Default::default()
    };
    // a refused client waits before asking again: briefly when alone, longer in a crowd
    let backoff = if clients == 1 { 20 } else { 250 };
    let client = |n: usize| {
        let (enc, dec) = (bed.client(master), bed.client(slave));
        let (request, delivered, refused, failures, stop) =
            (&request, &delivered, &refused, &failures, &stop);
        async move {
            let mut jitter = n as u64 + 1;
            while !stop.load(Ordering::Relaxed) {
                jitter = jitter
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let jitter = jitter >> 33;
                match enc.enc_keys(slave, request).await {
                    Ok(keys) => {
                        let ids: Vec<String> = keys.keys.iter().map(|k| k.key_ID.clone()).collect();
                        match dec.dec_keys(master, &ids).await {
                            Ok(fetched) => {
                                for (a, b) in keys.keys.iter().zip(&fetched.keys) {
                                    assert_eq!((&a.key_ID, &a.key), (&b.key_ID, &b.key));
                                }
                                assert_eq!(fetched.keys.len(), keys.keys.len());
                                delivered.fetch_add(ids.len() as u64, Ordering::Relaxed);
                            }
                            Err(e) => failures.lock().unwrap().push(format!("dec_keys: {e}")),
                        }
                    }
                    Err(ClientError::Kme { status: 503, .. }) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        let wait = backoff + jitter % backoff;
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                    }
                    Err(e) => {
                        failures.lock().unwrap().push(format!("enc_keys: {e}"));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    };
    let monitor = async {
        tokio::time::sleep(warmup).await;
        let drained = tokio::time::timeout(Duration::from_secs(60), async {
            while !ready().await {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        assert!(drained.is_ok(), "the pools never drained under the load");
        let mut counts = Vec::with_capacity(windows);
        let mut last = delivered.load(Ordering::Relaxed);
        let mut next = tokio::time::Instant::now() + WINDOW;
        for _ in 0..windows {
            tokio::time::sleep_until(next).await;
            next += WINDOW;
            let now = delivered.load(Ordering::Relaxed);
            counts.push(now - last);
            last = now;
        }
        stop.store(true, Ordering::Relaxed);
        counts
    };
    let (counts, _) = tokio::join!(monitor, futures::future::join_all((0..clients).map(client)));
    let failures = failures.into_inner().unwrap();
    Load {
        windows: counts,
        refused: refused.load(Ordering::Relaxed),
        failures,
    }
}

/// The key rate of every link of `domain`, by id.
async fn link_rates(bed: &Bed, domain: &str) -> std::collections::BTreeMap<String, f64> {
    let topology = bed.controller_get(domain, "/api/v1/topology").await;
    let links = topology["links"].as_object().expect("links by id");
    links
        .iter()
        .map(|(id, l)| (id.clone(), l["rate_bps"].as_f64().expect("rate_bps")))
        .collect()
}

/// Checks a load against the rate the network can carry: no failure, no window without
/// keys, and at least `fraction` of `limit_bps` delivered.
fn assert_holds(load: &Load, limit_bps: f64, fraction: f64, what: &str) {
    let rate = load.rate_bps();
    eprintln!(
        "{what}: {rate:.0} bit/s delivered of {limit_bps:.0} ({:.3}); windows {:?}; {} refused; {} failures",
        rate / limit_bps,
        load.windows,
        load.refused,
        load.failures.len()
    );
    assert!(
        load.failures.is_empty(),
        "{what}: failures {:?}",
        &load.failures[..load.failures.len().min(5)]
    );
    assert!(
        load.windows.iter().all(|w| *w > 0),
        "{what}: a window delivered nothing: {:?}",
        load.windows
    );
    assert!(
        rate >= fraction * limit_bps,
        "{what}: {rate:.0} bit/s is below {fraction} of {limit_bps:.0}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_way_supply_keeps_the_path_rate_after_the_pools_drain() {
    let _alone = ONE_RATE_TEST_AT_A_TIME.lock().await;
    let bed = Bed::up("single-domain.toml");
    let session = bed.create_session("sae-a1-1", "sae-a5-1").await;
    let rates = link_rates(&bed, "A").await;
    let links: Vec<String> = session["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_owned())
        .collect();
    let path: Vec<String> = session["path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect();
    let (bottleneck, limit) = links
        .iter()
        .map(|l| (l.clone(), rates[l]))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap();
    let sender = path[links.iter().position(|l| *l == bottleneck).unwrap()].clone();
    let load = pull(
        &bed,
        Pull {
            master: "sae-a1-1",
            slave: "sae-a5-1",
            clients: 1,
            warmup: Duration::from_secs(5),
            windows: 12,
        },
        || async { bed.own_blocks(&sender, &bottleneck).await < 256 },
    )
    .await;
    assert_holds(&load, limit, 0.9, "one client, one way, single path");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_one_way_get_the_min_cut_with_multipath() {
    let _alone = ONE_RATE_TEST_AT_A_TIME.lock().await;
    let bed = Bed::up("single-domain.toml");
    bed.set_policy("multipath").await;
    // a1 -> a4: a2-a4 and a2-a3-a4 in parallel; the cut {a2-a4, a3-a4} is the min-cut
    bed.create_session_at("sae-a1-1", "sae-a4-1", 400000.0)
        .await;
    let rates = link_rates(&bed, "A").await;
    let min_cut = rates["a2-a4"] + rates["a3-a4"];
    let load = pull(
        &bed,
        Pull {
            master: "sae-a1-1",
            slave: "sae-a4-1",
            clients: 50,
            warmup: Duration::from_secs(5),
            windows: 12,
        },
        || async {
            bed.own_blocks("a2", "a2-a4").await < 256 && bed.own_blocks("a3", "a3-a4").await < 256
        },
    )
    .await;
    assert_holds(&load, min_cut, 0.9, "50 clients, one way, multipath");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_way_supply_across_the_domains_keeps_the_path_rate_and_never_stalls() {
    let _alone = ONE_RATE_TEST_AT_A_TIME.lock().await;
    let bed = Bed::up("two-domain-gwn.toml");
    bed.wait_path(&["a1", "a2", "ga1", "gb1", "b2", "b1"], 64)
        .await;
    bed.wait_path(&["a1", "a3", "ga2", "gb2", "b3", "b1"], 64)
        .await;
    // the first request has the controllers agree on the interworking route
    bed.deliver("sae-a1-1", "sae-b1-1", 4).await;
    let sessions = bed.controller_get("A", "/api/v1/sessions").await;
    let session = sessions
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["interworking"]["role"] == "origin")
        .cloned()
        .expect("an interworking session in A");
    let path: Vec<String> = session["path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect();
    // every link of the testbed runs at the same rate: the path's rate is any of them
    let limit = link_rates(&bed, "A").await["a1-a2"];
    let (first_hop, qx) = (
        session["links"][0].as_str().unwrap().to_owned(),
        session["interworking"]["qx_link"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    let gateway = path[path.len() - 2].clone();
    let drained = || async {
        bed.own_blocks("a1", &first_hop).await < 128 || bed.own_blocks(&gateway, &qx).await < 128
    };
    let load = pull(
        &bed,
        Pull {
            master: "sae-a1-1",
            slave: "sae-b1-1",
            clients: 4,
            warmup: Duration::from_secs(5),
            windows: 12,
        },
        drained,
    )
    .await;
    assert_holds(
        &load,
        limit,
        0.9,
        "four clients, one way, across the domains",
    );
    // then a crowd, on the drained pools
    let load = pull(
        &bed,
        Pull {
            master: "sae-a1-1",
            slave: "sae-b1-1",
            clients: 50,
            warmup: Duration::from_secs(2),
            windows: 12,
        },
        || async { true },
    )
    .await;
    assert_holds(&load, limit, 0.9, "50 clients, one way, across the domains");
    // requests refused for want of key are pool exhaustion, not route faults: no manager
    // asked either controller for a diagnosis, and the route never changed
    for domain in ["A", "B"] {
        let events = bed.controller_get(domain, "/api/v1/events").await;
        let diagnoses = events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "qclm-diagnosis" || e["kind"] == "reroute")
            .count();
        assert_eq!(diagnoses, 0, "{domain}: {events:#}");
    }
}

/// The blocks `node` has consumed on `link` since it started.
async fn consumed(bed: &Bed, node: &str, link: &str) -> u64 {
    let reports = qkdni::testbed::runner::link_reports(&bed.endpoints, node)
        .await
        .unwrap();
    reports
        .iter()
        .find(|l| l.id == link)
        .unwrap()
        .consumed_blocks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_failing_at_the_last_hop_spends_no_key_on_earlier_hops() {
    let bed = Bed::up("single-domain.toml");
    let session = bed.create_session("sae-a1-1", "sae-a5-1").await;
    assert_eq!(session["path"], json!(["a1", "a2", "a4", "a5"]));
    bed.wait_path(&["a1", "a2", "a4", "a5"], 64).await;
    bed.deliver("sae-a1-1", "sae-a5-1", 4).await;
    let hops = [("a1", "a1-a2"), ("a2", "a2-a4"), ("a4", "a4-a5")];
    let mut before = Vec::new();
    for (node, link) in hops {
        before.push(consumed(&bed, node, link).await);
    }
    // the destination KM crashes: the last hop cannot be made
    bed.cli(&["node", "stop", "a5", "--kill"]);
    let response = bed
        .http("sae-a1-1")
        .post(format!("{}/api/v1/keys/sae-a5-1/enc_keys", bed.kme("a1")))
        .json(&json!({"number": 8, "size": 256}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: Value = response.json().await.unwrap();
    assert!(body["message"].is_string(), "{body}");
    for ((node, link), was) in hops.iter().zip(before) {
        assert_eq!(
            consumed(&bed, node, link).await,
            was,
            "{node} spent blocks of {link} on a relay that could not arrive"
        );
    }
    assert!(bed.log("a4").contains("path reservation refused"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demand_the_network_cannot_meet_installs_routes_once() {
    let bed = Bed::up("single-domain.toml");
    // a single-path policy that routes whatever the demand
    bed.set_policy("shortest").await;
    // 10 Mbit/s from a1 to a5: more than any path; the controller routes it once
    bed.create_session_at("sae-a1-1", "sae-a5-1", 10000000.0)
        .await;
    let installs = |events: &Value| {
        events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "routes-installed" || e["kind"] == "reroute")
            .count()
    };
    let first = installs(&bed.controller_get("A", "/api/v1/events").await);
    assert!(first >= 1, "the session's routes were installed");
    // a minute of polls (every 2 s) of a demand no path meets
    tokio::time::sleep(Duration::from_secs(60)).await;
    let events = bed.controller_get("A", "/api/v1/events").await;
    assert_eq!(
        installs(&events),
        first,
        "installs or reroutes after the first: {events:#}"
    );
}
