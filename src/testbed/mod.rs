//! Emulated QKD networks on one machine: real KM processes on loopback, real certificates.
//!
//! - [`topology`] — the topology file format;
//! - [`endpoints`] — `endpoints.json`, what clients need to reach the testbed;
//! - [`host_keys`] — the NETCONF servers' SSH host keys and the testbed's `known_hosts`;
//! - [`runner`] — bringing a testbed up and down (its operations re-exported);
//! - `configs` — the configuration files it writes for controllers and managers, NETCONF
//!   users, `prometheus.yml`;
//! - `ports` — loopback ports for the services, and the start-up lock;
//! - `records` — what a running testbed records in its directory (`processes.json`,
//!   `netns.json`);
//! - `operate` — operating a running testbed: faults, node restarts, NETCONF sessions, key
//!   levels;
//! - `process` — starting processes and waiting until they serve every port (readiness);
//! - [`error`] — errors of testbed operations;
//! - [`netns`] — `--netns` testbeds: a network namespace per node, a veth pair per link
//!   (`ip_commands.rs`: the ip commands, the hub of an IWN hosting the control layer);
//! - [`cli`] — the `qkdni testbed` subcommands;
//! - [`demo`] — the end-to-end demonstration (two domains interworking through gateway
//!   nodes by default; one domain with `--topology testbed/single-domain.toml`); `demo_steps`
//!   — what both of its scenarios do (the orchestrator's calls, key deliveries).

pub mod cli;
mod configs;
pub mod demo;
mod demo_interworking;
mod demo_steps;
pub mod endpoints;
pub mod error;
pub mod host_keys;
mod ip_commands;
pub mod netns;
mod operate;
mod ports;
mod process;
mod records;
pub mod runner;
pub mod topology;

/// The default single-domain topology, embedded so the demo needs no files.
pub const SINGLE_DOMAIN: &str = include_str!("../../testbed/single-domain.toml");

/// The default two-domain topology (gateway nodes, two Qx links), embedded for the demo.
pub const TWO_DOMAIN_GWN: &str = include_str!("../../testbed/two-domain-gwn.toml");

/// The two-domain topology with interworking nodes (two IWNs, no Qx link).
pub const TWO_DOMAIN_IWN: &str = include_str!("../../testbed/two-domain-iwn.toml");
