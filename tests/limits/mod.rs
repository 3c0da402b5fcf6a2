//! Load and abuse (issue 15) over real KM processes: idle and unauthenticated connections,
//! password guessing, floods of ETSI 014 clients, keys nobody fetches, oversized requests.
//! Timeouts are configured short here; timings are asserted only as lower bounds (what a
//! timer guarantees), never as performance targets (those are the benches').

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::common::Bed;
use qkdni::etsi014::{ClientError, KeyRequest};

/// Two KMs and one link; every limit under test set short.
fn topology(limits: &str) -> String {
    format!(
        r#"
name = "limits"
[[domains]]
name = "L"
[[domains.nodes]]
name = "l1"
saes = ["sae-l1-1", "sae-l1-2"]
[[domains.nodes]]
name = "l2"
saes = ["sae-l2-1"]
[[domains.links]]
id = "l1-l2"
nodes = ["l1", "l2"]
rate_bps = 1000000.0
capacity_blocks = 8192
{limits}
"#
    )
}

const LISTENERS: &str = r#"
[km_limits.etsi014_listener]
idle_timeout_ms = 1500
body_timeout_ms = 1500
connections = { max_connections = 4096, max_per_source = 4096 }
[netconf_limits]
login_timeout_ms = 2000
"#;

fn one_key() -> KeyRequest {
    KeyRequest {
        number: Some(1),
        size: Some(256),
        ..Default::default()
    }
}

/// Resident memory of process `pid`, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

fn pid(bed: &Bed, node: &str) -> u32 {
    qkdni::testbed::runner::process_ids(&bed.dir)[node]
}

/// Reads until the peer closes (EOF or reset); panics after `within`.
async fn closed_within(stream: &mut (impl AsyncReadExt + Unpin), within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("connection still open after {within:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_ssh_connections_neither_starve_etsi014_nor_stay_open() {
    qkdni::conn_limit::raise_fd_limit().unwrap();
    let bed = Bed::up_text(&topology(LISTENERS));
    let alice = bed.client("sae-l1-1");
    let netconf = bed.endpoints.node("l1").unwrap().netconf.clone();
    // 2 000 connections that send their SSH identification, then nothing (a connection
    // the listener never accepted, its backlog overflowing, learns so by writing)
    let opened = Instant::now();
    let mut connects = Vec::new();
    for _ in 0..2000 {
        let addr = netconf.clone();
        connects.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
            stream.write_all(b"SSH-2.0-idle\r\n").await.ok()?;
            Some(stream)
        }));
    }
    let mut streams = Vec::new();
    for connect in connects {
        streams.extend(connect.await.unwrap());
    }
    // meanwhile the same KM's ETSI 014 API answers promptly
    for _ in 0..5 {
        let asked = Instant::now();
        let status = tokio::time::timeout(Duration::from_secs(1), alice.status("sae-l2-1"))
            .await
            .expect("ETSI 014 status within 1 s during the flood")
            .unwrap();
        assert_eq!(status.source_KME_ID, "l1");
        assert!(asked.elapsed() < Duration::from_secs(1));
    }
    // every connection is closed: beyond the caps at once, the others at the login timeout
    let mut waits = Vec::new();
    for mut stream in streams {
        waits.push(tokio::spawn(async move {
            closed_within(&mut stream, Duration::from_secs(15)).await;
        }));
    }
    for wait in waits {
        wait.await.unwrap();
    }
    assert!(
        opened.elapsed() >= Duration::from_secs(2),
        "held until the login timeout"
    );
    let log = bed.log("l1");
    assert!(log.contains("connection cap reached"), "{log}");
    assert!(
        log.contains("no NETCONF session within the login timeout"),
        "{log}"
    );
    // the operator gets in afterwards
    let session = bed.netconf("l1").await;
    session.get(None).await.unwrap();
}

/// A TLS connection to `base` (an `https://host:port` URL) as `sae`.
async fn tls_to(
    bed: &Bed,
    base: &str,
    sae: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let files = bed.endpoints.sae_tls(sae).unwrap();
    let config = qkdni::tls::client_config(&files).unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let addr = base.trim_start_matches("https://");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let ip: std::net::SocketAddr = addr.parse().unwrap();
    let name = rustls::pki_types::ServerName::from(ip.ip());
    connector.connect(name, tcp).await.unwrap()
}

/// The status and JSON body of a raw HTTP/1.1 answer.
fn answer(raw: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn etsi_error(status: u16, body: &Value, expected: u16) {
    assert_eq!(status, expected, "{body}");
    assert!(body["message"].is_string(), "ETSI error body: {body}");
    assert!(
        body.get("details").is_none_or(Value::is_array),
        "ETSI error body: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_oversized_http_requests_get_closed_or_etsi_errors() {
    let bed = Bed::up_text(&topology(LISTENERS));
    let kme = bed.kme("l1");
    // handshake done, then nothing: closed after the idle timeout (1.5 s)
    let mut idle = tls_to(&bed, &kme, "sae-l1-1").await;
    let since = Instant::now();
    closed_within(&mut idle, Duration::from_secs(10)).await;
    assert!(since.elapsed() >= Duration::from_secs(1));
    // half a request head: the same
    let mut half = tls_to(&bed, &kme, "sae-l1-1").await;
    half.write_all(b"GET /api/v1/keys/sae-l2-1/status HTTP/1.1\r\nhost: l1\r\n")
        .await
        .unwrap();
    closed_within(&mut half, Duration::from_secs(10)).await;
    // half a body: 408 in the ETSI format, then closed
    let mut slow = tls_to(&bed, &kme, "sae-l1-1").await;
    slow.write_all(b"POST /api/v1/keys/sae-l2-1/enc_keys HTTP/1.1\r\nhost: l1\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"number\":")
        .await
        .unwrap();
    let raw = closed_within(&mut slow, Duration::from_secs(10)).await;
    let (status, body) = answer(&raw);
    etsi_error(status, &body, 408);

    // 413, 414, 431, 404, 405: ETSI error bodies
    let http = bed.http("sae-l1-1");
    let url = |path: &str| format!("{kme}/api/v1/keys/{path}");
    // a body over the limit is refused on its declared length, before it is read
    let mut big = tls_to(&bed, &kme, "sae-l1-1").await;
    big.write_all(b"POST /api/v1/keys/sae-l2-1/enc_keys HTTP/1.1\r\nhost: l1\r\ncontent-type: application/json\r\ncontent-length: 2097152\r\n\r\n")
        .await
        .unwrap();
    let raw = closed_within(&mut big, Duration::from_secs(10)).await;
    let (status, body) = answer(&raw);
    etsi_error(status, &body, 413);
    let checks = [
        (
            http.get(format!(
                "{}?pad={}",
                url("sae-l2-1/status"),
                "x".repeat(10_000)
            )),
            414,
        ),
        (
            http.get(url("sae-l2-1/status"))
                .header("x-pad", "y".repeat(20_000)),
            431,
        ),
        (http.get(url("sae-l2-1/nothing-here")), 404),
        (http.delete(url("sae-l2-1/status")), 405),
    ];
    for (request, expected) in checks {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        etsi_error(status, &body, expected);
    }
    // the quantum channel asks who calls before it reads a body: an SAE gets 403, not 400
    let response = http
        .post(format!(
            "{}/qchannel/v1/links/l1-l2/frames",
            bed.endpoints.node("l1").unwrap().kma
        ))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    // and the API still serves
    bed.client("sae-l1-1").status("sae-l2-1").await.unwrap();
}

/// One SSH connection trying `attempts` passwords; the time each attempt took.
async fn guess(
    addr: std::net::SocketAddr,
    user: &str,
    password: &str,
    attempts: usize,
) -> Vec<(bool, Duration)> {
    struct Accept;
    impl russh::client::Handler for Accept {
        type Error = russh::Error;
        async fn check_server_key(
            &mut self,
            _: &russh::keys::PublicKey,
        ) -> Result<bool, Self::Error> {
            Ok(true)
        }
    }
    let config = std::sync::Arc::new(russh::client::Config::default());
    let mut ssh = russh::client::connect(config, addr, Accept).await.unwrap();
    let mut out = Vec::new();
    for _ in 0..attempts {
        let tried = Instant::now();
        let ok = ssh
            .authenticate_password(user, password)
            .await
            .unwrap()
            .success();
        out.push((ok, tried.elapsed()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_are_slowed_down_and_raise_security_events() {
    let bed = Bed::up_text(&topology(
        r#"
[netconf_limits.auth_throttle]
free_failures = 3
delay_ms = 50
max_delay_ms = 1000
window_seconds = 300
"#,
    ));
    let addr: std::net::SocketAddr = bed.endpoints.node("l1").unwrap().netconf.parse().unwrap();
    let watcher = bed.netconf("l1").await;
    let mut events = watcher.subscribe().await.unwrap();
    let login = bed.endpoints.netconf_user.clone();
    // 50 wrong passwords: 10 connections trying 5 each
    let mut guessers = Vec::new();
    for _ in 0..10 {
        let user = login.username.clone();
        guessers.push(tokio::spawn(
            async move { guess(addr, &user, "wrong", 5).await },
        ));
    }
    let mut attempts = Vec::new();
    for guesser in guessers {
        attempts.extend(guesser.await.unwrap());
    }
    assert_eq!(attempts.len(), 50);
    assert!(attempts.iter().all(|(ok, _)| !ok));
    // the right password from the same source now waits the longest delay too
    let right = guess(addr, &login.username, &login.password, 1).await;
    assert!(right[0].0, "the right password still works");
    assert!(
        right[0].1 >= Duration::from_millis(1000),
        "{:?}",
        right[0].1
    );
    // every failure is a security event
    let mut failures = 0;
    let mut highest = 0u32;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while failures < 50 {
        let notification = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("{failures} security events of 50"))
            .unwrap();
        if notification.contains("<security-event") && notification.contains("auth-failure") {
            failures += 1;
            let count = notification
                .split("<failures-from-source>")
                .nth(1)
                .and_then(|s| s.split('<').next())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            highest = highest.max(count);
        }
    }
    assert_eq!(highest, 50, "failures counted per source");
    assert!(bed.log("l1").contains("NETCONF authentication failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_etsi014_clients_get_answers_or_503_and_memory_returns() {
    qkdni::conn_limit::raise_fd_limit().unwrap();
    let bed = Bed::up_text(&topology(&format!(
        "{LISTENERS}\n[km_limits]\netsi014_max_requests = 64\netsi014_max_requests_per_sae = 2\nmax_undelivered_keys_per_pair = 10\n"
    )));
    bed.wait_path(&["l1", "l2"], 64).await;
    let pid = pid(&bed, "l1");
    let alice = bed.client("sae-l1-1");
    alice.status("sae-l2-1").await.unwrap();
    let idle = rss(pid);

    // keys nobody fetches: at most 10 wait per pair; beyond, 503 until the slave fetches
    let ten = alice
        .enc_keys(
            "sae-l2-1",
            &KeyRequest {
                number: Some(10),
                ..one_key()
            },
        )
        .await
        .unwrap();
    match alice.enc_keys("sae-l2-1", &one_key()).await {
        Err(ClientError::Kme { status: 503, body }) => {
            assert!(body.message.contains("cannot be supplied"), "{body:?}")
        }
        other => panic!("expected 503, got {other:?}"),
    }
    let ids: Vec<String> = ten.keys.iter().map(|k| k.key_ID.clone()).collect();
    bed.client("sae-l2-1")
        .dec_keys("sae-l1-1", &ids)
        .await
        .unwrap();
    alice.enc_keys("sae-l2-1", &one_key()).await.unwrap();

    // 2 000 clients at once, each on its own connection
    let tls = qkdni::tls::client_config(&bed.endpoints.sae_tls("sae-l1-1").unwrap()).unwrap();
    let url = format!("{}/api/v1/keys/sae-l2-1/status", bed.kme("l1"));
    let mut clients = Vec::new();
    for _ in 0..2000 {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls.clone())
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        let url = url.clone();
        clients.push(tokio::spawn(async move {
            let response = http.get(url).send().await.expect("an answer");
            let status = response.status().as_u16();
            let retry = response.headers().get("retry-after").cloned();
            let body: Value = response.json().await.unwrap();
            (status, retry, body)
        }));
    }
    let (mut served, mut shed) = (0, 0);
    for client in clients {
        let (status, retry, body) = client.await.unwrap();
        match status {
            200 => served += 1,
            503 => {
                shed += 1;
                assert_eq!(retry.unwrap(), "1");
                etsi_error(status, &body, 503);
            }
            other => panic!("HTTP {other}: {body}"),
        }
    }
    assert_eq!(served + shed, 2000);
    assert!(served > 0);
    eprintln!(
        "2000 clients: {served} served, {shed} shed; RSS idle {} MiB",
        idle >> 20
    );
    // memory comes back once the clients are gone
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = rss(pid);
        if now < idle + 64 * 1024 * 1024 {
            eprintln!("RSS after: {} MiB", now >> 20);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "RSS {} MiB, idle {} MiB",
            now >> 20,
            idle >> 20
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    alice.status("sae-l2-1").await.unwrap();
}

/// The `keys-expired` counter in `node`'s state data.
async fn keys_expired(bed: &Bed, node: &str) -> u64 {
    let state = bed.netconf(node).await.get(None).await.unwrap();
    state
        .split("<keys-expired>")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undelivered_keys_expire_and_are_never_handed_out() {
    let bed = Bed::up_text(&topology("[km_limits]\nundelivered_key_ttl_seconds = 2\n"));
    bed.wait_path(&["l1", "l2"], 64).await;
    let alice = bed.client("sae-l1-1");
    let bob = bed.client("sae-l2-1");
    let keys = alice
        .enc_keys(
            "sae-l2-1",
            &KeyRequest {
                number: Some(2),
                ..one_key()
            },
        )
        .await
        .unwrap();
    let ids: Vec<String> = keys.keys.iter().map(|k| k.key_ID.clone()).collect();
    // fetched in time: handed out
    let first = bob.dec_keys("sae-l1-1", &ids[..1]).await.unwrap();
    assert_eq!(first.keys[0].key, keys.keys[0].key);
    // the other expires and is erased
    let deadline = Instant::now() + Duration::from_secs(20);
    while keys_expired(&bed, "l2").await < 1 {
        assert!(Instant::now() < deadline, "no key expired");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    match bob.dec_keys("sae-l1-1", &ids[1..]).await {
        Err(ClientError::Kme { status: 400, .. }) => {}
        other => panic!("an expired key must not be handed out: {other:?}"),
    }
    assert!(bed.log("l2").contains("undelivered keys expired"));
    // accounting: the fetched key was delivered, the other expired (nothing to charge)
    let kinds = || async {
        (
            bed.accounting_key_ids("l2", "delivered").await,
            bed.accounting_key_ids("l2", "expired").await,
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (delivered, expired) = kinds().await;
        if expired == ids[1..] {
            assert_eq!(delivered, ids[..1]);
            break;
        }
        assert!(Instant::now() < deadline, "no expired record: {expired:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A NETCONF channel as `login`, for raw bytes.
async fn raw_netconf(
    addr: std::net::SocketAddr,
    login: &qkdni::testbed::endpoints::NetconfLogin,
) -> russh::ChannelStream<russh::client::Msg> {
    struct Accept;
    impl russh::client::Handler for Accept {
        type Error = russh::Error;
        async fn check_server_key(
            &mut self,
            _: &russh::keys::PublicKey,
        ) -> Result<bool, Self::Error> {
            Ok(true)
        }
    }
    let config = std::sync::Arc::new(russh::client::Config::default());
    let mut ssh = russh::client::connect(config, addr, Accept).await.unwrap();
    assert!(ssh
        .authenticate_password(&login.username, &login.password)
        .await
        .unwrap()
        .success());
    let channel = ssh.channel_open_session().await.unwrap();
    channel.request_subsystem(true, "netconf").await.unwrap();
    std::mem::forget(ssh);
    channel.into_stream()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netconf_sessions_are_capped_idle_ones_closed_and_big_messages_refused() {
    let bed = Bed::up_text(&topology(
        "[netconf_limits]\nmax_sessions = 4\nmax_sessions_per_user = 2\nidle_timeout_ms = 1500\n",
    ));
    let addr: std::net::SocketAddr = bed.endpoints.node("l1").unwrap().netconf.parse().unwrap();
    let (operator, viewer) = (
        bed.endpoints.netconf_user.clone(),
        bed.endpoints.netconf_readonly_user.clone(),
    );
    // two sessions per user, four in all
    let first = bed.netconf_as("l1", &operator, false).await.unwrap();
    let _second = bed.netconf_as("l1", &operator, false).await.unwrap();
    let refused = Instant::now();
    assert!(bed.netconf_as("l1", &operator, false).await.is_err());
    assert!(
        refused.elapsed() < Duration::from_secs(5),
        "refused at once"
    );
    let watcher = bed.netconf_as("l1", &viewer, false).await.unwrap();
    let mut events = watcher.subscribe().await.unwrap();
    let _fourth = bed.netconf_as("l1", &viewer, false).await.unwrap();
    assert!(bed.netconf_as("l1", &viewer, false).await.is_err());
    assert!(bed.log("l1").contains("NETCONF session refused"));
    // sessions that send nothing are closed; the subscribed one stays
    let deadline = Instant::now() + Duration::from_secs(10);
    while !first.is_closed() {
        assert!(Instant::now() < deadline, "idle session still open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!watcher.is_closed());
    assert!(matches!(
        events.try_recv(),
        Err(tokio::sync::broadcast::error::TryRecvError::Empty)
    ));
    // their places are free again
    let again = bed.netconf_as("l1", &operator, false).await.unwrap();
    again.get(None).await.unwrap();
    // a message over max_message_bytes (4 MiB in the testbed): rpc-error too-big
    let mut channel = raw_netconf(addr, &operator).await;
    const HELLO: &str = "<hello xmlns=\"urn:ietf:params:xml:ns:netconf:base:1.0\"><capabilities><capability>urn:ietf:params:netconf:base:1.1</capability></capabilities></hello>]]>]]>";
    channel.write_all(HELLO.as_bytes()).await.unwrap();
    channel
        .write_all(format!("\n#{}\n<rpc>", 5 * 1024 * 1024).as_bytes())
        .await
        .unwrap();
    let answer = closed_within(&mut channel, Duration::from_secs(10)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.contains("<error-tag>too-big</error-tag>"),
        "{answer}"
    );
    // and the server serves on
    let next = bed.netconf_as("l1", &viewer, false).await.unwrap();
    next.get(None).await.unwrap();
}
