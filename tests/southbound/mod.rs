//! The controller's (and the manager's) southbound against real KM agents: it checks the
//! agents' SSH host keys (a changed key is refused before the password is sent), and an agent
//! that does not answer delays no operation on the others.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use qkdni::control::ck::southbound::{RouteChanges, Southbound, SouthboundError};
use qkdni::control::config::SouthboundLogin;
use qkdni::control::topology::WeightedHop;
use qkdni::netconf::client::ClientError;
use qkdni::netconf::known_hosts::HostKeyError;

use super::common::Bed;

/// Every KM of domain A by node.
fn agents(bed: &Bed) -> BTreeMap<String, SocketAddr> {
    bed.endpoints.domains["A"]
        .nodes
        .iter()
        .map(|(node, e)| (node.clone(), e.netconf.parse().unwrap()))
        .collect()
}

/// The login of controllers and managers, with the testbed's known hosts.
fn login(bed: &Bed) -> SouthboundLogin {
    SouthboundLogin {
        username: bed.endpoints.netconf_user.username.clone(),
        password: bed.endpoints.netconf_user.password.clone(),
        known_hosts: bed.endpoints.known_hosts.clone().expect("known_hosts"),
    }
}

/// The controller's southbound to every KM of domain A.
fn southbound_of(bed: &Bed) -> Southbound {
    Southbound::with_login(agents(bed), &login(bed)).unwrap()
}

/// Times `operation`.
async fn timed<T>(operation: impl std::future::Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let result = operation.await;
    (result, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_km_whose_host_key_changed_is_refused_before_any_password() {
    let bed = Bed::up_static("single-domain.toml");
    let before = southbound_of(&bed);
    before
        .read("a5")
        .await
        .expect("the recorded key is accepted");

    // a5 comes back with a new host key (as an impostor at its address would)
    bed.cli(&["node", "stop", "a5"]);
    let key = bed.dir.join("nodes/a5/ssh_host_ed25519_key");
    std::fs::remove_file(&key).unwrap();
    bed.cli(&["node", "start", "a5"]);
    assert!(key.exists(), "a5 made itself a new host key");
    let log = || bed.log("a5");
    let authenticated = |log: &str| log.matches("NETCONF user authenticated").count();
    let logins = authenticated(&log());

    for southbound in [&before, &southbound_of(&bed)] {
        let error = southbound.read("a5").await.unwrap_err();
        let SouthboundError::Agent {
            error: ClientError::HostKey(HostKeyError::Changed { line, .. }),
            ..
        } = &error
        else {
            panic!("expected a changed host key, got {error}");
        };
        assert!(*line >= 1);
        let message = error.to_string();
        println!("refused: {message}");
        assert!(
            message.contains("CHANGED") && message.contains("known_hosts"),
            "{message}"
        );
    }
    // the manager's quantum layer manager, with the same login, reads every agent but a5
    let qlm = qkdni::management::qlm::Qlm::new(
        agents(&bed).into_iter().collect(),
        login(&bed).client_options(Duration::from_secs(5)).unwrap(),
    );
    let report = qlm.collect().await;
    assert_eq!(report.unreachable_agents, ["a5"], "{report:?}");
    // the other agents still answer; a5 never saw a login attempt
    before.read("a4").await.unwrap();
    assert_eq!(authenticated(&log()), logins, "{}", log());
    assert!(
        !log().contains("NETCONF authentication failed"),
        "{}",
        log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_km_delays_no_read_or_install_on_other_kms() {
    let bed = Bed::up_static("single-domain.toml");
    let southbound = std::sync::Arc::new(southbound_of(&bed));
    // a route a1 -> a2 -> a3, installed all or none on a1 and a2
    let route = |next: &str| {
        let mut changes = RouteChanges::default();
        changes.routes.insert(
            "a3".into(),
            Some(vec![WeightedHop {
                node: next.into(),
                weight: 1,
            }]),
        );
        changes
    };
    let install: BTreeMap<String, RouteChanges> =
        [("a1".into(), route("a2")), ("a2".into(), route("a3"))].into();
    southbound.read("a1").await.unwrap();
    southbound.read("a2").await.unwrap();
    let (_, read_before) = timed(southbound.read("a1")).await;
    let (installed, install_before) = timed(southbound.install(&install)).await;
    installed.unwrap();

    // a5 stops answering: the kernel still accepts its TCP connections, SSH never starts
    let a5 = qkdni::testbed::runner::process_ids(&bed.dir)["a5"];
    kill(Pid::from_raw(a5 as i32), Signal::SIGSTOP).unwrap();
    let hanging = tokio::spawn({
        let southbound = southbound.clone();
        async move { timed(southbound.read("a5")).await }
    });
    // the connect to a5 is under way
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (read, read_during) = timed(southbound.read("a1")).await;
    read.unwrap();
    // a session to an agent not yet connected is opened meanwhile too
    let (read, connect_during) = timed(southbound.read("a3")).await;
    read.unwrap();
    let (installed, install_during) = timed(southbound.install(&install)).await;
    installed.unwrap();
    assert!(
        !hanging.is_finished(),
        "the connect to a5 was still hanging while the others were measured"
    );
    let (result, hung) = hanging.await.unwrap();
    kill(Pid::from_raw(a5 as i32), Signal::SIGCONT).unwrap();
    println!(
        "with a5 stopped: read on a1 {read_during:?} (before: {read_before:?}), new session \
         and read on a3 {connect_during:?}, install on a1+a2 {install_during:?} (before: \
         {install_before:?}); the connect to a5 gave up after {hung:?}"
    );
    assert!(
        matches!(
            result,
            Err(SouthboundError::Agent {
                error: ClientError::Timeout(_),
                ..
            })
        ),
        "{result:?}"
    );
    // well below the connect timeout (5 s): nothing waited for a5 (target: < 100 ms)
    for (what, took) in [
        ("read", read_during),
        ("connect", connect_during),
        ("install", install_during),
    ] {
        assert!(took < Duration::from_secs(1), "{what} took {took:?}");
    }
    assert!(hung < Duration::from_secs(8), "connect timeout: {hung:?}");
}
