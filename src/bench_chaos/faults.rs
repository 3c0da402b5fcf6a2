//! The chaos bench's faults: one at a time, each healed before the next, every one logged
//! with its time; processes found dead without having been killed are restarted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::{ChaosArgs, Run};
use crate::quantum::LinkState;
use crate::testbed::endpoints::Endpoints;
use crate::testbed::runner;

/// KMs that are not gateways, and gateways.
const KMS: [&str; 8] = ["a1", "a2", "a3", "a4", "b1", "b2", "b3", "b4"];
const GATEWAYS: [&str; 4] = ["ga1", "ga2", "gb1", "gb2"];

/// A fault the chaos task can do.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Km,
    Gateway,
    Controller,
    Manager,
    Link,
    QxLink,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Km => "kill_km",
            Fault::Gateway => "kill_gateway",
            Fault::Controller => "kill_controller",
            Fault::Manager => "kill_manager",
            Fault::Link => "link_down",
            Fault::QxLink => "qx_link_down",
        }
    }
}

/// Every process of the testbed: KMs, controllers, managers.
fn process_names(endpoints: &Endpoints) -> Vec<String> {
    let mut names = Vec::new();
    for domain in endpoints.domains.values() {
        names.extend(domain.nodes.keys().cloned());
        names.extend(domain.controller.as_ref().map(|c| c.name.clone()));
        names.extend(domain.manager.as_ref().map(|m| m.name.clone()));
    }
    names
}

/// `kill -9` of process `name`.
async fn kill(run: &Run, name: &str) -> anyhow::Result<()> {
    let (dir, name) = (run.dir.clone(), name.to_owned());
    tokio::task::spawn_blocking(move || runner::stop_node(&dir, &name, true)).await??;
    Ok(())
}

/// Starts process `name` again and waits until it is ready (three attempts); counts the
/// restart time or the failure.
async fn restart(run: &Run, name: &str) {
    for attempt in 1..=3 {
        let started = Instant::now();
        let (dir, exe, node) = (run.dir.clone(), run.exe.clone(), name.to_owned());
        // the start-up lock is a blocking file lock
        let handle = tokio::runtime::Handle::current();
        let result = tokio::task::spawn_blocking(move || {
            handle.block_on(runner::start_node(&dir, &node, &exe))
        })
        .await;
        match result {
            Ok(Ok(())) => {
                let took = started.elapsed().as_secs_f64();
                run.figures().restarts.push(took);
                run.log(format_args!("{name} ready again ({took:.2} s to start)"));
                return;
            }
            Ok(Err(error)) => {
                run.figures().restart_failures += 1;
                run.log(format_args!(
                    "RESTART FAILED: {name} (attempt {attempt}): {error}"
                ));
            }
            Err(error) => {
                run.figures().restart_failures += 1;
                run.log(format_args!("RESTART FAILED: {name}: {error}"));
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Sets `link` to `state`, retrying for a while; counts a failure to heal.
pub(super) async fn set_link(run: &Run, link: &str, state: LinkState) -> bool {
    for attempt in 1..=5 {
        match runner::set_link_state(&run.dir, link, state).await {
            Ok(()) => return true,
            Err(error) => run.log(format_args!(
                "link {link} {state:?} failed (attempt {attempt}): {error}"
            )),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if state == LinkState::Up {
        run.figures().heal_failures += 1;
    }
    false
}

/// Restarts every process found dead that the bench did not kill.
pub(super) async fn revive(run: &Run) {
    for name in process_names(&run.endpoints) {
        if !runner::is_running(&run.dir, &name) {
            run.figures().unexpected_exits += 1;
            run.log(format_args!(
                "UNEXPECTED EXIT: {name} is not running (see its log {})",
                run.endpoints
                    .process(&name)
                    .map(|p| p.log.display().to_string())
                    .unwrap_or_default()
            ));
            // a process that is gone must leave processes.json before it can start again
            let _ = kill(run, &name).await;
            restart(run, &name).await;
        }
    }
}

/// Sleeps `wait`, checking every second that every process runs.
async fn watch(run: &Run, wait: Duration) {
    let until = Instant::now() + wait;
    while Instant::now() < until {
        tokio::time::sleep((until - Instant::now()).min(Duration::from_secs(1))).await;
        revive(run).await;
    }
}

/// Faults until the deadline, one at a time, each healed before the next.
pub(super) async fn faults(run: Arc<Run>, args: ChaosArgs) {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let links: Vec<String> = (run.endpoints.links.iter())
        .filter(|(_, l)| l.peer_domain.is_none())
        .map(|(id, _)| id.clone())
        .collect();
    let qx: Vec<String> = (run.endpoints.links.iter())
        .filter(|(_, l)| l.peer_domain.is_some())
        .map(|(id, _)| id.clone())
        .collect();
    let kinds = [
        (Fault::Km, 25),
        (Fault::Gateway, 15),
        (Fault::Controller, 15),
        (Fault::Manager, 10),
        (Fault::Link, 20),
        (Fault::QxLink, 15),
    ];
    loop {
        let wait = Duration::from_secs_f64(args.fault_every * rng.gen_range(0.5..1.5));
        if Instant::now() + wait >= run.deadline {
            break;
        }
        watch(&run, wait).await;
        let fault = kinds.choose_weighted(&mut rng, |k| k.1).expect("weights").0;
        *run.figures().faults.entry(fault.name().into()).or_default() += 1;
        match fault {
            Fault::Km | Fault::Gateway | Fault::Controller | Fault::Manager => {
                let name = match fault {
                    Fault::Km => KMS.choose(&mut rng).copied().map(String::from),
                    Fault::Gateway => GATEWAYS.choose(&mut rng).copied().map(String::from),
                    Fault::Controller => ["controller-A", "controller-B"]
                        .choose(&mut rng)
                        .copied()
                        .map(String::from),
                    _ => ["manager-A", "manager-B"]
                        .choose(&mut rng)
                        .copied()
                        .map(String::from),
                }
                .expect("a process");
                let down = Duration::from_secs_f64(rng.gen_range(1.0..5.0));
                run.log(format_args!(
                    "FAULT {}: kill -9 {name}, down for {:.1} s",
                    fault.name(),
                    down.as_secs_f64()
                ));
                if let Err(error) = kill(&run, &name).await {
                    run.log(format_args!("kill {name} failed: {error:#}"));
                }
                tokio::time::sleep(down).await;
                restart(&run, &name).await;
            }
            Fault::Link | Fault::QxLink => {
                let pool = if matches!(fault, Fault::Link) {
                    &links
                } else {
                    &qx
                };
                let link = pool.choose(&mut rng).expect("a link").clone();
                let down = Duration::from_secs_f64(rng.gen_range(3.0..10.0));
                run.log(format_args!(
                    "FAULT {}: {link} down for {:.1} s",
                    fault.name(),
                    down.as_secs_f64()
                ));
                if set_link(&run, &link, LinkState::Down).await {
                    tokio::time::sleep(down).await;
                }
                if set_link(&run, &link, LinkState::Up).await {
                    run.log(format_args!("{link} up again"));
                }
            }
        }
    }
}
