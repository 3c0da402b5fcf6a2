//! The control layer: the QKDN controller of one domain (centralized control, Y.3802).
//!
//! - [`config`] — the controller's configuration;
//! - [`topology`] — the domain as the controller sees it, live from the agents;
//! - [`southbound`] — reading agents and installing relay routes over NETCONF, all or none;
//! - [`sessions`] — key supply sessions and their durable store;
//! - [`controller`] — the controller actor: sessions, routing, rerouting, events;
//! - [`cxi`] — Cxi messages between the controllers of two QKDNs, and their client;
//! - [`cxi_server`] — the Cxi server (peer controllers only);
//! - [`interworking`] — interworking sessions: route agreement (two-phase) with the peer,
//!   segments installed for it, status sharing, QCLM diagnoses;
//! - [`northbound`] — the REST API for orchestrators (OpenAPI);
//! - [`operator`] — the controller under NETCONF for operators (`qkdni-controller` model).

pub mod config;
pub mod controller;
pub mod cxi;
pub mod cxi_server;
pub mod interworking;
pub mod northbound;
pub mod operator;
pub mod sessions;
pub mod southbound;
pub mod topology;
