//! `qkdni testbed ...`: bring emulated domains up and down, inject faults, restart nodes.

use std::path::PathBuf;

use clap::Subcommand;

use super::runner;
use super::topology::Topology;
use crate::quantum::LinkState;

/// Testbed subcommands.
#[derive(Debug, Subcommand)]
pub enum TestbedCommand {
    /// Start every node of a topology and write `<DIR>/endpoints.json`.
    Up {
        /// Topology file (TOML).
        topology: PathBuf,
        /// Directory for certificates, configurations, stores and logs.
        #[arg(long)]
        dir: PathBuf,
        /// Start no controllers: every KM gets fewest-hop static relay routes instead.
        #[arg(long)]
        no_controller: bool,
        /// Every KM node in its own network namespace, every QKD link a veth pair between
        /// them (root only): `link down` also cuts the veth.
        #[arg(long)]
        netns: bool,
    },
    /// Stop every node of the testbed in DIR.
    Down {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Take a QKD link down, bring it up, or degrade it (QBER above threshold: no key).
    Link {
        #[arg(value_parser = parse_state)]
        state: LinkState,
        /// Link id.
        link: String,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Stop (or kill -9) and start single nodes.
    Node {
        #[command(subcommand)]
        action: NodeAction,
    },
}

/// Node subcommands.
#[derive(Debug, Subcommand)]
pub enum NodeAction {
    /// Stop a node (SIGTERM; with --kill: SIGKILL, as a crash).
    Stop {
        node: String,
        #[arg(long)]
        kill: bool,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Start a stopped node with its configuration and store.
    Start {
        node: String,
        #[arg(long)]
        dir: PathBuf,
    },
}

fn parse_state(s: &str) -> Result<LinkState, String> {
    match s {
        "up" => Ok(LinkState::Up),
        "down" => Ok(LinkState::Down),
        "degrade" | "degraded" => Ok(LinkState::Degraded),
        other => Err(format!("{other}: expected up, down or degrade")),
    }
}

/// Runs a testbed subcommand.
pub fn run(command: TestbedCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let exe = std::env::current_exe()?;
    match command {
        TestbedCommand::Up {
            topology,
            dir,
            no_controller,
            netns,
        } => {
            if netns {
                // before anything else, and without the clean-up of a failed start-up
                super::netns::check()?;
            }
            let text = std::fs::read_to_string(&topology)?;
            let mut topology = Topology::parse(&text)?;
            if no_controller {
                topology
                    .domains
                    .iter_mut()
                    .for_each(|d| d.controller = false);
            }
            let options = runner::UpOptions { netns };
            let endpoints = runtime.block_on(runner::up_with(&topology, &dir, &exe, &options));
            match endpoints {
                Ok(endpoints) => {
                    let nodes: usize = endpoints.domains.values().map(|d| d.nodes.len()).sum();
                    println!(
                        "testbed {} up: {nodes} nodes, {} links, {} SAEs; endpoints in {}",
                        endpoints.name,
                        endpoints.links.len(),
                        endpoints.saes.len(),
                        super::endpoints::Endpoints::path(&dir).display()
                    );
                    for (name, domain) in &endpoints.domains {
                        let Some(netconf) =
                            domain.manager.as_ref().and_then(|m| m.netconf.as_ref())
                        else {
                            continue;
                        };
                        let user = domain
                            .netconf_user
                            .as_ref()
                            .unwrap_or(&endpoints.netconf_user);
                        println!(
                            "domain {name}: manager NETCONF (interworking configuration) at {netconf}, user {} (password in endpoints.json)",
                            user.username
                        );
                    }
                    if let Some(net) = &endpoints.netns {
                        println!(
                            "network namespaces qkdni-{}-<node>, nodes at {}.., root address {}",
                            net.id,
                            net.nodes.values().map(|n| n.address).min().expect("nodes"),
                            net.root_address
                        );
                    }
                }
                Err(error) => {
                    let _ = runner::down(&dir);
                    return Err(error.into());
                }
            }
        }
        TestbedCommand::Down { dir } => {
            runner::down(&dir)?;
            println!("testbed in {} down", dir.display());
        }
        TestbedCommand::Link { state, link, dir } => {
            runtime.block_on(runner::set_link_state(&dir, &link, state))?;
            println!("link {link}: {state:?}");
        }
        TestbedCommand::Node { action } => match action {
            NodeAction::Stop { node, kill, dir } => {
                runner::stop_node(&dir, &node, kill)?;
                println!("node {node} stopped{}", if kill { " (killed)" } else { "" });
            }
            NodeAction::Start { node, dir } => {
                runtime.block_on(runner::start_node(&dir, &node, &exe))?;
                println!("node {node} started");
            }
        },
    }
    Ok(())
}
