//! The control layer: the QKDN controller of one domain (centralized control, Y.3802).
//!
//! - [`config`] — the controller's configuration;
//! - [`topology`] — the domain as the controller sees it, live from the agents;
//! - [`southbound`] — reading agents and installing relay routes over NETCONF, all or none;
//! - [`sessions`] — key supply sessions and their durable store;
//! - [`controller`] — the controller's handle: reads from the published view, changes as
//!   inputs to the instance, events;
//! - [`error`] — the controller's errors and the replies of the instance;
//! - [`instance`] — the one task that owns the state: jobs, installs in tasks;
//! - [`jobs`] — how each job starts and finishes (commit or undo);
//! - [`state`] — the state the instance owns;
//! - [`messages`] — the instance's inputs and the view it publishes;
//! - [`creation`] — new sessions, local or agreed with the peer;
//! - [`expiry`] — on-demand sessions removed when their SAE pair no longer asks for keys;
//! - [`metrics`] — Prometheus metrics of sessions, installs, reroutes and Cxi;
//! - [`reroute`] — rerouting on faults and key rate shortfalls;
//! - [`routes`] — the relay route tables the KMs should hold, and the difference to what they hold;
//! - [`cxi`] — Cxi messages between the controllers of two QKDNs, and their client;
//! - [`cxi_server`] — the Cxi server (peer controllers only);
//! - [`interworking`] — route agreement (two-phase) with the peer, the abstract topology
//!   shared with it, status sharing;
//! - [`peers`] — the peer domains as known from Cxi (abstract topology, status), and the
//!   push of this domain's abstract topology;
//! - [`segments`] — the receiving domain's segments of the peer's sessions, QCLM diagnoses;
//! - [`rest`] — the REST API for orchestrators (OpenAPI);
//! - [`dashboard`] — the live web dashboard (HTTPS, on the REST listener, one-time logins);
//! - [`northbound`] — the controller under NETCONF for operators (`qkdni-controller` model:
//!   configuration, state, notifications).

pub mod config;
pub mod controller;
mod creation;
pub mod cxi;
pub mod cxi_server;
pub mod dashboard;
pub mod error;
mod expiry;
pub mod instance;
pub mod interworking;
mod jobs;
mod messages;
pub mod metrics;
pub mod northbound;
pub mod peers;
mod reroute;
pub mod rest;
mod routes;
mod segments;
pub mod sessions;
pub mod southbound;
mod state;
pub mod topology;
