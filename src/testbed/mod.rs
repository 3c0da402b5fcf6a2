//! Emulated QKD networks on one machine: real KM processes on loopback, real certificates.
//!
//! - [`topology`] — the topology file format;
//! - [`endpoints`] — `endpoints.json`, what clients need to reach the testbed;
//! - [`host_keys`] — the NETCONF servers' SSH host keys and the testbed's `known_hosts`;
//! - [`runner`] — bringing a testbed up and down, faults, node restarts;
//! - `process` — starting processes and waiting until they serve every port (readiness);
//! - [`netns`] — `--netns` testbeds: a network namespace per node, a veth pair per link;
//! - [`cli`] — the `qkdni testbed` subcommands;
//! - [`demo`] — the end-to-end demonstration (two domains interworking through gateway
//!   nodes by default; one domain with `--topology testbed/single-domain.toml`).

pub mod cli;
pub mod demo;
mod demo_interworking;
pub mod endpoints;
pub mod host_keys;
pub mod netns;
mod process;
pub mod runner;
pub mod topology;

/// The default single-domain topology, embedded so the demo needs no files.
pub const SINGLE_DOMAIN: &str = include_str!("../../testbed/single-domain.toml");

/// The default two-domain topology (gateway nodes, two Qx links), embedded for the demo.
pub const TWO_DOMAIN_GWN: &str = include_str!("../../testbed/two-domain-gwn.toml");
