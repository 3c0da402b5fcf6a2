//! Starting and stopping a testbed's processes (KM agents, controllers, managers).
//!
//! A process is started with [`readiness::ENV`](crate::readiness::ENV) naming its readiness
//! file (beside its configuration), and is ready when that file, written by the process
//! itself after it bound its listeners, names every port the testbed gave it (and its health
//! URL answers): `testbed up` and `testbed node start` return only then, however busy the
//! machine is.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::endpoints::Endpoints;
use super::error::TestbedError;
use crate::readiness;
use crate::tls;

/// How long a process may take to serve every port.
const READY_WITHIN: Duration = Duration::from_secs(60);

fn io(context: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> TestbedError {
    move |e| TestbedError::Io(format!("{context}: {e}"))
}

/// Starts process `name` of the testbed; returns its pid.
pub(super) fn spawn_node(
    endpoints: &Endpoints,
    name: &str,
    exe: &Path,
) -> Result<u32, TestbedError> {
    let spec = endpoints
        .process(name)
        .ok_or_else(|| TestbedError::Unknown {
            kind: "process",
            name: name.into(),
        })?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .map_err(io("opening the log"))?;
    // a readiness file of an earlier run says nothing about this one
    let ready = spec.ready_file();
    match std::fs::remove_file(&ready) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(format!("removing {}", ready.display()))(e)),
    }
    // `ip netns exec` execs the command: the pid stays that of the qkdni process, and the
    // environment (the readiness file) passes through
    let mut command = match &spec.netns {
        Some(namespace) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", namespace.as_str()]).arg(exe);
            command
        }
        None => Command::new(exe),
    };
    let child = command
        .arg(spec.subcommand)
        .arg("--config")
        .arg(&spec.config)
        .env(readiness::ENV, &ready)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(io("log handle"))?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(io(format!("starting {}", exe.display())))?;
    Ok(child.id())
}

/// Whether process `pid` runs: any of its threads does. A zombie (exited, not yet reaped by
/// whoever adopted it) is not alive, but a killed process whose main thread is a zombie
/// while other threads still exit is: those still hold its files (a redb store's lock,
/// which a restarted process would find taken).
pub(super) fn alive(pid: u32) -> bool {
    let running = |stat: &str| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    };
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    threads.flatten().any(|thread| {
        std::fs::read_to_string(thread.path().join("stat")).is_ok_and(|stat| running(&stat))
    })
}

/// Waits until process `name` (`pid`) serves every port it was given: its readiness file
/// names them all, then its health URL answers.
pub(super) async fn wait_ready(
    endpoints: &Endpoints,
    name: &str,
    pid: u32,
) -> Result<(), TestbedError> {
    let spec = endpoints.process(name).expect("known process");
    let not_ready = |reason: String| TestbedError::NotReady {
        node: name.into(),
        reason,
    };
    let exited = || {
        let log = std::fs::read_to_string(&spec.log).unwrap_or_default();
        let reason = log
            .lines()
            .find(|l| l.starts_with("Error:"))
            .or_else(|| log.lines().last())
            .unwrap_or("no output")
            .to_owned();
        not_ready(format!("process exited: {reason}"))
    };
    let deadline = Instant::now() + READY_WITHIN;
    let ready_file = spec.ready_file();
    // 1. the process says it listens on every port
    loop {
        if !alive(pid) {
            return Err(exited());
        }
        let ready = readiness::read(&ready_file).map_err(|e| not_ready(e.to_string()))?;
        if let Some(ready) = ready.filter(|r| r.pid == pid) {
            let missing: Vec<&SocketAddr> = spec
                .listens
                .iter()
                .filter(|a| !ready.listening.contains(a))
                .collect();
            if !missing.is_empty() {
                return Err(not_ready(format!("ready without listening on {missing:?}")));
            }
            break;
        }
        if Instant::now() > deadline {
            return Err(not_ready(format!("no readiness within {READY_WITHIN:?}")));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // 2. and answers: its health URL (a check of the whole HTTPS stack)
    let client = tls::https_client_trusting(
        std::slice::from_ref(&endpoints.ca_cert),
        Duration::from_secs(5),
    )?;
    loop {
        match client.get(&spec.health).send().await {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) if Instant::now() > deadline => {
                return Err(not_ready(format!("health: {}", response.status())))
            }
            Err(error) if Instant::now() > deadline => {
                return Err(not_ready(format!("health: {error}")))
            }
            _ if !alive(pid) => return Err(exited()),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
}

/// Stops process `pid`: SIGTERM, then SIGKILL after 5 s (`kill`: SIGKILL at once, as a
/// crash); waits until it is gone.
pub(super) fn stop_pid(pid: u32, kill: bool) {
    use nix::sys::signal::Signal;
    if kill {
        signal(pid, Signal::SIGKILL);
    } else {
        signal(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        signal(pid, Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}
