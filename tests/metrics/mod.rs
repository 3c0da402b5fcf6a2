//! Prometheus metrics of every daemon, scraped as Prometheus would.

use std::time::{Duration, Instant};

use crate::common::Bed;

/// The exposition at `url`, checked for the OpenMetrics content type and end marker.
async fn scrape(url: &str) -> String {
    // plain HTTP; reqwest still wants a TLS configuration
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap();
    let response = http.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    let text = response.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    text
}

/// The value of the series that starts with `series` (name and labels as written).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_daemon_serves_prometheus_metrics() {
    let bed = Bed::up("two-domain-gwn.toml");
    bed.wait_path(&["a1", "a2", "ga1", "gb1", "b2", "b1"], 1)
        .await;
    // keys on demand across the domains: a session agreed over Cxi, relayed hop by hop
    bed.deliver("sae-a1-1", "sae-b1-1", 2).await;
    let url = |metrics: &Option<String>| metrics.clone().expect("a metrics URL");
    let e = &bed.endpoints;

    let a1 = scrape(&url(&e.node("a1").unwrap().metrics)).await;
    let requests =
        "qkdni_km_etsi014_requests_total{call=\"enc_keys\",sae=\"sae-a1-1\",code=\"200\"}";
    assert_eq!(value(&a1, requests), Some(1.0), "{a1}");
    let keys = "qkdni_km_etsi014_keys_total{sae=\"sae-a1-1\",role=\"master\"}";
    assert_eq!(value(&a1, keys), Some(2.0), "{a1}");
    assert!(
        value(
            &a1,
            "qkdni_km_etsi014_request_duration_seconds_count{call=\"enc_keys\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{a1}"
    );
    let origin = "qkdni_km_relay_messages_total{step=\"origin\",outcome=\"ok\"}";
    assert!(value(&a1, origin).is_some_and(|n| n >= 1.0), "{a1}");
    let rate = "qkdni_km_link_secret_key_rate_bps{link=";
    assert!(value(&a1, rate).is_some_and(|r| r > 0.0), "{a1}");
    assert!(a1.contains("qkdni_km_pool_fill_ratio{link="), "{a1}");
    assert!(a1.contains("qkdni_km_link_up{link="), "{a1}");

    let b1 = scrape(&url(&e.node("b1").unwrap().metrics)).await;
    let fetched = "qkdni_km_etsi014_keys_total{sae=\"sae-b1-1\",role=\"slave\"}";
    assert_eq!(value(&b1, fetched), Some(2.0), "{b1}");
    let delivered = "qkdni_km_relay_messages_total{step=\"deliver\",outcome=\"ok\"}";
    assert!(value(&b1, delivered).is_some_and(|n| n >= 1.0), "{b1}");

    let controller_a = scrape(&url(&e.controller("A").unwrap().metrics)).await;
    let session =
        "qkdni_controller_sessions{state=\"active\",kind=\"interworking\",origin=\"on-demand\"}";
    assert_eq!(value(&controller_a, session), Some(1.0), "{controller_a}");
    let installs = "qkdni_controller_route_installs_total{outcome=\"ok\"}";
    assert!(
        value(&controller_a, installs).is_some_and(|n| n >= 1.0),
        "{controller_a}"
    );
    // A asked B over Cxi (prepare, commit): its round trips are observed per peer
    let round_trips =
        "qkdni_controller_cxi_round_trip_duration_seconds_count{peer=\"B\",outcome=\"answered\"}";
    assert!(
        value(&controller_a, round_trips).is_some_and(|n| n >= 2.0),
        "{controller_a}"
    );
    let controller_b = scrape(&url(&e.controller("B").unwrap().metrics)).await;
    let prepared = "qkdni_controller_cxi_requests_total{method=\"POST\",route=\"/cxi/v1/transactions\",code=\"200\"}";
    assert!(
        value(&controller_b, prepared).is_some_and(|n| n >= 1.0),
        "{controller_b}"
    );

    // managers exchange report packs over Mxi every few seconds
    let manager_b = url(&e.manager("B").unwrap().metrics);
    let started = Instant::now();
    let manager = loop {
        let text = scrape(&manager_b).await;
        let reports = "qkdni_manager_mxi_requests_total{method=\"POST\",route=\"/mxi/v1/reports\"";
        if text.lines().any(|l| l.starts_with(reports)) {
            break text;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{text}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // the Grafana dashboard asks only for series the daemons serve
    // (every family the daemons declare, with the series names its type gives)
    let mut served = std::collections::BTreeSet::new();
    for text in [&a1, &b1, &controller_a, &controller_b, &manager] {
        for line in text.lines() {
            let mut words = line.split(' ');
            if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
                (words.next(), words.next(), words.next(), words.next())
            {
                let suffixes: &[&str] = match kind {
                    "counter" => &["_total"],
                    "histogram" => &["_bucket", "_sum", "_count"],
                    _ => &[""],
                };
                for suffix in suffixes {
                    served.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../testbed/grafana/qkdni-dashboard.json")).unwrap();
    let mut asked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("qkdni_"))
                // QBER comes only from links with a physical model; this topology has none
                .filter(|w| *w != "qkdni_km_link_qber")
            {
                assert!(
                    served.contains(name),
                    "the dashboard asks for {name}: not served"
                );
                asked += 1;
            }
        }
    }
    assert!(asked >= 15, "{asked}");

    // the testbed's Prometheus configuration scrapes every daemon
    let prometheus: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(std::path::Path::new(bed.dir()).join("prometheus.yml")).unwrap(),
    )
    .unwrap();
    let targets: Vec<&str> = prometheus["scrape_configs"][0]["static_configs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["targets"].as_array().unwrap())
        .map(|t| t.as_str().unwrap())
        .collect();
    let daemons = e.domains.values().map(|d| d.nodes.len() + 2).sum::<usize>();
    assert_eq!(targets.len(), daemons, "{targets:?}");
}
